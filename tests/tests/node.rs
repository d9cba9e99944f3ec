//! npd's DaemonSet on a real node, end to end: a kubelet on containerd and runc runs the pod
//! from deploy/ as shipped (only the image set to one built here), and real pods, scheduled
//! and started by that kubelet, hit real problems: an OOM kill, fd exhaustion, a hung task.
//! Their Events must land on those Pods; the node's conditions must survive the npd pod
//! being replaced; `/metrics` must answer on the pod's IP; the pod's log must be plain text.
//! Then the Helm chart installs the same DaemonSet, whose pod must run and turn Ready.

use std::{path::Path, time::Duration};

use npd_tests::{
    agent::{agent_bin, wait_for},
    helm::Helm,
    images,
    machine::{FrozenFilesystem, Sysctl, require_root},
    node::{self, NodeBinaries, TestNode},
    prometheus::http_get,
    reporting::{events, ok, repo_root},
};
use serde_json::Value;

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");
const NAMESPACE: &str = "kube-system";
const SELECTOR: &str = "app.kubernetes.io/name=npd";
const METRICS_PORT: u16 = 20257;

#[test]
fn npd_as_shipped_reports_the_problems_of_pods_a_real_kubelet_runs() {
    require_root("runs containerd and a kubelet, loads eBPF programs, freezes a filesystem");
    let scratch = tempfile::tempdir().unwrap();
    let archive = |name: &str| scratch.path().join(format!("{name}.oci.tar"));
    let agent_image = images::agent(&agent_bin(), "e2e").unwrap();
    agent_image.write_archive(&archive("npd")).unwrap();
    images::pause()
        .unwrap()
        .write_archive(&archive("pause"))
        .unwrap();
    images::workload(Path::new(PROVOKE))
        .unwrap()
        .write_archive(&archive("workload"))
        .unwrap();
    let node = TestNode::start(
        &NodeBinaries::from_env().unwrap(),
        &archive("pause"),
        &[&archive("npd"), &archive("workload")],
    )
    .expect("a one-node cluster starts");

    // The DaemonSet as shipped; only a capability this machine withholds from every process
    // (none can have it) is left out, and said.
    let deploy = repo_root().join("deploy");
    let (capabilities, withheld) = node::shipped_capabilities_here(&deploy).unwrap();
    let mut expected = node::shipped_security_context(&deploy).unwrap();
    if !withheld.is_empty() {
        eprintln!("this machine's bounding set withholds {withheld:?}: the DaemonSet goes without");
        expected["capabilities"]["add"] = serde_json::json!(capabilities);
    }
    let overlay = scratch.path().join("overlay");
    node::write_npd_overlay(
        &overlay,
        &deploy,
        &agent_image.reference,
        (!withheld.is_empty()).then_some(capabilities.as_slice()),
    )
    .unwrap();
    let cluster = node.cluster();
    ok(
        &cluster.kubectl(&["apply", "-k", &overlay.to_string_lossy()]),
        "kubectl apply -k",
    )
    .unwrap();

    let first = wait_for_npd_pod(&node, None);
    let running = &first["spec"]["containers"][0]["securityContext"];
    assert_eq!(
        *running, expected,
        "the pod runs with the shipped securityContext"
    );
    assert_eq!(
        first["spec"]["hostNetwork"],
        Value::Null,
        "not on the host's network"
    );
    let npd_pod = first["metadata"]["name"].as_str().unwrap().to_owned();
    let pod_ip = first["status"]["podIP"].as_str().unwrap().to_owned();

    // What `kubectl logs` shows: the agent's lines, without terminal colour codes.
    let logs = ok(
        &cluster.kubectl(&["logs", "-n", NAMESPACE, &npd_pod]),
        "kubectl logs",
    )
    .unwrap();
    assert!(logs.contains("npd is running"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes in the pod's log:\n{logs:?}"
    );

    // `/metrics` through the pod's IP, as Prometheus scrapes it.
    let address = std::net::SocketAddr::new(pod_ip.parse().unwrap(), METRICS_PORT);
    let metrics = http_get(address, "/metrics", &[]).unwrap();
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert!(metrics.body.contains("problem_gauge{"), "{}", metrics.body);

    // npd's conditions on the Node; in a pod it cannot reach the kubelet's loopback healthz,
    // which must not make the kubelet look down.
    let kubelet = condition(&node, "KubeletUnhealthy");
    assert_eq!(kubelet["status"], "False", "{kubelet}");
    let deadlock = condition(&node, "KernelDeadlock");
    assert_eq!(deadlock["status"], "False", "{deadlock}");
    let described = ok(
        &cluster.kubectl(&["describe", "node", node::NODE_NAME]),
        "kubectl describe node",
    )
    .unwrap();
    assert!(described.contains("KernelHasNoDeadlock"), "{described}");

    // An OOM kill in a container over its memory limit: an OOMKilling Event on its Pod that
    // names the container.
    create_pod(
        &node,
        "hog",
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\000' a); echo survived",
        ],
        Some("32Mi"),
        None,
    );
    let oom = wait_for_pod_event(&node, "OOMKilling", "hog");
    let message = oom["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("hog"),
        "the Event names the container: {oom}"
    );

    // fd exhaustion in a pod: FDExhausted on that Pod.
    create_pod(
        &node,
        "fds",
        "opener",
        &[images::PROVOKE_PATH, "emfile", "--limit", "32"],
        None,
        None,
    );
    wait_for_pod_event(&node, "FDExhausted", "fds");

    // A hung task in a pod (a write to a frozen filesystem the pod mounts): TaskHung on the
    // Pod, KernelDeadlock True; a replaced npd pod keeps the condition.
    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let mut frozen = FrozenFilesystem::create().expect("a frozen loop-mounted ext4");
    create_pod(
        &node,
        "writer",
        "writer",
        &[
            images::PROVOKE_PATH,
            "write",
            "--path",
            "/frozen/file",
            "--then-sleep",
            "1",
        ],
        None,
        Some(frozen.mountpoint()),
    );
    wait_for_pod_event(&node, "TaskHung", "writer");
    wait_for(Duration::from_secs(30), "KernelDeadlock True", || {
        (condition(&node, "KernelDeadlock")["status"] == "True").then_some(())
    })
    .unwrap();
    ok(
        &cluster.kubectl(&["delete", "pod", "-n", NAMESPACE, &npd_pod, "--wait=false"]),
        "deleting the npd pod",
    )
    .unwrap();
    let second = wait_for_npd_pod(&node, Some(&npd_pod));
    let replacement = second["metadata"]["name"].as_str().unwrap().to_owned();
    // Ready means it has read the Node back; a few heartbeats later it still holds.
    std::thread::sleep(Duration::from_secs(15));
    let kept = condition(&node, "KernelDeadlock");
    assert_eq!(
        kept["status"], "True",
        "{replacement} keeps the condition {npd_pod} set: {kept}"
    );
    frozen.thaw().unwrap();
    drop(frozen);

    // The chart installs the same DaemonSet: its pod runs and turns Ready too.
    ok(
        &cluster.kubectl(&["delete", "-k", &overlay.to_string_lossy(), "--wait=true"]),
        "kubectl delete -k",
    )
    .unwrap();
    wait_for(
        Duration::from_secs(60),
        "the kustomize npd pods gone",
        || {
            let out =
                cluster.kubectl(&["get", "pods", "-n", NAMESPACE, "-l", SELECTOR, "-o", "name"]);
            (out.status.success() && out.stdout.is_empty()).then_some(())
        },
    )
    .unwrap();
    let helm = Helm::from_env().unwrap();
    let kubeconfig = cluster.admin_kubeconfig().to_string_lossy().into_owned();
    let (repository, tag) = agent_image.reference.rsplit_once(':').unwrap();
    let chart = repo_root().join("deploy/helm/npd");
    ok(
        &helm.run(&[
            "install",
            "npd",
            &chart.to_string_lossy(),
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            NAMESPACE,
            "--set",
            &format!("image.repository={repository}"),
            "--set",
            &format!("image.tag={tag}"),
        ]),
        "helm install",
    )
    .unwrap();
    if !withheld.is_empty() {
        // The chart has no value for capabilities (README "Install on a cluster" says why
        // each is needed): the same edit as the overlay's, made on the installed object.
        let patch = serde_json::json!([{
            "op": "replace",
            "path": "/spec/template/spec/containers/0/securityContext/capabilities/add",
            "value": capabilities,
        }]);
        ok(
            &cluster.kubectl(&[
                "patch",
                "daemonset",
                "npd",
                "-n",
                NAMESPACE,
                "--type=json",
                "-p",
                &patch.to_string(),
            ]),
            "patching the chart's DaemonSet",
        )
        .unwrap();
    }
    let from_chart = wait_for_npd_pod(&node, Some(&replacement));
    assert_eq!(
        from_chart["spec"]["containers"][0]["securityContext"], expected,
        "the chart's pod runs with the shipped securityContext"
    );
    ok(
        &helm.run(&[
            "uninstall",
            "npd",
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            NAMESPACE,
        ]),
        "helm uninstall",
    )
    .unwrap();

    node.stop().expect("the node stops and is cleaned up");
}

/// Waits for an npd pod (not `other_than`) Running and Ready, and returns it.
fn wait_for_npd_pod(node: &TestNode, other_than: Option<&str>) -> Value {
    let mut last = Value::Null;
    let found = wait_for(
        Duration::from_secs(120),
        "the npd pod Running and Ready",
        || {
            let out = node
                .cluster()
                .kubectl(&["get", "pods", "-n", NAMESPACE, "-l", SELECTOR, "-o", "json"]);
            let list: Value = serde_json::from_slice(&out.stdout).ok()?;
            last = list.clone();
            list["items"].as_array()?.iter().find_map(|pod| {
                let name = pod["metadata"]["name"].as_str()?;
                let ready = pod["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
                (ready && !deleting && Some(name) != other_than).then(|| pod.clone())
            })
        },
    );
    found.unwrap_or_else(|error| {
        let described = node
            .cluster()
            .kubectl(&["describe", "pods", "-n", NAMESPACE, "-l", SELECTOR]);
        panic!(
            "{error}\n{}\n{}",
            String::from_utf8_lossy(&described.stdout),
            node.logs()
        )
    })
}

fn condition(node: &TestNode, kind: &str) -> Value {
    let out = node
        .cluster()
        .kubectl(&["get", "node", node::NODE_NAME, "-o", "json"]);
    let object: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    object["status"]["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == kind).cloned())
        .unwrap_or_default()
}

/// A pod in `default` with one container, never restarted; `memory` its limit, `host_dir`
/// mounted at /frozen.
fn create_pod(
    node: &TestNode,
    name: &str,
    container: &str,
    command: &[&str],
    memory: Option<&str>,
    host_dir: Option<&Path>,
) {
    let mut spec = serde_json::json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": container,
            "image": images::WORKLOAD_REFERENCE,
            "imagePullPolicy": "Never",
            "command": command,
        }],
    });
    if let Some(memory) = memory {
        spec["containers"][0]["resources"] =
            serde_json::json!({"limits": {"memory": memory}, "requests": {"memory": memory}});
    }
    if let Some(dir) = host_dir {
        spec["volumes"] =
            serde_json::json!([{"name": "frozen", "hostPath": {"path": dir, "type": "Directory"}}]);
        spec["containers"][0]["volumeMounts"] =
            serde_json::json!([{"name": "frozen", "mountPath": "/frozen"}]);
    }
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    });
    ok(
        &node
            .cluster()
            .kubectl_with_input(&["create", "-f", "-"], &pod.to_string()),
        &format!("creating pod {name}"),
    )
    .unwrap();
}

/// Waits for an Event `reason` about the Pod `pod` (in `default`) and returns it.
fn wait_for_pod_event(node: &TestNode, reason: &str, pod: &str) -> Value {
    wait_for(
        Duration::from_secs(90),
        &format!("a {reason} Event on Pod {pod}"),
        || {
            events(node.cluster()).ok()?.into_iter().find(|e| {
                e["reason"] == reason
                    && e["involvedObject"]["kind"] == "Pod"
                    && e["involvedObject"]["name"] == pod
            })
        },
    )
    .unwrap_or_else(|error| {
        let all = events(node.cluster()).unwrap_or_default();
        let seen: Vec<String> = all
            .iter()
            .map(|e| {
                format!(
                    "{} {}/{}: {}",
                    e["reason"],
                    e["involvedObject"]["kind"],
                    e["involvedObject"]["name"],
                    e["message"]
                )
            })
            .collect();
        let described = node.cluster().kubectl(&["describe", "pod", pod]);
        panic!(
            "{error}\nevents:\n{}\n{}",
            seen.join("\n"),
            String::from_utf8_lossy(&described.stdout)
        )
    })
}
