//! The live scaling run (`swell_loadtest::scaling::live`, what `swell-scaling live`
//! does) against a real server, at N = 1 and 2: the deployment is held at exactly N
//! replicas, a closed loop keeps their batches full, and the throughput comes from the
//! server's token counter. The figures (and the efficiency) are printed, not asserted:
//! speed belongs to docs/benchmarks.md (`swell-scaling live` up to 64 replicas).
//! Asserted: a point per N, tokens counted in each window, nothing failed, and at N = 2
//! both replicas served.

mod common;

use std::time::Duration;

use serde_json::json;
use swell_loadtest::admin::AdminClient;
use swell_loadtest::scaling::{self, LiveScaling};

#[actix_rt::test]
async fn a_deployment_held_at_one_then_two_replicas_serves_on_both() {
    let server = common::start("").await;
    let config = LiveScaling {
        url: common::base(&server),
        admin_token: Some(common::ADMIN_TOKEN.into()),
        api_key: None,
        deployment: "scaling".into(),
        sim: json!({"profile": "zero", "decode_step_base": "20ms", "max_batch_size": 4}),
        replicas: vec![1, 2],
        per_replica: 4,
        prompt_tokens: 8,
        output_tokens: 16,
        warmup: Duration::from_secs(1),
        window: Duration::from_secs(3),
        // The server runs in this process.
        server_pid: Some(std::process::id()),
    };
    let points = scaling::live(&config).await.expect("the scaling run works");
    println!("{}", scaling::render(&points, true));
    assert_eq!(points.iter().map(|p| p.replicas).collect::<Vec<_>>(), [1, 2]);
    for p in &points {
        assert!(p.tokens_per_s > 0.0, "{p:?}");
        assert_eq!(p.failed, Some(0), "{p:?}");
        assert_eq!(p.offered, f64::from(p.replicas * 4));
        assert!(p.server_cores.is_some_and(|c| c > 0.0), "{p:?}");
    }
    assert_eq!(points[0].efficiency, 1.0);

    let admin = AdminClient::new(&common::base(&server), Some(common::ADMIN_TOKEN.into()));
    let status = admin.status("scaling").await.unwrap();
    assert_eq!(status.replicas.ready, 2, "{status:?}");
    let generated: Vec<u64> = status.replica_details.iter().map(|r| r.generated_tokens).collect();
    assert!(generated.len() == 2 && generated.iter().all(|g| *g > 0), "both replicas served: {generated:?}");
    server.stop(true).await;
}
