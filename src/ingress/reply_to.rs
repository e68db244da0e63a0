//! Where an entry's replies may go. Every tenant has a reply prefix: the one configured
//! for it (`[tenants.ID] reply_prefix`, or `reply_prefix` in the admin API) or else its
//! default, `<P>-replies:<n>:<tenant>:` ([`default_reply_prefix`]). An entry's
//! `reply_to` must start with its tenant's prefix, so a producer's replies never land in
//! another tenant's streams or another application's keys, and never in Swell's own keys
//! (`<P>:`, the quota's prefix), whatever a prefix says. Configured prefixes are checked
//! so that none overlaps another tenant's, the default namespace or Swell's keys.

use swell_cluster::ingress_wire::{default_reply_prefix, prefixes_overlap, reply_namespace};


/// Longest configurable reply prefix (a `reply_to` is at most 512 bytes).
pub const MAX_REPLY_PREFIX_LENGTH: usize = 256;

/// Why an entry's `reply_to` gets no reply. Each variant has a stable [`code`](Self::code)
/// (the log field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyToRefusal {
    #[error("reply_to `{reply_to}` is one of swell's own keys (`{reserved}`)")]
    Reserved { reply_to: String, reserved: String },
    #[error("reply_to `{reply_to}` is outside the tenant's reply prefix `{prefix}`")]
    OutsidePrefix { reply_to: String, prefix: String },
    #[error("reply_to `{reply_to}` is outside every tenant's reply prefix (the entry names no tenant)")]
    OutsideNamespace { reply_to: String },
    #[error("reply_to `{reply_to}` holds a {kind}, not a stream")]
    NotAStream { reply_to: String, kind: String },
}

impl ReplyToRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            ReplyToRefusal::Reserved { .. } => "reply_to_reserved",
            ReplyToRefusal::OutsidePrefix { .. } | ReplyToRefusal::OutsideNamespace { .. } => "reply_to_not_permitted",
            ReplyToRefusal::NotAStream { .. } => "reply_to_not_a_stream",
        }
    }
}

/// The reply prefixes of one installation: Swell's own key prefixes (never a `reply_to`)
/// and the root of the default prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyNamespace {
    key_prefix: String,
    /// `<P>:` and the quota's `<Q>:`.
    reserved: Vec<String>,
    /// `<P>-replies:`: every default prefix starts with it.
    root: String,
}

impl ReplyNamespace {
    /// The namespace of an installation whose keys start with `key_prefix` and whose
    /// shared quotas' keys start with `quota_key_prefix`.
    pub fn new(key_prefix: &str, quota_key_prefix: &str) -> Self {
        Self {
            key_prefix: key_prefix.to_string(),
            reserved: vec![format!("{key_prefix}:"), format!("{quota_key_prefix}:")],
            root: reply_namespace(key_prefix),
        }
    }

    /// The reply prefix of tenant `tenant`: `configured`, or its default.
    pub fn tenant_prefix(&self, tenant: &str, configured: Option<&str>) -> String {
        configured.map_or_else(|| default_reply_prefix(&self.key_prefix, tenant), str::to_string)
    }

    /// Whether an entry of a tenant whose reply prefix is `tenant_prefix` may be answered
    /// at `reply_to`.
    pub fn check(&self, reply_to: &str, tenant_prefix: &str) -> Result<(), ReplyToRefusal> {
        self.check_not_reserved(reply_to)?;
        if !reply_to.starts_with(tenant_prefix) {
            return Err(ReplyToRefusal::OutsidePrefix { reply_to: reply_to.into(), prefix: tenant_prefix.into() });
        }
        Ok(())
    }

    /// Whether an entry whose tenant is not known (it could not be decoded, or its key is
    /// missing or wrong) may be answered at `reply_to`: only inside some tenant's reply
    /// prefix (`configured` are the configured ones), never in another application's keys.
    pub fn check_unattributed<'a>(
        &self,
        reply_to: &str,
        configured: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ReplyToRefusal> {
        self.check_not_reserved(reply_to)?;
        if reply_to.starts_with(&self.root) || configured.into_iter().any(|prefix| reply_to.starts_with(prefix)) {
            return Ok(());
        }
        Err(ReplyToRefusal::OutsideNamespace { reply_to: reply_to.into() })
    }

    /// Checks a tenant's configured reply prefix on its own: not empty, at most
    /// [`MAX_REPLY_PREFIX_LENGTH`] bytes, no control characters, and sharing no key with
    /// Swell's own keys or the default prefixes (whether it starts with one of them or
    /// they start with it). The caller checks it against the other tenants' prefixes.
    pub fn check_configured(&self, prefix: &str) -> Result<(), String> {
        if prefix.is_empty() || prefix.len() > MAX_REPLY_PREFIX_LENGTH || prefix.chars().any(char::is_control) {
            return Err(format!("must be 1 to {MAX_REPLY_PREFIX_LENGTH} bytes without control characters"));
        }
        if let Some(reserved) = self.reserved.iter().find(|reserved| prefixes_overlap(prefix, reserved)) {
            return Err(format!("`{prefix}` overlaps swell's own keys (`{reserved}`)"));
        }
        if prefixes_overlap(prefix, &self.root) {
            return Err(format!("`{prefix}` overlaps the default reply prefixes (`{}`)", self.root));
        }
        Ok(())
    }

    fn check_not_reserved(&self, reply_to: &str) -> Result<(), ReplyToRefusal> {
        match self.reserved.iter().find(|reserved| reply_to.starts_with(reserved.as_str())) {
            Some(reserved) => Err(ReplyToRefusal::Reserved { reply_to: reply_to.into(), reserved: reserved.clone() }),
            None => Ok(()),
        }
    }
}

/// A tenant id and its configured reply prefix.
pub type TenantReplyPrefix<'a> = (&'a str, &'a str);

/// The first two tenants whose configured reply prefixes overlap.
pub fn overlapping_prefixes<'a>(
    prefixes: impl IntoIterator<Item = TenantReplyPrefix<'a>>,
) -> Option<(TenantReplyPrefix<'a>, TenantReplyPrefix<'a>)> {
    let prefixes: Vec<TenantReplyPrefix> = prefixes.into_iter().collect();
    prefixes.iter().enumerate().find_map(|(index, a)| {
        prefixes[index + 1..].iter().find(|b| prefixes_overlap(a.1, b.1)).map(|b| (*a, *b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace() -> ReplyNamespace {
        ReplyNamespace::new("swell", "swell:quota")
    }

    #[test]
    fn a_tenant_may_reply_only_under_its_own_prefix() {
        let namespace = namespace();
        let col = namespace.tenant_prefix("col", None);
        let col_x = namespace.tenant_prefix("col:x", None);
        assert_eq!(col, "swell-replies:3:col:");
        assert!(namespace.check("swell-replies:3:col:{me}", &col).is_ok());
        // `col` cannot reach `col:x`'s streams, nor `col:x` those of `col`.
        let refusal = namespace.check("swell-replies:5:col:x:{me}", &col).unwrap_err();
        assert_eq!(refusal.code(), "reply_to_not_permitted");
        assert!(namespace.check("swell-replies:3:col:{me}", &col_x).is_err());
        assert!(namespace.check("orders:events", &col).is_err());
        // A configured prefix replaces the default.
        let acme = namespace.tenant_prefix("acme", Some("acme:replies:"));
        assert!(namespace.check("acme:replies:{1}", &acme).is_ok());
        assert!(namespace.check("swell-replies:4:acme:{1}", &acme).is_err());
    }

    #[test]
    fn swells_own_keys_are_never_a_reply_to() {
        let namespace = namespace();
        for reply_to in ["swell:{dep:default}:jobs", "swell:{ingress}:requests", "swell:quota:{t:a}:requests"] {
            let refusal = namespace.check(reply_to, "swell").unwrap_err();
            assert_eq!(refusal.code(), "reply_to_reserved", "{reply_to}");
            assert_eq!(namespace.check_unattributed(reply_to, ["swell"]).unwrap_err().code(), "reply_to_reserved");
        }
        let quota_elsewhere = ReplyNamespace::new("swell", "q");
        assert!(quota_elsewhere.check("q:{t:a}:requests", "q").is_err());
    }

    #[test]
    fn an_entry_of_no_known_tenant_is_answered_only_inside_the_reply_namespace() {
        let namespace = namespace();
        assert!(namespace.check_unattributed("swell-replies:4:acme:{x}", []).is_ok());
        assert!(namespace.check_unattributed("acme:replies:{x}", ["acme:replies:"]).is_ok());
        let refusal = namespace.check_unattributed("orders:events", ["acme:replies:"]).unwrap_err();
        assert_eq!(refusal.code(), "reply_to_not_permitted");
    }

    #[test]
    fn configured_prefixes_stay_clear_of_swells_keys_and_the_default_namespace() {
        let namespace = namespace();
        assert!(namespace.check_configured("acme:replies:").is_ok());
        for bad in ["", "swell:", "swell:x:", "s", "swell", "swell-replies:", "swell-replies:4:acme:", "swell-rep", "a\nb"] {
            assert!(namespace.check_configured(bad).is_err(), "{bad:?}");
        }
        assert!(namespace.check_configured(&"x".repeat(MAX_REPLY_PREFIX_LENGTH + 1)).is_err());
        assert_eq!(overlapping_prefixes([("a", "acme:"), ("b", "beta:")]), None);
        assert_eq!(overlapping_prefixes([("a", "acme:"), ("b", "beta:"), ("c", "acme:x:")]), Some((("a", "acme:"), ("c", "acme:x:"))));
    }
}
