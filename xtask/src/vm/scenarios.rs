//! What `cargo xtask vm-test` expects: the kernels it boots (and the hook each detector must
//! attach there) and the problems tests/vm/init.sh provokes, each with the event that proves
//! the agent saw it.

/// A kernel to boot: the newest package apt knows whose name matches `image`.
#[derive(Debug)]
pub(crate) struct Kernel {
    /// What `--kernel` selects.
    pub(crate) name: &'static str,
    /// A package name where `*` stands for a version (digits and dots).
    pub(crate) image: &'static str,
    /// Detectors that must see their problems on this kernel (when the agent offers them),
    /// each with the hook `check` must report active for it.
    pub(crate) expect: &'static [(&'static str, &'static str)],
}

/// Adding a kernel is one line. bookworm-backports (6.12) is not in this machine's apt
/// sources and the test adds no repositories; where it is configured, add
/// `Kernel { name: "6.12-bpo", image: "linux-image-*+bpo-amd64", expect: PREFERRED }`.
pub(crate) const KERNELS: &[Kernel] = &[Kernel {
    name: "6.1",
    image: "linux-image-6.1.0-*-amd64",
    expect: PREFERRED,
}];

/// Every detector on its preferred hook: what a kernel with BTF, tp_btf and fentry/fexit gives.
/// (Debian's 6.1 passes the victim task to `mark_victim`, as mainline does from 6.5.)
const PREFERRED: &[(&str, &str)] = &[
    ("fd", "fexit"),
    ("hung_task", "tp_btf"),
    ("oom", "tp_btf"),
    ("oops", "fentry"),
    ("hardware", "tracepoint"),
];

/// Where a problem's event must come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// The detector's hook (the `source` the kernel's `expect` names), naming the provoking
    /// task: its comm and the step's pid.
    Hook,
    /// The kernel's counters or taint mask (`source` `counters`, no task).
    Counters,
    /// The detector's hook, in no task's context (a machine check): no pid, no comm.
    NoTask,
}

/// What an event must also carry to count (besides kind, task and source).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Check {
    /// Events from fentry: `caller` is this function (`name+0x..`).
    Caller(&'static str),
    /// `cgroup_id` is the step's `cgroup=` (the inode of the cgroup directory in the VM).
    StepCgroup,
    /// A string field has this value.
    Field(&'static str, &'static str),
    /// The first report of the task (`first_seen: true`).
    FirstSeen,
    /// A frame of `stack` is in this function.
    StackHas(&'static str),
    /// `counter` is this counter, or `tainted` with this taint letter in `taint_flags`
    /// (kernels without the counter file).
    CounterOrTaint(&'static str, char),
}

/// One problem tests/vm/init.sh provokes.
#[derive(Debug)]
pub(crate) struct Scenario {
    /// The step's name in init.sh's `npd-vm: step NAME exit=N pid=P ...` lines.
    pub(crate) step: &'static str,
    pub(crate) problem: &'static str,
    /// The agent detector (`--detectors` name) that should report it.
    pub(crate) detector: &'static str,
    /// The event kind that reports it.
    pub(crate) kind: &'static str,
    /// The provoking task's name.
    pub(crate) comm: &'static str,
    pub(crate) via: Via,
    pub(crate) checks: &'static [Check],
    /// An event kind that must follow for the same task (the recovery of a hung task).
    pub(crate) then: Option<&'static str>,
    /// The provoking process's exit status when the problem really happened.
    pub(crate) exit: i32,
}

/// A page of the helper's own memory, poisoned: the kernel unmaps it and recovers (the helper
/// then dies reading it, SIGBUS).
const POISONED_ANONYMOUS_PAGE: &[Check] = &[
    Check::Field("result", "Recovered"),
    Check::Field("page_type", "dirty LRU page"),
];

pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        step: "fd",
        problem: "fd exhaustion (EMFILE)",
        detector: "fd",
        kind: "fd_exhausted",
        comm: "npd-fd",
        via: Via::Hook,
        // glibc's open() is the openat syscall; with fexit the syscall comes from pt_regs.
        checks: &[
            Check::Field("errno", "EMFILE"),
            Check::Field("syscall", "openat"),
        ],
        then: None,
        exit: 0,
    },
    Scenario {
        step: "oom",
        problem: "OOM kill (cgroup v2 memory.max)",
        detector: "oom",
        kind: "oom_kill",
        comm: "npd-oom",
        via: Via::Hook,
        checks: &[Check::StepCgroup, Check::Field("scope", "memcg")],
        then: None,
        exit: 128 + 9,
    },
    Scenario {
        step: "hang_module",
        problem: "hung task (module, D state)",
        detector: "hung_task",
        kind: "hung_task",
        comm: "npd-hang",
        via: Via::Hook,
        checks: &[Check::FirstSeen, Check::StackHas("npd_test_hang_write")],
        then: Some("hung_task_recovered"),
        exit: 0,
    },
    Scenario {
        step: "hang_fsfreeze",
        problem: "hung task (fsfreeze, ext4)",
        detector: "hung_task",
        kind: "hung_task",
        comm: "npd-frozen",
        via: Via::Hook,
        checks: &[Check::FirstSeen],
        then: Some("hung_task_recovered"),
        exit: 0,
    },
    Scenario {
        step: "warn",
        problem: "WARN()",
        detector: "oops",
        kind: "kernel_warning",
        comm: "npd-warn",
        via: Via::Hook,
        checks: &[Check::Caller("npd_test_warn_write")],
        then: None,
        exit: 0,
    },
    Scenario {
        step: "softlockup",
        problem: "soft lockup",
        detector: "oops",
        kind: "kernel_warning",
        comm: "npd-softlockup",
        via: Via::Counters,
        checks: &[Check::CounterOrTaint("softlockup_count", 'L')],
        then: None,
        exit: 0,
    },
    Scenario {
        step: "poison",
        problem: "poisoned page (madvise MADV_HWPOISON)",
        detector: "hardware",
        kind: "memory_failure",
        comm: "npd-poison",
        via: Via::Hook,
        checks: POISONED_ANONYMOUS_PAGE,
        then: None,
        exit: 128 + 7,
    },
    Scenario {
        step: "hwpoison",
        problem: "poisoned page (hwpoison-inject corrupt-pfn)",
        detector: "hardware",
        kind: "memory_failure",
        comm: "npd-hwpoison",
        via: Via::Hook,
        checks: POISONED_ANONYMOUS_PAGE,
        then: None,
        exit: 128 + 7,
    },
    Scenario {
        step: "mce_corrected",
        problem: "corrected machine check (mce-inject, sw)",
        detector: "hardware",
        kind: "machine_check",
        comm: "",
        via: Via::NoTask,
        checks: &[
            Check::Field("severity", "corrected"),
            Check::Field("bank", "1"),
        ],
        then: None,
        exit: 0,
    },
    Scenario {
        step: "mce_fatal",
        problem: "uncorrected machine check, PCC (mce-inject, sw)",
        detector: "hardware",
        kind: "machine_check",
        comm: "",
        via: Via::NoTask,
        checks: &[Check::Field("severity", "fatal"), Check::Field("bank", "2")],
        then: None,
        exit: 0,
    },
    Scenario {
        step: "oops",
        problem: "oops (BUG())",
        detector: "oops",
        kind: "kernel_oops",
        comm: "npd-bug",
        via: Via::Hook,
        checks: &[Check::Caller("npd_test_bug_write")],
        then: None,
        exit: 128 + 11,
    },
];

/// The spelling used in these tables and in the agent's reports (`hung-task` -> `hung_task`).
pub(crate) fn normalize(detector: &str) -> String {
    detector.replace('-', "_")
}
