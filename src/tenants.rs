//! Tenants and their API keys.
//!
//! A tenant has limits (enforced by its own `QuotaActor`) and any number of API keys. A
//! key is `sk-swell-` followed by 32 random bytes in hex; only its SHA-256 is stored
//! (`sha256:<hex>`), and requests are matched by hashing the presented key and looking
//! the hash up. A key's id is the first 8 hex digits of its hash: it names the key in the
//! admin API without revealing it.
//!
//! While no tenant has a key, `/v1` is open and every request runs as the tenant
//! `anonymous` (unlimited unless `[tenants.anonymous]` sets limits). Once any key exists,
//! `/v1` requires `Authorization: Bearer <key>`.
//!
//! A tenant may have a configured reply prefix: the Redis ingress answers its entries
//! only at a `reply_to` starting with it (without one, a default derived from the tenant
//! id; see [`crate::ingress::ReplyNamespace`]). No two tenants' configured prefixes
//! overlap (neither starts with the other).
//!
//! Requests are not listed anywhere: a request is reachable only through the stream its
//! own client holds, so no tenant can see another's.
//!
//! # Capacity: priority and reserved replicas
//! Beside its limits a tenant has a [`TenantCapacity`]:
//! - `priority` (`high` | `normal` | `low`, default `normal`): its requests wait in the
//!   deployment's queue at that priority, and replicas lease every waiting job of a
//!   higher priority first (oldest first within one; jobs handed back by a retiring or
//!   failed replica still go first). When the replica budget is full (`max_replicas`
//!   with a backlog), lower priorities wait; `low` requests are also refused early (see
//!   the deployment's `low_priority_queue_share`).
//! - `reserved_replicas` (deployment → replicas): the deployment keeps at least the sum
//!   of its tenants' reservations warm (a floor under the autoscaler, so it never scales
//!   to zero while any reservation exists), and the reserving tenant's requests to it are
//!   enqueued at `high` while the tenant has fewer in flight there, through this gateway,
//!   than its *reserved share*: its reserved replicas × the deployment's
//!   `autoscaling.load_targets.concurrent_requests` per replica (1 per replica when that
//!   target is off). Beyond the share its requests take its own `priority`. A reservation
//!   guarantees warm replicas and first service up to the share; it does not pin
//!   replicas to the tenant (other tenants' jobs run on them when it is idle).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use actix::{Actor, Addr};
use actix_rt::ArbiterHandle;
use parking_lot::RwLock;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use swell_actors::quota::{QuotaActor, QuotaBackend, SetLimits, TenantLimits};
use swell_cluster::ingress_wire::prefixes_overlap;
use swell_cluster::Priority;

/// Every way authenticating, or managing a tenant or its keys, can fail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TenantError {
    #[error("missing api key: send `Authorization: Bearer <key>`")]
    MissingApiKey,
    #[error("invalid api key")]
    InvalidApiKey,
    #[error("tenant `{0}` does not exist")]
    NotFound(String),
    #[error("tenant `{tenant}` has no key `{key_id}`")]
    KeyNotFound { tenant: String, key_id: String },
    /// A tenant definition failed validation; `param` names the key.
    #[error("{message}")]
    InvalidConfig { message: String, param: Option<String> },
    #[error("internal error: {0}")]
    Internal(String),
}

impl TenantError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TenantError::MissingApiKey => "missing_api_key",
            TenantError::InvalidApiKey => "invalid_api_key",
            TenantError::NotFound(_) => "tenant_not_found",
            TenantError::KeyNotFound { .. } => "key_not_found",
            TenantError::InvalidConfig { .. } => "invalid_config",
            TenantError::Internal(_) => "internal_error",
        }
    }
}

/// The tenant requests run as while no key exists.
pub const ANONYMOUS_TENANT: &str = "anonymous";
pub const API_KEY_PREFIX: &str = "sk-swell-";
pub const HASH_PREFIX: &str = "sha256:";

/// A freshly generated key: the secret (shown once) and what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub api_key: String,
    pub hash: String,
    pub key_id: String,
}

/// `sk-swell-` + 32 random bytes in hex.
pub fn generate_api_key() -> GeneratedKey {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let api_key = format!("{API_KEY_PREFIX}{}", hex::encode(secret));
    let hash = hash_api_key(&api_key);
    let key_id = key_id_of(&hash).to_string();
    GeneratedKey { api_key, hash, key_id }
}

/// `sha256:<hex>` of a key.
pub fn hash_api_key(api_key: &str) -> String {
    format!("{HASH_PREFIX}{}", hex::encode(Sha256::digest(api_key.as_bytes())))
}

/// Whether `hash` is a well-formed stored key hash.
pub fn is_valid_key_hash(hash: &str) -> bool {
    hash.strip_prefix(HASH_PREFIX).is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The id of a stored key: the first 8 hex digits of its hash.
pub fn key_id_of(hash: &str) -> &str {
    let hex = hash.strip_prefix(HASH_PREFIX).unwrap_or(hash);
    &hex[..hex.len().min(8)]
}

/// Tenant ids and deployment names: 1 to 64 of `[A-Za-z0-9._:-]`, starting alphanumeric.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// The `Bearer` token of an `Authorization` header value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// A tenant's claim on capacity (see the module docs): its queue priority and the
/// replicas reserved for it per deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCapacity {
    pub priority: Priority,
    pub reserved_replicas: BTreeMap<String, u32>,
}

impl TenantCapacity {
    /// Checks the reservations' own shape (`prefix` names the key in errors); their sum
    /// against each deployment's `max_replicas` is checked by whoever knows both.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        for (deployment, replicas) in &self.reserved_replicas {
            if !is_valid_name(deployment) {
                return Err(format!("{prefix}.reserved_replicas: invalid deployment name `{deployment}`"));
            }
            if *replicas == 0 {
                return Err(format!(
                    "{prefix}.reserved_replicas.{deployment} must be at least 1 (omit it for no reservation)"
                ));
            }
        }
        Ok(())
    }
}

/// What a request needs of its tenant.
#[derive(Debug, Clone)]
pub struct TenantHandle {
    pub id: String,
    pub limits: TenantLimits,
    pub capacity: TenantCapacity,
    pub quota: Addr<QuotaActor>,
    /// Its configured ingress reply prefix (`None`: the default one).
    pub reply_prefix: Option<String>,
}

impl TenantHandle {
    pub fn has_limits(&self) -> bool {
        self.limits != TenantLimits::default()
    }
}

/// A tenant as the admin API shows it (never the key hashes).
#[derive(Debug, Clone, Serialize)]
pub struct TenantSummary {
    pub id: String,
    pub limits: TenantLimits,
    #[serde(flatten)]
    pub capacity: TenantCapacity,
    /// Its configured ingress reply prefix (`None`: the default one).
    pub reply_prefix: Option<String>,
    pub key_ids: Vec<String>,
}

struct TenantEntry {
    limits: TenantLimits,
    capacity: TenantCapacity,
    quota: Addr<QuotaActor>,
    key_hashes: BTreeSet<String>,
    reply_prefix: Option<String>,
}

#[derive(Default)]
struct Registry {
    tenants: BTreeMap<String, TenantEntry>,
    /// Key hash → tenant id.
    by_hash: HashMap<String, String>,
}

/// Requests in flight within a reserved share, per (tenant, deployment), on this gateway.
#[derive(Default)]
struct ReservedInFlight(parking_lot::Mutex<HashMap<(String, String), u64>>);

/// One request counted against its tenant's reserved share; dropping it (when the
/// request's stream ends) gives the place back.
pub struct ReservedSlot {
    counters: Arc<ReservedInFlight>,
    key: (String, String),
    count: u64,
}

impl Drop for ReservedSlot {
    fn drop(&mut self) {
        let mut counters = self.counters.0.lock();
        if let Some(in_flight) = counters.get_mut(&self.key) {
            *in_flight = in_flight.saturating_sub(self.count);
            if *in_flight == 0 {
                counters.remove(&self.key);
            }
        }
    }
}

/// Whether the tenant was created or updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Created,
    Updated,
}

/// The tenant registry. Quota actors run on the control-plane arbiter.
pub struct Tenants {
    registry: RwLock<Registry>,
    arbiter: ArbiterHandle,
    quota_backend: QuotaBackend,
    reserved_in_flight: Arc<ReservedInFlight>,
}

impl Tenants {
    /// Tenants whose quotas are local to this node.
    pub fn new(arbiter: ArbiterHandle) -> Self {
        Self::with_quota_backend(arbiter, QuotaBackend::Local)
    }

    /// Tenants whose quotas are decided by `quota_backend` (e.g. shared in Redis:
    /// `QuotaBackend::redis(url, config.quota.clone())`).
    pub fn with_quota_backend(arbiter: ArbiterHandle, quota_backend: QuotaBackend) -> Self {
        Self {
            registry: RwLock::new(Registry::default()),
            arbiter,
            quota_backend,
            reserved_in_flight: Arc::default(),
        }
    }

    /// Creates a tenant or changes its limits and capacity settings (a live quota keeps
    /// unchanged buckets; the reply prefix is [`set_reply_prefix`](Self::set_reply_prefix)'s).
    pub fn upsert(&self, id: &str, limits: TenantLimits, capacity: TenantCapacity) -> Upsert {
        let mut registry = self.registry.write();
        if let Some(entry) = registry.tenants.get_mut(id) {
            entry.quota.do_send(SetLimits(limits.clone()));
            entry.limits = limits;
            entry.capacity = capacity;
            return Upsert::Updated;
        }
        let (tenant, initial, backend) = (id.to_string(), limits.clone(), self.quota_backend.clone());
        let quota =
            QuotaActor::start_in_arbiter(&self.arbiter, move |_| QuotaActor::with_backend(tenant, initial, backend));
        registry
            .tenants
            .insert(id.to_string(), TenantEntry { limits, capacity, quota, key_hashes: BTreeSet::new(), reply_prefix: None });
        Upsert::Created
    }

    /// Whether tenant `id` may have `prefix` as its reply prefix: no other tenant's
    /// configured prefix overlaps it. (Its own shape and its distance from Swell's keys
    /// are [`crate::ingress::ReplyNamespace::check_configured`]'s.)
    pub fn check_reply_prefix(&self, id: &str, prefix: &str) -> Result<(), TenantError> {
        Self::check_reply_prefix_in(&self.registry.read(), id, prefix)
    }

    /// Sets (or, with `None`, removes) tenant `id`'s configured reply prefix, checked
    /// against the other tenants' as [`check_reply_prefix`](Self::check_reply_prefix) does.
    pub fn set_reply_prefix(&self, id: &str, prefix: Option<String>) -> Result<(), TenantError> {
        let mut registry = self.registry.write();
        if let Some(prefix) = &prefix {
            Self::check_reply_prefix_in(&registry, id, prefix)?;
        }
        let entry = registry.tenants.get_mut(id).ok_or_else(|| TenantError::NotFound(id.to_string()))?;
        entry.reply_prefix = prefix;
        Ok(())
    }

    fn check_reply_prefix_in(registry: &Registry, id: &str, prefix: &str) -> Result<(), TenantError> {
        let clash = registry.tenants.iter().find(|(other, entry)| {
            other.as_str() != id && entry.reply_prefix.as_deref().is_some_and(|theirs| prefixes_overlap(prefix, theirs))
        });
        match clash {
            Some((other, entry)) => Err(TenantError::InvalidConfig {
                message: format!(
                    "reply_prefix `{prefix}` overlaps tenant `{other}`'s `{}`",
                    entry.reply_prefix.as_deref().unwrap_or_default()
                ),
                param: Some("reply_prefix".into()),
            }),
            None => Ok(()),
        }
    }

    /// Every tenant's configured reply prefix.
    pub fn reply_prefixes(&self) -> Vec<String> {
        self.registry.read().tenants.values().filter_map(|entry| entry.reply_prefix.clone()).collect()
    }

    /// The replicas all tenants reserve on `deployment`, except `except` (a tenant whose
    /// settings are about to change).
    pub fn reserved_replicas(&self, deployment: &str, except: Option<&str>) -> u32 {
        self.registry
            .read()
            .tenants
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .filter_map(|(_, entry)| entry.capacity.reserved_replicas.get(deployment))
            .sum()
    }

    /// Counts `jobs` requests of `tenant` on `deployment` against its reserved share of
    /// `share` requests in flight, if they fit: then they are served at `high` until the
    /// slot is dropped. `None` when they do not fit (or `share` is 0).
    pub fn take_reserved_slot(&self, tenant: &str, deployment: &str, share: u64, jobs: u64) -> Option<ReservedSlot> {
        let key = (tenant.to_string(), deployment.to_string());
        let mut counters = self.reserved_in_flight.0.lock();
        let in_flight = counters.entry(key.clone()).or_insert(0);
        if *in_flight + jobs > share {
            if *in_flight == 0 {
                counters.remove(&key);
            }
            return None;
        }
        *in_flight += jobs;
        Some(ReservedSlot { counters: self.reserved_in_flight.clone(), key, count: jobs })
    }

    /// Adds a stored key hash to a tenant.
    pub fn add_key_hash(&self, id: &str, hash: &str) -> Result<(), TenantError> {
        let mut registry = self.registry.write();
        if let Some(owner) = registry.by_hash.get(hash) {
            if owner != id {
                return Err(TenantError::InvalidConfig {
                    message: format!("the key hash is already used by another tenant (key id {})", key_id_of(hash)),
                    param: Some("api_key_hashes".into()),
                });
            }
        }
        let entry = registry.tenants.get_mut(id).ok_or_else(|| TenantError::NotFound(id.to_string()))?;
        entry.key_hashes.insert(hash.to_string());
        registry.by_hash.insert(hash.to_string(), id.to_string());
        Ok(())
    }

    /// Generates a key for a tenant; the secret is in the answer and nowhere else.
    pub fn create_key(&self, id: &str) -> Result<GeneratedKey, TenantError> {
        loop {
            let key = generate_api_key();
            let clashes = {
                let registry = self.registry.read();
                let entry = registry.tenants.get(id).ok_or_else(|| TenantError::NotFound(id.to_string()))?;
                entry.key_hashes.iter().any(|hash| key_id_of(hash) == key.key_id)
            };
            // Key ids must name one key of the tenant; a clash (1 in 4 billion) draws again.
            if !clashes {
                self.add_key_hash(id, &key.hash)?;
                return Ok(key);
            }
        }
    }

    /// Revokes a tenant's key by its id.
    pub fn revoke_key(&self, id: &str, key_id: &str) -> Result<(), TenantError> {
        let mut registry = self.registry.write();
        let entry = registry.tenants.get_mut(id).ok_or_else(|| TenantError::NotFound(id.to_string()))?;
        let hash = entry
            .key_hashes
            .iter()
            .find(|hash| key_id_of(hash) == key_id)
            .cloned()
            .ok_or_else(|| TenantError::KeyNotFound { tenant: id.to_string(), key_id: key_id.to_string() })?;
        entry.key_hashes.remove(&hash);
        registry.by_hash.remove(&hash);
        Ok(())
    }

    /// Whether any tenant has a key (then `/v1` requires one).
    pub fn auth_required(&self) -> bool {
        !self.registry.read().by_hash.is_empty()
    }

    /// The tenant of a request, from its `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<TenantHandle, TenantError> {
        if !self.auth_required() {
            return self.handle(ANONYMOUS_TENANT).ok_or_else(|| {
                TenantError::Internal("the anonymous tenant is missing".into())
            });
        }
        let header = authorization.ok_or(TenantError::MissingApiKey)?;
        let key = bearer_token(header).ok_or(TenantError::InvalidApiKey)?;
        self.authenticate_key(key)
    }

    /// The tenant owning `api_key`.
    pub fn authenticate_key(&self, api_key: &str) -> Result<TenantHandle, TenantError> {
        self.tenant_of_hash(&hash_api_key(api_key))
    }

    /// The tenant of a key presented earlier (a WebSocket connection keeps the key's
    /// hash, not the tenant, and asks again for every request): the tenant as it is
    /// now, with its current limits; `invalid_api_key` once the key is revoked. While no
    /// key exists at all, `anonymous`, as for [`Tenants::authenticate`].
    pub fn authenticate_hash(&self, hash: &str) -> Result<TenantHandle, TenantError> {
        if !self.auth_required() {
            return self.authenticate(None);
        }
        self.tenant_of_hash(hash)
    }

    fn tenant_of_hash(&self, hash: &str) -> Result<TenantHandle, TenantError> {
        let registry = self.registry.read();
        let tenant = registry.by_hash.get(hash).ok_or(TenantError::InvalidApiKey)?;
        let entry = registry.tenants.get(tenant).ok_or(TenantError::InvalidApiKey)?;
        Ok(TenantHandle {
            id: tenant.clone(),
            limits: entry.limits.clone(),
            capacity: entry.capacity.clone(),
            quota: entry.quota.clone(),
            reply_prefix: entry.reply_prefix.clone(),
        })
    }

    pub fn handle(&self, id: &str) -> Option<TenantHandle> {
        let registry = self.registry.read();
        let entry = registry.tenants.get(id)?;
        Some(TenantHandle {
            id: id.to_string(),
            limits: entry.limits.clone(),
            capacity: entry.capacity.clone(),
            quota: entry.quota.clone(),
            reply_prefix: entry.reply_prefix.clone(),
        })
    }

    pub fn summary(&self, id: &str) -> Option<TenantSummary> {
        let registry = self.registry.read();
        let entry = registry.tenants.get(id)?;
        Some(TenantSummary {
            id: id.to_string(),
            limits: entry.limits.clone(),
            capacity: entry.capacity.clone(),
            reply_prefix: entry.reply_prefix.clone(),
            key_ids: entry.key_hashes.iter().map(|hash| key_id_of(hash).to_string()).collect(),
        })
    }

    pub fn ids(&self) -> Vec<String> {
        self.registry.read().tenants.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_swell_prefix_and_64_hex_digits() {
        let key = generate_api_key();
        let secret = key.api_key.strip_prefix(API_KEY_PREFIX).unwrap();
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(generate_api_key().api_key, key.api_key);
        assert_eq!(key.hash, hash_api_key(&key.api_key));
        assert!(is_valid_key_hash(&key.hash));
        assert_eq!(key.key_id, &key.hash[7..15]);
    }

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            hash_api_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!is_valid_key_hash("sha256:BA7816"));
        assert!(!is_valid_key_hash("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
        assert_eq!(key_id_of("sha256:ba7816bf8f01"), "ba7816bf");
    }

    #[test]
    fn bearer_tokens_are_parsed() {
        assert_eq!(bearer_token("Bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("bearer  sk-1 "), Some("sk-1"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("sk-1"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(is_valid_name("chat"));
        assert!(is_valid_name("llama-3.1-8b:instruct_v2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("-chat"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"a".repeat(65)));
    }

    #[actix_rt::test]
    async fn requests_are_anonymous_until_a_key_exists() {
        let tenants = Tenants::new(actix_rt::Arbiter::current());
        tenants.upsert(ANONYMOUS_TENANT, TenantLimits::default(), TenantCapacity::default());
        tenants.upsert("acme", TenantLimits { requests_per_minute: Some(2), ..Default::default() }, TenantCapacity::default());
        assert_eq!(tenants.authenticate(None).unwrap().id, ANONYMOUS_TENANT);
        assert_eq!(tenants.authenticate(Some("Bearer whatever")).unwrap().id, ANONYMOUS_TENANT);

        let key = tenants.create_key("acme").unwrap();
        assert!(tenants.auth_required());
        let tenant = tenants.authenticate(Some(&format!("Bearer {}", key.api_key))).unwrap();
        assert_eq!(tenant.id, "acme");
        assert!(tenant.has_limits());
        assert_eq!(tenants.authenticate(None).unwrap_err().code(), "missing_api_key");
        assert_eq!(tenants.authenticate(Some("Bearer sk-swell-nope")).unwrap_err().code(), "invalid_api_key");
        assert_eq!(tenants.authenticate(Some(&key.api_key)).unwrap_err().code(), "invalid_api_key");

        let summary = tenants.summary("acme").unwrap();
        assert_eq!(summary.key_ids, std::slice::from_ref(&key.key_id));
        let shown = serde_json::to_string(&summary).unwrap();
        assert!(!shown.contains(&key.hash[7..]), "no hash is ever shown");

        // A key presented earlier is looked up again by its hash: current limits, and
        // refused once revoked (while another key keeps auth on).
        let other = tenants.create_key("acme").unwrap();
        tenants.upsert("acme", TenantLimits { max_concurrent_requests: Some(1), ..Default::default() }, TenantCapacity::default());
        let again = tenants.authenticate_hash(&key.hash).unwrap();
        assert_eq!(again.limits.max_concurrent_requests, Some(1), "the limits as they are now");
        tenants.revoke_key("acme", &key.key_id).unwrap();
        assert_eq!(tenants.authenticate_hash(&key.hash).unwrap_err().code(), "invalid_api_key");
        tenants.revoke_key("acme", &other.key_id).unwrap();
        assert_eq!(tenants.revoke_key("acme", &key.key_id).unwrap_err().code(), "key_not_found");
        assert!(!tenants.auth_required());
    }

    #[test]
    fn reservations_are_checked() {
        let capacity = |deployment: &str, replicas| TenantCapacity {
            reserved_replicas: BTreeMap::from([(deployment.to_string(), replicas)]),
            ..Default::default()
        };
        assert!(capacity("chat", 1).validate("tenants.a").is_ok());
        let error = capacity("chat", 0).validate("tenants.a").unwrap_err();
        assert!(error.contains("tenants.a.reserved_replicas.chat must be at least 1"), "{error}");
        let error = capacity("a/b", 1).validate("tenants.a").unwrap_err();
        assert!(error.contains("invalid deployment name `a/b`"), "{error}");
        let parsed: TenantCapacity = serde_json::from_str(r#"{"priority": "low", "reserved_replicas": {}}"#).unwrap();
        assert_eq!(parsed.priority, Priority::Low);
        assert!(serde_json::from_str::<TenantCapacity>(r#"{"priority": "urgent", "reserved_replicas": {}}"#).is_err());
    }

    #[actix_rt::test]
    async fn reserved_replicas_add_up_per_deployment_and_slots_are_bounded_by_the_share() {
        let tenants = Tenants::new(actix_rt::Arbiter::current());
        let reserving = |replicas: u32| TenantCapacity {
            reserved_replicas: BTreeMap::from([("chat".to_string(), replicas)]),
            ..Default::default()
        };
        tenants.upsert("a", TenantLimits::default(), reserving(1));
        tenants.upsert("b", TenantLimits::default(), reserving(2));
        tenants.upsert("c", TenantLimits::default(), TenantCapacity::default());
        assert_eq!(tenants.reserved_replicas("chat", None), 3);
        assert_eq!(tenants.reserved_replicas("chat", Some("b")), 1);
        assert_eq!(tenants.reserved_replicas("other", None), 0);

        // A share of 2 in flight: two single jobs fit, a third does not, until one ends.
        let first = tenants.take_reserved_slot("a", "chat", 2, 1).expect("fits");
        let second = tenants.take_reserved_slot("a", "chat", 2, 1).expect("fits");
        assert!(tenants.take_reserved_slot("a", "chat", 2, 1).is_none());
        assert!(tenants.take_reserved_slot("b", "chat", 2, 2).is_some(), "counted per tenant");
        drop(first);
        let third = tenants.take_reserved_slot("a", "chat", 2, 1).expect("a place was given back");
        drop((second, third));
        assert!(tenants.take_reserved_slot("a", "chat", 2, 3).is_none(), "3 jobs never fit a share of 2");
        assert!(tenants.take_reserved_slot("a", "chat", 0, 1).is_none());
        assert!(tenants.reserved_in_flight.0.lock().is_empty(), "no counter is left behind");
    }

    #[actix_rt::test]
    async fn no_two_tenants_have_overlapping_reply_prefixes() {
        let tenants = Tenants::new(actix_rt::Arbiter::current());
        tenants.upsert("a", TenantLimits::default(), TenantCapacity::default());
        tenants.upsert("b", TenantLimits::default(), TenantCapacity::default());
        tenants.set_reply_prefix("a", Some("acme:replies:".into())).unwrap();
        for clash in ["acme:", "acme:replies:", "acme:replies:x:"] {
            assert_eq!(tenants.set_reply_prefix("b", Some(clash.into())).unwrap_err().code(), "invalid_config", "{clash}");
            assert!(tenants.check_reply_prefix("b", clash).is_err());
        }
        assert!(tenants.check_reply_prefix("a", "acme:").is_ok(), "a tenant may change its own");
        tenants.set_reply_prefix("b", Some("beta:".into())).unwrap();
        assert_eq!(tenants.handle("b").unwrap().reply_prefix.as_deref(), Some("beta:"));
        // An update of its limits keeps the prefix; `None` gives back the default.
        tenants.upsert("b", TenantLimits::default(), TenantCapacity::default());
        assert_eq!(tenants.summary("b").unwrap().reply_prefix.as_deref(), Some("beta:"));
        let mut prefixes = tenants.reply_prefixes();
        prefixes.sort();
        assert_eq!(prefixes, ["acme:replies:", "beta:"]);
        tenants.set_reply_prefix("b", None).unwrap();
        assert_eq!(tenants.handle("b").unwrap().reply_prefix, None);
        assert_eq!(tenants.set_reply_prefix("nobody", None).unwrap_err().code(), "tenant_not_found");
    }

    #[actix_rt::test]
    async fn a_hash_belongs_to_one_tenant() {
        let tenants = Tenants::new(actix_rt::Arbiter::current());
        assert_eq!(tenants.upsert("a", TenantLimits::default(), TenantCapacity::default()), Upsert::Created);
        assert_eq!(tenants.upsert("a", TenantLimits::default(), TenantCapacity::default()), Upsert::Updated);
        tenants.upsert("b", TenantLimits::default(), TenantCapacity::default());
        let hash = hash_api_key("k");
        tenants.add_key_hash("a", &hash).unwrap();
        tenants.add_key_hash("a", &hash).unwrap();
        assert_eq!(tenants.add_key_hash("b", &hash).unwrap_err().code(), "invalid_config");
        assert_eq!(tenants.create_key("nobody").unwrap_err().code(), "tenant_not_found");
        assert_eq!(tenants.authenticate_key("k").unwrap().id, "a");
    }
}
