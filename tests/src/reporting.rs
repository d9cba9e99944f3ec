//! What a cluster sees: helpers for the tests that run the agent against the real API server.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{agent::AgentProcess, cluster::TestCluster};

/// The repository root (the tests crate is one level below it).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
}

/// The stdout of a command that must have succeeded, or an error with its stderr.
pub fn ok(output: &std::process::Output, what: &str) -> anyhow::Result<String> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Creates a Node object (there is no kubelet: it is just the object npd reports on).
pub fn create_node(cluster: &TestCluster, name: &str) -> anyhow::Result<()> {
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
    });
    ok(
        &cluster.kubectl_with_input(&["create", "-f", "-"], &manifest.to_string()),
        "creating the node",
    )?;
    Ok(())
}

/// Applies `deploy/base/rbac.yaml` (npd's ServiceAccount, ClusterRole and binding) and binds the
/// same ClusterRole to the harness's unprivileged user, so an agent run with
/// [`TestCluster::user_kubeconfig`] has exactly the rights a deployed npd has.
pub fn grant_npd_cluster_role(cluster: &TestCluster) -> anyhow::Result<()> {
    let rbac = repo_root().join("deploy/base/rbac.yaml");
    ok(
        &cluster.kubectl(&[
            "apply",
            "-n",
            "kube-system",
            "-f",
            rbac.to_str().context("path")?,
        ]),
        "applying deploy/base/rbac.yaml",
    )?;
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": { "name": "npd-test-user" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "npd" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": crate::cluster::UNPRIVILEGED_USER }],
    });
    ok(
        &cluster.kubectl_with_input(&["create", "-f", "-"], &binding.to_string()),
        "binding the ClusterRole to the test user",
    )?;
    Ok(())
}

pub fn node(cluster: &TestCluster, name: &str) -> anyhow::Result<Value> {
    let text = ok(
        &cluster.kubectl(&["get", "node", name, "-o", "json"]),
        "getting the node",
    )?;
    Ok(serde_json::from_str(&text)?)
}

/// The node's condition of this type, if present.
pub fn condition(cluster: &TestCluster, node_name: &str, kind: &str) -> Option<Value> {
    node(cluster, node_name).ok()?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

/// `kubectl get node -o yaml`, for the test log.
pub fn node_yaml(cluster: &TestCluster, name: &str) -> String {
    let out = cluster.kubectl(&["get", "node", name, "-o", "yaml"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every core/v1 Event in the cluster.
pub fn events(cluster: &TestCluster) -> anyhow::Result<Vec<Value>> {
    let text = ok(
        &cluster.kubectl(&["get", "events", "--all-namespaces", "-o", "json"]),
        "listing events",
    )?;
    let list: Value = serde_json::from_str(&text)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// A real kube-apiserver + etcd with the Node `node` and npd's ClusterRole from deploy/ granted
/// to the unprivileged test user.
pub fn cluster_with_node(node: &str) -> TestCluster {
    let cluster = TestCluster::start().expect("a real kube-apiserver + etcd");
    create_node(&cluster, node).expect("node");
    grant_npd_cluster_role(&cluster).expect("RBAC from deploy/");
    cluster
}

/// The agent's config for cluster tests: short windows so the tests take seconds, not minutes.
pub fn test_config(dir: &Path) -> std::path::PathBuf {
    test_config_with(dir, "")
}

/// [`test_config`] with more top-level keys (YAML, e.g. a `daemons:` section).
pub fn test_config_with(dir: &Path, more: &str) -> std::path::PathBuf {
    let path = dir.join("npd-test.yaml");
    std::fs::write(
        &path,
        format!(
            "kubernetes:\n  heartbeat: 2s\n  retryBackoffMax: 2s\n\
             hungTask:\n  recoveryWindow: 3s\n\
             fdPressure:\n  sampleInterval: 1s\n{more}"
        ),
    )
    .expect("write the test config");
    path
}

/// `npd-agent run` as the unprivileged test user, with the test config, reporting on `node`;
/// `extra` are more flags (e.g. `--detectors fs`).
pub fn spawn_reporting_agent(cluster: &TestCluster, node: &str, extra: &[&str]) -> AgentProcess {
    spawn_reporting_agent_with(cluster, node, "", extra)
}

/// [`spawn_reporting_agent`] with more config keys (see [`test_config_with`]).
pub fn spawn_reporting_agent_with(
    cluster: &TestCluster,
    node: &str,
    config: &str,
    extra: &[&str],
) -> AgentProcess {
    let config = test_config_with(cluster.dir(), config);
    let base = [
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--kubeconfig",
        cluster.user_kubeconfig().to_str().expect("UTF-8 path"),
        "--node-name",
        node,
    ];
    AgentProcess::start(&[&base[..], extra].concat()).expect("agent starts")
}

/// [`spawn_reporting_agent`], waited for until ready (hooks attached, the Node read).
pub fn start_reporting_agent(cluster: &TestCluster, node: &str, extra: &[&str]) -> AgentProcess {
    start_reporting_agent_with(cluster, node, "", extra)
}

/// [`start_reporting_agent`] with more config keys (see [`test_config_with`]).
pub fn start_reporting_agent_with(
    cluster: &TestCluster,
    node: &str,
    config: &str,
    extra: &[&str],
) -> AgentProcess {
    let mut agent = spawn_reporting_agent_with(cluster, node, config, extra);
    agent
        .wait_ready(Duration::from_secs(60))
        .expect("agent ready: hooks attached and the node read");
    agent
}

/// Creates a Pod bound to `node` (nothing runs it: there is no kubelet) and returns its uid.
pub fn create_pod(cluster: &TestCluster, name: &str, node: &str) -> String {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "nodeName": node, "containers": [{ "name": "app", "image": "busybox" }] },
    });
    let out = cluster.kubectl_with_input(&["create", "-f", "-", "-o", "json"], &pod.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).expect("the created Pod")["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_owned()
}
