//! A `redis-server` of the test's own, on a free loopback port, killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` (or `$SWELL_TEST_REDIS_SERVER`) without persistence and waits
    /// until it answers `PING`.
    pub fn start() -> RedisServer {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            listener.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("swell-redis-quota-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer { port, dir, child: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let binary = std::env::var("SWELL_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start `{binary}` ({error}): these tests need a Redis server; install it \
                     (`apt-get install redis-server`) or set SWELL_TEST_REDIS_SERVER to its path"
                )
            });
        self.child = Some(child);
        let started = Instant::now();
        while self.command(&["PING"]) != "+PONG" {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server on port {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (its data is gone: it has no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// One inline command; the first line of the reply (`""` when it cannot connect).
    pub fn command(&self, args: &[&str]) -> String {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return String::new() };
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        if stream.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => reply.push(byte[0]),
                _ => return String::new(),
            }
        }
        String::from_utf8_lossy(&reply).trim_end().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
