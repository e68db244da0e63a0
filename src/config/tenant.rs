//! `[tenants.<id>]`: a tenant's limits, keys (stored hashed), priority, reserved
//! replicas and reply prefix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use swell_actors::quota::TenantLimits;
use swell_cluster::Priority;

use crate::tenants::TenantCapacity;

/// `[tenants.ID]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    #[serde(default)]
    pub limits: TenantLimits,
    /// Queue service order of its requests: `high`, `normal` (default) or `low`.
    #[serde(default)]
    pub priority: Priority,
    /// Replicas kept warm for it, per deployment (see [`crate::tenants`]).
    #[serde(default)]
    pub reserved_replicas: BTreeMap<String, u32>,
    /// Stored keys, `sha256:<hex of SHA-256 of the key>` (`swell keygen` prints both).
    #[serde(default)]
    pub api_key_hashes: Vec<String>,
    /// The Redis ingress answers its entries only at a `reply_to` starting with this
    /// (default: `<cluster.key_prefix>-replies:<n>:<id>:`, `<n>` the id's length; see
    /// docs/ingress.md). Must not overlap another tenant's, the default prefixes or
    /// Swell's own keys.
    #[serde(default)]
    pub reply_prefix: Option<String>,
}

impl TenantConfig {
    /// Its priority and reservations, as the tenant registry keeps them.
    pub fn capacity(&self) -> TenantCapacity {
        TenantCapacity { priority: self.priority, reserved_replicas: self.reserved_replicas.clone() }
    }
}
