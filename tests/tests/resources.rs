//! Shared kernel resources, sampled by the agent: real zombies, a really full conntrack table,
//! this machine's task counts and pressure files, seen through `npd-agent event-dump` and
//! `check`. Every change to the machine is undone by a guard, also when a test fails.

use std::{net::UdpSocket, process::Command, time::Duration};

use npd_tests::{
    agent::{EventDump, check_report},
    machine::{MemoryCgroup, Sysctl, command, own_cgroup_id, require_root},
};
use serde_json::Value;

/// A process that forked `children` children which exited at once, and that never reaps
/// them; SIGKILLed and reaped on drop (its zombies then go to init, which reaps them).
#[derive(Debug)]
struct ZombieParent {
    pid: libc::pid_t,
}

/// Its name: with a space, to see it escaped in messages.
const ZOMBIE_PARENT_COMM: &str = "npd zombie mkr";

impl ZombieParent {
    fn spawn(children: usize) -> Self {
        let name = std::ffi::CString::new(ZOMBIE_PARENT_COMM).unwrap();
        // SAFETY: the child of this multi-threaded process calls only async-signal-safe
        // functions (prctl, fork, _exit, pause) before it dies.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above; `name` outlives the call.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                for _ in 0..children {
                    if libc::fork() == 0 {
                        libc::_exit(0);
                    }
                }
                loop {
                    libc::pause();
                }
            }
        }
        Self { pid }
    }

    /// Its children in state Z now.
    fn zombies(&self) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                let mut fields = rest.split_whitespace();
                fields.next() == Some("Z") && fields.next() == Some(&self.pid.to_string())
            })
            .count()
    }
}

impl Drop for ZombieParent {
    fn drop(&mut self) {
        // SAFETY: our own child, killed and reaped once.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

#[test]
fn a_parent_that_does_not_reap_500_children_is_named() {
    require_root("reads every process's /proc/<pid>/stat");
    let parent = ZombieParent::spawn(500);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while parent.zombies() < 500 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(parent.zombies(), 500, "the 500 children exited unreaped");
    // The first sample is at start; the next 15 s later.
    let mut dump = EventDump::start(&["--detectors", "zombies"]).expect("event-dump starts");
    let pid = u64::try_from(parent.pid).unwrap();
    dump.collect_until(Duration::from_secs(20), |seen| {
        seen.iter().any(|e| e["pid"] == pid)
    });
    let events = dump.for_pid(pid);
    assert_eq!(events.len(), 1, "one event for the parent: {:?}", dump.seen);
    let event = events[0];
    assert_eq!(event["kind"], "zombie_parent");
    assert_eq!(event["source"], "sampled");
    assert_eq!(event["comm"], ZOMBIE_PARENT_COMM);
    assert_eq!(event["zombies"], 500, "{event}");
    assert!(event["zombies_on_node"].as_u64().unwrap() >= 500, "{event}");
    assert_eq!(event["threshold"], 100);
    assert_eq!(
        event["cgroup_id"],
        own_cgroup_id().expect("own cgroup"),
        "attributed by the parent's cgroup (the test's own)"
    );
    // Reported once while it stays over the threshold.
    dump.collect_until(Duration::from_secs(17), |_| false);
    assert_eq!(dump.for_pid(pid).len(), 1, "{:?}", dump.seen);
    drop(parent);
}

#[test]
fn zombies_of_several_parents_in_one_pod_are_summed_for_the_pod() {
    require_root("creates a cgroup and reads every process's /proc/<pid>/stat");
    const UID: &str = "0a1b2c3d-0000-4000-8000-00000000beef";
    let container = "d".repeat(64);
    let cgroup = MemoryCgroup::create(
        &format!("kubepods/besteffort/pod{UID}/{container}"),
        64 << 20,
    )
    .expect("pod-shaped memory cgroup");
    // 3 x 40: each parent under the threshold (100), the pod over it.
    let parents: Vec<ZombieParent> = (0..3).map(|_| ZombieParent::spawn(40)).collect();
    for parent in &parents {
        std::fs::write(cgroup.procs_file(), parent.pid.to_string()).expect("into the pod");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while parents.iter().map(ZombieParent::zombies).sum::<usize>() < 120
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut dump = EventDump::start(&["--detectors", "zombies"]).expect("event-dump starts");
    let in_pod = |e: &Value| e["kind"] == "zombies_in_pod";
    dump.collect_until(Duration::from_secs(20), |seen| seen.iter().any(in_pod));
    let events: Vec<&Value> = dump.seen.iter().filter(|e| in_pod(e)).collect();
    assert_eq!(events.len(), 1, "one event for the pod: {:?}", dump.seen);
    let event = events[0];
    assert_eq!(event["zombies"], 120, "{event}");
    assert_eq!(event["parents"], 3, "{event}");
    assert_eq!(event["largest"], 40, "{event}");
    assert_eq!(event["attribution"]["pod"]["uid"], UID, "{event}");
    assert_eq!(
        event["attribution"]["pod"]["container_id"],
        container.as_str(),
        "{event}"
    );
    assert!(
        dump.for_pid(u64::try_from(parents[0].pid).unwrap())
            .iter()
            .chain(dump.for_pid(u64::try_from(parents[1].pid).unwrap()).iter())
            .all(|e| e["kind"] != "zombie_parent"),
        "no parent is over the threshold alone: {:?}",
        dump.seen
    );
    // The parents die first, so the cgroup can go.
    drop(parents);
    drop(cgroup);
}

/// An nftables table that makes the kernel track connections in the host's network
/// namespace (without a rule that needs it, nf_conntrack is idle: `entries` stays 0);
/// deleted on drop.
#[derive(Debug)]
struct ConntrackRule;

const NFT_TABLE: &str = "npd_conntrack_test";

impl ConntrackRule {
    fn add() -> Self {
        command("nft", &["--version"]).expect(
            "nft (Debian's nftables package) makes the kernel track connections: apt-get \
             install nftables",
        );
        let _ = command("nft", &["delete", "table", "inet", NFT_TABLE]);
        // A file, as `command` passes no stdin.
        let file = std::env::temp_dir().join(format!("{NFT_TABLE}-{}.nft", std::process::id()));
        std::fs::write(
            &file,
            format!(
                "table inet {NFT_TABLE} {{\n  chain out {{\n    type filter hook output \
                 priority 0; policy accept;\n    ct state new counter\n  }}\n}}\n"
            ),
        )
        .expect("write the ruleset");
        let loaded = command("nft", &["-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        let rule = Self;
        loaded.expect("the nftables table loads");
        rule
    }
}

impl Drop for ConntrackRule {
    fn drop(&mut self) {
        if let Err(err) = command("nft", &["delete", "table", "inet", NFT_TABLE]) {
            eprintln!("WARNING: could not delete nftables table {NFT_TABLE}: {err}");
        }
    }
}

/// New UDP flows from loopback to loopback, one conntrack entry each (unreplied: they
/// expire after `nf_conntrack_udp_timeout`, 30 s).
fn udp_flows(count: u16) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    for port in 0..count {
        let _ = socket.send_to(b"npd", ("127.0.0.1", 40000 + port));
    }
}

fn entries() -> u64 {
    let stat = std::fs::read_to_string("/proc/1/net/stat/nf_conntrack").unwrap_or_default();
    stat.lines()
        .nth(1)
        .and_then(|row| row.split_whitespace().next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

#[test]
fn a_full_conntrack_table_is_conntrack_full() {
    require_root("loads an nftables table and lowers net.netfilter.nf_conntrack_max");
    let rule = ConntrackRule::add();
    let mut dump = EventDump::start(&["--detectors", "conntrack"]).expect("event-dump starts");
    // A limit just above what the host tracks now, then flows until it is full.
    let before = entries();
    let limit = before + 200;
    let max = Sysctl::set(
        "/proc/sys/net/netfilter/nf_conntrack_max",
        &limit.to_string(),
    )
    .expect("lower nf_conntrack_max");
    udp_flows(260);
    let filled = entries();
    assert!(
        filled * 100 >= limit * 90,
        "the table filled: {filled} of {limit} (was {before}, max {})",
        max.original()
    );
    let full = |e: &Value| e["kind"] == "conntrack_full";
    dump.collect_until(Duration::from_secs(15), |seen| seen.iter().any(full));
    let event = dump
        .seen
        .iter()
        .find(|e| full(e))
        .unwrap_or_else(|| panic!("no conntrack_full event: {:?}", dump.seen));
    assert_eq!(event["max"], limit, "{event}");
    assert!(event["percent"].as_f64().unwrap() >= 90.0, "{event}");
    assert!(
        event["entries"].as_u64().unwrap() >= limit * 9 / 10,
        "{event}"
    );
    assert_eq!(event["source"], "sampled");
    drop(max);
    drop(rule);
}

#[test]
fn this_machines_task_counts_are_read() {
    require_root("event-dump loads the eBPF object");
    let mut dump = EventDump::start(&["--detectors", "pids"]).expect("event-dump starts");
    let limits = |e: &Value| e["kind"] == "task_limits";
    dump.collect_until(Duration::from_secs(5), |seen| seen.iter().any(limits));
    let event = dump
        .seen
        .iter()
        .find(|e| limits(e))
        .unwrap_or_else(|| panic!("no first reading: {:?}", dump.seen));
    let read = |path: &str| -> u64 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(event["pid_max"], read("/proc/sys/kernel/pid_max"));
    assert_eq!(event["threads_max"], read("/proc/sys/kernel/threads-max"));
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap();
    let tasks_now: u64 = loadavg
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let tasks = event["tasks"].as_u64().unwrap();
    assert!(
        tasks.abs_diff(tasks_now) < 200,
        "tasks {tasks} vs /proc/loadavg's {tasks_now} a moment later"
    );
    assert_eq!(
        event["near"],
        serde_json::json!([]),
        "this machine is far from its limits"
    );
}

#[test]
fn check_says_where_pressure_comes_from() {
    let (_, report) = check_report();
    let detector = |name: &str| -> Value {
        report["detectors"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["detector"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("check lists no {name}: {report:#}"))
    };
    let pressure = detector("pressure");
    assert_eq!(pressure["active"], "sampled", "{pressure:#}");
    let target = pressure["attempts"][0]["target"].as_str().unwrap();
    assert!(
        target.contains("/proc/pressure/{memory,io,cpu}"),
        "{target}"
    );
    let notes = pressure["notes"].to_string();
    let v1 = !Command::new("stat")
        .args(["-fc", "%T", "/sys/fs/cgroup"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("cgroup2"))
        .unwrap_or(false);
    assert_eq!(v1, notes.contains("cgroups are v1"), "{notes}");
    for name in ["conntrack", "zombies", "pids"] {
        assert_eq!(detector(name)["active"], "sampled");
    }
    // No kernel hook sees a refused fork here: `check` says why, and what sees it instead.
    let pids_notes = detector("pids")["notes"].to_string();
    for part in [
        "fork/clone failing with EAGAIN is not hooked",
        "pids_can_fork",
        "pids.events",
    ] {
        assert!(pids_notes.contains(part), "{part:?} in {pids_notes}");
    }
}
