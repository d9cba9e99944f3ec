//! Latency from a kernel problem to what people see: ENFILE provoked again and again (an
//! unprivileged child opens a file while fs.file-max is briefly 1), timed to the record
//! decoded by the agent, and to the FDPressure condition naming the child arriving through a
//! watch on a real kube-apiserver.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use npd_tests::{
    agent::{AgentProcess, agent_bin},
    cluster::TestCluster,
    reporting::{create_node, grant_npd_cluster_role},
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    footprint::{self, Idle},
    interrupt,
    metrics::{HistogramDelta, Scrape},
    procfs,
};

const NODE: &str = "npd-bench-node";
/// Room for the reporter to finish one patch before the next provocation.
const PAUSE: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(10);

/// Now on CLOCK_MONOTONIC, the clock of the kernel's `bpf_ktime_get_ns` timestamps.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for writes; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One ENFILE: which process, and when (CLOCK_MONOTONIC) it made the failing call.
#[derive(Clone, Copy, Debug)]
struct Provocation {
    pid: u64,
    started_ns: u64,
}

/// `npd-provoke enfile` as an unprivileged user, failing ENFILE while fs.file-max is 1.
fn provoke_enfile(provoke: &Path) -> anyhow::Result<Provocation> {
    let mut child = Command::new(provoke)
        .args(["enfile", "--uid", "65534"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the ENFILE child")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "the child said {line:?}");
    line.clear();
    {
        // Lowered for a few milliseconds; the guard restores it, also on failure.
        let _limit = interrupt::set("/proc/sys/fs/file-max", "1")?;
        writeln!(child.stdin.take().context("stdin")?, "go")?;
        stdout.read_line(&mut line)?;
    }
    child.wait()?;
    let result: Value =
        serde_json::from_str(line.trim()).with_context(|| format!("child said {line:?}"))?;
    anyhow::ensure!(
        result["ret"] == -i64::from(libc::ENFILE),
        "the child did not fail with ENFILE: {result}"
    );
    Ok(Provocation {
        pid: result["pid"].as_u64().context("pid")?,
        started_ns: result["started_ns"].as_u64().context("started_ns")?,
    })
}

/// A child whose output items (lines, or JSON values) are stamped (CLOCK_MONOTONIC) the
/// moment they are read.
struct Stamped<T> {
    child: Child,
    items: mpsc::Receiver<(u64, T)>,
}

impl<T: Send + 'static> Stamped<T> {
    fn spawn(
        cmd: &mut Command,
        read: impl FnOnce(BufReader<std::process::ChildStdout>, &dyn Fn(T) -> bool) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let (tx, items) = mpsc::channel();
        std::thread::spawn(move || read(stdout, &|item| tx.send((monotonic_ns(), item)).is_ok()));
        Ok(Self { child, items })
    }

    /// The stamp and item of the first item matching `wanted`, within `timeout`.
    fn wait_for(&self, timeout: Duration, wanted: impl Fn(&T) -> bool) -> anyhow::Result<(u64, T)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.items.recv_timeout(left) {
                Ok((stamp, item)) if wanted(&item) => return Ok((stamp, item)),
                Ok(_) => {}
                Err(err) => bail!("nothing matching within {timeout:?} ({err})"),
            }
        }
    }
}

impl Stamped<String> {
    fn lines(cmd: &mut Command) -> anyhow::Result<Self> {
        Self::spawn(cmd, |stdout, send| {
            for line in stdout.lines().map_while(Result::ok) {
                if !send(line) {
                    return;
                }
            }
        })
    }
}

impl Stamped<Value> {
    /// For `kubectl --watch -o json`, which prints one pretty-printed object per change.
    fn json_values(cmd: &mut Command) -> anyhow::Result<Self> {
        Self::spawn(cmd, |stdout, send| {
            for value in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(value) = value else {
                    return;
                };
                if !send(value) {
                    return;
                }
            }
        })
    }
}

impl<T> Drop for Stamped<T> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The FDPressure condition of a Node object: (status, message).
fn fd_pressure(node: &Value) -> Option<(&str, &str)> {
    let condition = node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "FDPressure")?;
    Some((
        condition["status"].as_str()?,
        condition["message"].as_str()?,
    ))
}

/// Samples in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Samples {
    pub(crate) ms: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) provocations: usize,
    /// Kernel timestamp of the record -> its JSON line read from `event-dump`.
    pub(crate) to_decoded: Samples,
    /// The failing call -> the kernel's timestamp (a sanity check: microseconds).
    pub(crate) call_to_kernel: Samples,
    /// The failing call -> the watch event on the Node showing FDPressure for the child.
    pub(crate) to_api_watch: Samples,
    /// From the daemon's /metrics over the same provocations.
    pub(crate) daemon_record_latency: HistogramDelta,
    pub(crate) daemon_patch_latency: HistogramDelta,
    /// The daemon reporting to the API server, idle before the provocations.
    pub(crate) cluster_idle: Idle,
    /// Its memory after the provocations.
    pub(crate) cluster_memory_end: procfs::Memory,
}

/// Kernel -> decoded, through `event-dump` (stdout read and stamped by the benchmark).
fn decode_leg(provoke: &Path, provocations: usize) -> anyhow::Result<(Samples, Samples)> {
    let log_path = std::env::temp_dir().join(format!("npd-bench-dump-{}.log", std::process::id()));
    let mut dump = Stamped::lines(
        Command::new(agent_bin())
            .args(["event-dump", "--format", "json"])
            .stderr(std::fs::File::create(&log_path)?),
    )?;
    let log = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        text
    };
    // While fs.file-max is 1 even root's socketpair() fails with ENFILE (seen here), so no
    // provocation may overlap the dump's start-up: wait until it says it streams.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("streaming records")
    {
        if let Some(status) = dump.child.try_wait()? {
            bail!("event-dump exited before streaming ({status}):\n{}", log());
        }
        if Instant::now() > deadline {
            bail!(
                "event-dump did not start streaming within a minute:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then provoke until the first record is seen, so the ring is surely flowing before the
    // measured provocations.
    loop {
        let warmup = provoke_enfile(provoke)?;
        let seen = dump.wait_for(Duration::from_secs(1), |l| {
            l.contains(&format!("\"pid\":{},", warmup.pid))
        });
        if seen.is_ok() {
            break;
        }
        if let Some(status) = dump.child.try_wait()? {
            bail!("event-dump exited ({status}):\n{}", log());
        }
        if Instant::now() > deadline {
            bail!("event-dump reported no ENFILE within a minute:\n{}", log());
        }
    }
    let mut to_decoded = Samples::default();
    let mut call_to_kernel = Samples::default();
    for _ in 0..provocations {
        let provocation = provoke_enfile(provoke)?;
        let needle = format!("\"pid\":{},", provocation.pid);
        let (stamp, line) = dump.wait_for(WAIT, |l| l.contains(&needle))?;
        let event: Value = serde_json::from_str(&line)?;
        let ts_ns = event["ts_ns"].as_u64().context("ts_ns")?;
        to_decoded.ms.push(stamp.saturating_sub(ts_ns) as f64 / 1e6);
        call_to_kernel
            .ms
            .push(ts_ns.saturating_sub(provocation.started_ns) as f64 / 1e6);
        std::thread::sleep(PAUSE);
    }
    drop(dump);
    log();
    Ok((to_decoded, call_to_kernel))
}

pub(crate) fn run(
    provoke: &Path,
    provocations: usize,
    idle_seconds: f64,
) -> anyhow::Result<Latency> {
    eprintln!("npd-bench: latency to the decoded record (event-dump)");
    let (to_decoded, call_to_kernel) = decode_leg(provoke, provocations)?;

    eprintln!("npd-bench: latency to the API server (a real kube-apiserver + etcd)");
    let cluster = TestCluster::start()?;
    create_node(&cluster, NODE)?;
    grant_npd_cluster_role(&cluster)?;
    let kubeconfig = cluster
        .user_kubeconfig()
        .to_str()
        .context("path")?
        .to_owned();
    let mut agent = AgentProcess::start(&["--kubeconfig", &kubeconfig, "--node-name", NODE])?;
    agent.wait_ready(Duration::from_secs(60))?;
    std::thread::sleep(footprint::SETTLE);
    let cluster_idle = footprint::measure(&agent, idle_seconds)?;

    let watch_log = cluster.dir().join("kubectl-watch.log");
    // kubectl 1.32 ends a watch printed through a jsonpath filter at once: read whole objects.
    let watch = Stamped::json_values(
        cluster
            .kubectl_command(cluster.admin_kubeconfig())
            .args(["get", "node", NODE, "--watch", "-o", "json"])
            .stderr(std::fs::File::create(&watch_log)?),
    )?;
    let watch_failed = || {
        format!(
            "kubectl --watch said: {}",
            std::fs::read_to_string(&watch_log)
                .unwrap_or_default()
                .trim()
        )
    };
    watch
        .wait_for(WAIT, |node| {
            fd_pressure(node).is_some_and(|(status, _)| status == "False")
        })
        .with_context(|| {
            format!(
                "the watch never showed FDPressure False; {}",
                watch_failed()
            )
        })?;
    let before = Scrape::take(&agent)?;
    let mut to_api_watch = Samples::default();
    for _ in 0..provocations {
        let provocation = provoke_enfile(provoke)?;
        let needle = format!("(pid {})", provocation.pid);
        let (stamp, _) = watch
            .wait_for(WAIT, |node| {
                fd_pressure(node)
                    .is_some_and(|(status, message)| status == "True" && message.contains(&needle))
            })
            .with_context(|| {
                format!(
                    "FDPressure never named pid {}; {}",
                    provocation.pid,
                    watch_failed()
                )
            })?;
        to_api_watch
            .ms
            .push(stamp.saturating_sub(provocation.started_ns) as f64 / 1e6);
        std::thread::sleep(PAUSE);
    }
    let after = Scrape::take(&agent)?;
    let cluster_memory_end = procfs::memory(agent.pid())?;
    drop(watch);
    agent.stop()?;
    cluster.stop()?;
    Ok(Latency {
        provocations,
        to_decoded,
        call_to_kernel,
        to_api_watch,
        daemon_record_latency: HistogramDelta::between(
            &before,
            &after,
            "npd_record_latency_seconds",
        ),
        daemon_patch_latency: HistogramDelta::between(
            &before,
            &after,
            "npd_condition_patch_seconds",
        ),
        cluster_idle,
        cluster_memory_end,
    })
}
