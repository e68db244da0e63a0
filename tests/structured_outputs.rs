//! Structured outputs with the real model (SmolLM2-135M-Instruct, the `llm` engine on
//! CPU), over real HTTP, through the official `openai` Python client
//! (tests/python/structured_outputs.py): `chat.completions.parse` with a Pydantic model
//! gives a valid object with `finish_reason` `stop` on 100 of 100 seeded runs at
//! temperature 0.8; `json_object` output always parses; `guided_choice` and
//! `guided_regex` outputs fit; a bad regex is a 400 naming its field. A deployment whose
//! engine has no constrained decoding (`sim`) refuses `response_format` by name. With a
//! chat template that has its own tool format (Hermes, `examples/chat-templates/`), tool
//! calls are rendered by the template and read back from that format.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

/// Serves `deployment` (its replica ready), runs tests/python/structured_outputs.py
/// against it with `args` after the URL and model, and returns its output; fails when
/// the script does.
async fn run_script(deployment: &str, args: &[&str]) -> String {
    let python = std::env::var("SWELL_TEST_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let server = common::start(deployment).await;
    let base = common::base(&server);
    common::wait_for("a ready replica", Duration::from_secs(120), || async {
        (common::replicas(&common::status(&server, "default").await).0 == 1).then_some(())
    })
    .await;
    let args: Vec<String> = [base.as_str(), "default"].iter().chain(args).map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/structured_outputs.py"))
            .args(&args)
            .output()
            .expect("python runs (scripts/test-tools installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    println!("{stdout}");
    assert!(output.status.success(), "structured outputs failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[actix_rt::test]
async fn the_official_client_gets_objects_that_fit_its_model() {
    let stdout = run_script(&common::real_model_deployment(64, 16384), &["100"]).await;
    assert!(
        stdout.contains("parse: 100/100 valid Person objects"),
        "{stdout}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[actix_rt::test]
async fn a_template_with_its_own_tool_format_gets_calls_in_that_format() {
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat-templates/hermes-tools.jinja");
    let deployment = common::real_model_deployment(64, 16384)
        .replace("threads = 2\n", &format!("threads = 2\nchat_template = \"{template}\"\n"));
    assert!(deployment.contains("chat_template"), "{deployment}");
    let stdout = run_script(&deployment, &["0", "native-tools"]).await;
    assert!(stdout.contains("tools (native format): 10/10 required calls fit"), "{stdout}");
}

#[actix_rt::test]
async fn an_engine_without_constrained_decoding_refuses_by_name() {
    let server = common::start(
        "[deployments.default]\nengine = \"sim\"\n[deployments.default.autoscaling]\nmin_replicas = 1\nmax_replicas = 1\n",
    )
    .await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "default", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}),
        ),
        (
            "/v1/completions",
            json!({"model": "default", "prompt": "hi", "guided_json": {"type": "object"}}),
        ),
    ] {
        let (code, _, text) = common::post(&server, path, None, &body).await;
        assert_eq!(code, 400, "{path}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"]["code"], "unsupported_parameter", "{text}");
        let param = error["error"]["param"].as_str().unwrap();
        assert!(
            param == "response_format" || param == "guided_json",
            "{text}"
        );
    }
}
