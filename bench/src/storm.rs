//! Storms: processes failing EMFILE as fast as they can (npd-provoke storm), without npd, with
//! the daemon (its CPU, memory and counters), and with `event-dump` (every failure accounted
//! from the records themselves).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use npd_tests::agent::{AgentProcess, EventDump};
use serde::Serialize;
use serde_json::Value;

use crate::{metrics::Scrape, procfs};

/// One storm process's own report.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StormProcess {
    pub(crate) pid: u64,
    pub(crate) failures: u64,
    pub(crate) seconds: f64,
}

/// Runs `processes` storms at once for `seconds` and waits for all of them.
fn storm(provoke: &Path, processes: usize, seconds: f64) -> anyhow::Result<Vec<StormProcess>> {
    let children = (0..processes)
        .map(|_| {
            Command::new(provoke)
                .args(["storm", "--seconds", &seconds.to_string()])
                .args(["--threads", "1", "--failures", "0"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", provoke.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "the storm failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let last: Value = serde_json::from_str(text.lines().last().context("no output")?)?;
            Ok(StormProcess {
                pid: last["pid"].as_u64().context("pid")?,
                failures: last["failures"].as_u64().context("failures")?,
                seconds: last["seconds"].as_f64().context("seconds")?,
            })
        })
        .collect()
}

/// Failures per second, all processes together.
fn rate(processes: &[StormProcess]) -> f64 {
    processes
        .iter()
        .map(|p| p.failures as f64 / p.seconds)
        .sum()
}

/// What the daemon paid and counted during one storm.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct DaemonDuringStorm {
    pub(crate) failures: u64,
    pub(crate) failures_per_second: f64,
    pub(crate) wall_seconds: f64,
    pub(crate) cpu: procfs::CpuTime,
    pub(crate) memory_before: procfs::Memory,
    pub(crate) memory_after: procfs::Memory,
    /// Deltas of the agent's counters for the fd detector over the storm and its sweep.
    pub(crate) hook_hits: f64,
    pub(crate) records: f64,
    pub(crate) rate_limited: f64,
    /// All detectors.
    pub(crate) ring_buffer_drops: f64,
}

impl DaemonDuringStorm {
    pub(crate) fn cpu_percent(&self) -> f64 {
        self.cpu.percent_of_core(self.wall_seconds)
    }
}

/// The records of one storm, summed as in tests/tests/fd.rs.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Accounting {
    pub(crate) failures: u64,
    /// Records sent by the kernel program (`source: tracepoint`).
    pub(crate) records: u64,
    /// Failures folded into those records.
    pub(crate) suppressed: u64,
    /// Failures the agent's sweep reported after the last record (`flushed: true`).
    pub(crate) flushed: u64,
    /// Sweep records.
    pub(crate) sweeps: u64,
}

impl Accounting {
    pub(crate) fn accounted(&self) -> u64 {
        self.records + self.suppressed + self.flushed
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct StormResult {
    pub(crate) processes: usize,
    pub(crate) seconds: f64,
    /// Failures per second of all storm processes without npd, before and after the runs
    /// with it (the machine is shared: its load drifts).
    pub(crate) without_npd: [f64; 2],
    pub(crate) daemon: DaemonDuringStorm,
    pub(crate) accounting: Accounting,
}

impl StormResult {
    /// The storm's failure rate with npd relative to without, minus one.
    pub(crate) fn rate_change(&self) -> f64 {
        self.daemon.failures_per_second / self.without_npd_mean() - 1.0
    }

    pub(crate) fn without_npd_mean(&self) -> f64 {
        (self.without_npd[0] + self.without_npd[1]) / 2.0
    }
}

/// How long after a storm the agent's one-second sweep has surely reported its tail.
const SWEEP_WAIT: Duration = Duration::from_secs(3);

fn fd_counters(scrape: &Scrape) -> [f64; 4] {
    [
        scrape.value("npd_hook_hits_total", &["detector=\"fd\""]),
        scrape.value("npd_records_total", &["kind=\"fd_exhausted\""]),
        scrape.value("npd_rate_limited_total", &["detector=\"fd\""]),
        scrape.value("npd_ring_buffer_drops_total", &[]),
    ]
}

fn with_daemon(
    provoke: &Path,
    agent: &AgentProcess,
    processes: usize,
    seconds: f64,
) -> anyhow::Result<DaemonDuringStorm> {
    let pid = agent.pid();
    let memory_before = procfs::memory(pid)?;
    let before = fd_counters(&Scrape::take(agent)?);
    let cpu_before = procfs::CpuTime::read(pid)?;
    let started = Instant::now();
    let storms = storm(provoke, processes, seconds)?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu = procfs::CpuTime::read(pid)?.since(cpu_before);
    let memory_after = procfs::memory(pid)?;
    std::thread::sleep(SWEEP_WAIT);
    let after = fd_counters(&Scrape::take(agent)?);
    Ok(DaemonDuringStorm {
        failures: storms.iter().map(|s| s.failures).sum(),
        failures_per_second: rate(&storms),
        wall_seconds,
        cpu,
        memory_before,
        memory_after,
        hook_hits: after[0] - before[0],
        records: after[1] - before[1],
        rate_limited: after[2] - before[2],
        ring_buffer_drops: after[3] - before[3],
    })
}

fn accounted_for(seen: &[Value], pid: u64) -> u64 {
    seen.iter()
        .filter(|e| e["pid"] == pid && e["kind"] == "fd_exhausted")
        .map(|e| {
            let suppressed = e["suppressed"].as_u64().unwrap_or(0);
            if e["flushed"] == true {
                suppressed
            } else {
                suppressed + 1
            }
        })
        .sum()
}

fn with_event_dump(
    provoke: &Path,
    dump: &mut EventDump,
    processes: usize,
    seconds: f64,
) -> anyhow::Result<Accounting> {
    let storms = storm(provoke, processes, seconds)?;
    dump.collect_until(Duration::from_secs(10), |seen| {
        storms
            .iter()
            .all(|s| accounted_for(seen, s.pid) >= s.failures)
    });
    let mut accounting = Accounting {
        failures: storms.iter().map(|s| s.failures).sum(),
        ..Accounting::default()
    };
    for event in dump
        .seen
        .iter()
        .filter(|e| storms.iter().any(|s| e["pid"] == s.pid))
    {
        let suppressed = event["suppressed"].as_u64().unwrap_or(0);
        if event["flushed"] == true {
            accounting.flushed += suppressed;
            accounting.sweeps += 1;
        } else {
            accounting.records += 1;
            accounting.suppressed += suppressed;
        }
    }
    Ok(accounting)
}

pub(crate) fn run(provoke: &Path, seconds: f64) -> anyhow::Result<Vec<StormResult>> {
    const SIZES: [usize; 2] = [1, 4];
    let without_npd = || -> anyhow::Result<Vec<f64>> {
        eprintln!("npd-bench: storms without npd");
        SIZES
            .iter()
            .map(|&n| storm(provoke, n, seconds).map(|s| rate(&s)))
            .collect()
    };
    let without_before = without_npd()?;

    eprintln!("npd-bench: storms with `npd-agent run --standalone`");
    let mut agent = AgentProcess::start(&["--standalone"])?;
    agent.wait_ready(Duration::from_secs(60))?;
    let daemon: Vec<DaemonDuringStorm> = SIZES
        .iter()
        .map(|&n| with_daemon(provoke, &agent, n, seconds))
        .collect::<anyhow::Result<_>>()?;
    agent.stop()?;
    let without_after = without_npd()?;

    eprintln!("npd-bench: storms with `npd-agent event-dump`, for the accounting");
    let mut dump = EventDump::start(&[])?;
    let accounting: Vec<Accounting> = SIZES
        .iter()
        .map(|&n| with_event_dump(provoke, &mut dump, n, seconds))
        .collect::<anyhow::Result<_>>()?;
    drop(dump);

    Ok(SIZES
        .iter()
        .zip(without_before.into_iter().zip(without_after))
        .zip(daemon)
        .zip(accounting)
        .map(
            |(((&processes, (before, after)), daemon), accounting)| StormResult {
                processes,
                seconds,
                without_npd: [before, after],
                daemon,
                accounting,
            },
        )
        .collect())
}
