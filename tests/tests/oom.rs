//! OOM kill, end to end: a child in a fresh memory cgroup limited to 64 MiB allocates until
//! the kernel kills it; npd must report that child as the victim with its RSS near the limit,
//! the test cgroup's id read in the kernel, and a memory-cgroup scope.

use std::{os::unix::process::ExitStatusExt, time::Duration};

use npd_tests::{
    agent::{EventDump, Provoked, assert_attributed_to_container},
    machine::{MemoryCgroup, require_root},
};

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");
const LIMIT: u64 = 64 << 20;

#[test]
fn a_process_killed_in_a_memory_cgroup_is_reported_with_its_cgroup() {
    require_root("loads eBPF programs and creates a memory cgroup");
    let mut dump = EventDump::start(&["--detectors", "oom"]).expect("event-dump starts");
    let name = format!("npd-test-oom-{}", std::process::id());
    let cgroup = MemoryCgroup::create(&name, LIMIT).expect("memory cgroup");
    let mut child = Provoked::oom_in(PROVOKE, &cgroup).expect("allocator starts");
    let pid = child.pid;
    let status = child.child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the OOM killer killed it: {status}"
    );

    dump.collect_until(Duration::from_secs(10), |seen| {
        seen.iter().any(|e| e["pid"] == pid)
    });
    let events = dump.for_pid(pid);
    assert_eq!(events.len(), 1, "one oom_kill for the victim: {events:#?}");
    let event = events[0];
    assert_eq!(event["kind"], "oom_kill");
    assert_eq!(event["comm"], "npd-provoke");
    assert_eq!(
        event["cgroup_id"],
        cgroup.id().unwrap(),
        "the test cgroup, read in the kernel"
    );
    assert_eq!(event["cgroup_source"], "kernel");
    assert_eq!(event["scope"], "memcg");
    let path = format!("/{name}");
    assert_eq!(event["attribution"]["cgroup"], path.as_str(), "{event:#}");
    assert_eq!(
        event["memcg"],
        path.as_str(),
        "the cgroup that hit its limit: {event:#}"
    );
    assert_eq!(
        event["memcg_limit_kb"],
        LIMIT / 1024,
        "its limit, read in the kernel: {event:#}"
    );
    let rss_kb = ["anon_rss_kb", "file_rss_kb", "shmem_rss_kb"]
        .iter()
        .map(|f| event[f].as_u64().expect("RSS fields present"))
        .sum::<u64>();
    let limit_kb = LIMIT / 1024;
    assert!(
        rss_kb > limit_kb * 3 / 4 && rss_kb <= limit_kb + 8 * 1024,
        "RSS {rss_kb} KiB near the {limit_kb} KiB limit: {event:#}"
    );
    assert_eq!(event["trigger"]["pid"], pid, "it ran the OOM killer itself");
    let trigger_stack = event["trigger_stack"].as_array().unwrap();
    assert!(
        trigger_stack
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("mem_cgroup_out_of_memory")),
        "{trigger_stack:?}"
    );
    assert!(
        !trigger_stack[0].as_str().unwrap().starts_with("bpf_"),
        "npd's own frames are trimmed: {trigger_stack:?}"
    );
}

/// Containers that die within their first second, one after another, as a crash-looping
/// pod's do: each cgroup is created after the agent last looked at the hierarchy and removed
/// as soon as its process is gone, so only the path the kernel read at the kill can name the
/// pod (the agent rescans the hierarchy at most every 2 s, and these are gone by then).
#[test]
fn containers_killed_in_their_first_second_are_attributed_to_their_pods() {
    require_root("loads eBPF programs and creates memory cgroups");
    let mut dump = EventDump::start(&["--detectors", "oom"]).expect("event-dump starts");
    let prefix = format!("npd-test-oom-early-{}", std::process::id());
    for attempt in 0..3_u32 {
        let uid = format!("0000000{attempt}-1111-2222-3333-444444444444");
        let container = format!("{attempt:x}").repeat(64);
        let relative = format!("{prefix}/kubepods/burstable/pod{uid}/{container}");
        let cgroup = MemoryCgroup::create(&relative, LIMIT).expect("memory cgroup");
        let mut child = Provoked::oom_in(PROVOKE, &cgroup).expect("allocator starts");
        let pid = child.pid;
        let status = child.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "OOM-killed: {status}");
        // Gone with its container, as the runtime removes it.
        drop(cgroup);

        dump.collect_until(Duration::from_secs(10), |seen| {
            seen.iter().any(|e| e["pid"] == pid)
        });
        let events = dump.for_pid(pid);
        assert_eq!(events.len(), 1, "one oom_kill for the victim: {events:#?}");
        assert_attributed_to_container(events[0], &format!("/{relative}"), &uid, &container);
        // The container's cgroup hit its limit; gone, it is named from the kernel's reading.
        assert_eq!(events[0]["memcg"], format!("/{relative}").as_str());
        assert_eq!(events[0]["memcg_limit_kb"], LIMIT / 1024);
    }
}
