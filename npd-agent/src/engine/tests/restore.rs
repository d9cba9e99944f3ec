//! Conditions read back from the Node after a restart, and how each then clears.

use super::*;

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
