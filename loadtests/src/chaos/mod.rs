//! `swell-chaos`: a randomized fault campaign against a real cluster on this machine, and a
//! checker of what its clients recorded.
//!
//! A campaign ([`run`]) starts a cluster ([`cluster`]: Redis with AOF, gateways and
//! worker nodes, each node behind a [`proxy::FaultProxy`] to Redis), records the
//! undisturbed output of every prompt and seed the clients will send, then runs seeded
//! clients ([`client`]) against the gateways while injecting the faults of a seeded
//! [`schedule`]: `kill -9` and restart of any process, `SIGSTOP`/`SIGCONT` pauses longer
//! than the lease and the node TTL, Redis killed and restarted with its AOF, and network
//! delay, black holes and resets between a node and Redis. When the clients are done, the
//! cluster is healed and [`history::check`] looks for silence, gaps, repeats and wrong
//! output; then the cluster must go quiet: every worker back to zero replicas. A failing
//! campaign reports its seed and the histories that show the failure.
//!
//! Layout: `schedule.rs` (the faults of a seed), `proxy.rs` (the network faults),
//! `cluster.rs` (the processes), `client.rs` (the clients, SSE), `ws_client.rs` and
//! `ingress_client.rs` (their WebSocket and Redis-ingress requests), `history.rs`
//! (histories and the checker), this file (the campaign).

pub mod client;
pub mod cluster;
pub mod history;
pub mod ingress_client;
pub mod proxy;
pub mod schedule;
pub mod tenants;
pub mod ws_client;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::Value;

use crate::chaos::client::{ClientOptions, PROMPTS};
use crate::chaos::cluster::Cluster;
use crate::chaos::history::{Anomaly, End, History, Outcomes};
use crate::chaos::proxy::Fault as NetFault;
use crate::chaos::schedule::{Fault, FaultKind, Shape, Target};

/// A campaign's settings.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub seed: u64,
    /// How long faults are injected and clients send new requests.
    pub duration: Duration,
    pub gateways: usize,
    pub workers: usize,
    pub clients: usize,
    /// The `swell` binary the nodes run.
    pub swell: PathBuf,
    /// Where nodes keep their config and logs (kept when the campaign fails).
    pub dir: PathBuf,
    /// Decode step of the `sim` engine, in ms.
    pub step_ms: u64,
    /// Output tokens of each request.
    pub max_tokens: u32,
    /// The kinds of fault injected (names of [`schedule::KINDS`]).
    pub kinds: Vec<String>,
    /// Environment of the nodes' processes (a test switches a planted bug on with it).
    pub node_env: Vec<(String, String)>,
}

/// What a campaign did and found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub requests: usize,
    pub outcomes: Outcomes,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// What the quota check saw of the `capped` tenant.
    pub quota: tenants::QuotaSeen,
    pub anomalies: Vec<Anomaly>,
    /// The cluster did not go quiet (replicas left, requests in flight).
    pub not_quiet: Option<String>,
    /// A request failed on the undisturbed cluster, before any fault.
    pub undisturbed: Option<String>,
    /// Every request's history (`swell-chaos --histories`).
    #[serde(skip)]
    pub histories: Vec<History>,
}

impl Report {
    /// A campaign that stopped before its faults: a request failed on the undisturbed
    /// cluster.
    fn undisturbed_failure(seed: u64, why: String) -> Report {
        Report {
            seed,
            requests: 0,
            outcomes: Outcomes::default(),
            faults: BTreeMap::new(),
            quota: Default::default(),
            anomalies: Vec::new(),
            not_quiet: None,
            histories: Vec::new(),
            undisturbed: Some(why),
        }
    }

    pub fn passed(&self) -> bool {
        self.anomalies.is_empty() && self.not_quiet.is_none() && self.undisturbed.is_none()
    }
}

/// Runs a campaign (see the module docs).
pub async fn run(campaign: &Campaign) -> anyhow::Result<Report> {
    let mut cluster = Cluster::start(&campaign.swell, &campaign.dir, campaign.gateways, campaign.workers, campaign.step_ms, &campaign.node_env)
        .await
        .context("starting the cluster")?;
    let gateways: Vec<String> = cluster.gateways.iter().map(|g| g.url()).collect();
    let redis_url = cluster.redis.as_ref().map(|r| r.url()).context("no redis")?;
    let options = ClientOptions {
        seeds: 6,
        max_tokens: campaign.max_tokens,
        idle: Duration::from_secs(3),
        resume_for: Duration::from_secs(30),
    };
    let reference = match reference(&gateways[0], &options).await {
        Ok(reference) => reference,
        // Without faults a request must complete: that it did not is the finding.
        Err(error) => return Ok(Report::undisturbed_failure(campaign.seed, format!("{error:#}"))),
    };

    let faults = schedule::schedule(
        campaign.seed,
        &Shape {
            gateways: campaign.gateways,
            workers: campaign.workers,
            duration: campaign.duration,
            lease: Duration::from_secs(2),
            kinds: campaign.kinds.clone(),
        },
    );
    let histories = Rc::new(RefCell::new(Vec::new()));
    let start = Instant::now();
    let until = start + campaign.duration;
    let clients: Vec<_> = (0..campaign.clients)
        .map(|index| {
            let (gateways, redis) = (gateways.clone(), redis_url.clone());
            actix_rt::spawn(client::run(index, campaign.seed, gateways, redis, options.clone(), until, histories.clone()))
        })
        .collect();
    let injected = inject(&mut cluster, &faults, start).await?;
    cluster.heal().await.context("healing the cluster")?;
    for client in clients {
        client.await.context("a client panicked")?;
    }
    let histories: Vec<History> = histories.borrow().clone();
    let mut anomalies = history::check(&histories, &reference);
    let (quota, exceeded) = tenants::check_quota(&histories, campaign.step_ms, campaign.max_tokens);
    anomalies.extend(exceeded);
    // Every ingress request's replies, read whole once the faults are over.
    let (url, clients) = (redis_url.clone(), campaign.clients);
    for (id, what) in actix_rt::task::spawn_blocking(move || ingress_client::check_replies(&url, clients)).await?? {
        let history = histories.iter().find(|h| h.transport == "ingress" && h.stream.as_deref() == Some(id.as_str()));
        let history = history.cloned().unwrap_or_else(|| {
            let mut unknown = History::new(0, 0, "ingress", 0, 0);
            unknown.stream = Some(id.clone());
            unknown.end = End::NotAccepted { why: "its XADD was not known to succeed".into() };
            unknown
        });
        anomalies.push(Anomaly { kind: "ingress replies", detail: format!("{id}: {what}"), history });
    }
    let mut not_quiet = quiet(&cluster, Duration::from_secs(30)).await.err().map(|e| e.to_string());
    if not_quiet.is_none() {
        let url = redis_url.clone();
        let leaks = actix_rt::task::spawn_blocking(move || leaks(&url, Duration::from_secs(60))).await??;
        if !leaks.is_empty() {
            not_quiet = Some(format!("left in Redis once idle: {}", leaks.join("; ")));
        }
    }
    Ok(Report {
        seed: campaign.seed,
        requests: histories.len(),
        outcomes: history::outcomes(&histories),
        faults: injected,
        quota,
        anomalies,
        not_quiet,
        undisturbed: None,
        histories,
    })
}

/// The output of every `(prompt, seed)` on the undisturbed cluster.
async fn reference(gateway: &str, options: &ClientOptions) -> anyhow::Result<HashMap<(usize, u64), String>> {
    // A request of the undisturbed cluster takes a few seconds.
    let http = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let mut reference = HashMap::new();
    for prompt in 0..PROMPTS.len() {
        for seed in 0..options.seeds {
            let body = client::body(prompt, seed, options.max_tokens, false);
            let mut response = http
                .post(format!("{gateway}/v1/chat/completions"))
                .bearer_auth(tenants::key_of("bulk"))
                .send_json(&body)
                .await
                .map_err(|e| anyhow::anyhow!("the undisturbed request failed: {e}"))?;
            let value: Value = response.json().limit(1 << 20).await.context("the undisturbed answer")?;
            let Some(text) = value["choices"][0]["message"]["content"].as_str() else {
                bail!("the undisturbed request did not complete: {value}");
            };
            reference.insert((prompt, seed), text.to_string());
        }
    }
    Ok(reference)
}

/// Injects `faults` at their offsets from `start`, each undone after its length; returns
/// the count of each kind injected.
async fn inject(cluster: &mut Cluster, faults: &[Fault], start: Instant) -> anyhow::Result<BTreeMap<String, u64>> {
    // (when, what): starts and ends of faults, in time order.
    let mut steps: Vec<(Duration, bool, &Fault)> = Vec::new();
    for fault in faults {
        steps.push((fault.at, true, fault));
        if fault.length > Duration::ZERO {
            steps.push((fault.at + fault.length, false, fault));
        }
    }
    steps.sort_by_key(|(at, begins, _)| (*at, *begins));
    let mut counts = BTreeMap::new();
    for (at, begins, fault) in steps {
        // Until the step is due, nodes that exited on their own are started again.
        while start.elapsed() < at {
            cluster.supervise()?;
            actix_rt::time::sleep(at.saturating_sub(start.elapsed()).min(Duration::from_millis(200))).await;
        }
        let key = format!("{} {}", fault.kind.name(), if fault.target == Target::Redis { "redis" } else { "node" });
        if begins {
            *counts.entry(key).or_insert(0) += 1;
            eprintln!("{:>7.1}s  {} {}{}", at.as_secs_f64(), fault.kind.name(), fault.target, length_note(fault));
        }
        apply(cluster, fault, begins).await.with_context(|| format!("fault {fault:?}"))?;
    }
    Ok(counts)
}

fn length_note(fault: &Fault) -> String {
    match fault.length {
        Duration::ZERO => String::new(),
        length => format!(" for {:.1}s", length.as_secs_f64()),
    }
}

async fn apply(cluster: &mut Cluster, fault: &Fault, begins: bool) -> anyhow::Result<()> {
    let (gateway, index) = match fault.target {
        Target::Redis => {
            if begins {
                cluster.kill_redis();
            } else {
                cluster.restart_redis().await?;
            }
            return Ok(());
        }
        Target::Gateway(i) => (true, i),
        Target::Worker(i) => (false, i),
    };
    match (&fault.kind, begins) {
        (FaultKind::Kill, true) => cluster.node_mut(gateway, index).kill(),
        (FaultKind::Kill, false) => cluster.restart(gateway, index)?,
        (FaultKind::Pause, run) => cluster.node_mut(gateway, index).signal_run(!run),
        (FaultKind::Delay(delay), true) => cluster.node_mut(gateway, index).proxy.set(NetFault::Delay(*delay)),
        (FaultKind::BlackHole, true) => cluster.node_mut(gateway, index).proxy.set(NetFault::BlackHole),
        (FaultKind::Delay(_) | FaultKind::BlackHole, false) => cluster.node_mut(gateway, index).proxy.set(NetFault::None),
        (FaultKind::Reset, _) => cluster.node_mut(gateway, index).proxy.reset(),
    }
    Ok(())
}

/// What an idle cluster must not hold in Redis: a lease of the `chat` deployment, a
/// key of a request without an expiry, or a request's state or output kept longer than
/// `output_ttl` (its pointer key lasts until its deadline and `output_ttl` after it).
fn leaks(url: &str, output_ttl: Duration) -> anyhow::Result<Vec<String>> {
    let mut conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?;
    let mut found = Vec::new();
    let leases = "swell:{dep:chat}:leases";
    let kind: String = redis::cmd("TYPE").arg(leases).query(&mut conn)?;
    let held: u64 = match kind.as_str() {
        "zset" => redis::cmd("ZCARD").arg(leases).query(&mut conn)?,
        "hash" => redis::cmd("HLEN").arg(leases).query(&mut conn)?,
        "set" => redis::cmd("SCARD").arg(leases).query(&mut conn)?,
        _ => 0,
    };
    if held > 0 {
        found.push(format!("{held} leases in {leases}"));
    }
    // No quota slot still held: a live node renews its grants, so one still live after
    // the lease (8 s) is held by a node for a request that ended. (A dead node's grants
    // just expire; the next admission reaps them.)
    let slots = format!("swell:quota:{{t:{}}}:leases", "capped");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn)?;
        let now_ms = seconds * 1000 + micros / 1000;
        let live: u64 = redis::cmd("ZCOUNT").arg(&slots).arg(format!("({now_ms}")).arg("+inf").query(&mut conn)?;
        if live == 0 {
            break;
        }
        if Instant::now() >= deadline {
            found.push(format!("{live} quota slots of `capped` still held in {slots}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every ingress entry is deleted after its terminal reply.
    let ingress = swell_cluster::ingress_wire::ingress_stream_key("swell");
    let entries: u64 = redis::cmd("XLEN").arg(&ingress).query(&mut conn)?;
    if entries > 0 {
        found.push(format!("{entries} entries left in {ingress}"));
    }
    let (mut without_expiry, mut too_long) = (Vec::new(), Vec::new());
    // A request's state and output (in its queue partition's slot) expire with the
    // output TTL once it ended; its pointer key (`{job:ID}`) expires too.
    for pattern in ["swell:{dep:*}:state:*", "swell:{dep:*}:out:*", "swell:{job:*"] {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query(&mut conn)?;
            for key in keys {
                let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn)?;
                if ttl == -1 {
                    without_expiry.push(key);
                } else if !key.starts_with("swell:{job:") && ttl > output_ttl.as_millis() as i64 + 5_000 {
                    too_long.push(format!("{key} ({ttl} ms): {}", describe(&mut conn, &key)));
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    if !without_expiry.is_empty() {
        found.push(format!("{} request keys without an expiry (e.g. {})", without_expiry.len(), without_expiry[0]));
    }
    if !too_long.is_empty() {
        found.push(format!("{} request keys kept past the output TTL (e.g. {})", too_long.len(), too_long[0]));
    }
    Ok(found)
}

/// A key's type and contents (hashes and strings), for a report.
fn describe(conn: &mut redis::Connection, key: &str) -> String {
    let kind: String = redis::cmd("TYPE").arg(key).query(conn).unwrap_or_default();
    let contents = match kind.as_str() {
        "hash" => redis::cmd("HGETALL").arg(key).query::<Vec<String>>(conn).map(|v| v.join(" ")).unwrap_or_default(),
        "string" => redis::cmd("GET").arg(key).query::<String>(conn).unwrap_or_default(),
        "stream" => format!("{} entries", redis::cmd("XLEN").arg(key).query::<u64>(conn).unwrap_or(0)),
        _ => String::new(),
    };
    let contents: String = contents.chars().take(300).collect();
    format!("{kind} {contents}")
}

/// Waits until the cluster is idle: no worker holds a replica of `chat` (the floor is
/// zero) within `within`.
async fn quiet(cluster: &Cluster, within: Duration) -> anyhow::Result<()> {
    let http = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    let deadline = Instant::now() + within;
    loop {
        let mut left = Vec::new();
        for node in &cluster.workers {
            let status = http.get(format!("{}/admin/v1/deployments/chat", node.url())).send().await;
            let replicas = match status {
                Ok(mut response) => response.json::<Value>().await.ok().map(|s| {
                    let count = |state: &str| s["replicas"][state].as_u64().unwrap_or(0);
                    count("ready") + count("starting") + count("draining")
                }),
                Err(_) => None,
            };
            match replicas {
                Some(0) => {}
                Some(n) => left.push(format!("{}: {n} replicas", node.name)),
                None => left.push(format!("{}: no status", node.name)),
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not back to zero replicas {within:?} after the campaign: {}", left.join(", "));
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
}
