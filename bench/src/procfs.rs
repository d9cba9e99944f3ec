//! What a process costs, read from /proc: CPU time, memory, and the BPF maps and programs it
//! holds (with the kernel's own accounting of their memory).

use std::{collections::BTreeMap, fs, path::Path};

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

/// A BPF map or program a process holds, as the kernel describes it in fdinfo.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct BpfObject {
    pub(crate) kind: &'static str,
    pub(crate) id: u64,
    pub(crate) name: String,
    /// `map_type` or `prog_type` (numeric, as in fdinfo).
    pub(crate) object_type: u64,
    /// What the kernel charges for it (`memlock`; on 6.4+ the map's real memory usage).
    pub(crate) memlock_bytes: u64,
    pub(crate) key_size: u64,
    pub(crate) value_size: u64,
    pub(crate) max_entries: u64,
    /// Only with kernel.bpf_stats_enabled=1.
    pub(crate) run_time_ns: u64,
    pub(crate) run_cnt: u64,
}

impl BpfObject {
    pub(crate) fn type_name(&self) -> String {
        let name = match (self.kind, self.object_type) {
            ("map", 1) => "hash",
            ("map", 2) => "array",
            ("map", 5) => "percpu_hash",
            ("map", 6) => "percpu_array",
            ("map", 9) => "lru_hash",
            ("map", 10) => "lru_percpu_hash",
            ("map", 27) => "ringbuf",
            ("prog", 5) => "tracepoint",
            ("prog", 17) => "raw_tracepoint",
            ("prog", 26) => "tracing",
            _ => return format!("{} type {}", self.kind, self.object_type),
        };
        name.to_owned()
    }
}

/// Every BPF map and program `pid` holds an fd to, each once.
pub(crate) fn bpf_objects(pid: u32) -> anyhow::Result<Vec<BpfObject>> {
    let dir = format!("/proc/{pid}/fd");
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry?;
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let kind = match target.to_string_lossy().as_ref() {
            "anon_inode:bpf-map" => "map",
            "anon_inode:bpf-prog" => "prog",
            _ => continue,
        };
        let info_path = Path::new("/proc")
            .join(pid.to_string())
            .join("fdinfo")
            .join(entry.file_name());
        let Ok(info) = fs::read_to_string(&info_path) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let id = field(if kind == "map" { "map_id" } else { "prog_id" });
        found.entry((kind, id)).or_insert_with(|| BpfObject {
            kind,
            id,
            name: object_name(kind, id).unwrap_or_default(),
            object_type: field(if kind == "map" {
                "map_type"
            } else {
                "prog_type"
            }),
            memlock_bytes: field("memlock"),
            key_size: field("key_size"),
            value_size: field("value_size"),
            max_entries: field("max_entries"),
            run_time_ns: field("run_time_ns"),
            run_cnt: field("run_cnt"),
        });
    }
    Ok(found.into_values().collect())
}

/// The name a map or program was loaded with, through bpf(2) by its id (fdinfo lacks it).
fn object_name(kind: &str, id: u64) -> Option<String> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // Offsets of `name` in struct bpf_map_info and struct bpf_prog_info (uapi, stable).
    let (get_fd, name_offset) = match kind {
        "map" => (BPF_MAP_GET_FD_BY_ID, 24),
        _ => (BPF_PROG_GET_FD_BY_ID, 64),
    };
    let mut attr = [0u32; 32];
    attr[0] = u32::try_from(id).ok()?;
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of a zeroed union bpf_attr whose first
    // member is the id; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            get_fd,
            attr.as_mut_ptr(),
            size_of_val(&attr) as u32,
        )
    };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    let mut info = [0u8; 256];
    let mut attr = [0u32; 32];
    attr[0] = fd as u32;
    attr[1] = info.len() as u32;
    let address = info.as_mut_ptr() as u64;
    attr[2] = address as u32;
    attr[3] = (address >> 32) as u32;
    // SAFETY: the kernel writes at most `info_len` bytes to `info`, which lives until after
    // the call; `fd` is ours and closed right after.
    let ret = unsafe {
        let ret = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            size_of_val(&attr) as u32,
        );
        libc::close(fd);
        ret
    };
    if ret != 0 {
        return None;
    }
    let name = &info[name_offset..name_offset + 16];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
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
