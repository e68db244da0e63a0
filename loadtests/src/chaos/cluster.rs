//! The campaign's cluster on this machine: a `redis-server` (AOF, `appendfsync always`),
//! gateways and worker nodes (`swell serve --role ...`, the `sim` engine), each node
//! talking to Redis through a [`FaultProxy`] of its own. Every process can be killed
//! (`kill -9`) and started again, paused (`SIGSTOP`) and resumed (`SIGCONT`); Redis can
//! be killed and restarted on its port with its AOF. Everything listens on loopback; a
//! node keeps its HTTP port across restarts. Dropping the cluster kills every process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use swell_cluster::redis_queue::testing::{RedisServer, RedisServerOptions};

use crate::chaos::proxy::FaultProxy;

/// The deployment every node serves: `chat`, the `sim` engine at `step` a token, scaling
/// from zero to three replicas and back, with leases, heartbeats and node TTLs short
/// enough for faults to matter within seconds. An ingress entry of a gateway that died
/// is taken over after 10 s (longer than a pause, so a live relay keeps its entries).
pub fn config(step_ms: u64) -> String {
    format!(
        r#"
[server]
autoscaler_tick = "100ms"
shutdown_timeout = "2s"
[queue]
lease_ttl = "2s"
resume_grace = "10s"
output_retention = "60s"
[ingress]
claim_idle = "10s"
claim_interval = "1s"
[cluster]
health_interval = "200ms"
connect_timeout = "300ms"
response_timeout = "1s"
heartbeat_interval = "200ms"
node_ttl = "1500ms"
leader_lease_ttl = "1500ms"
[deployments.chat]
engine = "sim"
max_tokens_default = 16
[deployments.chat.sim]
profile = "smollm2-135m-cpu"
cold_start = "100ms"
decode_step_base = "{step_ms}ms"
decode_step_per_sequence = "0ms"
max_batch_size = 8
[deployments.chat.autoscaling]
min_replicas = 0
max_replicas = 3
scale_up_window = "0s"
scale_down_window = "1s"
scale_to_zero_window = "3s"
metrics_window = "1s"
[deployments.chat.autoscaling.load_targets]
concurrent_requests = 4
"#
    )
}

/// A `swell serve` process.
pub struct Node {
    pub name: String,
    role: &'static str,
    port: u16,
    child: Option<Child>,
    paused: bool,
    pub proxy: FaultProxy,
    log: PathBuf,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn spawn(&mut self, swell: &Path, config: &Path, env: &[(String, String)]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(swell)
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--redis", &format!("redis://127.0.0.1:{}", self.proxy.port())])
            .args(["--role", self.role, "--node-id", &self.name])
            .env_remove("SWELL_REDIS_URL")
            .env_remove("SWELL_ADMIN_TOKEN")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", swell.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// `kill -9` (a paused node too).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// `SIGSTOP` (`false`) or `SIGCONT` (`true`).
    pub fn signal_run(&mut self, run: bool) {
        if let Some(child) = &self.child {
            let signal = if run { libc::SIGCONT } else { libc::SIGSTOP };
            // SAFETY: kill(2) on the pid of a child this node owns and has not reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
            self.paused = !run;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// See the module docs.
pub struct Cluster {
    dir: PathBuf,
    config: PathBuf,
    swell: PathBuf,
    env: Vec<(String, String)>,
    pub redis: Option<RedisServer>,
    redis_down: bool,
    pub gateways: Vec<Node>,
    pub workers: Vec<Node>,
}

impl Cluster {
    /// Starts Redis, then `gateways` gateways and `workers` workers, and waits until
    /// each serves.
    pub async fn start(
        swell: &Path,
        dir: &Path,
        gateways: usize,
        workers: usize,
        step_ms: u64,
        env: &[(String, String)],
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("swell.toml");
        std::fs::write(&config, self::config(step_ms) + &crate::chaos::tenants::config(gateways))?;
        let redis = actix_rt::task::spawn_blocking(|| {
            RedisServer::start(RedisServerOptions { append_only: true, append_fsync: "always" })
        })
        .await?;
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            config,
            swell: swell.to_path_buf(),
            env: env.to_vec(),
            redis: None,
            redis_down: false,
            gateways: Vec::new(),
            workers: Vec::new(),
        };
        let redis_port = redis.port();
        cluster.redis = Some(redis);
        for (role, count) in [("gateway", gateways), ("worker", workers)] {
            for i in 0..count {
                let name = if role == "gateway" { format!("gw{}", i + 1) } else { format!("w{}", i + 1) };
                let mut node = Node {
                    log: dir.join(format!("{name}.log")),
                    name,
                    role,
                    port: free_port()?,
                    child: None,
                    paused: false,
                    proxy: FaultProxy::start(redis_port).await?,
                };
                node.spawn(&cluster.swell, &cluster.config, &cluster.env)?;
                if role == "gateway" { cluster.gateways.push(node) } else { cluster.workers.push(node) }
            }
        }
        let (swell, config, env) = (cluster.swell.clone(), cluster.config.clone(), cluster.env.clone());
        for node in cluster.gateways.iter_mut().chain(cluster.workers.iter_mut()) {
            wait_serving(node, &swell, &config, &env).await?;
        }
        Ok(cluster)
    }

    pub fn node_mut(&mut self, gateway: bool, index: usize) -> &mut Node {
        if gateway { &mut self.gateways[index] } else { &mut self.workers[index] }
    }

    /// Starts a killed node again (same port, same proxy), without waiting for it:
    /// [`supervise`](Self::supervise) starts it again if it exits.
    pub fn restart(&mut self, gateway: bool, index: usize) -> anyhow::Result<()> {
        let (swell, config, env) = (self.swell.clone(), self.config.clone(), self.env.clone());
        let node = self.node_mut(gateway, index);
        node.kill();
        node.spawn(&swell, &config, &env)
    }

    /// What a service manager does: a node that exited on its own (it could not reach
    /// Redis when it started) is started again. A node killed by a fault stays down.
    pub fn supervise(&mut self) -> anyhow::Result<()> {
        let (swell, config, env) = (self.swell.clone(), self.config.clone(), self.env.clone());
        for node in self.gateways.iter_mut().chain(self.workers.iter_mut()) {
            if node.child.as_mut().is_some_and(|child| child.try_wait().ok().flatten().is_some()) {
                node.child = None;
                node.spawn(&swell, &config, &env)?;
            }
        }
        Ok(())
    }

    /// `kill -9` Redis.
    pub fn kill_redis(&mut self) {
        if let Some(redis) = &mut self.redis {
            redis.kill();
            self.redis_down = true;
        }
    }

    /// Starts Redis again on its port, replaying its AOF.
    pub async fn restart_redis(&mut self) -> anyhow::Result<()> {
        let Some(mut redis) = self.redis.take() else { bail!("no redis") };
        let redis = actix_rt::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await?;
        self.redis = Some(redis);
        self.redis_down = false;
        Ok(())
    }

    /// Every node resumed, every proxy healed, every killed process started again.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        if self.redis_down {
            self.restart_redis().await?;
        }
        for gateway in [true, false] {
            let count = if gateway { self.gateways.len() } else { self.workers.len() };
            for i in 0..count {
                let node = self.node_mut(gateway, i);
                node.proxy.set(crate::chaos::proxy::Fault::None);
                if node.paused {
                    node.signal_run(true);
                }
                if !node.is_up() {
                    self.restart(gateway, i)?;
                }
            }
        }
        let (swell, config, env) = (self.swell.clone(), self.config.clone(), self.env.clone());
        for node in self.gateways.iter_mut().chain(self.workers.iter_mut()) {
            wait_serving(node, &swell, &config, &env).await?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Waits until `node` serves (30 s at most). A node that cannot reach Redis when it
/// starts exits (it fails fast): it is started again, as a service manager would.
async fn wait_serving(node: &mut Node, swell: &Path, config: &Path, env: &[(String, String)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The port was closed while the node was down: it accepts once the node serves.
        if std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok() {
            return Ok(());
        }
        if node.child.as_mut().is_some_and(|child| child.try_wait().ok().flatten().is_some()) {
            node.child = None;
            actix_rt::time::sleep(Duration::from_millis(300)).await;
            node.spawn(swell, config, env)?;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            bail!("node {} did not start within 30 s; its log:\n{log}", node.name);
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
