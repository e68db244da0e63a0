//! [`RoutingPolicy`]: how a deployment's jobs are matched to its replicas.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How jobs are matched to replicas. Names (parse, display, serde): `any`,
/// `cache-aware`, `session`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RoutingPolicy {
    /// No preference: any replica with room takes the oldest job.
    #[default]
    #[serde(rename = "any")]
    AnyReplica,
    /// The replica with the lowest expected time to first token, counting the prompt
    /// prefix it already holds and the prefill work queued ahead of the job
    /// ([`crate::choose_cache_aware`]).
    #[serde(rename = "cache-aware")]
    CacheAware,
    /// The replica that served the job's session before, while it lives; otherwise the
    /// session's replica by rendezvous hashing over the live ones ([`crate::rendezvous`]).
    #[serde(rename = "session")]
    SessionAffine,
}

impl RoutingPolicy {
    /// Every policy, in the order tables list them.
    pub const ALL: [RoutingPolicy; 3] = [Self::AnyReplica, Self::CacheAware, Self::SessionAffine];

    /// The policy's name: `any`, `cache-aware` or `session`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AnyReplica => "any",
            Self::CacheAware => "cache-aware",
            Self::SessionAffine => "session",
        }
    }
}

impl fmt::Display for RoutingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A routing policy name that is none of `any`, `cache-aware`, `session`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRoutingPolicy(pub String);

impl fmt::Display for UnknownRoutingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown routing policy {:?}: expected any, cache-aware or session",
            self.0
        )
    }
}

impl std::error::Error for UnknownRoutingPolicy {}

impl FromStr for RoutingPolicy {
    type Err = UnknownRoutingPolicy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|policy| policy.name() == name)
            .ok_or_else(|| UnknownRoutingPolicy(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parse_display_and_serde() {
        for policy in RoutingPolicy::ALL {
            assert_eq!(policy.to_string().parse::<RoutingPolicy>(), Ok(policy));
            let json = serde_json::to_string(&policy).unwrap();
            assert_eq!(json, format!("\"{policy}\""));
            assert_eq!(
                serde_json::from_str::<RoutingPolicy>(&json).unwrap(),
                policy
            );
        }
        assert_eq!(
            "cache_aware".parse::<RoutingPolicy>(),
            Err(UnknownRoutingPolicy("cache_aware".into()))
        );
        assert_eq!(RoutingPolicy::default(), RoutingPolicy::AnyReplica);
    }
}
