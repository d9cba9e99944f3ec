//! The Helm chart (deploy/helm/npd) against kustomize and the real API server: `helm lint`
//! passes; `helm template` renders, object for object and field for field, what
//! `kubectl kustomize` renders of deploy/, the remediation overlay and deploy/monitoring with
//! the matching values; the values change what they name and nothing else; the chart refuses
//! values that cannot work; and the server accepts every rendering (`--dry-run=server`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use npd_tests::{
    cluster::TestCluster,
    helm::Helm,
    reporting::{ok, repo_root},
};
use serde::Deserialize;
use serde_json::{Value, json};

const NAMESPACE: &str = "kube-system";

fn helm() -> Helm {
    Helm::from_env().expect("the chart tests need helm")
}

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/npd")
}

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

/// `helm template` of the chart as release `npd` in `namespace`, with `args` (values).
fn template_in(helm: &Helm, namespace: &str, args: &[&str]) -> anyhow::Result<String> {
    let chart = chart();
    let mut all = vec![
        "template",
        "npd",
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    all.extend_from_slice(args);
    ok(&helm.run(&all), &format!("helm {}", all.join(" ")))
}

fn template(helm: &Helm, args: &[&str]) -> String {
    template_in(helm, NAMESPACE, args).unwrap()
}

/// `kubectl kustomize DIR` (no cluster needed).
fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl runs");
    ok(&out, &format!("kubectl kustomize {}", dir.display())).unwrap()
}

/// A multi-document YAML stream's objects by apiVersion, kind, namespace and name.
fn objects(yaml: &str) -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let object = Value::deserialize(document).expect("YAML that maps to JSON");
        if object.is_null() {
            continue;
        }
        let key = format!(
            "{} {} {}/{}",
            object["apiVersion"].as_str().unwrap(),
            object["kind"].as_str().unwrap(),
            object["metadata"]["namespace"].as_str().unwrap_or(""),
            object["metadata"]["name"].as_str().unwrap()
        );
        assert!(objects.insert(key.clone(), object).is_none(), "{key} twice");
    }
    objects
}

/// Where two values differ, as JSON pointers with both sides.
fn differences(path: &str, left: &Value, right: &Value, out: &mut Vec<String>) {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            for key in l.keys().chain(r.keys().filter(|k| !l.contains_key(*k))) {
                let (a, b) = (l.get(key), r.get(key));
                let path = format!("{path}/{key}");
                match (a, b) {
                    (Some(a), Some(b)) => differences(&path, a, b, out),
                    _ => out.push(format!("{path}: {a:?} vs {b:?}")),
                }
            }
        }
        (Value::Array(l), Value::Array(r)) if l.len() == r.len() => {
            for (i, (a, b)) in l.iter().zip(r).enumerate() {
                differences(&format!("{path}/{i}"), a, b, out);
            }
        }
        _ if left != right => out.push(format!("{path}: {left} vs {right}")),
        _ => {}
    }
}

/// The chart's objects are exactly the expected ones: the same set, every field equal.
fn assert_same_objects(
    chart: &BTreeMap<String, Value>,
    expected: &BTreeMap<String, Value>,
    what: &str,
) {
    let mut problems = Vec::new();
    for key in expected.keys().filter(|k| !chart.contains_key(*k)) {
        problems.push(format!("the chart renders no {key}"));
    }
    for key in chart.keys().filter(|k| !expected.contains_key(*k)) {
        problems.push(format!("the chart renders {key}, {what} does not"));
    }
    for (key, object) in chart {
        if let Some(wanted) = expected.get(key) {
            let mut found = Vec::new();
            differences("", object, wanted, &mut found);
            problems.extend(
                found
                    .into_iter()
                    .map(|d| format!("{key}: {d} (chart vs {what})")),
            );
        }
    }
    assert!(
        problems.is_empty(),
        "the chart differs from {what}:\n{}",
        problems.join("\n")
    );
}

#[test]
fn helm_lint_passes_with_every_option_on_or_off() {
    let helm = helm();
    let chart = chart();
    for values in [
        &[][..],
        &["--set", "remediation.enabled=true"],
        &[
            "--set",
            "metrics.scrapeAnnotations=true,metrics.serviceMonitor.enabled=true,\
             metrics.prometheusRule.enabled=true",
        ],
        &["--set", "metrics.podMonitor.enabled=true"],
    ] {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        args.extend_from_slice(values);
        let out = ok(&helm.run(&args), &format!("helm {}", args.join(" "))).unwrap();
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{values:?}: {out}"
        );
    }
}

#[test]
fn by_default_the_chart_renders_what_kustomize_renders_of_deploy() {
    let helm = helm();
    assert_same_objects(
        &objects(&template(&helm, &[])),
        &objects(&kustomize(&deploy(""))),
        "kubectl kustomize deploy/",
    );
}

#[test]
fn with_remediation_the_chart_renders_the_remediation_overlay() {
    let helm = helm();
    assert_same_objects(
        &objects(&template(&helm, &["--set", "remediation.enabled=true"])),
        &objects(&kustomize(&deploy("overlays/remediation"))),
        "kubectl kustomize deploy/overlays/remediation",
    );
}

#[test]
fn with_a_service_monitor_and_the_rules_the_chart_adds_deploy_monitoring() {
    let helm = helm();
    let chart = template(
        &helm,
        &[
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true",
        ],
    );
    let mut expected = objects(&kustomize(&deploy("")));
    expected.extend(objects(&kustomize(&deploy("monitoring"))));
    assert_same_objects(
        &objects(&chart),
        &expected,
        "kubectl kustomize deploy/ and deploy/monitoring",
    );
    // The rules' own templates reach the object untouched by Helm.
    assert!(chart.contains("{{ $labels.reason }}"), "{chart}");
}

#[test]
fn with_a_pod_monitor_the_chart_adds_deploy_monitorings_pod_monitor() {
    let helm = helm();
    let mut expected = objects(&kustomize(&deploy("")));
    let podmonitor = std::fs::read_to_string(deploy("monitoring/podmonitor.yaml")).unwrap();
    expected.extend(objects(&podmonitor));
    assert_same_objects(
        &objects(&template(
            &helm,
            &["--set", "metrics.podMonitor.enabled=true"],
        )),
        &expected,
        "kubectl kustomize deploy/ and deploy/monitoring/podmonitor.yaml",
    );
}

#[test]
fn with_scrape_annotations_the_chart_renders_the_annotated_overlay() {
    let helm = helm();
    assert_same_objects(
        &objects(&template(
            &helm,
            &["--set", "metrics.scrapeAnnotations=true"],
        )),
        &objects(&kustomize(&deploy("monitoring/annotated"))),
        "kubectl kustomize deploy/monitoring/annotated",
    );
}

/// The chart reads these copies with `.Files.Get` (it cannot reach outside its directory).
#[test]
fn the_charts_files_are_copies_of_deploys() {
    for (copy, original) in [
        ("files/config.yaml", "base/config.yaml"),
        (
            "files/remediation-config.yaml",
            "overlays/remediation/config.yaml",
        ),
        ("files/npd-rules.yaml", "monitoring/npd-rules.yaml"),
    ] {
        let copied = std::fs::read_to_string(chart().join(copy)).unwrap();
        let shipped = std::fs::read_to_string(deploy(original)).unwrap();
        assert!(
            copied == shipped,
            "deploy/helm/npd/{copy} differs from deploy/{original}: copy deploy/{original} there"
        );
    }
}

/// Every value lands where it says, and nothing else changes: the DaemonSet's security
/// context, mounts and probes stay exactly as deploy/ ships them.
#[test]
fn values_change_what_they_name_and_nothing_else() {
    let helm = helm();
    let chart = template(
        &helm,
        &[
            "--set",
            "image.repository=registry.example/npd,image.tag=1.2.3,image.pullPolicy=Always",
            "--set",
            "priorityClassName=",
            "--set-json",
            r#"tolerations=[{"key":"dedicated","operator":"Equal","value":"infra","effect":"NoSchedule"}]"#,
            "--set-json",
            r#"nodeSelector={"kubernetes.io/os":"linux"}"#,
            "--set-json",
            r#"resources={"requests":{"cpu":"20m","memory":"64Mi"},"limits":{"memory":"128Mi"}}"#,
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.serviceMonitor.additionalLabels.release=kps,\
             metrics.prometheusRule.additionalLabels.release=kps",
        ],
    );
    let mut expected = objects(&kustomize(&deploy("")));
    expected.extend(objects(&kustomize(&deploy("monitoring"))));
    let pod = expected
        .get_mut(&format!("apps/v1 DaemonSet {NAMESPACE}/npd"))
        .unwrap()
        .pointer_mut("/spec/template/spec")
        .unwrap()
        .as_object_mut()
        .unwrap();
    pod.remove("priorityClassName").unwrap();
    pod.insert(
        "tolerations".into(),
        json!([{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}]),
    );
    pod.insert("nodeSelector".into(), json!({"kubernetes.io/os": "linux"}));
    let container = pod["containers"][0].as_object_mut().unwrap();
    container.insert("image".into(), json!("registry.example/npd:1.2.3"));
    container.insert("imagePullPolicy".into(), json!("Always"));
    container.insert(
        "resources".into(),
        json!({"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}),
    );
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        let labels = expected
            .get_mut(&format!("monitoring.coreos.com/v1 {kind} {NAMESPACE}/npd"))
            .unwrap()
            .pointer_mut("/metadata/labels")
            .unwrap()
            .as_object_mut()
            .unwrap();
        labels.insert("release".into(), json!("kps"));
    }
    assert_same_objects(
        &objects(&chart),
        &expected,
        "deploy/ and deploy/monitoring with the same changes by hand",
    );
}

/// A config given as a value is the ConfigMap's data, under the name kustomize gives the same
/// file (so changing it rolls the pods), and the DaemonSet mounts that ConfigMap.
#[test]
fn a_config_value_becomes_the_configmap_under_kustomizes_name() {
    let helm = helm();
    let dir = tempfile::tempdir().unwrap();
    let config = "# ours\nkubernetes:\n  heartbeat: 30s\nhungTask:\n  recoveryWindow: 10m\n";
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "configMapGenerator:\n  - name: npd-config\n    files:\n      - config.yaml\n",
    )
    .unwrap();
    let generated = objects(&kustomize(dir.path()));
    let (_, generated) = generated.first_key_value().unwrap();
    let file = dir.path().join("config.yaml");
    let chart = objects(&template(
        &helm,
        &["--set-file", &format!("config={}", file.display())],
    ));
    let name = generated["metadata"]["name"].as_str().unwrap();
    let configmap = &chart[&format!("v1 ConfigMap {NAMESPACE}/{name}")];
    assert_eq!(configmap["data"]["config.yaml"], json!(config));
    let daemonset = &chart[&format!("apps/v1 DaemonSet {NAMESPACE}/npd")];
    assert_eq!(
        daemonset
            .pointer("/spec/template/spec/volumes/0/configMap/name")
            .unwrap(),
        &json!(name)
    );
    let default_name = objects(&template(&helm, &[]))
        .into_keys()
        .find(|key| key.starts_with("v1 ConfigMap "))
        .unwrap();
    assert!(!default_name.ends_with(name), "{default_name} vs {name}");
}

/// The remediation Role and RoleBinding go where the config keeps the budget's Lease, and
/// for a config that does not say, where the agent's defaults (deploy/base/config.yaml) do.
#[test]
fn the_remediation_role_follows_the_configs_lease() {
    let helm = helm();
    let defaults: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(deploy("base/config.yaml")).unwrap())
            .unwrap();
    let taints = &defaults["remediation"]["taints"];
    for (config, namespace, lease) in [
        (
            "remediation:\n  taints:\n    enabled: true\n",
            taints["leaseNamespace"].as_str().unwrap(),
            taints["leaseName"].as_str().unwrap(),
        ),
        (
            "remediation:\n  taints:\n    enabled: true\n    leaseNamespace: npd-budget\n    \
             leaseName: budget\n",
            "npd-budget",
            "budget",
        ),
    ] {
        let chart = objects(
            &template_in(
                &helm,
                "npd",
                &[
                    "--set",
                    "remediation.enabled=true",
                    "--set-string",
                    &format!("config={config}"),
                ],
            )
            .unwrap(),
        );
        let role =
            &chart[&format!("rbac.authorization.k8s.io/v1 Role {namespace}/npd-remediation")];
        assert_eq!(role["rules"][1]["resourceNames"], json!([lease]), "{role}");
        let binding = &chart
            [&format!("rbac.authorization.k8s.io/v1 RoleBinding {namespace}/npd-remediation")];
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "npd", "namespace": "npd"}])
        );
    }
}

/// Values that cannot work fail at `helm template`/`install`, naming the fix.
#[test]
fn the_chart_refuses_values_that_cannot_work() {
    let helm = helm();
    for (values, message) in [
        (
            vec![
                "--set",
                "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true",
            ],
            "every node would be scraped twice",
        ),
        (
            vec![
                "--set-string",
                "config=remediation:\n  taints:\n    enabled: true\n",
            ],
            "set remediation.enabled=true",
        ),
        (
            vec![
                "--set",
                "remediation.enabled=true",
                "--set-string",
                "config=kubernetes:\n  heartbeat: 30s\n",
            ],
            "the config leaves remediation.taints.enabled false",
        ),
        (
            vec!["--set-string", "config=- not a mapping\n"],
            "config is not a YAML mapping",
        ),
    ] {
        let error = template_in(&helm, NAMESPACE, &values)
            .err()
            .unwrap_or_else(|| panic!("{values:?} renders"))
            .to_string();
        assert!(error.contains(message), "{values:?}: {error}");
    }
}

/// Each rendering, in the release's namespace, accepted by the real API server. The
/// monitoring.coreos.com objects are left out: the test server has no Prometheus Operator
/// CRDs (they are compared with deploy/monitoring's above).
#[test]
fn every_rendering_applies_to_the_api_server() {
    let helm = helm();
    let cluster = TestCluster::start().expect("a real kube-apiserver + etcd");
    ok(
        &cluster.kubectl(&["create", "namespace", "npd"]),
        "kubectl create namespace npd",
    )
    .unwrap();
    for (namespace, values, created) in [
        (
            NAMESPACE,
            &[][..],
            "daemonset.apps/npd created (server dry run)",
        ),
        (
            "npd",
            &[][..],
            "daemonset.apps/npd created (server dry run)",
        ),
        (
            NAMESPACE,
            &["--set", "remediation.enabled=true"],
            "role.rbac.authorization.k8s.io/npd-remediation created (server dry run)",
        ),
        (
            NAMESPACE,
            &[
                "--set",
                "metrics.scrapeAnnotations=true,metrics.serviceMonitor.enabled=true,\
                 metrics.prometheusRule.enabled=true",
            ],
            "service/npd created (server dry run)",
        ),
    ] {
        let items: Vec<Value> = objects(&template_in(&helm, namespace, values).unwrap())
            .into_values()
            .filter(|o| {
                !o["apiVersion"]
                    .as_str()
                    .unwrap()
                    .starts_with("monitoring.coreos.com/")
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        let applied = cluster
            .kubectl_with_input(&["apply", "--dry-run=server", "-f", "-"], &list.to_string());
        let stdout = ok(
            &applied,
            &format!("the server applying {namespace} {values:?}"),
        )
        .unwrap();
        assert!(stdout.contains(created), "{namespace} {values:?}: {stdout}");
        assert!(
            stdout.contains("daemonset.apps/npd created (server dry run)"),
            "{stdout}"
        );
    }
}
