//! Cluster coordination against a real `redis-server` (started by the test on a free
//! port, `redis_queue::testing`): membership, leader election with fencing, the placement
//! store, the coordinator loop, and a Redis restart. TTLs are short (hundreds of ms) so
//! the file runs in seconds; timing bounds leave room for a loaded machine.
//!
//! Needs `redis-server` installed (`apt-get install redis-server`); fails without it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swell_cluster::redis_queue::testing::{RedisServer, RedisServerOptions};
use swell_cluster::{
    ClusterView, CoordinationClient, CoordinationConfig, CoordinationError, Coordinator, DeploymentLoad,
    DeploymentTarget, LeaderElection, LeaderState, LeadershipChange, LossReason, Membership, NodeCapacity, NodeInfo,
    NodeRole, Placement, PlacementStore, ReplicaRequirement,
};
use tokio::time::{sleep, Instant};

const INTERVAL: Duration = Duration::from_millis(100);
const NODE_TTL: Duration = Duration::from_millis(600);
const LEASE_TTL: Duration = Duration::from_millis(600);
/// Room for scheduling delays on a busy machine, on top of a TTL.
const SLACK: Duration = Duration::from_millis(500);

fn config(server: &RedisServer) -> CoordinationConfig {
    CoordinationConfig {
        url: server.url(),
        key_prefix: "test".into(),
        heartbeat_interval: INTERVAL,
        node_ttl: NODE_TTL,
        leader_lease_ttl: LEASE_TTL,
        connect_timeout: Duration::from_millis(200),
        response_timeout: Duration::from_millis(300),
    }
}

async fn client(server: &RedisServer) -> CoordinationClient {
    CoordinationClient::connect(config(server)).await.expect("connect to the test redis-server")
}

fn node(id: &str, cpu_slots: u32) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        role: NodeRole::All,
        capacity: NodeCapacity { cpu_slots, gpus: vec![] },
        running: BTreeMap::new(),
        started_at_ms: swell_cluster::unix_millis(),
        version: "test".into(),
        address: None,
    }
}

fn chat(replicas: u32) -> Vec<DeploymentTarget> {
    vec![DeploymentTarget { deployment: "chat".into(), replicas, requirement: ReplicaRequirement::cpu(1) }]
}

fn ids(view: &ClusterView) -> Vec<&str> {
    view.live.iter().map(|node| node.info.node_id.as_str()).collect()
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_is_declared_dead_within_the_ttl() {
    let server = RedisServer::start(RedisServerOptions::default());
    let membership = Membership::new(client(&server).await);
    let (a, mut b) = (node("a", 2), node("b", 2));
    b.running.insert("chat".into(), DeploymentLoad { replicas: 1, in_flight: 3, ..Default::default() });

    assert!(!membership.register(&a).await.unwrap().record_existed);
    assert!(!membership.register(&b).await.unwrap().record_existed);
    let view = membership.live_nodes().await.unwrap();
    assert_eq!(ids(&view), vec!["a", "b"]);
    assert_eq!(view.deployment_load("chat").in_flight, 3, "heartbeats carry the load");

    // "a" stops heartbeating; "b" goes on.
    let last_beat_of_a = Instant::now();
    let mut declared_dead_after = None;
    while last_beat_of_a.elapsed() < NODE_TTL + SLACK * 2 {
        assert!(membership.heartbeat(&b).await.unwrap().record_existed);
        let view = membership.live_nodes().await.unwrap();
        if view.node("a").is_none() {
            assert_eq!(view.dead, vec!["a".to_string()], "reported dead once");
            assert_eq!(ids(&view), vec!["b"]);
            declared_dead_after = Some(last_beat_of_a.elapsed());
            break;
        }
        assert!(last_beat_of_a.elapsed() < NODE_TTL + SLACK, "still live well past the ttl");
        sleep(Duration::from_millis(25)).await;
    }
    let after = declared_dead_after.expect("a was never declared dead");
    assert!(after >= NODE_TTL / 2, "declared dead too early: {after:?}");
    assert!(membership.live_nodes().await.unwrap().dead.is_empty(), "reported once only");

    // "a" comes back: its heartbeat notices the record was gone.
    assert!(!membership.heartbeat(&a).await.unwrap().record_existed);
    assert_eq!(ids(&membership.live_nodes().await.unwrap()), vec!["a", "b"]);

    // A clean shutdown removes the node at once.
    assert!(membership.deregister("b").await.unwrap());
    assert_eq!(ids(&membership.live_nodes().await.unwrap()), vec!["a"]);
    assert!(!membership.deregister("b").await.unwrap());
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_successor_fences_the_deposed_leader() {
    let server = RedisServer::start(RedisServerOptions::default());
    let store = PlacementStore::new(client(&server).await);
    let mut one = LeaderElection::new(client(&server).await, "one");
    let mut two = LeaderElection::new(client(&server).await, "two");

    let first = one.tick().await;
    let LeaderState::Leader { token: old_token } = first.state else { panic!("one should lead: {first:?}") };
    assert_eq!(first.change, Some(LeadershipChange::Gained { token: old_token }));
    // Both keep ticking: one leader throughout.
    for _ in 0..5 {
        let (a, b) = (one.tick().await, two.tick().await);
        assert_eq!(a.state, LeaderState::Leader { token: old_token });
        assert!(matches!(b.state, LeaderState::Follower { leader: Some(ref holder) } if holder.node_id == "one"));
        assert_eq!((a.change, b.change), (None, None));
        sleep(INTERVAL).await;
    }
    let mut placement = Placement::default();
    placement.add("one", "chat", 1);
    let written = store.write(old_token, "one", &placement).await.unwrap();
    assert!(written.changed);

    // "one" stalls (stops renewing). "two" takes over within the lease TTL.
    let stalled_at = Instant::now();
    let new_token = loop {
        let tick = two.tick().await;
        if let Some(LeadershipChange::Gained { token }) = tick.change {
            break token;
        }
        assert!(stalled_at.elapsed() < LEASE_TTL + SLACK, "no takeover within the lease ttl");
        sleep(INTERVAL / 2).await;
    };
    assert!(stalled_at.elapsed() >= LEASE_TTL / 2, "taken over too early: {:?}", stalled_at.elapsed());
    assert!(new_token > old_token, "{new_token} > {old_token}");
    assert_eq!(one.token(), None, "the stalled leader's own estimate ran out");

    // The deposed leader's write is rejected; the new leader's is accepted.
    placement.add("two", "chat", 1);
    let refused = store.write(old_token, "one", &placement).await;
    assert!(matches!(refused, Err(CoordinationError::Fenced { token, .. }) if token == old_token), "{refused:?}");
    let stored = store.read().await.unwrap().unwrap();
    assert_eq!((stored.token, stored.leader.as_str()), (old_token, "one"), "nothing was written");
    assert!(store.write(new_token, "two", &placement).await.unwrap().changed);
    // Even a forged write with the old token under the new leader's name is refused.
    assert!(matches!(store.write(old_token, "two", &placement).await, Err(CoordinationError::Fenced { .. })));

    // The old leader learns it lost at its next tick, and stays a follower.
    let woke = one.tick().await;
    assert_eq!(woke.change, Some(LeadershipChange::Lost { token: old_token, reason: LossReason::LeaseLost }));
    let again = one.tick().await;
    assert!(matches!(again.state, LeaderState::Follower { leader: Some(ref holder) } if holder.token == new_token));

    // A voluntary release hands over at the next tick, with a higher token again.
    assert_eq!(
        two.release().await.unwrap(),
        Some(LeadershipChange::Lost { token: new_token, reason: LossReason::Released })
    );
    let took = one.tick().await;
    assert!(matches!(took.change, Some(LeadershipChange::Gained { token }) if token > new_token), "{took:?}");
}

#[tokio::test]
async fn a_node_version_moves_only_when_that_nodes_assignment_changes() {
    let server = RedisServer::start(RedisServerOptions::default());
    let store = PlacementStore::new(client(&server).await);
    let mut leader = LeaderElection::new(client(&server).await, "boss");
    assert_eq!(store.read_node("a").await.unwrap().version, 0, "nothing written yet");
    let token = leader.tick().await.state.token().unwrap();

    let mut placement = Placement::default();
    placement.add("a", "chat", 1);
    placement.add("b", "chat", 1);
    let first = store.write(token, "boss", &placement).await.unwrap();
    assert!(first.changed);
    let (a1, b1) = (store.read_node("a").await.unwrap(), store.read_node("b").await.unwrap());
    assert_eq!((a1.version, b1.version), (first.version, first.version));
    assert_eq!(a1.deployments, BTreeMap::from([("chat".to_string(), 1)]));
    assert_eq!(a1.leader_token, token);

    // The same placement again: no new version.
    assert_eq!(store.write(token, "boss", &placement).await.unwrap(), swell_cluster::WriteOutcome { version: first.version, changed: false });

    // Only "b" changes: "a" keeps its version.
    placement.add("b", "chat", 1);
    let second = store.write(token, "boss", &placement).await.unwrap();
    assert!(second.version > first.version);
    assert_eq!(store.read_node("a").await.unwrap().version, first.version);
    assert_eq!(store.read_node("b").await.unwrap().version, second.version);

    // "b" leaves the placement: it reads an empty assignment with a newer version.
    placement.nodes.remove("b");
    let third = store.write(token, "boss", &placement).await.unwrap();
    let b3 = store.read_node("b").await.unwrap();
    assert_eq!((b3.deployments.len(), b3.version), (0, third.version));
    assert_eq!(store.read().await.unwrap().unwrap().placement, placement);
}

/// A node for the coordinator tests: its record reports the replicas it was assigned as
/// running (as a real node would once it started them).
struct TestNode {
    coordinator: Coordinator,
    running: Arc<Mutex<BTreeMap<String, DeploymentLoad>>>,
}

impl TestNode {
    async fn new(server: &RedisServer, id: &str, cpu_slots: u32, replicas: u32) -> Self {
        let running = Arc::new(Mutex::new(BTreeMap::new()));
        let info = node(id, cpu_slots);
        let reported = running.clone();
        let coordinator = Coordinator::new(
            client(server).await,
            move || NodeInfo { running: reported.lock().unwrap().clone(), ..info.clone() },
            move |_view: &ClusterView, _current: &Placement| chat(replicas),
        );
        Self { coordinator, running }
    }

    async fn tick(&mut self) -> swell_cluster::CoordinatorTick {
        let report = self.coordinator.tick().await;
        let assignment = self.coordinator.assignment().borrow().clone();
        *self.running.lock().unwrap() = assignment
            .deployments
            .iter()
            .map(|(name, replicas)| (name.clone(), DeploymentLoad { replicas: *replicas, ..Default::default() }))
            .collect();
        report
    }

    fn assigned(&self) -> u32 {
        self.coordinator.assignment().borrow().deployments.get("chat").copied().unwrap_or(0)
    }

    fn token(&self) -> Option<u64> {
        self.coordinator.leadership().borrow().token()
    }
}

/// Tick both nodes until their assignments are `expected`.
async fn settle(a: &mut TestNode, b: &mut TestNode, expected: (u32, u32)) {
    let deadline = Instant::now() + NODE_TTL + SLACK * 2;
    while (a.assigned(), b.assigned()) != expected {
        a.tick().await;
        b.tick().await;
        assert!(Instant::now() < deadline, "not settled at {expected:?}: {:?}", (a.assigned(), b.assigned()));
        sleep(INTERVAL).await;
    }
}

#[tokio::test]
async fn each_node_reads_its_placement_and_a_dead_leaders_replicas_move_to_the_survivor() {
    let server = RedisServer::start(RedisServerOptions::default());
    let mut a = TestNode::new(&server, "a", 4, 4).await;
    let mut b = TestNode::new(&server, "b", 4, 4).await;

    // Both register, then "a" ticks first and leads (and places once it has led for
    // NODE_TTL: nothing was stored, so it waits for every node to register).
    a.coordinator.register().await.unwrap();
    b.coordinator.register().await.unwrap();
    settle(&mut a, &mut b, (2, 2)).await;
    let old_token = a.token().expect("a leads");
    assert_eq!(b.token(), None);
    assert_eq!((a.assigned(), b.assigned()), (2, 2));
    let version_of_b = b.coordinator.assignment().borrow().version;
    assert!(version_of_b > 0);
    // Another tick with nothing changed leaves the versions alone.
    a.tick().await;
    b.tick().await;
    assert_eq!(b.coordinator.assignment().borrow().version, version_of_b);

    // "a" (the leader) dies. "b" takes the lease after LEASE_TTL and, once "a" is
    // declared dead (NODE_TTL after its last heartbeat), runs all 4 replicas.
    let died_at = Instant::now();
    drop(a);
    let mut took_over_after = None;
    while b.assigned() != 4 {
        let report = b.tick().await;
        if let Some(LeadershipChange::Gained { token }) = report.leadership {
            assert!(token > old_token);
            took_over_after = Some(died_at.elapsed());
        }
        assert!(died_at.elapsed() < NODE_TTL.max(LEASE_TTL) + SLACK * 2, "no re-placement in time");
        sleep(INTERVAL).await;
    }
    let took_over_after = took_over_after.expect("b took over");
    assert!(took_over_after < LEASE_TTL + SLACK, "takeover after {took_over_after:?}");
    let assignment = b.coordinator.assignment().borrow().clone();
    assert!(assignment.version > version_of_b);
    assert_eq!(assignment.leader_token, b.token().unwrap());
    let store = PlacementStore::new(client(&server).await);
    let placed = store.read().await.unwrap().unwrap();
    assert_eq!(placed.placement.node("a"), BTreeMap::new(), "nothing left on the dead node");
    assert_eq!(store.read_node("a").await.unwrap().deployments, BTreeMap::new());
}

#[tokio::test]
async fn a_clean_shutdown_hands_over_at_once_and_spawned_coordinators_publish_assignments() {
    let server = RedisServer::start(RedisServerOptions::default());
    let a = TestNode::new(&server, "a", 4, 2).await.coordinator;
    let mut b = TestNode::new(&server, "b", 4, 2).await;
    let a = a.spawn();
    let mut leadership = a.leadership();
    tokio::time::timeout(Duration::from_secs(3), leadership.wait_for(|state| state.token().is_some()))
        .await
        .expect("a leads in time")
        .unwrap();
    let mut assignment_of_a = a.assignment();
    let deadline = Instant::now() + Duration::from_secs(3);
    while b.assigned() != 1 {
        b.tick().await;
        assert!(Instant::now() < deadline, "b never got its replica");
        sleep(INTERVAL).await;
    }
    tokio::time::timeout(Duration::from_secs(3), assignment_of_a.wait_for(|a| a.deployments.get("chat") == Some(&1)))
        .await
        .expect("a's assignment published")
        .unwrap();

    // "a" shuts down cleanly: lease released and record removed, so "b" leads and takes
    // both replicas at its very next tick, without waiting for any TTL.
    a.shutdown().await;
    let report = b.tick().await;
    assert!(matches!(report.leadership, Some(LeadershipChange::Gained { .. })), "{report:?}");
    assert_eq!(b.assigned(), 2);
}

#[tokio::test]
async fn membership_and_leadership_recover_from_a_redis_restart() {
    let mut server = RedisServer::start(RedisServerOptions::default());
    let mut a = TestNode::new(&server, "a", 4, 4).await;
    let mut b = TestNode::new(&server, "b", 4, 4).await;
    a.coordinator.register().await.unwrap();
    b.coordinator.register().await.unwrap();
    settle(&mut a, &mut b, (2, 2)).await;
    let old_token = a.token().expect("a leads");
    assert_eq!((a.assigned(), b.assigned()), (2, 2));

    // Redis dies and comes back empty (no persistence). Ticks during the outage fail
    // (no panic), the nodes keep what they were assigned.
    server.kill();
    for _ in 0..2 {
        let report = a.tick().await;
        assert!(!report.errors.is_empty());
        assert!(report.errors.iter().all(|error| error.code() == "coordination_unavailable"), "{report:?}");
        b.tick().await;
    }
    assert_eq!((a.assigned(), b.assigned()), (2, 2));
    server.restart();

    // Both re-register, a leader is elected again (a higher token), and the placement
    // is rebuilt from the replicas the nodes report running: nothing moves.
    let store = PlacementStore::new(client(&server).await);
    let restarted_at = Instant::now();
    let mut reregistered = (false, false);
    loop {
        let (ra, rb) = (a.tick().await, b.tick().await);
        reregistered.0 |= ra.heartbeat.is_some_and(|beat| !beat.record_existed);
        reregistered.1 |= rb.heartbeat.is_some_and(|beat| !beat.record_existed);
        let leaders = [a.token(), b.token()].iter().filter(|token| token.is_some()).count();
        assert!(leaders <= 1, "two leaders");
        let stored = store.read().await.ok().flatten();
        if reregistered == (true, true) && leaders == 1 && stored.is_some() {
            let token = a.token().or(b.token()).unwrap();
            assert!(token > old_token, "{token} > {old_token}");
            break;
        }
        assert!(restarted_at.elapsed() < LEASE_TTL + SLACK * 4, "no recovery in time: {ra:?} {rb:?}");
        sleep(INTERVAL).await;
    }
    assert_eq!((a.assigned(), b.assigned()), (2, 2));
    let membership = Membership::new(client(&server).await);
    assert_eq!(ids(&membership.live_nodes().await.unwrap()), vec!["a", "b"]);
}
