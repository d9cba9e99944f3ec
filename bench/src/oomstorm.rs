//! An OOM-kill storm: real memory-cgroup OOM kills one after another, each in a fresh
//! pod-like cgroup removed right after (a crash-looping container's), while `npd-agent run
//! --standalone --detectors oom` watches: the agent's CPU per kill beyond its idle, and the
//! kills it counted (NPD's `problem_counter{reason="OOMKilling"}`).

use std::{
    os::unix::process::ExitStatusExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use npd_tests::{
    agent::{AgentProcess, Provoked},
    machine::MemoryCgroup,
};
use serde::Serialize;

use crate::{metrics::Scrape, procfs};

/// Small, so each allocator reaches its limit in milliseconds.
const LIMIT: u64 = 16 << 20;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct OomStormResult {
    pub(crate) kills: u64,
    /// From the first kill to the last one counted.
    pub(crate) wall_seconds: f64,
    pub(crate) cpu: procfs::CpuTime,
    /// The agent's CPU over the same length of time just before, idle.
    pub(crate) idle_cpu: procfs::CpuTime,
    /// Deltas of the agent's counters.
    pub(crate) counted: f64,
    pub(crate) records: f64,
    pub(crate) ring_buffer_drops: f64,
}

impl OomStormResult {
    /// Milliseconds of agent CPU per kill, its idle use over the same time taken out.
    pub(crate) fn cpu_ms_per_kill(&self) -> f64 {
        (self.cpu.seconds() - self.idle_cpu.seconds()).max(0.0) * 1000.0 / self.kills as f64
    }
}

fn counters(scrape: &Scrape) -> [f64; 3] {
    [
        scrape.value("problem_counter", &["reason=\"OOMKilling\""]),
        scrape.value("npd_records_total", &["kind=\"oom_kill\""]),
        scrape.value("npd_ring_buffer_drops_total", &[]),
    ]
}

/// One kill: a fresh cgroup, an allocator in it until the OOM killer ends it, the cgroup gone.
fn kill_one(provoke: &str, prefix: &str, n: u64) -> anyhow::Result<()> {
    let uid = format!("{n:08x}-0000-4000-8000-000000000000");
    let container = format!("{n:064x}");
    let cgroup = MemoryCgroup::create(
        &format!("{prefix}/kubepods/burstable/pod{uid}/{container}"),
        LIMIT,
    )?;
    let mut child = Provoked::oom_in(provoke, &cgroup)?;
    let status = child.child.wait()?;
    if status.signal() != Some(libc::SIGKILL) {
        bail!(
            "the allocator in {} ended with {status}, not an OOM kill",
            cgroup.path().display()
        );
    }
    Ok(())
}

pub(crate) fn run(provoke: &Path, kills: u64) -> anyhow::Result<OomStormResult> {
    eprintln!("npd-bench: OOM-kill storm ({kills} kills in fresh memory cgroups)");
    let provoke = provoke.to_str().context("npd-provoke's path")?;
    let prefix = format!("npd-bench-oom-{}", std::process::id());
    let mut agent = AgentProcess::start(&["--standalone", "--detectors", "oom"])?;
    agent.wait_ready(Duration::from_secs(60))?;
    let pid = agent.pid();
    // A first kill outside the measurement: the symbolizer's first read of kallsyms and the
    // like happen once per agent, not per kill.
    kill_one(provoke, &prefix, 0)?;
    let wait_counted = |agent: &AgentProcess, target: f64| -> anyhow::Result<[f64; 3]> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = counters(&Scrape::take(agent)?);
            if now[0] >= target || Instant::now() > deadline {
                return Ok(now);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let before = wait_counted(&agent, 1.0)?;

    let started = Instant::now();
    let cpu_before = procfs::CpuTime::read(pid)?;
    for n in 1..=kills {
        kill_one(provoke, &prefix, n)?;
    }
    let after = wait_counted(&agent, before[0] + kills as f64)?;
    let cpu = procfs::CpuTime::read(pid)?.since(cpu_before);
    let wall = started.elapsed();

    // The same time idle, for what the agent spends anyway (scrapes included).
    let idle_before = procfs::CpuTime::read(pid)?;
    let idle_started = Instant::now();
    std::thread::sleep(wall.saturating_sub(idle_started.elapsed()));
    let _ = Scrape::take(&agent)?;
    let idle_cpu = procfs::CpuTime::read(pid)?.since(idle_before);
    agent.stop()?;
    Ok(OomStormResult {
        kills,
        wall_seconds: wall.as_secs_f64(),
        cpu,
        idle_cpu,
        counted: after[0] - before[0],
        records: after[1] - before[1],
        ring_buffer_drops: after[2] - before[2],
    })
}
