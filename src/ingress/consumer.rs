//! The read loop: waits for a free slot (at most `max_in_flight` requests at once), reads
//! up to `batch` new entries with a blocking `XREADGROUP` on its own connection, and
//! hands each to a task of its own (which holds the slot until its last reply). Every
//! `claim_interval` it first takes over entries left pending for `claim_idle` by a
//! gateway that died (`XAUTOCLAIM`). Redis errors back off (up to 5 s) and reconnect; a
//! group deleted under it is created again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::RedisError;
use swell_cluster::redis_conn::{BlockingConnection, RedisClient};
use swell_actors::backoff::Backoff;
use swell_cluster::ingress_wire::entry_fields;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::entry::EntryContext;

/// Creates the consumer group (reading from the stream's start, creating the stream)
/// unless it exists.
pub(crate) async fn create_group<C: ConnectionLike>(connection: &mut C, stream: &str, group: &str) -> Result<(), RedisError> {
    let created: Result<(), RedisError> =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(group).arg("0").arg("MKSTREAM").query_async(connection).await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

pub(crate) struct ConsumerLoop {
    pub context: Arc<EntryContext>,
    pub blocking: BlockingConnection,
    pub client: RedisClient,
    pub permits: Arc<Semaphore>,
    pub stop: watch::Receiver<bool>,
}

impl ConsumerLoop {
    pub async fn run(mut self) {
        let state = self.context.state.clone();
        let shutdown = state.shutdown_started();
        tokio::pin!(shutdown);
        let mut next_claim = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut stop = self.stop.clone();
        loop {
            // A slot first: the stream is not read beyond what can be served.
            let first = tokio::select! {
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = stop.wait_for(|stop| *stop) => break,
                _ = &mut shutdown => break,
            };
            let count = (self.permits.available_permits() + 1).min(self.context.config.batch);
            let claiming = Instant::now() >= next_claim;
            let read = if claiming {
                next_claim = Instant::now() + self.context.config.claim_interval;
                self.claim(count).await
            } else {
                tokio::select! {
                    read = self.read(count) => read,
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = &mut shutdown => break,
                }
            };
            match read {
                Ok(entries) => {
                    backoff.reset();
                    self.dispatch(entries, first, claiming).await;
                }
                Err(error) => {
                    drop(first);
                    let wait = backoff.failed();
                    tracing::warn!(%error, ?wait, "ingress: reading the stream failed");
                    tokio::time::sleep(wait).await;
                    self.recover(&error).await;
                }
            }
        }
        tracing::info!(consumer = %self.context.consumer, "ingress consumer stopped reading");
    }

    /// New entries, waiting up to `block` for some.
    async fn read(&mut self, count: usize) -> Result<Vec<StreamId>, RedisError> {
        let config = &self.context.config;
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&config.group)
            .arg(&self.context.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.context.stream)
            .arg(">")
            .query_async(&mut self.blocking)
            .await?;
        Ok(reply.into_iter().flat_map(|reply| reply.keys).flat_map(|key| key.ids).collect())
    }

    /// Entries pending longer than `claim_idle` (their gateway died before deciding).
    async fn claim(&mut self, count: usize) -> Result<Vec<StreamId>, RedisError> {
        let config = &self.context.config;
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.context.stream)
            .arg(&config.group)
            .arg(&self.context.consumer)
            .arg(config.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.context.redis.clone())
            .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(entries = reply.claimed.len(), "ingress: took over entries of a gateway that stopped");
        }
        Ok(reply.claimed)
    }

    async fn dispatch(&self, entries: Vec<StreamId>, first: OwnedSemaphorePermit, taken_over: bool) {
        let mut first = Some(first);
        for entry in entries {
            let permit = match first.take() {
                Some(permit) => permit,
                None => match self.permits.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let context = self.context.clone();
            let fields = entry_fields(&entry);
            context.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            actix_rt::spawn(async move {
                context.handle(entry.id, fields, taken_over).await;
                context.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }

    /// After an error: a fresh blocking connection, and the group again if it is gone.
    async fn recover(&mut self, error: &RedisError) {
        match self.client.blocking(Duration::from_secs(5)).await {
            Ok(connection) => self.blocking = connection,
            Err(error) => tracing::debug!(%error, "ingress: reconnecting failed"),
        }
        if error.code() == Some("NOGROUP") {
            let context = &self.context;
            if let Err(error) = create_group(&mut context.redis.clone(), &context.stream, &context.config.group).await {
                tracing::warn!(%error, "ingress: creating the consumer group failed");
            }
        }
    }
}
