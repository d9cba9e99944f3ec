//! The fallback hooks, on this kernel where the preferred ones work: `--fallback-hooks-only`
//! attaches only what a kernel without tp_btf or fentry would get (classic tracepoints with
//! offsets from their format files, /proc for what the record lacks), and the same real
//! problems must still be reported.

use std::{os::unix::process::ExitStatusExt, time::Duration};

use npd_tests::{
    agent::{EventDump, Provoked},
    machine::{FrozenFilesystem, MemoryCgroup, Sysctl, require_root},
};
use serde_json::Value;

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");

#[test]
fn hung_task_through_the_classic_tracepoint() {
    require_root("loads eBPF programs, mounts a loop device, lowers hung_task_timeout_secs");
    let mut dump = EventDump::start(&["--detectors", "hung_task", "--fallback-hooks-only"])
        .expect("event-dump starts");
    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let mut fs = FrozenFilesystem::create().expect("frozen loop-mounted ext4");
    let mut writer = Provoked::blocked_writer(PROVOKE, &fs, "blocked", 5).expect("writer starts");
    let pid = writer.pid;
    dump.collect_until(Duration::from_secs(15), |seen| {
        seen.iter()
            .any(|e| e["tid"] == pid && e["kind"] == "hung_task")
    });
    fs.thaw().unwrap();
    let _ = writer.child.kill();
    let _ = writer.child.wait();

    let events = dump.for_pid(pid);
    let hang = events
        .iter()
        .find(|e| e["kind"] == "hung_task")
        .unwrap_or_else(|| panic!("no hung_task through the tracepoint: {:#?}", dump.seen));
    assert_eq!(hang["source"], "tracepoint");
    assert_eq!(
        hang["comm"], "npd-provoke",
        "comm from the __data_loc field"
    );
    assert_eq!(hang["pid"], pid, "the process filled in from /proc");
    assert_eq!(hang["stack_source"], "procfs");
    let stack: Vec<&str> = hang["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        stack.iter().any(|f| f.starts_with("percpu_rwsem_wait")),
        "/proc/PID/stack shows the freeze wait: {stack:?}"
    );
    assert!(
        hang["cgroup_id"].as_u64().unwrap() > 0,
        "cgroup from /proc: {hang}"
    );
}

#[test]
fn oom_kill_through_the_classic_tracepoint() {
    require_root("loads eBPF programs and creates a memory cgroup");
    let mut dump = EventDump::start(&["--detectors", "oom", "--fallback-hooks-only"])
        .expect("event-dump starts");
    let limit: u64 = 64 << 20;
    let cgroup = MemoryCgroup::create(
        &format!("npd-test-oom-fallback-{}", std::process::id()),
        limit,
    )
    .expect("memory cgroup");
    let mut child = Provoked::oom_in(PROVOKE, &cgroup).expect("allocator starts");
    let pid = child.pid;
    let status = child.child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    dump.collect_until(Duration::from_secs(10), |seen| {
        seen.iter().any(|e| e["tid"] == pid)
    });
    let events: Vec<&Value> = dump.seen.iter().filter(|e| e["tid"] == pid).collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    let kill = events[0];
    assert_eq!(kill["kind"], "oom_kill");
    assert_eq!(kill["source"], "tracepoint");
    assert_eq!(
        kill["comm"], "npd-provoke",
        "comm from the __data_loc field"
    );
    // This kernel's format file has the memory fields (6.5+): read at their offsets.
    let rss_kb: u64 = ["anon_rss_kb", "file_rss_kb", "shmem_rss_kb"]
        .iter()
        .map(|f| {
            kill[f]
                .as_u64()
                .expect("memory fields from the format file")
        })
        .sum();
    assert!(rss_kb > limit / 1024 * 3 / 4, "{kill:#}");
    assert_eq!(kill["scope"], "memcg", "from the trigger's stack: {kill:#}");
    assert_eq!(kill["trigger"]["pid"], pid);
    // The victim's cgroup is read from /proc after the kill: it may be lost to the reaper,
    // which is why this is the last resort; say which it was.
    assert!(
        ["procfs", "unknown"].contains(&kill["cgroup_source"].as_str().unwrap()),
        "{kill:#}"
    );
}
