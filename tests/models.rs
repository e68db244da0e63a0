//! `GET /v1/models` says which engine serves each deployment, so a client (or a
//! benchmark) can tell the real model from the `sim` performance model.

mod common;

use serde_json::Value;

#[actix_rt::test]
async fn each_model_names_its_engine() {
    let config = format!(
        "{}\n[deployments.perf]\nengine = \"sim\"\n[deployments.perf.sim]\nprofile = \"zero\"\n",
        common::real_model_deployment(8, 1024)
    );
    let server = common::start(&config).await;
    let (status, text) = common::get_text(&server, "/v1/models").await;
    assert_eq!(status, 200, "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let engine_of = |id: &str| {
        list["data"].as_array().unwrap().iter().find(|model| model["id"] == id).map(|model| model["engine"].clone())
    };
    assert_eq!(engine_of("default"), Some(Value::from("llm")), "{list}");
    assert_eq!(engine_of("perf"), Some(Value::from("sim")), "{list}");
    server.stop(true).await;
}
