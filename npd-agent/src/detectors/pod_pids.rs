//! Pods' task limits: each pod's tasks against its `pids.max` (the kubelet's `podPidsLimit`)
//! and the forks the pids controller refused (`pids.events`' `max` counter). At its limit
//! every `fork`/`clone` in the pod fails with EAGAIN while the node looks healthy, so the
//! pod's own Events are where it shows: a warning before, at 90 % of the limit, and a count
//! of the refused forks after.
//!
//! Read every [`PERIOD_NS`] from the pids controller's hierarchy (cgroup v2's root, or v1's
//! `pids` hierarchy beside the memory one); the pod is named by attribution from its cgroup's
//! twin in the attribution hierarchy (the same directory on v2). A fork refused and retried
//! between two readings is counted, not missed: the kernel's counter only grows. On v1 the
//! kernel counts a refusal only in the forking task's own cgroup (a container below the
//! pod), so there the pod's count is its own plus its children's.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::Ebpf;
use serde::Serialize;

use super::{
    AttachContext, Attached, Detector, DetectorStatus, Sampled, Sampler, Watermarks, pod_cgroups,
    read_text,
};
use crate::{
    event::{Event, Source, Task, escape_untrusted},
    finding,
    kernel::CgroupLayout,
    metrics::Level,
    problem::{Assessment, EventReason, Report},
};

pub const POD_PIDS_LIMIT_REACHED: EventReason = EventReason::warning("PodPIDsLimitReached");
pub const APPROACHING_POD_PIDS_LIMIT: EventReason = EventReason::warning("ApproachingPodPIDsLimit");

/// How often the pods' counters are read.
pub const PERIOD_NS: u64 = 10_000_000_000;

#[derive(Debug)]
pub struct PodPidsDetector;

pub static DETECTOR: PodPidsDetector = PodPidsDetector;

impl Detector for PodPidsDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        None
    }

    fn name(&self) -> &'static str {
        "pod_pids"
    }

    fn about(&self) -> &'static str {
        "pods' tasks vs their pids.max, forks refused -> PodPIDsLimitReached, \
         ApproachingPodPIDsLimit"
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[POD_PIDS_LIMIT_REACHED, APPROACHING_POD_PIDS_LIMIT]
    }

    fn attach(&self, _ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        let pids_root = match ctx.host.layout {
            CgroupLayout::Unified => ctx.host.cgroup_root.clone(),
            // v1: each controller is its own hierarchy, side by side.
            CgroupLayout::Legacy => ctx
                .host
                .cgroup_root
                .parent()
                .map_or_else(|| PathBuf::from("/sys/fs/cgroup/pids"), |p| p.join("pids")),
        };
        let present = if pids_root.join("cgroup.procs").is_file() {
            Ok(())
        } else {
            Err(format!(
                "{} is not a cgroup hierarchy: no pids controller mounted there",
                pids_root.display()
            ))
        };
        status.tried(
            Source::Sampled,
            format!(
                "{}/<pod cgroup>/pids.{{current,max,events}}, every 10 s",
                pids_root.display()
            ),
            present,
        );
        let count = match ctx.host.layout {
            CgroupLayout::Unified => RefusalCount::Hierarchical,
            CgroupLayout::Legacy => RefusalCount::Local,
        };
        Attached {
            status,
            runtime: Sampled::boxed(
                PodPidsRuntime {
                    count,
                    pids_root,
                    attribution_root: ctx.host.cgroup_root.clone(),
                    watch: PodPidsWatch::new(ctx.options.resources.pod_pids),
                },
                PERIOD_NS,
            ),
        }
    }
}

/// One pod's reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PodTasks {
    pub current: u64,
    /// `None`: `max`, no limit.
    pub max: Option<u64>,
    /// Forks refused at the limit since the cgroup was made (`pids.events`' `max`).
    pub refused_total: u64,
}

impl PodTasks {
    fn percent(self) -> Option<f64> {
        self.max
            .filter(|&max| max > 0)
            .map(|max| self.current as f64 * 100.0 / max as f64)
    }
}

/// `pids.max`: a number, or `max` for none.
pub fn parse_pids_max(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        number => number.parse().ok().map(Some),
    }
}

/// `pids.events`' `max` line (v1 and v2 alike; v2 may add `max.imposed`).
pub fn parse_pids_events(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("max ")?.trim().parse().ok())
}

/// Where the kernel counts a refused fork in `pids.events`' `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCount {
    /// cgroup v2: in the cgroup whose limit was hit and its ancestors, so the pod's counter
    /// includes its containers'.
    Hierarchical,
    /// cgroup v1 (and v2's `pids_localevents`): only in the cgroup the forking task is in,
    /// usually a container below the pod, so the pod's total is the sum over its children.
    Local,
}

fn read_pod(dir: &Path, count: RefusalCount) -> Result<PodTasks, String> {
    let max_file = dir.join("pids.max");
    let refused = |dir: &Path| -> Result<u64, String> {
        let events_file = dir.join("pids.events");
        parse_pids_events(&read_text(&events_file)?)
            .ok_or_else(|| format!("{}: no max line", events_file.display()))
    };
    let mut refused_total = refused(dir)?;
    if count == RefusalCount::Local {
        // The kubelet's containers are the pod's children; a container gone takes its count
        // with it (seen as a counter that went down).
        let children = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                refused_total += refused(&child.path()).unwrap_or(0);
            }
        }
    }
    Ok(PodTasks {
        current: super::read_number(&dir.join("pids.current"))?,
        max: parse_pids_max(&read_text(&max_file)?)
            .ok_or_else(|| format!("{}: unexpected format", max_file.display()))?,
        refused_total,
    })
}

/// What changed for one pod.
#[derive(Clone, Debug, Serialize)]
pub struct PodTaskLimit {
    /// The pod's cgroup below the pids hierarchy's root.
    pub cgroup: String,
    #[serde(flatten)]
    pub tasks: PodTasks,
    /// Forks refused since the last reading.
    pub refused: u64,
    /// The pod just reached the high-water mark of its limit.
    pub approaching: bool,
}

impl PodTaskLimit {
    fn limit(&self) -> String {
        self.tasks
            .max
            .map_or_else(|| "no limit".to_owned(), |max| max.to_string())
    }
}

finding!(PodTaskLimit, "pod_task_limit", {
    fn summary(&self) -> String {
        if self.refused > 0 {
            format!(
                "{} forks or clones failed with EAGAIN at the pod's pids.max ({}); {} tasks now",
                self.refused,
                self.limit(),
                self.tasks.current
            )
        } else {
            format!(
                "{} tasks are {} % of the pod's pids.max ({}): forks fail at the limit",
                self.tasks.current,
                self.tasks.percent().unwrap_or(0.0).floor(),
                self.limit()
            )
        }
    }

    /// An Event on the pod: refused forks (counted), else the warning.
    fn assess(&self, _event: &Event) -> Assessment {
        let (reason, count) = if self.refused > 0 {
            (POD_PIDS_LIMIT_REACHED, self.refused)
        } else {
            (APPROACHING_POD_PIDS_LIMIT, 1)
        };
        Assessment::report(Report {
            reason,
            detail_key: "pids.max".to_owned(),
            message: format!(
                "{} (cgroup {})",
                self.summary(),
                escape_untrusted(&self.cgroup)
            ),
            count,
            since_boot: false,
        })
    }
});

/// Per pod: the refused-forks counter last read and whether it is near its limit (an Event
/// at the high-water mark, again only after it dropped below the low one).
#[derive(Debug)]
pub struct PodPidsWatch {
    marks: Watermarks,
    pods: HashMap<String, (u64, bool)>,
}

impl PodPidsWatch {
    pub fn new(marks: Watermarks) -> Self {
        Self {
            marks,
            pods: HashMap::new(),
        }
    }

    /// A pod's reading: a finding when forks were refused since the last one, or when it
    /// just reached the high-water mark. A pod's first reading is its baseline: forks refused
    /// before npd watched it are the kernel's record (`pids.events`), not news.
    pub fn sample(&mut self, cgroup: &str, tasks: PodTasks) -> Option<PodTaskLimit> {
        let percent = tasks.percent().unwrap_or(0.0);
        let Some((refused_before, was_near)) = self.pods.get(cgroup).copied() else {
            let near = self.marks.over(percent, false);
            self.pods
                .insert(cgroup.to_owned(), (tasks.refused_total, near));
            return near.then(|| PodTaskLimit {
                cgroup: cgroup.to_owned(),
                tasks,
                refused: 0,
                approaching: true,
            });
        };
        let near = self.marks.over(percent, was_near);
        // A counter that went down is a new cgroup under the same path.
        let refused = tasks
            .refused_total
            .checked_sub(refused_before)
            .unwrap_or(tasks.refused_total);
        self.pods
            .insert(cgroup.to_owned(), (tasks.refused_total, near));
        let approaching = near && !was_near;
        (refused > 0 || approaching).then(|| PodTaskLimit {
            cgroup: cgroup.to_owned(),
            tasks,
            refused,
            approaching,
        })
    }

    /// Forgets pods not seen in the last pass (gone).
    pub fn retain(&mut self, seen: &[String]) {
        self.pods.retain(|cgroup, _| seen.contains(cgroup));
    }
}

#[derive(Debug)]
struct PodPidsRuntime {
    count: RefusalCount,
    pids_root: PathBuf,
    /// Where records' cgroup ids are resolved: the pod's directory there names it.
    attribution_root: PathBuf,
    watch: PodPidsWatch,
}

impl Sampler for PodPidsRuntime {
    /// Pods' counts are not levels: a pod is no metric label (unbounded).
    fn sample(&mut self, now_ns: u64, _levels: &mut Vec<Level>) -> Vec<Event> {
        let mut events = Vec::new();
        let mut seen = Vec::new();
        for (cgroup, dir) in pod_cgroups(&self.pids_root) {
            let Ok(tasks) = read_pod(&dir, self.count) else {
                continue;
            };
            if let Some(limit) = self.watch.sample(&cgroup, tasks) {
                let twin = self.attribution_root.join(cgroup.trim_start_matches('/'));
                let task = Task {
                    cgroup_id: std::fs::metadata(&twin).map_or(0, |m| m.ino()),
                    ..Task::default()
                };
                events.push(Event::new(now_ns, task, Source::Sampled, limit));
            }
            seen.push(cgroup);
        }
        self.watch.retain(&seen);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_pids_files() {
        assert_eq!(parse_pids_max("max\n"), Some(None));
        assert_eq!(parse_pids_max("20\n"), Some(Some(20)));
        assert_eq!(parse_pids_max("lots"), None);
        assert_eq!(parse_pids_events("max 7\n"), Some(7));
        assert_eq!(parse_pids_events("max 3\nmax.imposed 1\n"), Some(3));
        assert_eq!(parse_pids_events(""), None);
    }

    fn tasks(current: u64, refused_total: u64) -> PodTasks {
        PodTasks {
            current,
            max: Some(100),
            refused_total,
        }
    }

    #[test]
    fn refused_forks_and_the_high_water_mark_become_findings() {
        let mut watch = PodPidsWatch::new(Watermarks::DEFAULT);
        let pod = "/kubepods/burstable/pod1";
        // (current, refused so far) -> (refused reported, approaching)
        type Step = ((u64, u64), Option<(u64, bool)>);
        let steps: [Step; 8] = [
            // Baseline: earlier refusals are not news.
            ((10, 5), None),
            ((50, 5), None),
            ((90, 5), Some((0, true))),
            // Still near (hysteresis down to 80 %): no repeat.
            ((85, 5), None),
            ((100, 12), Some((7, false))),
            ((70, 12), None),
            ((95, 12), Some((0, true))),
            // A counter that went down: a new cgroup under the same path.
            ((95, 2), Some((2, false))),
        ];
        for (i, ((current, refused_total), want)) in steps.into_iter().enumerate() {
            let got = watch
                .sample(pod, tasks(current, refused_total))
                .map(|f| (f.refused, f.approaching));
            assert_eq!(got, want, "step {i}");
        }
        watch.retain(&[]);
        assert_eq!(
            watch.sample(pod, tasks(95, 40)).map(|f| f.refused),
            Some(0),
            "a pod seen again after it was forgotten starts from a new baseline"
        );
    }

    #[test]
    fn a_pod_first_seen_near_its_limit_is_reported_and_unlimited_pods_never() {
        let mut watch = PodPidsWatch::new(Watermarks::DEFAULT);
        let near = watch
            .sample("/kubepods/pod2", tasks(99, 0))
            .expect("near at once");
        assert!(near.approaching);
        let event = Event::new(1, Task::default(), Source::Sampled, near);
        let report = event.assess().report.expect("an Event");
        assert_eq!(report.reason, APPROACHING_POD_PIDS_LIMIT);
        assert!(
            report.message.contains("99 % of the pod's pids.max (100)"),
            "{}",
            report.message
        );

        let unlimited = PodTasks {
            current: 5000,
            max: None,
            refused_total: 0,
        };
        assert!(watch.sample("/kubepods/pod3", unlimited).is_none());
        assert!(watch.sample("/kubepods/pod3", unlimited).is_none());
    }

    #[test]
    fn on_cgroup_v1_a_pods_refusals_are_its_containers() {
        let pod = std::env::temp_dir().join(format!("npd-pod-pids-{}", std::process::id()));
        let container =
            pod.join("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        let other = pod.join("fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210");
        for dir in [&container, &other] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for (dir, refused) in [(&pod, 1), (&container, 5), (&other, 2)] {
            std::fs::write(dir.join("pids.events"), format!("max {refused}\n")).unwrap();
        }
        std::fs::write(pod.join("pids.current"), "20\n").unwrap();
        std::fs::write(pod.join("pids.max"), "20\n").unwrap();
        let read = |count| read_pod(&pod, count).unwrap().refused_total;
        assert_eq!(
            read(RefusalCount::Local),
            8,
            "the pod's own and its containers'"
        );
        assert_eq!(
            read(RefusalCount::Hierarchical),
            1,
            "v2's pod counter has them already"
        );
        std::fs::remove_dir_all(&pod).unwrap();
    }

    #[test]
    fn refused_forks_are_counted_in_the_report() {
        let limit = PodTaskLimit {
            cgroup: "/kubepods/pod\n4".to_owned(),
            tasks: tasks(100, 9),
            refused: 9,
            approaching: false,
        };
        let event = Event::new(1, Task::default(), Source::Sampled, limit);
        let report = event.assess().report.expect("an Event");
        assert_eq!(report.reason, POD_PIDS_LIMIT_REACHED);
        assert_eq!(report.count, 9);
        assert!(
            !report.message.contains('\n'),
            "escaped: {}",
            report.message
        );
    }
}
