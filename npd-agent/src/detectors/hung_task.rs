//! Hung tasks: khungtaskd's `sched_process_hang`, with the blocked task's kernel stack, and
//! the KernelDeadlock condition they set.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::Ebpf;
use npd_common::RecordKind;
use serde::Serialize;

use super::{
    AttachContext, Attached, Detector, DetectorStatus, Runtime, attach_btf_tracepoint,
    attach_tracepoint,
};
use crate::{
    decode::{DecodeError, payload},
    engine::{describe_task, frame_function},
    event::{Event, Source, Task},
    finding,
    kernel::{CgroupLayout, kallsyms::Symbolizer, procfs},
    problem::{Assessment, Change, Clearing, ConditionSpec, ConditionType, EventReason, Report},
};

pub use npd_common::hung_task::{BTF_PROGRAM, TRACEPOINT_PROGRAM};

/// NPD's KernelDeadlock: True while a task is hung, False once none has been for
/// `hungTask.recoveryWindow`.
pub const KERNEL_DEADLOCK: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "kernelDeadlock",
    type_name: "KernelDeadlock",
    problem_reason: "TaskHung",
    healthy_reason: "KernelHasNoDeadlock",
    healthy_message: "kernel has no deadlock",
    detector: "hung_task",
    clearing: Clearing::HungTasks,
});

pub const TASK_HUNG: EventReason = EventReason::warning("TaskHung");
pub const TASK_HUNG_RECOVERED: EventReason = EventReason::normal("TaskHungRecovered");

/// KernelDeadlock's reasons for a hung node daemon (NPD's kernel-monitor says `DockerHung`
/// for `task docker:...`; the others follow its pattern).
pub const DOCKER_HUNG: &str = "DockerHung";
pub const CONTAINERD_HUNG: &str = "ContainerdHung";
pub const CRIO_HUNG: &str = "CrioHung";
pub const KUBELET_HUNG: &str = "KubeletHung";

/// The node daemon a hung task belongs to, by its name: (the condition's reason, the
/// component as the message names it). Only outside pods: a pod may name its process
/// anything. `comm` is cut at 15 bytes, so every `containerd-shim-*` reads `containerd-shim`.
pub fn hung_component(comm: &str, in_pod: bool) -> Option<(&'static str, &'static str)> {
    if in_pod {
        return None;
    }
    Some(match comm {
        "dockerd" | "docker" | "docker-containe" => (DOCKER_HUNG, "the docker daemon"),
        "containerd" => (CONTAINERD_HUNG, "the container runtime containerd"),
        shim if shim.starts_with("containerd-shim") => {
            (CONTAINERD_HUNG, "a containerd shim (containerd-shim)")
        }
        "crio" | "conmon" => (CRIO_HUNG, "the container runtime CRI-O"),
        "kubelet" => (KUBELET_HUNG, "the kubelet"),
        _ => return None,
    })
}

/// Frames named in the condition's message.
const STACK_FRAMES_SHOWN: usize = 3;

#[derive(Debug)]
pub struct HungTaskDetector;

pub static DETECTOR: HungTaskDetector = HungTaskDetector;

impl Detector for HungTaskDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        Some(npd_common::counters::Detector::HungTask)
    }

    fn name(&self) -> &'static str {
        "hung_task"
    }

    fn about(&self) -> &'static str {
        "tasks blocked in D state (khungtaskd's sched_process_hang) -> KernelDeadlock, TaskHung"
    }

    fn conditions(&self) -> &'static [ConditionType] {
        &[KERNEL_DEADLOCK]
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[TASK_HUNG, TASK_HUNG_RECOVERED]
    }

    fn condition_reasons(&self) -> &'static [&'static str] {
        &[DOCKER_HUNG, CONTAINERD_HUNG, CRIO_HUNG, KUBELET_HUNG]
    }

    /// tp_btf for the task pointer (its stack and cgroup from the kernel); the classic
    /// tracepoint otherwise.
    fn attach(&self, ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        let btf_result = attach_btf_tracepoint(ebpf, ctx, BTF_PROGRAM, "sched_process_hang");
        let btf_ok = btf_result.is_ok();
        status.tried(Source::BtfTracepoint, "sched_process_hang", btf_result);
        if !btf_ok {
            status.tried(
                Source::Tracepoint,
                "sched:sched_process_hang",
                attach_tracepoint(ebpf, ctx, TRACEPOINT_PROGRAM, "sched", "sched_process_hang"),
            );
            if status.active.is_some() {
                status
                    .notes
                    .push("stacks from /proc/PID/stack, cgroups from /proc/PID/cgroup".to_owned());
            }
        }
        let host = ctx.host;
        Attached {
            status,
            runtime: Box::new(HungTaskTracker::new(
                &host.proc_root,
                host.layout,
                &host.cgroup_root,
            )),
        }
    }
}

/// A task reported blocked in D state longer than `kernel.hung_task_timeout_secs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HungTask {
    /// The blocked task's kernel stack, innermost first, as `function+0xoff`.
    pub stack: Vec<String>,
    /// Where the stack came from: `kernel` (captured by the hook) or `procfs`
    /// (`/proc/PID/stack`, when the hook cannot reach the task).
    pub stack_source: &'static str,
    /// True on the first report of this hang; khungtaskd re-reports a task every check
    /// interval while it stays blocked, and those are repeats.
    pub first_seen: bool,
    /// Reports of this hang so far (1 on the first).
    pub repeat: u32,
    /// CLOCK_MONOTONIC ns of the first report of this hang.
    pub first_seen_ns: u64,
}

finding!(HungTask, "hung_task", {
    fn summary(&self) -> String {
        let top = self.stack.first().map(String::as_str).unwrap_or("?");
        if self.first_seen {
            format!("task blocked in D state (top frame {top})")
        } else {
            format!(
                "task still blocked, report {} (top frame {top})",
                self.repeat
            )
        }
    }

    /// KernelDeadlock True; a TaskHung Event on the first report of a hang only (repeats
    /// update the condition).
    fn assess(&self, event: &Event) -> Assessment {
        let top = self
            .stack
            .first()
            .map_or("?", |frame| frame_function(frame));
        let stack = if self.stack.is_empty() {
            String::new()
        } else {
            format!(
                "; stack: {}",
                self.stack[..self.stack.len().min(3)].join(", ")
            )
        };
        let in_pod = event.attribution.as_ref().is_some_and(|a| a.pod.is_some());
        let component = hung_component(&event.task.comm, in_pod);
        let of_component = component.map_or(String::new(), |(_, name)| format!(" ({name})"));
        let message = format!(
            "task {}{of_component} blocked in D state for more than the hung task \
             timeout{stack}",
            describe_task(&event.task, event.attribution.as_ref())
        );
        Assessment::report(Report {
            reason: TASK_HUNG,
            detail_key: format!("{}|{top}", event.task.comm),
            message,
            count: 1,
            since_boot: false,
        })
        .with_condition(
            KERNEL_DEADLOCK,
            Change::TaskHung {
                first_seen_ns: self.first_seen_ns,
                stack_top: self
                    .stack
                    .iter()
                    .take(STACK_FRAMES_SHOWN)
                    .cloned()
                    .collect(),
                first_report: self.first_seen,
            },
        )
        .with_condition_reason(component.map(|(reason, _)| reason))
    }
});

/// A task npd saw hung is no longer blocked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HungTaskRecovered {
    /// `running` (left D state) or `exited`.
    pub how: &'static str,
    /// From the first hang report to when npd noticed the recovery.
    pub hung_for_ms: u64,
    /// Hang reports received for it.
    pub reports: u32,
}

finding!(HungTaskRecovered, "hung_task_recovered", {
    fn summary(&self) -> String {
        format!(
            "no longer blocked ({}) after {:.1}s and {} reports",
            self.how,
            self.hung_for_ms as f64 / 1000.0,
            self.reports
        )
    }

    fn assess(&self, event: &Event) -> Assessment {
        let message = format!(
            "task {} {}",
            describe_task(&event.task, event.attribution.as_ref()),
            self.summary()
        );
        Assessment::report(Report {
            reason: TASK_HUNG_RECOVERED,
            detail_key: event.task.comm.clone(),
            message,
            count: 1,
            since_boot: false,
        })
        .with_condition(KERNEL_DEADLOCK, Change::TaskRecovered)
    }
});

/// A task npd has seen hung and not yet seen recover.
#[derive(Clone, Debug)]
struct Hung {
    task: Task,
    start_time: Option<u64>,
    first_seen_ns: u64,
    reports: u32,
}

/// Turns hang reports into events that tell a new hang from a continuing one, and notices
/// when a hung task is no longer blocked (left D state, or gone).
#[derive(Debug)]
pub struct HungTaskTracker {
    proc_root: PathBuf,
    layout: CgroupLayout,
    cgroup_root: PathBuf,
    /// By thread id.
    hung: HashMap<u32, Hung>,
}

impl HungTaskTracker {
    pub fn new(proc_root: &Path, layout: CgroupLayout, cgroup_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            layout,
            cgroup_root: cgroup_root.to_owned(),
            hung: HashMap::new(),
        }
    }

    /// Tasks currently hung.
    pub fn hung_count(&self) -> usize {
        self.hung.len()
    }

    fn on_record(
        &mut self,
        record: &npd_common::hung_task::HungTask,
        symbolizer: &mut Symbolizer,
    ) -> Event {
        let mut task = Task::from_header(&record.header);
        if task.pid == 0 {
            task.pid = procfs::tgid_of(&self.proc_root, task.tid).unwrap_or(task.tid);
        }
        if task.cgroup_id == 0 {
            task.cgroup_id =
                procfs::cgroup_id(&self.proc_root, task.tid, self.layout, &self.cgroup_root)
                    .unwrap_or(0);
        }
        let frames = (record.stack_len as usize).min(record.stack.len());
        let (stack, stack_source) = if frames > 0 {
            (symbolizer.symbolize(&record.stack[..frames]), "kernel")
        } else {
            (
                procfs::kernel_stack(&self.proc_root, task.tid).unwrap_or_default(),
                "procfs",
            )
        };
        let start_time = procfs::task_state(&self.proc_root, task.tid).map(|s| s.start_time);
        let ts = record.header.ts_ns;
        let entry = self
            .hung
            .entry(task.tid)
            // A reused thread id is a different task: start over.
            .and_modify(|hung| {
                if hung.start_time.is_some()
                    && start_time.is_some()
                    && hung.start_time != start_time
                {
                    *hung = Hung {
                        task: task.clone(),
                        start_time,
                        first_seen_ns: ts,
                        reports: 0,
                    };
                }
            })
            .or_insert_with(|| Hung {
                task: task.clone(),
                start_time,
                first_seen_ns: ts,
                reports: 0,
            });
        entry.reports += 1;
        let detail = HungTask {
            stack,
            stack_source,
            first_seen: entry.reports == 1,
            repeat: entry.reports,
            first_seen_ns: entry.first_seen_ns,
        };
        let source = Source::from_hook(
            npd_common::Hook::from_u8(record.header.hook).unwrap_or(npd_common::Hook::Tracepoint),
        );
        Event::new(ts, task, source, detail)
    }

    /// Recoveries: hung tasks that left D state or exited since they were reported.
    fn check_recoveries(&mut self, now_ns: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let proc_root = self.proc_root.clone();
        self.hung.retain(|&tid, hung| {
            let how = match procfs::task_state(&proc_root, tid) {
                None => "exited",
                Some(state) if hung.start_time.is_some_and(|t| t != state.start_time) => "exited",
                Some(state) if state.state == 'D' => return true,
                Some(_) => "running",
            };
            events.push(Event::new(
                now_ns,
                hung.task.clone(),
                Source::Sweep,
                HungTaskRecovered {
                    how,
                    hung_for_ms: now_ns.saturating_sub(hung.first_seen_ns) / 1_000_000,
                    reports: hung.reports,
                },
            ));
            false
        });
        events
    }
}

impl Runtime for HungTaskTracker {
    fn decode(
        &mut self,
        kind: RecordKind,
        data: &[u8],
        symbolizer: &mut Symbolizer,
    ) -> Result<Event, DecodeError> {
        let record = payload(kind, npd_common::hung_task::HUNG_TASK_VERSION, data)?;
        Ok(self.on_record(&record, symbolizer))
    }

    fn poll(&mut self, now_ns: u64) -> Vec<Event> {
        self.check_recoveries(now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_stat(root: &Path, tid: u32, state: char, start: u64) {
        let dir = root.join(tid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            format!("{tid} (dd) {state} 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"),
        )
        .unwrap();
        std::fs::write(dir.join("status"), format!("Tgid:\t{tid}\n")).unwrap();
    }

    fn record(tid: u32, ts: u64) -> npd_common::hung_task::HungTask {
        // SAFETY: HungTask is Pod; all-zero is valid.
        let mut record: npd_common::hung_task::HungTask = unsafe { std::mem::zeroed() };
        record.header.tid = tid;
        record.header.pid = tid;
        record.header.ts_ns = ts;
        record.header.cgroup_id = 9;
        record.header.hook = npd_common::Hook::BtfTracepoint as u8;
        record.stack_len = 1;
        record.stack[0] = 0x10;
        record
    }

    #[test]
    fn names_the_node_daemon_a_hung_task_belongs_to() {
        let cases = [
            ("docker", false, Some(DOCKER_HUNG)),
            ("dockerd", false, Some(DOCKER_HUNG)),
            ("containerd", false, Some(CONTAINERD_HUNG)),
            ("containerd-shim", false, Some(CONTAINERD_HUNG)),
            ("crio", false, Some(CRIO_HUNG)),
            ("kubelet", false, Some(KUBELET_HUNG)),
            ("kubelet", true, None),
            ("containerd2", false, None),
            ("dd", false, None),
        ];
        for (comm, in_pod, reason) in cases {
            assert_eq!(
                hung_component(comm, in_pod).map(|(r, _)| r),
                reason,
                "{comm} in pod {in_pod}"
            );
        }
    }

    #[test]
    fn a_hung_runtime_sets_kernel_deadlock_with_its_reason() {
        let hang = |comm: &str| {
            let detail = HungTask {
                stack: vec!["percpu_rwsem_wait+0x10".to_owned()],
                stack_source: "kernel",
                first_seen: true,
                repeat: 1,
                first_seen_ns: 1,
            };
            let task = Task {
                pid: 7,
                tid: 7,
                comm: comm.to_owned(),
                cgroup_id: 0,
            };
            Event::new(1, task, Source::BtfTracepoint, detail).assess()
        };
        let runtime = hang("containerd");
        assert_eq!(runtime.condition_reason, Some(CONTAINERD_HUNG));
        let message = &runtime.report.unwrap().message;
        assert!(
            message.contains("(the container runtime containerd)"),
            "{message}"
        );
        let other = hang("dd");
        assert_eq!(other.condition_reason, None);
        assert_eq!(other.report.unwrap().reason, TASK_HUNG);
    }

    #[test]
    fn tells_new_hangs_from_repeats_and_notices_recovery() {
        let root = std::env::temp_dir().join(format!("npd-hung-{}", std::process::id()));
        let mut tracker = HungTaskTracker::new(&root, CgroupLayout::Unified, &root);
        let mut symbolizer = Symbolizer::new(&root.join("no-kallsyms"));
        write_stat(&root, 10, 'D', 500);
        write_stat(&root, 11, 'D', 600);

        let hang = |event: Event| event.detail_as::<HungTask>().unwrap().clone();
        let first = hang(tracker.on_record(&record(10, 1_000), &mut symbolizer));
        assert!(first.first_seen);
        assert_eq!((first.repeat, first.first_seen_ns), (1, 1_000));
        assert_eq!(first.stack, vec!["0x10"]);
        let again = hang(tracker.on_record(&record(10, 3_000), &mut symbolizer));
        assert!(!again.first_seen);
        assert_eq!((again.repeat, again.first_seen_ns), (2, 1_000));
        tracker.on_record(&record(11, 3_000), &mut symbolizer);
        assert_eq!(tracker.hung_count(), 2);

        // Still in D: nothing. Then 10 runs again and 11 exits.
        assert!(tracker.check_recoveries(4_000_000_000).is_empty());
        write_stat(&root, 10, 'S', 500);
        std::fs::remove_dir_all(root.join("11")).unwrap();
        let mut recovered: Vec<(u32, &str, u32)> = tracker
            .check_recoveries(5_000_001_000)
            .into_iter()
            .map(|e| {
                let r = e.detail_as::<HungTaskRecovered>().unwrap();
                (e.task.tid, r.how, r.reports)
            })
            .collect();
        recovered.sort_unstable();
        assert_eq!(recovered, vec![(10, "running", 2), (11, "exited", 1)]);
        assert_eq!(tracker.hung_count(), 0);

        // A new task under a reused id is a new hang.
        write_stat(&root, 10, 'D', 900);
        let reused = hang(tracker.on_record(&record(10, 9_000), &mut symbolizer));
        assert!(reused.first_seen);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
