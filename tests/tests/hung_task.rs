//! Hung task, end to end: a child writes to a frozen ext4 filesystem and sits in D state;
//! khungtaskd reports it (with the timeout lowered to 2 s) and npd must name it with the
//! kernel stack of the freeze wait, tell repeats from the first report, and see it recover
//! after the thaw.

use std::time::Duration;

use npd_tests::{
    agent::{EventDump, Provoked},
    machine::{FrozenFilesystem, Sysctl, require_root},
};
use serde_json::Value;

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");

#[test]
fn a_task_blocked_on_a_frozen_filesystem_is_reported_then_recovers() {
    require_root("loads eBPF programs, mounts a loop device, lowers hung_task_timeout_secs");
    let mut dump = EventDump::start(&["--detectors", "hung_task"]).expect("event-dump starts");
    // Order matters for cleanup: the filesystem guard drops (thaws) before the sysctl guard.
    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let mut fs = FrozenFilesystem::create().expect("frozen loop-mounted ext4");
    let mut writer = Provoked::blocked_writer(PROVOKE, &fs, "blocked", 8).expect("writer starts");
    let pid = writer.pid;

    let hung = |seen: &[Value]| {
        seen.iter()
            .filter(|e| e["tid"] == pid && e["kind"] == "hung_task")
            .count()
    };
    // khungtaskd checks every 2 s and reports a task blocked longer than 2 s: expect the
    // first report within ~4 s and a repeat one check later.
    dump.collect_until(Duration::from_secs(15), |seen| hung(seen) >= 2);
    fs.thaw().expect("thaw");
    let line = writer.next_line();
    assert!(
        line.contains("written"),
        "the write completes after the thaw: {line}"
    );
    dump.collect_until(Duration::from_secs(5), |seen| {
        seen.iter()
            .any(|e| e["tid"] == pid && e["kind"] == "hung_task_recovered")
    });
    let _ = writer.child.kill();
    let _ = writer.child.wait();

    let events = dump.for_pid(pid);
    let reports: Vec<&&Value> = events.iter().filter(|e| e["kind"] == "hung_task").collect();
    assert!(reports.len() >= 2, "first report and a repeat: {events:#?}");
    let first = reports[0];
    assert_eq!(first["comm"], "npd-provoke");
    assert_eq!(first["tid"], pid);
    assert_eq!(first["first_seen"], true);
    assert_eq!(first["repeat"], 1);
    assert_eq!(reports[1]["first_seen"], false);
    assert_eq!(reports[1]["repeat"], 2);
    assert_eq!(reports[1]["first_seen_ns"], first["first_seen_ns"]);
    let stack: Vec<&str> = first["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        stack.iter().any(|f| f.starts_with("percpu_rwsem_wait")),
        "the stack shows the freeze wait: {stack:?}"
    );
    assert!(first["cgroup_id"].as_u64().unwrap() > 0);
    let recovered = events
        .iter()
        .find(|e| e["kind"] == "hung_task_recovered")
        .unwrap_or_else(|| panic!("no recovery after the thaw: {events:#?}"));
    assert_eq!(
        recovered["how"], "running",
        "the writer sleeps on after the write"
    );
    assert!(recovered["reports"].as_u64().unwrap() >= 2);
}
