//! A `redis-server` of a test's own, on a free port, that the test can kill and restart.
//!
//! ```no_run
//! # use swell_cluster::redis_queue::testing::{RedisServer, RedisServerOptions};
//! let mut server = RedisServer::start(RedisServerOptions { append_only: true, ..Default::default() });
//! let url = server.url();
//! server.kill(); // kill -9
//! server.restart(); // same port, same directory (and so the same AOF)
//! // dropped: killed, directory removed
//! ```
//!
//! Needs `redis-server` on the `PATH` (Debian: `apt-get install redis-server`); without
//! it, `start` panics saying so. [`RedisCluster`] is a Redis Cluster of a test's own;
//! [`command_calls`] counts what a Redis executed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod cluster;
mod commandstats;
pub use cluster::RedisCluster;
pub use commandstats::{command_calls, reset_command_calls};

/// The key of a job's state under `prefix`, for a deployment queue split in
/// `partitions` (its queue partition's slot).
pub fn job_state_key(prefix: &str, deployment: &str, partitions: u32, job_id: &str) -> String {
    let partition = super::partitions::Partitions::new(partitions).of(job_id);
    format!("{prefix}:{{{}}}:state:{job_id}", super::partitions::Partitions::tag(deployment, partition))
}

#[derive(Debug, Clone)]
pub struct RedisServerOptions {
    /// `appendonly yes` (with `appendfsync always`: nothing acknowledged is lost).
    pub append_only: bool,
    /// `appendfsync` when `append_only`: `always`, `everysec` or `no`.
    pub append_fsync: &'static str,
}

impl Default for RedisServerOptions {
    fn default() -> Self {
        Self { append_only: false, append_fsync: "always" }
    }
}

/// A running `redis-server`, killed (and its directory removed) on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    options: RedisServerOptions,
    child: Option<Child>,
}

impl RedisServer {
    /// Start on a free port in a fresh directory; waits until it answers `PING`.
    pub fn start(options: RedisServerOptions) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "swell-redis-{}-{}-{port}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the redis-server directory");
        let mut server = Self { port, dir, options, child: None };
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9` the server (no shutdown, no final fsync) and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and directory (replaying its AOF, if any).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg(if self.options.append_only { "yes" } else { "no" })
            .arg("--appendfsync")
            .arg(self.options.append_fsync)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed (the Redis tests start their own): apt-get install redis-server"
            ),
            Err(error) => panic!("starting redis-server failed: {error}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.answers_ping() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                panic!("redis-server on port {} exited at start: {status}", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} did not answer PING within 10s", self.port);
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("a bound address").port()
}
