//! What a process costs, read from /proc: CPU time, memory and wakeups (its BPF maps and
//! programs are read by `npd_tests::bpf_objects`).

use std::{fs, path::Path};

use anyhow::Context;
use serde::Serialize;

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU time of a process, two ways.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct CpuTime {
    /// utime + stime from /proc/PID/stat: every thread, dead ones included, in clock ticks
    /// (10 ms here).
    pub(crate) stat_seconds: f64,
    /// The sum of /proc/PID/task/*/schedstat: nanoseconds, but only of living threads.
    pub(crate) sched_seconds: f64,
}

impl CpuTime {
    pub(crate) fn read(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            stat_seconds: stat_seconds(pid)?,
            sched_seconds: sched_seconds(pid)?,
        })
    }

    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            stat_seconds: self.stat_seconds - earlier.stat_seconds,
            sched_seconds: self.sched_seconds - earlier.sched_seconds,
        }
    }

    /// As a percentage of one core over `wall_seconds` (see [`CpuTime::seconds`]; a thread
    /// that ended took its share of schedstat along).
    pub(crate) fn percent_of_core(self, wall_seconds: f64) -> f64 {
        self.seconds() / wall_seconds * 100.0
    }

    /// Seconds of CPU: schedstat's nanoseconds, unless the ticks show more than one tick
    /// beyond them.
    pub(crate) fn seconds(self) -> f64 {
        let tick = 1.0 / clock_ticks_per_second();
        if self.stat_seconds > self.sched_seconds + tick {
            self.stat_seconds
        } else {
            self.sched_seconds
        }
    }
}

fn sched_seconds(pid: u32) -> anyhow::Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for task in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // A thread may end between the listing and the read.
        if let Ok(text) = fs::read_to_string(task?.path().join("schedstat")) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e9)
}

/// How many times the process's living threads were put on a CPU (the third field of
/// /proc/PID/task/*/schedstat): for a daemon that sleeps between events, its wakeups.
pub(crate) fn times_scheduled(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut count = 0u64;
    for task in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // A thread may end between the listing and the read.
        if let Ok(text) = fs::read_to_string(task?.path().join("schedstat")) {
            count += parse_times_scheduled(&text).unwrap_or(0);
        }
    }
    Ok(count)
}

fn parse_times_scheduled(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().nth(2)?.parse().ok()
}

/// User + system CPU seconds of a process, all its threads, dead ones included.
fn stat_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5); the first after ')' is field 3.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

/// Resident memory from /proc/PID/status, in KiB.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Memory {
    /// VmRSS: resident now.
    pub(crate) rss_kib: u64,
    /// VmHWM: the most ever resident.
    pub(crate) hwm_kib: u64,
    /// RssAnon: the heap and stacks (the rest is the mapped binary and libraries).
    pub(crate) anon_kib: u64,
}

pub(crate) fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("no {name} in {path}"))?
            .parse()
            .with_context(|| format!("{name} in {path}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
    })
}

/// The machine, for the report: kernel, CPU model, cores, memory.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) kernel: String,
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory_gib: f64,
    pub(crate) os: String,
    /// /proc/loadavg when the run started: the machine may be shared.
    pub(crate) load: String,
    /// The hook each detector uses on this kernel (`npd-agent check`), e.g. `fd: tracepoint`:
    /// the hook overhead depends on it.
    pub(crate) hooks: String,
}

pub(crate) fn machine(agent: &Path) -> Machine {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let os = read("/etc/os-release");
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_default(),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0)),
        os: os
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|name| name.trim_matches('"').to_owned())
            .unwrap_or_default(),
        load: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        hooks: active_hooks(agent),
    }
}

/// `detector: hook, ...` from `npd-agent check --format json`, or why it is unknown.
fn active_hooks(agent: &Path) -> String {
    let output = match std::process::Command::new(agent)
        .args(["check", "--format", "json"])
        .output()
    {
        Ok(output) => output,
        Err(err) => return format!("unknown (npd-agent check: {err})"),
    };
    let Ok(report) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        return "unknown (npd-agent check printed no JSON)".to_owned();
    };
    report["detectors"]
        .as_array()
        .map(|detectors| {
            detectors
                .iter()
                .map(|d| {
                    format!(
                        "{}: {}",
                        d["detector"].as_str().unwrap_or("?"),
                        d["active"].as_str().unwrap_or("none")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_third_schedstat_field_counts_times_scheduled() {
        assert_eq!(
            super::parse_times_scheduled("8147112 233840 57\n"),
            Some(57)
        );
        assert_eq!(super::parse_times_scheduled("8147112 233840\n"), None);
    }
}
