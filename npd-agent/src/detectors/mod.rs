//! One file per detector: how it attaches (with fallbacks), how its records become events,
//! what those events mean (conditions, Events), and whatever it must watch from userspace.
//!
//! The registry is npd-common's table (`npd_common::for_each_kernel_detector!`): each entry
//! names a module here, which exports `DETECTOR`, its [`Detector`]. Everything that lists
//! detectors — attach, decode, config, CLI help, `check`, `event-dump`, metrics — iterates
//! [`all`].

use std::{
    fmt::Debug,
    path::{Path, PathBuf},
};

use npd_common::RecordKind;
use serde::Serialize;

use crate::{
    attribution::{CgroupOwner, parse_cgroup_path},
    decode::DecodeError,
    event::{Event, Source},
    kernel::{CgroupLayout, kallsyms::Symbolizer},
    metrics::Level,
    problem::{Catalog, ConditionType, EventReason},
};

macro_rules! kernel_detectors {
    ($($name:ident),+) => {
        $(pub mod $name;)+

        /// The detectors with kernel programs, in counter-row order.
        static KERNEL: &[&dyn Detector] = &[$(&$name::DETECTOR),+];

        /// The detector whose programs include `program` (npd-common's per-detector
        /// `PROGRAMS`), to tell which detector a detached program belonged to.
        pub fn owner_of_program(program: &str) -> Option<&'static str> {
            [$((stringify!($name), npd_common::$name::PROGRAMS)),+]
                .into_iter()
                .find(|(_, programs)| programs.contains(&program))
                .map(|(name, _)| name)
        }
    };
}
npd_common::for_each_kernel_detector!(kernel_detectors);

macro_rules! agent_detectors {
    ($($name:ident),*) => {
        $(pub mod $name;)*

        /// The detectors that run in the agent alone.
        static AGENT: &[&dyn Detector] = &[$(&$name::DETECTOR),*];
    };
}
npd_common::for_each_agent_detector!(agent_detectors);

/// Every detector, in registry order: those with kernel programs, then the agent's own.
pub fn all() -> &'static [&'static dyn Detector] {
    static ALL: std::sync::OnceLock<Vec<&'static dyn Detector>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| KERNEL.iter().chain(AGENT).copied().collect())
}

/// One detector: its identity, what it reports, and how it attaches.
pub trait Detector: Debug + Sync {
    /// Its kernel entry in npd-common's registry (counter row, record kinds); `None` for a
    /// detector that runs in the agent alone.
    fn kernel(&self) -> Option<npd_common::counters::Detector>;

    /// The name in config, flags and metric labels.
    fn name(&self) -> &'static str;

    /// One line for `--help` and docs.
    fn about(&self) -> &'static str;

    /// The NodeConditions it feeds.
    fn conditions(&self) -> &'static [ConditionType] {
        &[]
    }

    /// The Event reasons it reports.
    fn reasons(&self) -> &'static [EventReason];

    /// Problem reasons its conditions take besides their specs' (a reason naming the
    /// component at fault), for config validation and renaming.
    fn condition_reasons(&self) -> &'static [&'static str] {
        &[]
    }

    /// Extra read-only globals for its programs, set before the object is loaded: (name,
    /// bytes). The shared `PROBE_CONFIG` is set by the loader.
    fn globals(&self, _setup: &Setup<'_>) -> Vec<(&'static str, Vec<u8>)> {
        Vec::new()
    }

    /// Attaches its programs, preferred hook first, and makes what decodes its records.
    fn attach(&self, ebpf: &mut aya::Ebpf, ctx: &AttachContext<'_>) -> Attached;
}

/// What a detector keeps at run time: it turns its records into events and finds what no
/// record brings (a storm's tail, a recovery, a counter that moved).
pub trait Runtime: Debug + Send {
    /// One record of one of the detector's kinds (the header already checked). An agent-only
    /// detector has no records: the default refuses any.
    fn decode(
        &mut self,
        kind: RecordKind,
        _data: &[u8],
        _symbolizer: &mut Symbolizer,
    ) -> Result<Event, DecodeError> {
        Err(DecodeError::UnknownKind(kind as u16))
    }

    /// Called about once a second, after the ring buffer was drained.
    fn poll(&mut self, _now_ns: u64) -> Vec<Event> {
        Vec::new()
    }

    /// The levels (gauges, the kernel's running totals) read since the last call, for
    /// /metrics; `None` when nothing was read since (the last set stands).
    fn take_levels(&mut self) -> Option<Vec<Level>> {
        None
    }
}

/// What a sampled detector's runtime does at its period: the rest of its [`Runtime`] (no
/// records to decode, nothing between periods) is [`Sampled`]'s. Shared by the agent-only
/// detectors (clock, pressure, conntrack, zombies, pids, pod_pids).
pub(crate) trait Sampler: Debug + Send {
    /// One reading: the events it makes, and the levels it read pushed onto `levels` (the
    /// whole set: it replaces the previous reading's on /metrics).
    fn sample(&mut self, now_ns: u64, levels: &mut Vec<Level>) -> Vec<Event>;
}

/// A [`Sampler`] run every `period_ns`, the first time at the first poll.
#[derive(Debug)]
pub(crate) struct Sampled<S> {
    pub(crate) sampler: S,
    period_ns: u64,
    next_ns: u64,
    /// The last reading's levels, until taken.
    levels: Option<Vec<Level>>,
}

impl<S: Sampler + 'static> Sampled<S> {
    pub(crate) fn new(sampler: S, period_ns: u64) -> Self {
        Self {
            sampler,
            period_ns,
            next_ns: 0,
            levels: None,
        }
    }

    pub(crate) fn boxed(sampler: S, period_ns: u64) -> Box<dyn Runtime> {
        Box::new(Self::new(sampler, period_ns))
    }
}

impl<S: Sampler> Runtime for Sampled<S> {
    fn poll(&mut self, now_ns: u64) -> Vec<Event> {
        if now_ns < self.next_ns {
            return Vec::new();
        }
        self.next_ns = now_ns + self.period_ns;
        let mut levels = Vec::new();
        let events = self.sampler.sample(now_ns, &mut levels);
        self.levels = Some(levels);
        events
    }

    fn take_levels(&mut self) -> Option<Vec<Level>> {
        self.levels.take()
    }
}

/// A share of a limit at or above which a level is a problem, and below which it is no
/// longer one: between the two, it stays what it was (a level hovering at one mark does not
/// flap).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Watermarks {
    pub high_percent: f64,
    pub low_percent: f64,
}

impl Watermarks {
    /// 90 % / 80 %: the pids, pod_pids and conntrack defaults.
    pub const DEFAULT: Self = Self {
        high_percent: 90.0,
        low_percent: 80.0,
    };

    /// Whether a level at `percent` is over, given whether it was.
    pub fn over(self, percent: f64, was_over: bool) -> bool {
        percent >= self.high_percent || (was_over && percent >= self.low_percent)
    }
}

/// The sampled resource detectors' thresholds (config `pids`, `podPids`, `conntrack`,
/// `zombies`, `pressure`).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceOptions {
    /// Tasks vs `kernel.pid_max` and `kernel.threads-max`.
    pub pids: Watermarks,
    /// A pod's tasks vs its `pids.max`.
    pub pod_pids: Watermarks,
    /// Entries vs `nf_conntrack_max`.
    pub conntrack: Watermarks,
    /// Unreaped children of one parent (or of one pod's processes together).
    pub zombies: u64,
    pub pressure: pressure::PressureOptions,
}

impl Default for ResourceOptions {
    fn default() -> Self {
        Self {
            pids: Watermarks::DEFAULT,
            pod_pids: Watermarks::DEFAULT,
            conntrack: Watermarks::DEFAULT,
            zombies: zombies::DEFAULT_THRESHOLD,
            pressure: pressure::PressureOptions::default(),
        }
    }
}

/// A whole file, the error naming it.
pub(crate) fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A file holding one number (a sysctl, a counter).
pub(crate) fn read_number(path: &Path) -> Result<u64, String> {
    read_text(path)?
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// How deep below a cgroup root pods' cgroups are looked for, and how many directories.
const POD_SEARCH_DEPTH: usize = 5;
const POD_SEARCH_DIRS: usize = 8192;

/// The pods' cgroup directories below a hierarchy's root (cgroup v2, or one v1 controller's):
/// (path below the root, directory). Shared by the detectors that sample pods' cgroups.
pub(crate) fn pod_cgroups(root: &Path) -> Vec<(String, PathBuf)> {
    let mut pods = Vec::new();
    let mut level = vec![(String::new(), root.to_owned())];
    let mut looked = 0;
    for depth in 0..POD_SEARCH_DEPTH {
        let mut next = Vec::new();
        for (relative, dir) in &level {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                looked += 1;
                if looked > POD_SEARCH_DIRS {
                    return pods;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                // Only the kubelet's trees (`kubepods`, `kubepods.slice`, kind's
                // `kubelet.slice/kubelet-kubepods.slice`).
                if depth == 0 && !name.contains("kubepods") && !name.contains("kubelet") {
                    continue;
                }
                let path = format!("{relative}/{name}");
                match parse_cgroup_path(&path) {
                    CgroupOwner::Pod(pod) if pod.container_id.is_none() => {
                        pods.push((path, entry.path()));
                    }
                    // A container: its pod is already found.
                    CgroupOwner::Pod(_) => {}
                    _ => next.push((path, entry.path())),
                }
            }
        }
        level = next;
    }
    pods
}

/// A detector attached: how (for `check`, logs and metrics) and its runtime.
#[derive(Debug)]
pub struct Attached {
    pub status: DetectorStatus,
    pub runtime: Box<dyn Runtime>,
}

/// A detector by its config name.
pub fn by_name(name: &str) -> Option<&'static dyn Detector> {
    all().iter().copied().find(|d| d.name() == name)
}

/// Every detector's name, for help texts and errors: `fd, hung_task, ...`.
pub fn names() -> String {
    all()
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every detector's conditions and Event reasons, in registry order: what the engine, the
/// config and the metrics know.
pub fn catalog() -> &'static Catalog {
    static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    CATALOG.get_or_init(|| {
        let mut catalog = Catalog::default();
        for detector in all() {
            catalog.conditions.extend(detector.conditions());
            catalog.reasons.extend(detector.reasons());
            catalog
                .condition_reasons
                .extend(detector.condition_reasons());
        }
        catalog
    })
}

/// One hook a detector tried.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub hook: Source,
    pub target: String,
    /// Why it was not used; `None` for the one in use.
    pub error: Option<String>,
}

/// How a detector is attached on this kernel, for `check`, logs and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct DetectorStatus {
    pub detector: &'static str,
    /// The hook in use; `None` when every attempt failed.
    pub active: Option<Source>,
    /// Every hook tried, in order of preference.
    pub attempts: Vec<Attempt>,
    /// Anything else worth knowing (e.g. syscalls this kernel lacks).
    pub notes: Vec<String>,
}

impl DetectorStatus {
    pub fn new(detector: &'static str) -> Self {
        Self {
            detector,
            active: None,
            attempts: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn tried(&mut self, hook: Source, target: impl Into<String>, result: Result<(), String>) {
        let error = result.err();
        if error.is_none() && self.active.is_none() {
            self.active = Some(hook);
        }
        self.attempts.push(Attempt {
            hook,
            target: target.into(),
            error,
        });
    }

    /// The active attempt's target.
    pub fn active_target(&self) -> Option<&str> {
        self.attempts
            .iter()
            .find(|a| a.error.is_none())
            .map(|a| a.target.as_str())
    }
}

/// What setting globals needs: the resolved options.
#[derive(Debug)]
pub struct Setup<'a> {
    pub options: &'a crate::probes::LoadOptions,
    pub btf: &'a crate::kernel::btf::BtfFacts,
    pub tracefs: &'a crate::kernel::tracefs::Tracefs,
}

/// Where a detector's runtime reads the host.
#[derive(Clone, Debug)]
pub struct HostPaths {
    pub proc_root: PathBuf,
    pub cgroup_root: PathBuf,
    pub layout: CgroupLayout,
}

/// What attaching needs to know about the kernel.
#[derive(Debug)]
pub struct AttachContext<'a> {
    pub options: &'a crate::probes::LoadOptions,
    pub host: &'a HostPaths,
    /// aya's view of the kernel BTF, for loading tp_btf and fentry programs.
    pub aya_btf: &'a aya::Btf,
    /// What npd's own BTF reader found, for choosing between hooks.
    pub btf: &'a crate::kernel::btf::BtfFacts,
    pub tracefs: &'a crate::kernel::tracefs::Tracefs,
    /// Use only the classic-tracepoint and counter fallbacks, as on a kernel without tp_btf
    /// or fentry (to exercise them where the preferred hooks work).
    pub fallback_hooks_only: bool,
}

/// The tracepoints whose typed arguments a detector inspects (see [`BtfFacts::gather`]).
///
/// [`BtfFacts::gather`]: crate::kernel::btf::BtfFacts::gather
pub const BTF_TRACEPOINTS: &[&str] = &[oom::MARK_VICTIM];

const SKIPPED_FOR_FALLBACKS: &str = "skipped: --fallback-hooks-only";

fn program_mut<'a, P>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object"))?;
    program
        .try_into()
        .map_err(|_| format!("program {name} has an unexpected type"))
}

/// Loads a BTF-typed program (tp_btf, fentry, fexit) for `target` and attaches it.
macro_rules! load_btf_typed {
    ($ebpf:expr, $ctx:expr, $kind:ty, $program:expr, $target:expr) => {{
        let program: &mut $kind = program_mut($ebpf, $program)?;
        program
            .load($target, $ctx.aya_btf)
            .map_err(|e| crate::probes::describe(&e))?;
        program
            .attach()
            .map(|_| ())
            .map_err(|e| crate::probes::describe(&e))
    }};
}

/// Loads and attaches a tp_btf program.
pub(crate) fn attach_btf_tracepoint(
    ebpf: &mut aya::Ebpf,
    ctx: &AttachContext<'_>,
    program: &str,
    tracepoint: &str,
) -> Result<(), String> {
    if ctx.fallback_hooks_only {
        return Err(SKIPPED_FOR_FALLBACKS.to_owned());
    }
    load_btf_typed!(ebpf, ctx, aya::programs::BtfTracePoint, program, tracepoint)
}

/// Which side of a kernel function a BPF trampoline program runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Trampoline {
    Fentry,
    Fexit,
}

/// Loads and attaches an fentry or fexit program on `function`.
pub(crate) fn attach_trampoline(
    ebpf: &mut aya::Ebpf,
    ctx: &AttachContext<'_>,
    side: Trampoline,
    program: &str,
    function: &str,
) -> Result<(), String> {
    if ctx.fallback_hooks_only {
        return Err(SKIPPED_FOR_FALLBACKS.to_owned());
    }
    if !ctx.btf.has_function(function) {
        return Err(format!("this kernel has no traceable function {function}"));
    }
    match side {
        Trampoline::Fentry => load_btf_typed!(ebpf, ctx, aya::programs::FEntry, program, function),
        Trampoline::Fexit => load_btf_typed!(ebpf, ctx, aya::programs::FExit, program, function),
    }
}

/// Attaches each of `hooks` (program, category, name) the kernel has: the `category:name`
/// of those attached, and of the others with why not.
pub(crate) fn attach_optional_tracepoints(
    ebpf: &mut aya::Ebpf,
    ctx: &AttachContext<'_>,
    hooks: &[(&str, &str, &str)],
) -> (Vec<String>, Vec<String>) {
    let mut attached = Vec::new();
    let mut absent = Vec::new();
    for &(program, category, name) in hooks {
        match attach_tracepoint(ebpf, ctx, program, category, name) {
            Ok(()) => attached.push(format!("{category}:{name}")),
            Err(err) => absent.push(format!("{category}:{name} ({err})")),
        }
    }
    (attached, absent)
}

/// A detector's load-time configuration struct as the bytes of its global `name`.
pub(crate) fn config_global<T: aya::Pod>(
    name: &'static str,
    config: &T,
) -> (&'static str, Vec<u8>) {
    // SAFETY: T is Pod (#[repr(C)], no padding, checked in npd-common): every byte is
    // initialized.
    let bytes =
        unsafe { std::slice::from_raw_parts((config as *const T).cast::<u8>(), size_of::<T>()) };
    (name, bytes.to_vec())
}

/// Loads and attaches a classic tracepoint program.
pub(crate) fn attach_tracepoint(
    ebpf: &mut aya::Ebpf,
    ctx: &AttachContext<'_>,
    program: &str,
    category: &str,
    name: &str,
) -> Result<(), String> {
    if !ctx.tracefs.has_tracepoint(category, name) {
        return Err(format!(
            "tracepoint {category}:{name} does not exist on this kernel"
        ));
    }
    let program: &mut aya::programs::TracePoint = program_mut(ebpf, program)?;
    program.load().map_err(|e| crate::probes::describe(&e))?;
    program
        .attach(category, name)
        .map(|_| ())
        .map_err(|e| crate::probes::describe(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_hold_between_the_marks() {
        let marks = Watermarks {
            high_percent: 70.0,
            low_percent: 50.0,
        };
        // (percent, over before) -> over now
        for (percent, before, now) in [
            (69.9, false, false),
            (70.0, false, true),
            (60.0, true, true),
            (60.0, false, false),
            (50.0, true, true),
            (49.9, true, false),
        ] {
            assert_eq!(
                marks.over(percent, before),
                now,
                "{percent} % after {before}"
            );
        }
    }

    #[test]
    fn every_program_has_one_owner() {
        assert_eq!(owner_of_program("hung_task_btf"), Some("hung_task"));
        assert_eq!(owner_of_program("fd_fexit_3"), Some("fd"));
        assert_eq!(owner_of_program("fs_block_rq_complete"), Some("fs"));
        assert_eq!(owner_of_program("feature_fentry"), None);
        // Names unique across detectors, and every detector is in the registry's order.
        let names: Vec<&str> = all().iter().map(|d| d.name()).collect();
        assert_eq!(
            names.iter().filter(|n| by_name(n).is_some()).count(),
            names.len()
        );
    }
}
