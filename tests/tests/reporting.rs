//! What a cluster operator sees: the real agent, real kernel problems, a real kube-apiserver
//! + etcd. The agent always runs with a token that has only npd's ClusterRole from deploy/.

use std::time::Duration;

use npd_tests::{
    agent::{AgentProcess, Provoked, wait_for},
    cluster::TestCluster,
    machine::{FrozenFilesystem, MemoryCgroup, Sysctl, require_root},
    reporting::{
        cluster_with_node, condition, create_node, create_pod, events, node_yaml,
        spawn_reporting_agent, start_reporting_agent,
    },
};

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");
const NODE: &str = "npd-test-node";

fn cluster() -> TestCluster {
    cluster_with_node(NODE)
}

fn spawn_agent(cluster: &TestCluster) -> AgentProcess {
    spawn_reporting_agent(cluster, NODE, &[])
}

fn start_agent(cluster: &TestCluster) -> AgentProcess {
    start_reporting_agent(cluster, NODE, &[])
}

/// A child blocked writing to the frozen filesystem (D state).
fn blocked_writer(fs: &FrozenFilesystem, name: &str) -> Provoked {
    Provoked::blocked_writer(PROVOKE, fs, name, 30).expect("writer starts")
}

#[test]
fn a_hung_task_sets_kernel_deadlock_which_survives_a_restart_and_clears_after_recovery() {
    require_root("loads eBPF programs, mounts a loop device, lowers hung_task_timeout_secs");
    let cluster = cluster();
    let agent = start_agent(&cluster);
    // Every condition npd owns is present and False from the start.
    for kind in ["KernelDeadlock", "KernelOops", "FDPressure"] {
        let found = wait_for(Duration::from_secs(10), kind, || {
            condition(&cluster, NODE, kind).filter(|c| c["status"] == "False")
        })
        .unwrap();
        assert!(found["lastHeartbeatTime"].is_string(), "{found}");
    }

    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let mut fs = FrozenFilesystem::create().expect("frozen ext4");
    let mut writer = blocked_writer(&fs, "blocked");
    let pid = writer.pid;
    let hung = wait_for(Duration::from_secs(20), "KernelDeadlock True", || {
        condition(&cluster, NODE, "KernelDeadlock").filter(|c| c["status"] == "True")
    })
    .unwrap();
    println!("while hung:\n{}", node_yaml(&cluster, NODE));
    assert_eq!(hung["reason"], "TaskHung");
    let message = hung["message"].as_str().unwrap();
    assert!(
        message.contains("npd-provoke") && message.contains(&pid.to_string()),
        "the message names the task: {message}"
    );
    assert!(
        message.contains("percpu_rwsem_wait"),
        "and its top frames: {message}"
    );
    let (code, metrics) = agent.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("problem_gauge{reason=\"TaskHung\",type=\"KernelDeadlock\"} 1"),
        "{metrics}"
    );
    // A TaskHung Event on the Node.
    let task_hung = wait_for(Duration::from_secs(10), "a TaskHung Event", || {
        events(&cluster)
            .ok()?
            .into_iter()
            .find(|e| e["reason"] == "TaskHung" && e["involvedObject"]["kind"] == "Node")
    })
    .unwrap();
    assert_eq!(task_hung["involvedObject"]["name"], NODE);
    assert_eq!(task_hung["type"], "Warning");

    // Restart the agent while the task is still hung: the condition stays True with its
    // transition time (NPD #304 reset it to False).
    let transition = hung["lastTransitionTime"].clone();
    let stopped = agent.stop().unwrap();
    assert!(stopped.success(), "the agent exits 0 on SIGTERM: {stopped}");
    let agent = start_agent(&cluster);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        let after = condition(&cluster, NODE, "KernelDeadlock").unwrap();
        assert_eq!(
            after["status"], "True",
            "a restart must not reset it: {after}"
        );
        assert_eq!(after["lastTransitionTime"], transition, "{after}");
    }

    // Thaw: the task recovers; after the (shortened) recovery window the condition clears.
    fs.thaw().unwrap();
    let healthy = wait_for(Duration::from_secs(20), "KernelDeadlock False", || {
        condition(&cluster, NODE, "KernelDeadlock").filter(|c| c["status"] == "False")
    })
    .unwrap();
    println!("after recovery:\n{}", node_yaml(&cluster, NODE));
    assert_eq!(healthy["reason"], "KernelHasNoDeadlock");
    assert_ne!(healthy["lastTransitionTime"], transition);
    let _ = writer.child.kill();
    let _ = writer.child.wait();
    drop(agent);
}

#[test]
fn an_oom_kill_in_a_pod_cgroup_is_an_event_on_the_pod_and_the_node() {
    require_root("loads eBPF programs and creates a memory cgroup");
    let cluster = cluster();
    // A Pod bound to this node, with a running container whose id the cgroup will carry.
    let uid = create_pod(&cluster, "hungry", NODE);
    let container_id = format!("{:0>64}", format!("{:x}", std::process::id()));
    let status = serde_json::json!({ "status": { "phase": "Running", "containerStatuses": [{
        "name": "app", "image": "busybox", "imageID": "", "ready": true, "restartCount": 0,
        "containerID": format!("containerd://{container_id}"), "state": { "running": {} },
    }]}});
    let out = cluster.kubectl(&[
        "patch",
        "pod",
        "hungry",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let _agent = start_agent(&cluster);
    // Laid out like the kubelet's cgroupfs driver lays out a burstable pod's container.
    let cgroup = MemoryCgroup::create(
        &format!("kubepods/burstable/pod{uid}/{container_id}"),
        64 << 20,
    )
    .expect("pod-shaped memory cgroup");
    // Give the pod watch a moment to list the pod (the agent is ready before it has).
    std::thread::sleep(Duration::from_secs(2));
    let status = Provoked::oom_in(PROVOKE, &cgroup)
        .expect("allocator starts")
        .child
        .wait()
        .unwrap();
    assert!(!status.success(), "the OOM killer killed it: {status}");

    let on = |kind: &'static str, name: &'static str| {
        wait_for(Duration::from_secs(15), kind, || {
            events(&cluster).ok()?.into_iter().find(|e| {
                e["reason"] == "OOMKilling"
                    && e["involvedObject"]["kind"] == kind
                    && e["involvedObject"]["name"] == name
            })
        })
        .unwrap()
    };
    let on_pod = on("Pod", "hungry");
    let on_node = on("Node", NODE);
    assert_eq!(on_pod["metadata"]["namespace"], "default");
    assert_eq!(on_pod["involvedObject"]["uid"], uid.as_str());
    assert_eq!(on_pod["type"], "Warning");
    for event in [&on_pod, &on_node] {
        let message = event["message"].as_str().unwrap();
        assert!(
            message.contains("app") && message.contains("hungry"),
            "names the pod and container: {message}"
        );
        assert_eq!(event["source"]["component"], "npd");
        assert_eq!(event["count"], 1);
    }
}

#[test]
fn a_condition_set_while_the_api_server_is_down_arrives_when_it_returns() {
    require_root("loads eBPF programs, mounts a loop device, lowers hung_task_timeout_secs");
    let mut cluster = cluster();
    let agent = start_agent(&cluster);
    wait_for(Duration::from_secs(10), "KernelDeadlock False", || {
        condition(&cluster, NODE, "KernelDeadlock").filter(|c| c["status"] == "False")
    })
    .unwrap();

    cluster.stop_apiserver().unwrap();
    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let mut fs = FrozenFilesystem::create().expect("frozen ext4");
    let mut writer = blocked_writer(&fs, "during-outage");
    // Detected meanwhile (the engine's decision is made; the reporter keeps retrying).
    std::thread::sleep(Duration::from_secs(8));
    let (code, health) = agent.get("/healthz").unwrap();
    assert_eq!(
        code, 200,
        "an unreachable API server is not an unhealthy agent: {health}"
    );
    assert!(
        agent.log().contains("retrying"),
        "the failures are logged as retried"
    );
    cluster.start_apiserver().unwrap();
    let arrived = wait_for(
        Duration::from_secs(20),
        "KernelDeadlock True after the outage",
        || condition(&cluster, NODE, "KernelDeadlock").filter(|c| c["status"] == "True"),
    )
    .unwrap();
    assert_eq!(arrived["reason"], "TaskHung");
    // The Event raised during the outage is not lost either.
    wait_for(Duration::from_secs(15), "the TaskHung Event", || {
        events(&cluster)
            .ok()?
            .into_iter()
            .find(|e| e["reason"] == "TaskHung")
    })
    .unwrap();
    let (_, metrics) = agent.get("/metrics").unwrap();
    assert!(
        metrics.contains(
            "npd_api_errors_total{verb=\"patch\",resource=\"nodes/npd-test-node/status\""
        ),
        "the failed patches are counted: {metrics}"
    );
    // Thaw first: a task blocked in D state cannot be killed or reaped until it wakes.
    fs.thaw().unwrap();
    let _ = writer.child.kill();
    let _ = writer.child.wait();
}

#[test]
fn a_hung_api_server_times_requests_out_and_the_agent_stays_healthy() {
    require_root("loads eBPF programs");
    let cluster = cluster();
    let agent = start_agent(&cluster);
    let heartbeat = || {
        condition(&cluster, NODE, "KernelDeadlock")
            .and_then(|c| c["lastHeartbeatTime"].as_str().map(ToOwned::to_owned))
    };
    let before = wait_for(Duration::from_secs(10), "a heartbeat", heartbeat).unwrap();

    // Longer than the agent's request timeout (20 s), so that requests hang until it fires
    // (without one the reporter would wait silently for as long as the server hangs), and
    // shorter than the reporter's allowed stall (3 heartbeats + 2 request timeouts, 46 s).
    let logged_before = agent.log().len();
    let paused = cluster.pause_apiserver().unwrap();
    let mut unhealthy = Vec::new();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let (code, body) = agent.get("/healthz").unwrap();
        if code != 200 {
            unhealthy.push(body);
        }
    }
    drop(paused);
    assert!(
        unhealthy.is_empty(),
        "a hung API server made the agent unhealthy: {unhealthy:?}\n{}",
        agent.log()
    );
    // Nothing refuses the connections: a failure logged during the pause is a timeout.
    let log = agent.log();
    let during = &log[logged_before.min(log.len())..];
    assert!(
        during.contains("status failed") && during.contains("retrying"),
        "the hung requests time out and are retried:\n{log}"
    );
    wait_for(Duration::from_secs(20), "a newer heartbeat", || {
        heartbeat().filter(|now| *now > before)
    })
    .unwrap();
}

#[test]
fn the_deploy_cluster_role_is_enough_and_no_more() {
    require_root("loads eBPF programs");
    let cluster = cluster();
    // Enough: the agent reads its node and writes its conditions with that role alone
    // (the other tests in this file run the whole pipeline with it).
    let _agent = start_agent(&cluster);
    wait_for(Duration::from_secs(10), "npd's conditions", || {
        condition(&cluster, NODE, "FDPressure")
    })
    .unwrap();
    // No more: everything npd does not need is refused.
    create_node(&cluster, "other-node").unwrap();
    for (what, args) in [
        (
            "patch another node's spec",
            vec![
                "patch",
                "node",
                "other-node",
                "-p",
                r#"{"spec":{"unschedulable":true}}"#,
            ],
        ),
        (
            "patch its own node's spec",
            vec![
                "patch",
                "node",
                NODE,
                "-p",
                r#"{"spec":{"unschedulable":true}}"#,
            ],
        ),
        ("delete a node", vec!["delete", "node", "other-node"]),
        ("read secrets", vec!["get", "secrets", "-n", "kube-system"]),
        (
            "create pods",
            vec!["run", "x", "--image=busybox", "-n", "default"],
        ),
        (
            "delete events",
            vec!["delete", "events", "--all", "-n", "default"],
        ),
        ("list configmaps", vec!["get", "configmaps", "-A"]),
    ] {
        let out = cluster.kubectl_as_user(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("forbidden"),
            "npd's role must not {what}: {stderr}"
        );
    }
}

#[test]
fn without_rights_the_agent_says_which_verb_and_resource_are_forbidden() {
    require_root("loads eBPF programs");
    let cluster = TestCluster::start().expect("cluster");
    create_node(&cluster, NODE).unwrap();
    // No binding for the test user this time.
    let agent = spawn_agent(&cluster);
    let line = wait_for(Duration::from_secs(20), "the RBAC error", || {
        agent
            .log()
            .lines()
            .find(|l| l.contains("forbids npd to get nodes/npd-test-node"))
            .map(str::to_owned)
    })
    .unwrap();
    assert!(
        line.contains("403") && line.contains("ClusterRole"),
        "{line}"
    );
    let (code, body) = agent.get("/readyz").unwrap();
    assert_eq!(code, 503, "not ready before the node is read: {body}");
    assert!(body.contains("node"), "{body}");
}
