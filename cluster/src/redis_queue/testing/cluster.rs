//! A Redis Cluster of a test's own: several `redis-server --cluster-enabled yes` on free
//! ports, the slots split evenly over the masters, optionally a replica per master, so
//! a test can kill a master and watch its replica take over.
//!
//! ```no_run
//! # use swell_cluster::redis_queue::testing::RedisCluster;
//! let mut cluster = RedisCluster::start(3, 0); // 3 masters, no replicas
//! let url = cluster.url(); // redis-cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
//! let shard = cluster.master_of("swell:{dep:d}:jobs");
//! // dropped: every node killed, directories removed
//! ```
//!
//! Set up by hand (`CLUSTER ADDSLOTSRANGE`, `CLUSTER MEET`, `CLUSTER REPLICATE`) rather
//! than `redis-cli --cluster create`, which polls once a second. The nodes run with
//! `cluster-node-timeout` 1 s, so a killed master's replica takes over within a few
//! seconds, and `cluster-require-full-coverage no`, so the other shards keep serving
//! meanwhile (what a production cluster should set too: docs/distributed.md). Needs
//! `redis-server` and `redis-cli` on the `PATH`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const SLOTS: u32 = 16384;

/// One node of the cluster.
struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A running Redis Cluster, killed (and its directories removed) on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    masters: usize,
}

impl RedisCluster {
    /// Start `masters` masters and `replicas` replicas of each; returns once every node
    /// says `cluster_state:ok` and every replica is in sync.
    pub fn start(masters: usize, replicas: usize) -> Self {
        assert!(masters >= 1);
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let run = COUNTER.fetch_add(1, Ordering::Relaxed);
        let count = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        for index in 0..count {
            let port = free_cluster_port();
            let dir = std::env::temp_dir().join(format!("swell-redis-cluster-{}-{run}-{index}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create a cluster node's directory");
            nodes.push(Node { port, dir, child: None });
        }
        let mut cluster = Self { nodes, masters };
        for index in 0..count {
            cluster.spawn(index);
        }
        for master in 0..masters {
            let first = SLOTS as usize * master / masters;
            let last = SLOTS as usize * (master + 1) / masters - 1;
            cluster.cli_ok(master, &["CLUSTER", "ADDSLOTSRANGE", &first.to_string(), &last.to_string()]);
        }
        let first_port = cluster.nodes[0].port.to_string();
        for index in 1..count {
            cluster.cli_ok(index, &["CLUSTER", "MEET", "127.0.0.1", &first_port]);
        }
        cluster.wait_until("every node knows every other", |c| {
            (0..count).all(|i| c.info_field(i, "CLUSTER", "cluster_known_nodes").as_deref() == Some(&count.to_string()))
        });
        for replica in masters..count {
            let master = (replica - masters) % masters;
            let id = cluster.cli(master, &["CLUSTER", "MYID"]);
            cluster.cli_ok(replica, &["CLUSTER", "REPLICATE", id.trim()]);
        }
        cluster.wait_until("cluster_state:ok everywhere, replicas in sync", |c| {
            (0..count).all(|i| c.info_field(i, "CLUSTER", "cluster_state").as_deref() == Some("ok"))
                && (masters..count).all(|i| c.info_field(i, "replication", "master_link_status").as_deref() == Some("up"))
        });
        cluster
    }

    /// `redis-cluster://` with every master as a seed node.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..self.masters].iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// `redis://` of one node (for `INFO`, `CLUSTER` commands, or a test's own client).
    pub fn node_url(&self, index: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[index].port)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The index of the node that is master of `key`'s slot now.
    pub fn master_of(&self, key: &str) -> usize {
        let alive = self.alive_nodes();
        let asker = *alive.first().expect("a node alive");
        let slot: u32 = self.cli(asker, &["CLUSTER", "KEYSLOT", key]).trim().parse().expect("a slot number");
        // `CLUSTER SHARDS` is 7.0+; `CLUSTER NODES` lines: id addr flags master ... slots.
        for line in self.cli(asker, &["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let covers = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u32>().is_ok_and(|a| a <= slot) && b.parse::<u32>().is_ok_and(|b| slot <= b),
                None => range.parse::<u32>() == Ok(slot),
            });
            if covers {
                let port: u16 = fields[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).expect("a port");
                return self.nodes.iter().position(|n| n.port == port).expect("a node of this cluster");
            }
        }
        panic!("no live master serves slot {slot}");
    }

    /// The master node `index` replicates (`None`: it is a master, or down).
    pub fn replica_of(&self, index: usize) -> Option<usize> {
        if self.nodes[index].child.is_none() || self.info_field(index, "replication", "role").as_deref() != Some("slave") {
            return None;
        }
        let port: u16 = self.info_field(index, "replication", "master_port")?.trim().parse().ok()?;
        self.nodes.iter().position(|n| n.port == port)
    }

    /// `kill -9` a node.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill master `index` (`kill -9`) and wait until a replica of it serves its slots
    /// (the cluster says `ok` again on every live node). Answers the new master's index.
    pub fn fail_over(&mut self, index: usize) -> usize {
        let id = self.cli(index, &["CLUSTER", "MYID"]).trim().to_string();
        let replicas: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != index && self.nodes[i].child.is_some())
            .filter(|&i| self.info_field(i, "replication", "role").as_deref() == Some("slave"))
            .filter(|&i| self.cli(i, &["CLUSTER", "NODES"]).lines().any(|l| l.contains("myself") && l.contains(&id)))
            .collect();
        assert!(!replicas.is_empty(), "master {index} has no replica to fail over to");
        self.kill(index);
        let mut promoted = None;
        self.wait_until("a replica promoted and the cluster ok", |c| {
            promoted = replicas.iter().copied().find(|&r| c.info_field(r, "replication", "role").as_deref() == Some("master"));
            promoted.is_some()
                && c.alive_nodes().iter().all(|&i| c.info_field(i, "CLUSTER", "cluster_state").as_deref() == Some("ok"))
        });
        promoted.expect("a promoted replica")
    }

    fn alive_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_some()).collect()
    }

    /// Start node `index`. Free ports are only free until someone binds them: a node
    /// that cannot bind its port or bus port, or a port that answers for another
    /// process, gets a fresh port (before the cluster is formed, so nothing knows it).
    fn spawn(&mut self, index: usize) {
        for attempt in 0..10 {
            if attempt > 0 {
                self.nodes[index].port = free_cluster_port();
            }
            let node = &mut self.nodes[index];
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"])
                .arg("--dir")
                .arg(&node.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = match command.spawn() {
                Ok(child) => child,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    panic!("redis-server is not installed (the Redis tests start their own): apt-get install redis-server")
                }
                Err(error) => panic!("starting redis-server failed: {error}"),
            };
            let pid = child.id().to_string();
            node.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(info) = self.try_cli(index, &["INFO", "server"]) {
                    if info.lines().any(|line| line.trim() == format!("process_id:{pid}")) {
                        return;
                    }
                    break; // another process has the port
                }
                let exited = self.nodes[index].child.as_mut().is_some_and(|child| child.try_wait().ok().flatten().is_some());
                if exited {
                    break; // it could not bind its port or its bus port
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill(index);
        }
        panic!("redis cluster: node {index} did not start on any of 10 ports");
    }

    /// `redis-cli -p <port> args...`, its output trimmed (`None`: it could not run or
    /// reach the node).
    fn try_cli(&self, index: usize, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.nodes[index].port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output();
        match output {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-cli is not installed (it comes with redis-server: apt-get install redis-tools)")
            }
            Ok(output) if output.status.success() => Some(String::from_utf8_lossy(&output.stdout).trim().to_string()),
            _ => None,
        }
    }

    fn cli(&self, index: usize, args: &[&str]) -> String {
        self.try_cli(index, args).unwrap_or_else(|| panic!("redis-cli {args:?} on node {index} failed"))
    }

    fn cli_ok(&self, index: usize, args: &[&str]) {
        let reply = self.cli(index, args);
        assert_eq!(reply, "OK", "redis-cli {args:?} on node {index}");
    }

    /// A field of `INFO <section>` (`CLUSTER` reads `CLUSTER INFO`).
    fn info_field(&self, index: usize, section: &str, field: &str) -> Option<String> {
        let text = if section == "CLUSTER" {
            self.try_cli(index, &["CLUSTER", "INFO"])?
        } else {
            self.try_cli(index, &["INFO", section])?
        };
        text.lines().find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':').map(str::to_string))
    }

    fn wait_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis cluster: not within 30 s: {what}");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
            let _ = std::fs::remove_dir_all(&self.nodes[index].dir);
        }
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = super::free_port();
        if port <= 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair (port, port + 10000) for a cluster node");
}
