//! The engine's behaviour as tables: timelines of inputs, with the Events each step must emit
//! and the conditions it must leave.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{subject::fixtures::*, *};
use crate::{
    detectors::{
        self,
        fd::{Errno, FD_EXHAUSTED, FD_PRESSURE, FdExhausted},
        hung_task::{HungTask, HungTaskRecovered, KERNEL_DEADLOCK, TASK_HUNG, TASK_HUNG_RECOVERED},
        oom::{OOM_KILLING, OomKill, OomScope},
        oops::{
            KERNEL_OOPS, KERNEL_OOPS_CONDITION, KERNEL_WARNING, KernelOops, KernelProblem,
            KernelWarning,
        },
    },
    event::{Attribution, Event, Finding, Source, Task},
};

use ConditionStatus::{False, True};

const NS: u64 = 1_000_000_000;
/// CLOCK_MONOTONIC at t = 0 of every timeline.
const BOOT_NS: u64 = 1_000 * NS;

/// Wall time of t seconds into a timeline (t = 0 is 2027-01-15T08:00:00Z).
fn wall(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn mono(secs: u64) -> u64 {
    BOOT_NS + secs * NS
}

fn at(secs: u64) -> Timestamp {
    Timestamp::new(mono(secs), wall(secs))
}

fn config() -> EngineConfig {
    EngineConfig::default()
}

fn engine_with(config: EngineConfig) -> Engine {
    Engine::new(config, detectors::catalog(), at(0)).expect("valid config")
}

fn task(pid: u32, comm: &str) -> Task {
    Task {
        pid,
        tid: pid,
        comm: comm.to_owned(),
        cgroup_id: 7,
    }
}

fn event(secs: u64, task: Task, attribution: Option<Attribution>, detail: impl Finding) -> Event {
    let mut event = Event::new(mono(secs), task, Source::BtfTracepoint, detail);
    event.attribution = attribution;
    event
}

const STACK: [&str; 4] = [
    "percpu_rwsem_wait+0x11d/0x150",
    "__sb_start_write+0x56/0x70",
    "ext4_buffered_write_iter+0x3a/0x160",
    "vfs_write+0x2b5/0x470",
];

/// A khungtaskd report about `pid`, blocked since `since` (first report when `since == secs`).
fn hung(secs: u64, pid: u32, since: u64, attribution: Option<Attribution>) -> Event {
    event(
        secs,
        task(pid, "mysqld"),
        attribution,
        HungTask {
            stack: STACK.iter().map(|f| (*f).to_owned()).collect(),
            stack_source: "kernel",
            first_seen: secs == since,
            repeat: 1 + u32::try_from((secs - since) / 120).unwrap(),
            first_seen_ns: mono(since),
        },
    )
}

fn recovered(secs: u64, pid: u32) -> Event {
    event(
        secs,
        task(pid, "mysqld"),
        None,
        HungTaskRecovered {
            how: "running",
            hung_for_ms: 130_000,
            reports: 2,
        },
    )
}

fn oom(secs: u64, pid: u32, attribution: Option<Attribution>) -> Event {
    event(
        secs,
        task(pid, "mysqld"),
        attribution,
        OomKill {
            total_vm_kb: Some(2_000_000),
            anon_rss_kb: Some(1_000_000),
            file_rss_kb: Some(2_000),
            shmem_rss_kb: Some(0),
            pgtables_kb: Some(2_100),
            uid: Some(999),
            oom_score_adj: Some(999),
            scope: OomScope::Memcg,
            memcg: Some("/kubepods/burstable/podX".to_owned()),
            cgroup_source: "kernel",
            trigger: task(pid, "mysqld"),
            trigger_stack: Vec::new(),
        },
    )
}

fn kernel_problem(caller: Option<&str>, since_boot: bool) -> KernelProblem {
    KernelProblem {
        caller: caller.map(str::to_owned),
        taint: Some(128),
        taint_flags: Some("D".to_owned()),
        stack: Vec::new(),
        counter: None,
        count: None,
        occurrences: 1,
        since_boot,
    }
}

fn oops(secs: u64, since_boot: bool) -> Event {
    event(
        secs,
        task(4242, "insmod"),
        None,
        KernelOops(kernel_problem(
            Some("do_the_bug+0x15/0x20 [crasher]"),
            since_boot,
        )),
    )
}

fn warning(secs: u64, caller: &str) -> Event {
    let mut problem = kernel_problem(Some(caller), false);
    problem.taint_flags = Some("W".to_owned());
    event(secs, task(17, "kworker/0:1"), None, KernelWarning(problem))
}

fn fd(secs: u64, pid: u32, errno: Errno, suppressed: u64, flushed: bool) -> Event {
    event(
        secs,
        task(pid, "nginx"),
        None,
        FdExhausted {
            errno,
            syscall: "openat".to_owned(),
            syscall_nr: 257,
            suppressed,
            failures_total: suppressed + 1,
            nofile_limit: Some(1024),
            flushed,
        },
    )
}

fn enfile(secs: u64) -> Event {
    fd(secs, 300, Errno::Enfile, 0, false)
}

#[derive(Debug)]
enum Input {
    Event(Box<Event>),
    /// File table usage: allocated of 1000.
    Sample(u64),
    Tick,
}

impl Input {
    fn ev(event: Event) -> Self {
        Self::Event(Box::new(event))
    }
}

/// What one step must leave behind.
#[derive(Debug)]
enum Check {
    /// Status, reason and the time of the last transition (seconds into the timeline).
    Condition(ConditionType, ConditionStatus, &'static str, u64),
    MessageHas(ConditionType, &'static str),
}

/// (seconds, input, Events it must emit as (reason, count, series update), checks).
type Step = (u64, Input, &'static [(EventReason, u64, bool)], Vec<Check>);

fn run(name: &str, engine: &mut Engine, steps: Vec<Step>) {
    for (secs, input, expected_events, checks) in steps {
        let now = at(secs);
        let emitted = match &input {
            Input::Event(event) => engine.observe(event, now),
            Input::Sample(allocated) => engine.sample_file_table(
                FileTableSample {
                    allocated: *allocated,
                    max: 1000,
                },
                now,
            ),
            Input::Tick => engine.tick(now),
        };
        let emitted: Vec<_> = emitted
            .iter()
            .map(|e| (e.reason, e.count, e.series_update))
            .collect();
        assert_eq!(emitted, expected_events, "{name}: events at t={secs}s");
        for check in checks {
            match check {
                Check::Condition(ty, status, reason, since) => {
                    let condition = engine.condition(ty);
                    assert_eq!(
                        (condition.status, condition.reason.as_str()),
                        (status, reason),
                        "{name}: {ty} at t={secs}s ({})",
                        condition.message
                    );
                    assert_eq!(
                        condition.last_transition_time,
                        wall(since),
                        "{name}: {ty} transition time at t={secs}s"
                    );
                }
                Check::MessageHas(ty, part) => {
                    let message = &engine.condition(ty).message;
                    assert!(
                        message.contains(part),
                        "{name}: {ty} message at t={secs}s is {message:?}, lacks {part:?}"
                    );
                }
            }
        }
    }
}

fn deadlock(status: ConditionStatus, since: u64) -> Check {
    let reason = if status == True {
        "TaskHung"
    } else {
        "KernelHasNoDeadlock"
    };
    Check::Condition(KERNEL_DEADLOCK, status, reason, since)
}

fn fd_pressure(status: ConditionStatus, since: u64) -> Check {
    let reason = if status == True {
        "FDUnderPressure"
    } else {
        "NoFDPressure"
    };
    Check::Condition(FD_PRESSURE, status, reason, since)
}

fn oops_condition(status: ConditionStatus, since: u64) -> Check {
    let reason = if status == True {
        "KernelOops"
    } else {
        "NoKernelOops"
    };
    Check::Condition(KERNEL_OOPS_CONDITION, status, reason, since)
}

const NONE: &[(EventReason, u64, bool)] = &[];
const HUNG: &[(EventReason, u64, bool)] = &[(TASK_HUNG, 1, false)];
const RECOVERED: &[(EventReason, u64, bool)] = &[(TASK_HUNG_RECOVERED, 1, false)];

#[test]
fn conditions_start_false_and_present() {
    let engine = engine_with(config());
    let conditions = engine.conditions();
    let shown: Vec<_> = conditions
        .iter()
        .map(|c| (c.condition_type.as_str(), c.status, c.reason.as_str()))
        .collect();
    for expected in [
        ("FDPressure", False, "NoFDPressure"),
        ("KernelDeadlock", False, "KernelHasNoDeadlock"),
        ("KernelOops", False, "NoKernelOops"),
    ] {
        assert!(shown.contains(&expected), "{expected:?} in {shown:?}");
    }
    // Every condition of every detector, each False with its healthy reason.
    assert_eq!(conditions.len(), detectors::catalog().conditions.len());
    for condition in conditions {
        assert_eq!(condition.status, False);
        assert_eq!(
            condition.reason,
            condition.condition_type.spec().healthy_reason
        );
    }
    assert!(conditions.iter().all(|c| c.last_transition_time == wall(0)));
}

#[test]
fn engine_refuses_an_invalid_config() {
    let config = EngineConfig {
        fd_pressure_low_percent: 95.0,
        ..EngineConfig::default()
    };
    assert!(matches!(
        Engine::new(config, detectors::catalog(), at(0)),
        Err(ConfigError::WaterMarksInverted { .. })
    ));
}

#[test]
fn kernel_deadlock_transitions() {
    let scenarios: Vec<(&str, Vec<Step>)> = vec![
        (
            "hang, recover, recovery window",
            vec![
                (
                    10,
                    Input::ev(hung(10, 100, 10, None)),
                    HUNG,
                    vec![deadlock(True, 10)],
                ),
                // khungtaskd's repeats keep it True without another Event.
                (
                    130,
                    Input::ev(hung(130, 100, 10, None)),
                    NONE,
                    vec![deadlock(True, 10)],
                ),
                (
                    200,
                    Input::ev(recovered(200, 100)),
                    RECOVERED,
                    vec![
                        deadlock(True, 10),
                        Check::MessageHas(
                            KERNEL_DEADLOCK,
                            "no task hung now (task mysqld (pid 100) recovered at 2027-01-15T08:03:20.000Z)",
                        ),
                        Check::MessageHas(KERNEL_DEADLOCK, "clears at 2027-01-15T08:08:20.000Z"),
                    ],
                ),
                (499, Input::Tick, NONE, vec![deadlock(True, 10)]),
                (
                    500,
                    Input::Tick,
                    NONE,
                    vec![
                        deadlock(False, 500),
                        Check::MessageHas(KERNEL_DEADLOCK, "no task hung for 5m"),
                    ],
                ),
                (900, Input::Tick, NONE, vec![deadlock(False, 500)]),
            ],
        ),
        (
            "a new hang inside the window keeps it True and restarts the window",
            vec![
                (
                    10,
                    Input::ev(hung(10, 100, 10, None)),
                    HUNG,
                    vec![deadlock(True, 10)],
                ),
                (
                    100,
                    Input::ev(recovered(100, 100)),
                    RECOVERED,
                    vec![deadlock(True, 10)],
                ),
                // Same process name and place: the TaskHung series of the first grows.
                (
                    300,
                    Input::ev(hung(300, 101, 300, None)),
                    &[(TASK_HUNG, 2, true)],
                    vec![deadlock(True, 10)],
                ),
                (400, Input::Tick, NONE, vec![deadlock(True, 10)]),
                (
                    500,
                    Input::ev(recovered(500, 101)),
                    &[(TASK_HUNG_RECOVERED, 2, true)],
                    vec![deadlock(True, 10)],
                ),
                (799, Input::Tick, NONE, vec![deadlock(True, 10)]),
                (800, Input::Tick, NONE, vec![deadlock(False, 800)]),
            ],
        ),
        (
            "several tasks: count and the longest-hung",
            vec![
                (
                    10,
                    Input::ev(hung(10, 100, 10, None)),
                    HUNG,
                    vec![deadlock(True, 10)],
                ),
                (
                    20,
                    Input::ev(hung(20, 200, 20, None)),
                    NONE,
                    vec![Check::MessageHas(
                        KERNEL_DEADLOCK,
                        "2 tasks hung; the longest: task mysqld (pid 100) blocked in D state since 2027-01-15T08:00:10.000Z",
                    )],
                ),
                (
                    30,
                    Input::ev(recovered(30, 100)),
                    RECOVERED,
                    vec![
                        deadlock(True, 10),
                        Check::MessageHas(
                            KERNEL_DEADLOCK,
                            "task mysqld (pid 200) blocked in D state since 2027-01-15T08:00:20.000Z",
                        ),
                    ],
                ),
                (
                    40,
                    Input::ev(recovered(40, 200)),
                    NONE,
                    vec![
                        deadlock(True, 10),
                        Check::MessageHas(KERNEL_DEADLOCK, "no task hung now"),
                    ],
                ),
                // The second mysqld's hang and recovery joined the first's series.
                (
                    340,
                    Input::Tick,
                    &[(TASK_HUNG, 2, true), (TASK_HUNG_RECOVERED, 2, true)],
                    vec![deadlock(False, 340)],
                ),
            ],
        ),
        (
            "a task never reported again is forgotten, then the window runs",
            vec![
                (
                    10,
                    Input::ev(hung(10, 100, 10, None)),
                    HUNG,
                    vec![deadlock(True, 10)],
                ),
                (1810, Input::Tick, NONE, vec![deadlock(True, 10)]),
                (
                    1811,
                    Input::Tick,
                    NONE,
                    vec![
                        deadlock(True, 10),
                        Check::MessageHas(
                            KERNEL_DEADLOCK,
                            "was not reported hung for 30m (its recovery was not seen)",
                        ),
                    ],
                ),
                (2111, Input::Tick, NONE, vec![deadlock(False, 2111)]),
            ],
        ),
        (
            "repeats refresh the task, so it is not forgotten",
            vec![
                (10, Input::ev(hung(10, 100, 10, None)), HUNG, vec![]),
                (1000, Input::ev(hung(1000, 100, 10, None)), NONE, vec![]),
                (
                    2500,
                    Input::Tick,
                    NONE,
                    vec![
                        deadlock(True, 10),
                        Check::MessageHas(KERNEL_DEADLOCK, "task mysqld (pid 100) blocked"),
                    ],
                ),
            ],
        ),
        (
            "a repeat for a task npd did not see start (restart) sets the condition, no Event",
            vec![(
                500,
                Input::ev(hung(500, 100, 20, None)),
                NONE,
                vec![
                    deadlock(True, 500),
                    Check::MessageHas(KERNEL_DEADLOCK, "since 2027-01-15T08:00:20.000Z"),
                ],
            )],
        ),
        (
            "a recovery of an unknown task changes nothing",
            vec![(
                50,
                Input::ev(recovered(50, 100)),
                RECOVERED,
                vec![deadlock(False, 0)],
            )],
        ),
        (
            "a reused id with a new first report is a new hang",
            vec![
                (10, Input::ev(hung(10, 100, 10, None)), HUNG, vec![]),
                (
                    20,
                    Input::ev(hung(20, 100, 20, None)),
                    NONE,
                    vec![
                        // Same key (same process, same place), so the series absorbs it.
                        Check::MessageHas(KERNEL_DEADLOCK, "since 2027-01-15T08:00:20.000Z"),
                    ],
                ),
                (
                    80,
                    Input::Tick,
                    &[(TASK_HUNG, 2, true)],
                    vec![deadlock(True, 10)],
                ),
            ],
        ),
        (
            "other problems leave KernelDeadlock alone",
            vec![
                (
                    10,
                    Input::ev(oom(10, 5, None)),
                    &[(OOM_KILLING, 1, false)],
                    vec![deadlock(False, 0)],
                ),
                (
                    11,
                    Input::ev(warning(11, "foo+0x1/0x2")),
                    &[(KERNEL_WARNING, 1, false)],
                    vec![deadlock(False, 0)],
                ),
            ],
        ),
    ];
    for (name, steps) in scenarios {
        run(name, &mut engine_with(config()), steps);
    }
}

#[test]
fn kernel_oops_stays_until_reboot() {
    let mut engine = engine_with(config());
    run(
        "oops",
        &mut engine,
        vec![
            (
                5,
                Input::ev(warning(5, "foo+0x1/0x2")),
                &[(KERNEL_WARNING, 1, false)],
                vec![oops_condition(False, 0)],
            ),
            (
                10,
                Input::ev(oops(10, false)),
                &[(KERNEL_OOPS, 1, false)],
                vec![
                    oops_condition(True, 10),
                    Check::MessageHas(
                        KERNEL_OOPS_CONDITION,
                        "kernel oops at do_the_bug+0x15/0x20 [crasher] in task insmod (pid 4242); the kernel is tainted (D) and the node needs a reboot",
                    ),
                ],
            ),
            (100_000, Input::Tick, NONE, vec![oops_condition(True, 10)]),
            (
                100_010,
                Input::ev(oops(100_010, false)),
                &[(KERNEL_OOPS, 1, false)],
                vec![
                    oops_condition(True, 10),
                    Check::MessageHas(
                        KERNEL_OOPS_CONDITION,
                        "2 kernel oopses seen this boot, the last: kernel oops at",
                    ),
                ],
            ),
        ],
    );
}

#[test]
fn fd_pressure_has_hysteresis() {
    // (usage of 1000, expected status, transition second) at t = 10, 20, 30, ...
    let samples: &[(u64, ConditionStatus, u64)] = &[
        (500, False, 0),
        (899, False, 0),
        (900, True, 30), // at the high-water mark
        (850, True, 30),
        (800, True, 30), // at the low-water mark is not below it
        (950, True, 30),
        (799, False, 70),
        (850, False, 70), // between the marks: stays where it was
        (899, False, 70),
        (1000, True, 100),
        (0, False, 110),
    ];
    let steps = samples
        .iter()
        .enumerate()
        .map(|(i, &(allocated, status, since))| {
            let secs = 10 * (i as u64 + 1);
            (
                secs,
                Input::Sample(allocated),
                NONE,
                vec![fd_pressure(status, since)],
            )
        })
        .collect();
    run("hysteresis", &mut engine_with(config()), steps);

    // A table of size 0 says nothing.
    let mut engine = engine_with(config());
    engine.sample_file_table(
        FileTableSample {
            allocated: 5,
            max: 1000,
        },
        at(1),
    );
    engine.sample_file_table(
        FileTableSample {
            allocated: 5,
            max: 0,
        },
        at(2),
    );
    assert_eq!(engine.condition(FD_PRESSURE).status, False);
    engine.sample_file_table(
        FileTableSample {
            allocated: 950,
            max: 1000,
        },
        at(3),
    );
    assert_eq!(
        engine.condition(FD_PRESSURE).message,
        "system file table 95% full (950 of 1000 file handles allocated) at or above the \
         high-water mark 90%; clears below 80%"
    );
}

#[test]
fn fd_pressure_after_enfile_holds() {
    let enfile_event: &[(EventReason, u64, bool)] = &[(FD_EXHAUSTED, 1, false)];
    let scenarios: Vec<(&str, Vec<Step>)> = vec![
        (
            "ENFILE, low samples during the hold, then after it",
            vec![
                (10, Input::Sample(500), NONE, vec![fd_pressure(False, 0)]),
                (
                    20,
                    Input::ev(enfile(20)),
                    enfile_event,
                    vec![
                        fd_pressure(True, 20),
                        Check::MessageHas(
                            FD_PRESSURE,
                            "system file table full: openat failed with ENFILE in process nginx (pid 300); last sample: system file table 50% full",
                        ),
                        Check::MessageHas(
                            FD_PRESSURE,
                            "clears below 80% and not before 5m after the last ENFILE",
                        ),
                    ],
                ),
                (30, Input::Sample(100), NONE, vec![fd_pressure(True, 20)]),
                (319, Input::Sample(100), NONE, vec![fd_pressure(True, 20)]),
                // Time alone does not clear it: a sample must show the table below the mark.
                (320, Input::Tick, NONE, vec![fd_pressure(True, 20)]),
                (330, Input::Sample(100), NONE, vec![fd_pressure(False, 330)]),
            ],
        ),
        (
            "another ENFILE extends the hold",
            vec![
                (
                    20,
                    Input::ev(enfile(20)),
                    enfile_event,
                    vec![fd_pressure(True, 20)],
                ),
                (
                    200,
                    Input::ev(fd(200, 301, Errno::Enfile, 0, false)),
                    enfile_event,
                    vec![fd_pressure(True, 20)],
                ),
                (330, Input::Sample(100), NONE, vec![fd_pressure(True, 20)]),
                (500, Input::Sample(100), NONE, vec![fd_pressure(False, 500)]),
            ],
        ),
        (
            "after the hold a sample between the marks does not clear it",
            vec![
                (20, Input::ev(enfile(20)), enfile_event, vec![]),
                (400, Input::Sample(850), NONE, vec![fd_pressure(True, 20)]),
                (410, Input::Sample(790), NONE, vec![fd_pressure(False, 410)]),
            ],
        ),
        (
            "EMFILE is one process's limit, not pressure on the node",
            vec![(
                20,
                Input::ev(fd(20, 300, Errno::Emfile, 0, false)),
                enfile_event,
                vec![fd_pressure(False, 0)],
            )],
        ),
    ];
    for (name, steps) in scenarios {
        run(name, &mut engine_with(config()), steps);
    }
}

fn found(
    condition_type: ConditionType,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    since: SystemTime,
) -> NodeCondition {
    NodeCondition {
        condition_type,
        status,
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: since,
    }
}

#[test]
fn restore_keeps_conditions_across_restarts() {
    let long_ago = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let oops_true = || {
        found(
            KERNEL_OOPS_CONDITION,
            True,
            "KernelOops",
            "kernel oops at x",
            long_ago,
        )
    };
    let deadlock_true = || {
        found(
            KERNEL_DEADLOCK,
            True,
            "DockerHung",
            "task docker:7 blocked for more than 300 seconds.",
            long_ago,
        )
    };
    let fd_true = || {
        found(
            FD_PRESSURE,
            True,
            "FDUnderPressure",
            "system file table 95% full",
            long_ago,
        )
    };
    // (name, found, boot, checks right after restore at t = 0)
    type Case = (
        &'static str,
        Vec<NodeCondition>,
        Boot,
        Vec<(
            ConditionType,
            ConditionStatus,
            &'static str,
            SystemTime,
            &'static str,
        )>,
    );
    let cases: Vec<Case> = vec![
        (
            "oops, same boot",
            vec![oops_true()],
            Boot::Same,
            vec![(
                KERNEL_OOPS_CONDITION,
                True,
                "KernelOops",
                long_ago,
                "kernel oops at x",
            )],
        ),
        (
            "oops, unknown boot",
            vec![oops_true()],
            Boot::Unknown,
            vec![(
                KERNEL_OOPS_CONDITION,
                True,
                "KernelOops",
                long_ago,
                "kernel oops at x",
            )],
        ),
        (
            "oops, new boot",
            vec![oops_true()],
            Boot::New,
            vec![(
                KERNEL_OOPS_CONDITION,
                False,
                "NoKernelOops",
                wall(0),
                "no kernel oops since the node rebooted",
            )],
        ),
        (
            "deadlock (NPD's reason kept while True)",
            vec![deadlock_true()],
            Boot::New,
            vec![(
                KERNEL_DEADLOCK,
                True,
                "DockerHung",
                long_ago,
                "task docker:7 blocked for more than 300 seconds.",
            )],
        ),
        (
            "fd pressure",
            vec![fd_true()],
            Boot::Same,
            vec![(
                FD_PRESSURE,
                True,
                "FDUnderPressure",
                long_ago,
                "system file table 95% full",
            )],
        ),
        (
            "False keeps its transition time",
            vec![found(
                KERNEL_OOPS_CONDITION,
                False,
                "NoKernelOops",
                "whatever",
                long_ago,
            )],
            Boot::Same,
            vec![(
                KERNEL_OOPS_CONDITION,
                False,
                "NoKernelOops",
                long_ago,
                "no kernel oops this boot",
            )],
        ),
        (
            "Unknown is ignored",
            vec![found(
                KERNEL_DEADLOCK,
                ConditionStatus::Unknown,
                "Foo",
                "bar",
                long_ago,
            )],
            Boot::Same,
            vec![(
                KERNEL_DEADLOCK,
                False,
                "KernelHasNoDeadlock",
                wall(0),
                "kernel has no deadlock",
            )],
        ),
        (
            "missing conditions start False now",
            vec![],
            Boot::Same,
            vec![(
                FD_PRESSURE,
                False,
                "NoFDPressure",
                wall(0),
                "system file table has enough free file handles",
            )],
        ),
    ];
    for (name, found, boot, checks) in cases {
        let mut engine = engine_with(config());
        engine.restore(found, boot, at(0));
        for (ty, status, reason, since, message) in checks {
            let c = engine.condition(ty);
            assert_eq!(
                (
                    c.status,
                    c.reason.as_str(),
                    c.last_transition_time,
                    c.message.as_str()
                ),
                (status, reason, since, message),
                "{name}: {ty}"
            );
        }
    }
}

#[test]
fn restored_conditions_clear_by_their_own_rules() {
    let long_ago = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let restored = || {
        let mut engine = engine_with(config());
        engine.restore(
            [
                found(KERNEL_DEADLOCK, True, "TaskHung", "old", long_ago),
                found(FD_PRESSURE, True, "FDUnderPressure", "old", long_ago),
                found(KERNEL_OOPS_CONDITION, True, "KernelOops", "old", long_ago),
            ],
            Boot::Same,
            at(0),
        );
        engine
    };
    let scenarios: Vec<(&str, Vec<Step>)> = vec![
        (
            "deadlock clears after the window with no hung task",
            vec![
                (
                    299,
                    Input::Tick,
                    NONE,
                    vec![Check::MessageHas(KERNEL_DEADLOCK, "old")],
                ),
                (300, Input::Tick, NONE, vec![deadlock(False, 300)]),
            ],
        ),
        (
            "a hung task seen after restart keeps it True (transition time kept)",
            vec![
                (200, Input::ev(hung(200, 100, 80, None)), NONE, vec![]),
                (
                    450,
                    Input::Tick,
                    NONE,
                    vec![Check::MessageHas(
                        KERNEL_DEADLOCK,
                        "task mysqld (pid 100) blocked",
                    )],
                ),
                (460, Input::ev(recovered(460, 100)), RECOVERED, vec![]),
                (
                    759,
                    Input::Tick,
                    NONE,
                    vec![Check::MessageHas(KERNEL_DEADLOCK, "no task hung now")],
                ),
                (760, Input::Tick, NONE, vec![deadlock(False, 760)]),
            ],
        ),
        (
            "fd pressure needs a low sample after the hold",
            vec![
                (
                    10,
                    Input::Sample(100),
                    NONE,
                    vec![Check::MessageHas(FD_PRESSURE, "old")],
                ),
                (300, Input::Sample(100), NONE, vec![fd_pressure(False, 300)]),
            ],
        ),
        (
            "oops stays",
            vec![(
                100_000,
                Input::Tick,
                NONE,
                vec![Check::MessageHas(KERNEL_OOPS_CONDITION, "old")],
            )],
        ),
    ];
    for (name, steps) in scenarios {
        let mut engine = restored();
        run(name, &mut engine, steps);
        // Transition times of what stayed True are the ones found.
        for condition in engine.conditions().iter().filter(|c| c.is_true()) {
            assert_eq!(
                condition.last_transition_time, long_ago,
                "{name}: {}",
                condition.condition_type
            );
        }
    }
}

#[test]
fn problems_counted_before_start_are_reported_once_per_boot() {
    // (boot, Events for an oops and a warning the kernel counted before npd started)
    let cases = [
        (None, 2),
        (Some(Boot::New), 2),
        (Some(Boot::Unknown), 2),
        (Some(Boot::Same), 0),
    ];
    for (boot, expected) in cases {
        let mut engine = engine_with(config());
        if let Some(boot) = boot {
            engine.restore([], boot, at(0));
        }
        let mut warning = warning(1, "foo+0x1/0x2");
        if let Some(KernelWarning(problem)) = warning.detail_as_mut::<KernelWarning>() {
            problem.since_boot = true;
        }
        let mut emitted = engine.observe(&oops(1, true), at(1));
        emitted.extend(engine.observe(&warning, at(1)));
        assert_eq!(emitted.len(), expected, "{boot:?}");
        // The condition follows the kernel whatever was reported.
        assert_eq!(
            engine.condition(KERNEL_OOPS_CONDITION).status,
            True,
            "{boot:?}"
        );
        assert!(
            engine
                .condition(KERNEL_OOPS_CONDITION)
                .message
                .contains("before npd started"),
            "{boot:?}"
        );
    }
}

#[test]
fn messages_name_the_pod_the_unit_or_the_process() {
    // (attribution, KERNEL_DEADLOCK message, OOMKilling message, targets)
    let cases: Vec<(Option<Attribution>, &str, &str, usize)> = vec![
        (
            Some(named_pod()),
            "task mysqld (pid 100) in pod shop/db-0, container mysql blocked in D state since \
             2027-01-15T08:00:10.000Z; stack: percpu_rwsem_wait+0x11d/0x150, \
             __sb_start_write+0x56/0x70, ext4_buffered_write_iter+0x3a/0x160",
            "process mysqld (pid 100) in pod shop/db-0, container mysql killed by the OOM killer \
             (memory cgroup /kubepods/burstable/podX at its limit, rss 1002000 KiB)",
            2,
        ),
        (
            Some(uid_only_pod()),
            "task mysqld (pid 100) in pod uid 5f0c8f6e-2d4a-4d8e-9a51-3b8d1c2e7f10, container id \
             0123456789ab blocked in D state since 2027-01-15T08:00:10.000Z; stack: \
             percpu_rwsem_wait+0x11d/0x150, __sb_start_write+0x56/0x70, \
             ext4_buffered_write_iter+0x3a/0x160",
            "process mysqld (pid 100) in pod uid 5f0c8f6e-2d4a-4d8e-9a51-3b8d1c2e7f10, container \
             id 0123456789ab killed by the OOM killer (memory cgroup /kubepods/burstable/podX at \
             its limit, rss 1002000 KiB)",
            1,
        ),
        (
            Some(unit()),
            "task mysqld (pid 100) in unit containerd.service blocked in D state since \
             2027-01-15T08:00:10.000Z; stack: percpu_rwsem_wait+0x11d/0x150, \
             __sb_start_write+0x56/0x70, ext4_buffered_write_iter+0x3a/0x160",
            "process mysqld (pid 100) in unit containerd.service killed by the OOM killer \
             (memory cgroup /kubepods/burstable/podX at its limit, rss 1002000 KiB)",
            1,
        ),
        (
            None,
            "task mysqld (pid 100) blocked in D state since 2027-01-15T08:00:10.000Z; stack: \
             percpu_rwsem_wait+0x11d/0x150, __sb_start_write+0x56/0x70, \
             ext4_buffered_write_iter+0x3a/0x160",
            "process mysqld (pid 100) killed by the OOM killer (memory cgroup \
             /kubepods/burstable/podX at its limit, rss 1002000 KiB)",
            1,
        ),
    ];
    for (attribution, deadlock_message, oom_message, targets) in cases {
        let mut engine = engine_with(config());
        let hung_events = engine.observe(&hung(10, 100, 10, attribution.clone()), at(10));
        assert_eq!(engine.condition(KERNEL_DEADLOCK).message, deadlock_message);
        assert_eq!(hung_events.len(), 1);
        assert!(
            hung_events[0]
                .message
                .starts_with(&deadlock_message[..deadlock_message.find(" blocked").unwrap()]),
            "{}",
            hung_events[0].message
        );
        let oom_events = engine.observe(&oom(11, 100, attribution.clone()), at(11));
        assert_eq!(oom_events.len(), 1);
        let oom_event = &oom_events[0];
        assert_eq!(oom_event.message, oom_message);
        assert_eq!(oom_event.event_type, EventType::Warning);
        assert_eq!(oom_event.targets.len(), targets, "{oom_message}");
        assert_eq!(oom_event.targets[0], EventTarget::Node);
    }
}

#[test]
fn event_messages_of_every_kind() {
    let mut engine = engine_with(config());
    let mut trigger = oom(3, 100, None);
    if let Some(kill) = trigger.detail_as_mut::<OomKill>() {
        kill.trigger = task(555, "java");
        kill.scope = OomScope::Global;
    }
    let cases: Vec<(Event, EventReason, EventType, &str)> = vec![
        (
            hung(1, 100, 1, Some(named_pod())),
            TASK_HUNG,
            EventType::Warning,
            "task mysqld (pid 100) in pod shop/db-0, container mysql blocked in D state for more \
             than the hung task timeout; stack: percpu_rwsem_wait+0x11d/0x150, \
             __sb_start_write+0x56/0x70, ext4_buffered_write_iter+0x3a/0x160",
        ),
        (
            recovered(2, 100),
            TASK_HUNG_RECOVERED,
            EventType::Normal,
            "task mysqld (pid 100) no longer blocked (running) after 130.0s and 2 reports",
        ),
        (
            trigger,
            OOM_KILLING,
            EventType::Warning,
            "process mysqld (pid 100) killed by the OOM killer (system out of memory, rss \
             1002000 KiB); the allocation that ran it was by java (pid 555)",
        ),
        (
            oops(4, false),
            KERNEL_OOPS,
            EventType::Warning,
            "kernel oops at do_the_bug+0x15/0x20 [crasher] in task insmod (pid 4242); kernel \
             tainted D",
        ),
        (
            warning(5, "ext4_foo+0x1/0x2"),
            KERNEL_WARNING,
            EventType::Warning,
            "kernel warning at ext4_foo+0x1/0x2 in task kworker/0:1 (pid 17); kernel tainted W",
        ),
        (
            fd(6, 300, Errno::Emfile, 41, false),
            FD_EXHAUSTED,
            EventType::Warning,
            "process nginx (pid 300): out of file descriptors (RLIMIT_NOFILE 1024): openat failed \
             (+41 suppressed)",
        ),
    ];
    for (event, reason, event_type, message) in cases {
        let emitted = engine.observe(&event, at(10));
        assert_eq!(emitted.len(), 1, "{reason}");
        assert_eq!(
            (
                emitted[0].reason,
                emitted[0].event_type,
                emitted[0].message.as_str()
            ),
            (reason, event_type, message)
        );
    }
}

#[test]
fn kernel_problems_from_counters_have_no_task() {
    let mut engine = engine_with(config());
    let mut problem = kernel_problem(None, false);
    problem.counter = Some("oops_count");
    problem.count = Some(3);
    problem.occurrences = 2;
    let counted = event(5, Task::default(), None, KernelOops(problem));
    let emitted = engine.observe(&counted, at(5));
    assert_eq!(emitted[0].count, 2);
    assert_eq!(
        emitted[0].message,
        "kernel oops, 2 times (oops_count now 3); kernel tainted D"
    );
    assert_eq!(emitted[0].aggregation_key, "KernelOops|node|oops_count");
    assert_eq!(
        engine.condition(KERNEL_OOPS_CONDITION).message,
        "kernel oops, 2 times (oops_count now 3); the kernel is tainted (D) and the node needs a \
         reboot"
    );
}

#[test]
fn aggregation_keys() {
    let mut engine = engine_with(config());
    let cases: Vec<(Event, String)> = vec![
        (
            oom(1, 100, Some(named_pod())),
            format!("OOMKilling|pod:{UID}/mysql|mysqld"),
        ),
        (
            oom(1, 100, Some(uid_only_pod())),
            format!("OOMKilling|pod:{UID}/{CONTAINER_ID}|mysqld"),
        ),
        (
            oom(1, 100, Some(unit())),
            "OOMKilling|unit:containerd.service|mysqld".to_owned(),
        ),
        (
            oom(1, 100, Some(bare_cgroup())),
            "OOMKilling|cgroup:/custom/batch|mysqld".to_owned(),
        ),
        (oom(1, 100, None), "OOMKilling|node|mysqld".to_owned()),
        (
            hung(1, 100, 1, None),
            "TaskHung|node|mysqld|percpu_rwsem_wait".to_owned(),
        ),
        (
            recovered(1, 100),
            "TaskHungRecovered|node|mysqld".to_owned(),
        ),
        (oops(1, false), "KernelOops|node|do_the_bug".to_owned()),
        (
            warning(1, "ext4_foo+0x1/0x2"),
            "KernelWarning|node|ext4_foo".to_owned(),
        ),
        (
            fd(1, 300, Errno::Emfile, 0, false),
            "FDExhausted|node|nginx|300|EMFILE".to_owned(),
        ),
    ];
    for (event, key) in cases {
        let emitted = engine.observe(&event, at(1));
        assert_eq!(emitted.len(), 1, "{key}");
        assert_eq!(emitted[0].aggregation_key, key);
    }
}

#[test]
fn repeats_are_aggregated_into_series() {
    let pod = || Some(named_pod());
    let steps: Vec<Step> = vec![
        (
            0,
            Input::ev(oom(0, 1, pod())),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        // Repeats within the update interval wait...
        (10, Input::ev(oom(10, 2, pod())), NONE, vec![]),
        (20, Input::ev(oom(20, 3, pod())), NONE, vec![]),
        (59, Input::Tick, NONE, vec![]),
        // ...and go out as one update of the series.
        (60, Input::Tick, &[(OOM_KILLING, 3, true)], vec![]),
        (61, Input::Tick, NONE, vec![]),
        // Once the interval has passed, a repeat goes out at once.
        (
            200,
            Input::ev(oom(200, 4, pod())),
            &[(OOM_KILLING, 4, true)],
            vec![],
        ),
        // Another container (key) is its own series.
        (
            201,
            Input::ev(oom(201, 5, Some(unit()))),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        // After a quiet aggregation window, a new series (a new Event).
        (
            801,
            Input::ev(oom(801, 6, pod())),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
    ];
    run("series", &mut engine_with(config()), steps);
}

#[test]
fn series_carry_kernel_timestamps_and_the_latest_message() {
    let mut engine = engine_with(config());
    // Records reach the engine a little after the kernel saw them.
    let first = engine.observe(&oom(0, 1, None), at(2));
    assert_eq!(first[0].first_timestamp, wall(0));
    assert_eq!(first[0].last_timestamp, wall(0));
    engine.observe(&oom(30, 2, None), at(31));
    let update = engine.tick(at(62));
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].first_timestamp, wall(0));
    assert_eq!(update[0].last_timestamp, wall(30));
    assert!(
        update[0].message.contains("(pid 2)"),
        "{}",
        update[0].message
    );
    assert_eq!(update[0].aggregation_key, first[0].aggregation_key);
}

#[test]
fn fd_events_count_failures() {
    let steps: Vec<Step> = vec![
        (
            0,
            Input::ev(fd(0, 300, Errno::Emfile, 0, false)),
            &[(FD_EXHAUSTED, 1, false)],
            vec![],
        ),
        // A record standing for 999 failures folded in the kernel, and a sweep of 50 more.
        (
            1,
            Input::ev(fd(1, 300, Errno::Emfile, 999, false)),
            NONE,
            vec![],
        ),
        (
            5,
            Input::ev(fd(5, 300, Errno::Emfile, 50, true)),
            NONE,
            vec![],
        ),
        (60, Input::Tick, &[(FD_EXHAUSTED, 1051, true)], vec![]),
    ];
    run("fd counts", &mut engine_with(config()), steps);
}

fn rate_limited(burst: u32, refill_secs: u64) -> EngineConfig {
    EngineConfig {
        event_rate_limit: EventRateLimit {
            burst,
            refill_every: Duration::from_secs(refill_secs),
        },
        ..EngineConfig::default()
    }
}

fn oom_in(secs: u64, container: usize) -> Event {
    let mut attribution = named_pod();
    if let Some(pod) = &mut attribution.pod {
        pod.container = Some(format!("c{container}"));
    }
    oom(secs, 100, Some(attribution))
}

#[test]
fn token_bucket_limits_each_reason() {
    let steps: Vec<Step> = vec![
        // Burst of 2: the third container's OOM waits for a token.
        (
            0,
            Input::ev(oom_in(0, 1)),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        (
            0,
            Input::ev(oom_in(0, 2)),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        (0, Input::ev(oom_in(0, 3)), NONE, vec![]),
        // Another reason has its own bucket.
        (0, Input::ev(hung(0, 7, 0, None)), HUNG, vec![]),
        // More of the held-back one are folded into it.
        (3, Input::ev(oom_in(3, 3)), NONE, vec![]),
        (9, Input::Tick, NONE, vec![]),
        (10, Input::Tick, &[(OOM_KILLING, 2, false)], vec![]),
        // A fourth waits for the next token: one per 10 s.
        (11, Input::ev(oom_in(11, 4)), NONE, vec![]),
        (19, Input::Tick, NONE, vec![]),
        (20, Input::Tick, &[(OOM_KILLING, 1, false)], vec![]),
        // Quiet for long: the bucket refills to its burst, no further.
        (
            1000,
            Input::ev(oom_in(1000, 5)),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        (
            1000,
            Input::ev(oom_in(1000, 6)),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        (1000, Input::ev(oom_in(1000, 7)), NONE, vec![]),
    ];
    let mut engine = engine_with(rate_limited(2, 10));
    run("token bucket", &mut engine, steps);
    let stats = engine.event_stats(OOM_KILLING);
    assert_eq!(stats.occurrences, 8);
    assert_eq!(stats.sent, 6);
    assert!(stats.rate_limited >= 3, "{stats:?}");
    assert_eq!(engine.event_stats(TASK_HUNG).sent, 1);
}

#[test]
fn held_back_occurrences_outlive_the_aggregation_window() {
    // One token per 1000 s: the second container's OOM waits longer than the 600 s window,
    // and a repeat after the window must join it, not replace it.
    let steps: Vec<Step> = vec![
        (
            0,
            Input::ev(oom_in(0, 1)),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        (0, Input::ev(oom_in(0, 2)), NONE, vec![]),
        (700, Input::Tick, NONE, vec![]),
        (701, Input::ev(oom_in(701, 2)), NONE, vec![]),
        (1000, Input::Tick, &[(OOM_KILLING, 2, false)], vec![]),
    ];
    run("held back", &mut engine_with(rate_limited(1, 1000)), steps);
}

#[test]
fn a_storm_is_never_lost() {
    // 500 OOM kills in 100 containers within a minute; tight rate limit and few series kept.
    let config = EngineConfig {
        max_event_series: 16,
        ..rate_limited(3, 5)
    };
    let mut engine = engine_with(config);
    let mut sent = Vec::new();
    for i in 0..500_u64 {
        let secs = i / 10;
        sent.extend(engine.observe(&oom_in(secs, (i % 100) as usize), at(secs)));
    }
    for secs in (60..3000).step_by(5) {
        sent.extend(engine.tick(at(secs)));
    }
    assert!(sent.len() < 500, "aggregated and limited: {}", sent.len());
    // The last count of each series plus what was folded in from forgotten series is all.
    let mut last_count = std::collections::HashMap::new();
    let mut series_started = 0;
    let mut elsewhere = 0;
    for event in &sent {
        if !event.series_update {
            series_started += 1;
            // A new series of a key replaces the old one: bank the old total.
            if let Some(previous) = last_count.insert(event.aggregation_key.clone(), 0) {
                elsewhere += previous;
            }
        }
        last_count.insert(event.aggregation_key.clone(), event.count);
        elsewhere += event.unreported_elsewhere;
    }
    let total: u64 = last_count.values().sum::<u64>() + elsewhere;
    assert_eq!(total, 500, "{series_started} series, {} events", sent.len());
    let stats = engine.event_stats(OOM_KILLING);
    assert_eq!(stats.unreported, 0, "everything folded into a sent Event");
    assert_eq!(stats.occurrences, 500);
    assert!(sent.iter().filter(|e| e.unreported_elsewhere > 0).all(|e| {
        e.message
            .contains("more OOMKilling problems elsewhere were not reported individually")
    }),);
}

#[test]
fn hung_task_repeats_never_emit() {
    let mut engine = engine_with(config());
    let mut emitted = engine.observe(&hung(0, 100, 0, None), at(0));
    for report in 1..20 {
        let secs = report * 120;
        emitted.extend(engine.observe(&hung(secs, 100, 0, None), at(secs)));
        emitted.extend(engine.tick(at(secs + 60)));
    }
    assert_eq!(emitted.len(), 1);
    assert_eq!(engine.condition(KERNEL_DEADLOCK).status, True);
}

#[test]
fn condition_and_reason_names_are_npd_compatible() {
    let catalog = detectors::catalog();
    let conditions: Vec<&str> = catalog.conditions.iter().map(|c| c.as_str()).collect();
    for npd in ["FDPressure", "KernelDeadlock", "KernelOops"] {
        assert!(conditions.contains(&npd), "{npd} in {conditions:?}");
    }
    assert_eq!(ConditionStatus::from_name("True"), True);
    assert_eq!(ConditionStatus::from_name("False"), False);
    assert_eq!(
        ConditionStatus::from_name("Unknown"),
        ConditionStatus::Unknown
    );
    let reasons: Vec<&str> = catalog.reasons.iter().map(|r| r.as_str()).collect();
    for npd in [
        "OOMKilling",
        "TaskHung",
        "TaskHungRecovered",
        "KernelOops",
        "KernelWarning",
        "FDExhausted",
    ] {
        assert!(reasons.contains(&npd), "{npd} in {reasons:?}");
    }
    let mut unique = reasons.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        reasons.len(),
        "two detectors declare one reason"
    );
}
