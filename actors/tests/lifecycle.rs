//! The actors wired together with the in-memory queue and a small scripted engine (a
//! fake, local to this test): a deployment scales from zero for a request, serves it,
//! drains back to zero when idle, and a cancelled request frees its replica slot; a
//! request whose client left runs on for its resume grace while another reader resumes it.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use swell_autoscaler::AutoscalingPolicy;
use swell_actors::request::{resume, submit, RequestDeps, RequestEvent, RequestSpec};
use swell_actors::supervisor::{DeploymentSpec, DeploymentSupervisor, ObserveDeployment};
use swell_cluster::{FinishReason, InMemoryQueue, OutputEvent, Queue, Usage};

#[path = "support/scripted.rs"]
mod scripted;
use scripted::{spec, ScriptedFactory};

fn policy() -> AutoscalingPolicy {
    let mut policy = AutoscalingPolicy::default();
    policy.min_replicas = 0;
    policy.max_replicas = 2;
    policy.scale_up_window = Duration::ZERO;
    policy.scale_down_window = Duration::from_millis(500);
    policy.scale_to_zero_window = Duration::from_millis(800);
    policy.metrics_window = Duration::from_secs(1);
    policy
}

fn start(step: Duration) -> (Arc<dyn Queue>, Addr<DeploymentSupervisor>) {
    let queue: Arc<dyn Queue> = Arc::new(InMemoryQueue::default());
    let factory = Arc::new(ScriptedFactory { cold_start: Duration::from_millis(100), step });
    let mut spec = DeploymentSpec::new("d", factory, policy());
    spec.tick = Duration::from_millis(100);
    let supervisor = DeploymentSupervisor::new(spec, queue.clone()).start();
    (queue, supervisor)
}

async fn wait_for_replicas(supervisor: &Addr<DeploymentSupervisor>, ready: u32, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let status = supervisor.send(ObserveDeployment).await.unwrap();
        if status.replicas.ready == ready && status.replicas.starting == 0 && status.replicas.draining == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[actix_rt::test]
async fn a_request_at_zero_starts_a_replica_is_served_and_the_deployment_returns_to_zero() {
    let (queue, supervisor) = start(Duration::from_millis(2));
    assert!(wait_for_replicas(&supervisor, 0, Duration::from_secs(1)).await);
    let deps = RequestDeps { queue, supervisor: supervisor.clone(), quota: None, router: None };

    let mut admitted = submit(spec("r1", 5), deps.clone()).await.unwrap();
    assert_eq!(admitted.position, 1);
    let mut texts = String::new();
    let mut saw_starting = false;
    let mut finished = None;
    while let Some(event) = admitted.events.recv().await {
        match event {
            RequestEvent::Waiting { starting, .. } => saw_starting |= starting,
            RequestEvent::Tokens { text, .. } => texts.push_str(&text),
            RequestEvent::Finished { reason, usage } => finished = Some((reason, usage)),
            RequestEvent::Failed { code, message } => panic!("failed: {code} {message}"),
            _ => {}
        }
    }
    assert!(saw_starting, "the client was told a replica is starting");
    assert_eq!(texts, "t0 t1 t2 t3 t4 ");
    assert_eq!(finished, Some((FinishReason::Length, Usage { prompt_tokens: 3, completion_tokens: 5 })));

    // Idle: back to zero after the scale-to-zero window, with the reasons recorded.
    assert!(wait_for_replicas(&supervisor, 0, Duration::from_secs(5)).await, "scaled to zero");
    let status = supervisor.send(ObserveDeployment).await.unwrap();
    let reasons: Vec<&str> = status.scale_events.iter().map(|e| e.reason).collect();
    assert_eq!(reasons.first(), Some(&"queued_at_zero"), "{reasons:?}");
    assert_eq!(reasons.last(), Some(&"idle"), "{reasons:?}");
    // The decisions behind them are kept with their inputs, oldest first.
    let decisions: Vec<(&str, &str)> =
        status.decisions.iter().map(|r| (r.decision.direction.as_str(), r.decision.reason.as_str())).collect();
    let first_up = status.decisions.iter().find(|r| r.decision.reason.as_str() == "queued_at_zero")
        .unwrap_or_else(|| panic!("no queued_at_zero decision: {decisions:?}"));
    assert_eq!((first_up.decision.current.ready, first_up.decision.current.starting, first_up.decision.desired), (0, 0, 1));
    assert!(first_up.decision.unix_ms.is_some(), "the supervisor gives the policy the wall clock");
    assert!(decisions.contains(&("down", "idle")), "{decisions:?}");
    assert!(status.decisions.iter().any(|r| r.decisions > 1), "stable decisions are folded: {decisions:?}");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["decisions"][0]["recommendations"][0]["signal"], "concurrent_requests");

    // And the next request is served from zero again.
    let mut admitted = submit(spec("r2", 2), deps).await.unwrap();
    let mut last = None;
    while let Some(event) = admitted.events.recv().await {
        last = Some(event);
    }
    assert!(matches!(last, Some(RequestEvent::Finished { .. })), "{last:?}");
}

#[actix_rt::test]
async fn dropping_the_receiver_cancels_the_request_and_frees_the_replica() {
    let (queue, supervisor) = start(Duration::from_millis(20));
    let deps = RequestDeps { queue: queue.clone(), supervisor: supervisor.clone(), quota: None, router: None };
    let mut admitted = submit(spec("long", 10_000), deps).await.unwrap();
    // Wait for the first token, then walk away.
    loop {
        match admitted.events.recv().await {
            Some(RequestEvent::Tokens { .. }) => break,
            Some(RequestEvent::Failed { code, .. }) => panic!("{code}"),
            Some(_) => {}
            None => panic!("stream ended early"),
        }
    }
    drop(admitted);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = supervisor.send(ObserveDeployment).await.unwrap();
        let active: u64 = status.replica_details.iter().map(|r| r.active_sequences).sum();
        if active == 0 && queue.depth("d").await.unwrap().leased == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the cancelled sequence still holds its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads events until the first tokens (panics if the stream ends first).
async fn first_tokens(events: &mut tokio::sync::mpsc::Receiver<RequestEvent>) {
    loop {
        match events.recv().await {
            Some(RequestEvent::Tokens { .. }) => return,
            Some(RequestEvent::Failed { code, .. }) => panic!("{code}"),
            Some(_) => {}
            None => panic!("stream ended early"),
        }
    }
}

/// The request's terminal output event, once its output stream has one.
async fn terminal(queue: &Arc<dyn Queue>, job_id: &str, within: Duration) -> OutputEvent {
    let deadline = tokio::time::Instant::now() + within;
    let mut after = 0;
    loop {
        for sequenced in queue.read_output(job_id, after, Duration::from_millis(50)).await.unwrap() {
            after = sequenced.seq;
            if sequenced.event.is_terminal() {
                return sequenced.event;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no terminal event within {within:?}");
    }
}

#[actix_rt::test]
async fn with_a_resume_grace_a_left_stream_runs_on_while_resumed_and_is_cancelled_when_its_last_reader_leaves() {
    let (queue, supervisor) = start(Duration::from_millis(20));
    let deps = RequestDeps { queue: queue.clone(), supervisor: supervisor.clone(), quota: None, router: None };
    let grace = Duration::from_millis(400);
    let spec = RequestSpec { resume_grace: Some(grace), ..spec("left", 10_000) };
    let mut admitted = submit(spec.clone(), deps.clone()).await.unwrap();
    first_tokens(&mut admitted.events).await;
    drop(admitted);
    // Another reader takes the stream over within the grace: the request runs on past it.
    tokio::time::sleep(grace / 4).await;
    let reader = queue.attach_reader("left").await.unwrap().expect("the stream is kept");
    let mut resumed = resume(spec.clone(), deps.clone(), reader).await.unwrap();
    first_tokens(&mut resumed.events).await;
    tokio::time::sleep(grace * 2).await;
    let events = queue.read_output("left", 0, Duration::ZERO).await.unwrap();
    assert!(!events.iter().any(|e| e.event.is_terminal()), "still running after the first reader's grace");
    // The resumed reader leaves too; nobody takes over: cancelled after its grace.
    let left_at = tokio::time::Instant::now();
    drop(resumed);
    let end = terminal(&queue, "left", Duration::from_secs(5)).await;
    assert!(matches!(&end, OutputEvent::Failed { code, .. } if code == "cancelled"), "{end:?}");
    assert!(left_at.elapsed() >= grace, "not before the grace: {:?}", left_at.elapsed());
}

#[actix_rt::test]
async fn without_a_resume_grace_a_left_stream_is_cancelled_at_once() {
    let (queue, supervisor) = start(Duration::from_millis(20));
    let deps = RequestDeps { queue: queue.clone(), supervisor, quota: None, router: None };
    let mut admitted = submit(spec("direct", 10_000), deps).await.unwrap();
    first_tokens(&mut admitted.events).await;
    let left_at = tokio::time::Instant::now();
    drop(admitted);
    let end = terminal(&queue, "direct", Duration::from_secs(5)).await;
    assert!(matches!(&end, OutputEvent::Failed { code, .. } if code == "cancelled"), "{end:?}");
    assert!(left_at.elapsed() < Duration::from_secs(1), "{:?}", left_at.elapsed());
}
