//! Node daemons, end to end with a real containerd (Debian's, with runc) on a private socket,
//! root and state directory, and a real kube-apiserver: the CRI probe sees it answer, stop
//! (SIGSTOP) and come back; the kernel sees it killed and restarted into a restart loop; a hung
//! task the classifier takes for containerd sets KernelDeadlock with `ContainerdHung`.
//! Everything the tests start is stopped and removed by Drop guards, also on failure.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use npd_tests::{
    agent::{EventDump, Provoked, wait_for},
    machine::{FrozenFilesystem, Sysctl, require_root},
    reporting::{cluster_with_node, condition, events, start_reporting_agent_with},
};
use serde_json::Value;

const PROVOKE: &str = env!("CARGO_BIN_EXE_npd-provoke");

/// A containerd with everything under one scratch directory. Drop resumes and kills it,
/// unmounts what it mounted there and removes the directory.
#[derive(Debug)]
struct Containerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    fn new(name: &str) -> Self {
        let installed = |name: &str| {
            ["/usr/bin", "/usr/sbin"]
                .iter()
                .any(|dir| Path::new(dir).join(name).exists())
        };
        assert!(
            installed("containerd") && installed("runc"),
            "containerd and runc are installed (`cargo xtask test` installs Debian's)"
        );
        let dir = std::env::temp_dir().join(format!("npd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        // Private paths only; restrict_oom_score_adj because this sandbox has no
        // CAP_SYS_RESOURCE (NODE-PROBLEMS.md). No CNI config: NetworkReady is false, which
        // is the kubelet's to report, not the runtime's health.
        let config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [plugins]\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{d}/cni-bin\"\n  \
             conf_dir = \"{d}/cni-conf\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        Self { dir, child: None }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Starts it and waits for its socket.
    fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(self.dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        self.child = Some(child);
        let socket = self.socket();
        wait_for(Duration::from_secs(30), "containerd's socket", || {
            socket.exists().then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}; its log:\n{}", self.log()));
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a plain syscall on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// SIGKILL, reaped.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: a plain syscall on our own child's pid; a failure changes nothing here.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.kill();
        // Snapshotter and shim mounts under its root, deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(self.dir.to_str().unwrap_or("\0")))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in ours {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("WARNING: removing {}: {err}", self.dir.display());
        }
    }
}

fn true_condition(
    cluster: &npd_tests::cluster::TestCluster,
    node: &str,
    kind: &str,
) -> Option<Value> {
    condition(cluster, node, kind).filter(|c| c["status"] == "True")
}

fn false_condition(
    cluster: &npd_tests::cluster::TestCluster,
    node: &str,
    kind: &str,
) -> Option<Value> {
    condition(cluster, node, kind).filter(|c| c["status"] == "False")
}

#[test]
fn a_stopped_containerd_is_unhealthy_until_it_resumes() {
    require_root("runs containerd");
    const NODE: &str = "npd-runtime-health-node";
    let mut containerd = Containerd::new("runtime-health");
    containerd.start();
    let cluster = cluster_with_node(NODE);
    // Probe timeout 2 s, period 2 s; no kubelet (nothing listens on its port: not applicable).
    let config = format!(
        "daemons:\n  runtimeEndpoints: [\"{}\"]\n  probeTimeout: 2s\n  probePeriod: 2s\n  \
         kubeletHealthz: http://127.0.0.1:1/healthz\n",
        containerd.socket().display()
    );
    let agent =
        start_reporting_agent_with(&cluster, NODE, &config, &["--detectors", "daemon_health"]);

    // It answers: the condition stays False over several probes (a failing probe of an
    // existing socket would turn it True at the first).
    let healthy = wait_for(
        Duration::from_secs(20),
        "ContainerRuntimeUnhealthy False",
        || false_condition(&cluster, NODE, "ContainerRuntimeUnhealthy"),
    )
    .unwrap();
    assert_eq!(healthy["reason"], "ContainerRuntimeIsHealthy");
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        false_condition(&cluster, NODE, "ContainerRuntimeUnhealthy").is_some(),
        "a working containerd is healthy: {:?}\nagent: {}",
        condition(&cluster, NODE, "ContainerRuntimeUnhealthy"),
        agent.log()
    );
    assert!(
        false_condition(&cluster, NODE, "KubeletUnhealthy").is_some(),
        "no kubelet here: not applicable, nothing raised"
    );

    // Stopped: the calls time out. Within the timeout plus one period, plus the report.
    containerd.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    let down = wait_for(
        Duration::from_secs(2 + 2 + 6),
        "ContainerRuntimeUnhealthy True",
        || true_condition(&cluster, NODE, "ContainerRuntimeUnhealthy"),
    )
    .unwrap_or_else(|e| panic!("{e}\nagent: {}", agent.log()));
    eprintln!("unhealthy after {:?}", stopped_at.elapsed());
    assert_eq!(down["reason"], "ContainerdUnhealthy");
    let message = down["message"].as_str().unwrap();
    assert!(
        message.contains("containerd.sock did not answer")
            && message.contains("no answer within 2s"),
        "{message}"
    );

    containerd.signal(libc::SIGCONT);
    let up = wait_for(
        Duration::from_secs(15),
        "ContainerRuntimeUnhealthy False again",
        || false_condition(&cluster, NODE, "ContainerRuntimeUnhealthy"),
    )
    .unwrap();
    assert_eq!(up["reason"], "ContainerRuntimeIsHealthy");
    let _ = agent.stop();
}

#[test]
fn containerd_killed_and_restarted_five_times_is_a_restart_loop() {
    require_root("loads eBPF programs, runs containerd");
    const NODE: &str = "npd-restart-loop-node";
    let mut containerd = Containerd::new("restart-loop");
    let cluster = cluster_with_node(NODE);
    // A 40 s window instead of NPD's 20 min, so the test also sees it clear.
    let agent = start_reporting_agent_with(
        &cluster,
        NODE,
        "daemons:\n  restartWindow: 40s\n",
        &["--detectors", "daemons"],
    );
    for _ in 0..5 {
        containerd.start();
        std::thread::sleep(Duration::from_millis(500));
        containerd.kill();
    }
    let looping = wait_for(
        Duration::from_secs(15),
        "FrequentContainerdRestart True",
        || true_condition(&cluster, NODE, "FrequentContainerdRestart"),
    )
    .unwrap_or_else(|e| panic!("{e}\nagent: {}", agent.log()));
    assert_eq!(looping["reason"], "FrequentContainerdRestart");
    let message = looping["message"].as_str().unwrap();
    assert!(
        message.contains("containerd started at least 5 times in 40 s"),
        "{message}"
    );
    let died = wait_for(Duration::from_secs(15), "a DaemonDied Event", || {
        events(&cluster)
            .ok()?
            .into_iter()
            .find(|e| e["reason"] == "DaemonDied")
    })
    .unwrap();
    let message = died["message"].as_str().unwrap();
    assert!(
        message.contains("containerd (pid ") && message.contains("killed by signal 9 (SIGKILL)"),
        "{message}"
    );
    assert!(died["count"].as_u64().unwrap_or(1) >= 1);
    // The other daemons' conditions stay False.
    assert!(false_condition(&cluster, NODE, "FrequentKubeletRestart").is_some());
    // Quiet for the window: cleared.
    let quiet = wait_for(
        Duration::from_secs(60),
        "FrequentContainerdRestart False",
        || false_condition(&cluster, NODE, "FrequentContainerdRestart"),
    )
    .unwrap();
    assert_eq!(quiet["reason"], "NoFrequentContainerdRestart");
    let _ = agent.stop();
}

/// A directory holding a symlink named `containerd` to npd-provoke: exec'd through it, the
/// kernel names the process `containerd` (comm comes from the path exec'd).
#[derive(Debug)]
struct NamedAs {
    dir: PathBuf,
}

impl NamedAs {
    fn containerd() -> Self {
        let dir = std::env::temp_dir().join(format!("npd-named-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(PROVOKE, dir.join("containerd")).unwrap();
        Self { dir }
    }

    fn program(&self) -> String {
        self.dir.join("containerd").display().to_string()
    }
}

impl Drop for NamedAs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_hung_containerd_sets_kernel_deadlock_with_containerd_hung() {
    require_root("loads eBPF programs, mounts a loop device, lowers hung_task_timeout_secs");
    const NODE: &str = "npd-containerd-hung-node";
    let cluster = cluster_with_node(NODE);
    let agent = start_reporting_agent_with(&cluster, NODE, "", &["--detectors", "hung_task"]);
    let _timeout = Sysctl::set("/proc/sys/kernel/hung_task_timeout_secs", "2").unwrap();
    let named = NamedAs::containerd();
    let mut fs = FrozenFilesystem::create().expect("frozen loop-mounted ext4");
    let mut writer =
        Provoked::blocked_writer(&named.program(), &fs, "blocked", 8).expect("writer starts");
    let hung = wait_for(Duration::from_secs(20), "KernelDeadlock True", || {
        true_condition(&cluster, NODE, "KernelDeadlock")
    })
    .unwrap_or_else(|e| panic!("{e}\nagent: {}", agent.log()));
    fs.thaw().expect("thaw");
    let _ = writer.child.kill();
    let _ = writer.child.wait();
    assert_eq!(hung["reason"], "ContainerdHung");
    let message = hung["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("containerd (pid {})", writer.pid)),
        "names the process: {message}"
    );
    let event = wait_for(Duration::from_secs(15), "TaskHung Event", || {
        events(&cluster)
            .ok()?
            .into_iter()
            .find(|e| e["reason"] == "TaskHung")
    })
    .unwrap();
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("(the container runtime containerd)"),
        "{message}"
    );
    let _ = agent.stop();
}

/// Both hooks (tp_btf and the classic tracepoints) see a watched name start and die, with
/// the exit code, and nothing of names not watched; threads' exits are not reported.
#[test]
fn starts_and_exits_of_watched_names_on_either_hook() {
    require_root("loads eBPF programs");
    let named = NamedAs::containerd();
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    for (flags, source) in [
        (&["--detectors", "daemons"][..], "tp_btf"),
        (
            &["--detectors", "daemons", "--fallback-hooks-only"][..],
            "tracepoint",
        ),
    ] {
        let mut dump = EventDump::start(flags).expect("event-dump starts");
        // A usage error (exit code 1), then 4 threads failing openat for 0.2 s (exit 0).
        assert_eq!(run(&named.program(), &["no-such-command"]).code(), Some(1));
        let threads = ["storm", "--threads", "4", "--seconds", "0.2"];
        assert!(run(&named.program(), &threads).success());
        assert!(!run(PROVOKE, &["no-such-command"]).success());
        let exits = |seen: &[Value]| {
            seen.iter()
                .filter(|e| e["comm"] == "containerd" && e["kind"] == "daemon_exited")
                .count()
        };
        dump.collect_until(Duration::from_secs(10), |seen| exits(seen) >= 2);
        // The stragglers, if any (a thread's exit would come after its process's start).
        std::thread::sleep(Duration::from_secs(2));
        let seen = dump.collect_until(Duration::from_millis(500), |_| false);
        let ours: Vec<&Value> = seen.iter().filter(|e| e["comm"] == "containerd").collect();
        let start = ours
            .iter()
            .find(|e| e["kind"] == "daemon_restarts")
            .unwrap_or_else(|| panic!("a start: {seen:#?}"));
        assert_eq!(start["source"], source);
        let exited: Vec<(&Value, &Value)> = ours
            .iter()
            .filter(|e| e["kind"] == "daemon_exited")
            .map(|e| {
                assert_eq!(e["source"], source);
                (&e["how"], &e["code"])
            })
            .collect();
        assert_eq!(
            exited,
            [
                (&Value::from("exited"), &Value::from(1)),
                (&Value::from("exited"), &Value::from(0))
            ],
            "one exit per process, not per thread: {ours:#?}"
        );
        assert!(
            seen.iter().all(|e| e["comm"] != "npd-provoke"),
            "filtered in the kernel: {seen:#?}"
        );
    }
}
