//! An engine process a replica owns: started in its own process group, its output logged
//! with the replica's id (the last lines kept for failure messages), stopped with
//! SIGTERM and then SIGKILL after a grace, and never outliving its replica.
//!
//! Three guards against orphans:
//! - **its own process group**, so stopping it stops whatever it started (a Python
//!   launcher's workers, a shell's children);
//! - **a parent-death signal** (`PR_SET_PDEATHSIG` = SIGKILL): if the thread that
//!   spawned it dies (and so if Swell is killed with `kill -9`), the kernel kills the
//!   engine. Linux ties the signal to the *spawning thread*, so spawn from the thread that
//!   lives as long as the replica (its engine thread);
//! - **`Drop` kills the group**, so a replica that ends by any path takes its process with
//!   it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::EngineError;

/// How many of the process's last output lines are kept for failure messages.
pub const KEPT_LINES: usize = 40;

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Added to Swell's own environment.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
}

/// A running engine process. Dropping it kills its process group and reaps it.
pub struct EngineProcess {
    child: Child,
    replica_id: String,
    last_lines: Arc<Mutex<VecDeque<String>>>,
    exited: Option<ExitStatus>,
}

impl EngineProcess {
    /// Starts `spec` for replica `replica_id`. Fails with a load error naming the program
    /// when it cannot be started (missing, not executable).
    pub fn spawn(spec: &ProcessSpec, replica_id: &str) -> Result<Self, EngineError> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = &spec.working_dir {
            command.current_dir(dir);
        }
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // `prctl` and `getppid`, both async-signal-safe; it allocates nothing on success.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl: then nobody would kill us.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|error| EngineError::Load(format!("cannot start `{}`: {error}", spec.program)))?;
        let last_lines = Arc::new(Mutex::new(VecDeque::with_capacity(KEPT_LINES)));
        if let Some(stdout) = child.stdout.take() {
            forward_lines(stdout, "stdout", replica_id, &last_lines);
        }
        if let Some(stderr) = child.stderr.take() {
            forward_lines(stderr, "stderr", replica_id, &last_lines);
        }
        Ok(Self { child, replica_id: replica_id.to_string(), last_lines, exited: None })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited (without waiting).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The last lines it wrote (stdout and stderr interleaved, oldest first).
    pub fn last_lines(&self) -> Vec<String> {
        self.last_lines.lock().iter().cloned().collect()
    }

    /// Stops it: SIGTERM to its process group, then SIGKILL after `grace` if it has not
    /// exited. Returns its exit status.
    pub fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                // The leader is gone; anything it left in its group goes too.
                self.signal_group(libc::SIGKILL);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(replica = %self.replica_id, pid = self.pid(), "engine process ignored SIGTERM; killing it");
        self.kill();
        self.exited
    }

    fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: `kill` has no memory effects; a negative pid names the process group
        // this process leads (made by `process_group(0)`).
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), signal);
        }
    }

    fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Logs each line of `stream` with the replica's id and keeps the last [`KEPT_LINES`].
fn forward_lines(
    stream: impl Read + Send + 'static,
    which: &'static str,
    replica_id: &str,
    last_lines: &Arc<Mutex<VecDeque<String>>>,
) {
    let replica = replica_id.to_string();
    let last_lines = last_lines.clone();
    let spawned = std::thread::Builder::new().name(format!("{replica}-{which}")).spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            tracing::info!(replica = %replica, stream = which, "{line}");
            let mut kept = last_lines.lock();
            if kept.len() == KEPT_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(replica = %replica_id, %error, "cannot read the engine process's {which}");
    }
}

/// A free TCP port on the loopback interface for an engine to listen on. The port is
/// free when this returns; an engine that loses a race for it fails to start, which the
/// supervisor treats as any failed start.
pub fn free_port() -> Result<u16, EngineError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|error| EngineError::Load(format!("no free port on 127.0.0.1: {error}")))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|error| EngineError::Load(format!("no free port on 127.0.0.1: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> ProcessSpec {
        ProcessSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("SWELL_TEST_VALUE".into(), "42".into())],
            working_dir: None,
        }
    }

    /// Whether `pid` names a live process (a zombie counts as gone).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pids a shell wrote to its output, one per `echo $!` line.
    fn child_pids(process: &EngineProcess, count: usize) -> Vec<u32> {
        wait_until("the pids", || process.last_lines().iter().filter(|l| l.parse::<u32>().is_ok()).count() >= count);
        process.last_lines().iter().filter_map(|l| l.parse().ok()).collect()
    }

    #[test]
    fn output_is_kept_with_the_environment_and_the_exit_is_seen() {
        let mut process = EngineProcess::spawn(&shell("echo ready; echo value=$SWELL_TEST_VALUE >&2; exit 3"), "r1").unwrap();
        wait_until("the exit", || process.exit_status().is_some());
        wait_until("both lines", || process.last_lines().len() == 2);
        let mut lines = process.last_lines();
        lines.sort();
        assert_eq!(lines, vec!["ready".to_string(), "value=42".to_string()]);
        assert_eq!(process.exit_status().and_then(|status| status.code()), Some(3));
    }

    #[test]
    fn only_the_last_lines_are_kept() {
        let process = EngineProcess::spawn(&shell("i=0; while [ $i -lt 100 ]; do echo line$i; i=$((i+1)); done; sleep 30"), "r1").unwrap();
        wait_until("line 99", || process.last_lines().last().is_some_and(|l| l == "line99"));
        let lines = process.last_lines();
        assert_eq!(lines.len(), KEPT_LINES);
        assert_eq!(lines[0], format!("line{}", 100 - KEPT_LINES));
    }

    /// Runs `end` on another thread and waits for it at most `limit`: a stop that hangs
    /// fails the test instead of hanging it.
    fn within<T: Send + 'static>(limit: Duration, end: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(end()));
        result.recv_timeout(limit).expect("it returned in time")
    }

    #[test]
    fn stop_ends_the_whole_process_group() {
        let process = EngineProcess::spawn(&shell("sleep 300 & echo $!; sleep 300 & echo $!; exec sleep 300"), "r1").unwrap();
        let leader = process.pid();
        let children = child_pids(&process, 2);
        assert!(alive(leader) && children.iter().all(|&pid| alive(pid)));
        let status = within(Duration::from_secs(60), move || process.stop(Duration::from_secs(5)));
        assert!(status.is_some(), "the leader exited");
        wait_until("the group to end", || !alive(leader) && children.iter().all(|&pid| !alive(pid)));
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        let process = EngineProcess::spawn(&shell("trap '' TERM; echo trapped; while true; do sleep 0.05; done"), "r1").unwrap();
        wait_until("the trap", || process.last_lines().iter().any(|l| l == "trapped"));
        let pid = process.pid();
        let started = Instant::now();
        process.stop(Duration::from_millis(300));
        assert!(started.elapsed() >= Duration::from_millis(300), "SIGKILL came before the grace");
        wait_until("the kill", || !alive(pid));
    }

    #[test]
    fn dropping_it_kills_it() {
        let process = EngineProcess::spawn(&shell("sleep 300 & echo $!; exec sleep 300"), "r1").unwrap();
        let leader = process.pid();
        let children = child_pids(&process, 1);
        within(Duration::from_secs(60), move || drop(process));
        wait_until("the group to end", || !alive(leader) && !alive(children[0]));
    }

    #[test]
    fn it_dies_with_the_thread_that_spawned_it() {
        let spawner = std::thread::spawn(|| {
            let process = EngineProcess::spawn(&shell("exec sleep 300"), "r1").unwrap();
            let pid = process.pid();
            // Leak it: only the parent-death signal can end it now.
            std::mem::forget(process);
            pid
        });
        let pid = spawner.join().unwrap();
        wait_until("the parent-death signal", || !alive(pid));
    }

    #[test]
    fn a_missing_program_is_a_load_error_naming_it() {
        let spec = ProcessSpec {
            program: "/nonexistent/llama-server".into(),
            args: vec![],
            env: vec![],
            working_dir: None,
        };
        let error = EngineProcess::spawn(&spec, "r1").err().expect("no such program");
        assert_eq!(error.code(), "model_load_failed");
        assert!(error.to_string().contains("/nonexistent/llama-server"), "{error}");
    }

    #[test]
    fn free_ports_can_be_listened_on() {
        let port = free_port().unwrap();
        assert!(port > 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }
}
