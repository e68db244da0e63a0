//! The Redis ingress: programs that are not Swell push generation requests straight
//! into Redis (`XADD` to the ingress stream) and read the answers from a stream of their
//! own (`reply_to`). The wire format is `docs/ingress.md` and
//! [`swell_cluster::ingress_wire`].
//!
//! An ingress entry takes the same path as an HTTP request, through the same functions:
//! the key is hashed and looked up (`Tenants::authenticate`), the body is parsed and
//! validated against its deployment (`generation::resolve::resolve`: model existence, limits,
//! chat template, tokenization), and `generation::admit::start_generation` takes it through
//! the tenant's quota into the deployment's queue. Its events are encoded by the same
//! `StreamEncoder` (streaming requests) or `ResponseCollector` (the others) and appended
//! to `reply_to`; a refusal is answered with the HTTP API's error body and status.
//!
//! # Where replies go
//! `reply_to` must start with the tenant's reply prefix (configured per tenant, or
//! `<P>-replies:<n>:<tenant>:`), is never one of Swell's own keys, and must be a stream
//! or no key at all: a stream Swell creates is marked and gets a TTL, a key it did not
//! create never does. An entry whose `reply_to` is refused is acknowledged without a
//! reply, logged and counted ([`IngressSnapshot::reply_to_refused`]), never retried.
//!
//! # Delivery
//! The stream is read with a consumer group (`gateways`), so several gateways share it
//! and each entry goes to one of them. An entry is acknowledged (and deleted) once its
//! request is admitted or refused; a gateway that dies before that leaves it pending,
//! and any gateway claims it after [`IngressConfig::claim_idle`] (`XAUTOCLAIM`). An
//! idempotency marker per (tenant, `id`), set at admission, makes a redelivered or
//! repeated entry an acknowledged no-op: a request id is answered once. The marker's key
//! length-prefixes the tenant id, so no two (tenant, `id`) pairs share one.
//!
//! # Layout
//! - this file: [`IngressConfig`], [`start_ingress`], [`IngressHandle`] and its
//!   [`IngressSnapshot`].
//! - `consumer`: the read loop (blocking `XREADGROUP` on a dedicated connection,
//!   periodic `XAUTOCLAIM`, bounded concurrency).
//! - `entry`: one entry: decode, authenticate, validate, deduplicate, admit, relay.
//! - `reply_to`: [`ReplyNamespace`]: the tenants' reply prefixes, and which `reply_to`
//!   an entry may name.
//! - `reply`: writing reply entries (`reply.lua`: stream only, TTL only on a stream Swell
//!   created); errors as reply data.

mod consumer;
mod entry;
mod reply;
mod reply_to;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_rt::Arbiter;
use swell_cluster::redis_conn::{RedisClient, RedisEndpoint};
use serde::{Deserialize, Serialize};
use swell_cluster::ingress_wire::ingress_stream_key;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::state::AppState;

pub use self::reply::{error_data, IngressError, CREATED_BY_SWELL_GROUP};
pub use self::reply_to::{overlapping_prefixes, ReplyNamespace, ReplyToRefusal, MAX_REPLY_PREFIX_LENGTH};

/// `[ingress]`: how a gateway consumes the ingress stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Whether a gateway node of a cluster reads the ingress stream (`[ingress] enabled`,
    /// default true). Embedded mode has no ingress.
    pub enabled: bool,
    /// Prefix of the Redis keys, the queue's (`cluster.key_prefix`, filled in by the
    /// server; not a setting of its own): the stream is `<prefix>:{ingress}:requests`,
    /// `reply_to` may not start with `<prefix>:`, and the tenants' default reply prefixes
    /// are `<prefix>-replies:<n>:<tenant>:`.
    #[serde(skip)]
    pub key_prefix: String,
    /// The consumer group every gateway reads the stream with.
    pub group: String,
    /// This gateway's consumer name in the group (default: `gateway-<random>`).
    pub consumer: Option<String>,
    /// Entries read at once.
    pub batch: usize,
    /// Requests this gateway admits or relays at once; the stream is not read beyond.
    pub max_in_flight: usize,
    /// How long one blocking read waits for entries.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// A `reply_to` stream Swell created expires this long after its last reply.
    #[serde(with = "humantime_serde")]
    pub reply_ttl: Duration,
    /// A `reply_to` stream is capped near this many entries.
    pub reply_max_len: u64,
    /// How long a request id is remembered (a repeat within it is not served again).
    #[serde(with = "humantime_serde")]
    pub dedupe_ttl: Duration,
    /// An entry read but not acknowledged for this long (its gateway died) is taken
    /// over by another.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// How often to look for such entries.
    #[serde(with = "humantime_serde")]
    pub claim_interval: Duration,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            key_prefix: "swell".into(),
            group: "gateways".into(),
            consumer: None,
            batch: 64,
            max_in_flight: 1024,
            block: Duration::from_secs(2),
            reply_ttl: Duration::from_secs(3600),
            reply_max_len: 100_000,
            dedupe_ttl: Duration::from_secs(24 * 3600),
            claim_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(10),
        }
    }
}

impl IngressConfig {
    /// Checks the config; each error names its key under `ingress.`.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            errors.push("ingress.key_prefix must be non-empty and contain no `{` or `}`".to_string());
        }
        if self.group.is_empty() {
            errors.push("ingress.group must not be empty".to_string());
        }
        if self.consumer.as_deref().is_some_and(str::is_empty) {
            errors.push("ingress.consumer must not be empty".to_string());
        }
        for (key, value) in [("ingress.batch", self.batch as u64), ("ingress.max_in_flight", self.max_in_flight as u64)] {
            if value == 0 {
                errors.push(format!("{key} must be at least 1"));
            }
        }
        for (key, value) in [
            ("ingress.block", self.block),
            ("ingress.reply_ttl", self.reply_ttl),
            ("ingress.dedupe_ttl", self.dedupe_ttl),
            ("ingress.claim_idle", self.claim_idle),
            ("ingress.claim_interval", self.claim_interval),
        ] {
            if value < Duration::from_millis(1) {
                errors.push(format!("{key} must be at least 1ms"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The ingress stream's key.
    pub fn stream_key(&self) -> String {
        ingress_stream_key(&self.key_prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngressStartError {
    #[error("invalid ingress config: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("ingress: redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("ingress: redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ingress: redis address: {0}")]
    Address(String),
}

/// What the consumer has done so far (a plain snapshot, see [`IngressHandle::observe`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IngressSnapshot {
    /// Entries read from the stream (claimed ones included).
    pub received: u64,
    /// Requests admitted into a deployment's queue.
    pub admitted: u64,
    /// Entries refused with an error reply (bad entry, auth, validation, quota, ...).
    pub rejected: u64,
    /// Entries whose id was already served (acknowledged without a reply).
    pub duplicates: u64,
    /// Requests taken over from a gateway that stopped while relaying them: their
    /// replies resumed after the ones it had written.
    pub resumed: u64,
    /// Entries left without a terminal reply because their `reply_to` is missing or
    /// refused (acknowledged all the same).
    pub unanswerable: u64,
    /// Entries whose `reply_to` was refused: outside the tenant's reply prefix (or, for
    /// an entry of no known tenant, every tenant's), one of Swell's own keys, or a key
    /// that is not a stream. Each is logged (`ingress entry not answered`, with the
    /// reason's code).
    pub reply_to_refused: u64,
    /// Admitted requests that ended with their final reply (done or completion).
    pub completed: u64,
    /// Admitted requests that ended with an error reply.
    pub failed: u64,
    /// Requests being admitted or relayed now.
    pub in_flight: u64,
}

#[derive(Debug, Default)]
pub(crate) struct IngressStats {
    received: AtomicU64,
    admitted: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    resumed: AtomicU64,
    unanswerable: AtomicU64,
    reply_to_refused: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
}

impl IngressStats {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The running consumer. Dropping it does not stop it; [`IngressHandle::stop`] does (and
/// so does the server's shutdown, which stops the reading of new entries).
pub struct IngressHandle {
    stop: watch::Sender<bool>,
    stopped: Option<oneshot::Receiver<()>>,
    stats: Arc<IngressStats>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    arbiter: Arbiter,
    /// This gateway's consumer name.
    pub consumer: String,
    /// The stream it reads.
    pub stream: String,
}

impl IngressHandle {
    pub fn observe(&self) -> IngressSnapshot {
        let s = &self.stats;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        IngressSnapshot {
            received: load(&s.received),
            admitted: load(&s.admitted),
            rejected: load(&s.rejected),
            duplicates: load(&s.duplicates),
            resumed: load(&s.resumed),
            unanswerable: load(&s.unanswerable),
            reply_to_refused: load(&s.reply_to_refused),
            completed: load(&s.completed),
            failed: load(&s.failed),
            in_flight: load(&s.in_flight),
        }
    }

    /// Stops reading new entries; requests in flight get up to `grace` to finish their
    /// replies, then the consumer's thread stops (cancelling what is left).
    pub async fn stop(mut self, grace: Duration) {
        self.stop.send_replace(true);
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(grace, self.permits.acquire_many(all)).await;
        self.arbiter.stop();
    }
}

/// Starts consuming the ingress stream at `redis_url` for the server whose state is
/// `state`, on a thread (arbiter) of its own. Must run inside an actix system. Creates
/// the consumer group (reading from the stream's start) when it does not exist.
pub async fn start_ingress(
    state: Arc<AppState>,
    redis_url: &str,
    config: IngressConfig,
) -> Result<IngressHandle, IngressStartError> {
    config.validate().map_err(IngressStartError::Config)?;
    let connect_timeout = Duration::from_secs(5);
    let endpoint = RedisEndpoint::parse(redis_url).map_err(IngressStartError::Address)?;
    let response_timeout = Duration::from_secs(5);
    let client = RedisClient::new(&endpoint, connect_timeout, response_timeout)?;
    let shared = tokio::time::timeout(connect_timeout * 2, client.shared(connect_timeout, response_timeout))
        .await
        .map_err(|_| IngressStartError::Timeout(connect_timeout * 2))??;
    let blocking = client.blocking(connect_timeout).await?;
    let stream = config.stream_key();
    consumer::create_group(&mut shared.clone(), &stream, &config.group).await?;

    let consumer = config.consumer.clone().unwrap_or_else(|| format!("gateway-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    let stats = Arc::new(IngressStats::default());
    let permits = Arc::new(Semaphore::new(config.max_in_flight));
    let (stop, stop_rx) = watch::channel(false);
    let (stopped_tx, stopped) = oneshot::channel();
    let max_in_flight = config.max_in_flight;
    let namespace = ReplyNamespace::new(&config.key_prefix, &state.config.quota.key_prefix);
    let context = Arc::new(entry::EntryContext {
        state,
        redis: shared,
        stream: stream.clone(),
        consumer: consumer.clone(),
        config,
        namespace,
        stats: stats.clone(),
    });
    let run = consumer::ConsumerLoop { context, blocking, client, permits: permits.clone(), stop: stop_rx };
    let arbiter = Arbiter::new();
    arbiter.spawn(async move {
        run.run().await;
        let _ = stopped_tx.send(());
    });
    tracing::info!(%stream, %consumer, "ingress consumer started");
    Ok(IngressHandle { stop, stopped: Some(stopped), stats, permits, max_in_flight, arbiter, consumer, stream })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid_and_bad_values_are_named() {
        assert!(IngressConfig::default().validate().is_ok());
        assert_eq!(IngressConfig::default().stream_key(), "swell:{ingress}:requests");
        let config = IngressConfig { batch: 0, key_prefix: "a{b".into(), block: Duration::ZERO, ..IngressConfig::default() };
        let errors = config.validate().unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with("ingress.batch")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("ingress.key_prefix")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("ingress.block")), "{errors:?}");
        let parsed: IngressConfig = toml::from_str("reply_ttl = \"10m\"\nbatch = 8").unwrap();
        assert_eq!(parsed.reply_ttl, Duration::from_secs(600));
        assert!(toml::from_str::<IngressConfig>("nope = 1").is_err());
    }
}
