//! Events over time: repeats aggregated into series, the per-reason rate limit, the bound on
//! series kept (a storm is never lost).

use super::*;

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
