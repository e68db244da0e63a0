//! A job's keys and the steps of its own: where its keys are (its queue partition's
//! slot, found by id through its pointer key), the enqueue (one script beside the
//! pointer key), the append (one script, which also acknowledges at the terminal
//! event), and cancelling. See the module docs of [`super`] for the layout.

use std::time::Duration;

use redis::Value;
use swell_protocol::OutputEvent;

use super::partitions::Partitions;
use super::replies::{array, malformed, number, string};
use super::{RedisQueue, MAX_ACKED_BY_APPEND, MAX_LOCATED};
use crate::job::{AdmissionLimits, Enqueued, Job, LeaseRef};
use crate::queue::{AppendOutcome, QueueError};
use crate::unix_millis;

/// The keys of one job, in the order the job scripts take them.
pub(super) struct JobKeys {
    pub state: String,
    pub out: String,
}

impl RedisQueue {
    /// The hash tag of a job's keys: its queue partition's (`dep:D` or `dep:D#k`).
    pub(super) fn job_tag(&self, deployment: &str, job_id: &str) -> String {
        Partitions::tag(deployment, self.partitions.of(job_id))
    }

    /// The keys of a job whose keys carry hash tag `tag` (see [`Self::job_tag`]).
    pub(super) fn job_keys(&self, tag: &str, job_id: &str) -> JobKeys {
        let base = format!("{}:{{{tag}}}", self.config.key_prefix);
        JobKeys {
            state: format!("{base}:state:{job_id}"),
            out: format!("{base}:out:{job_id}"),
        }
    }

    /// `P:{job:J}:at`: the hash tag of job `J`'s keys, for calls that know only its id.
    pub(super) fn pointer_key(&self, job_id: &str) -> String {
        format!("{}:{{job:{job_id}}}:at", self.config.key_prefix)
    }

    /// Remembers where a job's keys are (forgotten once a read returned its end).
    pub(super) fn remember(&self, job_id: &str, tag: &str) {
        let mut located = self.located.lock();
        if located.len() >= MAX_LOCATED {
            located.clear();
        }
        located.insert(job_id.to_string(), tag.to_string());
    }

    /// The hash tag of a job's keys, for a call that knows only its id: remembered, or
    /// read from its pointer key. `None`: no such job (or it expired).
    pub(super) async fn locate(&self, job_id: &str) -> Result<Option<String>, QueueError> {
        if let Some(tag) = self.located.lock().get(job_id) {
            return Ok(Some(tag.clone()));
        }
        let tag: Option<String> = self.query(redis::cmd("GET").arg(self.pointer_key(job_id))).await?;
        if let Some(tag) = &tag {
            self.remember(job_id, tag);
        }
        Ok(tag)
    }

    /// [`Queue::enqueue`](crate::Queue::enqueue).
    pub(super) async fn enqueue_job(&self, job: Job, limits: AdmissionLimits) -> Result<Enqueued, QueueError> {
        let payload = serde_json::to_string(&job).map_err(|error| malformed(&error.to_string()))?;
        let partition = self.partitions.of(&job.id);
        let tag = Partitions::tag(&job.deployment, partition);
        let info = format!("{}\n{}\n{}", job.deployment, job.tenant, job.stream_meta.as_deref().unwrap_or_default());
        let max_age_ms = self.config.job_max_age.as_millis().max(1) as u64;
        let mut call = self.deployment_call(&self.scripts.enqueue, &job.deployment, partition);
        call.key(self.job_keys(&tag, &job.id).state);
        call.arg(&job.id)
            .arg(payload)
            .arg(job.enqueued_at_ms)
            .arg(job.deadline_ms.map(|ms| ms.to_string()).unwrap_or_default())
            .arg(self.partitions.admits(limits.max_queue_depth))
            .arg(job.priority.as_str());
        match &job.route {
            // The promise's length; its end is set by the server's clock.
            Some(route) => call.arg(&route.replica).arg(route.until_ms.saturating_sub(unix_millis())),
            None => call.arg("").arg(0),
        };
        call.arg(info).arg(max_age_ms);
        // The pointer key, for calls that know only the job's id (a stream resumed on
        // another gateway), is written beside the script (another slot, so not in it):
        // one round trip for both. A pointer that exists names the job of that id; one
        // naming another deployment makes this a duplicate.
        // It lasts as long as the job's output can be read: until its deadline and the
        // output TTL after it (at most `job_max_age`).
        let pointer_ttl_ms = job.deadline_ms.map_or(max_age_ms, |deadline| {
            (deadline.saturating_sub(unix_millis()) + self.output_ttl_ms()).clamp(1, max_age_ms)
        });
        let mut pointer = redis::cmd("SET");
        pointer.arg(self.pointer_key(&job.id)).arg(&tag).arg("NX").arg("GET").arg("PX").arg(pointer_ttl_ms);
        self.remember(&job.id, &tag);
        let (answer, existing) = tokio::join!(self.invoke::<Value>(&call), self.query::<Option<String>>(&pointer));
        let answer = match answer {
            Ok(answer) => array(answer)?,
            Err(error) => {
                self.abandon_enqueue(&tag, &job.id).await;
                return Err(error);
            }
        };
        let elsewhere = matches!(&existing, Ok(Some(other)) if *other != tag);
        match string(answer.first().unwrap_or(&Value::Nil))?.as_str() {
            "ok" if elsewhere => {
                // The id is taken in another deployment: this job leaves its queue at once.
                if let Ok(Some(other)) = &existing {
                    self.remember(&job.id, other);
                }
                self.cancel_at(&tag, &job.id).await?;
                Err(QueueError::DuplicateJob(job.id))
            }
            "ok" => {
                if let Err(error) = existing {
                    // Queued; only a stream resumed on another gateway needs the pointer.
                    tracing::warn!(%error, job_id = job.id, "redis queue: writing a job's pointer key failed");
                }
                if partition > 0 && number(answer.get(2).unwrap_or(&Value::Nil))? == 1 {
                    // A consumer waits: on partition 0's wake-up stream.
                    self.wake_deployment(&job.deployment).await?;
                }
                if self.config.wait_replicas > 0 {
                    let deployment_key = self.deployment_keys(&job.deployment, partition).keys[0].clone();
                    let pointer_key = self.pointer_key(&job.id);
                    tokio::join!(self.wait_replicated(&pointer_key), self.wait_replicated(&deployment_key));
                }
                let position = number(answer.get(1).unwrap_or(&Value::Nil))?;
                Ok(Enqueued { position: self.partitions.scale(position) })
            }
            refused => {
                match &existing {
                    Ok(Some(other)) => self.remember(&job.id, other),
                    _ => {
                        self.located.lock().remove(&job.id);
                    }
                }
                if matches!(existing, Ok(None)) {
                    // The pointer was written for this job, which is not queued.
                    if let Err(error) = self.query::<i64>(redis::cmd("DEL").arg(self.pointer_key(&job.id))).await {
                        tracing::warn!(%error, job_id = job.id, "redis queue: discarding a refused job's pointer failed");
                    }
                }
                if refused == "full" {
                    let depth = number(answer.get(1).unwrap_or(&Value::Nil))?;
                    Err(QueueError::Full { deployment: job.deployment, depth: depth * u64::from(self.partitions.count()) })
                } else {
                    Err(QueueError::DuplicateJob(job.id))
                }
            }
        }
    }

    /// [`Queue::append_output`](crate::Queue::append_output).
    pub(super) async fn append_job(
        &self,
        lease: &LeaseRef,
        after: u64,
        events: Vec<OutputEvent>,
    ) -> Result<AppendOutcome, QueueError> {
        let partition = self.partitions.of(&lease.job_id);
        let keys = self.job_keys(&Partitions::tag(&lease.deployment, partition), &lease.job_id);
        let terminal = events.iter().any(OutputEvent::is_terminal);
        let mut call = self.deployment_call(&self.scripts.append, &lease.deployment, partition);
        call.key(&keys.state).key(&keys.out);
        call.arg(&lease.job_id).arg(u8::from(terminal));
        call.arg(lease.epoch).arg(&lease.consumer).arg(&self.cancelled_event).arg(self.output_ttl_ms()).arg(after);
        call.arg(&self.output_lost_event);
        for event in &events {
            let json = serde_json::to_string(event).map_err(|error| malformed(&error.to_string()))?;
            call.arg(json).arg(u8::from(event.is_terminal()));
        }
        let answer = array(self.invoke::<Value>(&call).await?)?;
        match string(answer.first().unwrap_or(&Value::Nil))?.as_str() {
            "ok" => {
                if terminal {
                    if self.config.wait_replicas > 0 {
                        self.wait_replicated(&keys.state).await;
                    }
                    if answer.get(2).is_some_and(|acked| number(acked).is_ok_and(|acked| acked == 1)) {
                        let mut acked = self.acked_by_append.lock();
                        if acked.len() >= MAX_ACKED_BY_APPEND {
                            acked.clear();
                        }
                        acked.insert((lease.job_id.clone(), lease.epoch));
                    }
                }
                Ok(AppendOutcome::Accepted(number(answer.get(1).unwrap_or(&Value::Nil))?))
            }
            // (Forgotten on the deployment side by the same script.)
            "cancelled" => Ok(AppendOutcome::Cancelled),
            "lost" => {
                tracing::warn!(
                    job_id = %lease.job_id,
                    after,
                    "redis queue: output this replica had stored is gone (a Redis failover lost it); the job ended with output_lost"
                );
                Ok(AppendOutcome::Cancelled)
            }
            "fenced" => Ok(AppendOutcome::Fenced),
            _ => Err(QueueError::UnknownJob(lease.job_id.clone())),
        }
    }

    /// Undo an enqueue whose outcome is unknown (no answer came: it may have been queued,
    /// and even leased and started, already): the job is cancelled, so it leaves the
    /// queue unstarted, or its replica stops at its next write, and every key of it
    /// expires with the output TTL. (Deleting its state instead left a job that ran on
    /// to write output and delivered tokens kept for `job_max_age`.) Tried a few times;
    /// if Redis stays unreachable, the keys expire with `job_max_age`.
    async fn abandon_enqueue(&self, tag: &str, job_id: &str) {
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=3 {
            match self.cancel_at(tag, job_id).await {
                Ok(()) => return,
                Err(error) if attempt == 3 => {
                    tracing::warn!(%error, job_id, "redis queue: cancelling a job whose enqueue got no answer failed; its keys expire with job_max_age");
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    /// Cancel the job whose keys carry `tag`: `job_cancel`; a waiting job gets its
    /// terminal `cancelled` event there and is then removed by
    /// `deployment_remove_waiting`; a leased one is only flagged.
    pub(super) async fn cancel_at(&self, tag: &str, job_id: &str) -> Result<(), QueueError> {
        let mut call = self.job_call(&self.scripts.job_cancel, tag, job_id);
        call.arg(&self.cancelled_event).arg(self.output_ttl_ms());
        let answer = array(self.invoke::<Value>(&call).await?)?;
        if string(answer.first().unwrap_or(&Value::Nil))? == "waiting" {
            let deployment = string(answer.get(1).unwrap_or(&Value::Nil))?;
            let mut remove = self.job_partition_call(&self.scripts.deployment_remove_waiting, &deployment, job_id);
            remove.arg(job_id);
            self.invoke::<i64>(&remove).await?;
        }
        Ok(())
    }
}
