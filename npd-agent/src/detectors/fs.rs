//! Filesystems and disks: ext4 errors and shutdowns, XFS shutdowns and block I/O errors from
//! the kernel's tracepoints (never the log), with NPD's ReadonlyFilesystem and XfsShutdown
//! conditions and its Ext4Error and IOError Events.
//!
//! The hook is the detector; the mount table only confirms: after an ext4 error the agent
//! looks at the device's mounts for the next seconds, and raises ReadonlyFilesystem when the
//! kernel has made it read-only (`ro`, or `emergency_ro` on current kernels). The condition
//! clears when the filesystem is mounted read-write again or unmounted; XfsShutdown clears
//! when the shut-down filesystem is unmounted (a shut-down XFS still says `rw`).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use npd_common::{
    RecordKind,
    config::UNKNOWN,
    fs::{
        self as abi, BLOCK_RQ_COMPLETE_PROGRAM, BLOCK_RQ_ERROR_PROGRAM, BlockEventOffsets,
        CONFIG_GLOBAL, EXT4_ERROR_PROGRAM, EXT4_SHUTDOWN_PROGRAM, FsConfig, FsEventOffsets,
        FsRateKey, FsRateState, FsTally, RATE_LIMIT_MAP, XFS_SHUTDOWN_PROGRAM, dev_major,
        dev_minor, source, string_kind,
    },
};
use serde::Serialize;

use super::{
    AttachContext, Attached, Detector, DetectorStatus, Runtime, Setup, attach_optional_tracepoints,
    attach_tracepoint, config_global,
};
use crate::{
    decode::{DecodeError, payload},
    event::{Event, Source, Task, comm_string},
    finding,
    kernel::{
        kallsyms::Symbolizer,
        mountinfo::{Mount, devices_of_type, mounts_of, read_only_after_error},
        tracefs::TracepointFormat,
    },
    problem::{Assessment, Change, Clearing, ConditionSpec, ConditionType, EventReason, Report},
};

/// NPD's ReadonlyFilesystem: a filesystem the kernel made read-only after an error.
pub const READONLY_FILESYSTEM: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "readonlyFilesystem",
    type_name: "ReadonlyFilesystem",
    problem_reason: "FilesystemIsReadOnly",
    healthy_reason: "FilesystemIsNotReadOnly",
    healthy_message: "no filesystem was made read-only by an error",
    detector: "fs",
    clearing: Clearing::Keyed,
});

/// NPD's XfsShutdown: an XFS filesystem shut itself down (every write fails with EIO).
pub const XFS_SHUTDOWN: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "xfsShutdown",
    type_name: "XfsShutdown",
    problem_reason: "XfsHasShutdown",
    healthy_reason: "XfsHasNotShutDown",
    healthy_message: "no XFS filesystem has shut down",
    detector: "fs",
    clearing: Clearing::Keyed,
});

pub const EXT4_ERROR: EventReason = EventReason::warning("Ext4Error");
pub const FILESYSTEM_SHUTDOWN: EventReason = EventReason::warning("FilesystemShutdown");
pub const IO_ERROR: EventReason = EventReason::warning("IOError");
pub const FILESYSTEM_READ_ONLY: EventReason = EventReason::warning("FilesystemIsReadOnly");

/// How long after an ext4 error the mount table is watched for the remount read-only.
const READ_ONLY_WATCH_NS: u64 = 10_000_000_000;

#[derive(Debug)]
pub struct FsDetector;

pub static DETECTOR: FsDetector = FsDetector;

impl Detector for FsDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        Some(npd_common::counters::Detector::Fs)
    }

    fn name(&self) -> &'static str {
        "fs"
    }

    fn about(&self) -> &'static str {
        "ext4 errors and shutdowns, XFS shutdowns, block I/O errors -> ReadonlyFilesystem, \
         XfsShutdown, Ext4Error, IOError"
    }

    fn conditions(&self) -> &'static [ConditionType] {
        &[READONLY_FILESYSTEM, XFS_SHUTDOWN]
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[
            EXT4_ERROR,
            FILESYSTEM_SHUTDOWN,
            FILESYSTEM_READ_ONLY,
            IO_ERROR,
        ]
    }

    fn globals(&self, setup: &Setup<'_>) -> Vec<(&'static str, Vec<u8>)> {
        vec![config_global(CONFIG_GLOBAL, &fs_config(setup))]
    }

    fn attach(&self, ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        let (mut attached, mut absent) = attach_optional_tracepoints(
            ebpf,
            ctx,
            &[
                (EXT4_ERROR_PROGRAM, "ext4", "ext4_error"),
                (EXT4_SHUTDOWN_PROGRAM, "ext4", "ext4_shutdown"),
                (XFS_SHUTDOWN_PROGRAM, "xfs", "xfs_force_shutdown"),
            ],
        );
        // block_rq_error is the error path; block_rq_complete fires on every I/O, filtered to
        // errors in the kernel: only where the first is missing.
        let error_path = if ctx.fallback_hooks_only {
            Err("skipped: --fallback-hooks-only".to_owned())
        } else {
            attach_tracepoint(ebpf, ctx, BLOCK_RQ_ERROR_PROGRAM, "block", "block_rq_error")
        };
        match error_path {
            Ok(()) => attached.push("block:block_rq_error".to_owned()),
            Err(err) => {
                absent.push(format!("block:block_rq_error ({err})"));
                match attach_tracepoint(
                    ebpf,
                    ctx,
                    BLOCK_RQ_COMPLETE_PROGRAM,
                    "block",
                    "block_rq_complete",
                ) {
                    Ok(()) => {
                        attached.push("block:block_rq_complete".to_owned());
                        status.notes.push(
                            "block errors from block_rq_complete, which runs on every I/O \
                             (filtered to errors in the kernel)"
                                .to_owned(),
                        );
                    }
                    Err(err) => absent.push(format!("block:block_rq_complete ({err})")),
                }
            }
        }
        let result = if attached.is_empty() {
            Err("no filesystem or block tracepoint attached".to_owned())
        } else {
            Ok(())
        };
        status.tried(Source::Tracepoint, attached.join(", "), result);
        if !absent.is_empty() {
            status
                .notes
                .push(format!("not attached: {}", absent.join("; ")));
        }
        status.notes.push(
            "covered: ext4, XFS, any block device; not btrfs (no error tracepoint)".to_owned(),
        );
        let map = ebpf
            .take_map(RATE_LIMIT_MAP)
            .and_then(|map| BpfHashMap::try_from(map).ok());
        Attached {
            status,
            runtime: Box::new(FsRuntime {
                mountinfo: ctx.host.proc_root.join("1/mountinfo"),
                rate_limits: map,
                accounted: HashMap::new(),
                watch: BTreeMap::new(),
                read_only: BTreeMap::new(),
                shut_down: BTreeMap::new(),
                resynced: false,
                xfs_at_start: None,
            }),
        }
    }
}

/// A string field's offset and how it is stored.
fn string_field(format: &TracepointFormat, name: &str) -> (u32, u32) {
    match format.field(name) {
        Some(f) if f.declaration.starts_with("__data_loc") => (f.offset, string_kind::DATA_LOC),
        Some(f) if f.declaration.contains('[') => (f.offset, string_kind::ARRAY),
        Some(f) if f.size == 8 => (f.offset, string_kind::POINTER),
        _ => (UNKNOWN, string_kind::POINTER),
    }
}

/// One filesystem tracepoint's field offsets, from its format file.
fn event_offsets(format: &TracepointFormat, line: &str, location: &str) -> FsEventOffsets {
    let (location, location_kind) = string_field(format, location);
    FsEventOffsets {
        dev: format.optional("dev", 4),
        line: format.optional(line, 4),
        flags: format.optional("flags", 4),
        tag: format.optional("ptag", 4),
        location,
        location_kind,
    }
}

/// The tracepoints' field offsets on this kernel, from their format files; the rate limit.
fn fs_config(setup: &Setup<'_>) -> FsConfig {
    let mut config = FsConfig::new();
    config.rate_limit_ns = setup.options.fd_rate_limit.as_nanos() as u64;
    let tracefs = setup.tracefs;
    let offsets = &mut config.offsets;
    if let Ok(f) = tracefs.format("ext4", "ext4_error") {
        offsets.ext4_error = event_offsets(&f, "line", "function");
    }
    if let Ok(f) = tracefs.format("ext4", "ext4_shutdown") {
        offsets.ext4_shutdown = event_offsets(&f, "line", "function");
    }
    if let Ok(f) = tracefs.format("xfs", "xfs_force_shutdown") {
        offsets.xfs_shutdown = event_offsets(&f, "line_num", "fname");
    }
    let block = tracefs
        .format("block", "block_rq_error")
        .or_else(|_| tracefs.format("block", "block_rq_complete"));
    if let Ok(f) = block {
        offsets.block = BlockEventOffsets {
            dev: f.optional("dev", 4),
            sector: f.optional("sector", 8),
            nr_sector: f.optional("nr_sector", 4),
            error: f.optional("error", 4),
            rwbs: f.field("rwbs").map_or(UNKNOWN, |field| field.offset),
        };
        if offsets.block.error == UNKNOWN {
            // Before 4.13 the field was called `errors`.
            offsets.block.error = f.optional("errors", 4);
        }
    }
    config
}

/// `/dev/loop3 (7:3) mounted at /var/lib/kubelet`: the device and where it is mounted.
fn describe_device(major: u32, minor: u32, mounts: &[Mount]) -> String {
    let name = mounts
        .first()
        .map_or_else(|| "device".to_owned(), |m| m.source.clone());
    if mounts.is_empty() {
        return format!("{name} ({major}:{minor}, not mounted)");
    }
    let points: Vec<&str> = mounts.iter().map(|m| m.mount_point.as_str()).collect();
    format!("{name} ({major}:{minor}) mounted at {}", points.join(", "))
}

/// What runs on a mount: the kubelet's directory, a pod's volume, the container runtime.
fn what_lives_at(mount_point: &str) -> Option<String> {
    if let Some(rest) = mount_point.strip_prefix("/var/lib/kubelet/pods/") {
        let uid = rest.split('/').next()?;
        return Some(format!("a volume of pod uid {uid}"));
    }
    for (prefix, what) in [
        ("/var/lib/kubelet", "the kubelet's directory"),
        ("/var/lib/containerd", "containerd's root"),
        ("/var/lib/docker", "docker's root"),
        ("/var/lib/containers", "CRI-O's storage"),
    ] {
        if mount_point.starts_with(prefix) {
            return Some(what.to_owned());
        }
    }
    None
}

/// The uids of the pods with a volume on these mounts.
fn pod_uids(mounts: &[Mount]) -> Vec<String> {
    let mut uids: Vec<String> = mounts
        .iter()
        .filter_map(|m| {
            let rest = m.mount_point.strip_prefix("/var/lib/kubelet/pods/")?;
            Some(rest.split('/').next()?.to_owned())
        })
        .filter(|uid| !uid.is_empty())
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids
}

fn affected(mounts: &[Mount]) -> String {
    let what: Vec<String> = mounts
        .iter()
        .filter_map(|m| what_lives_at(&m.mount_point))
        .collect();
    if what.is_empty() {
        String::new()
    } else {
        format!("; holds {}", what.join(", "))
    }
}

/// A filesystem error or shutdown.
#[derive(Clone, Debug, Serialize)]
pub struct FsError {
    /// `ext4_error`, `ext4_shutdown` or `xfs_shutdown`.
    pub what: &'static str,
    pub major: u32,
    pub minor: u32,
    /// The kernel function (ext4) or source file (xfs) that raised it.
    pub location: String,
    pub line: u32,
    pub flags: u32,
    pub mounts: Vec<Mount>,
    /// Errors of this device folded into this record by the kernel's rate limit.
    pub suppressed: u64,
    pub failures_total: u64,
}

finding!(FsError, "fs_error", {
    fn affected_pod_uids(&self) -> Vec<String> {
        pod_uids(&self.mounts)
    }

    fn summary(&self) -> String {
        let at = if self.location.is_empty() {
            String::new()
        } else {
            format!(" in {}:{}", self.location, self.line)
        };
        let more = if self.suppressed > 0 {
            format!(" (+{} suppressed)", self.suppressed)
        } else {
            String::new()
        };
        format!(
            "{}{at} on {}{more}",
            self.what,
            describe_device(self.major, self.minor, &self.mounts)
        )
    }

    fn assess(&self, _event: &Event) -> Assessment {
        let device = describe_device(self.major, self.minor, &self.mounts);
        let key = format!("{}:{}", self.major, self.minor);
        let count = self.suppressed + 1;
        let holds = affected(&self.mounts);
        match self.what {
            "xfs_shutdown" => {
                let message = format!(
                    "XFS on {device} shut down ({}:{}); every write fails until it is \
                     unmounted and repaired{holds}",
                    self.location, self.line
                );
                Assessment::report(report(FILESYSTEM_SHUTDOWN, &key, &message, count))
                    .with_condition(XFS_SHUTDOWN, Change::Raise { key, message })
            }
            "ext4_shutdown" => {
                let message = format!(
                    "ext4 on {device} was shut down (flags {:#x}){holds}",
                    self.flags
                );
                Assessment::report(report(FILESYSTEM_SHUTDOWN, &key, &message, count))
            }
            _ => {
                let message = format!(
                    "ext4 error on {device} in {}:{}{holds}",
                    self.location, self.line
                );
                Assessment::report(report(EXT4_ERROR, &key, &message, count))
            }
        }
    }
});

fn report(reason: EventReason, key: &str, message: &str, count: u64) -> Report {
    Report {
        reason,
        detail_key: key.to_owned(),
        message: message.to_owned(),
        count,
        since_boot: false,
    }
}

/// A failed block request (or the failures of a device a sweep accounts for).
#[derive(Clone, Debug, Serialize)]
pub struct BlockIoError {
    pub major: u32,
    pub minor: u32,
    /// The errno name (`EIO`, `ENOSPC`, ...), or its number.
    pub error: String,
    pub sector: u64,
    pub nr_sector: u32,
    pub rwbs: String,
    pub mounts: Vec<Mount>,
    pub suppressed: u64,
    pub failures_total: u64,
    /// Failures the kernel folded after a storm's last record, found by the agent's sweep.
    pub flushed: bool,
}

finding!(BlockIoError, "block_io_error", {
    fn affected_pod_uids(&self) -> Vec<String> {
        pod_uids(&self.mounts)
    }

    fn summary(&self) -> String {
        let device = describe_device(self.major, self.minor, &self.mounts);
        if self.flushed {
            format!("{} more I/O errors on {device}", self.suppressed)
        } else {
            format!(
                "I/O error {} on {device}: {} sector {} (+{} sectors){}",
                self.error,
                self.rwbs,
                self.sector,
                self.nr_sector,
                if self.suppressed > 0 {
                    format!(", +{} suppressed", self.suppressed)
                } else {
                    String::new()
                }
            )
        }
    }

    fn assess(&self, _event: &Event) -> Assessment {
        let count = if self.flushed {
            self.suppressed
        } else {
            self.suppressed + 1
        };
        let message = format!("{}{}", self.summary(), affected(&self.mounts));
        Assessment::report(report(
            IO_ERROR,
            &format!("{}:{}", self.major, self.minor),
            &message,
            count,
        ))
    }
});

/// The mount table says a device's filesystem is read-only after an error, or no longer.
#[derive(Clone, Debug, Serialize)]
pub struct FsReadOnly {
    pub major: u32,
    pub minor: u32,
    pub mounts: Vec<Mount>,
    /// `read_only`: made read-only after an error; `mounted_read_write_again`; `unmounted`;
    /// `resync`: every read-only-after-error device at start; `xfs_unmounted`: a shut-down
    /// XFS is gone; `xfs_resync`: every XFS mounted at start is gone.
    pub state: &'static str,
    /// For `resync`: (device, message) of each.
    #[serde(skip)]
    pub current: Vec<(String, String)>,
}

finding!(FsReadOnly, "fs_read_only", {
    fn affected_pod_uids(&self) -> Vec<String> {
        pod_uids(&self.mounts)
    }

    fn summary(&self) -> String {
        format!(
            "{} {}",
            describe_device(self.major, self.minor, &self.mounts),
            self.state
        )
    }

    fn assess(&self, _event: &Event) -> Assessment {
        let key = format!("{}:{}", self.major, self.minor);
        let device = describe_device(self.major, self.minor, &self.mounts);
        match self.state {
            "read_only" => {
                let message = format!(
                    "{device} was made read-only by the kernel after an error{}",
                    affected(&self.mounts)
                );
                Assessment::report(report(FILESYSTEM_READ_ONLY, &key, &message, 1))
                    .with_condition(READONLY_FILESYSTEM, Change::Raise { key, message })
            }
            "resync" => Assessment::default().with_condition(
                READONLY_FILESYSTEM,
                Change::Resync {
                    current: self.current.clone(),
                },
            ),
            "xfs_resync" => Assessment::default().with_condition(
                XFS_SHUTDOWN,
                Change::Resync {
                    current: self.current.clone(),
                },
            ),
            "xfs_unmounted" => Assessment::default().with_condition(
                XFS_SHUTDOWN,
                Change::Clear {
                    message: format!("the shut-down XFS on {key} was unmounted"),
                    key,
                },
            ),
            state => Assessment::default().with_condition(
                READONLY_FILESYSTEM,
                Change::Clear {
                    message: format!("{device}: {}", state.replace('_', " ")),
                    key,
                },
            ),
        }
    }
});

/// Records, the mount-table confirmation and clearing, and the sweep of the rate-limit map.
#[derive(Debug)]
struct FsRuntime {
    mountinfo: PathBuf,
    rate_limits: Option<BpfHashMap<MapData, FsRateKey, FsRateState>>,
    /// (key, first_failure_ns) -> failures accounted for.
    accounted: HashMap<(u32, u16, u16, u64), u64>,
    /// Devices with a recent ext4 error, watched for the remount read-only: until when.
    watch: BTreeMap<(u32, u32), u64>,
    /// Devices npd raised ReadonlyFilesystem for.
    read_only: BTreeMap<(u32, u32), ()>,
    /// Devices npd raised XfsShutdown for.
    shut_down: BTreeMap<(u32, u32), ()>,
    resynced: bool,
    /// The XFS devices mounted when the agent started, until all of them are gone: a
    /// restored XfsShutdown (the kernel shows no mark of a shut-down XFS) clears then.
    xfs_at_start: Option<Vec<(u32, u32)>>,
}

impl FsRuntime {
    fn mountinfo(&self) -> String {
        std::fs::read_to_string(&self.mountinfo).unwrap_or_default()
    }

    /// Failures a record brings that were not accounted yet (itself included).
    fn account_record(&mut self, kind: RecordKind, dev: u32, source: u16, tally: &FsTally) -> u64 {
        let accounted = self
            .accounted
            .entry((dev, kind as u16, source, tally.first_failure_ns))
            .or_default();
        let new = tally.failures_total.saturating_sub(*accounted);
        *accounted = (*accounted).max(tally.failures_total);
        new
    }

    /// The current set of problems of one condition (`resync`: read-only after an error;
    /// `xfs_resync`: XFS shut down).
    fn resync_event(now_ns: u64, state: &'static str, current: Vec<(String, String)>) -> Event {
        let mut event = Self::state_event(now_ns, (0, 0), Vec::new(), state);
        if let Some(detail) = event.detail_as_mut::<FsReadOnly>() {
            detail.current = current;
        }
        event
    }

    fn state_event(now_ns: u64, dev: (u32, u32), mounts: Vec<Mount>, state: &'static str) -> Event {
        Event::new(
            now_ns,
            Task::default(),
            Source::Sweep,
            FsReadOnly {
                major: dev.0,
                minor: dev.1,
                mounts,
                state,
                current: Vec::new(),
            },
        )
    }
}

fn errno_name(error: i32) -> String {
    match -error {
        libc::EIO => "EIO".to_owned(),
        libc::ENOSPC => "ENOSPC".to_owned(),
        libc::ETIMEDOUT => "ETIMEDOUT".to_owned(),
        libc::ENOLINK => "ENOLINK".to_owned(),
        libc::EREMOTEIO => "EREMOTEIO".to_owned(),
        libc::EBADE => "EBADE".to_owned(),
        libc::ENODATA => "ENODATA".to_owned(),
        libc::EILSEQ => "EILSEQ".to_owned(),
        libc::ENOMEM => "ENOMEM".to_owned(),
        libc::EBUSY => "EBUSY".to_owned(),
        libc::EAGAIN => "EAGAIN".to_owned(),
        libc::EOPNOTSUPP => "EOPNOTSUPP".to_owned(),
        _ => error.to_string(),
    }
}

impl Runtime for FsRuntime {
    fn decode(
        &mut self,
        kind: RecordKind,
        data: &[u8],
        _symbolizer: &mut Symbolizer,
    ) -> Result<Event, DecodeError> {
        let hook = Source::from_hook(
            npd_common::Hook::from_u8(data[3]).unwrap_or(npd_common::Hook::Tracepoint),
        );
        if kind == RecordKind::BlockIoError {
            let r: abi::BlockIoError = payload(kind, abi::BLOCK_IO_ERROR_VERSION, data)?;
            let (major, minor) = (dev_major(r.dev), dev_minor(r.dev));
            let new = self.account_record(kind, r.dev, r.source, &r.tally);
            let detail = BlockIoError {
                major,
                minor,
                error: errno_name(r.error),
                sector: r.sector,
                nr_sector: r.nr_sector,
                rwbs: comm_string(&r.rwbs),
                mounts: mounts_of(&self.mountinfo(), major, minor),
                suppressed: new.saturating_sub(1),
                failures_total: r.tally.failures_total,
                flushed: false,
            };
            return Ok(Event::new(
                r.header.ts_ns,
                Task::from_header(&r.header),
                hook,
                detail,
            ));
        }
        let r: abi::FsError = payload(kind, abi::FS_ERROR_VERSION, data)?;
        let (major, minor) = (dev_major(r.dev), dev_minor(r.dev));
        let new = self.account_record(kind, r.dev, r.source, &r.tally);
        let what = match r.source {
            source::EXT4_SHUTDOWN => "ext4_shutdown",
            source::XFS_SHUTDOWN => "xfs_shutdown",
            _ => "ext4_error",
        };
        match r.source {
            source::XFS_SHUTDOWN => {
                self.shut_down.insert((major, minor), ());
            }
            source::EXT4_ERROR => {
                self.watch
                    .insert((major, minor), r.header.ts_ns + READ_ONLY_WATCH_NS);
            }
            _ => {}
        }
        let detail = FsError {
            what,
            major,
            minor,
            location: comm_string(&r.location),
            line: r.line,
            flags: r.flags,
            mounts: mounts_of(&self.mountinfo(), major, minor),
            suppressed: new.saturating_sub(1),
            failures_total: r.tally.failures_total,
        };
        Ok(Event::new(
            r.header.ts_ns,
            Task::from_header(&r.header),
            hook,
            detail,
        ))
    }

    fn poll(&mut self, now_ns: u64) -> Vec<Event> {
        let mut events = Vec::new();
        // The mount table is read only while there is something to confirm or to clear.
        let busy = !self.resynced
            || self.xfs_at_start.is_some()
            || !self.watch.is_empty()
            || !self.read_only.is_empty()
            || !self.shut_down.is_empty();
        let table = if busy {
            self.mountinfo()
        } else {
            String::new()
        };
        if !self.resynced {
            // At start: every filesystem the kernel marked emergency_ro after an error is
            // current; a ReadonlyFilesystem restored from the Node clears if there is none.
            self.resynced = true;
            let mut current = Vec::new();
            for (major, minor) in read_only_after_error(&table) {
                let mounts = mounts_of(&table, major, minor);
                self.read_only.insert((major, minor), ());
                current.push((
                    format!("{major}:{minor}"),
                    format!(
                        "{} is read-only after an error (found at start){}",
                        describe_device(major, minor, &mounts),
                        affected(&mounts)
                    ),
                ));
            }
            events.push(Self::resync_event(now_ns, "resync", current));
            self.xfs_at_start = Some(devices_of_type(&table, "xfs"));
        }
        if let Some(at_start) = &self.xfs_at_start
            && at_start
                .iter()
                .all(|dev| mounts_of(&table, dev.0, dev.1).is_empty())
        {
            // Every XFS that could have been the shut-down one is gone: XfsShutdown is what
            // npd saw shut down since it started.
            self.xfs_at_start = None;
            let current = self
                .shut_down
                .keys()
                .map(|(major, minor)| {
                    (
                        format!("{major}:{minor}"),
                        format!("XFS on {major}:{minor} shut down"),
                    )
                })
                .collect();
            events.push(Self::resync_event(now_ns, "xfs_resync", current));
        }
        let watched: Vec<((u32, u32), u64)> = self
            .watch
            .iter()
            .map(|(dev, until)| (*dev, *until))
            .collect();
        for (dev, until) in watched {
            let mounts = mounts_of(&table, dev.0, dev.1);
            if mounts.iter().any(|m| m.read_only) {
                self.watch.remove(&dev);
                if self.read_only.insert(dev, ()).is_none() {
                    events.push(Self::state_event(now_ns, dev, mounts, "read_only"));
                }
            } else if now_ns > until {
                self.watch.remove(&dev);
            }
        }
        let raised: Vec<(u32, u32)> = self.read_only.keys().copied().collect();
        for dev in raised {
            let mounts = mounts_of(&table, dev.0, dev.1);
            let state = if mounts.is_empty() {
                "unmounted"
            } else if mounts.iter().all(|m| !m.read_only) {
                "mounted_read_write_again"
            } else {
                continue;
            };
            self.read_only.remove(&dev);
            events.push(Self::state_event(now_ns, dev, mounts, state));
        }
        let shut: Vec<(u32, u32)> = self.shut_down.keys().copied().collect();
        for dev in shut {
            if mounts_of(&table, dev.0, dev.1).is_empty() {
                self.shut_down.remove(&dev);
                events.push(Self::state_event(now_ns, dev, Vec::new(), "xfs_unmounted"));
            }
        }
        events.extend(self.sweep(now_ns));
        events
    }
}

impl FsRuntime {
    /// Block I/O errors the kernel folded after a storm's last record.
    fn sweep(&mut self, now_ns: u64) -> Vec<Event> {
        let Some(map) = self.rate_limits.as_ref() else {
            return Vec::new();
        };
        let entries: Vec<(FsRateKey, FsRateState)> = map.iter().filter_map(Result::ok).collect();
        let mut events = Vec::new();
        for (key, state) in entries {
            if key.kind != RecordKind::BlockIoError as u16
                || now_ns.saturating_sub(state.last_record_ns) < 1_000_000_000
            {
                continue;
            }
            let entry = self
                .accounted
                .entry((key.dev, key.kind, key.source, state.first_failure_ns))
                .or_insert(state.reported);
            if state.failures <= *entry {
                continue;
            }
            let new = state.failures - *entry;
            *entry = state.failures;
            let (major, minor) = (dev_major(key.dev), dev_minor(key.dev));
            events.push(Event::new(
                now_ns,
                Task::default(),
                Source::Sweep,
                BlockIoError {
                    major,
                    minor,
                    error: errno_name(state.last_error),
                    sector: 0,
                    nr_sector: 0,
                    rwbs: String::new(),
                    mounts: mounts_of(&self.mountinfo(), major, minor),
                    suppressed: new,
                    failures_total: state.failures,
                    flushed: true,
                },
            ));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MOUNTINFO: &str = "\
40 24 7:3 / /var/lib/kubelet/pods/1234/volumes/kubernetes.io~empty-dir/data rw,relatime - ext4 /dev/loop3 rw,emergency_ro,errors=remount-ro
41 24 7:4 / /mnt/x\\040y rw,relatime - xfs /dev/loop4 rw,attr2
";

    #[test]
    fn what_lives_on_a_mount() {
        assert_eq!(
            affected(&mounts_of(MOUNTINFO, 7, 3)),
            "; holds a volume of pod uid 1234"
        );
        assert_eq!(affected(&mounts_of(MOUNTINFO, 7, 4)), "");
        assert_eq!(pod_uids(&mounts_of(MOUNTINFO, 7, 3)), ["1234"]);
        assert!(pod_uids(&mounts_of(MOUNTINFO, 7, 4)).is_empty());
    }

    fn event(detail: impl crate::event::Finding) -> Event {
        Event::new(1, Task::default(), Source::Tracepoint, detail)
    }

    #[test]
    fn what_each_finding_means() {
        let mounts = mounts_of(MOUNTINFO, 7, 4);
        let xfs = FsError {
            what: "xfs_shutdown",
            major: 7,
            minor: 4,
            location: "fs/xfs/xfs_fsops.c".into(),
            line: 471,
            flags: 2,
            mounts: mounts.clone(),
            suppressed: 0,
            failures_total: 1,
        };
        let a = event(xfs).assess();
        assert_eq!(a.report.as_ref().unwrap().reason, FILESYSTEM_SHUTDOWN);
        assert!(matches!(
            a.condition,
            Some((c, Change::Raise { ref key, .. })) if c == XFS_SHUTDOWN && key == "7:4"
        ));
        let ro = event(FsReadOnly {
            major: 7,
            minor: 3,
            mounts: mounts_of(MOUNTINFO, 7, 3),
            state: "read_only",
            current: Vec::new(),
        })
        .assess();
        assert_eq!(ro.report.unwrap().reason, FILESYSTEM_READ_ONLY);
        assert!(
            matches!(ro.condition, Some((c, Change::Raise { .. })) if c == READONLY_FILESYSTEM)
        );
        let block = event(BlockIoError {
            major: 7,
            minor: 4,
            error: "EIO".into(),
            sector: 8,
            nr_sector: 8,
            rwbs: "W".into(),
            mounts,
            suppressed: 99,
            failures_total: 100,
            flushed: false,
        })
        .assess();
        let report = block.report.unwrap();
        assert_eq!((report.reason, report.count), (IO_ERROR, 100));
        assert!(block.condition.is_none());
    }

    fn runtime(mountinfo: &Path) -> FsRuntime {
        FsRuntime {
            mountinfo: mountinfo.to_owned(),
            rate_limits: None,
            accounted: HashMap::new(),
            watch: BTreeMap::new(),
            read_only: BTreeMap::new(),
            shut_down: BTreeMap::new(),
            resynced: false,
            xfs_at_start: None,
        }
    }

    fn states(events: &[Event]) -> Vec<(&'static str, usize)> {
        events
            .iter()
            .filter_map(|e| e.detail_as::<FsReadOnly>())
            .map(|d| (d.state, d.current.len()))
            .collect()
    }

    #[test]
    fn at_start_the_mount_table_resyncs_both_conditions() {
        let dir = std::env::temp_dir().join(format!("npd-fs-resync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = dir.join("mountinfo");
        std::fs::write(&table, MOUNTINFO).unwrap();
        let mut fs = runtime(&table);
        // loop3 is emergency_ro: current; an XFS (loop4) is mounted: XfsShutdown waits.
        assert_eq!(states(&fs.poll(1)), [("resync", 1)]);
        assert!(states(&fs.poll(2)).is_empty());
        // The XFS and the read-only ext4 are unmounted: both clear.
        std::fs::write(&table, "").unwrap();
        let mut later = states(&fs.poll(3));
        later.sort_unstable();
        assert_eq!(later, [("unmounted", 0), ("xfs_resync", 0)]);
        // No XFS at start: XfsShutdown resyncs (clears) at once.
        let mut fresh = runtime(&table);
        let mut first = states(&fresh.poll(1));
        first.sort_unstable();
        assert_eq!(first, [("resync", 0), ("xfs_resync", 0)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errnos_by_name() {
        assert_eq!(errno_name(-libc::EIO), "EIO");
        assert_eq!(errno_name(-9999), "-9999");
    }
}
