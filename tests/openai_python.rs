//! The official `openai` Python package, unchanged, against `swell serve`: it lists
//! models and runs streaming and non-streaming chat and text completions
//! (tests/python/openai_client.py says what it checks).

mod common;

#[actix_rt::test]
async fn the_official_openai_python_client_works_unchanged() {
    let python = std::env::var("SWELL_TEST_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let have_openai = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        have_openai,
        "this test needs Python with the `openai` package at {python}: run `scripts/test-tools` \
         (or `scripts/test`, which runs it), or point SWELL_TEST_PYTHON at such a Python"
    );
    let server = common::start(common::DEFAULT_DEPLOYMENT).await;
    let base = common::base(&server);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py"))
            .args([base.as_str(), "default"])
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openai client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    server.stop(true).await;
}
