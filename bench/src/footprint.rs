//! The idle footprint: the daemon with every detector attached and nothing to report, its CPU
//! and memory over a stretch of time, and the kernel memory of its maps and programs.

use std::time::{Duration, Instant};

use npd_tests::agent::AgentProcess;
use serde::Serialize;

use crate::procfs;

/// How long the agent runs before the measurement starts: past loading and the first sweep.
pub(crate) const SETTLE: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Idle {
    pub(crate) seconds: f64,
    pub(crate) cpu_seconds: f64,
    pub(crate) memory_start: procfs::Memory,
    pub(crate) memory_end: procfs::Memory,
}

impl Idle {
    pub(crate) fn cpu_percent(&self) -> f64 {
        self.cpu_seconds / self.seconds * 100.0
    }
}

/// Measures an already running, settled agent for `seconds`.
pub(crate) fn measure(agent: &AgentProcess, seconds: f64) -> anyhow::Result<Idle> {
    let pid = agent.pid();
    let memory_start = procfs::memory(pid)?;
    let cpu_start = procfs::cpu_seconds(pid)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu_seconds = procfs::cpu_seconds(pid)? - cpu_start;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Idle {
        seconds: elapsed,
        cpu_seconds,
        memory_start,
        memory_end: procfs::memory(pid)?,
    })
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Footprint {
    pub(crate) idle: Idle,
    /// The maps and programs the agent holds, with the kernel's memory accounting.
    pub(crate) bpf: Vec<procfs::BpfObject>,
}

impl Footprint {
    pub(crate) fn kernel_bytes(&self, kind: &str) -> u64 {
        self.bpf
            .iter()
            .filter(|o| o.kind == kind)
            .map(|o| o.memlock_bytes)
            .sum()
    }
}

/// `npd-agent run --standalone`, every detector, for `seconds`.
pub(crate) fn run(seconds: f64) -> anyhow::Result<Footprint> {
    let mut agent = AgentProcess::start(&["--standalone"])?;
    agent.wait_ready(Duration::from_secs(60))?;
    std::thread::sleep(SETTLE);
    let idle = measure(&agent, seconds)?;
    let bpf = procfs::bpf_objects(agent.pid())?;
    agent.stop()?;
    Ok(Footprint { idle, bpf })
}
