//! One file per detector: how it attaches (with fallbacks), how its records become events,
//! and whatever it must watch from userspace.

pub mod fd;
pub mod hung_task;
pub mod oom;
pub mod oops;

use serde::Serialize;

use crate::event::Source;

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

/// What attaching needs to know about the kernel.
#[derive(Debug)]
pub struct AttachContext<'a> {
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
pub const BTF_TRACEPOINTS: &[&str] = &["mark_victim"];

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
