//! Zombies: children that exited and that their parent does not reap (`wait(2)`), counted per
//! parent from `/proc/<pid>/stat` (state `Z`, ppid) every [`PERIOD_NS`]. A parent with the
//! threshold (`zombies.threshold`, default [`DEFAULT_THRESHOLD`]) or more is a bug in that
//! program (or a container whose pid 1 is not an init): each zombie holds a pid, and enough
//! of them exhaust `pids.max` or `kernel.pid_max`. No kernel hook: one pass over /proc per
//! period, nothing per fork or exit.
//!
//! Zombies are also summed per pod (by each parent's cgroup): a pod whose processes each
//! leave a few unreaped children, none over the threshold alone, still fills its
//! `pids.max`, and that pod is reported once until its total falls below the threshold.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use aya::Ebpf;
use serde::Serialize;

use super::{AttachContext, Attached, Detector, DetectorStatus, HostPaths, Sampled, Sampler};
use crate::{
    attribution::{CgroupOwner, parse_cgroup_path},
    engine::describe_task,
    event::{Event, Source, Task},
    finding,
    kernel::procfs,
    metrics::{Level, LevelMetric},
    problem::{Assessment, EventReason, Report},
};

/// EKS's name for it.
pub const EXCESSIVE_ZOMBIES: EventReason = EventReason::warning("ExcessiveZombieProcesses");

/// How often /proc is walked.
pub const PERIOD_NS: u64 = 15_000_000_000;

/// Zombie children of one parent that make a problem, unless configured.
pub const DEFAULT_THRESHOLD: u64 = 100;

#[derive(Debug)]
pub struct ZombiesDetector;

pub static DETECTOR: ZombiesDetector = ZombiesDetector;

impl Detector for ZombiesDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        None
    }

    fn name(&self) -> &'static str {
        "zombies"
    }

    fn about(&self) -> &'static str {
        "unreaped zombie children per parent, from /proc/<pid>/stat -> ExcessiveZombieProcesses"
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[EXCESSIVE_ZOMBIES]
    }

    fn attach(&self, _ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        let probe = ctx.host.proc_root.join("self/stat");
        status.tried(
            Source::Sampled,
            format!("{}/<pid>/stat, every 15 s", ctx.host.proc_root.display()),
            std::fs::read_to_string(&probe)
                .map(|_| ())
                .map_err(|e| format!("{}: {e}", probe.display())),
        );
        Attached {
            status,
            runtime: Sampled::boxed(
                ZombiesRuntime::new(ctx.host.clone(), ctx.options.resources.zombies),
                PERIOD_NS,
            ),
        }
    }
}

/// The node's zombies on /metrics.
pub static ZOMBIE_PROCESSES: LevelMetric = LevelMetric::gauge(
    "zombie_processes",
    "Processes that exited and that their parent has not reaped, on the node",
);

/// The fields of `/proc/<pid>/stat` zombie counting needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Clock ticks since boot (field 22): tells a parent from a later one with its pid.
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`. `comm` (field 2) is between the first `(` and the last `)` and
/// may hold anything a process chose, spaces and parentheses included.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut fields = text[close + 1..].split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // After ppid (field 4), start time is field 22: 17 fields further.
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        state,
        ppid,
        start_time,
    })
}

/// Zombies per parent pid among `stats`.
pub fn count_zombies<'a>(stats: impl IntoIterator<Item = &'a ProcStat>) -> HashMap<u32, u64> {
    let mut per_parent = HashMap::new();
    for stat in stats.into_iter().filter(|s| s.state == 'Z') {
        *per_parent.entry(stat.ppid).or_default() += 1;
    }
    per_parent
}

/// A parent with too many unreaped children.
#[derive(Clone, Debug, Serialize)]
pub struct ZombieParent {
    /// Its zombie children at the sample.
    pub zombies: u64,
    /// Zombies on the whole node at the sample.
    pub zombies_on_node: u64,
    pub threshold: u64,
}

finding!(ZombieParent, "zombie_parent", {
    fn summary(&self) -> String {
        format!(
            "{} zombie children not reaped (threshold {}; {} zombies on the node)",
            self.zombies, self.threshold, self.zombies_on_node
        )
    }

    fn assess(&self, event: &Event) -> Assessment {
        let message = format!(
            "process {} does not reap its children: {} zombies (threshold {}; {} on the \
             node); each holds a pid until its parent calls wait(2) or exits",
            describe_task(&event.task, event.attribution.as_ref()),
            self.zombies,
            self.threshold,
            self.zombies_on_node
        );
        Assessment::report(Report {
            reason: EXCESSIVE_ZOMBIES,
            detail_key: format!("{}|{}", event.task.comm, event.task.pid),
            message,
            count: 1,
            since_boot: false,
        })
    }
});

/// A pod whose processes together leave too many unreaped children, none of them over the
/// threshold alone. Its task is the parent with the most.
#[derive(Clone, Debug, Serialize)]
pub struct ZombiesInPod {
    /// Zombie children of all the pod's processes at the sample.
    pub zombies: u64,
    /// The pod's processes with zombie children.
    pub parents: u64,
    /// The zombies of the parent named (the one with the most).
    pub largest: u64,
    pub threshold: u64,
}

finding!(ZombiesInPod, "zombies_in_pod", {
    fn summary(&self) -> String {
        format!(
            "{} zombie children not reaped by {} processes of one pod (threshold {})",
            self.zombies, self.parents, self.threshold
        )
    }

    fn assess(&self, event: &Event) -> Assessment {
        let message = format!(
            "{} zombies in one pod, left by {} of its processes that do not reap their \
             children (threshold {}); the most by {}: {}. Each holds a pid of the pod's \
             pids.max until its parent calls wait(2) or exits",
            self.zombies,
            self.parents,
            self.threshold,
            describe_task(&event.task, event.attribution.as_ref()),
            self.largest
        );
        Assessment::report(Report {
            reason: EXCESSIVE_ZOMBIES,
            detail_key: "pod".to_owned(),
            message,
            count: 1,
            since_boot: false,
        })
    }
});

/// Zombies summed per pod: `(parent pid, its zombies, its cgroup path)` -> per pod uid,
/// `(total, parents, the parent with the most and its count)`.
pub fn zombies_per_pod(
    parents: impl IntoIterator<Item = (u32, u64, String)>,
) -> HashMap<String, (u64, u64, (u32, u64))> {
    let mut pods: HashMap<String, (u64, u64, (u32, u64))> = HashMap::new();
    for (ppid, zombies, cgroup) in parents {
        let CgroupOwner::Pod(pod) = parse_cgroup_path(&cgroup) else {
            continue;
        };
        let entry = pods.entry(pod.uid).or_insert((0, 0, (ppid, 0)));
        entry.0 += zombies;
        entry.1 += 1;
        if zombies > entry.2.1 {
            entry.2 = (ppid, zombies);
        }
    }
    pods
}

#[derive(Debug)]
pub struct ZombiesRuntime {
    host: HostPaths,
    threshold: u64,
    /// Parents (pid, start time) at or above the threshold at the last sample: reported once
    /// until they fall below it.
    over: HashMap<(u32, u64), u64>,
    /// Pods (uid) at or above the threshold at the last sample, likewise.
    pods_over: HashSet<String>,
}

impl ZombiesRuntime {
    pub fn new(host: HostPaths, threshold: u64) -> Self {
        Self {
            host,
            threshold,
            over: HashMap::new(),
            pods_over: HashSet::new(),
        }
    }

    fn stat(&self, pid: &str) -> Option<ProcStat> {
        let path: PathBuf = self.host.proc_root.join(pid).join("stat");
        parse_proc_stat(&std::fs::read_to_string(path).ok()?)
    }

    fn cgroup_id(&self, pid: u32) -> u64 {
        procfs::cgroup_id(
            &self.host.proc_root,
            pid,
            self.host.layout,
            &self.host.cgroup_root,
        )
        .unwrap_or(0)
    }

    /// Pods over the threshold in total with no parent over it alone (those are reported
    /// as themselves): an event each, once until the pod falls below.
    fn pods(
        &mut self,
        per_parent: &HashMap<u32, u64>,
        stats: &[ProcStat],
        now_ns: u64,
    ) -> Vec<Event> {
        let parents = per_parent.iter().filter_map(|(&ppid, &zombies)| {
            let cgroup = procfs::cgroup_path(&self.host.proc_root, ppid, self.host.layout)?;
            Some((ppid, zombies, cgroup))
        });
        let mut over = HashSet::new();
        let mut events = Vec::new();
        for (uid, (zombies, parents, (ppid, largest))) in
            zombies_per_pod(parents.collect::<Vec<_>>())
        {
            if zombies < self.threshold || largest >= self.threshold {
                continue;
            }
            over.insert(uid.clone());
            if self.pods_over.contains(&uid) {
                continue;
            }
            let comm = stats
                .iter()
                .find(|s| s.pid == ppid)
                .map(|s| s.comm.clone())
                .unwrap_or_default();
            let task = Task {
                pid: ppid,
                tid: ppid,
                comm,
                cgroup_id: self.cgroup_id(ppid),
            };
            let finding = ZombiesInPod {
                zombies,
                parents,
                largest,
                threshold: self.threshold,
            };
            events.push(Event::new(now_ns, task, Source::Sampled, finding));
        }
        self.pods_over = over;
        events
    }
}

impl Sampler for ZombiesRuntime {
    /// One pass over /proc: an event per parent newly at or above the threshold.
    fn sample(&mut self, now_ns: u64, levels: &mut Vec<Level>) -> Vec<Event> {
        let Ok(entries) = std::fs::read_dir(&self.host.proc_root) else {
            return Vec::new();
        };
        let stats: Vec<ProcStat> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|pid| self.stat(&pid))
            .collect();
        let per_parent = count_zombies(&stats);
        let on_node = per_parent.values().sum();
        levels.push(Level::new(&ZOMBIE_PROCESSES, on_node as f64));
        let mut over = HashMap::new();
        let mut events = Vec::new();
        for (&ppid, &zombies) in per_parent.iter().filter(|(_, n)| **n >= self.threshold) {
            let Some(parent) = stats.iter().find(|s| s.pid == ppid) else {
                continue;
            };
            let key = (ppid, parent.start_time);
            over.insert(key, zombies);
            if self.over.contains_key(&key) {
                continue;
            }
            let cgroup_id = self.cgroup_id(ppid);
            events.push(Event::new(
                now_ns,
                Task {
                    pid: ppid,
                    tid: ppid,
                    comm: parent.comm.clone(),
                    cgroup_id,
                },
                Source::Sampled,
                ZombieParent {
                    zombies,
                    zombies_on_node: on_node,
                    threshold: self.threshold,
                },
            ));
        }
        self.over = over;
        events.extend(self.pods(&per_parent, &stats, now_ns));
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detectors::Runtime, kernel::CgroupLayout};

    #[test]
    fn parses_stat_with_a_hostile_comm() {
        let stat = "4242 (a) Z (b)) Z 77 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 \
                    987654 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_proc_stat(stat),
            Some(ProcStat {
                pid: 4242,
                comm: "a) Z (b)".to_owned(),
                state: 'Z',
                ppid: 77,
                start_time: 987654,
            })
        );
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(parse_proc_stat("1 (x) R 1"), None);
    }

    fn write_stat(root: &std::path::Path, pid: u32, comm: &str, state: char, ppid: u32) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            format!(
                "{pid} ({comm}) {state} {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0",
                1000 + pid
            ),
        )
        .unwrap();
    }

    #[test]
    fn a_parent_over_the_threshold_is_reported_once_until_it_reaps() {
        let root = std::env::temp_dir().join(format!("npd-zombies-{}", std::process::id()));
        let proc_root = root.join("proc");
        write_stat(&proc_root, 10, "bad\nparent", 'S', 1);
        write_stat(&proc_root, 11, "good", 'S', 1);
        for pid in 100..103 {
            write_stat(&proc_root, pid, "child", 'Z', 10);
        }
        write_stat(&proc_root, 200, "child", 'Z', 11);
        let host = HostPaths {
            proc_root: proc_root.clone(),
            cgroup_root: root.join("cgroup"),
            layout: CgroupLayout::Unified,
        };
        let mut runtime = Sampled::new(ZombiesRuntime::new(host, 3), PERIOD_NS);
        let events = runtime.poll(1);
        assert_eq!(events.len(), 1, "{events:?}");
        let event = &events[0];
        assert_eq!(
            (event.task.pid, event.task.comm.as_str()),
            (10, "bad\nparent")
        );
        let detail = event.detail_as::<ZombieParent>().unwrap();
        assert_eq!((detail.zombies, detail.zombies_on_node), (3, 4));
        let report = event.assess().report.unwrap();
        assert_eq!(report.reason, EXCESSIVE_ZOMBIES);
        assert!(
            report.message.contains("\"bad\\nparent\" (pid 10)"),
            "escaped: {}",
            report.message
        );
        // Nothing between periods, nothing new while it stays over.
        assert!(runtime.poll(2).is_empty());
        assert!(runtime.poll(PERIOD_NS + 1).is_empty());
        // It reaped one, then let three more pile up: a new report.
        std::fs::remove_dir_all(proc_root.join("100")).unwrap();
        assert!(runtime.poll(2 * PERIOD_NS + 1).is_empty());
        write_stat(&proc_root, 100, "child", 'Z', 10);
        assert_eq!(runtime.poll(3 * PERIOD_NS + 1).len(), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn zombies_are_summed_per_pod_by_the_parents_cgroups() {
        let pod = |uid: &str, id: &str| format!("/kubepods/besteffort/pod{uid}/{id}");
        let uid_a = "11111111-2222-3333-4444-555555555555";
        let uid_b = "66666666-2222-3333-4444-555555555555";
        let parents = vec![
            (10, 40, pod(uid_a, &"a".repeat(64))),
            (11, 45, pod(uid_a, &"b".repeat(64))),
            (12, 30, pod(uid_a, &"a".repeat(64))),
            (20, 5, pod(uid_b, &"c".repeat(64))),
            // Outside pods: not summed.
            (30, 500, "/system.slice/containerd.service".to_owned()),
        ];
        let pods = zombies_per_pod(parents);
        assert_eq!(pods.len(), 2, "{pods:?}");
        assert_eq!(pods[uid_a], (115, 3, (11, 45)));
        assert_eq!(pods[uid_b], (5, 1, (20, 5)));
    }
}
