//! What operators meet npd through, proven with a real Prometheus (Debian's 2.42): the
//! shipped alert rules (promtool's checks and unit tests, and the real server loading them),
//! the PrometheusRule wrapping them, the dashboard's queries, and /metrics as Prometheus
//! stores it: NPD's `problem_counter` and `problem_gauge` under NPD's names, the counter at 0
//! before the first problem, the FDExhausted alert firing after a real fd exhaustion, and a
//! real hung task's TaskHung alert firing and KernelDeadlock condition alert pending.

use std::{collections::BTreeSet, process::Command, time::Duration};

use npd_tests::{
    agent::{AgentProcess, Provoked, run_json, wait_for},
    machine::{FrozenFilesystem, Sysctl, require_root},
    prometheus::{Prometheus, http_get, monitoring_dir, promtool},
    reporting::repo_root,
};
use serde_json::Value;

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");
const RULES: &str = "npd-rules.yaml";
const WAIT: Duration = Duration::from_secs(30);
/// Prometheus 2.42's scrape Accept header.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/\
                                 openmetrics-text;version=0.0.1;q=0.75,text/plain;\
                                 version=0.0.4;q=0.5,*/*;q=0.1";

fn alert_names() -> Vec<String> {
    let rules = std::fs::read_to_string(monitoring_dir().join(RULES)).expect("rules file");
    rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn promtool_checks_the_shipped_rules() {
    let out = promtool(&["check", "rules", RULES]).unwrap();
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alert_names().len())),
        "{out}"
    );
}

#[test]
fn every_alert_passes_its_unit_tests() {
    let tests = std::fs::read_to_string(monitoring_dir().join("rules-test.yaml")).unwrap();
    for alert in alert_names() {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "rules-test.yaml has no test in which {alert} fires"
        );
    }
    let out = promtool(&["test", "rules", "rules-test.yaml"]).unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
}

/// prometheusrule.yaml is npd-rules.yaml's groups under `spec:`, character for character.
#[test]
fn the_prometheus_rule_wraps_the_same_rules() {
    let rules = std::fs::read_to_string(monitoring_dir().join(RULES)).unwrap();
    let object = std::fs::read_to_string(monitoring_dir().join("prometheusrule.yaml")).unwrap();
    let groups = &rules[rules.find("\ngroups:").expect("groups in the rules file") + 1..];
    let spec = &object[object.find("\nspec:\n").expect("spec in the object") + 7..];
    let dedented: String = spec
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("  ").unwrap_or(line)))
        .collect();
    assert_eq!(
        dedented, groups,
        "prometheusrule.yaml's spec differs from npd-rules.yaml's groups"
    );
    assert!(object.contains("kind: PrometheusRule"));
}

/// The rules as the real server loads them: every alert has a summary, a description and a
/// runbook_url pointing at its section of the README.
#[test]
fn every_alert_has_a_summary_and_a_runbook_section() {
    let prometheus = Prometheus::start(&[], &[monitoring_dir().join(RULES)]).unwrap();
    let groups = prometheus.api("/api/v1/rules").unwrap()["groups"].clone();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut loaded = Vec::new();
    for rule in groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        let name = rule["name"].as_str().unwrap();
        loaded.push(name.to_owned());
        let annotations = &rule["annotations"];
        for key in ["summary", "description"] {
            assert!(
                annotations[key].as_str().is_some_and(|s| !s.is_empty()),
                "{name} has no {key}: {rule}"
            );
        }
        assert!(rule["labels"]["severity"].is_string(), "{name}: {rule}");
        assert_eq!(
            annotations["runbook_url"],
            format!("https://github.com/npd-dev/npd#{}", name.to_lowercase()),
            "{name}"
        );
        assert!(
            readme.contains(&format!("\n### {name}\n")),
            "README has no runbook section `### {name}`"
        );
    }
    loaded.sort();
    let mut shipped = alert_names();
    shipped.sort();
    assert_eq!(loaded, shipped);
}

/// Every PromQL expression of the dashboard, with Grafana's variables as Grafana would fill
/// them in (all nodes, a one-minute rate window, a one-hour range).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring_dir().join("npd-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    let mut queries = Vec::new();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            let filled = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$node", ".*");
            queries.push((panel["title"].as_str().unwrap().to_owned(), filled));
        }
    }
    assert!(queries.len() >= 10, "{queries:?}");
    queries
}

/// The first sample of a query's result: (labels, value).
fn first_sample(result: &Value) -> Option<(Value, f64)> {
    let sample = result.as_array()?.first()?;
    let value = sample["value"][1].as_str()?.parse().ok()?;
    Some((sample["metric"].clone(), value))
}

/// A real Prometheus with the shipped rules, scraping `agent`, once it has the target up.
fn scraping(agent: &AgentProcess) -> Prometheus {
    let prometheus = Prometheus::start(&[agent.http], &[monitoring_dir().join(RULES)]).unwrap();
    wait_for(WAIT, "the npd target up in Prometheus", || {
        let targets = prometheus.api("/api/v1/targets").ok()?;
        (targets["activeTargets"][0]["health"] == "up").then_some(())
    })
    .unwrap_or_else(|err| panic!("{err}: prometheus log:\n{}", prometheus.log()));
    prometheus
}

/// Waits until Prometheus has stored `series` at 0 for 3 scrapes, so that `increase()` sees
/// its rise.
fn at_zero_for_3_scrapes(prometheus: &Prometheus, series: &str) {
    wait_for(WAIT, &format!("{series} at 0 for 3 scrapes"), || {
        let result = prometheus
            .query(&format!("count_over_time({series}[1m]) >= 3"))
            .ok()?;
        first_sample(&result).map(|_| ())
    })
    .unwrap_or_else(|err| panic!("{err}: prometheus log:\n{}", prometheus.log()));
    let (labels, value) = first_sample(&prometheus.query(series).unwrap()).unwrap();
    assert_eq!(value, 0.0, "no problem yet: {labels}");
}

/// Whether `alerts` has `name` in `state` with these labels.
fn has_alert(alerts: &[Value], name: &str, labels: &[(&str, &str)], state: &str) -> bool {
    alerts.iter().any(|a| {
        a["labels"]["alertname"] == name
            && a["state"] == state
            && labels
                .iter()
                .all(|(key, value)| a["labels"][*key] == *value)
    })
}

/// Waits until Prometheus's value of `expr` (one series) is `value`.
fn wait_for_value(prometheus: &Prometheus, expr: &str, value: f64) -> Value {
    wait_for(WAIT, &format!("{expr} == {value}"), || {
        first_sample(&prometheus.query(expr).ok()?)
            .filter(|(_, v)| *v == value)
            .map(|(labels, _)| labels)
    })
    .unwrap_or_else(|err| panic!("{err}: now {:?}", prometheus.query(expr)))
}

#[test]
fn prometheus_stores_npd_names_and_fires_on_a_real_fd_exhaustion() {
    require_root("loads eBPF programs");
    let mut agent = AgentProcess::start(&["--standalone"]).expect("npd-agent starts");
    agent.wait_ready(Duration::from_secs(60)).unwrap();

    // What the agent serves to Prometheus (classic text) and to an OpenMetrics-only client.
    let classic = http_get(agent.http, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]).unwrap();
    assert_eq!(
        classic.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        classic
            .body
            .contains("\nproblem_counter{reason=\"FDExhausted\"} 0\n"),
        "{}",
        classic.body
    );
    assert!(!classic.body.contains("problem_counter_total"));
    let openmetrics = http_get(
        agent.http,
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .unwrap();
    assert!(
        openmetrics
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/openmetrics-text")),
        "{:?}",
        openmetrics.headers
    );
    assert!(
        openmetrics
            .body
            .contains("\nproblem_counter_total{reason=\"FDExhausted\"} 0\n")
            && openmetrics.body.ends_with("# EOF\n"),
        "{}",
        openmetrics.body
    );

    let prometheus = scraping(&agent);
    let log = || format!("prometheus log:\n{}", prometheus.log());

    // NPD's counter under NPD's name, at 0 before any problem, for a few scrapes.
    let fd_exhausted = r#"problem_counter{job="npd",reason="FDExhausted"}"#;
    at_zero_for_3_scrapes(&prometheus, fd_exhausted);
    let (labels, _) = first_sample(&prometheus.query(fd_exhausted).unwrap()).unwrap();
    assert_eq!(labels["__name__"], "problem_counter", "{labels}");
    assert_eq!(
        prometheus
            .query(r#"{__name__=~"problem_counter_total|problem_gauge_total"}"#)
            .unwrap(),
        Value::Array(Vec::new()),
        "Prometheus stored an OpenMetrics _total name"
    );
    let metadata = prometheus
        .api("/api/v1/metadata?metric=problem_counter")
        .unwrap();
    assert_eq!(
        metadata["problem_counter"][0]["type"], "counter",
        "{metadata}"
    );
    let gauges = prometheus.query("problem_gauge").unwrap();
    let types: BTreeSet<String> = gauges
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["metric"]["reason"].is_string(), "{s}");
            s["metric"]["type"].as_str().unwrap().to_owned()
        })
        .collect();
    for condition in ["KernelDeadlock", "KernelOops", "FDPressure"] {
        assert!(types.contains(condition), "problem_gauge: {gauges}");
    }
    let firing_fd = |alerts: &[Value]| {
        has_alert(
            alerts,
            "NpdNodeProblem",
            &[("reason", "FDExhausted")],
            "firing",
        )
    };
    assert!(!firing_fd(&prometheus.alerts().unwrap()));

    // A real fd exhaustion (EMFILE from openat in a child with RLIMIT_NOFILE 24).
    let result =
        run_json(Command::new(PROVOKE).args(["emfile", "--limit", "24", "--syscall", "openat"]))
            .unwrap();
    assert_eq!(result["ret"], -i64::from(libc::EMFILE), "{result}");
    let risen = wait_for(WAIT, "problem_counter{reason=FDExhausted} to rise", || {
        first_sample(&prometheus.query(&format!("{fd_exhausted} >= 1")).ok()?)
    })
    .unwrap_or_else(|err| panic!("{err}: {}", log()));
    eprintln!("problem_counter after the exhaustion: {risen:?}");
    let alerts = wait_for(
        WAIT,
        "the NpdNodeProblem alert for FDExhausted firing",
        || {
            let alerts = prometheus.alerts().ok()?;
            firing_fd(&alerts).then_some(alerts)
        },
    )
    .unwrap_or_else(|err| panic!("{err}: alerts {:?}", prometheus.alerts()));
    // npd's own health alerts stay quiet on a healthy agent.
    for alert in &alerts {
        let name = alert["labels"]["alertname"].as_str().unwrap_or_default();
        assert!(
            ![
                "NpdDown",
                "NpdAbsent",
                "NpdHookDetached",
                "NpdRingBufferDrops",
                "NpdApiErrors",
                "NpdEventsParked"
            ]
            .contains(&name),
            "{name} is active on a healthy agent: {alert}"
        );
    }

    // Every dashboard query has data now (a series born at the problem has data for a rate
    // from its second scrape on: a few seconds' grace).
    let mut empty = Vec::new();
    for (panel, expr) in dashboard_queries() {
        let answer = wait_for(Duration::from_secs(5), &expr, || {
            let result = prometheus
                .query(&expr)
                .unwrap_or_else(|err| panic!("panel {panel:?}: {err:#}"));
            result
                .as_array()
                .is_some_and(|r| !r.is_empty())
                .then_some(result)
        });
        eprintln!("panel {panel:?}: {expr}\n  -> {answer:?}");
        if answer.is_err() {
            empty.push(format!("{panel:?}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
}

#[test]
fn a_real_hung_task_fires_task_hung_and_makes_kernel_deadlock_pending() {
    require_root("loads eBPF programs, mounts a loop device, lowers hung_task_timeout_secs");
    // A short recovery window (as the cluster tests' config has) so the gauge clears in seconds.
    let mut agent = AgentProcess::start(&["--standalone", "--hung-task-recovery-window", "3s"])
        .expect("npd-agent starts");
    agent.wait_ready(Duration::from_secs(60)).unwrap();
    let prometheus = scraping(&agent);
    let task_hung = r#"problem_counter{job="npd",reason="TaskHung"}"#;
    let deadlock = r#"problem_gauge{job="npd",type="KernelDeadlock",reason="TaskHung"}"#;
    at_zero_for_3_scrapes(&prometheus, task_hung);
    wait_for_value(&prometheus, deadlock, 0.0);
    let deadlock_labels = [("type", "KernelDeadlock"), ("reason", "TaskHung")];
    assert!(
        !has_alert(
            &prometheus.alerts().unwrap(),
            "NpdNodeConditionTrue",
            &deadlock_labels,
            "pending"
        ),
        "{:?}",
        prometheus.alerts()
    );

    // A real hung task: a child writing to a frozen ext4, reported by khungtaskd after 2 s.
    // Declared in this order so that a failure thaws (the filesystem guard) before the
    // timeout is restored.
    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let mut fs = FrozenFilesystem::create().expect("frozen loop-mounted ext4");
    let mut writer = Provoked::blocked_writer(PROVOKE, &fs, "blocked", 30).expect("writer starts");
    let risen = wait_for(WAIT, "problem_counter{reason=TaskHung} to rise", || {
        first_sample(&prometheus.query(&format!("{task_hung} >= 1")).ok()?)
    })
    .unwrap_or_else(|err| panic!("{err}: agent log:\n{}", agent.log()));
    eprintln!("problem_counter while hung: {risen:?}");
    wait_for(WAIT, "the NpdNodeProblem alert for TaskHung firing", || {
        has_alert(
            &prometheus.alerts().ok()?,
            "NpdNodeProblem",
            &[("reason", "TaskHung")],
            "firing",
        )
        .then_some(())
    })
    .unwrap_or_else(|err| panic!("{err}: alerts {:?}", prometheus.alerts()));
    wait_for_value(&prometheus, deadlock, 1.0);
    // Pending, not firing: its `for: 5m` is too long for a test (rules-test.yaml's promtool
    // tests cover it firing after 5 minutes).
    let pending = wait_for(
        WAIT,
        "NpdNodeConditionTrue for KernelDeadlock pending",
        || {
            let alerts = prometheus.alerts().ok()?;
            has_alert(&alerts, "NpdNodeConditionTrue", &deadlock_labels, "pending")
                .then_some(alerts)
        },
    )
    .unwrap_or_else(|err| panic!("{err}: alerts {:?}", prometheus.alerts()));
    eprintln!("alerts while hung: {pending:?}");

    // Thawed, the task recovers; after the 3 s recovery window the condition clears.
    fs.thaw().expect("thaw");
    wait_for_value(&prometheus, deadlock, 0.0);
    wait_for(WAIT, "NpdNodeConditionTrue for KernelDeadlock gone", || {
        let alerts = prometheus.alerts().ok()?;
        (!has_alert(&alerts, "NpdNodeConditionTrue", &deadlock_labels, "pending")).then_some(())
    })
    .unwrap_or_else(|err| panic!("{err}: alerts {:?}", prometheus.alerts()));
    let _ = writer.child.kill();
    let _ = writer.child.wait();
}

/// The kernel's `/proc/pressure/cpu` `some` line: (avg10 %, total s).
fn cpu_pressure() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/pressure/cpu").expect("PSI on this kernel");
    let some = text
        .lines()
        .find(|l| l.starts_with("some "))
        .expect("a some line");
    let field = |key: &str| -> f64 {
        some.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {some}"))
    };
    (field("avg10="), field("total=") / 1e6)
}

fn read_number(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Processes spinning on the CPU until dropped: more than the machine has CPUs, so that
/// runnable tasks wait (real CPU pressure).
struct Spinners(Vec<std::process::Child>);

impl Spinners {
    fn start(count: usize) -> Self {
        Self(
            (0..count)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("sh")
                })
                .collect(),
        )
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The sampled detectors' levels as Prometheus stores them: the node's PSI under its names and
/// types, rising under real CPU pressure, and the task counts and clock state as the kernel
/// has them.
#[test]
fn prometheus_stores_the_nodes_pressure_and_task_levels() {
    require_root("event sources need the eBPF object loaded");
    let mut agent = AgentProcess::start(&["--standalone", "--detectors", "pressure,pids,clock"])
        .expect("npd-agent starts");
    agent.wait_ready(Duration::from_secs(60)).unwrap();
    let prometheus = scraping(&agent);
    let value = |expr: &str| {
        wait_for(WAIT, expr, || first_sample(&prometheus.query(expr).ok()?))
            .unwrap_or_else(|err| panic!("{err}: prometheus log:\n{}", prometheus.log()))
            .1
    };
    for (metric, kind) in [
        ("npd_pressure_stalled_seconds_total", "counter"),
        ("npd_pressure_avg10_ratio", "gauge"),
        ("npd_pressure_avg60_ratio", "gauge"),
        ("npd_pressure_avg300_ratio", "gauge"),
        ("npd_tasks", "gauge"),
        ("npd_tasks_limit", "gauge"),
        ("npd_clock_synchronized", "gauge"),
    ] {
        value(metric);
        let metadata = prometheus
            .api(&format!("/api/v1/metadata?metric={metric}"))
            .unwrap();
        assert_eq!(metadata[metric][0]["type"], kind, "{metric}: {metadata}");
    }
    // Every resource and line this kernel has.
    let series = prometheus.query("npd_pressure_avg60_ratio").unwrap();
    let mut pairs: Vec<String> = series
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}/{}", s["metric"]["resource"], s["metric"]["line"]))
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            "\"cpu\"/\"full\"",
            "\"cpu\"/\"some\"",
            "\"io\"/\"full\"",
            "\"io\"/\"some\"",
            "\"memory\"/\"full\"",
            "\"memory\"/\"some\"",
        ]
    );
    assert_eq!(
        value(r#"npd_tasks_limit{limit="kernel.pid_max"}"#),
        read_number("/proc/sys/kernel/pid_max")
    );
    assert_eq!(
        value(r#"npd_tasks_limit{limit="kernel.threads-max"}"#),
        read_number("/proc/sys/kernel/threads-max")
    );
    let tasks = value("npd_tasks");
    assert!(
        tasks > 10.0 && tasks < read_number("/proc/sys/kernel/pid_max"),
        "{tasks}"
    );
    // This machine's kernel says its clock is unsynchronized (README, NTPProblem).
    // SAFETY: an all-zero timex is valid input; modes 0 only reads.
    let synchronized = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        libc::adjtimex(&raw mut timex) != libc::TIME_ERROR
    };
    assert_eq!(
        value("npd_clock_synchronized"),
        f64::from(u8::from(synchronized))
    );

    // Real CPU pressure: twice as many spinners as CPUs for 15 s (the avg10 window and a
    // 10 s sampling period). The stall counter as stored lags the kernel's by at most a period.
    let stalled = r#"npd_pressure_stalled_seconds_total{resource="cpu",line="some"}"#;
    let (_, total_before) = cpu_pressure();
    let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let spinners = Spinners::start(cpus * 2);
    std::thread::sleep(Duration::from_secs(15));
    let (avg10_loaded, total_loaded) = cpu_pressure();
    assert!(
        avg10_loaded >= 20.0,
        "the kernel saw CPU pressure: avg10 {avg10_loaded} %"
    );
    let risen = wait_for(
        WAIT,
        "the stored CPU stall time to take in the load",
        || {
            let (_, now) = first_sample(
                &prometheus
                    .query(&format!("{stalled} >= {}", total_before + 5.0))
                    .ok()?,
            )?;
            Some(now)
        },
    )
    .unwrap_or_else(|err| panic!("{err}: now {:?}", prometheus.query(stalled)));
    drop(spinners);
    assert!(
        risen <= cpu_pressure().1 && risen >= total_before + 5.0,
        "{risen} between {total_before} + 5 and the kernel's now (under load {total_loaded})"
    );
    let ratio = value(r#"max_over_time(npd_pressure_avg10_ratio{resource="cpu",line="some"}[1m])"#);
    assert!(
        ratio >= 0.2,
        "avg10 stored as a ratio while loaded: {ratio}"
    );
    let rate = value(&format!("rate({stalled}[1m])"));
    assert!(rate > 0.0, "rate() of the stall counter: {rate}");
}

/// The ServiceMonitor, PodMonitor and Service find the DaemonSet's pods and port, and the
/// annotated overlay renders with the scrape annotations on them.
#[test]
fn the_monitors_select_the_daemonsets_pods_and_port() {
    let daemonset =
        std::fs::read_to_string(repo_root().join("deploy/base/daemonset.yaml")).unwrap();
    assert!(daemonset.contains("        app.kubernetes.io/name: npd\n"));
    assert!(daemonset.contains("- name: metrics\n              containerPort: 20257\n"));
    for file in ["servicemonitor.yaml", "podmonitor.yaml", "service.yaml"] {
        let text = std::fs::read_to_string(monitoring_dir().join(file)).unwrap();
        assert!(text.contains("app.kubernetes.io/name: npd\n"), "{file}");
        assert!(text.contains("namespace: kube-system\n"), "{file}");
    }
    for file in ["servicemonitor.yaml", "podmonitor.yaml"] {
        let text = std::fs::read_to_string(monitoring_dir().join(file)).unwrap();
        for line in [
            "jobLabel: app.kubernetes.io/name\n",
            "- port: metrics\n      path: /metrics\n",
            "sourceLabels: [__meta_kubernetes_pod_node_name]\n          targetLabel: node\n",
        ] {
            assert!(text.contains(line), "{file} lacks {line:?}");
        }
    }
    let kustomize = |dir: &str| {
        let out = Command::new("kubectl")
            .args(["kustomize", monitoring_dir().join(dir).to_str().unwrap()])
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl kustomize {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let monitoring = kustomize(".");
    for kind in ["Service", "ServiceMonitor", "PrometheusRule"] {
        assert!(
            monitoring.contains(&format!("\nkind: {kind}\n")),
            "{monitoring}"
        );
    }
    let annotated = kustomize("annotated");
    assert!(
        annotated.contains(
            "      annotations:\n        prometheus.io/path: /metrics\n        \
             prometheus.io/port: \"20257\"\n        prometheus.io/scrape: \"true\"\n"
        ),
        "{annotated}"
    );
    assert!(annotated.contains("\nkind: DaemonSet\n"));
}
