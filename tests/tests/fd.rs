//! fd exhaustion, end to end: real EMFILE/ENFILE failures from child processes, seen by the
//! real programs in this kernel through `npd-agent event-dump`.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use npd_tests::{
    agent::{EventDump, active_hook, assert_attributed_to_container, run_json},
    machine::{MemoryCgroup, Sysctl, own_cgroup_id, require_root},
};
use serde_json::Value;

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");
const WAIT: Duration = Duration::from_secs(10);

fn provoke(args: &[&str]) -> Value {
    run_json(Command::new(PROVOKE).args(args)).expect("the provoker runs")
}

/// Every syscall npd-provoke can make fail with EMFILE.
fn syscalls() -> Vec<&'static str> {
    let mut list = vec![
        "openat",
        "socket",
        "socketpair",
        "accept4",
        "dup",
        "fcntl",
        "pipe2",
        "eventfd2",
        "epoll_create1",
        "memfd_create",
        "inotify_init1",
        "timerfd_create",
        "pidfd_open",
    ];
    if cfg!(target_arch = "x86_64") {
        list.extend(["open", "creat", "pipe", "epoll_create"]);
    }
    list
}

#[test]
fn emfile_is_reported_with_the_failing_syscall() {
    require_root("loads eBPF programs");
    let hook = active_hook("fd");
    let mut dump = EventDump::start(&["--detectors", "fd"]).expect("event-dump starts");
    let cgroup_id = own_cgroup_id().expect("own cgroup id");
    let mut runs = Vec::new();
    for syscall in syscalls() {
        let result = provoke(&["emfile", "--limit", "24", "--syscall", syscall]);
        assert_eq!(
            result["ret"],
            -i64::from(libc::EMFILE),
            "{syscall} did not fail with EMFILE: {result}"
        );
        runs.push((syscall, result["pid"].as_u64().expect("pid")));
    }
    let pids: Vec<u64> = runs.iter().map(|(_, pid)| *pid).collect();
    dump.collect_until(WAIT, |seen| {
        pids.iter().all(|pid| seen.iter().any(|e| e["pid"] == *pid))
    });
    for (syscall, pid) in runs {
        let events = dump.for_pid(pid);
        assert_eq!(
            events.len(),
            1,
            "{syscall}: expected one event for pid {pid}: {events:?}"
        );
        let event = events[0];
        assert_eq!(event["kind"], "fd_exhausted");
        assert_eq!(event["errno"], "EMFILE");
        assert_eq!(event["syscall"], syscall, "{event}");
        assert_eq!(event["tid"], pid, "single-threaded: tid is pid");
        assert_eq!(event["comm"], "npd-provoke");
        assert_eq!(event["nofile_limit"], 24);
        assert_eq!(event["suppressed"], 0);
        assert_eq!(
            event["source"], hook,
            "the hook check reports for fd: {event}"
        );
        assert_eq!(
            event["cgroup_id"], cgroup_id,
            "cgroup of the failing process"
        );
        assert!(event["ts_ns"].as_u64().unwrap() > 0);
    }
}

/// A storm of failures is rate-limited in the kernel (one record at once, then at most one a
/// second per process), and every failure is still accounted for.
#[test]
fn storm_is_rate_limited_and_fully_accounted() {
    require_root("loads eBPF programs");
    let hook = active_hook("fd");
    let mut dump = EventDump::start(&["--detectors", "fd"]).expect("event-dump starts");
    // A million failures from two threads of one process, as fast as they go.
    let result = provoke(&[
        "storm",
        "--failures",
        "1000000",
        "--seconds",
        "30",
        "--threads",
        "2",
    ]);
    let pid = result["pid"].as_u64().unwrap();
    let failures = result["failures"].as_u64().unwrap();
    let seconds = result["seconds"].as_f64().unwrap();
    assert_eq!(
        failures, 1_000_000,
        "the storm made its million failures: {result}"
    );
    let accounted = |seen: &[Value]| -> u64 {
        seen.iter()
            .filter(|e| e["pid"] == pid)
            .map(|e| {
                let suppressed = e["suppressed"].as_u64().unwrap();
                if e["flushed"] == true {
                    suppressed
                } else {
                    suppressed + 1
                }
            })
            .sum()
    };
    // The tail folded after the last record arrives by the agent's sweep within ~2 s.
    dump.collect_until(WAIT, |seen| accounted(seen) >= failures);
    let events = dump.for_pid(pid);
    let records = events.iter().filter(|e| e["source"] == hook).count();
    assert_eq!(
        accounted(&dump.seen),
        failures,
        "every failure accounted exactly once: {events:?}"
    );
    // First failure at once, then at most one per second (+1 for a boundary race between
    // the two threads).
    let max_records = 1 + seconds.ceil() as usize + 1;
    assert!(
        (1..=max_records).contains(&records),
        "{records} kernel records for {failures} failures in {seconds} s: {events:?}"
    );
    assert_eq!(
        events[0]["suppressed"], 0,
        "the first failure is reported at once"
    );
}

#[test]
fn enfile_is_reported_when_the_system_file_table_is_full() {
    require_root("loads eBPF programs and lowers fs.file-max");
    let mut dump = EventDump::start(&["--detectors", "fd"]).expect("event-dump starts");
    let mut child = Command::new(PROVOKE)
        .args(["enfile", "--uid", "65534"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("provoker starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let result = {
        // Root is exempt from fs.file-max, so only the unprivileged provoker hits it; the
        // guard restores the limit right after, also if anything here fails.
        let _limit = Sysctl::set("/proc/sys/fs/file-max", "1").expect("lower fs.file-max");
        writeln!(child.stdin.take().unwrap(), "go").unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        child.wait().unwrap();
        serde_json::from_str::<Value>(line.trim()).expect("provoker result")
    };
    assert_eq!(result["ret"], -i64::from(libc::ENFILE), "{result}");
    let pid = result["pid"].as_u64().unwrap();
    dump.collect_until(WAIT, |seen| seen.iter().any(|e| e["pid"] == pid));
    let events = dump.for_pid(pid);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["errno"], "ENFILE");
    assert_eq!(events[0]["syscall"], "openat");
}

/// Containers that fail and exit at once, one after another, as a crash-looping pod's do:
/// each cgroup is created after the agent last looked at the hierarchy and removed as soon
/// as its process is gone, so only the path the kernel read at the failure can name the pod
/// (the agent rescans the hierarchy at most every 2 s, and these are gone by then). Found on
/// the one-node cluster: a pod's `npd-provoke emfile` got an Event on the Node only.
#[test]
fn failures_of_containers_gone_at_once_are_attributed_to_their_pods() {
    require_root("loads eBPF programs and creates memory cgroups");
    let mut dump = EventDump::start(&["--detectors", "fd"]).expect("event-dump starts");
    let prefix = format!("npd-test-fd-early-{}", std::process::id());
    for attempt in 0..3_u32 {
        let uid = format!("0000000{attempt}-5555-6666-7777-888888888888");
        let container = format!("{:x}", attempt + 10).repeat(64);
        let relative = format!("{prefix}/kubepods/besteffort/pod{uid}/{container}");
        let cgroup = MemoryCgroup::create(&relative, 64 << 20).expect("memory cgroup");
        let procs = cgroup.procs_file();
        let out = provoke(&[
            "emfile",
            "--limit",
            "16",
            "--cgroup-procs",
            procs.to_str().unwrap(),
        ]);
        let pid = out["pid"].as_u64().expect("the provoker's pid");
        // Gone with its container, as the runtime removes it.
        drop(cgroup);

        dump.collect_until(WAIT, |seen| {
            seen.iter()
                .any(|e| e["pid"] == pid && e["kind"] == "fd_exhausted")
        });
        let events = dump.for_pid(pid);
        assert_attributed_to_container(events[0], &format!("/{relative}"), &uid, &container);
    }
}
