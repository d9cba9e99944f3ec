//! The agent's command line against this machine's kernel: `check`, `event-dump` exits, and
//! the error a person gets without privileges.

use std::{os::unix::process::CommandExt, process::Command, time::Instant};

use npd_tests::{
    agent::{active_hook, agent_bin, check_report},
    machine::require_root,
};

#[test]
fn check_reports_every_item_and_the_hook_of_each_detector() {
    require_root("loads eBPF programs");
    let (status, report) = check_report();
    assert!(status.success(), "check failed on this machine: {report:#}");
    assert_eq!(report["ok"], true);
    let item = |name: &str| {
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` item: {report:#}"))
            .clone()
    };
    for required in ["kernel", "btf", "privileges", "ring buffer", "tracefs"] {
        assert_eq!(item(required)["ok"], true, "{required}: {report:#}");
    }
    // Present whatever the answer: on this machine fentry is refused, elsewhere allowed.
    assert!(item("fentry")["detail"].as_str().is_some());
    assert!(item("tp_btf")["detail"].as_str().is_some());
    let fd = report["detectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["detector"] == "fd")
        .expect("fd detector reported");
    // fexit where the kernel allows it, its tracepoints elsewhere; the same on every run
    // (the fd tests expect their events from it).
    assert!(
        fd["active"] == "fexit" || fd["active"] == "tracepoint",
        "fd detector's hook: {fd:#}"
    );
    assert_eq!(fd["active"], active_hook("fd"), "{fd:#}");
}

#[test]
fn event_dump_exits_zero_at_its_timeout() {
    require_root("loads eBPF programs");
    let start = Instant::now();
    let out = Command::new(agent_bin())
        .args(["event-dump", "--timeout", "1", "--detectors", "fd"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed().as_secs_f64() >= 1.0);
    // stderr is a pipe here, as under `kubectl logs`: log lines, but no ANSI escapes.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "no log lines to check: {stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in piped logs: {stderr:?}"
    );
}

#[test]
fn without_privileges_the_agent_says_what_is_missing() {
    let out = Command::new(agent_bin())
        .args(["event-dump", "--timeout", "1"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("root"),
        "unhelpful error: {stderr}"
    );
}

#[test]
fn bad_arguments_are_rejected_with_the_allowed_values() {
    let out = Command::new(agent_bin())
        .args(["event-dump", "--format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("json") && stderr.contains("table"),
        "{stderr}"
    );
    let out = Command::new(agent_bin())
        .args(["run", "--ring-buffer-bytes", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}
