//! Pressure stall information (PSI): the share of time tasks stalled waiting for memory, I/O
//! or a CPU, from `/proc/pressure/{memory,io,cpu}` for the node and, where the host runs
//! cgroup v2, from each pod's `<pod cgroup>/{memory,io,cpu}.pressure`. Sustained stalls are
//! Events, never conditions: the kubelet owns `MemoryPressure` and `DiskPressure`, and those
//! mean "about to evict", not "stalling".
//!
//! Read every [`PERIOD_NS`]. A resource is stalling when the kernel's running average over
//! the configured window (`pressure.window`: 10 s, 1 min or 5 min; default 1 min) is at or
//! above its threshold: `full` (every non-idle task stalled at once) for memory and I/O,
//! `some` (at least one task stalled) for the CPU, whose `full` the kernel does not define
//! for the whole system. Reported once when the average crosses the threshold, again only
//! after it fell below half of it.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::Ebpf;
use serde::Serialize;

use super::{AttachContext, Attached, Detector, DetectorStatus, Sampled, Sampler, pod_cgroups};
use crate::{
    event::{Event, Source, Task, escape_untrusted},
    finding,
    kernel::CgroupLayout,
    metrics::{Level, LevelMetric},
    problem::{Assessment, EventReason, Report},
};

pub const MEMORY_PRESSURE_STALL: EventReason = EventReason::warning("MemoryPressureStall");
pub const IO_PRESSURE_STALL: EventReason = EventReason::warning("IOPressureStall");
pub const CPU_PRESSURE_STALL: EventReason = EventReason::warning("CPUPressureStall");

/// How often the pressure files are read.
pub const PERIOD_NS: u64 = 10_000_000_000;

/// A resource PSI accounts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Memory,
    Io,
    Cpu,
}

impl Resource {
    pub const ALL: [Self; 3] = [Self::Memory, Self::Io, Self::Cpu];

    /// The file's name: `/proc/pressure/<name>`, `<cgroup>/<name>.pressure`.
    pub fn file(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Io => "io",
            Self::Cpu => "cpu",
        }
    }

    /// Its `resource` label on /metrics.
    pub fn label(self) -> &'static str {
        self.file()
    }

    pub fn reason(self) -> EventReason {
        match self {
            Self::Memory => MEMORY_PRESSURE_STALL,
            Self::Io => IO_PRESSURE_STALL,
            Self::Cpu => CPU_PRESSURE_STALL,
        }
    }
}

/// Which of the kernel's running averages a threshold applies to: it keeps these three only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Window {
    #[serde(rename = "10s")]
    Avg10,
    #[serde(rename = "1m")]
    Avg60,
    #[serde(rename = "5m")]
    Avg300,
}

impl Window {
    pub const ALL: [Self; 3] = [Self::Avg10, Self::Avg60, Self::Avg300];

    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Self::Avg10 => 10,
            Self::Avg60 => 60,
            Self::Avg300 => 300,
        })
    }

    /// The window of this length, if the kernel keeps one.
    pub fn from_duration(duration: Duration) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.duration() == duration)
    }

    fn of(self, averages: &Averages) -> f64 {
        match self {
            Self::Avg10 => averages.avg10,
            Self::Avg60 => averages.avg60,
            Self::Avg300 => averages.avg300,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Avg10 => "10 s",
            Self::Avg60 => "minute",
            Self::Avg300 => "5 minutes",
        }
    }
}

/// When a resource is stalling (config `pressure.*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PressureOptions {
    pub window: Window,
    /// Thresholds, percent of the window: memory's and I/O's `full` line, the CPU's `some`.
    pub memory_full_percent: f64,
    pub io_full_percent: f64,
    pub cpu_some_percent: f64,
}

impl Default for PressureOptions {
    fn default() -> Self {
        Self {
            window: Window::Avg60,
            memory_full_percent: 10.0,
            io_full_percent: 10.0,
            cpu_some_percent: 50.0,
        }
    }
}

impl PressureOptions {
    /// The line that counts for `resource` and its threshold, in percent.
    pub fn rule(&self, resource: Resource) -> (Line, f64) {
        match resource {
            Resource::Memory => (Line::Full, self.memory_full_percent),
            Resource::Io => (Line::Full, self.io_full_percent),
            Resource::Cpu => (Line::Some, self.cpu_some_percent),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Some,
    Full,
}

impl Line {
    pub const ALL: [Self; 2] = [Self::Some, Self::Full];

    /// Its `line` label on /metrics: the kernel's word.
    pub fn label(self) -> &'static str {
        match self {
            Self::Some => "some",
            Self::Full => "full",
        }
    }
}

/// The node's PSI on /metrics, labelled `resource` (memory, io, cpu) and `line` (some,
/// full): the kernel's running averages as ratios (0-1) and its total stall time.
pub static STALLED_SECONDS: LevelMetric = LevelMetric::counter(
    "pressure_stalled_seconds",
    "Time tasks stalled on the resource since boot (/proc/pressure total; line some: at \
           least one task, full: all non-idle tasks at once)",
);
pub static AVG10_RATIO: LevelMetric = LevelMetric::gauge(
    "pressure_avg10_ratio",
    "Share of the last 10 s tasks stalled on the resource (/proc/pressure avg10 / 100)",
);
pub static AVG60_RATIO: LevelMetric = LevelMetric::gauge(
    "pressure_avg60_ratio",
    "Share of the last 60 s tasks stalled on the resource (/proc/pressure avg60 / 100)",
);
pub static AVG300_RATIO: LevelMetric = LevelMetric::gauge(
    "pressure_avg300_ratio",
    "Share of the last 300 s tasks stalled on the resource (/proc/pressure avg300 / 100)",
);

/// A node pressure file's lines as levels.
pub fn pressure_levels(resource: Resource, pressure: &Pressure, levels: &mut Vec<Level>) {
    for line in Line::ALL {
        let Some(averages) = pressure.line(line) else {
            continue;
        };
        for (metric, value) in [
            (&STALLED_SECONDS, averages.total_us as f64 / 1e6),
            (&AVG10_RATIO, averages.avg10 / 100.0),
            (&AVG60_RATIO, averages.avg60 / 100.0),
            (&AVG300_RATIO, averages.avg300 / 100.0),
        ] {
            levels.push(
                Level::new(metric, value)
                    .with("resource", resource.label())
                    .with("line", line.label()),
            );
        }
    }
}

/// One line of a pressure file: the running averages (percent of wall time over 10 s, 60 s,
/// 300 s) and the total stall time (microseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Averages {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// A pressure file: `some` and, since 5.13 for the CPU too, `full`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pressure {
    pub some: Option<Averages>,
    pub full: Option<Averages>,
}

impl Pressure {
    pub fn line(&self, line: Line) -> Option<Averages> {
        match line {
            Line::Some => self.some,
            Line::Full => self.full,
        }
    }
}

/// Parses a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line.
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let mut pressure = Pressure::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let which = words.next()?;
        let mut averages = Averages::default();
        for word in words {
            let (key, value) = word.split_once('=')?;
            match key {
                "avg10" => averages.avg10 = value.parse().ok()?,
                "avg60" => averages.avg60 = value.parse().ok()?,
                "avg300" => averages.avg300 = value.parse().ok()?,
                "total" => averages.total_us = value.parse().ok()?,
                _ => {}
            }
        }
        match which {
            "some" => pressure.some = Some(averages),
            "full" => pressure.full = Some(averages),
            _ => {}
        }
    }
    (pressure.some.is_some() || pressure.full.is_some()).then_some(pressure)
}

#[derive(Debug)]
pub struct PressureDetector;

pub static DETECTOR: PressureDetector = PressureDetector;

impl Detector for PressureDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        None
    }

    fn name(&self) -> &'static str {
        "pressure"
    }

    fn about(&self) -> &'static str {
        "sustained PSI stalls (memory, io, cpu) of the node and of pods -> *PressureStall"
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[MEMORY_PRESSURE_STALL, IO_PRESSURE_STALL, CPU_PRESSURE_STALL]
    }

    fn attach(&self, _ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        let node = ctx.host.proc_root.join("pressure");
        let pods = (ctx.host.layout == CgroupLayout::Unified).then(|| ctx.host.cgroup_root.clone());
        let mut target = format!("{}/{{memory,io,cpu}}", node.display());
        if let Some(root) = &pods {
            target.push_str(&format!(", {}/<pod cgroup>/*.pressure", root.display()));
        }
        target.push_str(", every 10 s");
        status.tried(Source::Sampled, target, Ok(()));
        let missing: Vec<_> = Resource::ALL
            .iter()
            .map(|r| node.join(r.file()))
            .filter(|path| std::fs::read_to_string(path).is_err())
            .map(|path| path.display().to_string())
            .collect();
        if !missing.is_empty() {
            status.notes.push(format!(
                "cannot read {} (PSI off: CONFIG_PSI=n or the psi=0 boot option)",
                missing.join(", ")
            ));
        }
        if pods.is_none() {
            status.notes.push(
                "the host's cgroups are v1 (memory controller in its own hierarchy): no \
                 per-pod pressure, which needs cgroup v2's *.pressure files; node-wide only"
                    .to_owned(),
            );
        }
        Attached {
            status,
            runtime: Sampled::boxed(
                PressureRuntime::new(node, pods, ctx.options.resources.pressure),
                PERIOD_NS,
            ),
        }
    }
}

/// Whose pressure: the node's, or a pod's cgroup (below the cgroup root).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Node,
    Pod { cgroup: String },
}

/// A resource stalling over the window.
#[derive(Clone, Debug, Serialize)]
pub struct PressureStall {
    pub resource: Resource,
    pub scope: Scope,
    /// The line that crossed its threshold, over which window, and its averages.
    pub line: Line,
    pub window: Window,
    pub threshold_percent: f64,
    #[serde(flatten)]
    pub averages: Averages,
}

finding!(PressureStall, "pressure_stall", {
    fn summary(&self) -> String {
        let what = match self.resource {
            Resource::Memory => "memory",
            Resource::Io => "I/O",
            Resource::Cpu => "a CPU",
        };
        let who = match self.line {
            Line::Full => "all non-idle tasks",
            Line::Some => "some tasks",
        };
        let whose = match &self.scope {
            Scope::Node => "on the node".to_owned(),
            Scope::Pod { cgroup } => format!("in pod cgroup {}", escape_untrusted(cgroup)),
        };
        format!(
            "{who} {whose} stalled waiting for {what} {:.1} % of the last {} (threshold {:.0} \
             %; over 10 s, 1 min, 5 min: {:.1} %, {:.1} %, {:.1} %)",
            self.window.of(&self.averages),
            self.window.describe(),
            self.threshold_percent,
            self.averages.avg10,
            self.averages.avg60,
            self.averages.avg300
        )
    }

    fn assess(&self, _event: &Event) -> Assessment {
        let scope = match &self.scope {
            Scope::Node => "node".to_owned(),
            Scope::Pod { cgroup } => cgroup.clone(),
        };
        Assessment::report(Report {
            reason: self.resource.reason(),
            detail_key: scope,
            message: format!("PSI: {}", self.summary()),
            count: 1,
            since_boot: false,
        })
    }
});

/// Whether each (scope, resource) is over its threshold, with hysteresis.
#[derive(Debug)]
pub struct PressureWatch {
    options: PressureOptions,
    over: HashMap<(Scope, Resource), bool>,
}

impl PressureWatch {
    pub fn new(options: PressureOptions) -> Self {
        Self {
            options,
            over: HashMap::new(),
        }
    }

    /// A reading: the stall to report when the average just crossed the threshold.
    pub fn sample(
        &mut self,
        scope: &Scope,
        resource: Resource,
        pressure: &Pressure,
    ) -> Option<PressureStall> {
        let (line, threshold) = self.options.rule(resource);
        let window = self.options.window;
        let averages = pressure.line(line)?;
        let level = window.of(&averages);
        let over = self.over.entry((scope.clone(), resource)).or_default();
        if level >= threshold {
            let crossed = !*over;
            *over = true;
            return crossed.then(|| PressureStall {
                resource,
                scope: scope.clone(),
                line,
                window,
                threshold_percent: threshold,
                averages,
            });
        }
        if level < threshold / 2.0 {
            *over = false;
        }
        None
    }

    /// Forgets scopes not seen in the last pass (pods gone).
    fn retain(&mut self, seen: &[Scope]) {
        self.over.retain(|(scope, _), _| seen.contains(scope));
    }
}

#[derive(Debug)]
pub struct PressureRuntime {
    node: PathBuf,
    /// The cgroup v2 root, when pods have pressure files.
    pods: Option<PathBuf>,
    watch: PressureWatch,
}

impl PressureRuntime {
    pub fn new(node: PathBuf, pods: Option<PathBuf>, options: PressureOptions) -> Self {
        Self {
            node,
            pods,
            watch: PressureWatch::new(options),
        }
    }

    fn read(path: &Path) -> Option<Pressure> {
        parse_pressure(&std::fs::read_to_string(path).ok()?)
    }
}

impl Sampler for PressureRuntime {
    /// One reading of every file: the stalls that started. The node's readings are also
    /// levels; pods' are not (a pod is no metric label: unbounded, and on cgroup v2 the
    /// kubelet's cAdvisor already exports containers' PSI).
    fn sample(&mut self, now_ns: u64, levels: &mut Vec<Level>) -> Vec<Event> {
        let mut events = Vec::new();
        for resource in Resource::ALL {
            let Some(pressure) = Self::read(&self.node.join(resource.file())) else {
                continue;
            };
            pressure_levels(resource, &pressure, levels);
            if let Some(stall) = self.watch.sample(&Scope::Node, resource, &pressure) {
                events.push(Event::new(now_ns, Task::default(), Source::Sampled, stall));
            }
        }
        let Some(root) = &self.pods else {
            return events;
        };
        let mut seen = vec![Scope::Node];
        for (cgroup, dir) in pod_cgroups(root) {
            let scope = Scope::Pod { cgroup };
            // The pod's cgroup id: attribution names the pod from it.
            let cgroup_id = std::fs::metadata(&dir).map_or(0, |m| m.ino());
            for resource in Resource::ALL {
                let file = dir.join(format!("{}.pressure", resource.file()));
                let Some(pressure) = Self::read(&file) else {
                    continue;
                };
                if let Some(stall) = self.watch.sample(&scope, resource, &pressure) {
                    let task = Task {
                        cgroup_id,
                        ..Task::default()
                    };
                    events.push(Event::new(now_ns, task, Source::Sampled, stall));
                }
            }
            seen.push(scope);
        }
        self.watch.retain(&seen);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::Runtime;

    fn psi(some60: f64, full60: f64) -> String {
        format!(
            "some avg10=1.50 avg60={some60:.2} avg300=0.53 total=77100232\n\
             full avg10=0.00 avg60={full60:.2} avg300=0.14 total=25723025\n"
        )
    }

    #[test]
    fn parses_pressure_files() {
        let pressure = parse_pressure(&psi(0.16, 0.05)).unwrap();
        assert_eq!(
            pressure.some,
            Some(Averages {
                avg10: 1.5,
                avg60: 0.16,
                avg300: 0.53,
                total_us: 77_100_232
            })
        );
        assert_eq!(pressure.full.unwrap().avg60, 0.05);
        // Before 5.13 the CPU had no `full` line.
        let cpu =
            parse_pressure("some avg10=4.99 avg60=6.43 avg300=19.70 total=2908617012\n").unwrap();
        assert!(cpu.full.is_none());
        assert_eq!(parse_pressure(""), None);
        assert_eq!(parse_pressure("some avg10=x\n"), None);
        // This kernel's files parse.
        for resource in Resource::ALL {
            let path = Path::new("/proc/pressure").join(resource.file());
            if let Ok(text) = std::fs::read_to_string(&path) {
                assert!(
                    parse_pressure(&text).is_some(),
                    "{}: {text}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn thresholds_with_hysteresis() {
        let mut watch = PressureWatch::new(PressureOptions::default());
        let node = Scope::Node;
        let read = |some, full| parse_pressure(&psi(some, full)).unwrap();
        // Memory and I/O count `full`: much `some` alone is no stall.
        assert!(
            watch
                .sample(&node, Resource::Memory, &read(90.0, 9.9))
                .is_none()
        );
        let stall = watch
            .sample(&node, Resource::Memory, &read(90.0, 10.0))
            .expect("full avg60 at 10 %");
        assert_eq!((stall.line, stall.averages.avg60), (Line::Full, 10.0));
        // Once, until it fell below half the threshold.
        assert!(
            watch
                .sample(&node, Resource::Memory, &read(0.0, 30.0))
                .is_none()
        );
        assert!(
            watch
                .sample(&node, Resource::Memory, &read(0.0, 6.0))
                .is_none()
        );
        assert!(
            watch
                .sample(&node, Resource::Memory, &read(0.0, 12.0))
                .is_none()
        );
        assert!(
            watch
                .sample(&node, Resource::Memory, &read(0.0, 4.0))
                .is_none()
        );
        assert!(
            watch
                .sample(&node, Resource::Memory, &read(0.0, 12.0))
                .is_some()
        );
        // The CPU counts `some`, at 50 %; scopes and resources are separate.
        assert!(
            watch
                .sample(&node, Resource::Cpu, &read(49.0, 99.0))
                .is_none()
        );
        assert!(
            watch
                .sample(&node, Resource::Cpu, &read(51.0, 0.0))
                .is_some()
        );
        let pod = Scope::Pod {
            cgroup: "/kubepods/pod1".to_owned(),
        };
        assert!(
            watch
                .sample(&pod, Resource::Memory, &read(0.0, 12.0))
                .is_some()
        );
        assert!(
            watch
                .sample(&node, Resource::Io, &read(0.0, 12.0))
                .is_some()
        );

        let event = Event::new(1, Task::default(), Source::Sampled, stall);
        let report = event.assess().report.unwrap();
        assert_eq!(report.reason, MEMORY_PRESSURE_STALL);
        assert!(
            report
                .message
                .contains("all non-idle tasks on the node stalled waiting for memory 10.0 %"),
            "{}",
            report.message
        );
    }

    #[test]
    fn the_configured_window_and_threshold_decide() {
        let options = PressureOptions {
            window: Window::Avg10,
            memory_full_percent: 5.0,
            ..PressureOptions::default()
        };
        let mut watch = PressureWatch::new(options);
        // Over 10 s only: avg60 stays far below the default 10 %.
        let read = |avg10: f64| {
            parse_pressure(&format!(
                "some avg10={avg10:.2} avg60=0.50 avg300=0.10 total=9\n\
                 full avg10={avg10:.2} avg60=0.50 avg300=0.10 total=7\n"
            ))
            .unwrap()
        };
        assert!(
            watch
                .sample(&Scope::Node, Resource::Memory, &read(4.9))
                .is_none()
        );
        let stall = watch
            .sample(&Scope::Node, Resource::Memory, &read(6.0))
            .expect("full avg10 at 6 % is over 5 %");
        assert_eq!(
            (stall.window, stall.threshold_percent),
            (Window::Avg10, 5.0)
        );
        let event = Event::new(1, Task::default(), Source::Sampled, stall);
        let message = event.assess().report.unwrap().message;
        assert!(
            message.contains("memory 6.0 % of the last 10 s (threshold 5 %"),
            "{message}"
        );
        // The CPU's default threshold is untouched.
        assert!(
            watch
                .sample(&Scope::Node, Resource::Cpu, &read(40.0))
                .is_none()
        );
    }

    #[test]
    fn the_nodes_pressure_is_published_as_levels_at_each_reading() {
        let dir = std::env::temp_dir().join(format!("npd-pressure-levels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory"), psi(40.0, 25.0)).unwrap();
        std::fs::write(
            dir.join("cpu"),
            "some avg10=4.00 avg60=6.50 avg300=19.70 total=2500000\n",
        )
        .unwrap();
        let mut runtime = Sampled::new(
            PressureRuntime::new(dir.clone(), None, PressureOptions::default()),
            PERIOD_NS,
        );
        assert_eq!(runtime.take_levels(), None, "nothing read yet");
        runtime.poll(1);
        let levels = runtime.take_levels().expect("the first reading");
        let value = |metric: &LevelMetric, resource: &str, line: &str| {
            levels
                .iter()
                .find(|l| {
                    l.metric == metric && l.labels == [("resource", resource), ("line", line)]
                })
                .map(|l| l.value)
        };
        assert_eq!(value(&AVG60_RATIO, "memory", "full"), Some(0.25));
        assert_eq!(value(&AVG60_RATIO, "memory", "some"), Some(0.4));
        assert_eq!(value(&AVG10_RATIO, "memory", "some"), Some(0.015));
        assert_eq!(value(&STALLED_SECONDS, "memory", "full"), Some(25.723025));
        assert_eq!(value(&STALLED_SECONDS, "cpu", "some"), Some(2.5));
        // A line or file the kernel does not have is no series (not a 0).
        assert_eq!(value(&AVG60_RATIO, "cpu", "full"), None);
        assert_eq!(value(&AVG60_RATIO, "io", "some"), None);
        assert_eq!(levels.len(), 4 * 3);
        assert_eq!(runtime.take_levels(), None, "handed over once");
        runtime.poll(2);
        assert_eq!(runtime.take_levels(), None, "not before the period");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn per_pod_pressure_from_a_cgroup_v2_tree() {
        let root = std::env::temp_dir().join(format!("npd-pressure-{}", std::process::id()));
        let uid = "0b2c8a4e-5a31-4c1e-9d5c-3f2a1b0c9d8e";
        let pod = root.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        ));
        let container = pod.join(
            "cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
        );
        let calm = root.join("kubepods/besteffort/pod11111111-2222-3333-4444-555555555555");
        let elsewhere = root.join("system.slice/pod99999999-2222-3333-4444-555555555555");
        for dir in [&container, &calm, &elsewhere] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for dir in [&pod, &container, &calm, &elsewhere] {
            std::fs::write(dir.join("memory.pressure"), psi(0.0, 0.0)).unwrap();
        }
        std::fs::write(pod.join("memory.pressure"), psi(40.0, 25.0)).unwrap();
        std::fs::write(pod.join("io.pressure"), psi(1.0, 0.5)).unwrap();
        let mut found: Vec<String> = pod_cgroups(&root).into_iter().map(|(p, _)| p).collect();
        found.sort();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("/kubepods.slice/"), "{found:?}");
        assert_eq!(
            found[1],
            "/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555"
        );

        let proc_pressure = root.join("proc-pressure");
        std::fs::create_dir_all(&proc_pressure).unwrap();
        std::fs::write(proc_pressure.join("memory"), psi(0.0, 0.0)).unwrap();
        let mut runtime = Sampled::new(
            PressureRuntime::new(
                proc_pressure,
                Some(root.clone()),
                PressureOptions::default(),
            ),
            PERIOD_NS,
        );
        let events = runtime.poll(1);
        assert_eq!(events.len(), 1, "{events:?}");
        let event = &events[0];
        assert_eq!(event.task.cgroup_id, std::fs::metadata(&pod).unwrap().ino());
        let stall = event.detail_as::<PressureStall>().unwrap();
        assert_eq!(stall.resource, Resource::Memory);
        assert!(
            matches!(&stall.scope, Scope::Pod { cgroup } if cgroup.contains(&uid.replace('-', "_")))
        );
        assert!(runtime.poll(2).is_empty(), "not before the period");
        assert!(runtime.poll(PERIOD_NS + 1).is_empty(), "reported once");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
