//! Opt-in taints against the real API server: real agents (one per Node object, all on this
//! machine, so all see the same real hung task at once), each with only the rights of the base
//! ClusterRole and of deploy/overlays/remediation, which these tests prove are enough.
//!
//! KernelDeadlock turns True through a real hung task (a writer blocked on a frozen ext4, with
//! `hung_task_timeout_secs` lowered to 2) and False after the thaw and a short recovery window.

use std::time::{Duration, Instant};

use npd_tests::{
    agent::{AgentProcess, Provoked, wait_for},
    cluster::TestCluster,
    machine::{FrozenFilesystem, Sysctl, require_root},
    remediation::{
        add_taint, budget_lease, grant_remediation_roles, ledger, npd_tainted, own_taint, taints,
    },
    reporting::{condition, create_node, events, grant_npd_cluster_role},
};
use serde_json::Value;

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");
const DEADLOCK_TAINT_KEY: &str = "npd.io/KernelDeadlock";

/// A cluster with these Node objects and npd's base and remediation roles granted to the
/// test user.
fn cluster(nodes: &[&str]) -> TestCluster {
    let cluster = TestCluster::start().expect("a real kube-apiserver + etcd");
    for node in nodes {
        create_node(&cluster, node).expect("node");
    }
    grant_npd_cluster_role(&cluster).expect("RBAC from deploy/base");
    grant_remediation_roles(&cluster).expect("RBAC from deploy/overlays/remediation");
    cluster
}

/// Short windows and intervals so the tests take seconds; only the hung-task detector.
fn config_file(
    cluster: &TestCluster,
    node: &str,
    recovery_window: &str,
    taints: &str,
) -> std::path::PathBuf {
    let path = cluster.dir().join(format!("npd-{node}.yaml"));
    std::fs::write(
        &path,
        format!(
            "detectors: [hung_task]\n\
             kubernetes:\n  heartbeat: 2s\n  retryBackoffMax: 2s\n\
             hungTask:\n  recoveryWindow: {recovery_window}\n\
             remediation:\n  taints:\n    enabled: true\n    retryInterval: 1s\n{taints}"
        ),
    )
    .expect("write the test config");
    path
}

fn start_agent(
    cluster: &TestCluster,
    node: &str,
    config: &std::path::Path,
    extra: &[&str],
) -> AgentProcess {
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--kubeconfig",
        cluster.user_kubeconfig().to_str().unwrap(),
        "--node-name",
        node,
    ];
    args.extend_from_slice(extra);
    let mut agent = AgentProcess::start(&args).expect("agent starts");
    agent
        .wait_ready(Duration::from_secs(60))
        .expect("agent ready: hooks attached and the node read");
    agent
}

fn wait_condition(cluster: &TestCluster, node: &str, status: &str, timeout: Duration) {
    wait_for(timeout, &format!("{node}: KernelDeadlock {status}"), || {
        condition(cluster, node, "KernelDeadlock").filter(|c| c["status"] == status)
    })
    .unwrap();
}

/// A child blocked writing to the frozen filesystem (D state).
fn blocked_writer(fs: &FrozenFilesystem, name: &str) -> Provoked {
    Provoked::blocked_writer(PROVOKE, fs, name, 30).expect("writer starts")
}

/// Node Events of `reason` about `node`.
fn node_events(cluster: &TestCluster, node: &str, reason: &str) -> Vec<Value> {
    events(cluster)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e["reason"] == reason
                && e["involvedObject"]["kind"] == "Node"
                && e["involvedObject"]["name"] == node
        })
        .collect()
}

fn wait_event(cluster: &TestCluster, node: &str, reason: &str, timeout: Duration) -> Value {
    wait_for(timeout, &format!("a {reason} Event on {node}"), || {
        node_events(cluster, node, reason).into_iter().next()
    })
    .unwrap()
}

fn metric(agent: &AgentProcess, needle: &str) -> Option<f64> {
    let (_, text) = agent.get("/metrics").ok()?;
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn true_taints_the_node_false_removes_only_npds_taint_and_others_taints_are_left_alone() {
    require_root("loads eBPF programs, mounts a loop device, lowers hung_task_timeout_secs");
    // `plain`: someone else's taints beside npd's (another effect of npd's key, another key);
    // `occupied`: someone else's taint on exactly npd's key and effect, with another value.
    let (plain, occupied) = ("npd-test-plain", "npd-test-occupied");
    let cluster = cluster(&[plain, occupied]);
    let others_on_plain = [
        "npd.io/KernelDeadlock=operator:PreferNoSchedule",
        "example.com/maintenance:NoSchedule",
    ];
    for taint in others_on_plain {
        add_taint(&cluster, plain, taint).unwrap();
    }
    let manual = "npd.io/KernelDeadlock=manual:NoSchedule";
    add_taint(&cluster, occupied, manual).unwrap();
    // With the API server's own (node.kubernetes.io/not-ready on a Node no kubelet runs).
    let before_plain = taints(&cluster, plain).unwrap();
    let before_occupied = taints(&cluster, occupied).unwrap();
    assert!(before_occupied.iter().any(|t| t == manual));

    let taints_config = "    conditions: [KernelDeadlock]\n    maxUnhealthy: 2\n";
    let agents: Vec<AgentProcess> = [plain, occupied]
        .into_iter()
        .map(|node| {
            let config = config_file(&cluster, node, "3s", taints_config);
            start_agent(&cluster, node, &config, &[])
        })
        .collect();
    for node in [plain, occupied] {
        wait_condition(&cluster, node, "False", Duration::from_secs(15));
    }
    // Healthy nodes leave no trace: no taint, not even the budget's Lease.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(taints(&cluster, plain).unwrap(), before_plain);
    assert!(budget_lease(&cluster).is_none(), "nothing was reserved");

    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let mut fs = FrozenFilesystem::create().expect("frozen ext4");
    let mut writer = blocked_writer(&fs, "blocked");
    let started = Instant::now();
    let tainted = wait_for(Duration::from_secs(30), "npd's taint on the node", || {
        let now = taints(&cluster, plain).ok()?;
        now.contains(&own_taint("KernelDeadlock")).then_some(now)
    })
    .unwrap();
    println!(
        "tainted {:.1}s after the freeze: {tainted:?}",
        started.elapsed().as_secs_f64()
    );
    let mut expected = before_plain.clone();
    expected.push(own_taint("KernelDeadlock"));
    assert_eq!(
        tainted, expected,
        "npd's taint beside the others, theirs untouched"
    );
    assert_eq!(ledger(&cluster).unwrap(), [plain], "the slot is recorded");
    let added = wait_event(&cluster, plain, "TaintAdded", Duration::from_secs(10));
    assert_eq!(added["type"], "Normal");
    let message = added["message"].as_str().unwrap();
    assert!(
        message.contains(&own_taint("KernelDeadlock"))
            && message.contains("KernelDeadlock is True (TaskHung"),
        "names the taint and the reason: {message}"
    );

    // The occupied node: npd cannot add its own beside the manual taint, says so, and does
    // not take a slot for nothing.
    let left_alone = wait_event(
        &cluster,
        occupied,
        "TaintLeftAlone",
        Duration::from_secs(15),
    );
    assert!(
        left_alone["message"].as_str().unwrap().contains(manual),
        "{left_alone}"
    );
    assert_eq!(taints(&cluster, occupied).unwrap(), before_occupied);
    assert_eq!(ledger(&cluster).unwrap(), [plain]);

    assert_eq!(
        metric(
            &agents[0],
            "npd_taint_changes_total{key=\"npd.io/KernelDeadlock\",action=\"added\"}"
        ),
        Some(1.0)
    );

    // Thaw: the task recovers, KernelDeadlock turns False after the 3 s window, npd takes its
    // own taint off and gives its slot back; everyone else's taints stay.
    fs.thaw().unwrap();
    let _ = writer.child.kill();
    let _ = writer.child.wait();
    let untainted = wait_for(Duration::from_secs(30), "npd's taint removed", || {
        let now = taints(&cluster, plain).ok()?;
        (!now.contains(&own_taint("KernelDeadlock"))).then_some(now)
    })
    .unwrap();
    assert_eq!(untainted, before_plain, "exactly npd's taint went");
    let removed = wait_event(&cluster, plain, "TaintRemoved", Duration::from_secs(10));
    assert_eq!(removed["type"], "Normal");
    assert!(
        removed["message"]
            .as_str()
            .unwrap()
            .contains("KernelDeadlock is False"),
        "{removed}"
    );
    wait_for(Duration::from_secs(10), "the slot given back", || {
        ledger(&cluster).ok()?.is_empty().then_some(())
    })
    .unwrap();
    wait_condition(&cluster, occupied, "False", Duration::from_secs(15));
    // A few passes later the manual taint is still there: npd never removes what it did not
    // add.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(taints(&cluster, occupied).unwrap(), before_occupied);
    assert_eq!(
        metric(
            &agents[0],
            "npd_taint_changes_total{key=\"npd.io/KernelDeadlock\",action=\"removed\"}"
        ),
        Some(1.0)
    );
    for agent in &agents {
        assert!(
            !agent.log().contains("forbid"),
            "the overlay's rights are enough: {}",
            agent.log()
        );
    }
}

#[test]
fn racing_agents_never_taint_more_nodes_than_the_budget_and_a_freed_slot_is_taken() {
    require_root("loads eBPF programs, mounts a loop device, lowers hung_task_timeout_secs");
    let with_agents = ["npd-race-a", "npd-race-b", "npd-race-c"];
    // Five Nodes at 25%: one may be tainted.
    let mut nodes = with_agents.to_vec();
    nodes.extend(["npd-race-x", "npd-race-y"]);
    let cluster = cluster(&nodes);
    let taints_config = "    conditions: [KernelDeadlock]\n    maxUnhealthy: 25%\n";
    // A long recovery window: the nodes stay True well after the thaw, unless restarted.
    let mut agents: Vec<Option<AgentProcess>> = with_agents
        .iter()
        .map(|node| {
            let config = config_file(&cluster, node, "60s", taints_config);
            Some(start_agent(&cluster, node, &config, &[]))
        })
        .collect();
    for node in with_agents {
        wait_condition(&cluster, node, "False", Duration::from_secs(15));
    }

    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let mut fs = FrozenFilesystem::create().expect("frozen ext4");
    let mut writer = blocked_writer(&fs, "blocked");
    // Every agent sees the hang at the same moment and asks for the one slot.
    let mut most_tainted = 0;
    let watch_budget = |most: &mut usize, until: &dyn Fn(&[String]) -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let tainted = npd_tainted(&cluster, &nodes).unwrap();
            *most = (*most).max(tainted.len());
            assert!(tainted.len() <= 1, "over the budget: {tainted:?}");
            if until(&tainted) {
                return tainted;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let holder = watch_budget(&mut most_tainted, &|t| t.len() == 1, "one tainted node")
        .pop()
        .unwrap();
    let refused: Vec<&str> = with_agents
        .iter()
        .copied()
        .filter(|n| *n != holder)
        .collect();
    println!("{holder} won the slot; {refused:?} were refused");
    for node in &refused {
        wait_condition(&cluster, node, "True", Duration::from_secs(10));
        let event = wait_event(
            &cluster,
            node,
            "TaintBudgetExhausted",
            Duration::from_secs(15),
        );
        assert_eq!(event["type"], "Warning");
        let message = event["message"].as_str().unwrap();
        assert!(
            message.contains(&holder) && message.contains("1 of at most 1"),
            "names who holds the budget: {message}"
        );
    }
    // They keep asking (every second) and keep being refused.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        watch_budget(&mut most_tainted, &|_| true, "");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ledger(&cluster).unwrap(), [holder.as_str()]);
    let holder_index = with_agents.iter().position(|n| *n == holder).unwrap();
    for (i, agent) in agents.iter().enumerate() {
        let refusals =
            metric(agent.as_ref().unwrap(), "npd_taint_budget_refusals_total").unwrap_or(0.0);
        if i == holder_index {
            assert_eq!(refusals, 0.0);
        } else {
            assert!(
                refusals >= 2.0,
                "{}: retried, refused {refusals}",
                with_agents[i]
            );
        }
    }
    // Only one TaintBudgetExhausted Event per refused node while nothing changes.
    for node in &refused {
        assert_eq!(node_events(&cluster, node, "TaintBudgetExhausted").len(), 1);
    }

    // Free the slot: the holder restarts with a short recovery window (its True condition
    // and its taint carry over the restart), the others keep their long one. After the thaw
    // the holder turns False, untaints and gives the slot back, and one of the others, still
    // True, takes it on its next try.
    drop(agents[holder_index].take());
    let short = config_file(&cluster, &holder, "4s", taints_config);
    agents[holder_index] = Some(start_agent(&cluster, &holder, &short, &[]));
    assert_eq!(npd_tainted(&cluster, &nodes).unwrap(), [holder.as_str()]);
    fs.thaw().unwrap();
    let _ = writer.child.kill();
    let _ = writer.child.wait();
    let successor = watch_budget(
        &mut most_tainted,
        &|t| t.len() == 1 && t[0] != holder,
        "the freed slot taken",
    )
    .pop()
    .unwrap();
    assert!(refused.contains(&successor.as_str()), "{successor}");
    wait_event(&cluster, &successor, "TaintAdded", Duration::from_secs(10));
    wait_event(&cluster, &holder, "TaintRemoved", Duration::from_secs(10));
    assert_eq!(ledger(&cluster).unwrap(), [successor.as_str()]);
    // And it stays within the budget a little longer.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        watch_budget(&mut most_tainted, &|_| true, "");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(most_tainted, 1);
    drop(agents);
}

#[test]
fn a_dry_run_says_what_it_would_do_and_changes_nothing() {
    require_root("loads eBPF programs, mounts a loop device, lowers hung_task_timeout_secs");
    let node = "npd-test-dry";
    let cluster = cluster(&[node]);
    // An npd taint of a condition that is False: a real run would remove it.
    let stale = own_taint("KernelOops");
    add_taint(&cluster, node, &stale).unwrap();
    let before = taints(&cluster, node).unwrap();
    let config = config_file(
        &cluster,
        node,
        "3s",
        "    conditions: [KernelDeadlock, KernelOops]\n    maxUnhealthy: 1\n",
    );
    let agent = start_agent(&cluster, node, &config, &["--dry-run"]);
    let would_remove = wait_event(
        &cluster,
        node,
        "TaintWouldBeRemoved",
        Duration::from_secs(15),
    );
    assert!(
        would_remove["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("dry run: npd would remove its taint {stale}")),
        "{would_remove}"
    );

    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let fs = FrozenFilesystem::create().expect("frozen ext4");
    let mut writer = blocked_writer(&fs, "blocked");
    wait_condition(&cluster, node, "True", Duration::from_secs(20));
    let would_add = wait_event(&cluster, node, "TaintWouldBeAdded", Duration::from_secs(15));
    assert_eq!(would_add["type"], "Normal");
    let message = would_add["message"].as_str().unwrap();
    assert!(
        message.contains(&own_taint("KernelDeadlock")) && message.contains("1 of at most 1"),
        "{message}"
    );
    // Several passes later: nothing changed, nothing reserved, each notice given once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(taints(&cluster, node).unwrap(), before);
    assert!(
        budget_lease(&cluster).is_none(),
        "a dry run reserves nothing"
    );
    assert_eq!(node_events(&cluster, node, "TaintWouldBeAdded").len(), 1);
    assert_eq!(node_events(&cluster, node, "TaintWouldBeRemoved").len(), 1);
    for reason in ["TaintAdded", "TaintRemoved"] {
        assert!(node_events(&cluster, node, reason).is_empty(), "{reason}");
    }
    assert!(agent.log().contains("dry run: npd would taint the node"));
    assert_eq!(
        metric(
            &agent,
            &format!(
                "npd_taint_changes_total{{key=\"{DEADLOCK_TAINT_KEY}\",action=\"would_add\"}}"
            )
        ),
        Some(1.0)
    );
    drop(fs);
    let _ = writer.child.kill();
    let _ = writer.child.wait();
}
