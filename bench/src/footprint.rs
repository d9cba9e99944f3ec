//! The idle footprint: the daemon with every detector attached and nothing to report, its CPU
//! and memory over a stretch of time, and the kernel memory of its maps and programs.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use npd_tests::{
    agent::AgentProcess,
    bpf_objects::{BpfObject, bpf_objects},
    machine::{MemoryCgroup, MemoryController},
};
use serde::Serialize;

use crate::procfs;

/// How long the agent runs before the measurement starts: past loading and the first sweep.
pub(crate) const SETTLE: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Idle {
    pub(crate) seconds: f64,
    pub(crate) cpu: procfs::CpuTime,
    pub(crate) memory_start: procfs::Memory,
    pub(crate) memory_end: procfs::Memory,
    /// Times the agent's threads were put on a CPU over `seconds`.
    pub(crate) wakeups: u64,
}

impl Idle {
    pub(crate) fn cpu_percent(&self) -> f64 {
        self.cpu.percent_of_core(self.seconds)
    }

    pub(crate) fn wakeups_per_minute(&self) -> f64 {
        self.wakeups as f64 * 60.0 / self.seconds
    }
}

/// Measures an already running, settled agent for `seconds`.
pub(crate) fn measure(agent: &AgentProcess, seconds: f64) -> anyhow::Result<Idle> {
    let pid = agent.pid();
    let memory_start = procfs::memory(pid)?;
    let cpu_start = procfs::CpuTime::read(pid)?;
    let scheduled_start = procfs::times_scheduled(pid)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu = procfs::CpuTime::read(pid)?.since(cpu_start);
    let wakeups = procfs::times_scheduled(pid)?.saturating_sub(scheduled_start);
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Idle {
        seconds: elapsed,
        cpu,
        memory_start,
        memory_end: procfs::memory(pid)?,
        wakeups,
    })
}

/// What the kernel charged to the agent's own memory cgroup over its whole life: what a
/// memory limit on its pod would be held against.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct CgroupMemory {
    pub(crate) peak_bytes: u64,
    pub(crate) now_bytes: u64,
    /// Kernel memory alone (slab, stacks, page tables, BPF maps); cgroup v1 only.
    pub(crate) kernel_peak_bytes: Option<u64>,
}

fn read_bytes(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl CgroupMemory {
    fn read(cgroup: &MemoryCgroup, controller: MemoryController) -> anyhow::Result<Self> {
        let file = |name: &str| cgroup.path().join(name);
        let (peak, now, kernel_peak) = match controller {
            MemoryController::V1 => (
                "memory.max_usage_in_bytes",
                "memory.usage_in_bytes",
                Some("memory.kmem.max_usage_in_bytes"),
            ),
            MemoryController::V2 => ("memory.peak", "memory.current", None),
        };
        Ok(Self {
            peak_bytes: read_bytes(&file(peak)).with_context(|| format!("reading {peak}"))?,
            now_bytes: read_bytes(&file(now)).with_context(|| format!("reading {now}"))?,
            kernel_peak_bytes: kernel_peak.and_then(|name| read_bytes(&file(name))),
        })
    }
}

/// `cgroup.procs` of this process's memory cgroup.
fn own_memory_cgroup_procs(controller: MemoryController) -> anyhow::Result<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = match controller {
                MemoryController::V1 => controllers.split(',').any(|c| c == "memory"),
                MemoryController::V2 => controllers.is_empty(),
            };
            wanted.then(|| path.trim_start_matches('/').to_owned())
        })
        .context("no memory cgroup in /proc/self/cgroup")?;
    Ok(controller.root().join(path).join("cgroup.procs"))
}

/// Starts the standalone agent inside `cgroup`: this process steps in for the spawn (the
/// child inherits it) and back out, so only the agent is charged there.
fn start_in(cgroup: &MemoryCgroup, controller: MemoryController) -> anyhow::Result<AgentProcess> {
    let home = own_memory_cgroup_procs(controller)?;
    let pid = std::process::id().to_string();
    std::fs::write(cgroup.procs_file(), &pid).context("entering the agent's memory cgroup")?;
    let agent = AgentProcess::start(&["--standalone"]);
    let back =
        std::fs::write(&home, &pid).with_context(|| format!("moving back to {}", home.display()));
    let agent = agent?;
    back?;
    Ok(agent)
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Footprint {
    /// CPU from its start until it was ready (programs loaded and attached).
    pub(crate) start_cpu: procfs::CpuTime,
    pub(crate) idle: Idle,
    pub(crate) cgroup: CgroupMemory,
    /// The maps and programs the agent holds, with the kernel's memory accounting.
    pub(crate) bpf: Vec<BpfObject>,
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

/// `npd-agent run --standalone`, every detector, in a memory cgroup of its own, for
/// `seconds`.
pub(crate) fn run(seconds: f64) -> anyhow::Result<Footprint> {
    let controller = MemoryController::detect()?;
    // No limit to speak of: only the accounting is wanted.
    let cgroup = MemoryCgroup::create(&format!("npd-bench-{}", std::process::id()), 1 << 30)?;
    let mut agent = start_in(&cgroup, controller)?;
    agent.wait_ready(Duration::from_secs(60))?;
    let start_cpu = procfs::CpuTime::read(agent.pid())?;
    std::thread::sleep(SETTLE);
    let idle = measure(&agent, seconds)?;
    let bpf = bpf_objects(agent.pid())?;
    let charged = CgroupMemory::read(&cgroup, controller)?;
    agent.stop()?;
    drop(cgroup);
    Ok(Footprint {
        start_cpu,
        idle,
        cgroup: charged,
        bpf,
    })
}
