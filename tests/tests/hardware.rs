//! Hardware errors on this machine: no hardware error can be raised here (no EDAC driver to
//! fire `ras:mc_event`, no MCE support, no memory-failure or AER config), so these tests check
//! what can be: the detector attaches every RAS tracepoint the kernel has and `check` names
//! each one it could not with the reason, the agent streams with it, and a reporting agent
//! puts both of its conditions on the Node, False with their healthy reasons. Real errors are
//! injected under `cargo xtask vm-test` (Debian's kernel: a poisoned page, machine checks).

use std::{path::Path, time::Duration};

use npd_tests::{
    agent::{EventDump, check_report, wait_for},
    machine::require_root,
    reporting::{cluster_with_node, condition, start_reporting_agent},
};
use serde_json::Value;

/// Every tracepoint the detector tries, as `check` names them.
const HOOKS: [&str; 6] = [
    "mce:mce_record",
    "ras:mc_event",
    "ras:memory_failure_event",
    "ras:aer_event",
    "ras:arm_event",
    "ras:non_standard_event",
];

/// Whether this kernel has the tracepoint (tracefs is mounted by `check` if it was not).
fn kernel_has(hook: &str) -> bool {
    let (category, name) = hook.split_once(':').unwrap();
    Path::new("/sys/kernel/tracing/events")
        .join(category)
        .join(name)
        .is_dir()
}

fn hardware_entry(report: &Value) -> Value {
    report["detectors"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["detector"] == "hardware")
        .cloned()
        .unwrap_or_else(|| panic!("check has no hardware detector: {report:#}"))
}

#[test]
fn check_lists_what_attached_and_what_this_kernel_lacks() {
    require_root("attaching tracepoints");
    let (_, report) = check_report();
    let hardware = hardware_entry(&report);
    assert_eq!(hardware["active"], "tracepoint", "{hardware:#}");
    let target = hardware["attempts"][0]["target"]
        .as_str()
        .unwrap_or_default();
    let notes: Vec<&str> = hardware["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let missing = notes
        .iter()
        .find_map(|n| n.strip_prefix("not attached: "))
        .unwrap_or_default();
    for hook in HOOKS {
        if kernel_has(hook) {
            assert!(
                target.contains(hook),
                "{hook} exists here but is not attached: {hardware:#}"
            );
            assert!(
                !missing.contains(hook),
                "{hook} listed missing: {hardware:#}"
            );
        } else {
            assert!(
                missing.contains(&format!(
                    "{hook} (tracepoint {hook} does not exist on this kernel)"
                )),
                "{hook} is absent here; check must say so: {hardware:#}"
            );
        }
    }
    // What the notes (KERNEL-AND-TOOLCHAIN, NODE-PROBLEMS) say of this machine's kernel.
    assert!(
        kernel_has("ras:mc_event") && target.contains("ras:mc_event"),
        "{hardware:#}"
    );
    assert!(
        !kernel_has("mce:mce_record") && missing.contains("mce:mce_record"),
        "{hardware:#}"
    );
}

#[test]
fn the_agent_streams_with_the_detector_and_reports_nothing_unprovoked() {
    require_root("attaching tracepoints");
    let mut dump = EventDump::start(&["--detectors", "hardware"]).expect("event-dump starts");
    let log = dump.stderr();
    assert!(
        log.contains("hardware"),
        "the agent names the detector's hooks: {log}"
    );
    // No hardware error happens here: nothing to report, and the agent keeps running.
    let seen = dump.collect_until(Duration::from_secs(3), |events| !events.is_empty());
    assert!(seen.is_empty(), "unprovoked hardware events: {seen:?}");
}

const NODE: &str = "npd-hardware-node";

#[test]
fn both_conditions_are_on_the_node_and_healthy() {
    require_root("attaching tracepoints");
    let cluster = cluster_with_node(NODE);
    let agent = start_reporting_agent(&cluster, NODE, &["--detectors", "hardware"]);
    for (kind, reason) in [
        ("CperHardwareErrorFatal", "CperHardwareHasNoFatalError"),
        (
            "FrequentCorrectableMemoryErrors",
            "NoFrequentCorrectableMemoryErrors",
        ),
    ] {
        let found = wait_for(Duration::from_secs(15), kind, || {
            condition(&cluster, NODE, kind).filter(|c| c["status"] == "False")
        })
        .unwrap();
        assert_eq!(found["reason"], reason, "{found:#}");
    }
    let _ = agent.stop();
}
