//! Node-wide task limits: the tasks (threads) alive against `kernel.pid_max` (every task
//! holds a pid) and `kernel.threads-max`. At either limit every `fork`/`clone` on the node
//! fails with EAGAIN, the kubelet's and the runtime's included.
//!
//! The condition is `PIDExhaustion`, not `PIDPressure`: the kubelet owns `PIDPressure` and
//! sets it from its own eviction signal (`pid.available` against its allocatable pids), and
//! two writers of one condition type would overwrite each other every heartbeat.
//!
//! Read every [`PERIOD_NS`]: `/proc/loadavg`'s fourth field (`running/total`, total being
//! the kernel's `nr_threads`), `/proc/sys/kernel/pid_max` and `threads-max`.

use std::path::{Path, PathBuf};

use aya::Ebpf;
use serde::Serialize;

use super::{
    AttachContext, Attached, Detector, DetectorStatus, Sampled, Sampler, Watermarks, read_number,
    read_text,
};
use crate::{
    event::{Event, Source, Task},
    finding,
    metrics::{Level, LevelMetric},
    problem::{Assessment, Change, Clearing, ConditionSpec, ConditionType, EventReason, Report},
};

/// Tasks at or near a node-wide limit.
pub const PID_EXHAUSTION: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "pidExhaustion",
    type_name: "PIDExhaustion",
    problem_reason: "KernelTaskLimitNear",
    healthy_reason: "KernelHasFreePIDs",
    healthy_message: "tasks are below the high-water mark of kernel.pid_max and \
                      kernel.threads-max",
    detector: "pids",
    clearing: Clearing::Keyed,
});

/// EKS's names.
pub const APPROACHING_PID_MAX: EventReason = EventReason::warning("ApproachingKernelPidMax");
pub const APPROACHING_THREADS_MAX: EventReason =
    EventReason::warning("ApproachingKernelThreadsMax");

/// Why forks refused with EAGAIN are counted from the sampled levels, not hooked (checked on
/// 6.18's `kernel/fork.c`, `kernel/pid.c`, `kernel/cgroup/pids.c`).
pub const NO_FORK_FAILURE_HOOK: &str = "fork/clone failing with EAGAIN is not hooked: no \
    tracepoint fires on copy_process's failure path (kernel.threads-max in copy_process, \
    kernel.pid_max in alloc_pid, a cgroup's pids.max in pids_can_fork, which only printks a \
    cgroup's first refusal), and what would see each refusal costs every syscall \
    (syscalls:sys_exit_clone*) or needs fexit/kprobes on kernel_clone; node-wide exhaustion \
    is seen from these counts, a pod's refused forks by pod_pids from pids.events' max \
    counter (none missed), within a period";

/// How often the counts are read.
pub const PERIOD_NS: u64 = 10_000_000_000;

#[derive(Debug)]
pub struct PidsDetector;

pub static DETECTOR: PidsDetector = PidsDetector;

impl Detector for PidsDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        None
    }

    fn name(&self) -> &'static str {
        "pids"
    }

    fn about(&self) -> &'static str {
        "tasks vs kernel.pid_max and threads-max -> PIDExhaustion, ApproachingKernelPidMax"
    }

    fn conditions(&self) -> &'static [ConditionType] {
        &[PID_EXHAUSTION]
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[APPROACHING_PID_MAX, APPROACHING_THREADS_MAX]
    }

    fn attach(&self, _ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        let files = Files::new(&ctx.host.proc_root);
        status.tried(
            Source::Sampled,
            format!(
                "{}, {}, {}, every 10 s",
                files.loadavg.display(),
                files.pid_max.display(),
                files.threads_max.display()
            ),
            files.read().map(|_| ()),
        );
        status.notes.push(NO_FORK_FAILURE_HOOK.to_owned());
        Attached {
            status,
            runtime: Sampled::boxed(
                PidsRuntime {
                    files,
                    watch: PidsWatch::new(ctx.options.resources.pids),
                },
                PERIOD_NS,
            ),
        }
    }
}

/// A node-wide limit on tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Limit {
    #[serde(rename = "kernel.pid_max")]
    PidMax,
    #[serde(rename = "kernel.threads-max")]
    ThreadsMax,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PidMax => "kernel.pid_max",
            Self::ThreadsMax => "kernel.threads-max",
        }
    }

    fn reason(self) -> EventReason {
        match self {
            Self::PidMax => APPROACHING_PID_MAX,
            Self::ThreadsMax => APPROACHING_THREADS_MAX,
        }
    }
}

/// One reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TaskCounts {
    pub tasks: u64,
    pub pid_max: u64,
    pub threads_max: u64,
}

impl TaskCounts {
    /// Each limit with the share of it in use, percent.
    pub fn usage(self) -> [(Limit, u64, f64); 2] {
        let percent = |limit: u64| {
            if limit == 0 {
                0.0
            } else {
                self.tasks as f64 * 100.0 / limit as f64
            }
        };
        [
            (Limit::PidMax, self.pid_max, percent(self.pid_max)),
            (
                Limit::ThreadsMax,
                self.threads_max,
                percent(self.threads_max),
            ),
        ]
    }
}

/// The total of `/proc/loadavg`'s `running/total` field (the fourth).
pub fn parse_loadavg_tasks(text: &str) -> Option<u64> {
    let field = text.split_whitespace().nth(3)?;
    field.split_once('/')?.1.parse().ok()
}

#[derive(Debug)]
struct Files {
    loadavg: PathBuf,
    pid_max: PathBuf,
    threads_max: PathBuf,
}

impl Files {
    fn new(proc_root: &Path) -> Self {
        Self {
            loadavg: proc_root.join("loadavg"),
            pid_max: proc_root.join("sys/kernel/pid_max"),
            threads_max: proc_root.join("sys/kernel/threads-max"),
        }
    }

    fn read(&self) -> Result<TaskCounts, String> {
        Ok(TaskCounts {
            tasks: parse_loadavg_tasks(&read_text(&self.loadavg)?)
                .ok_or_else(|| format!("{}: unexpected format", self.loadavg.display()))?,
            pid_max: read_number(&self.pid_max)?,
            threads_max: read_number(&self.threads_max)?,
        })
    }
}

/// The node's tasks and their limits on /metrics.
pub static TASKS: LevelMetric = LevelMetric::gauge(
    "tasks",
    "Tasks (threads) alive on the node: each holds a pid (/proc/loadavg)",
);
pub static TASKS_LIMIT: LevelMetric = LevelMetric::gauge(
    "tasks_limit",
    "Node-wide limits on tasks, by sysctl: forks fail with EAGAIN at either",
);

impl TaskCounts {
    fn levels(self, levels: &mut Vec<Level>) {
        levels.push(Level::new(&TASKS, self.tasks as f64));
        for (limit, value) in [
            (Limit::PidMax, self.pid_max),
            (Limit::ThreadsMax, self.threads_max),
        ] {
            levels.push(Level::new(&TASKS_LIMIT, value as f64).with("limit", limit.as_str()));
        }
    }
}

/// A reading that changed which limits are near (or the first one).
#[derive(Clone, Debug, Serialize)]
pub struct TaskLimits {
    #[serde(flatten)]
    pub counts: TaskCounts,
    /// The limits at or above the high-water mark now.
    pub near: Vec<Limit>,
    /// Those that just crossed it: an Event each.
    pub crossed: Vec<Limit>,
}

impl TaskLimits {
    fn describe(&self, limit: Limit) -> String {
        let (_, value, percent) = self
            .counts
            .usage()
            .into_iter()
            .find(|(l, _, _)| *l == limit)
            .unwrap_or((limit, 0, 0.0));
        format!(
            "{} tasks are {percent:.0} % of {} ({value}): forks fail node-wide at the limit",
            self.counts.tasks,
            limit.as_str()
        )
    }
}

finding!(TaskLimits, "task_limits", {
    fn summary(&self) -> String {
        if self.near.is_empty() {
            let [(_, _, pid), (_, _, threads)] = self.counts.usage();
            return format!(
                "{} tasks: {pid:.1} % of kernel.pid_max, {threads:.1} % of kernel.threads-max",
                self.counts.tasks
            );
        }
        self.near
            .iter()
            .map(|&limit| self.describe(limit))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The condition follows the set of near limits (a Resync, so a restored True clears
    /// at the first reading); an Event for each limit that just crossed.
    fn assess(&self, _event: &Event) -> Assessment {
        let current = self
            .near
            .iter()
            .map(|&limit| (limit.as_str().to_owned(), self.describe(limit)))
            .collect();
        let mut assessment = Assessment::default();
        if let Some(&limit) = self.crossed.first() {
            assessment.report = Some(Report {
                reason: limit.reason(),
                detail_key: limit.as_str().to_owned(),
                message: self.describe(limit),
                count: 1,
                since_boot: false,
            });
        }
        assessment.with_condition(PID_EXHAUSTION, Change::Resync { current })
    }
});

/// Which limits are near, with hysteresis: at or above the high-water mark of a limit, the
/// condition and an Event; cleared below the low-water mark.
#[derive(Debug)]
pub struct PidsWatch {
    marks: Watermarks,
    near: Option<Vec<Limit>>,
}

impl PidsWatch {
    pub fn new(marks: Watermarks) -> Self {
        Self { marks, near: None }
    }

    /// A reading: a finding at the first and whenever the set of near limits changes.
    pub fn sample(&mut self, counts: TaskCounts) -> Option<TaskLimits> {
        let before = self.near.clone();
        let was_near = |limit| before.as_ref().is_some_and(|near| near.contains(&limit));
        let near: Vec<Limit> = counts
            .usage()
            .into_iter()
            .filter(|&(limit, _, percent)| self.marks.over(percent, was_near(limit)))
            .map(|(limit, _, _)| limit)
            .collect();
        if before.as_ref() == Some(&near) {
            return None;
        }
        let crossed = near.iter().copied().filter(|&l| !was_near(l)).collect();
        self.near = Some(near.clone());
        Some(TaskLimits {
            counts,
            near,
            crossed,
        })
    }
}

#[derive(Debug)]
struct PidsRuntime {
    files: Files,
    watch: PidsWatch,
}

impl Sampler for PidsRuntime {
    fn sample(&mut self, now_ns: u64, levels: &mut Vec<Level>) -> Vec<Event> {
        let Ok(counts) = self.files.read() else {
            return Vec::new();
        };
        counts.levels(levels);
        self.watch
            .sample(counts)
            .map(|limits| Event::new(now_ns, Task::default(), Source::Sampled, limits))
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loadavg() {
        assert_eq!(
            parse_loadavg_tasks("2.19 2.60 3.62 3/103 29945\n"),
            Some(103)
        );
        assert_eq!(parse_loadavg_tasks("2.19 2.60 3.62 3 29945\n"), None);
        assert_eq!(parse_loadavg_tasks(""), None);
        let here = Files::new(Path::new("/proc"))
            .read()
            .expect("this kernel's");
        assert!(here.tasks > 0 && here.tasks < here.pid_max, "{here:?}");
    }

    fn counts(tasks: u64) -> TaskCounts {
        TaskCounts {
            tasks,
            pid_max: 1000,
            threads_max: 2000,
        }
    }

    #[test]
    fn counts_are_levels() {
        let mut levels = Vec::new();
        counts(120).levels(&mut levels);
        assert_eq!(
            levels,
            [
                Level::new(&TASKS, 120.0),
                Level::new(&TASKS_LIMIT, 1000.0).with("limit", "kernel.pid_max"),
                Level::new(&TASKS_LIMIT, 2000.0).with("limit", "kernel.threads-max"),
            ]
        );
    }

    #[test]
    fn condition_and_events_follow_the_limits_with_hysteresis() {
        let mut watch = PidsWatch::new(Watermarks::DEFAULT);
        // The first reading resyncs (clears a restored True), with no Event.
        let first = watch.sample(counts(100)).expect("first reading");
        let assessment = Event::new(1, Task::default(), Source::Sampled, first).assess();
        assert_eq!(assessment.report, None);
        assert_eq!(
            assessment.condition,
            Some((PID_EXHAUSTION, Change::Resync { current: vec![] }))
        );
        assert!(watch.sample(counts(899)).is_none());
        let near = watch.sample(counts(900)).expect("90 % of pid_max");
        assert_eq!(
            (near.near.clone(), near.crossed.clone()),
            (vec![Limit::PidMax], vec![Limit::PidMax])
        );
        let assessment = Event::new(1, Task::default(), Source::Sampled, near).assess();
        let report = assessment.report.unwrap();
        assert_eq!(report.reason, APPROACHING_PID_MAX);
        assert!(
            report
                .message
                .contains("900 tasks are 90 % of kernel.pid_max (1000)"),
            "{}",
            report.message
        );
        let Some((_, Change::Resync { current })) = assessment.condition else {
            panic!("a resync");
        };
        assert_eq!(current[0].0, "kernel.pid_max");
        // Hysteresis: still near at 85 %, cleared below 80 %.
        assert!(watch.sample(counts(850)).is_none());
        let both = watch.sample(counts(1900)).expect("threads-max too");
        assert_eq!(both.crossed, vec![Limit::ThreadsMax]);
        let cleared = watch.sample(counts(700)).expect("both cleared");
        assert!(cleared.near.is_empty() && cleared.crossed.is_empty());
    }
}
