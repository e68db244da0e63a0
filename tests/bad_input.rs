//! Bad input gets its specific 4xx in OpenAI's error shape, never a 5xx.

mod common;

use serde_json::{json, Value};

async fn raw_post(server: &swell::server::ServerHandle, path: &str, body: Vec<u8>) -> (u16, Value) {
    let mut response = common::client()
        .post(format!("{}{path}", common::base(server)))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .expect("request");
    let status = response.status().as_u16();
    let bytes = response.body().limit(1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[actix_rt::test]
async fn each_kind_of_bad_input_gets_its_specific_error() {
    let server = common::start(common::DEFAULT_DEPLOYMENT).await;
    let chat = "/v1/chat/completions";
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("invalid json", b"{not json".to_vec(), 400),
        ("wrong type", json!({"model": "default", "messages": "hi"}).to_string().into_bytes(), 400),
        ("missing messages", json!({"model": "default"}).to_string().into_bytes(), 400),
        ("unknown model", json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).to_string().into_bytes(), 404),
        ("max_tokens beyond the context", json!({"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000_000}).to_string().into_bytes(), 400),
        ("temperature out of range", json!({"model": "default", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}).to_string().into_bytes(), 400),
        ("oversized body", format!("{{\"model\": \"default\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}", "a ".repeat(3 << 20)).into_bytes(), 413),
    ];
    for (what, body, expected) in cases {
        let (status, error) = raw_post(&server, chat, body).await;
        assert_eq!(status, expected, "{what}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: not OpenAI's shape: {error}"));
        assert!(!message.is_empty(), "{what}");
        assert!(error["error"]["code"].is_string(), "{what}: {error}");
        assert!(error["error"]["type"].is_string(), "{what}: {error}");
    }
    // A prompt longer than the context.
    let long = "word ".repeat(9000);
    let (status, error) = raw_post(
        &server,
        chat,
        json!({"model": "default", "messages": [{"role": "user", "content": long}]}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "context_length_exceeded", "{error}");
    // Unknown route.
    let (status, error) = raw_post(&server, "/v1/nothing", b"{}".to_vec()).await;
    assert_eq!(status, 404, "{error}");
    assert!(error["error"]["message"].is_string());
    server.stop(true).await;
}

/// Fields Swell does not honour are refused by name, unknown ones get OpenAI's own
/// answer, and fields without effect (or with values that ask for nothing) pass.
#[actix_rt::test]
async fn fields_swell_does_not_honour_are_refused_by_name() {
    let server = common::start(common::DEFAULT_DEPLOYMENT).await;
    let chat = |extra: Value| {
        let mut body = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.to_string().into_bytes()
    };
    let refused: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("/v1/chat/completions", chat(json!({"logit_bias": {"42": -100}})), "unsupported_parameter", "logit_bias"),
        ("/v1/chat/completions", chat(json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})), "unsupported_parameter", "tools"),
        ("/v1/chat/completions", chat(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}})), "unsupported_parameter", "response_format"),
        ("/v1/chat/completions", chat(json!({"min_p": 0.1})), "unsupported_parameter", "min_p"),
        ("/v1/chat/completions", chat(json!({"messages": [{"role": "user", "content": "hi", "name": "alice"}]})), "unsupported_parameter", "messages[0].name"),
        ("/v1/chat/completions", chat(json!({"temprature": 0.2})), "unrecognized_argument", "temprature"),
        ("/v1/completions", json!({"model": "default", "prompt": "hi", "logit_bias": {"1": 1}}).to_string().into_bytes(), "unsupported_parameter", "logit_bias"),
        ("/v1/completions", json!({"model": "default", "prompt": "hi", "messages": []}).to_string().into_bytes(), "unrecognized_argument", "messages"),
    ];
    for (path, body, code, param) in refused {
        let (status, error) = raw_post(&server, path, body).await;
        assert_eq!(status, 400, "{param}: {error}");
        assert_eq!(error["error"]["code"], code, "{param}: {error}");
        assert_eq!(error["error"]["param"], param, "{param}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(param), "{param}: {error}");
    }
    let (status, error) = raw_post(&server, "/v1/chat/completions", chat(json!({"foo": 1}))).await;
    assert_eq!((status, error["error"]["message"].as_str()), (400, Some("Unrecognized request argument supplied: foo")));
    let harmless = chat(json!({"tools": [], "tool_choice": "none", "store": true, "metadata": {"k": "v"}, "response_format": {"type": "text"}, "logit_bias": null}));
    let (status, body) = raw_post(&server, "/v1/chat/completions", harmless).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    server.stop(true).await;
}
