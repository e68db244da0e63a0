//! A tenant limited to 2 requests per minute gets 429 with OpenAI's rate-limit headers
//! on the third; keys are required once a tenant has one; other tenants are unaffected.

mod common;

use serde_json::json;

#[actix_rt::test]
async fn the_third_request_of_a_two_per_minute_tenant_gets_429_with_headers() {
    let server = common::start(common::DEFAULT_DEPLOYMENT).await;
    let (code, body) =
        common::admin(&server, "PUT", "/tenants/acme", Some(json!({"limits": {"requests_per_minute": 2}}))).await;
    assert!(code == 200 || code == 201, "{body}");
    let (code, body) = common::admin(&server, "POST", "/tenants/acme/keys", None).await;
    assert_eq!(code, 201, "{body}");
    let key = body["api_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-swell-"), "{key}");
    let (code, body) = common::admin(&server, "PUT", "/tenants/other", Some(json!({"limits": {}}))).await;
    assert!(code == 200 || code == 201, "{body}");
    let (_, body) = common::admin(&server, "POST", "/tenants/other/keys", None).await;
    let other_key = body["api_key"].as_str().unwrap().to_string();

    let request = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    for n in 1..=2 {
        let (status, headers, text) = common::post(&server, "/v1/chat/completions", Some(&key), &request).await;
        assert_eq!(status, 200, "request {n}: {text}");
        assert_eq!(headers.get("x-ratelimit-limit-requests").unwrap(), "2");
        assert_eq!(headers.get("x-ratelimit-remaining-requests").unwrap(), &(2 - n).to_string());
    }
    let (status, headers, text) = common::post(&server, "/v1/chat/completions", Some(&key), &request).await;
    assert_eq!(status, 429, "{text}");
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error", "{text}");
    assert_eq!(headers.get("x-ratelimit-limit-requests").unwrap(), "2");
    assert_eq!(headers.get("x-ratelimit-remaining-requests").unwrap(), "0");
    assert!(headers.get("x-ratelimit-reset-requests").is_some());
    let retry_after: u64 = headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "retry-after {retry_after}");

    // Another tenant is not affected; no key, or a wrong one, is refused.
    let (status, _, text) = common::post(&server, "/v1/chat/completions", Some(&other_key), &request).await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = common::post(&server, "/v1/chat/completions", None, &request).await;
    assert_eq!(status, 401, "{text}");
    let (status, _, text) = common::post(&server, "/v1/chat/completions", Some("sk-swell-wrong"), &request).await;
    assert_eq!(status, 401, "{text}");

    let (_, metrics) = common::get_text(&server, "/metrics").await;
    assert!(
        metrics.contains(r#"swell_quota_rejections_total{tenant="acme",limit="requests"} 1"#),
        "{metrics}"
    );
    server.stop(true).await;
}
