//! Filesystems and disks, from classic tracepoints at field offsets read from their format
//! files (`FS_CONFIG`, written by the agent): no struct offset is compiled in.
//!
//! - `ext4:ext4_error`, `ext4:ext4_shutdown`, `xfs:xfs_force_shutdown` -> `FsError`;
//! - `block:block_rq_error` -> `BlockIoError`; where the kernel lacks it,
//!   `block:block_rq_complete`, which fires on every I/O, so its first act is to return when
//!   the request did not fail.
//!
//! Every failure goes through `ratelimit::per_key`, keyed by device, record kind and source:
//! the first at once, then at most one record per `FsConfig::rate_limit_ns`, each carrying
//! what was folded into it; the `FS_RATE_LIMIT` entries let the agent account for the rest.
//! btrfs is not covered: see `npd_common::fs`.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use npd_common::{
    Hook, RecordKind,
    config::string_kind,
    counters::Detector,
    fs::{
        BLOCK_IO_ERROR_VERSION, BlockIoError, FS_ERROR_VERSION, FS_RATE_LIMIT_ENTRIES, FsConfig,
        FsError, FsEventOffsets, FsRateKey, FsRateState, FsTally, source,
    },
};

use crate::{
    config::read_volatile,
    emit::{self, Record, Subject},
    ratelimit::{self, Tally},
    tracepoint::{field, hot_field, string},
};

emit::records!(FsError, BlockIoError);
ratelimit::windows!(FsRateState);

/// Filled in by the agent before loading (see `npd_common::fs::FsConfig`).
#[unsafe(no_mangle)]
static FS_CONFIG: FsConfig = FsConfig::new();

/// Reads one field of [`FS_CONFIG`] (volatile: see `config::config!`).
macro_rules! fs_config {
    ($($field:ident).+) => {
        $crate::config::read_volatile(&raw const FS_CONFIG.$($field).+)
    };
}

#[map]
static FS_RATE_LIMIT: LruHashMap<FsRateKey, FsRateState> =
    LruHashMap::with_max_entries(FS_RATE_LIMIT_ENTRIES, 0);

/// Where `error` sits in `block_rq_complete` records on every kernel seen (4.19 to 6.18): the
/// format file decides, this only lets the per-I/O check use a direct load.
const USUAL_BLOCK_ERROR_OFFSET: u32 = 28;

impl From<Tally> for FsTally {
    fn from(tally: Tally) -> Self {
        Self {
            suppressed: tally.suppressed,
            failures_total: tally.failures_total,
            first_failure_ns: tally.first_failure_ns,
        }
    }
}

#[tracepoint(category = "ext4", name = "ext4_error")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn fs_ext4_error(ctx: TracePointContext) -> u32 {
    fs_event(&ctx, source::EXT4_ERROR, &FS_CONFIG.offsets.ext4_error);
    0
}

#[tracepoint(category = "ext4", name = "ext4_shutdown")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn fs_ext4_shutdown(ctx: TracePointContext) -> u32 {
    fs_event(
        &ctx,
        source::EXT4_SHUTDOWN,
        &FS_CONFIG.offsets.ext4_shutdown,
    );
    0
}

#[tracepoint(category = "xfs", name = "xfs_force_shutdown")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn fs_xfs_shutdown(ctx: TracePointContext) -> u32 {
    fs_event(&ctx, source::XFS_SHUTDOWN, &FS_CONFIG.offsets.xfs_shutdown);
    0
}

/// A filesystem error or shutdown, its fields at `offsets` (the event's part of
/// `FS_CONFIG`).
#[inline(always)]
fn fs_event(ctx: &TracePointContext, source: u16, offsets: &FsEventOffsets) {
    let Some(dev) = field::<u32>(ctx, read_volatile(&offsets.dev)) else {
        return;
    };
    let line = field::<u32>(ctx, read_volatile(&offsets.line)).unwrap_or(0);
    report::<FsError>(
        RecordKind::FsError,
        FS_ERROR_VERSION,
        FsRateKey {
            dev,
            kind: RecordKind::FsError as u16,
            source,
        },
        line as i32,
        Subject::current(),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record, tally| unsafe {
            (*record).dev = dev;
            (*record).source = source;
            (*record)._pad = 0;
            (*record).line = line;
            (*record).flags = field::<u32>(ctx, read_volatile(&offsets.flags)).unwrap_or(0);
            (*record).tag = field::<u32>(ctx, read_volatile(&offsets.tag)).unwrap_or(0);
            (*record)._pad2 = 0;
            string(
                ctx,
                read_volatile(&offsets.location),
                read_volatile(&offsets.location_kind),
                &mut (*record).location,
            );
            (*record).tally = tally;
        },
    );
}

#[tracepoint(category = "block", name = "block_rq_error")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn fs_block_rq_error(ctx: TracePointContext) -> u32 {
    block_completion(&ctx, source::BLOCK_RQ_ERROR);
    0
}

#[tracepoint(category = "block", name = "block_rq_complete")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn fs_block_rq_complete(ctx: TracePointContext) -> u32 {
    block_completion(&ctx, source::BLOCK_RQ_COMPLETE);
    0
}

/// A block request completed: nothing to do unless it failed (checked first: on
/// `block_rq_complete` this runs for every I/O of the node).
#[inline(always)]
fn block_completion(ctx: &TracePointContext, source: u16) {
    let Some(error) =
        hot_field::<i32, USUAL_BLOCK_ERROR_OFFSET>(ctx, fs_config!(offsets.block.error))
    else {
        return;
    };
    if error == 0 {
        return;
    }
    let Some(dev) = field::<u32>(ctx, fs_config!(offsets.block.dev)) else {
        return;
    };
    report::<BlockIoError>(
        RecordKind::BlockIoError,
        BLOCK_IO_ERROR_VERSION,
        FsRateKey {
            dev,
            kind: RecordKind::BlockIoError as u16,
            source,
        },
        error,
        Subject::none(),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record, tally| unsafe {
            (*record).dev = dev;
            (*record).error = error;
            (*record).sector = field::<u64>(ctx, fs_config!(offsets.block.sector)).unwrap_or(0);
            (*record).nr_sector =
                field::<u32>(ctx, fs_config!(offsets.block.nr_sector)).unwrap_or(0);
            (*record).source = source;
            (*record)._pad = 0;
            string(
                ctx,
                fs_config!(offsets.block.rwbs),
                string_kind::ARRAY,
                &mut (*record).rwbs,
            );
            (*record).tally = tally;
        },
    );
}

/// Counts a failure of `key` and, when its window allows (`ratelimit::per_key`), sends a
/// record of `kind`, which `fill` completes with the tally of what it stands for.
/// `last_error` is the sweep's hint (a block error or a source line).
#[inline(always)]
fn report<T: Record>(
    kind: RecordKind,
    version: u8,
    key: FsRateKey,
    last_error: i32,
    subject: Subject,
    fill: impl FnOnce(*mut T, FsTally),
) {
    ratelimit::per_key(
        Detector::Fs,
        &FS_RATE_LIMIT,
        &key,
        fs_config!(rate_limit_ns),
        || FsRateState {
            first_failure_ns: 0,
            last_record_ns: 0,
            failures: 0,
            reported: 0,
            last_error,
            _pad: 0,
        },
        // SAFETY: a pointer into the map value (see `ratelimit::per_key`).
        |state| unsafe { (*state).last_error = last_error },
        |tally| {
            emit::record::<T>(
                Detector::Fs,
                kind,
                version,
                Hook::Tracepoint,
                subject,
                |record| fill(record, tally.into()),
            )
        },
    );
}
