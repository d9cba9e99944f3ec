//! FDPressure: the file table's water marks, and the hold after an ENFILE.

use super::*;

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
