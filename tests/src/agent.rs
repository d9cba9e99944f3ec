//! Running the real npd-agent (built by `cargo xtask test`, path in NPD_AGENT_BIN).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

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
