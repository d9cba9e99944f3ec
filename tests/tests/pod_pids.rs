//! A pod at its pids.max, for real: a pod-shaped pids cgroup limited to 20 tasks, a shell in a
//! container-shaped cgroup below it forking until the kernel refuses, and the refused forks as an Event on the Pod on the real
//! API server. The cgroups (and every task in them) are removed by guards, also on failure.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use npd_tests::{
    agent::wait_for,
    machine::{MemoryCgroup, MemoryController, require_root},
    reporting::{cluster_with_node, create_pod, events, start_reporting_agent},
};

const NODE: &str = "npd-pod-pids-node";
const LIMIT: u32 = 20;

/// A pids cgroup at `relative` (parents made as needed) limited to `max` tasks; on drop its
/// tasks are killed and what it made removed.
#[derive(Debug)]
struct PidsCgroup {
    path: PathBuf,
    created: Vec<PathBuf>,
    v2: bool,
}

impl PidsCgroup {
    fn create(relative: &str, max: u32) -> anyhow::Result<Self> {
        let root = match MemoryController::detect()? {
            MemoryController::V1 => PathBuf::from("/sys/fs/cgroup/pids"),
            MemoryController::V2 => PathBuf::from("/sys/fs/cgroup"),
        };
        anyhow::ensure!(
            root.join("cgroup.procs").is_file(),
            "no pids controller at {}: this test needs one",
            root.display()
        );
        let v2 = root == Path::new("/sys/fs/cgroup");
        let mut cgroup = Self {
            path: root.join(relative),
            created: Vec::new(),
            v2,
        };
        let mut dir = root;
        for part in relative.split('/') {
            if v2 {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+pids");
            }
            dir.push(part);
            if !dir.is_dir() {
                std::fs::create_dir(&dir)?;
                cgroup.created.push(dir.clone());
            }
        }
        std::fs::write(cgroup.path.join("pids.max"), max.to_string())?;
        Ok(cgroup)
    }

    /// A child without a limit of its own (a container below the pod, as the kubelet makes
    /// them), removed with it.
    fn child(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        if self.v2 {
            std::fs::write(self.path.join("cgroup.subtree_control"), "+pids")?;
        }
        let dir = self.path.join(name);
        std::fs::create_dir(&dir)?;
        self.created.push(dir.clone());
        Ok(dir)
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Kill until empty, deepest first: a shell may still be forking while the first
        // kills land.
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() {
                    break;
                }
                for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                    // SAFETY: plain syscall on a pid read from the cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A shell that joins the pids cgroup `pids_dir` and the pod's memory cgroup and starts 40
/// sleepers: the 20th task on is refused.
fn fork_until_refused(pids_dir: &Path, memory: &MemoryCgroup) -> Child {
    let script = format!(
        "echo $$ > {} && echo $$ > {} && for i in $(seq 40); do sleep 300 & done; sleep 300",
        pids_dir.join("cgroup.procs").display(),
        memory.procs_file().display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh")
}

#[test]
fn forks_refused_at_a_pods_pids_max_are_an_event_on_the_pod() {
    require_root("creates cgroups and loads the agent");
    let cluster = cluster_with_node(NODE);
    let uid = create_pod(&cluster, "forker", NODE);
    let relative = format!("kubepods/burstable/pod{uid}");
    // The memory twin is where the agent's attribution resolves the pod (the same directory
    // on cgroup v2).
    let memory = MemoryCgroup::create(&relative, 256 << 20).expect("pod-shaped memory cgroup");
    let mut pids = PidsCgroup::create(&relative, LIMIT).expect("pod-shaped pids cgroup");
    // The forks happen in a container below the pod, as in a real pod: on cgroup v1 the
    // kernel counts them there, not in the pod's pids.events.
    let container = pids
        .child("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        .expect("container-shaped pids cgroup");
    // The agent's first reading is the pod's baseline: start it before the forks fail.
    let _agent = start_reporting_agent(&cluster, NODE, &["--detectors", "pod_pids"]);
    std::thread::sleep(Duration::from_secs(2));
    let mut shell = fork_until_refused(&container, &memory);

    let event = wait_for(
        Duration::from_secs(40),
        "PodPIDsLimitReached on the Pod",
        || {
            events(&cluster).ok()?.into_iter().find(|e| {
                e["reason"] == "PodPIDsLimitReached" && e["involvedObject"]["kind"] == "Pod"
            })
        },
    );
    let _ = shell.kill();
    let _ = shell.wait();
    let event = event.expect("the refused forks reach the Pod");
    assert_eq!(event["involvedObject"]["uid"], uid.as_str());
    assert_eq!(event["involvedObject"]["name"], "forker");
    assert_eq!(event["type"], "Warning");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("pids.max ({LIMIT})")) && message.contains("failed with EAGAIN"),
        "{message}"
    );
    assert!(
        event["count"].as_u64().unwrap_or(0) >= 1,
        "counts the refused forks: {event}"
    );
}
