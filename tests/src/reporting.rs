//! What a cluster sees: helpers for the tests that run the agent against the real API server.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cluster::TestCluster;

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
