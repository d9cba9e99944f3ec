//! Node daemons starting and dying, from the kernel (`sched_process_exec`, `sched_process_exit`),
//! without journald: NPD's `FrequentKubeletRestart`, `FrequentContainerdRestart` and
//! `FrequentDockerRestart` (its journald counters: 5 starts in 20 minutes), and an Event when a
//! watched daemon dies, with its exit code or signal.
//!
//! The kernel sends only the watched names (kubelet, containerd, dockerd, crio by default,
//! `daemons.watched`), and folds an exec storm of one name into a record per second carrying
//! the count. A start is an exec of the name, whoever runs it (systemd, a supervisor, a test).

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use npd_common::{
    RecordKind, TASK_COMM_LEN,
    daemons::{
        CONFIG_GLOBAL, DAEMON_EXIT_VERSION, DAEMON_START_VERSION, DaemonExit, DaemonStart,
        DaemonStartState, DaemonsConfig, EXEC_BTF_PROGRAM, EXEC_TRACEPOINT_PROGRAM,
        EXIT_BTF_PROGRAM, EXIT_TRACEPOINT_PROGRAM, MAX_WATCHED, STARTS_MAP,
    },
};
use serde::Serialize;

use super::{
    AttachContext, Attached, Detector, DetectorStatus, Runtime, Setup, attach_btf_tracepoint,
    attach_tracepoint,
};
use crate::{
    decode::{DecodeError, payload},
    event::{Event, Source, Task, escape_untrusted},
    finding,
    kernel::kallsyms::Symbolizer,
    problem::{Assessment, Change, Clearing, ConditionSpec, ConditionType, EventReason, Report},
};

pub const FREQUENT_KUBELET_RESTART: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "frequentKubeletRestart",
    type_name: "FrequentKubeletRestart",
    problem_reason: "FrequentKubeletRestart",
    healthy_reason: "NoFrequentKubeletRestart",
    healthy_message: "kubelet is functioning properly",
    detector: "daemons",
    clearing: Clearing::Keyed,
});

pub const FREQUENT_CONTAINERD_RESTART: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "frequentContainerdRestart",
    type_name: "FrequentContainerdRestart",
    problem_reason: "FrequentContainerdRestart",
    healthy_reason: "NoFrequentContainerdRestart",
    healthy_message: "containerd is functioning properly",
    detector: "daemons",
    clearing: Clearing::Keyed,
});

pub const FREQUENT_DOCKER_RESTART: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "frequentDockerRestart",
    type_name: "FrequentDockerRestart",
    problem_reason: "FrequentDockerRestart",
    healthy_reason: "NoFrequentDockerRestart",
    healthy_message: "docker is functioning properly",
    detector: "daemons",
    clearing: Clearing::Keyed,
});

/// A watched daemon exited with a non-zero code or was killed by a signal.
pub const DAEMON_DIED: EventReason = EventReason::warning("DaemonDied");
/// ... or exited with code 0 (stopped).
pub const DAEMON_EXITED: EventReason = EventReason::normal("DaemonExited");

/// The condition that follows a name's restarts, if NPD has one for it.
fn restart_condition(daemon: &str) -> Option<ConditionType> {
    match daemon {
        "kubelet" => Some(FREQUENT_KUBELET_RESTART),
        "containerd" => Some(FREQUENT_CONTAINERD_RESTART),
        "dockerd" => Some(FREQUENT_DOCKER_RESTART),
        _ => None,
    }
}

/// What is watched and when restarts are frequent (`daemons.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonOptions {
    /// Executable names as the kernel keeps them (at most 15 bytes), at most [`MAX_WATCHED`].
    pub watched: Vec<String>,
    /// Starts within `restart_window` that make a restart loop (NPD: 5 in 20 minutes).
    pub restart_threshold: u32,
    pub restart_window: Duration,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            watched: ["kubelet", "containerd", "dockerd", "crio"]
                .map(str::to_owned)
                .to_vec(),
            restart_threshold: 5,
            restart_window: Duration::from_secs(20 * 60),
        }
    }
}

/// Why a watched name cannot be matched in the kernel, if it cannot.
pub fn check_watched(names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Err("is empty".to_owned());
    }
    if names.len() > MAX_WATCHED {
        return Err(format!(
            "lists {} names; at most {MAX_WATCHED}",
            names.len()
        ));
    }
    for name in names {
        if name.is_empty() || name.len() >= TASK_COMM_LEN || name.contains(['/', '\0']) {
            return Err(format!(
                "`{}` is not an executable name as the kernel keeps it (1 to {} bytes, no `/`)",
                escape_untrusted(name),
                TASK_COMM_LEN - 1
            ));
        }
    }
    Ok(())
}

/// The programs' configuration: the watched names and `task_struct::exit_code`.
pub fn probe_config(options: &DaemonOptions, task_exit_code: Option<u32>) -> DaemonsConfig {
    let mut config = DaemonsConfig::new();
    for (slot, name) in config.comms.iter_mut().zip(&options.watched) {
        let bytes = name.as_bytes();
        let len = bytes.len().min(TASK_COMM_LEN - 1);
        slot[..len].copy_from_slice(&bytes[..len]);
    }
    config.count = options.watched.len().min(MAX_WATCHED) as u32;
    if let Some(offset) = task_exit_code {
        config.task_exit_code = offset;
    }
    config
}

/// `config` as the object's .rodata holds it (`#[repr(C)]`, no padding).
fn config_bytes(config: &DaemonsConfig) -> Vec<u8> {
    let mut bytes: Vec<u8> = config.comms.iter().flatten().copied().collect();
    bytes.extend(config.count.to_ne_bytes());
    bytes.extend(config.task_exit_code.to_ne_bytes());
    bytes.extend(config.start_interval_ns.to_ne_bytes());
    bytes
}

#[derive(Debug)]
pub struct DaemonsDetector;

pub static DETECTOR: DaemonsDetector = DaemonsDetector;

impl Detector for DaemonsDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        Some(npd_common::counters::Detector::Daemons)
    }

    fn name(&self) -> &'static str {
        "daemons"
    }

    fn about(&self) -> &'static str {
        "node daemons started and died (sched_process_exec/exit, filtered in the kernel) -> \
         FrequentKubeletRestart, FrequentContainerdRestart, FrequentDockerRestart, DaemonDied"
    }

    fn conditions(&self) -> &'static [ConditionType] {
        &[
            FREQUENT_KUBELET_RESTART,
            FREQUENT_CONTAINERD_RESTART,
            FREQUENT_DOCKER_RESTART,
        ]
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[DAEMON_DIED, DAEMON_EXITED]
    }

    fn globals(&self, setup: &Setup<'_>) -> Vec<(&'static str, Vec<u8>)> {
        let config = probe_config(&setup.options.daemons, setup.btf.task_exit_code());
        vec![(CONFIG_GLOBAL, config_bytes(&config))]
    }

    /// tp_btf for both hooks, the classic tracepoints otherwise (the programs read nothing
    /// from either: the task concerned is the current one).
    fn attach(&self, ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        for (btf_program, tp_program, event) in [
            (
                EXEC_BTF_PROGRAM,
                EXEC_TRACEPOINT_PROGRAM,
                "sched_process_exec",
            ),
            (
                EXIT_BTF_PROGRAM,
                EXIT_TRACEPOINT_PROGRAM,
                "sched_process_exit",
            ),
        ] {
            let btf = attach_btf_tracepoint(ebpf, ctx, btf_program, event);
            let btf_ok = btf.is_ok();
            status.tried(Source::BtfTracepoint, event, btf);
            if !btf_ok {
                status.tried(
                    Source::Tracepoint,
                    format!("sched:{event}"),
                    attach_tracepoint(ebpf, ctx, tp_program, "sched", event),
                );
            }
        }
        let options = &ctx.options.daemons;
        status.notes.push(format!(
            "watching {} (filtered in the kernel); {} starts in {} s make a restart loop",
            options.watched.join(", "),
            options.restart_threshold,
            options.restart_window.as_secs()
        ));
        if ctx.btf.task_exit_code().is_none() {
            status.notes.push(
                "task_struct.exit_code not in this kernel's BTF: exits reported without code"
                    .to_owned(),
            );
        }
        let starts = ebpf
            .take_map(STARTS_MAP)
            .and_then(|map| BpfHashMap::try_from(map).ok());
        if starts.is_none() {
            status.notes.push(format!(
                "map {STARTS_MAP} missing: starts folded after a storm's last record are not \
                 counted"
            ));
        }
        Attached {
            status,
            runtime: Box::new(DaemonsRuntime {
                restarts: RestartWindows::new(options),
                resynced: false,
                starts,
                counted: StartCounts::default(),
            }),
        }
    }
}

/// Starts per name within the window.
#[derive(Debug)]
pub struct RestartWindows {
    threshold: u32,
    window_ns: u64,
    /// name -> start times (monotonic ns), oldest first, and whether it is over the threshold.
    starts: BTreeMap<String, (VecDeque<u64>, bool)>,
}

impl RestartWindows {
    pub fn new(options: &DaemonOptions) -> Self {
        Self {
            threshold: options.restart_threshold,
            window_ns: options.restart_window.as_nanos() as u64,
            starts: BTreeMap::new(),
        }
    }

    /// `count` starts of `daemon` at `at_ns`: its restarts now.
    pub fn on_starts(&mut self, daemon: &str, count: u64, at_ns: u64) -> DaemonRestarts {
        let (times, over) = self.starts.entry(daemon.to_owned()).or_default();
        // A storm's folded starts count each; more than the threshold needs no memory.
        for _ in 0..count.min(u64::from(self.threshold)) {
            times.push_back(at_ns);
        }
        while times.len() > self.threshold as usize {
            times.pop_front();
        }
        let restarts = Self::expire(times, at_ns, self.window_ns);
        *over = restarts >= self.threshold;
        self.restarts(daemon, restarts)
    }

    /// The names whose window went quiet (under the threshold) by `now_ns`.
    pub fn advance(&mut self, now_ns: u64) -> Vec<DaemonRestarts> {
        let mut quiet = Vec::new();
        for (daemon, (times, over)) in &mut self.starts {
            let restarts = Self::expire(times, now_ns, self.window_ns);
            if *over && restarts < self.threshold {
                *over = false;
                quiet.push((daemon.clone(), restarts));
            }
        }
        quiet
            .into_iter()
            .map(|(daemon, restarts)| self.restarts(&daemon, restarts))
            .collect()
    }

    fn expire(times: &mut VecDeque<u64>, now_ns: u64, window_ns: u64) -> u32 {
        while times
            .front()
            .is_some_and(|&t| now_ns.saturating_sub(t) >= window_ns)
        {
            times.pop_front();
        }
        times.len() as u32
    }

    fn restarts(&self, daemon: &str, restarts: u32) -> DaemonRestarts {
        DaemonRestarts {
            daemon: daemon.to_owned(),
            starts_in_window: restarts,
            threshold: self.threshold,
            window_secs: self.window_ns / 1_000_000_000,
        }
    }
}

/// A watched daemon's starts within the window (after a start, or when the window went quiet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonRestarts {
    pub daemon: String,
    /// At most `threshold`: more need no memory.
    pub starts_in_window: u32,
    pub threshold: u32,
    pub window_secs: u64,
}

finding!(DaemonRestarts, "daemon_restarts", {
    fn summary(&self) -> String {
        format!(
            "{} started {}{} times in {} s",
            escape_untrusted(&self.daemon),
            if self.starts_in_window >= self.threshold {
                "at least "
            } else {
                ""
            },
            self.starts_in_window,
            self.window_secs
        )
    }

    /// The name's restart condition (if NPD has one for it): True at the threshold, False
    /// once the window holds fewer starts.
    fn assess(&self, _event: &Event) -> Assessment {
        let Some(condition) = restart_condition(&self.daemon) else {
            return Assessment::default();
        };
        let current = if self.starts_in_window >= self.threshold {
            vec![(
                self.daemon.clone(),
                format!(
                    "{}: restarting frequently (a loop at {} starts in {} s)",
                    self.summary(),
                    self.threshold,
                    self.window_secs
                ),
            )]
        } else {
            Vec::new()
        };
        Assessment::default().with_condition(condition, Change::Resync { current })
    }
});

/// How a process ended, from `task_struct::exit_code` (`wait(2)`'s status encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum ExitStatus {
    Exited { code: u8 },
    Killed { signal: u8, core_dumped: bool },
    Unknown,
}

impl ExitStatus {
    pub fn from_raw(raw: i32) -> Self {
        if raw < 0 {
            return Self::Unknown;
        }
        let signal = (raw & 0x7f) as u8;
        if signal == 0 {
            Self::Exited {
                code: ((raw >> 8) & 0xff) as u8,
            }
        } else {
            Self::Killed {
                signal,
                core_dumped: raw & 0x80 != 0,
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Exited { code } => format!("exited with code {code}"),
            Self::Killed {
                signal,
                core_dumped,
            } => format!(
                "was killed by signal {signal}{}{}",
                signal_name(signal).map_or(String::new(), |name| format!(" ({name})")),
                if core_dumped { ", core dumped" } else { "" }
            ),
            Self::Unknown => "exited (code unknown on this kernel)".to_owned(),
        }
    }
}

fn signal_name(signal: u8) -> Option<&'static str> {
    Some(match i32::from(signal) {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// A watched daemon's process ended.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonExited {
    #[serde(flatten)]
    pub status: ExitStatus,
    /// The raw `exit_code` (-1: unknown).
    pub exit_code_raw: i32,
}

finding!(DaemonExited, "daemon_exited", {
    fn summary(&self) -> String {
        self.status.describe()
    }

    fn assess(&self, event: &Event) -> Assessment {
        let reason = match self.status {
            ExitStatus::Exited { code: 0 } => DAEMON_EXITED,
            _ => DAEMON_DIED,
        };
        Assessment::report(Report {
            reason,
            detail_key: event.task.comm.clone(),
            message: format!(
                "{} (pid {}) {}",
                escape_untrusted(&event.task.comm),
                event.task.pid,
                self.status.describe()
            ),
            count: 1,
            since_boot: false,
        })
    }
});

/// The kernel's running start count of each name (`DaemonStartState::failures`) as far as the
/// agent has counted it, from records and sweeps alike: each start is counted once.
#[derive(Debug, Default)]
pub struct StartCounts {
    /// comm -> (when the kernel's count began, starts counted).
    counted: std::collections::HashMap<[u8; TASK_COMM_LEN], (u64, u64)>,
}

impl StartCounts {
    /// The kernel's count for `comm` is `total` (begun at `first_ns`): how many starts are
    /// new. A count begun anew (the entry was evicted) is all new.
    pub fn advance(&mut self, comm: [u8; TASK_COMM_LEN], first_ns: u64, total: u64) -> u64 {
        let counted = match self.counted.get(&comm) {
            Some(&(first, counted)) if first == first_ns => counted,
            _ => 0,
        };
        self.counted.insert(comm, (first_ns, total.max(counted)));
        total.saturating_sub(counted)
    }
}

#[derive(Debug)]
struct DaemonsRuntime {
    restarts: RestartWindows,
    /// The first poll resyncs the conditions (a True one restored from the Node clears unless
    /// the loop goes on).
    resynced: bool,
    /// The kernel's per-name start counts, swept for the tail of a storm no record carried.
    starts: Option<BpfHashMap<MapData, [u8; TASK_COMM_LEN], DaemonStartState>>,
    counted: StartCounts,
}

impl DaemonsRuntime {
    fn sweep(&mut self, now_ns: u64) -> Vec<DaemonRestarts> {
        let Some(map) = &self.starts else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for (comm, state) in map.iter().filter_map(Result::ok) {
            let new = self
                .counted
                .advance(comm, state.first_failure_ns, state.failures);
            if new > 0 {
                found.push((crate::event::comm_string(&comm), new));
            }
        }
        found
            .into_iter()
            .map(|(daemon, new)| self.restarts.on_starts(&daemon, new, now_ns))
            .collect()
    }
}

impl Runtime for DaemonsRuntime {
    fn decode(
        &mut self,
        kind: RecordKind,
        data: &[u8],
        _symbolizer: &mut Symbolizer,
    ) -> Result<Event, DecodeError> {
        match kind {
            RecordKind::DaemonStart => {
                let record: DaemonStart = payload(kind, DAEMON_START_VERSION, data)?;
                let task = Task::from_header(&record.header);
                let new = self.counted.advance(
                    record.header.comm,
                    record.first_start_ns,
                    record.starts_total,
                );
                let restarts = self
                    .restarts
                    .on_starts(&task.comm, new, record.header.ts_ns);
                Ok(Event::new(
                    record.header.ts_ns,
                    task,
                    source_of(record.header.hook),
                    restarts,
                ))
            }
            RecordKind::DaemonExit => {
                let record: DaemonExit = payload(kind, DAEMON_EXIT_VERSION, data)?;
                Ok(Event::new(
                    record.header.ts_ns,
                    Task::from_header(&record.header),
                    source_of(record.header.hook),
                    DaemonExited {
                        status: ExitStatus::from_raw(record.exit_code),
                        exit_code_raw: record.exit_code,
                    },
                ))
            }
            other => Err(DecodeError::UnknownKind(other as u16)),
        }
    }

    fn poll(&mut self, now_ns: u64) -> Vec<Event> {
        let mut changed = self.sweep(now_ns);
        changed.extend(self.restarts.advance(now_ns));
        if !self.resynced {
            self.resynced = true;
            changed.extend(
                ["kubelet", "containerd", "dockerd"]
                    .into_iter()
                    .map(|daemon| self.restarts.restarts(daemon, 0)),
            );
        }
        changed
            .into_iter()
            .map(|restarts| Event::new(now_ns, Task::default(), Source::Sampled, restarts))
            .collect()
    }
}

fn source_of(hook: u8) -> Source {
    match npd_common::Hook::from_u8(hook) {
        Some(npd_common::Hook::Tracepoint) => Source::Tracepoint,
        _ => Source::BtfTracepoint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000_000;

    fn condition_change(restarts: DaemonRestarts) -> Option<(ConditionType, Change)> {
        Event::new(1, Task::default(), Source::Sampled, restarts)
            .assess()
            .condition
    }

    #[test]
    fn five_starts_in_twenty_minutes_is_a_restart_loop_until_the_window_is_quiet() {
        let mut windows = RestartWindows::new(&DaemonOptions::default());
        // (minute, starts of containerd then) -> over the threshold after it
        let steps = [
            (0, 1, false),
            (3, 1, false),
            (6, 1, false),
            (9, 1, false),
            (12, 1, true),
        ];
        for (minute, starts, over) in steps {
            let restarts = windows.on_starts("containerd", starts, minute * MIN);
            assert_eq!(restarts.starts_in_window >= 5, over, "minute {minute}");
        }
        assert!(
            windows.advance(19 * MIN).is_empty(),
            "still 5 within 20 min"
        );
        // The first start leaves the window at minute 20: quiet.
        let quiet = windows.advance(20 * MIN);
        assert_eq!(quiet.len(), 1);
        assert_eq!(
            (quiet[0].daemon.as_str(), quiet[0].starts_in_window),
            ("containerd", 4)
        );
        assert_eq!(
            condition_change(quiet[0].clone()),
            Some((
                FREQUENT_CONTAINERD_RESTART,
                Change::Resync { current: vec![] }
            ))
        );
        assert!(windows.advance(21 * MIN).is_empty(), "reported once");

        // A storm folded into one record counts every start.
        let storm = windows.on_starts("kubelet", 40, 30 * MIN);
        assert_eq!(storm.starts_in_window, 5);
        let Some((condition, Change::Resync { current })) = condition_change(storm) else {
            panic!()
        };
        assert_eq!(condition, FREQUENT_KUBELET_RESTART);
        assert_eq!(
            current[0].1,
            "kubelet started at least 5 times in 1200 s: restarting frequently (a loop at 5 \
             starts in 1200 s)"
        );
    }

    #[test]
    fn every_start_is_counted_once_from_records_and_sweeps() {
        let mut counts = StartCounts::default();
        let comm = *b"containerd\0\0\0\0\0\0";
        // (what reports the kernel's count, when it began, the count) -> new starts
        let steps = [
            ("record", 100, 1, 1),
            ("sweep", 100, 1, 0),
            ("sweep", 100, 7, 6),
            ("record", 100, 9, 2),
            ("record", 100, 8, 0),
            ("record after eviction", 500, 1, 1),
        ];
        for (what, first, total, new) in steps {
            assert_eq!(counts.advance(comm, first, total), new, "{what} {total}");
        }
    }

    #[test]
    fn only_npds_names_have_a_condition() {
        assert_eq!(restart_condition("dockerd"), Some(FREQUENT_DOCKER_RESTART));
        assert_eq!(restart_condition("crio"), None);
        let mut windows = RestartWindows::new(&DaemonOptions::default());
        assert_eq!(condition_change(windows.on_starts("crio", 9, 0)), None);
    }

    #[test]
    fn exit_codes_and_signals() {
        let cases = [
            (0, "exited with code 0", DAEMON_EXITED),
            (1 << 8, "exited with code 1", DAEMON_DIED),
            (9, "was killed by signal 9 (SIGKILL)", DAEMON_DIED),
            (
                0x80 | 11,
                "was killed by signal 11 (SIGSEGV), core dumped",
                DAEMON_DIED,
            ),
            (-1, "exited (code unknown on this kernel)", DAEMON_DIED),
        ];
        for (raw, text, reason) in cases {
            let task = Task {
                pid: 42,
                tid: 42,
                comm: "containerd".to_owned(),
                cgroup_id: 0,
            };
            let exited = DaemonExited {
                status: ExitStatus::from_raw(raw),
                exit_code_raw: raw,
            };
            let report = Event::new(1, task, Source::BtfTracepoint, exited)
                .assess()
                .report
                .unwrap();
            assert_eq!(report.reason, reason, "{raw}");
            assert_eq!(report.message, format!("containerd (pid 42) {text}"));
        }
    }

    #[test]
    fn watched_names_fit_the_kernels_comm() {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_watched(&DaemonOptions::default().watched).is_ok());
        assert!(
            check_watched(&names(&["containerd-shim"])).is_ok(),
            "15 bytes"
        );
        assert!(
            check_watched(&names(&["containerd-shim-"])).is_err(),
            "16 bytes"
        );
        assert!(check_watched(&names(&["/usr/bin/kubelet"])).is_err());
        assert!(check_watched(&[]).is_err());
        assert!(check_watched(&names(&["a"; 9])).is_err());
        let config = probe_config(&DaemonOptions::default(), Some(2000));
        assert_eq!((config.count, config.task_exit_code), (4, 2000));
        assert_eq!(&config.comms[1][..11], b"containerd\0");
        let bytes = config_bytes(&config);
        assert_eq!(bytes.len(), size_of::<DaemonsConfig>());
        assert_eq!(&bytes[16..26], b"containerd");
        assert_eq!(bytes[128..132], 4u32.to_ne_bytes());
    }
}
