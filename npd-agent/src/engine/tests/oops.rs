//! KernelOops: True until the node reboots; problems the kernel counted before npd started.

use super::*;

fn oops_condition(status: ConditionStatus, since: u64) -> Check {
    condition_is(
        KERNEL_OOPS_CONDITION,
        status,
        since,
        ["KernelOops", "NoKernelOops"],
    )
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
