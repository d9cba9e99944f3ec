//! The shipped configs parse to the defaults; settings, durations, and errors that name the key.

use std::path::Path;

use super::*;
use crate::{
    detectors::{fd::FD_PRESSURE, hung_task::KERNEL_DEADLOCK, oops::KERNEL_OOPS_CONDITION},
    engine::EngineConfig,
    remediation::TaintConfig,
};

fn parse(text: &str) -> Result<FileConfig, String> {
    let config = FileConfig::parse(Path::new("npd.yaml"), text).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[test]
fn the_shipped_default_config_parses_and_equals_the_defaults() {
    let text = include_str!("../../../deploy/base/config.yaml");
    let config = parse(text).expect("deploy/base/config.yaml is valid");
    assert_eq!(config.engine().unwrap(), EngineConfig::default());
    assert_eq!(config.detectors, None, "every detector runs by default");
    assert_eq!(parse("").unwrap(), FileConfig::default());
    assert_eq!(config.remediation(), None, "remediation is opt-in");
    let options = config.load_options(&ProbeFlags::default());
    let defaults = crate::probes::LoadOptions::default();
    assert_eq!(
        options.health, defaults.health,
        "documented daemons.* probe values"
    );
    assert_eq!(
        options.daemons, defaults.daemons,
        "documented daemons.* kernel values"
    );
    assert_eq!(
        options.resources, defaults.resources,
        "documented pids, podPids, conntrack, zombies, pressure values"
    );
    // Issue 17's conditions are listed with their names.
    for (key, name) in [
        ("ntpProblem", "NTPProblem"),
        ("pidExhaustion", "PIDExhaustion"),
    ] {
        assert_eq!(
            config.kubernetes.conditions.get(key).map(String::as_str),
            Some(name)
        );
    }
    // Its documented values are the defaults once enabled.
    let mut enabled = config.clone();
    enabled.remediation.taints.enabled = Some(true);
    let mut defaults = FileConfig::default();
    defaults.remediation.taints.enabled = Some(true);
    assert_eq!(enabled.remediation(), defaults.remediation());
    assert_eq!(
        defaults.remediation(),
        Some(TaintConfig {
            conditions: vec![KERNEL_DEADLOCK, KERNEL_OOPS_CONDITION],
            effect: TaintEffect::NoSchedule,
            max_unhealthy: MaxUnhealthy::Percent(10),
            dry_run: false,
            lease_namespace: "kube-system".into(),
            lease_name: "npd-taint-budget".into(),
            retry_interval: Duration::from_secs(30),
        })
    );
}

#[test]
fn the_remediation_overlay_config_parses_and_enables_a_dry_run() {
    let text = include_str!("../../../deploy/overlays/remediation/config.yaml");
    let config = parse(text).expect("the overlay's config.yaml is valid");
    let taints = config.remediation().expect("enabled");
    assert!(taints.dry_run, "the overlay starts in dry-run mode");
    assert_eq!(config.engine().unwrap(), EngineConfig::default());
}

#[test]
fn remediation_settings() {
    let config = parse(
        "remediation:\n  taints:\n    enabled: true\n    conditions: [FDPressure, \
         KernelDeadlock, FDPressure]\n    effect: NoExecute\n    maxUnhealthy: 3\n\
         kubernetes:\n  conditions:\n    fdPressure: NodeFDPressure\n",
    )
    .unwrap();
    let taints = config.remediation().unwrap();
    assert_eq!(taints.conditions, [FD_PRESSURE, KERNEL_DEADLOCK]);
    assert_eq!(taints.effect, TaintEffect::NoExecute);
    assert_eq!(taints.max_unhealthy, MaxUnhealthy::Nodes(3));
    assert_eq!(config.condition_name(FD_PRESSURE), "NodeFDPressure");
    let percent = parse("remediation:\n  taints:\n    maxUnhealthy: 25%\n").unwrap();
    assert_eq!(
        percent.remediation.taints.max_unhealthy,
        Some(MaxUnhealthy::Percent(25))
    );
    // A condition name that cannot be a taint key only matters once remediation is on.
    let spaced = "kubernetes:\n  conditions:\n    kernelDeadlock: Kernel Deadlock\n";
    assert!(parse(spaced).is_ok());
}

#[test]
fn durations() {
    assert_eq!(duration::parse("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(duration::parse("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(duration::parse("45s"), Ok(Duration::from_secs(45)));
    for bad in ["", "5", "m", "5x", "1.5m", "-3s"] {
        assert!(duration::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn daemon_settings_and_the_seeds_names() {
    let config = parse(
        "daemons:\n  runtimeEndpoints: [/run/k3s/containerd/containerd.sock]\n  \
         probeTimeout: 2s\n  watched: [kubelet, containerd]\n  restartWindow: 40s\n\
         kubernetes:\n  conditions:\n    containerRuntimeUnhealthy: ContainerdProblem\n  \
         reasons:\n    ContainerRuntimeIsHealthy: ContainerdIsUp\n    \
         ContainerdUnhealthy: ContainerdIsDown\n    DockerHung: DockerdHung\n",
    )
    .expect("the seed's names through the existing renaming");
    let options = config.load_options(&ProbeFlags::default());
    assert_eq!(
        options.health.runtime_endpoints,
        vec![PathBuf::from("/run/k3s/containerd/containerd.sock")]
    );
    assert_eq!(options.health.timeout, Duration::from_secs(2));
    assert_eq!(options.health.period, Duration::from_secs(10), "default");
    assert_eq!(options.daemons.watched, ["kubelet", "containerd"]);
    assert_eq!(options.daemons.restart_window, Duration::from_secs(40));
    assert_eq!(options.daemons.restart_threshold, 5, "default");
}

#[test]
fn errors_name_the_key_and_what_is_allowed() {
    let cases = [
        ("hungTask:\n  recoverWindow: 5m\n", "recoverWindow"),
        ("kubernetes:\n  heartbeat: 5\n", "kubernetes.heartbeat"),
        ("kubernetes:\n  heartbeat: fast\n", "kubernetes.heartbeat"),
        ("detectors: [fd, disk]\n", "detectors"),
        ("listen: not-an-address\n", "listen"),
        (
            "fdPressure:\n  lowWatermarkPercent: 95\n",
            "fdPressure.lowWatermarkPercent",
        ),
        (
            "fdPressure:\n  highWatermarkPercent: 120\n",
            "fdPressure.highWatermarkPercent",
        ),
        (
            "events:\n  rateLimit:\n    burst: 0\n",
            "events.rateLimit.burst",
        ),
        (
            "hungTask:\n  recoveryWindow: 0s\n",
            "hungTask.recoveryWindow",
        ),
        ("ringBufferBytes: 1000\n", "ringBufferBytes"),
        ("detectors: []\n", "detectors"),
        (
            "kubernetes:\n  reasons:\n    Oops: X\n",
            "kubernetes.reasons",
        ),
        (
            "kubernetes:\n  maxPendingEvents: 0\n",
            "kubernetes.maxPendingEvents",
        ),
        (
            "remediation:\n  taints:\n    maxUnhealthy: 0\n",
            "remediation.taints.maxUnhealthy",
        ),
        (
            "remediation:\n  taints:\n    maxUnhealthy: -2\n",
            "remediation.taints.maxUnhealthy",
        ),
        (
            "remediation:\n  taints:\n    maxUnhealthy: 150%\n",
            "remediation.taints.maxUnhealthy",
        ),
        (
            "remediation:\n  taints:\n    maxUnhealthy: 0.5\n",
            "remediation.taints.maxUnhealthy",
        ),
        (
            "remediation:\n  taints:\n    conditions: [Disk]\n",
            "remediation.taints.conditions",
        ),
        (
            "remediation:\n  taints:\n    conditions: []\n",
            "remediation.taints.conditions",
        ),
        (
            "remediation:\n  taints:\n    effect: Evict\n",
            "remediation.taints.effect",
        ),
        (
            "remediation:\n  taints:\n    retryInterval: 0s\n",
            "remediation.taints.retryInterval",
        ),
        (
            "remediation:\n  taints:\n    leaseName: Bad_Name\n",
            "remediation.taints.leaseName",
        ),
        (
            "remediation:\n  taints:\n    enable: true\n",
            "remediation.taints",
        ),
        (
            "remediation:\n  taints:\n    enabled: true\n\
             kubernetes:\n  conditions:\n    kernelDeadlock: Kernel Deadlock\n",
            "kubernetes.conditions.kernelDeadlock",
        ),
        (
            "kubernetes:\n  conditions:\n    kernelDeadlock: Ready\n",
            "kubernetes.conditions.kernelDeadlock",
        ),
        (
            "kubernetes:\n  conditions:\n    fdPressure: KernelOops\n",
            "kubernetes.conditions",
        ),
        (
            "kubernetes:\n  conditions:\n    diskPressure: Disk\n",
            "kubernetes.conditions.diskPressure",
        ),
        (
            "daemons:\n  watched: [/usr/bin/kubelet]\n",
            "daemons.watched",
        ),
        ("daemons:\n  watched: []\n", "daemons.watched"),
        (
            "daemons:\n  restartThreshold: 0\n",
            "daemons.restartThreshold",
        ),
        ("daemons:\n  probeTimeout: 0s\n", "daemons.probeTimeout"),
        (
            "daemons:\n  kubeletHealthz: https://127.0.0.1:10250/healthz\n",
            "daemons.kubeletHealthz",
        ),
        (
            "daemons:\n  runtimeEndpoints: []\n",
            "daemons.runtimeEndpoints",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).expect_err(text);
        assert!(
            err.contains(key),
            "{text:?}: the error should name `{key}`: {err}"
        );
    }
    // The unknown-key error lists what is allowed.
    let err = parse("hungTask:\n  recoverWindow: 5m\n").unwrap_err();
    assert!(err.contains("recoveryWindow"), "{err}");
    let err = parse("detectors: [fd, disk]\n").unwrap_err();
    assert!(err.contains("hung_task"), "{err}");
}

#[test]
fn resource_thresholds_resolve_over_the_defaults() {
    use crate::detectors::{
        ResourceOptions, Watermarks,
        pressure::{PressureOptions, Window},
    };
    let config = parse(
        "pids:\n  highWatermarkPercent: 95\n  lowWatermarkPercent: 85\npodPids:\n  \
         highWatermarkPercent: 75%\n  lowWatermarkPercent: \"60 %\"\nzombies:\n  threshold: 1\n\
         pressure:\n  window: 10s\n  memoryFullPercent: 2.5\n",
    )
    .unwrap();
    let defaults = ResourceOptions::default();
    assert_eq!(
        config.load_options(&ProbeFlags::default()).resources,
        ResourceOptions {
            pids: Watermarks {
                high_percent: 95.0,
                low_percent: 85.0
            },
            pod_pids: Watermarks {
                high_percent: 75.0,
                low_percent: 60.0
            },
            conntrack: defaults.conntrack,
            zombies: 1,
            pressure: PressureOptions {
                window: Window::Avg10,
                memory_full_percent: 2.5,
                ..defaults.pressure
            },
        }
    );
    // Any spelling of a window the kernel keeps.
    for (text, window) in [("60s", Window::Avg60), ("5m", Window::Avg300)] {
        let config = parse(&format!("pressure:\n  window: {text}\n")).unwrap();
        assert_eq!(config.resource_options().pressure.window, window, "{text}");
    }
}

#[test]
fn resource_threshold_errors_name_the_key_and_what_is_allowed() {
    // (file, the key named, what the message says)
    let cases = [
        (
            "pids:\n  highWatermarkPercent: 0\n",
            "pids.highWatermarkPercent",
            "must be above 0 and at most 100 (percent), not 0",
        ),
        (
            "conntrack:\n  highWatermarkPercent: 101\n",
            "conntrack.highWatermarkPercent",
            "not 101",
        ),
        (
            "podPids:\n  lowWatermarkPercent: -5\n",
            "podPids.lowWatermarkPercent",
            "not -5",
        ),
        (
            "pids:\n  lowWatermarkPercent: 90\n",
            "pids.lowWatermarkPercent",
            "(90 %) must be below pids.highWatermarkPercent (90 %), or the problem never clears",
        ),
        // A high-water mark under the default low one.
        (
            "conntrack:\n  highWatermarkPercent: 70\n",
            "conntrack.lowWatermarkPercent",
            "(80 %) must be below conntrack.highWatermarkPercent (70 %)",
        ),
        (
            "pids:\n  highWatermarkPercent: 90 percent\n",
            "pids.highWatermarkPercent",
            "`90 percent` is not a percentage; write a number of percent like 90 or \"90%\"",
        ),
        (
            "pids:\n  highWatermarkPercent: [90]\n",
            "pids.highWatermarkPercent",
            "expected a percentage",
        ),
        (
            "pressure:\n  memoryFullPercent: 150%\n",
            "pressure.memoryFullPercent",
            "not 150",
        ),
        (
            "pressure:\n  cpuSomePercent: 0\n",
            "pressure.cpuSomePercent",
            "must be above 0",
        ),
        (
            "pressure:\n  ioFullPercent: .nan\n",
            "pressure.ioFullPercent",
            "not NaN",
        ),
        (
            "pressure:\n  window: 2m\n",
            "pressure.window",
            "must be 10s, 1m or 5m, the windows the kernel averages PSI over, not 2m",
        ),
        (
            "pressure:\n  window: 60\n",
            "pressure.window",
            "has a number without a unit",
        ),
        (
            "pressure:\n  memoryPercent: 10\n",
            "pressure",
            "unknown field `memoryPercent`",
        ),
        (
            "zombies:\n  threshold: 0\n",
            "zombies.threshold",
            "must be at least 1",
        ),
        (
            "zombies:\n  threshold: -3\n",
            "zombies.threshold",
            "expected u64",
        ),
        (
            "zombies:\n  threshold: 50%\n",
            "zombies.threshold",
            "invalid type",
        ),
    ];
    for (text, key, problem) in cases {
        let err = parse(text).expect_err(text);
        assert!(
            err.contains(&format!("`{key}")) && err.contains(problem),
            "{text:?}: the error should name `{key}` and say {problem:?}: {err}"
        );
    }
}
