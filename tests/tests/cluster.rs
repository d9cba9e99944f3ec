//! The cluster harness against the real kube-apiserver: what npd's agent will do to a Node
//! (status conditions, events), what RBAC refuses, and that nothing outlives a cluster.
//! Needs `NPD_KUBE_APISERVER` and `NPD_ETCD`: run through `cargo xtask test`.

use std::{
    net::TcpListener,
    path::Path,
    process::Output,
    thread,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, ensure};
use k8s_openapi::{
    api::{
        core::v1::{Event, Node, NodeCondition, ObjectReference},
        events::v1::Event as EventsV1Event,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Client, Config,
    api::{Api, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use npd_tests::cluster::{TestCluster, UNPRIVILEGED_USER};
use serde_json::{Value, json};

/// stdout of a kubectl run that must succeed, or its stderr as the error.
fn succeeded(output: Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        output.status.success(),
        "{what}: kubectl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn node_manifest(name: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
    })
    .to_string()
}

/// A condition as node-problem-detector writes it.
fn condition(kind: &str, status: &str, reason: &str) -> Value {
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": format!("{kind} is {status}: {reason}"),
        "lastHeartbeatTime": "2026-01-01T00:00:00Z",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

fn condition_of<'a>(node: &'a Value, kind: &str) -> Option<&'a Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|condition| condition["type"] == kind)
}

fn port_of(server_url: &str) -> anyhow::Result<u16> {
    let port = server_url
        .rsplit(':')
        .next()
        .context("no port in the URL")?;
    Ok(port.parse()?)
}

fn is_running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn kubectl_patches_node_status_and_rbac_refuses_the_unprivileged_user() -> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    let node = "npd-test-node";
    succeeded(
        cluster.kubectl_with_input(&["create", "-f", "-"], &node_manifest(node)),
        "creating the Node",
    )?;

    // A strategic merge patch keys `conditions` by `type`: a second patch with another type
    // adds to the list instead of replacing it, and one with the same type updates in place.
    for patch_condition in [
        condition("KernelDeadlock", "True", "HungTask"),
        condition("FrequentOOMKill", "False", "NoFrequentOOMKill"),
    ] {
        let patch = json!({ "status": { "conditions": [patch_condition] } }).to_string();
        succeeded(
            cluster.kubectl(&[
                "patch",
                "node",
                node,
                "--subresource=status",
                "--type=strategic",
                "--patch",
                &patch,
            ]),
            "patching the Node's status",
        )?;
    }
    let read_back: Value = serde_json::from_str(&succeeded(
        cluster.kubectl(&["get", "node", node, "-o", "json"]),
        "reading the Node",
    )?)?;
    let deadlock = condition_of(&read_back, "KernelDeadlock")
        .context("the KernelDeadlock condition is missing")?;
    assert_eq!(deadlock["status"], "True");
    assert_eq!(deadlock["reason"], "HungTask");
    assert!(
        condition_of(&read_back, "FrequentOOMKill").is_some(),
        "the second patch replaced the conditions instead of merging: {read_back:#}"
    );

    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": { "name": format!("{node}.hung-task"), "namespace": "default" },
        "involvedObject": { "kind": "Node", "name": node, "uid": node },
        "reason": "TaskHung",
        "message": "task kworker/0:1 blocked for more than 120 seconds",
        "type": "Warning",
        "source": { "component": "npd", "host": node },
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z",
        "count": 1,
    })
    .to_string();
    succeeded(
        cluster.kubectl_with_input(&["create", "-f", "-"], &event),
        "creating a core/v1 Event",
    )?;
    let events: Value = serde_json::from_str(&succeeded(
        cluster.kubectl(&["get", "events", "--namespace=default", "-o", "json"]),
        "listing events",
    )?)?;
    assert!(
        events["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|item| item["reason"] == "TaskHung")),
        "the Event is not listed: {events:#}"
    );

    let refused = cluster.kubectl_as_user(&["get", "nodes"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("forbidden"),
        "{UNPRIVILEGED_USER} was not refused listing nodes ({}): {stderr}",
        refused.status
    );
    assert!(
        stderr.contains(UNPRIVILEGED_USER),
        "the refusal does not name the user: {stderr}"
    );

    let (etcd, apiserver) = cluster.pids();
    let (etcd, apiserver) = (
        etcd.context("etcd runs")?,
        apiserver.context("apiserver runs")?,
    );
    let dir = cluster.dir().to_owned();
    assert!(is_running(etcd) && is_running(apiserver));
    cluster.stop()?;
    assert!(
        !is_running(apiserver),
        "kube-apiserver {apiserver} outlived stop()"
    );
    assert!(!is_running(etcd), "etcd {etcd} outlived stop()");
    assert!(!dir.exists(), "{} outlived stop()", dir.display());
    Ok(())
}

#[test]
fn two_clusters_run_side_by_side_and_stop_frees_their_ports() -> anyhow::Result<()> {
    let (first, second) = thread::scope(|scope| {
        let first = scope.spawn(TestCluster::start);
        let second = scope.spawn(TestCluster::start);
        (first.join(), second.join())
    });
    let first = first.expect("starting a cluster panicked")?;
    let second = second.expect("starting a cluster panicked")?;
    assert_ne!(first.server_url(), second.server_url());

    for cluster in [&first, &second] {
        let version: Value = serde_json::from_str(&succeeded(
            cluster.kubectl(&["get", "--raw", "/version"]),
            "reading /version",
        )?)?;
        assert_eq!(version["gitVersion"], "v1.20.2", "{version:#}");
    }

    let first_port = port_of(first.server_url())?;
    first.stop()?;
    TcpListener::bind(("127.0.0.1", first_port))
        .with_context(|| format!("port {first_port} is still taken after stop()"))?;
    succeeded(
        second.kubectl(&["get", "--raw", "/readyz"]),
        "the second cluster after the first stopped",
    )?;
    second.stop()
}

/// What npd's agent will do, with the client it will use: kube with rustls (and ring, without
/// which the client panics on creation) against the apiserver's self-signed certificate.
#[tokio::test]
async fn kube_client_patches_node_status_and_writes_events() -> anyhow::Result<()> {
    let cluster = TestCluster::start()?;
    let kubeconfig = Kubeconfig::read_from(cluster.admin_kubeconfig())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;

    let name = "npd-kube-node";
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    nodes.create(&PostParams::default(), &node).await?;

    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({
                "status": { "conditions": [condition("KernelDeadlock", "True", "HungTask")] }
            })),
        )
        .await
        .context("strategic merge patch of the Node's status")?;
    nodes
        .patch_status(
            name,
            &PatchParams::apply("npd-agent").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": { "name": name },
                "status": {
                    "conditions": [condition("FrequentOOMKill", "False", "NoFrequentOOMKill")]
                },
            })),
        )
        .await
        .context("server-side apply of the Node's status")?;
    let conditions: Vec<NodeCondition> = nodes
        .get_status(name)
        .await?
        .status
        .and_then(|status| status.conditions)
        .unwrap_or_default();
    let kinds: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
    assert!(
        kinds.contains(&"KernelDeadlock") && kinds.contains(&"FrequentOOMKill"),
        "conditions were not merged by type: {kinds:?}"
    );

    let now = Timestamp::from_second(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    )?)?;
    let regarding = ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Node".to_owned()),
        name: Some(name.to_owned()),
        uid: Some(name.to_owned()),
        ..ObjectReference::default()
    };
    let core_events: Api<Event> = Api::namespaced(client.clone(), "default");
    core_events
        .create(
            &PostParams::default(),
            &Event {
                metadata: ObjectMeta {
                    name: Some(format!("{name}.oom-kill")),
                    ..ObjectMeta::default()
                },
                involved_object: regarding.clone(),
                reason: Some("OOMKilling".to_owned()),
                message: Some("Killed process 4242 (stress)".to_owned()),
                type_: Some("Warning".to_owned()),
                first_timestamp: Some(Time(now)),
                last_timestamp: Some(Time(now)),
                count: Some(1),
                ..Event::default()
            },
        )
        .await
        .context("creating a core/v1 Event")?;

    // Accepted in `default` only thanks to the events.go change `cargo xtask apiserver build`
    // applies (1.20 itself wants kube-system for events about cluster-scoped objects).
    let events: Api<EventsV1Event> = Api::namespaced(client, "default");
    events
        .create(
            &PostParams::default(),
            &EventsV1Event {
                metadata: ObjectMeta {
                    name: Some(format!("{name}.kernel-oops")),
                    ..ObjectMeta::default()
                },
                event_time: Some(MicroTime(now)),
                regarding: Some(regarding),
                reason: Some("KernelOops".to_owned()),
                note: Some("BUG: unable to handle page fault".to_owned()),
                type_: Some("Warning".to_owned()),
                action: Some("Detected".to_owned()),
                reporting_controller: Some("npd.dev/npd-agent".to_owned()),
                reporting_instance: Some(format!("npd-agent-{name}")),
                ..EventsV1Event::default()
            },
        )
        .await
        .context("creating an events.k8s.io/v1 Event about the Node in `default`")?;

    cluster.stop()
}
