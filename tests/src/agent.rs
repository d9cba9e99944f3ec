//! Running the real npd-agent (built by `cargo xtask test`, path in NPD_AGENT_BIN).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::machine::{FrozenFilesystem, MemoryCgroup};

/// The agent binary with the eBPF object embedded.
pub fn agent_bin() -> PathBuf {
    let path = std::env::var_os("NPD_AGENT_BIN").map(PathBuf::from).expect(
        "NPD_AGENT_BIN is not set: the kernel tests need the agent built with its eBPF object; \
         run them through `cargo xtask test`",
    );
    assert!(
        path.is_file(),
        "NPD_AGENT_BIN={} does not exist",
        path.display()
    );
    path
}

/// `npd-agent check --format json`: its exit status (non-zero when a required feature is
/// missing) and the report it printed.
pub fn check_report() -> (ExitStatus, Value) {
    let out = Command::new(agent_bin())
        .args(["check", "--format", "json"])
        .output()
        .expect("npd-agent check starts");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "npd-agent check printed no JSON report ({err}; {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status, report)
}

/// The hook `npd-agent check` reports active for `detector` (`fexit`, `tracepoint`, ...):
/// the `source` of that detector's events from the kernel here, whichever hook this kernel
/// allows. Fails the test if the detector attached nothing.
pub fn active_hook(detector: &str) -> String {
    let (_, report) = check_report();
    report["detectors"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["detector"] == detector)
        .and_then(|d| d["active"].as_str())
        .unwrap_or_else(|| {
            panic!("check reports no active hook for the {detector} detector: {report:#}")
        })
        .to_owned()
}

/// A running `npd-agent event-dump --format json`, its output collected as it arrives.
#[derive(Debug)]
pub struct EventDump {
    child: Child,
    events: mpsc::Receiver<Value>,
    stderr: Arc<Mutex<String>>,
    /// Every event received so far.
    pub seen: Vec<Value>,
}

impl EventDump {
    /// Starts the dump and waits until the programs are attached and it streams.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(agent_bin())
            .args(["event-dump", "--format", "json"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting npd-agent event-dump")?;
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(value) => {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                    Err(err) => eprintln!("event-dump printed a non-JSON line ({err}): {line}"),
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_out = child.stderr.take().context("stderr")?;
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_out).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        let mut dump = Self {
            child,
            events,
            stderr,
            seen: Vec::new(),
        };
        dump.wait_for_log("streaming records", Duration::from_secs(60))?;
        Ok(dump)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "npd-agent exited ({status}) before `{needle}`:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "npd-agent did not log `{needle}` within {timeout:?}:\n{}",
            self.stderr()
        )
    }

    /// Collects events until `done` holds for the events seen so far, or the timeout.
    pub fn collect_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> &[Value] {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self
                .events
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(event) => self.seen.push(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        &self.seen
    }

    /// Events so far about process `pid`.
    pub fn for_pid(&self, pid: u64) -> Vec<&Value> {
        self.seen.iter().filter(|e| e["pid"] == pid).collect()
    }
}

impl Drop for EventDump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command, returning its stdout parsed as the JSON object on its last line.
pub fn run_json(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = cmd.output().context("running the provoker")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().context("no output")?;
    serde_json::from_str(last).with_context(|| format!("not JSON: {last}"))
}

/// A running `npd-agent run`, its log collected; stopped (SIGTERM) on drop.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Where its /metrics, /healthz and /readyz listen.
    pub http: std::net::SocketAddr,
}

impl AgentProcess {
    /// Starts `npd-agent run ARGS --listen 127.0.0.1:0` and waits until its HTTP listener is
    /// up (not until it is ready: see [`AgentProcess::wait_ready`]).
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(agent_bin())
            .arg("run")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting npd-agent run")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().context("stderr")?;
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        let mut agent = Self {
            child,
            stderr,
            http: "127.0.0.1:0".parse()?,
        };
        let needle = "metrics and health on http://";
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = agent.log();
            if let Some(rest) = log.split(needle).nth(1) {
                let addr = rest.split('/').next().unwrap_or_default();
                agent.http = addr
                    .parse()
                    .with_context(|| format!("listener address {addr}"))?;
                return Ok(agent);
            }
            if let Some(status) = agent.child.try_wait()? {
                bail!("npd-agent exited ({status}) before listening:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("npd-agent did not start listening within a minute:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// GET `path` from the agent's listener: (status code, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.http)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .context("no HTTP status")?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Waits until /readyz answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.get("/readyz");
            if matches!(answer, Ok((200, _))) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("npd-agent exited ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "npd-agent not ready within {timeout:?} ({answer:?}):\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (SIGKILL after 10 s). Returns the exit status.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Asserts an event-dump event is attributed to the cgroup `path` and, by it, to the pod
/// `uid` and its container `container_id`.
pub fn assert_attributed_to_container(event: &Value, path: &str, uid: &str, container_id: &str) {
    let attribution = &event["attribution"];
    assert_eq!(attribution["cgroup"], path, "{event:#}");
    assert_eq!(attribution["pod"]["uid"], uid, "{attribution:#}");
    assert_eq!(
        attribution["pod"]["container_id"], container_id,
        "{attribution:#}"
    );
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running `npd-provoke` that announced its pid on its first line (`{"pid": N}`); the rest
/// of its output can be read as it comes.
#[derive(Debug)]
pub struct Provoked {
    pub child: Child,
    pub pid: u64,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Provoked {
    /// Starts `provoke` (integration tests know its path as `CARGO_BIN_EXE_npd-provoke`).
    pub fn spawn(provoke: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(provoke)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {provoke}"))?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let pid = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .with_context(|| format!("npd-provoke {args:?} printed no pid: {line:?}"))?;
        Ok(Self { child, pid, stdout })
    }

    /// `npd-provoke write` to `name` on the frozen filesystem: the child blocks in D state
    /// until the thaw, then stays alive `then_sleep_secs` (so it can be seen leaving D state).
    pub fn blocked_writer(
        provoke: &str,
        fs: &FrozenFilesystem,
        name: &str,
        then_sleep_secs: u32,
    ) -> anyhow::Result<Self> {
        let target = fs.mountpoint().join(name);
        let target = target.to_str().context("mountpoint path")?;
        Self::spawn(
            provoke,
            &[
                "write",
                "--path",
                target,
                "--then-sleep",
                &then_sleep_secs.to_string(),
            ],
        )
    }

    /// `npd-provoke oom`: the child joins `cgroup` and allocates (up to 512 MiB) until the OOM
    /// killer kills it.
    pub fn oom_in(provoke: &str, cgroup: &MemoryCgroup) -> anyhow::Result<Self> {
        let procs = cgroup.procs_file();
        let procs = procs.to_str().context("cgroup path")?;
        Self::spawn(provoke, &["oom", "--cgroup-procs", procs, "--mb", "512"])
    }

    /// The next line it prints (empty at its end).
    pub fn next_line(&mut self) -> String {
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line
    }
}
