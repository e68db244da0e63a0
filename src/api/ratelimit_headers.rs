//! OpenAI's rate-limit headers: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`,
//! plus Swell's `-output-tokens` and `-concurrent-requests` variants, and `retry-after`.
//!
//! Durations in `x-ratelimit-reset-*` use OpenAI's (Go's) duration format: `6m0s`, `1s`,
//! `1.5s`, `120ms`. `retry-after` is whole seconds, rounded up.

use std::time::Duration;

use swell_actors::quota::{LimitState, RateLimitSnapshot};

/// Formats a duration the way OpenAI's `x-ratelimit-reset-*` headers do (Go's
/// `time.Duration` string, at millisecond precision): `0s`, `120ms`, `1s`, `1.5s`, `6m0s`,
/// `1h2m3s`.
pub fn openai_duration(duration: Duration) -> String {
    // Round up to whole milliseconds: a reset is never reported earlier than it happens.
    let total_ms = duration.as_nanos().div_ceil(1_000_000);
    if total_ms == 0 {
        return "0s".to_string();
    }
    if total_ms < 1000 {
        return format!("{total_ms}ms");
    }
    let hours = total_ms / 3_600_000;
    let minutes = (total_ms / 60_000) % 60;
    let millis_of_minute = total_ms % 60_000;
    let seconds = millis_of_minute / 1000;
    let millis = millis_of_minute % 1000;
    let seconds_text = if millis == 0 {
        format!("{seconds}s")
    } else {
        let fraction = format!("{millis:03}");
        format!("{seconds}.{}s", fraction.trim_end_matches('0'))
    };
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds_text}")
    } else if minutes > 0 {
        format!("{minutes}m{seconds_text}")
    } else {
        seconds_text
    }
}

/// `retry-after` value: whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_nanos().div_ceil(1_000_000_000) as u64;
    seconds.max(1)
}

/// The `x-ratelimit-*` headers for a snapshot (only for the limits the tenant has).
pub fn rate_limit_headers(snapshot: &RateLimitSnapshot) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    let mut push = |suffix: &str, state: &Option<LimitState>| {
        if let Some(state) = state {
            headers.push((format!("x-ratelimit-limit-{suffix}"), state.limit.to_string()));
            headers.push((format!("x-ratelimit-remaining-{suffix}"), state.remaining.to_string()));
            headers.push((format!("x-ratelimit-reset-{suffix}"), openai_duration(state.reset)));
        }
    };
    push("requests", &snapshot.requests);
    // OpenAI's `-tokens` headers describe the bucket prompts are charged to.
    push("tokens", &snapshot.prompt_tokens);
    push("output-tokens", &snapshot.output_tokens);
    push("concurrent-requests", &snapshot.concurrent_requests);
    headers
}

/// Adds the rate-limit headers of `snapshot` to a response being built.
pub fn insert_rate_limit_headers(
    response: &mut actix_web::HttpResponseBuilder,
    snapshot: &RateLimitSnapshot,
) {
    for (name, value) in rate_limit_headers(snapshot) {
        response.insert_header((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_openai_format() {
        assert_eq!(openai_duration(Duration::ZERO), "0s");
        assert_eq!(openai_duration(Duration::from_micros(1)), "1ms");
        assert_eq!(openai_duration(Duration::from_millis(120)), "120ms");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_millis(1250)), "1.25s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(59)), "59s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(openai_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(29_001)), 30);
        assert_eq!(retry_after_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn headers_cover_only_configured_limits() {
        let snapshot = RateLimitSnapshot {
            requests: Some(LimitState { limit: 2, remaining: 0, reset: Duration::from_secs(60) }),
            prompt_tokens: None,
            output_tokens: Some(LimitState {
                limit: 1000,
                remaining: 400,
                reset: Duration::from_millis(500),
            }),
            concurrent_requests: None,
        };
        let headers = rate_limit_headers(&snapshot);
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(get("x-ratelimit-remaining-requests"), Some("0"));
        assert_eq!(get("x-ratelimit-reset-requests"), Some("1m0s"));
        assert_eq!(get("x-ratelimit-limit-output-tokens"), Some("1000"));
        assert_eq!(get("x-ratelimit-reset-output-tokens"), Some("500ms"));
        assert_eq!(get("x-ratelimit-limit-tokens"), None);
        assert_eq!(headers.len(), 6);
    }
}
