//! Leader election: one node at a time holds a lease in Redis and, with it, a fencing
//! token.
//!
//! # The lease
//! `P:{cluster}:leader` holds `"<token> <node id>"` with a TTL of
//! [`leader_lease_ttl`](crate::coordination::CoordinationConfig::leader_lease_ttl). A node
//! acquires it only if it is absent (`SET NX PX` semantics, in a script) and then takes
//! a new token with `INCR P:{cluster}:leader_token`, so tokens grow with every change of
//! leader. The holder renews it each tick with a compare-and-`PEXPIRE` (only if the value
//! is still its own), and releases it on a clean shutdown with a compare-and-`DEL`.
//!
//! # Fencing
//! Every write the leader makes goes through a script that first checks the lease still
//! holds exactly the leader's `"<token> <node id>"` (see
//! [`PlacementStore::write`](crate::placement::PlacementStore::write)). When a leader
//! dies or stalls (a long GC-like pause, a partition) its lease expires after the TTL,
//! another node acquires it at its next tick with a higher token, and every later write
//! of the old leader is rejected ([`CoordinationError::Fenced`]) even if the old leader
//! still believes it leads.
//!
//! If the token counter was lost (Redis restarted without its data), the next acquisition
//! restarts it from the server's clock in ms, above every token handed out before (as
//! long as fewer than one leader change per millisecond happened).
//!
//! # What the holder believes
//! The leader's own view of its lease is conservative: a renewal that succeeded extends
//! it to *when the renewal was sent* + TTL − 10 %, on the local monotonic clock. When
//! renewals fail (Redis unreachable) the node keeps leading until that moment, then
//! steps down ([`LossReason::Unreachable`]); Redis frees the lease no earlier.

use std::time::Duration;

use redis::{Script, Value};
use tokio::time::Instant;

use crate::coordination::{array, malformed, number, string, CoordinationClient, CoordinationError, NOW_MS_LUA};

/// The holder of the lease, as the store answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub node_id: String,
    pub token: u64,
}

/// This node's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderState {
    /// This node leads; every leader write must carry this token.
    Leader { token: u64 },
    /// Another node leads (or nobody, or the store could not be asked).
    Follower { leader: Option<LeaseHolder> },
}

impl LeaderState {
    pub fn token(&self) -> Option<u64> {
        match self {
            LeaderState::Leader { token } => Some(*token),
            LeaderState::Follower { .. } => None,
        }
    }
}

/// Why a node stopped leading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// The renewal found the lease gone or held by someone else (it expired: the node
    /// stalled past the TTL, or Redis lost it).
    LeaseLost,
    /// Renewals kept failing until the node's conservative lease estimate ran out.
    Unreachable,
    /// The node gave it up ([`LeaderElection::release`]).
    Released,
}

/// A change of this node's standing, reported once, by the tick that saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadershipChange {
    Gained { token: u64 },
    Lost { token: u64, reason: LossReason },
}

/// What one [`LeaderElection::tick`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderTick {
    pub state: LeaderState,
    pub change: Option<LeadershipChange>,
    /// The store could not be reached; `state` is what the node still believes.
    pub error: Option<CoordinationError>,
}

const ACQUIRE: &str = include_str!("lua/leader_acquire.lua");

const RENEW: &str = include_str!("lua/leader_renew.lua");

const RELEASE: &str = include_str!("lua/leader_release.lua");

/// The lease's value for a holder: what fenced scripts compare with.
pub(crate) fn lease_value(token: u64, node_id: &str) -> String {
    format!("{token} {node_id}")
}

struct HeldLease {
    token: u64,
    /// Until when this node may act as leader (local monotonic clock, conservative).
    valid_until: Instant,
}

/// One node's side of the election. Call [`tick`](Self::tick) every heartbeat interval
/// (well under the lease TTL).
pub struct LeaderElection {
    client: CoordinationClient,
    node_id: String,
    acquire: Script,
    renew: Script,
    release: Script,
    held: Option<HeldLease>,
}

impl LeaderElection {
    pub fn new(client: CoordinationClient, node_id: impl Into<String>) -> Self {
        Self {
            client,
            node_id: node_id.into(),
            acquire: Script::new(&format!("{NOW_MS_LUA}{ACQUIRE}")),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            held: None,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn ttl(&self) -> Duration {
        self.client.config().leader_lease_ttl
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl().as_millis().max(1) as u64
    }

    /// How long after sending a successful renewal this node still acts as leader.
    fn trusted_lease(&self) -> Duration {
        self.ttl() - self.ttl() / 10
    }

    /// The token, if this node leads now (its conservative lease estimate included).
    pub fn token(&self) -> Option<u64> {
        self.held.as_ref().filter(|held| Instant::now() < held.valid_until).map(|held| held.token)
    }

    /// Renew the lease if this node holds it, try to acquire it otherwise.
    pub async fn tick(&mut self) -> LeaderTick {
        let sent = Instant::now();
        let Some(held) = self.held.as_ref() else {
            return match self.try_acquire().await {
                Ok((true, holder)) => {
                    self.held = Some(HeldLease { token: holder.token, valid_until: sent + self.trusted_lease() });
                    LeaderTick {
                        state: LeaderState::Leader { token: holder.token },
                        change: Some(LeadershipChange::Gained { token: holder.token }),
                        error: None,
                    }
                }
                Ok((false, holder)) => LeaderTick {
                    state: LeaderState::Follower { leader: Some(holder) },
                    change: None,
                    error: None,
                },
                Err(error) => LeaderTick { state: LeaderState::Follower { leader: None }, change: None, error: Some(error) },
            };
        };
        let token = held.token;
        let mut call = self.renew.prepare_invoke();
        call.key(self.client.keys().leader()).arg(lease_value(token, &self.node_id)).arg(self.ttl_ms());
        match self.client.invoke::<u64>(&call).await {
            Ok(1) => {
                let valid_until = sent + self.trusted_lease();
                if let Some(held) = self.held.as_mut() {
                    held.valid_until = valid_until;
                }
                LeaderTick { state: LeaderState::Leader { token }, change: None, error: None }
            }
            Ok(_) => {
                self.held = None;
                tracing::warn!(node_id = %self.node_id, token, "leader: lease lost; stepping down");
                LeaderTick {
                    state: LeaderState::Follower { leader: None },
                    change: Some(LeadershipChange::Lost { token, reason: LossReason::LeaseLost }),
                    error: None,
                }
            }
            Err(error) if Instant::now() >= held.valid_until => {
                self.held = None;
                tracing::warn!(node_id = %self.node_id, token, %error, "leader: cannot renew the lease; stepping down");
                LeaderTick {
                    state: LeaderState::Follower { leader: None },
                    change: Some(LeadershipChange::Lost { token, reason: LossReason::Unreachable }),
                    error: Some(error),
                }
            }
            Err(error) => LeaderTick { state: LeaderState::Leader { token }, change: None, error: Some(error) },
        }
    }

    /// Give the lease up (clean shutdown, or handing over). Answers the change if this
    /// node was leading. Locally the node stops leading even if the store is unreachable
    /// (the lease then expires after its TTL).
    pub async fn release(&mut self) -> Result<Option<LeadershipChange>, CoordinationError> {
        let Some(held) = self.held.take() else { return Ok(None) };
        let mut call = self.release.prepare_invoke();
        call.key(self.client.keys().leader()).arg(lease_value(held.token, &self.node_id));
        self.client.invoke::<u64>(&call).await?;
        Ok(Some(LeadershipChange::Lost { token: held.token, reason: LossReason::Released }))
    }

    /// Who holds the lease now, as the store says (no change to this node's standing).
    pub async fn current_leader(&self) -> Result<Option<LeaseHolder>, CoordinationError> {
        let mut command = redis::cmd("GET");
        command.arg(self.client.keys().leader());
        let value: Option<String> = self.client.query(&command).await?;
        let Some(value) = value else { return Ok(None) };
        let (token, node_id) = value.split_once(' ').ok_or_else(|| malformed("leader lease"))?;
        Ok(Some(LeaseHolder {
            node_id: node_id.to_string(),
            token: token.parse().map_err(|_| malformed("leader token"))?,
        }))
    }

    async fn try_acquire(&self) -> Result<(bool, LeaseHolder), CoordinationError> {
        let keys = self.client.keys();
        let mut call = self.acquire.prepare_invoke();
        call.key(keys.leader()).key(keys.leader_token()).arg(&self.node_id).arg(self.ttl_ms());
        let reply: Value = self.client.invoke(&call).await?;
        let [acquired, token, holder]: [Value; 3] =
            array(reply)?.try_into().map_err(|_| malformed("acquire"))?;
        Ok((number(&acquired)? == 1, LeaseHolder { node_id: string(&holder)?, token: number(&token)? }))
    }
}
