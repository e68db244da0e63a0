//! Which series of `/metrics` still describe something that exists.
//!
//! Deployments and replicas come and go; their series (labelled `deployment="…"` and
//! `replica="…"`) would stay in the Prometheus recorder and in every scrape forever (the
//! exporter cannot delete a series). So the things that own those labels say when a
//! value starts and stops naming something live: the deployment supervisor for its
//! deployment and for each replica it starts. Values are counted (several servers in one
//! process may run a deployment of the same name), and a rendered line whose labels name
//! a value that was live once and is live no more is left out of the scrape. A value
//! that becomes live again (a deployment created again under its old name) shows its
//! series again, counters continuing where they were.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

/// The labels whose values name things with a lifetime.
pub const LIFETIME_LABELS: [&str; 2] = ["deployment", "replica"];

/// (label, value) → how many live things it names.
static LIVE: LazyLock<Mutex<HashMap<(&'static str, String), u64>>> = LazyLock::new(Mutex::default);

fn live_counts() -> MutexGuard<'static, HashMap<(&'static str, String), u64>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `label="value"` names something that exists (once more).
pub fn live(label: &'static str, value: &str) {
    *live_counts().entry((label, value.to_string())).or_default() += 1;
}

/// `label="value"` names one thing fewer.
pub fn gone(label: &'static str, value: &str) {
    if let Some(count) = live_counts().get_mut(&(label, value.to_string())) {
        *count = count.saturating_sub(1);
    }
}

/// Prometheus text without the sample lines of things that are gone.
pub fn without_gone_series(text: &str) -> String {
    let gone: Vec<String> = live_counts()
        .iter()
        .filter(|(_, count)| **count == 0)
        .map(|((label, value), _)| format!("{label}=\"{}\"", escape(value)))
        .collect();
    if gone.is_empty() {
        return text.to_string();
    }
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with('#') || !gone.iter().any(|pair| has_label(line, pair)) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// Whether a sample line carries the label pair `pair` (`name="value"`), as a whole
/// label: after `{` or `,`, and followed by `,` or `}`.
fn has_label(line: &str, pair: &str) -> bool {
    let Some(labels) = line.find('{').map(|start| &line[start..]) else { return false };
    labels.match_indices(pair).any(|(at, _)| {
        let before = labels[..at].chars().next_back();
        let after = labels[at + pair.len()..].chars().next();
        matches!(before, Some('{' | ',')) && matches!(after, Some(',' | '}'))
    })
}

/// A label value as Prometheus' text format writes it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE swell_queue_depth gauge\n\
        swell_queue_depth{deployment=\"metric-series-a\"} 0\n\
        swell_queue_depth{deployment=\"metric-series-a-2\"} 1\n\
        swell_engine_kv_tokens_used{deployment=\"metric-series-a-2\",replica=\"metric-series-a-2-0\"} 5\n\
        swell_http_requests_total{route=\"/metrics\",status=\"200\"} 3\n";

    #[test]
    fn series_of_gone_things_leave_the_scrape_and_come_back_with_them() {
        live("deployment", "metric-series-a");
        live("deployment", "metric-series-a-2");
        live("replica", "metric-series-a-2-0");
        assert_eq!(without_gone_series(TEXT), TEXT, "everything is live");

        gone("deployment", "metric-series-a");
        let text = without_gone_series(TEXT);
        assert!(!text.contains("{deployment=\"metric-series-a\"}"), "{text}");
        assert!(text.contains("{deployment=\"metric-series-a-2\"} 1"), "a longer name is another deployment: {text}");
        assert!(text.contains("# TYPE swell_queue_depth gauge"), "{text}");
        assert!(text.contains("route=\"/metrics\""), "{text}");

        gone("replica", "metric-series-a-2-0");
        assert!(!without_gone_series(TEXT).contains("replica="), "a retired replica's series leave");

        live("deployment", "metric-series-a");
        assert!(without_gone_series(TEXT).contains("{deployment=\"metric-series-a\"} 0"), "created again");
    }

    #[test]
    fn a_name_live_on_two_servers_stays_until_both_are_gone() {
        live("deployment", "metric-series-b");
        live("deployment", "metric-series-b");
        gone("deployment", "metric-series-b");
        let text = "x{deployment=\"metric-series-b\"} 1\n";
        assert_eq!(without_gone_series(text), text);
        gone("deployment", "metric-series-b");
        assert_eq!(without_gone_series(text), "");
    }

    #[test]
    fn labels_match_whole() {
        assert!(has_label("x{a=\"1\",deployment=\"d\"} 1", "deployment=\"d\""));
        assert!(!has_label("x{a=\"deployment=\\\"d\\\"\"} 1", "deployment=\"d\""));
        assert!(!has_label("x{mydeployment=\"d\"} 1", "deployment=\"d\""));
        assert!(!has_label("x 1", "deployment=\"d\""));
    }
}
