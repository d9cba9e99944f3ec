//! What remediation leaves in a cluster: the overlay's rights granted to the test user, node
//! taints, and the budget's ledger.

use anyhow::Context;
use serde_json::Value;

use crate::{
    cluster::{TestCluster, UNPRIVILEGED_USER},
    reporting::{node, ok, repo_root},
};

/// npd's mark on its own taints (npd-agent's `OWN_TAINT_VALUE`).
pub const OWN_TAINT_VALUE: &str = "added-by-npd";
pub const BUDGET_LEASE: &str = "npd-taint-budget";
pub const BUDGET_NAMESPACE: &str = "kube-system";
pub const LEDGER_ANNOTATION: &str = "npd.io/tainted-nodes";

/// Applies `deploy/overlays/remediation/rbac.yaml` and binds its ClusterRole and Role to the
/// harness's unprivileged user, on top of [`crate::reporting::grant_npd_cluster_role`]: an
/// agent run with [`TestCluster::user_kubeconfig`] then has exactly the rights the overlay
/// gives a deployed npd.
pub fn grant_remediation_roles(cluster: &TestCluster) -> anyhow::Result<()> {
    let rbac = repo_root().join("deploy/overlays/remediation/rbac.yaml");
    ok(
        &cluster.kubectl(&[
            "apply",
            "-n",
            BUDGET_NAMESPACE,
            "-f",
            rbac.to_str().context("path")?,
        ]),
        "applying deploy/overlays/remediation/rbac.yaml",
    )?;
    let user = serde_json::json!([{
        "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": UNPRIVILEGED_USER,
    }]);
    let bindings = [
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": { "name": "npd-remediation-test-user" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "npd-remediation" },
            "subjects": user,
        }),
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": "npd-remediation-test-user", "namespace": BUDGET_NAMESPACE },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "npd-remediation" },
            "subjects": user,
        }),
    ];
    for binding in bindings {
        ok(
            &cluster.kubectl_with_input(&["create", "-f", "-"], &binding.to_string()),
            "binding the overlay's roles to the test user",
        )?;
    }
    Ok(())
}

/// The node's taints as `key=value:effect` (`key:effect` without a value), in order.
pub fn taints(cluster: &TestCluster, node_name: &str) -> anyhow::Result<Vec<String>> {
    let node = node(cluster, node_name)?;
    Ok(node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let key = t["key"].as_str().unwrap_or_default();
            let effect = t["effect"].as_str().unwrap_or_default();
            match t["value"].as_str().filter(|v| !v.is_empty()) {
                Some(value) => format!("{key}={value}:{effect}"),
                None => format!("{key}:{effect}"),
            }
        })
        .collect())
}

/// npd's own taint for a condition with the default effect.
pub fn own_taint(condition: &str) -> String {
    format!("npd.io/{condition}={OWN_TAINT_VALUE}:NoSchedule")
}

/// Adds a taint as an operator would (`kubectl taint`).
pub fn add_taint(cluster: &TestCluster, node_name: &str, taint: &str) -> anyhow::Result<()> {
    ok(
        &cluster.kubectl(&["taint", "node", node_name, taint]),
        "kubectl taint",
    )?;
    Ok(())
}

/// The nodes (among `names`) that carry an npd taint.
pub fn npd_tainted(cluster: &TestCluster, names: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut tainted = Vec::new();
    for name in names {
        if taints(cluster, name)?
            .iter()
            .any(|t| t.starts_with("npd.io/") && t.contains(&format!("={OWN_TAINT_VALUE}:")))
        {
            tainted.push((*name).to_owned());
        }
    }
    Ok(tainted)
}

/// The budget's Lease, if it exists.
pub fn budget_lease(cluster: &TestCluster) -> Option<Value> {
    let out = cluster.kubectl(&[
        "get",
        "lease",
        "-n",
        BUDGET_NAMESPACE,
        BUDGET_LEASE,
        "-o",
        "json",
    ]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// The nodes in the budget's ledger (empty without a Lease).
pub fn ledger(cluster: &TestCluster) -> anyhow::Result<Vec<String>> {
    let Some(lease) = budget_lease(cluster) else {
        return Ok(Vec::new());
    };
    let text = lease["metadata"]["annotations"][LEDGER_ANNOTATION]
        .as_str()
        .unwrap_or("{}");
    let ledger: serde_json::Map<String, Value> =
        serde_json::from_str(text).with_context(|| format!("the ledger: {text}"))?;
    Ok(ledger.keys().cloned().collect())
}
