//! fd exhaustion (EMFILE: the process hit RLIMIT_NOFILE; ENFILE: the system file table is
//! full), from every fd-creating syscall: fexit on each syscall's entry function where the
//! kernel allows it, its exit tracepoint otherwise.

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::TracePoint,
};
use npd_common::{
    RecordKind,
    fd::{EMFILE, ENFILE, FD_FEXIT_SLOTS, FdRateState},
};
use serde::Serialize;

use super::{AttachContext, Attached, Detector, DetectorStatus, Runtime, Setup, Trampoline};
use crate::{
    decode::{DecodeError, payload},
    engine::describe_task,
    event::{Event, Source, Task, comm_string},
    finding,
    kernel::kallsyms::Symbolizer,
    problem::{Assessment, Change, Clearing, ConditionSpec, ConditionType, EventReason, Report},
};

pub use npd_common::fd::{FD_FEXIT_SYSCALLS, RATE_LIMIT_MAP, SYS_EXIT_PROGRAM as PROGRAM};

/// The system file table (nearly) full: from `/proc/sys/fs/file-nr` samples with
/// hysteresis, and from ENFILE failures.
pub const FD_PRESSURE: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "fdPressure",
    type_name: "FDPressure",
    problem_reason: "FDUnderPressure",
    healthy_reason: "NoFDPressure",
    healthy_message: "system file table has enough free file handles",
    detector: "fd",
    clearing: Clearing::FileTable,
});

pub const FD_EXHAUSTED: EventReason = EventReason::warning("FDExhausted");

#[derive(Debug)]
pub struct FdDetector;

pub static DETECTOR: FdDetector = FdDetector;

impl Detector for FdDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        Some(npd_common::counters::Detector::Fd)
    }

    fn name(&self) -> &'static str {
        "fd"
    }

    fn about(&self) -> &'static str {
        "fd exhaustion (EMFILE, ENFILE) of every fd-creating syscall -> FDPressure, FDExhausted"
    }

    fn conditions(&self) -> &'static [ConditionType] {
        &[FD_PRESSURE]
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[FD_EXHAUSTED]
    }

    fn globals(&self, _setup: &Setup<'_>) -> Vec<(&'static str, Vec<u8>)> {
        let slots = fexit_slots();
        let bytes = slots.iter().flat_map(|nr| nr.to_ne_bytes()).collect();
        vec![(FD_FEXIT_SYSCALLS, bytes)]
    }

    fn attach(&self, ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = attach(ebpf, ctx);
        if let Some(note) = compat_note(|name| ctx.btf.has_function(name)) {
            status.notes.push(note);
        }
        let map = ebpf
            .take_map(RATE_LIMIT_MAP)
            .and_then(|map| BpfHashMap::try_from(map).ok());
        if map.is_none() {
            status.notes.push(format!(
                "map {RATE_LIMIT_MAP} missing: failures folded after a storm's last record \
                 are not reported"
            ));
        }
        Attached {
            status,
            runtime: Box::new(FdRuntime {
                accounting: FdAccounting::default(),
                rate_limits: map,
                rate_limit_ns: ctx.options.fd_rate_limit.as_nanos() as u64,
            }),
        }
    }
}

/// Records, and the sweep of the kernel's rate-limit map for a storm's tail.
#[derive(Debug)]
struct FdRuntime {
    accounting: FdAccounting,
    rate_limits: Option<BpfHashMap<MapData, u32, FdRateState>>,
    rate_limit_ns: u64,
}

impl Runtime for FdRuntime {
    fn decode(
        &mut self,
        kind: RecordKind,
        data: &[u8],
        _symbolizer: &mut Symbolizer,
    ) -> Result<Event, DecodeError> {
        let record = payload(kind, npd_common::fd::FD_EXHAUSTED_VERSION, data)?;
        Ok(self.accounting.on_record(&record))
    }

    fn poll(&mut self, now_ns: u64) -> Vec<Event> {
        match self.rate_limits.as_mut() {
            Some(map) => self.accounting.sweep(map, now_ns, self.rate_limit_ns),
            None => Vec::new(),
        }
    }
}

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i32)),*]
    };
}

/// Every syscall that can fail with EMFILE/ENFILE because it creates a file descriptor.
/// Numbers come from libc for the architecture the agent is built for.
#[rustfmt::skip]
const COMMON: &[(&str, i32)] = syscalls![
    SYS_openat, SYS_openat2, SYS_open_by_handle_at, SYS_open_tree,
    SYS_socket, SYS_socketpair, SYS_accept, SYS_accept4,
    SYS_dup, SYS_dup3, SYS_fcntl, SYS_pipe2,
    SYS_eventfd2, SYS_epoll_create1, SYS_memfd_create, SYS_memfd_secret,
    SYS_inotify_init1, SYS_fanotify_init, SYS_timerfd_create, SYS_signalfd4,
    SYS_pidfd_open, SYS_pidfd_getfd, SYS_userfaultfd, SYS_perf_event_open,
    SYS_bpf, SYS_io_uring_setup, SYS_fsopen, SYS_fsmount, SYS_fspick,
    SYS_mq_open, SYS_landlock_create_ruleset, SYS_seccomp, SYS_clone, SYS_clone3,
];

/// The pre-`*at`/flags variants that only some architectures keep.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const LEGACY: &[(&str, i32)] = syscalls![
    SYS_open, SYS_creat, SYS_dup2, SYS_pipe, SYS_eventfd, SYS_epoll_create,
    SYS_inotify_init, SYS_signalfd,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[(&str, i32)] = &[];

fn short_name(name: &str) -> &str {
    name.strip_prefix("SYS_").unwrap_or(name)
}

/// Every fd-creating syscall on this architecture: (name, number).
pub fn fd_syscalls() -> impl Iterator<Item = (&'static str, i32)> {
    COMMON
        .iter()
        .chain(LEGACY)
        .map(|&(name, nr)| (short_name(name), nr))
}

pub fn syscall_name(nr: i32) -> Option<&'static str> {
    fd_syscalls().find(|&(_, n)| n == nr).map(|(name, _)| name)
}

const _: () = assert!(COMMON.len() + LEGACY.len() <= FD_FEXIT_SLOTS);

/// Neither hook sees 32-bit programs' syscalls: fexit is on the native entry functions, and
/// the `syscalls:` tracepoints skip compat syscalls. Said in `check` where the kernel can run
/// such programs (its BTF has the compat entry functions).
fn compat_note(has_function: impl Fn(&str) -> bool) -> Option<String> {
    let compat = ["__ia32_sys_openat", "__arm64_compat_sys_openat"];
    compat.iter().any(|f| has_function(f)).then(|| {
        "32-bit (compat) syscalls are not watched: this kernel runs 32-bit programs, whose fd \
         exhaustion neither hook sees (fexit is on the native entry functions, and the \
         syscalls:sys_exit_* tracepoints skip compat syscalls)"
            .to_owned()
    })
}

/// How the kernel names a syscall's entry function (`SYSCALL_DEFINE` with the arch's wrapper).
#[cfg(target_arch = "x86_64")]
const SYSCALL_FUNCTION_PREFIX: Option<&str> = Some("__x64_sys_");
#[cfg(target_arch = "aarch64")]
const SYSCALL_FUNCTION_PREFIX: Option<&str> = Some("__arm64_sys_");
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSCALL_FUNCTION_PREFIX: Option<&str> = None;

/// The syscall number of each fexit slot, for the object's `FD_FEXIT_SYSCALLS` (slot i is
/// the i-th of [`fd_syscalls`]).
pub fn fexit_slots() -> [i32; FD_FEXIT_SLOTS] {
    let mut slots = [-1; FD_FEXIT_SLOTS];
    for (slot, (_, nr)) in slots.iter_mut().zip(fd_syscalls()) {
        *slot = nr;
    }
    slots
}

/// Why an fd could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Errno {
    /// The process hit its RLIMIT_NOFILE.
    #[serde(rename = "EMFILE")]
    Emfile,
    /// The system file table is full.
    #[serde(rename = "ENFILE")]
    Enfile,
    #[serde(rename = "other")]
    Other,
}

impl Errno {
    pub fn from_raw(errno: i32) -> Self {
        match errno {
            EMFILE => Self::Emfile,
            ENFILE => Self::Enfile,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Emfile => "EMFILE",
            Self::Enfile => "ENFILE",
            Self::Other => "other",
        }
    }
}

/// fexit on every fd syscall's entry function where the kernel allows it (only those
/// syscalls pay); else one program on every fd syscall's exit tracepoint.
fn attach(ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> DetectorStatus {
    let mut status = DetectorStatus::new("fd");
    let fexit = attach_fexits(ebpf, ctx);
    if let Ok((_, absent)) = &fexit
        && !absent.is_empty()
    {
        status
            .notes
            .push(format!("not on this kernel: {}", absent.join(", ")));
    }
    let attached = fexit.as_ref().map(|(n, _)| *n).unwrap_or(0);
    let done = fexit.is_ok();
    let prefix = SYSCALL_FUNCTION_PREFIX.unwrap_or("sys_");
    status.tried(
        Source::Fexit,
        if done {
            format!("{prefix}* ({attached} syscalls)")
        } else {
            format!("{prefix}<fd syscalls>")
        },
        fexit.map(|_| ()),
    );
    if done {
        return status;
    }
    let target = "syscalls:sys_exit_<fd syscalls>";
    let program: &mut TracePoint = match super::program_mut(ebpf, PROGRAM) {
        Ok(program) => program,
        Err(err) => {
            status.tried(Source::Tracepoint, target, Err(err));
            return status;
        }
    };
    if let Err(err) = program.load() {
        status.tried(
            Source::Tracepoint,
            target,
            Err(crate::probes::describe(&err)),
        );
        return status;
    }
    let mut attached = Vec::new();
    let mut absent = Vec::new();
    let mut failed = Vec::new();
    for (name, _) in fd_syscalls() {
        let tracepoint = format!("sys_exit_{name}");
        if !ctx.tracefs.has_tracepoint("syscalls", &tracepoint) {
            absent.push(name);
            continue;
        }
        match program.attach("syscalls", &tracepoint) {
            Ok(_) => attached.push(name),
            Err(err) => failed.push(format!("{name}: {}", crate::probes::describe(&err))),
        }
    }
    let target = format!("syscalls:sys_exit_* ({} syscalls)", attached.len());
    if attached.is_empty() {
        status.tried(
            Source::Tracepoint,
            target,
            Err(format!("attached to no syscall: {}", failed.join("; "))),
        );
    } else {
        status.tried(Source::Tracepoint, target, Ok(()));
    }
    if !absent.is_empty() {
        status
            .notes
            .push(format!("not on this kernel: {}", absent.join(", ")));
    }
    if !failed.is_empty() {
        status
            .notes
            .push(format!("failed to attach: {}", failed.join("; ")));
    }
    status
}

/// Loads and attaches one fexit program per fd syscall present: (attached, absent). All or
/// nothing: on any failure the ones attached are unloaded again, and the tracepoints (which
/// cover every syscall) take over.
fn attach_fexits(
    ebpf: &mut Ebpf,
    ctx: &AttachContext<'_>,
) -> Result<(usize, Vec<&'static str>), String> {
    let Some(prefix) = SYSCALL_FUNCTION_PREFIX else {
        return Err("npd does not know this architecture's syscall function names".to_owned());
    };
    let mut loaded = Vec::new();
    let mut absent = Vec::new();
    let mut result = Ok(());
    for (slot, (name, _)) in fd_syscalls().enumerate() {
        let function = format!("{prefix}{name}");
        if !ctx.fallback_hooks_only && !ctx.btf.has_function(&function) {
            absent.push(name);
            continue;
        }
        let program = npd_common::fd::FEXIT_PROGRAMS[slot].to_owned();
        loaded.push(program.clone());
        if let Err(err) =
            super::attach_trampoline(ebpf, ctx, Trampoline::Fexit, &program, &function)
        {
            result = Err(if loaded.len() == 1 {
                err
            } else {
                format!("{function}: {err}")
            });
            break;
        }
    }
    if result.is_ok() && loaded.is_empty() {
        result = Err("this kernel has none of the fd syscall functions".to_owned());
    }
    if result.is_err() {
        for program in &loaded {
            if let Ok(program) = super::program_mut::<aya::programs::FExit>(ebpf, program) {
                let _ = program.unload();
            }
        }
    }
    result.map(|()| (loaded.len(), absent))
}

/// An fd-exhaustion event as reported.
#[derive(Clone, Debug, Serialize)]
pub struct FdExhausted {
    pub errno: Errno,
    pub syscall: String,
    pub syscall_nr: i32,
    /// Failures of this process folded into this event (not counting this one for a kernel
    /// record; all of them for a sweep).
    pub suppressed: u64,
    /// Failures of this process counted since its first, this one included.
    pub failures_total: u64,
    /// RLIMIT_NOFILE soft limit at the failure, if the kernel exposes it.
    pub nofile_limit: Option<u64>,
    /// True when the agent reports failures the kernel folded away after a storm's last
    /// record (no kernel record stands for them).
    pub flushed: bool,
    /// The process's cgroup path as the kernel read it at the failure, if it did; the
    /// attribution, not the event, carries it to users.
    #[serde(skip)]
    pub kernel_cgroup_path: Option<String>,
}

finding!(FdExhausted, "fd_exhausted", {
    fn cgroup_path(&self) -> Option<&str> {
        self.kernel_cgroup_path.as_deref()
    }

    fn summary(&self) -> String {
        let limit = self
            .nofile_limit
            .map(|l| format!(" (RLIMIT_NOFILE {l})"))
            .unwrap_or_default();
        let what = if self.errno == Errno::Enfile {
            "system file table full".to_owned()
        } else {
            format!("out of file descriptors{limit}")
        };
        if self.flushed {
            format!(
                "{what}: {} more failures of {}",
                self.suppressed, self.syscall
            )
        } else if self.suppressed > 0 {
            format!(
                "{what}: {} failed (+{} suppressed)",
                self.syscall, self.suppressed
            )
        } else {
            format!("{what}: {} failed", self.syscall)
        }
    }

    /// An FDExhausted Event counting every failure it stands for; ENFILE also sets
    /// FDPressure.
    fn assess(&self, event: &Event) -> Assessment {
        let message = format!(
            "process {}: {}",
            describe_task(&event.task, event.attribution.as_ref()),
            self.summary()
        );
        // A record stands for itself and the failures folded into it; a sweep only for those.
        let count = if self.flushed {
            self.suppressed
        } else {
            self.suppressed + 1
        };
        // In a pod the container is the subject: its processes are one series by name, so a
        // pod forking failing processes grows one series, not one per pid. Outside pods the
        // pid is all that tells two processes of one name apart.
        let in_pod = event.attribution.as_ref().is_some_and(|a| a.pod.is_some());
        let detail_key = if in_pod {
            format!("{}|{}", event.task.comm, self.errno.as_str())
        } else {
            format!(
                "{}|{}|{}",
                event.task.comm,
                event.task.pid,
                self.errno.as_str()
            )
        };
        let assessment = Assessment::report(Report {
            reason: FD_EXHAUSTED,
            detail_key,
            message,
            count,
            since_boot: false,
        });
        if self.errno == Errno::Enfile {
            assessment.with_condition(
                FD_PRESSURE,
                Change::FileTableFull {
                    syscall: self.syscall.clone(),
                },
            )
        } else {
            assessment
        }
    }
});

/// Running totals per rate-limit entry, so that every failure is counted exactly once
/// whether it arrives in a record or is found by a sweep.
#[derive(Debug, Default)]
pub struct FdAccounting {
    /// (tgid, first_failure_ns) -> failures accounted for.
    accounted: HashMap<(u32, u64), u64>,
    /// Failures accounted in total (records and sweeps).
    pub failures: u64,
}

/// Entries idle this long are removed from the kernel map once fully accounted: the next
/// failure of that process is then reported at once again.
const IDLE_EVICT_NS: u64 = 60_000_000_000;

impl FdAccounting {
    /// Accounts for a kernel record and returns its event.
    fn on_record(&mut self, record: &npd_common::fd::FdExhausted) -> Event {
        let key = (record.header.pid, record.first_failure_ns);
        let accounted = self.accounted.entry(key).or_default();
        let new = record.failures_total.saturating_sub(*accounted);
        *accounted = (*accounted).max(record.failures_total);
        self.failures += new;
        Event::new(
            record.header.ts_ns,
            Task::from_header(&record.header),
            Source::from_hook(
                npd_common::Hook::from_u8(record.header.hook)
                    .unwrap_or(npd_common::Hook::Tracepoint),
            ),
            FdExhausted {
                errno: Errno::from_raw(record.errno),
                syscall: syscall_label(record.syscall_nr),
                syscall_nr: record.syscall_nr,
                // A record stands for itself and the failures before it not yet accounted.
                suppressed: new.saturating_sub(1),
                failures_total: record.failures_total,
                nofile_limit: (record.nofile_limit != u64::MAX).then_some(record.nofile_limit),
                flushed: false,
                kernel_cgroup_path: kernel_cgroup_path(&record.cgroup),
            },
        )
    }

    /// Reports failures the kernel folded away and no record will carry because the process
    /// went quiet, and forgets long-idle entries. Call right after draining the ring buffer,
    /// so no record older than `rate_limit_ns` can still be in flight.
    pub fn sweep(
        &mut self,
        map: &mut BpfHashMap<MapData, u32, FdRateState>,
        now_ns: u64,
        rate_limit_ns: u64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let mut idle = Vec::new();
        let mut live = std::collections::HashSet::new();
        for (tgid, state) in map.iter().filter_map(Result::ok) {
            let key = (tgid, state.first_failure_ns);
            live.insert(key);
            let quiet_for = now_ns.saturating_sub(state.last_record_ns);
            if quiet_for < rate_limit_ns {
                continue;
            }
            let accounted = self.accounted.entry(key).or_insert(state.reported);
            if state.failures > *accounted {
                let new = state.failures - *accounted;
                *accounted = state.failures;
                self.failures += new;
                events.push(Event::new(
                    now_ns,
                    Task {
                        pid: tgid,
                        tid: state.last_tid,
                        comm: comm_string(&state.comm),
                        cgroup_id: state.cgroup_id,
                    },
                    Source::Sweep,
                    FdExhausted {
                        errno: Errno::from_raw(state.last_errno),
                        syscall: syscall_label(state.last_syscall_nr),
                        syscall_nr: state.last_syscall_nr,
                        suppressed: new,
                        failures_total: state.failures,
                        nofile_limit: None,
                        flushed: true,
                        kernel_cgroup_path: None,
                    },
                ));
            } else if quiet_for >= IDLE_EVICT_NS {
                idle.push(key);
            }
        }
        for (tgid, first) in idle {
            // A failure racing with this removal still finds the entry and is reported by
            // the kernel with its running total, so nothing is lost.
            let _ = map.remove(&tgid);
            self.accounted.remove(&(tgid, first));
        }
        self.accounted.retain(|key, _| live.contains(key));
        events
    }
}

/// The process's cgroup path from the names the kernel wrote, when the walk reached the root.
fn kernel_cgroup_path(path: &npd_common::cgroup::KernelCgroupPath) -> Option<String> {
    if path.whole == 0 {
        return None;
    }
    crate::attribution::from_kernel_names(&path.names, path.depth)
}

fn syscall_label(nr: i32) -> String {
    syscall_name(nr).map_or_else(|| format!("syscall_{nr}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_table_is_complete_and_unambiguous() {
        let names: Vec<_> = fd_syscalls().map(|(name, _)| name).collect();
        for expected in [
            "openat",
            "socket",
            "accept4",
            "dup",
            "fcntl",
            "pipe2",
            "eventfd2",
            "epoll_create1",
            "memfd_create",
            "inotify_init1",
            "timerfd_create",
            "signalfd4",
            "pidfd_open",
        ] {
            assert!(names.contains(&expected), "{expected} missing");
        }
        #[cfg(target_arch = "x86_64")]
        for legacy in ["open", "creat", "dup2", "pipe", "eventfd", "epoll_create"] {
            assert!(names.contains(&legacy), "{legacy} missing");
        }
        let mut numbers: Vec<_> = fd_syscalls().map(|(_, nr)| nr).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), names.len(), "two syscalls share a number");
        assert_eq!(syscall_name(libc::SYS_openat as i32), Some("openat"));
        assert_eq!(syscall_label(-1), "syscall_-1");
    }

    fn record(pid: u32, first: u64, total: u64) -> npd_common::fd::FdExhausted {
        let mut header: npd_common::RecordHeader =
            // SAFETY: RecordHeader is Pod; all-zero is a valid value.
            unsafe { std::mem::zeroed() };
        header.pid = pid;
        header.hook = npd_common::Hook::Tracepoint as u8;
        npd_common::fd::FdExhausted {
            header,
            errno: EMFILE,
            syscall_nr: libc::SYS_openat as i32,
            suppressed: 0,
            failures_total: total,
            first_failure_ns: first,
            nofile_limit: 32,
            cgroup: npd_common::cgroup::KernelCgroupPath::EMPTY,
        }
    }

    /// A path the kernel read names the process's cgroup even when the process and its
    /// cgroup are gone by the time the agent sees the record; a partial walk names nothing.
    #[test]
    fn the_kernels_cgroup_path_is_the_events_when_whole() {
        let leaf_first = ["c0ffee", "pod1234", "burstable", "kubepods"];
        let mut with_path = record(9, 1, 1);
        for (slot, name) in with_path.cgroup.names.iter_mut().zip(leaf_first) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        with_path.cgroup.depth = leaf_first.len() as u32;
        with_path.cgroup.whole = 1;
        let mut acc = FdAccounting::default();
        let event = acc.on_record(&with_path);
        assert_eq!(
            event.detail.cgroup_path(),
            Some("/kubepods/burstable/pod1234/c0ffee")
        );
        with_path.cgroup.whole = 0;
        let event = acc.on_record(&with_path);
        assert_eq!(event.detail.cgroup_path(), None);
    }

    #[test]
    fn accounting_counts_every_failure_once() {
        let mut acc = FdAccounting::default();
        let suppressed = |e: &Event| {
            e.detail_as::<FdExhausted>()
                .expect("an fd event")
                .suppressed
        };
        // First failure: reported at once, nothing suppressed.
        assert_eq!(suppressed(&acc.on_record(&record(1, 100, 1))), 0);
        // A second later, at the 1000th failure: the record stands for itself and the 998
        // folded since the first.
        assert_eq!(suppressed(&acc.on_record(&record(1, 100, 1000))), 998);
        // A lost record (ring full) shows up as more suppressed in the next one.
        assert_eq!(suppressed(&acc.on_record(&record(1, 100, 3000))), 1999);
        // A replayed or reordered record adds nothing.
        assert_eq!(suppressed(&acc.on_record(&record(1, 100, 2000))), 0);
        assert_eq!(acc.failures, 3000);
        // Another process, and the same pid reused later (a new entry), are separate.
        acc.on_record(&record(2, 100, 5));
        acc.on_record(&record(1, 900, 1));
        assert_eq!(acc.failures, 3006);
    }

    #[test]
    fn check_says_compat_syscalls_are_not_watched_where_the_kernel_runs_them() {
        let kernel = |list: &'static [&'static str]| move |name: &str| list.contains(&name);
        assert!(compat_note(kernel(&["__x64_sys_openat", "__ia32_sys_openat"])).is_some());
        assert!(
            compat_note(kernel(&["__arm64_sys_openat", "__arm64_compat_sys_openat"])).is_some()
        );
        assert_eq!(compat_note(kernel(&["__x64_sys_openat"])), None);
    }
}
