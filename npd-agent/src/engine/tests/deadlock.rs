//! KernelDeadlock: hung tasks, their recovery, the recovery window, forgotten tasks.

use super::*;

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
