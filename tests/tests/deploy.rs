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
