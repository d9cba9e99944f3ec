//! The manifests in deploy/ against the real API server: they render with kustomize and the
//! server accepts every object (`--dry-run=server` runs admission and validation in full).

use npd_tests::{cluster::TestCluster, reporting::repo_root};

#[test]
fn every_manifest_applies_to_the_api_server() {
    let cluster = TestCluster::start().expect("a real kube-apiserver + etcd");
    let deploy = repo_root().join("deploy");
    let rendered = cluster.kubectl(&["kustomize", deploy.to_str().unwrap()]);
    assert!(
        rendered.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let yaml = String::from_utf8_lossy(&rendered.stdout);
    for kind in [
        "kind: ServiceAccount",
        "kind: ClusterRole\n",
        "kind: ClusterRoleBinding",
        "kind: ConfigMap",
        "kind: DaemonSet",
    ] {
        assert!(yaml.contains(kind), "deploy/ renders no {kind}");
    }
    let applied = cluster.kubectl(&["apply", "--dry-run=server", "-k", deploy.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "the API server rejects deploy/: {}{stdout}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(
        stdout.contains("daemonset.apps/npd created (server dry run)"),
        "{stdout}"
    );
}

#[test]
fn the_remediation_overlay_renders_and_applies_and_the_base_stays_least_privilege() {
    let cluster = TestCluster::start().expect("a real kube-apiserver + etcd");
    let overlay = repo_root().join("deploy/overlays/remediation");
    let rendered = cluster.kubectl(&["kustomize", overlay.to_str().unwrap()]);
    assert!(
        rendered.status.success(),
        "kubectl kustomize deploy/overlays/remediation: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let yaml = String::from_utf8_lossy(&rendered.stdout);
    for needle in [
        "kind: DaemonSet",
        "kind: Role\n",
        "kind: RoleBinding",
        "name: npd-remediation",
        "enabled: true",
    ] {
        assert!(
            yaml.contains(needle),
            "the overlay renders no `{needle}`:\n{yaml}"
        );
    }
    let applied = cluster.kubectl(&["apply", "--dry-run=server", "-k", overlay.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "the API server rejects the overlay: {}{stdout}",
        String::from_utf8_lossy(&applied.stderr)
    );
    for created in [
        "daemonset.apps/npd created (server dry run)",
        "clusterrole.rbac.authorization.k8s.io/npd-remediation created (server dry run)",
        "role.rbac.authorization.k8s.io/npd-remediation created (server dry run)",
    ] {
        assert!(stdout.contains(created), "{stdout}");
    }
    // The extra rights live only in the overlay: the base renders none of them.
    let base = cluster.kubectl(&["kustomize", repo_root().join("deploy").to_str().unwrap()]);
    let base = String::from_utf8_lossy(&base.stdout);
    assert!(
        !base.contains("npd-remediation") && !base.contains("leases"),
        "{base}"
    );
}
