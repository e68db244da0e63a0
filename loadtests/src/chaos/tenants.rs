//! The campaign's tenants and the quota check.
//!
//! Two tenants, each with a fixed key (test keys, in the config as hashes): `bulk`, with
//! no limits, and `capped`, limited to [`CAPPED_LIMIT`] concurrent requests; odd clients
//! are `capped`, so twice as many of its clients as its limit keep asking. Concurrency is
//! enforced in Redis across the gateways and, while Redis is unreachable, refused
//! (`concurrent_requests = "fail_closed"`): the limit must hold exactly, faults or not.
//! A slot's lease (8 s, renewed every second) outlasts any pause, so a live gateway never
//! loses the slots of its requests; a dead one's come back within 8 s.
//!
//! [`check_quota`] checks it from the clients' histories, on the clients' one clock. A
//! request holds its slot from its admission, which comes before the client learns it
//! was accepted, until its end, which comes after its last token was generated; the
//! `sim` engine generates a token per step, so a request that completed with all its
//! `max_tokens` ended no sooner than `(max_tokens - 1)` steps after it was sent. Between
//! those two times, both seen on the client's clock, it surely held a slot: more such
//! intervals overlapping than the limit is a quota exceeded. (It cannot see every
//! excess, only proven ones.)

use sha2::{Digest, Sha256};

use crate::chaos::history::{Anomaly, End, History};

/// `capped`'s `max_concurrent_requests`.
pub const CAPPED_LIMIT: usize = 2;

/// The tenant of client `index`.
pub fn tenant_of(index: usize) -> &'static str {
    if index % 2 == 1 {
        "capped"
    } else {
        "bulk"
    }
}

/// The API key of `tenant` (a test key, the same every campaign).
pub fn key_of(tenant: &str) -> String {
    let digest = Sha256::digest(format!("swell-chaos key of {tenant}").as_bytes());
    format!("sk-swell-{}", hex(&digest))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `[tenants]` and `[quota]` tables of the nodes' config.
pub fn config(gateways: usize) -> String {
    let hash = |tenant: &str| format!("sha256:{}", hex(&Sha256::digest(key_of(tenant).as_bytes())));
    format!(
        r#"
[tenants.bulk]
api_key_hashes = ["{}"]
[tenants.capped]
api_key_hashes = ["{}"]
limits = {{ max_concurrent_requests = {CAPPED_LIMIT} }}
[quota]
node_count = {gateways}
lease_ttl = "8s"
lease_renew_interval = "1s"
[quota.failure_policy]
concurrent_requests = "fail_closed"
"#,
        hash("bulk"),
        hash("capped")
    )
}

/// What the quota check saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QuotaSeen {
    /// `capped` requests whose slot interval could be proven (completed in full).
    pub proven: u64,
    /// The most proven intervals that overlapped at once.
    pub max_overlap: usize,
    /// `capped` requests refused with `concurrency_limit_exceeded`.
    pub refused: u64,
}

/// The quota check (see the module docs): `step_ms` and `max_tokens` of the campaign.
pub fn check_quota(histories: &[History], step_ms: u64, max_tokens: u32) -> (QuotaSeen, Vec<Anomaly>) {
    let mut seen = QuotaSeen::default();
    let min_generation = u64::from(max_tokens.saturating_sub(1)) * step_ms;
    let mut intervals: Vec<(u64, u64, &History)> = Vec::new();
    for history in histories.iter().filter(|h| h.tenant == "capped") {
        match &history.end {
            End::NotAccepted { why } if why.contains("concurrency_limit_exceeded") => seen.refused += 1,
            End::Completed { finish } if finish == "length" => {
                let (Some(accepted), ended) = (history.accepted_ms, history.sent_ms + min_generation) else { continue };
                if accepted < ended {
                    intervals.push((accepted, ended, history));
                }
                seen.proven += 1;
            }
            _ => {}
        }
    }
    // Sweep: starts before ends at the same instant would count a hand-over as overlap.
    let mut points: Vec<(u64, i32, usize)> = Vec::new();
    for (i, (start, end, _)) in intervals.iter().enumerate() {
        points.push((*start, 1, i));
        points.push((*end, -1, i));
    }
    points.sort_by_key(|&(at, delta, _)| (at, delta));
    let (mut open, mut anomalies) = (Vec::<usize>::new(), Vec::new());
    for (at, delta, i) in points {
        if delta < 0 {
            open.retain(|&j| j != i);
            continue;
        }
        open.push(i);
        seen.max_overlap = seen.max_overlap.max(open.len());
        if open.len() > CAPPED_LIMIT {
            let held: Vec<String> = open
                .iter()
                .map(|&j| format!("client {} #{} ({})", intervals[j].2.client, intervals[j].2.number, intervals[j].2.transport))
                .collect();
            anomalies.push(Anomaly {
                kind: "quota exceeded",
                detail: format!("{} requests of `capped` held slots at {at} ms (limit {CAPPED_LIMIT}): {}", open.len(), held.join(", ")),
                history: intervals[i].2.clone(),
            });
        }
    }
    (seen, anomalies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(client: usize, sent_ms: u64, accepted_ms: u64) -> History {
        let mut h = History::new(client, 1, "sse", 0, 0);
        h.tenant = "capped".into();
        h.sent_ms = sent_ms;
        h.accepted_ms = Some(accepted_ms);
        h.end = End::Completed { finish: "length".into() };
        h
    }

    #[test]
    fn more_proven_slots_at_once_than_the_limit_is_found() {
        // 48 tokens at 50 ms: each surely holds its slot until sent + 2,350 ms.
        let fine = [capped(1, 0, 10), capped(3, 100, 120), capped(5, 2_400, 2_410)];
        let (seen, anomalies) = check_quota(&fine, 50, 48);
        assert!(anomalies.is_empty(), "{anomalies:?}");
        assert_eq!((seen.proven, seen.max_overlap), (3, 2));
        let over = [capped(1, 0, 10), capped(3, 100, 120), capped(5, 200, 220)];
        let (seen, anomalies) = check_quota(&over, 50, 48);
        assert_eq!(seen.max_overlap, 3);
        assert_eq!(anomalies.len(), 1);
        assert!(anomalies[0].detail.contains("3 requests of `capped`"), "{}", anomalies[0].detail);
        // Accepted after it must have ended (a late acceptance): proves nothing.
        let late = [capped(1, 0, 10), capped(3, 0, 20), capped(5, 0, 9_000)];
        assert!(check_quota(&late, 50, 48).1.is_empty());
    }

    #[test]
    fn keys_and_tenants_are_fixed() {
        assert_eq!((tenant_of(0), tenant_of(1)), ("bulk", "capped"));
        assert!(key_of("bulk").starts_with("sk-swell-") && key_of("bulk").len() == 9 + 64);
        assert_ne!(key_of("bulk"), key_of("capped"));
        assert!(config(2).contains("node_count = 2") && config(2).contains("max_concurrent_requests = 2"));
    }
}
