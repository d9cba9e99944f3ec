//! Kernel oops (BUG, fatal fault) and WARN: fentry hooks where the kernel allows them,
//! otherwise the kernel's own counters (`/sys/kernel/{oops,warn,softlockup}_count`, taint).
//! An oops sets KernelOops until reboot; both are Events.

use std::path::{Path, PathBuf};

use aya::Ebpf;
use npd_common::RecordKind;
use serde::Serialize;

use super::{
    AttachContext, Attached, Detector, DetectorStatus, Runtime, Trampoline, attach_trampoline,
};
use crate::{
    decode::{DecodeError, payload},
    engine::{describe_task, frame_function},
    event::{Event, Source, Task},
    finding,
    kernel::kallsyms::{Symbolizer, without_tracing_frames},
    problem::{Assessment, Change, Clearing, ConditionSpec, ConditionType, EventReason, Report},
};

/// NPD's KernelOops: True from the first oops until the node reboots.
pub const KERNEL_OOPS_CONDITION: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "kernelOops",
    type_name: "KernelOops",
    problem_reason: "KernelOops",
    healthy_reason: "NoKernelOops",
    healthy_message: "no kernel oops this boot",
    detector: "oops",
    clearing: Clearing::Reboot {
        after_reboot: "no kernel oops since the node rebooted",
        problems: "kernel oopses",
    },
});

pub const KERNEL_OOPS: EventReason = EventReason::warning("KernelOops");
pub const KERNEL_WARNING: EventReason = EventReason::warning("KernelWarning");

#[derive(Debug)]
pub struct OopsDetector;

pub static DETECTOR: OopsDetector = OopsDetector;

impl Detector for OopsDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        Some(npd_common::counters::Detector::Oops)
    }

    fn name(&self) -> &'static str {
        "oops"
    }

    fn about(&self) -> &'static str {
        "kernel oops, WARN, soft/hard lockups, RCU stalls -> KernelOops, KernelWarning"
    }

    fn conditions(&self) -> &'static [ConditionType] {
        &[KERNEL_OOPS_CONDITION]
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[KERNEL_OOPS, KERNEL_WARNING]
    }

    fn attach(&self, ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let (status, coverage) = attach(ebpf, ctx);
        Attached {
            status,
            runtime: Box::new(OopsRuntime {
                counters: CounterWatcher::new(Path::new("/"), coverage),
            }),
        }
    }
}

/// fentry records, and the counters for what fentry does not cover.
#[derive(Debug)]
struct OopsRuntime {
    counters: CounterWatcher,
}

impl Runtime for OopsRuntime {
    fn decode(
        &mut self,
        kind: RecordKind,
        data: &[u8],
        symbolizer: &mut Symbolizer,
    ) -> Result<Event, DecodeError> {
        let record = payload(kind, npd_common::oops::KERNEL_PROBLEM_VERSION, data)?;
        Ok(on_record(
            kind == RecordKind::KernelOops,
            &record,
            symbolizer,
        ))
    }

    fn poll(&mut self, now_ns: u64) -> Vec<Event> {
        self.counters.poll(now_ns)
    }
}

/// A kernel oops (BUG, fatal fault).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct KernelOops(pub KernelProblem);

/// A WARN, a soft or hard lockup, an RCU stall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct KernelWarning(pub KernelProblem);

finding!(KernelOops, "kernel_oops", {
    fn summary(&self) -> String {
        format!("kernel oops {}", self.0.summary())
    }

    /// KernelOops True until reboot, and an Event.
    fn assess(&self, event: &Event) -> Assessment {
        let description = describe_problem("kernel oops", event, &self.0);
        report(KERNEL_OOPS, "kernel oops", event, &self.0).with_condition(
            KERNEL_OOPS_CONDITION,
            Change::Oops {
                occurrences: self.0.occurrences,
                description,
                // An oops always taints the kernel, even when the mask could not be read.
                taint_flags: Some(self.0.taint_flags.clone().unwrap_or_default()),
            },
        )
    }
});

finding!(KernelWarning, "kernel_warning", {
    fn summary(&self) -> String {
        format!("kernel warning {}", self.0.summary())
    }

    fn assess(&self, event: &Event) -> Assessment {
        report(KERNEL_WARNING, "kernel warning", event, &self.0)
    }
});

/// The Event of an oops or warning, keyed by where it happened.
fn report(reason: EventReason, what: &str, event: &Event, problem: &KernelProblem) -> Assessment {
    let taint = problem
        .taint_flags
        .as_deref()
        .filter(|flags| !flags.is_empty())
        .map(|flags| format!("; kernel tainted {flags}"))
        .unwrap_or_default();
    let site = problem
        .caller
        .as_deref()
        .map(frame_function)
        .or(problem.counter)
        .unwrap_or("?");
    Assessment::report(Report {
        reason,
        detail_key: site.to_owned(),
        message: format!("{}{taint}", describe_problem(what, event, problem)),
        count: problem.occurrences,
        since_boot: problem.since_boot,
    })
}

/// `kernel oops at page_fault_oops+0x1/0x2 in task ...`: what the kernel reported, where.
fn describe_problem(what: &str, event: &Event, problem: &KernelProblem) -> String {
    let at = problem
        .caller
        .as_deref()
        .map(|caller| format!(" at {caller}"))
        .unwrap_or_default();
    let task = describe_task(&event.task, event.attribution.as_ref());
    let task = if task.is_empty() {
        String::new()
    } else {
        format!(" in task {task}")
    };
    let counted = match (problem.counter, problem.count) {
        (Some(counter), Some(count)) => format!(" ({counter} now {count})"),
        _ => String::new(),
    };
    let boot = if problem.since_boot {
        " before npd started"
    } else {
        ""
    };
    let times = if problem.occurrences > 1 {
        format!(", {} times", problem.occurrences)
    } else {
        String::new()
    };
    format!("{what}{at}{task}{times}{counted}{boot}")
}

/// An oops or warning (the event kind says which).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelProblem {
    /// Where it happened, symbolized (`__warn`'s caller; the faulting frame of an oops).
    pub caller: Option<String>,
    /// The taint mask after it, and its letters as the kernel prints them (e.g. `DW`).
    pub taint: Option<u64>,
    pub taint_flags: Option<String>,
    pub stack: Vec<String>,
    /// For the counters source: which counter moved (`oops_count`, `warn_count`,
    /// `softlockup_count`, `tainted`) and its new value.
    pub counter: Option<&'static str>,
    pub count: Option<u64>,
    /// How many problems this event stands for (a counter can move by more than one).
    pub occurrences: u64,
    /// Counted before npd started (reported once at start, like NPD's log lookback).
    pub since_boot: bool,
}

impl KernelProblem {
    pub fn summary(&self) -> String {
        let at = self
            .caller
            .as_deref()
            .map(|c| format!(" at {c}"))
            .unwrap_or_default();
        let taint = self
            .taint_flags
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(|f| format!(", kernel tainted {f}"))
            .unwrap_or_default();
        let counted = match (self.counter, self.count) {
            (Some(counter), Some(count)) => format!(" ({counter} now {count})"),
            _ => String::new(),
        };
        let boot = if self.since_boot { " since boot" } else { "" };
        format!("{}x{boot}{at}{counted}{taint}", self.occurrences)
    }
}

/// The kernel's taint letters (`print_tainted`), bit by bit.
pub const TAINT_FLAGS: [(u32, char); 20] = [
    (0, 'P'),
    (1, 'F'),
    (2, 'S'),
    (3, 'R'),
    (4, 'M'),
    (5, 'B'),
    (6, 'U'),
    (7, 'D'),
    (8, 'A'),
    (9, 'W'),
    (10, 'C'),
    (11, 'I'),
    (12, 'O'),
    (13, 'E'),
    (14, 'L'),
    (15, 'K'),
    (16, 'X'),
    (17, 'T'),
    (18, 'N'),
    (19, 'J'),
];

/// Taint bit for "a kernel oops occurred" (TAINT_DIE).
pub const TAINT_DIE: u64 = 1 << 7;
/// Taint bit for "a WARN() fired" (TAINT_WARN).
pub const TAINT_WARN: u64 = 1 << 9;

/// Taint letters as the kernel prints them, in bit order, e.g. `DW`.
pub fn taint_letters(mask: u64) -> String {
    TAINT_FLAGS
        .iter()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, letter)| *letter)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_letters_follow_the_kernel() {
        assert_eq!(taint_letters(0), "");
        assert_eq!(taint_letters(TAINT_DIE | TAINT_WARN), "DW");
        assert_eq!(taint_letters(1 | (1 << 12) | (1 << 13)), "POE");
    }
}

pub use npd_common::oops::{
    OOPS_FENTRY_PROGRAM as OOPS_PROGRAM, WARN_FENTRY_PROGRAM as WARN_PROGRAM,
};

/// Which problems the fentry hooks cover; the counter watcher covers the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FentryCoverage {
    pub oops: bool,
    pub warn: bool,
}

/// fentry on `oops_enter` and `__warn`; where the kernel refuses fentry, the kernel's own
/// counters (`/sys/kernel/*_count`, the taint mask) are watched instead.
fn attach(ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> (DetectorStatus, FentryCoverage) {
    let mut status = DetectorStatus::new("oops");
    let oops = attach_trampoline(ebpf, ctx, Trampoline::Fentry, OOPS_PROGRAM, "oops_enter");
    let warn = attach_trampoline(ebpf, ctx, Trampoline::Fentry, WARN_PROGRAM, "__warn");
    let coverage = FentryCoverage {
        oops: oops.is_ok(),
        warn: warn.is_ok(),
    };
    status.tried(Source::Fentry, "oops_enter", oops);
    status.tried(Source::Fentry, "__warn", warn);
    let counters = CounterWatcher::counters_present(Path::new("/"));
    let uncovered = match (coverage.oops, coverage.warn) {
        (true, true) => None,
        (true, false) => Some("warnings"),
        (false, true) => Some("oopses"),
        (false, false) => Some("oopses and warnings"),
    };
    let target = if counters.is_empty() {
        "the taint mask (/proc/sys/kernel/tainted)".to_owned()
    } else {
        format!("/sys/kernel/{{{}}} and the taint mask", counters.join(","))
    };
    match uncovered {
        // Soft lockups and the like have no fentry hook: the counters always watch them.
        None => status
            .notes
            .push(format!("soft/hard lockups and RCU stalls from {target}")),
        Some(what) => {
            status.tried(Source::Counters, target, Ok(()));
            status
                .notes
                .push(format!("{what} from the kernel's counters"));
        }
    }
    // `active` is the first hook that worked: fentry if either attached.
    (status, coverage)
}

/// Where an oops happened: the first frame after the exception entry (`asm_exc_*`), or the
/// first frame at all.
pub fn oops_site(stack: &[String]) -> Option<String> {
    let entry = stack
        .iter()
        .rposition(|frame| frame.starts_with("asm_exc_") || frame.starts_with("asm_sysvec_"));
    match entry {
        Some(i) => stack.get(i + 1).cloned(),
        None => stack.first().cloned(),
    }
}

/// Turns an fentry record into an event.
fn on_record(
    kind_oops: bool,
    record: &npd_common::oops::KernelProblem,
    symbolizer: &mut Symbolizer,
) -> Event {
    let frames = (record.stack_len as usize).min(record.stack.len());
    let stack = without_tracing_frames(symbolizer.symbolize(&record.stack[..frames]));
    let caller = if record.caller != 0 {
        symbolizer.symbolize(&[record.caller]).pop()
    } else {
        oops_site(&stack)
    };
    let taint = (record.taint != u64::MAX).then_some(record.taint);
    let problem = KernelProblem {
        caller,
        taint,
        taint_flags: taint.map(taint_letters),
        stack,
        counter: None,
        count: None,
        occurrences: 1,
        since_boot: false,
    };
    let (ts, task) = (record.header.ts_ns, Task::from_header(&record.header));
    if kind_oops {
        Event::new(ts, task, Source::Fentry, KernelOops(problem))
    } else {
        Event::new(ts, task, Source::Fentry, KernelWarning(problem))
    }
}

/// One of the kernel's problem counters.
#[derive(Clone, Copy, Debug)]
struct Counter {
    name: &'static str,
    /// Under `sys/kernel/`.
    file: &'static str,
    oops: bool,
    /// The taint bit the kernel sets for it, for kernels without the counter.
    taint_bit: u32,
}

const COUNTERS: [Counter; 5] = [
    Counter {
        name: "oops_count",
        file: "oops_count",
        oops: true,
        taint_bit: 7,
    },
    Counter {
        name: "warn_count",
        file: "warn_count",
        oops: false,
        taint_bit: 9,
    },
    Counter {
        name: "softlockup_count",
        file: "softlockup_count",
        oops: false,
        taint_bit: 14,
    },
    Counter {
        name: "hardlockup_count",
        file: "hardlockup_count",
        oops: false,
        taint_bit: 64,
    },
    Counter {
        name: "rcu_stall_count",
        file: "rcu_stall_count",
        oops: false,
        taint_bit: 64,
    },
];

/// Watches `/sys/kernel/{oops,warn,softlockup,hardlockup,rcu_stall}_count` (6.2+) and the
/// taint mask, and reports what moved. At start it reports once what was already counted
/// since boot, like NPD's log lookback but without reading the log.
#[derive(Debug)]
pub struct CounterWatcher {
    root: PathBuf,
    coverage: FentryCoverage,
    last: Vec<Option<u64>>,
    last_taint: Option<u64>,
    started: bool,
}

impl CounterWatcher {
    /// `root` is `/` on a node (a temp dir in tests); `coverage` says which increments the
    /// fentry hooks already report.
    pub fn new(root: &Path, coverage: FentryCoverage) -> Self {
        Self {
            root: root.to_owned(),
            coverage,
            last: vec![None; COUNTERS.len()],
            last_taint: None,
            started: false,
        }
    }

    /// Names of the counters this kernel has.
    pub fn counters_present(root: &Path) -> Vec<&'static str> {
        COUNTERS
            .iter()
            .filter(|c| root.join("sys/kernel").join(c.file).is_file())
            .map(|c| c.name)
            .collect()
    }

    fn read(&self, relative: &str) -> Option<u64> {
        std::fs::read_to_string(self.root.join(relative))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn covered(&self, counter: &Counter) -> bool {
        if counter.oops {
            self.coverage.oops
        } else {
            counter.name == "warn_count" && self.coverage.warn
        }
    }

    /// Reads every counter and returns events for what moved (or, the first time, for what
    /// was already counted since boot).
    pub fn poll(&mut self, now_ns: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let taint = self.read("proc/sys/kernel/tainted");
        let lookback = !self.started;
        self.started = true;
        for (i, counter) in COUNTERS.iter().enumerate() {
            let value = self.read(&format!("sys/kernel/{}", counter.file));
            let previous = self.last[i];
            self.last[i] = value;
            let (occurrences, counter_name, count) = match (value, previous) {
                (Some(now), _) if lookback => (now, counter.name, Some(now)),
                (Some(now), Some(before)) if now > before => {
                    (now - before, counter.name, Some(now))
                }
                // No counter on this kernel: the taint bit, which only says "at least once".
                (None, _) if counter.taint_bit < 64 => {
                    let bit = 1u64 << counter.taint_bit;
                    let set_now = taint.is_some_and(|t| t & bit != 0);
                    let set_before = self.last_taint.is_some_and(|t| t & bit != 0);
                    if set_now && (lookback || !set_before) {
                        (1, "tainted", taint)
                    } else {
                        (0, "tainted", taint)
                    }
                }
                _ => (0, counter.name, value),
            };
            if occurrences == 0 || (!lookback && self.covered(counter)) {
                continue;
            }
            let problem = KernelProblem {
                caller: None,
                taint,
                taint_flags: taint.map(taint_letters),
                stack: Vec::new(),
                counter: Some(counter_name),
                count,
                occurrences,
                since_boot: lookback,
            };
            events.push(if counter.oops {
                Event::new(
                    now_ns,
                    Task::default(),
                    Source::Counters,
                    KernelOops(problem),
                )
            } else {
                Event::new(
                    now_ns,
                    Task::default(),
                    Source::Counters,
                    KernelWarning(problem),
                )
            });
        }
        self.last_taint = taint;
        events
    }
}

#[cfg(test)]
mod counter_tests {
    use super::*;

    struct FakeKernel(PathBuf);

    impl FakeKernel {
        fn new(name: &str, counters: bool) -> Self {
            let root = std::env::temp_dir().join(format!("npd-oops-{name}-{}", std::process::id()));
            std::fs::create_dir_all(root.join("sys/kernel")).unwrap();
            std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
            let kernel = Self(root);
            if counters {
                for c in ["oops_count", "warn_count", "softlockup_count"] {
                    kernel.set(&format!("sys/kernel/{c}"), 0);
                }
            }
            kernel.set("proc/sys/kernel/tainted", 0);
            kernel
        }

        fn set(&self, file: &str, value: u64) {
            std::fs::write(self.0.join(file), format!("{value}\n")).unwrap();
        }
    }

    impl Drop for FakeKernel {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn summary(events: &[Event]) -> Vec<(&'static str, Option<&'static str>, u64, bool)> {
        events
            .iter()
            .map(|e| {
                let p = e
                    .detail_as::<KernelOops>()
                    .map(|o| &o.0)
                    .or_else(|| e.detail_as::<KernelWarning>().map(|w| &w.0))
                    .unwrap_or_else(|| panic!("{e:?}"));
                (e.kind, p.counter, p.occurrences, p.since_boot)
            })
            .collect()
    }

    #[test]
    fn reports_what_was_counted_before_start_once_then_increments() {
        let kernel = FakeKernel::new("counters", true);
        kernel.set("sys/kernel/warn_count", 3);
        kernel.set("proc/sys/kernel/tainted", TAINT_WARN);
        let mut watcher = CounterWatcher::new(&kernel.0, FentryCoverage::default());
        assert_eq!(
            summary(&watcher.poll(1)),
            vec![("kernel_warning", Some("warn_count"), 3, true)]
        );
        assert!(watcher.poll(2).is_empty(), "nothing moved");
        kernel.set("sys/kernel/oops_count", 1);
        kernel.set("sys/kernel/warn_count", 5);
        kernel.set("sys/kernel/softlockup_count", 1);
        kernel.set("proc/sys/kernel/tainted", TAINT_WARN | TAINT_DIE);
        let events = watcher.poll(3);
        assert_eq!(
            summary(&events),
            vec![
                ("kernel_oops", Some("oops_count"), 1, false),
                ("kernel_warning", Some("warn_count"), 2, false),
                ("kernel_warning", Some("softlockup_count"), 1, false),
            ]
        );
        assert!(events.iter().all(|e| e.source == Source::Counters));
        let oops = events[0].detail_as::<KernelOops>().expect("an oops");
        assert_eq!(oops.0.taint_flags.as_deref(), Some("DW"));
    }

    #[test]
    fn fentry_coverage_leaves_only_the_uncovered_counters() {
        let kernel = FakeKernel::new("coverage", true);
        let mut watcher = CounterWatcher::new(
            &kernel.0,
            FentryCoverage {
                oops: true,
                warn: true,
            },
        );
        assert!(watcher.poll(1).is_empty());
        kernel.set("sys/kernel/oops_count", 1);
        kernel.set("sys/kernel/warn_count", 1);
        kernel.set("sys/kernel/softlockup_count", 2);
        assert_eq!(
            summary(&watcher.poll(2)),
            vec![("kernel_warning", Some("softlockup_count"), 2, false)]
        );
    }

    #[test]
    fn without_counters_the_taint_mask_still_tells() {
        // 6.1 and older: no *_count files.
        let kernel = FakeKernel::new("taint", false);
        let mut watcher = CounterWatcher::new(&kernel.0, FentryCoverage::default());
        assert!(watcher.poll(1).is_empty());
        kernel.set("proc/sys/kernel/tainted", TAINT_DIE);
        assert_eq!(
            summary(&watcher.poll(2)),
            vec![("kernel_oops", Some("tainted"), 1, false)]
        );
        // The bit stays set: no new event.
        assert!(watcher.poll(3).is_empty());
        kernel.set("proc/sys/kernel/tainted", TAINT_DIE | TAINT_WARN);
        assert_eq!(
            summary(&watcher.poll(4)),
            vec![("kernel_warning", Some("tainted"), 1, false)]
        );
    }

    #[test]
    fn oops_site_is_the_frame_that_faulted() {
        let stack: Vec<String> = [
            "oops_begin+0x5",
            "die+0x30",
            "do_trap+0xcd",
            "handle_invalid_op+0x2c",
            "exc_invalid_op+0x46",
            "asm_exc_invalid_op+0x1a",
            "npd_test_bug_write+0x10",
            "full_proxy_write+0x5c",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(
            oops_site(&stack).as_deref(),
            Some("npd_test_bug_write+0x10")
        );
        assert_eq!(oops_site(&stack[..2]).as_deref(), Some("oops_begin+0x5"));
    }
}
