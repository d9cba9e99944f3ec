//! Events over time: repeats aggregated into series, the rate limit per reason and pod, the bound on
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

/// An OOM kill in container `c<container>` of pod `p<pod>` (its own uid and name).
fn oom_in_pod(secs: u64, pod: usize, container: usize) -> Event {
    let mut attribution = named_pod();
    if let Some(pod_ref) = &mut attribution.pod {
        pod_ref.uid = format!("uid-{pod}");
        pod_ref.name = Some(format!("p{pod}"));
        pod_ref.container = Some(format!("c{container}"));
    }
    oom(secs, 100, Some(attribution))
}

#[test]
fn each_pod_has_its_own_event_budget() {
    let steps: Vec<Step> = vec![
        // Burst of 2: pod 1 spends its own budget on two containers...
        (
            0,
            Input::ev(oom_in_pod(0, 1, 1)),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        (
            0,
            Input::ev(oom_in_pod(0, 1, 2)),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        (0, Input::ev(oom_in_pod(0, 1, 3)), NONE, vec![]),
        (0, Input::ev(oom_in_pod(0, 1, 4)), NONE, vec![]),
        // ...which leaves pod 2's and the node's untouched.
        (
            0,
            Input::ev(oom_in_pod(0, 2, 1)),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        (
            0,
            Input::ev(oom(0, 7, Some(unit()))),
            &[(OOM_KILLING, 1, false)],
            vec![],
        ),
        // Pod 1's held-back series go out as its own budget refills, oldest first.
        (10, Input::Tick, &[(OOM_KILLING, 1, false)], vec![]),
        (20, Input::Tick, &[(OOM_KILLING, 1, false)], vec![]),
    ];
    let mut engine = engine_with(rate_limited(2, 10));
    run("budget per pod", &mut engine, steps);
    assert_eq!(engine.event_stats(OOM_KILLING).sent, 6);
}

#[test]
fn many_pods_stay_under_the_node_ceiling() {
    // Burst 2 per pod, 4 budgets' worth node-wide: 8 Events at once, whatever the pods.
    let mut engine = engine_with(rate_limited(2, 100));
    let mut sent = 0;
    for pod in 0..10 {
        for container in 0..2 {
            sent += engine.observe(&oom_in_pod(0, pod, container), at(0)).len();
        }
    }
    assert_eq!(sent, 8);
    // The ceiling refills four times as fast as a pod's budget: one per 25 s.
    assert_eq!(engine.tick(at(24)).len(), 0);
    assert_eq!(engine.tick(at(25)).len(), 1);
}

#[test]
fn fd_failures_of_one_container_are_one_series_whatever_the_pid() {
    let in_pod = |secs, pid| {
        let mut event = fd(secs, pid, Errno::Emfile, 0, false);
        event.attribution = Some(named_pod());
        event
    };
    let steps: Vec<Step> = vec![
        (
            0,
            Input::ev(in_pod(0, 300)),
            &[(FD_EXHAUSTED, 1, false)],
            vec![],
        ),
        (1, Input::ev(in_pod(1, 301)), NONE, vec![]),
        (2, Input::ev(in_pod(2, 302)), NONE, vec![]),
        (60, Input::Tick, &[(FD_EXHAUSTED, 3, true)], vec![]),
        // Outside pods the pid is what tells processes apart: each its own series.
        (
            61,
            Input::ev(fd(61, 400, Errno::Emfile, 0, false)),
            &[(FD_EXHAUSTED, 1, false)],
            vec![],
        ),
        (
            62,
            Input::ev(fd(62, 401, Errno::Emfile, 0, false)),
            &[(FD_EXHAUSTED, 1, false)],
            vec![],
        ),
    ];
    run("fd series per container", &mut engine_with(config()), steps);
}

#[test]
fn a_storm_in_one_pod_evicts_its_own_backlog_first() {
    // Few series kept and a tight budget: pod 2's held-back series must survive pod 1's
    // storm of new containers, and reach the server intact once budgets refill.
    let config = EngineConfig {
        max_event_series: 4,
        ..rate_limited(1, 10)
    };
    let mut engine = engine_with(config);
    let mut sent = Vec::new();
    sent.extend(engine.observe(&oom_in_pod(0, 2, 0), at(0)));
    sent.extend(engine.observe(&oom_in_pod(0, 2, 1), at(0)));
    for container in 0..20 {
        sent.extend(engine.observe(&oom_in_pod(1, 1, container), at(1)));
    }
    for secs in (10..400).step_by(10) {
        sent.extend(engine.tick(at(secs)));
    }
    let pod2: Vec<_> = sent
        .iter()
        .filter(|e| e.aggregation_key.contains("uid-2/"))
        .collect();
    assert_eq!(pod2.len(), 2, "both of pod 2's series reported: {pod2:#?}");
    assert!(
        pod2.iter()
            .all(|e| e.unreported_elsewhere == 0 && e.count == 1)
    );
    let total: u64 = sent.iter().map(|e| e.count + e.unreported_elsewhere).sum();
    assert_eq!(
        total, 22,
        "nothing lost, pod 1's evicted series counted elsewhere"
    );
}
