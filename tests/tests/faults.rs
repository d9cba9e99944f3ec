//! The agent under faults: slow and hoarding HTTP clients on its listener, and an API server
//! that refuses, throttles, fails, dawdles, resets and hangs (injected by a proxy in this
//! process between the agent and the real kube-apiserver) while real problems are provoked.
//! Every figure these tests print is in README "Under faults".

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use npd_tests::{
    agent::{AgentProcess, Provoked, run_json, wait_for},
    cluster::TestCluster,
    faults::Fault,
    faults::{FaultProxy, KubectlProxy, Rule, rss_kib},
    machine::{FrozenFilesystem, Sysctl, require_root},
    reporting::{condition, create_node, events, grant_npd_cluster_role},
};

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");
const NODE: &str = "npd-test-node";

/// GET /healthz on a fresh connection: the status code (0: no answer within 5 s).
fn healthz(addr: SocketAddr) -> u16 {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Probes /healthz every 500 ms in the background; the failures, with when they happened.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<(Instant, u16)>>>,
    probes: Arc<Mutex<u32>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthWatch {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let probes = Arc::new(Mutex::new(0));
        let (s, f, p) = (
            Arc::clone(&stop),
            Arc::clone(&failures),
            Arc::clone(&probes),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let code = healthz(addr);
                *p.lock().unwrap() += 1;
                if code != 200 {
                    f.lock().unwrap().push((Instant::now(), code));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Self {
            stop,
            failures,
            probes,
            thread: Some(thread),
        }
    }

    /// (probes, failures)
    fn finish(mut self) -> (u32, Vec<(Instant, u16)>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let probes = *self.probes.lock().unwrap();
        (probes, self.failures.lock().unwrap().clone())
    }
}

/// Many connections that send a request head a little at a time and never finish it, kept
/// at `count` (a closed one is opened again), for `duration`; meanwhile /healthz is asked
/// every 500 ms on a fresh connection and the agent's RSS sampled. Returns (probes, failed
/// probes, peak RSS KiB, connections opened).
fn slowloris(agent: &AgentProcess, count: usize, duration: Duration) -> (u32, u32, u64, usize) {
    let addr = agent.http;
    let open = || {
        let stream = TcpStream::connect(addr).ok()?;
        stream.set_nonblocking(true).ok()?;
        let mut stream = stream;
        let _ = stream.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        Some(stream)
    };
    let mut conns: Vec<Option<TcpStream>> = (0..count).map(|_| open()).collect();
    let mut opened = count;
    let watch = HealthWatch::start(addr);
    let mut peak = 0;
    let until = Instant::now() + duration;
    // A header line of 1 KiB per connection every 100 ms: 10 KiB/s each, which an unbounded
    // server buffers until the request head is done (never).
    let trickle = format!("X-Slow: {}\r\n", "a".repeat(1014));
    while Instant::now() < until {
        for slot in &mut conns {
            let alive = slot.as_mut().is_some_and(|s| {
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        s.write(trickle.as_bytes()).is_ok()
                            || std::io::Error::last_os_error().kind()
                                == std::io::ErrorKind::WouldBlock
                    }
                    Err(_) => false,
                }
            });
            if !alive {
                *slot = open();
                opened += 1;
            }
        }
        peak = peak.max(rss_kib(agent.pid()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (probes, failures) = watch.finish();
    (probes, failures.len() as u32, peak, opened)
}

#[test]
fn slow_clients_neither_fail_healthz_nor_grow_memory() {
    require_root("loads eBPF programs");
    let mut agent = AgentProcess::start(&["--standalone"]).expect("agent starts");
    agent.wait_ready(Duration::from_secs(60)).expect("ready");
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(agent.pid()).expect("rss");
    let (probes, failed, peak, opened) = slowloris(&agent, 400, Duration::from_secs(20));
    let after = rss_kib(agent.pid()).expect("rss");
    println!(
        "slowloris: 400 connections for 20 s ({opened} opened in all): /healthz {}/{probes} ok; \
         agent RSS idle {idle} KiB, peak {peak} KiB, after {after} KiB",
        probes - failed
    );
    assert_eq!(failed, 0, "/healthz failed {failed} of {probes} times");
    assert!(
        peak <= idle + 24 * 1024,
        "RSS grew from {idle} KiB to {peak} KiB under 400 slow connections"
    );
    assert!(
        opened > 400,
        "the slow connections were closed and reopened (header timeout / limit)"
    );
}

// --- the API server under faults ---------------------------------------------------------

/// `npd-provoke emfile` under the name `comm` (a copy of the binary, so that the Event's
/// message names it and a fault can single it out): its pid.
fn provoke_as(dir: &std::path::Path, comm: &str) -> u64 {
    let exe = dir.join(comm);
    if !exe.exists() {
        std::fs::copy(PROVOKE, &exe).expect("copy npd-provoke");
    }
    let result =
        run_json(Command::new(&exe).args(["emfile", "--limit", "24", "--syscall", "openat"]))
            .expect("the provoker runs");
    result["pid"].as_u64().expect("pid")
}

/// The Events on the server about this pid (its message names `(pid N`).
fn events_of(cluster: &TestCluster, pid: u64) -> Vec<serde_json::Value> {
    let needle = format!("(pid {pid}");
    events(cluster)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains(&needle)))
        .collect()
}

fn metric(agent: &AgentProcess, prefix: &str) -> f64 {
    let (_, text) = agent.get("/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Phase {
    name: &'static str,
    rules: Vec<Rule>,
    /// How long the fault lasts.
    lasts: Duration,
}

#[test]
fn events_and_conditions_survive_api_faults_without_head_of_line_blocking() {
    require_root("loads eBPF programs");
    let cluster = TestCluster::start().expect("a real kube-apiserver + etcd");
    create_node(&cluster, NODE).expect("node");
    grant_npd_cluster_role(&cluster).expect("RBAC from deploy/");
    let kubectl = KubectlProxy::start(&cluster).expect("kubectl proxy");
    let proxy = FaultProxy::start(kubectl.addr).expect("fault proxy");
    // Short windows so that the faults take seconds: the figures in README depend on them.
    let config = cluster.dir().join("npd-faults.yaml");
    std::fs::write(
        &config,
        "kubernetes: {heartbeat: 2s, retryBackoffMax: 2s}\nhungTask: {recoveryWindow: 3s}\n",
    )
    .unwrap();
    let kubeconfig = proxy.kubeconfig(cluster.dir()).unwrap();
    let mut agent = AgentProcess::start(&[
        "--config",
        config.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        NODE,
    ])
    .expect("agent starts");
    agent.wait_ready(Duration::from_secs(60)).expect("ready");
    let dir = cluster.dir().to_owned();
    let watch = HealthWatch::start(agent.http);
    let mut sent = 0;
    let mut report = Vec::new();

    // 1. Head-of-line: one Event refused (403 in the Node's namespace: parked, retried), the
    //    next goes through meanwhile; the refused one arrives once the refusal ends.
    proxy.inject(Rule::new(Fault::status(403)).events().body("refused (pid"));
    let refused = provoke_as(&dir, "refused");
    let next = provoke_as(&dir, "npd-provoke");
    sent += 2;
    let started = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "the Event behind a refused one",
        || (!events_of(&cluster, next).is_empty()).then_some(()),
    )
    .expect("no head-of-line blocking");
    let behind = started.elapsed();
    assert!(events_of(&cluster, refused).is_empty(), "refused meanwhile");
    wait_for(
        Duration::from_secs(10),
        "the refused Event shown as parked",
        || (metric(&agent, "npd_events_parked ") >= 1.0).then_some(()),
    )
    .expect("npd_events_parked counts the refused Event");
    proxy.clear();
    let cleared = Instant::now();
    wait_for(Duration::from_secs(15), "the parked Event", || {
        (!events_of(&cluster, refused).is_empty()).then_some(())
    })
    .expect("the parked Event arrives after the refusal");
    wait_for(Duration::from_secs(10), "no Event parked", || {
        (metric(&agent, "npd_events_parked ") == 0.0).then_some(())
    })
    .expect("npd_events_parked back to 0 once it went out");
    report.push(format!(
        "403 on one Event: the next arrived after {:.1} s; the refused one {:.1} s after the refusal ended",
        behind.as_secs_f64(),
        cleared.elapsed().as_secs_f64()
    ));

    // 2. Refused for good (404): dropped and counted, the next goes through.
    proxy.inject(
        Rule::new(Fault::status(404))
            .events()
            .method("POST")
            .body("gone (pid"),
    );
    let gone = provoke_as(&dir, "gone");
    let after_gone = provoke_as(&dir, "npd-provoke");
    sent += 2;
    wait_for(
        Duration::from_secs(15),
        "the Event after a dropped one",
        || (!events_of(&cluster, after_gone).is_empty()).then_some(()),
    )
    .expect("the Event after a dropped one");
    wait_for(Duration::from_secs(5), "the drop counted", || {
        (metric(&agent, "npd_api_errors_total{verb=\"drop\"") >= 1.0).then_some(())
    })
    .expect("the dropped Event is counted");
    proxy.clear();
    let dropped = 1;

    // 3. Faults on every kind of request, per request and in bursts, each while a problem
    //    is provoked; recovery is the time from the fault's end to the Event on the server.
    let phases = vec![
        Phase {
            name: "409 on the status patches (burst of 3)",
            rules: vec![Rule::new(Fault::status(409)).path("/status").burst(3)],
            lasts: Duration::from_secs(4),
        },
        Phase {
            name: "429 Retry-After: 3 on every request (burst of 4)",
            rules: vec![
                Rule::new(Fault::Status {
                    code: 429,
                    retry_after: Some(3),
                })
                .burst(4),
            ],
            lasts: Duration::from_secs(4),
        },
        Phase {
            name: "500 on every other request",
            rules: vec![Rule::new(Fault::status(500)).every(2)],
            lasts: Duration::from_secs(6),
        },
        Phase {
            name: "503 on every request",
            rules: vec![Rule::new(Fault::status(503))],
            lasts: Duration::from_secs(6),
        },
        Phase {
            name: "slow: 3 s per answer",
            rules: vec![Rule::new(Fault::Slow(Duration::from_secs(3)))],
            lasts: Duration::from_secs(8),
        },
        Phase {
            name: "connection reset on every request",
            rules: vec![Rule::new(Fault::Reset)],
            lasts: Duration::from_secs(6),
        },
        Phase {
            name: "hung server (no answer) for 25 s",
            rules: vec![Rule::new(Fault::Hang)],
            lasts: Duration::from_secs(25),
        },
    ];
    for phase in phases {
        let heartbeats_before = proxy
            .records()
            .iter()
            .filter(|r| r.path.contains("/status") && r.outcome == "forwarded 200")
            .count();
        for rule in phase.rules {
            proxy.inject(rule);
        }
        let pid = provoke_as(&dir, "npd-provoke");
        sent += 1;
        std::thread::sleep(phase.lasts);
        let during = !events_of(&cluster, pid).is_empty();
        proxy.clear();
        let cleared = Instant::now();
        wait_for(Duration::from_secs(30), phase.name, || {
            (!events_of(&cluster, pid).is_empty()).then_some(())
        })
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", phase.name, agent.log()));
        let event_after = cleared.elapsed();
        // The Node's heartbeat resumes too.
        wait_for(
            Duration::from_secs(30),
            "a heartbeat after the fault",
            || {
                (proxy
                    .records()
                    .iter()
                    .filter(|r| r.path.contains("/status") && r.outcome == "forwarded 200")
                    .count()
                    > heartbeats_before)
                    .then_some(())
            },
        )
        .unwrap();
        let heartbeat_after = cleared.elapsed();
        report.push(format!(
            "{}: Event {}; heartbeat back within {:.1} s",
            phase.name,
            if during {
                "written during the fault".to_owned()
            } else {
                format!(
                    "on the server {:.1} s after the fault",
                    event_after.as_secs_f64()
                )
            },
            heartbeat_after.as_secs_f64()
        ));
    }

    // 4. Condition changes under faults: a task hangs while every status patch fails (503,
    //    then resets); KernelDeadlock True arrives once they end, False after the thaw.
    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    proxy.inject(Rule::new(Fault::status(503)).path("/status").every(2));
    proxy.inject(Rule::new(Fault::Reset).path("/status"));
    let mut fs = FrozenFilesystem::create().expect("frozen ext4");
    let mut writer = Provoked::blocked_writer(PROVOKE, &fs, "blocked", 30).expect("writer starts");
    std::thread::sleep(Duration::from_secs(8));
    let during = condition(&cluster, NODE, "KernelDeadlock").unwrap_or_default();
    assert_ne!(
        during["status"], "True",
        "no status patch went through: {during}"
    );
    proxy.clear();
    let cleared = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "KernelDeadlock True after the faults",
        || condition(&cluster, NODE, "KernelDeadlock").filter(|c| c["status"] == "True"),
    )
    .unwrap();
    let true_after = cleared.elapsed();
    proxy.inject(Rule::new(Fault::status(500)).path("/status").every(2));
    fs.thaw().unwrap();
    let thawed = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "KernelDeadlock False after the thaw",
        || condition(&cluster, NODE, "KernelDeadlock").filter(|c| c["status"] == "False"),
    )
    .unwrap();
    proxy.clear();
    let _ = writer.child.kill();
    let _ = writer.child.wait();
    report.push(format!(
        "KernelDeadlock set while every status patch failed (503 / reset): True on the \
         server {:.1} s after the faults ended; False {:.1} s after the thaw (recovery window \
         3 s) with every other status patch failing (500)",
        true_after.as_secs_f64(),
        thawed.elapsed().as_secs_f64()
    ));
    // The TaskHung Event and the recovery one go out too.

    // Sent vs seen: every Event exactly once, but the one refused for good.
    std::thread::sleep(Duration::from_secs(3));
    let ours: Vec<_> = events(&cluster)
        .unwrap()
        .into_iter()
        .filter(|e| e["reason"] == "FDExhausted")
        .collect();
    let (probes, unhealthy) = watch.finish();
    let records = proxy.records();
    let injected = records
        .iter()
        .filter(|r| !r.outcome.starts_with("forwarded"))
        .count();
    println!(
        "under faults ({} requests through the proxy, {injected} faulted):",
        records.len()
    );
    for line in &report {
        println!("  {line}");
    }
    println!(
        "  Events: {sent} provoked, {} on the server, {dropped} refused for good (counted); \
         /healthz {}/{probes} ok",
        ours.len(),
        probes as usize - unhealthy.len()
    );
    assert_eq!(ours.len(), sent - dropped, "{ours:#?}");
    assert!(events_of(&cluster, gone).is_empty());
    assert!(
        unhealthy.is_empty(),
        "/healthz failed: {unhealthy:?}\n{}",
        agent.log()
    );
}
