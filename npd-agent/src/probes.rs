//! Loading npd's kernel programs: the embedded object, the load-time configuration resolved
//! for this kernel, and each detector attached with its fallbacks.

use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::ProgramError,
};
use npd_common::{
    config::{COMM_DATA_LOC_HANG, COMM_DATA_LOC_OOM, ProbeConfig, TracepointOffsets, cgroup_mode},
    counters::{COUNTERS_PER_DETECTOR, Counter, Detector, counter_index},
};
use thiserror::Error;

use crate::{
    detectors::{self, AttachContext, DetectorStatus, HostPaths, Runtime, Setup},
    kernel::{
        self, CgroupLayout,
        btf::{Btf, BtfError, BtfFacts},
        kallsyms::Symbolizer,
        offsets,
        tracefs::{Tracefs, TracefsError, TracepointFormat},
    },
};

/// aya-log-ebpf's default size of its ring buffer, kept when `--bpf-log` asks for the log.
const AYA_LOG_RING_BYTES: u32 = 128 * 1024;

/// The object `cargo xtask build` compiled from npd-ebpf; empty in a plain `cargo build`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/npd.bpf.o"));

pub use npd_common::names::{COUNTERS_MAP, RECORDS_MAP};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "this npd-agent was built without its eBPF object (plain `cargo build`); \
         build it with `cargo xtask build` or run it with `cargo xtask run`"
    )]
    NoObject,
    #[error("{0}")]
    Privileges(String),
    #[error(
        "this kernel has no BTF at {path} ({source}); npd needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (5.8 or later)",
        path = kernel::btf::VMLINUX_BTF
    )]
    Btf { source: BtfError },
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("map {0} is missing from the eBPF object or has the wrong type")]
    Map(&'static str),
    #[error("no detector could attach on this kernel:\n{0}")]
    NothingAttached(String),
}

/// Which detectors to run and how.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// In registry order.
    pub detectors: Vec<&'static dyn detectors::Detector>,
    pub ring_buffer_bytes: u32,
    pub fd_rate_limit: Duration,
    /// Forward the programs' aya-log debug messages to the agent's log.
    pub bpf_log: bool,
    /// Where the host's /proc and /sys/fs/cgroup are: `/` on a node, `/host` in npd's
    /// DaemonSet (a container's own /proc and cgroup view are namespaced).
    pub host_root: std::path::PathBuf,
    /// Attach only the fallback hooks (tests of the fallbacks on kernels with the rest).
    pub fallback_hooks_only: bool,
    /// Where and how often the node's daemons are asked (`daemons.*`).
    pub health: detectors::daemon_health::HealthOptions,
    /// Which daemons' starts and exits the kernel reports (`daemons.*`).
    pub daemons: detectors::daemons::DaemonOptions,
    /// The sampled resource detectors' thresholds (`pids.*`, `pressure.*`, ...).
    pub resources: detectors::ResourceOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            detectors: detectors::all().to_vec(),
            ring_buffer_bytes: 256 * 1024,
            fd_rate_limit: Duration::from_secs(1),
            bpf_log: false,
            host_root: std::path::PathBuf::from("/"),
            fallback_hooks_only: false,
            health: detectors::daemon_health::HealthOptions::default(),
            daemons: detectors::daemons::DaemonOptions::default(),
            resources: detectors::ResourceOptions::default(),
        }
    }
}

/// The loaded programs and the maps the agent reads.
pub struct Probes {
    /// Owns the programs and their links: dropping it detaches everything.
    pub ebpf: Ebpf,
    pub ring: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
    pub statuses: Vec<DetectorStatus>,
    /// Each running detector's runtime, by its kernel entry (`None`: agent-only).
    pub runtimes: Vec<(Option<Detector>, Box<dyn Runtime>)>,
    pub config: ProbeConfig,
    pub cgroup_layout: CgroupLayout,
    pub host_root: std::path::PathBuf,
    /// BTF offsets that could not be resolved, and why.
    pub missing_offsets: offsets::MissingOffsets,
    pub tracefs: Tracefs,
    pub logger: Option<aya_log::EbpfLogger<TracingLogger>>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("statuses", &self.statuses)
            .field("cgroup_layout", &self.cgroup_layout)
            .finish_non_exhaustive()
    }
}

/// Renders a program error with the kernel's reason, and the verifier's last words if any.
pub fn describe(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(6).collect();
            let reason = if io_error.raw_os_error() == Some(libc::EPERM) {
                format!("the kernel refused to load it ({io_error})")
            } else {
                io_error.to_string()
            };
            if tail.is_empty() {
                reason
            } else {
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("{reason}; verifier: {}", tail.join(" | "))
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(inner) = source {
                text.push_str(": ");
                text.push_str(&inner.to_string());
                source = inner.source();
            }
            text
        }
    }
}

/// Field offsets of the tracepoints the programs read, from their format files.
fn tracepoint_offsets(tracefs: &Tracefs) -> Result<TracepointOffsets, TracefsError> {
    let mut tp = TracepointOffsets::unknown();
    // Every sys_exit_* event shares one layout (struct syscall_trace_exit).
    let sys_exit = tracefs.format("syscalls", "sys_exit_openat")?;
    tp.sys_exit_nr = sys_exit.require("__syscall_nr", 4)?;
    tp.sys_exit_ret = sys_exit.require("ret", 8)?;
    // The fallbacks' tracepoints are optional: a kernel without one uses another hook.
    if let Ok(hang) = tracefs.format("sched", "sched_process_hang") {
        tp.hang_pid = hang.optional("pid", 4);
        (tp.hang_comm, tp.comm_data_loc) = comm_field(&hang, tp.comm_data_loc, COMM_DATA_LOC_HANG);
    }
    if let Ok(oom) = tracefs.format("oom", "mark_victim") {
        tp.oom_pid = oom.optional("pid", 4);
        (tp.oom_comm, tp.comm_data_loc) = comm_field(&oom, tp.comm_data_loc, COMM_DATA_LOC_OOM);
        tp.oom_total_vm = oom.optional("total_vm", 8);
        tp.oom_anon_rss = oom.optional("anon_rss", 8);
        tp.oom_file_rss = oom.optional("file_rss", 8);
        tp.oom_shmem_rss = oom.optional("shmem_rss", 8);
        tp.oom_uid = oom.optional("uid", 4);
        tp.oom_pgtables = oom.optional("pgtables", 8);
        tp.oom_score_adj = oom.optional("oom_score_adj", 2);
    }
    Ok(tp)
}

/// A `comm` field's offset, and the data-loc flags with `flag` set if it is a `__data_loc`
/// string (newer kernels) rather than a `char[16]`.
fn comm_field(format: &TracepointFormat, flags: u32, flag: u32) -> (u32, u32) {
    match format.field("comm") {
        Some(field) if field.declaration.starts_with("__data_loc") && field.size == 4 => {
            (field.offset, flags | flag)
        }
        Some(field) if field.size == 16 => (field.offset, flags),
        _ => (npd_common::config::UNKNOWN, flags),
    }
}

/// The oldest kernel on which the OOM programs' cgroup walk (the victim's path and its
/// limited memory cgroup, read at the kill) was seen to pass the verifier: 6.18 accepts it,
/// 6.1 gives up at a million instructions. Older kernels attribute an OOM kill through the
/// cgroup index and find the limited cgroup from its files.
pub const CGROUP_WALK_SINCE: (u32, u32) = (6, 18);

/// Builds the load-time configuration for this kernel.
fn probe_config(
    options: &LoadOptions,
    btf: &Btf,
    tracefs: &Tracefs,
    layout: CgroupLayout,
) -> Result<(ProbeConfig, offsets::MissingOffsets), LoadError> {
    let resolved = offsets::resolve(btf);
    let config = ProbeConfig {
        fd_rate_limit_ns: options.fd_rate_limit.as_nanos() as u64,
        tainted_mask_addr: Symbolizer::default()
            .address_of("tainted_mask")
            .unwrap_or(0),
        page_size: kernel::page_size(),
        cgroup_mode: match layout {
            CgroupLayout::Unified => cgroup_mode::UNIFIED,
            CgroupLayout::Legacy => cgroup_mode::MEMORY_V1,
        },
        cgroup_walk: u32::from(kernel::version().is_some_and(|v| v >= CGROUP_WALK_SINCE)),
        offsets: resolved.offsets,
        tracepoints: tracepoint_offsets(tracefs)?,
    };
    Ok((config, resolved.missing))
}

pub fn load(options: &LoadOptions) -> Result<Probes, LoadError> {
    let probes = load_and_attach(options);
    // Loading parses the kernel's BTF (npd's reader, then aya's): tens of MiB freed by now,
    // which glibc keeps in its heap unless asked. Idle RSS drops from ~25 to ~12 MiB.
    kernel::release_free_heap();
    probes
}

fn load_and_attach(options: &LoadOptions) -> Result<Probes, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    if let Some(missing) = kernel::missing_privileges() {
        return Err(LoadError::Privileges(missing));
    }
    if let Err(err) = kernel::raise_memlock_limit()
        && kernel::version().is_some_and(|v| v < (5, 11))
    {
        tracing::warn!("cannot lift RLIMIT_MEMLOCK ({err}); loading may fail on this kernel");
    }
    let tracefs = Tracefs::find_or_mount()?;
    let cgroup_layout = CgroupLayout::detect(&options.host_root);
    // npd's BTF reader first, dropped before aya parses its own copy (the peak is one parse).
    let (config, missing_offsets, btf_facts) = {
        let btf = Btf::from_sys_fs().map_err(|source| LoadError::Btf { source })?;
        let (config, missing) = probe_config(options, &btf, &tracefs, cgroup_layout)?;
        (
            config,
            missing,
            BtfFacts::gather(&btf, detectors::BTF_TRACEPOINTS),
        )
    };
    kernel::release_free_heap();
    let aya_btf = aya::Btf::from_sys_fs().map_err(|err| LoadError::Btf {
        source: BtfError::Malformed(if matches!(err, aya::BtfError::FileError { .. }) {
            "unreadable"
        } else {
            "rejected by aya"
        }),
    })?;

    let log_level: u8 = if options.bpf_log { 0xff } else { 0 };
    let setup = Setup {
        options,
        btf: &btf_facts,
        tracefs: &tracefs,
    };
    // Every detector's globals, also of those not run: their programs are in the object.
    let globals: Vec<(&'static str, Vec<u8>)> = detectors::all()
        .iter()
        .flat_map(|detector| detector.globals(&setup))
        .collect();
    // Without --bpf-log nothing is written to aya-log's ring: one page instead of 128 KiB.
    let log_ring_bytes = if options.bpf_log {
        AYA_LOG_RING_BYTES
    } else {
        kernel::page_size() as u32
    };
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&aya_btf))
        .override_global(npd_common::names::PROBE_CONFIG_GLOBAL, &config, true)
        .override_global(npd_common::names::AYA_LOG_LEVEL_GLOBAL, &log_level, false)
        .map_max_entries(RECORDS_MAP, options.ring_buffer_bytes)
        .map_max_entries(npd_common::names::AYA_LOGS_MAP, log_ring_bytes);
    for (name, bytes) in &globals {
        loader.override_global(name, bytes.as_slice(), true);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|err| LoadError::Load(error_chain(&err)))?;

    let host = HostPaths {
        proc_root: options.host_root.join("proc"),
        cgroup_root: cgroup_layout.attribution_root(&options.host_root),
        layout: cgroup_layout,
    };
    let ctx = AttachContext {
        options,
        host: &host,
        aya_btf: &aya_btf,
        btf: &btf_facts,
        tracefs: &tracefs,
        fallback_hooks_only: options.fallback_hooks_only,
    };
    let mut statuses = Vec::new();
    let mut runtimes = Vec::new();
    for &detector in &options.detectors {
        let attached = detector.attach(&mut ebpf, &ctx);
        statuses.push(attached.status);
        runtimes.push((detector.kernel(), attached.runtime));
    }
    if statuses.iter().all(|s| s.active.is_none()) {
        return Err(LoadError::NothingAttached(
            statuses
                .iter()
                .flat_map(|s| s.attempts.iter().map(move |a| (s.detector, a)))
                .map(|(detector, a)| {
                    format!(
                        "  {detector}: {} {}: {}",
                        a.hook.as_str(),
                        a.target,
                        a.error.as_deref().unwrap_or("ok")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }

    // aya-log's map must be taken after the programs are loaded (see KERNEL-AND-TOOLCHAIN.md).
    let logger = if options.bpf_log {
        match aya_log::EbpfLogger::init_with_logger(&mut ebpf, TracingLogger) {
            Ok(logger) => Some(logger),
            Err(err) => {
                tracing::warn!("eBPF debug log unavailable: {err}");
                None
            }
        }
    } else {
        None
    };

    let ring = take_map(&mut ebpf, RECORDS_MAP)?;
    let counters = take_map(&mut ebpf, COUNTERS_MAP)?;
    Ok(Probes {
        ebpf,
        ring,
        counters,
        statuses,
        runtimes,
        config,
        cgroup_layout,
        host_root: options.host_root.clone(),
        missing_offsets,
        tracefs,
        logger,
    })
}

fn take_map<T: TryFrom<aya::maps::Map>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, LoadError> {
    ebpf.take_map(name)
        .and_then(|map| T::try_from(map).ok())
        .ok_or(LoadError::Map(name))
}

pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Sums of the programs' per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    values: [u64; npd_common::counters::COUNTER_SLOTS as usize],
}

impl KernelCounters {
    pub fn read(map: &PerCpuArray<MapData, u64>) -> Self {
        let mut values = [0; npd_common::counters::COUNTER_SLOTS as usize];
        for (index, value) in values.iter_mut().enumerate() {
            if let Ok(per_cpu) = map.get(&(index as u32), 0) {
                *value = per_cpu.iter().sum();
            }
        }
        Self { values }
    }

    pub fn get(&self, detector: Detector, counter: Counter) -> u64 {
        self.values[counter_index(detector, counter) as usize]
    }

    pub fn total(&self, counter: Counter) -> u64 {
        Detector::ALL
            .iter()
            .map(|&detector| self.get(detector, counter))
            .sum()
    }
}

const _: () = assert!(COUNTERS_PER_DETECTOR == Counter::ALL.len() as u32);

/// Forwards the programs' aya-log messages to `tracing`.
#[derive(Debug, Clone, Copy)]
pub struct TracingLogger;

impl log::Log for TracingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "npd::ebpf", "{}", record.args());
    }

    fn flush(&self) {}
}

/// Whether this kernel accepts the program types npd's preferred hooks need.
#[derive(Debug)]
pub struct ProgramTypeSupport {
    pub btf_tracepoint: Result<String, String>,
    pub fentry: Result<String, String>,
}

/// Loads (never attaches) the object's feature-probe programs.
pub fn probe_program_types(ebpf: &mut Ebpf) -> ProgramTypeSupport {
    let btf = aya::Btf::from_sys_fs();
    let mut try_load = |name: &str,
                        load: &dyn Fn(
        &mut aya::programs::Program,
        &aya::Btf,
    ) -> Result<(), ProgramError>| {
        let btf = btf.as_ref().map_err(|e| format!("no BTF: {e}"))?;
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?;
        load(program, btf)
            .map(|()| "allowed".to_owned())
            .map_err(|err| describe(&err))
    };
    let btf_tracepoint = try_load(
        npd_common::names::FEATURE_TP_BTF_PROGRAM,
        &|program, btf| {
            let program: &mut aya::programs::BtfTracePoint = program.try_into()?;
            program.load("sched_switch", btf)
        },
    );
    let fentry = try_load(
        npd_common::names::FEATURE_FENTRY_PROGRAM,
        &|program, btf| {
            let program: &mut aya::programs::FEntry = program.try_into()?;
            program.load("vfs_read", btf)
        },
    );
    ProgramTypeSupport {
        btf_tracepoint,
        fentry,
    }
}

/// Ids of the loaded programs that are attached through a BPF link, to notice later if a
/// link disappears (someone detached it). Programs attached without a link (classic
/// tracepoints on kernels before 5.15) are not listed and cannot be watched this way.
pub fn linked_programs(ebpf: &Ebpf) -> Vec<(String, u32)> {
    let linked: std::collections::HashSet<u32> = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|link| link.program_id())
        .collect();
    ebpf.programs()
        .filter_map(|(name, program)| {
            let id = program.info().ok()?.id();
            linked.contains(&id).then(|| (name.to_owned(), id))
        })
        .collect()
}

/// Which of `expected` no longer have a link.
pub fn detached_programs(expected: &[(String, u32)]) -> Vec<String> {
    let linked: std::collections::HashSet<u32> = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|link| link.program_id())
        .collect();
    expected
        .iter()
        .filter(|(_, id)| !linked.contains(id))
        .map(|(name, _)| name.clone())
        .collect()
}
