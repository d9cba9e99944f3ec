//! A block I/O error storm: direct reads of a disk whose every read fails with EIO in the
//! block layer (a loop device over a shut-down XFS), as fast as one thread can, without npd,
//! with the daemon (its CPU and counters) and with `event-dump` (every failure accounted from
//! the records). The filesystem detector's block hook runs in the completion path, so this is
//! the storm that would cost it most: thousands of errors a second from one device.

use std::{
    fs::OpenOptions,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use npd_tests::{
    agent::{AgentProcess, EventDump},
    loopfs::{FailingDisk, block_failures},
};
use serde::Serialize;
use serde_json::Value;

use crate::{metrics::Scrape, procfs};

/// Reads of the failing disk for `seconds`: (failed reads, their rate per second).
fn read_storm(device: &str, seconds: f64) -> anyhow::Result<(u64, f64)> {
    let disk = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .with_context(|| format!("opening {device} with O_DIRECT"))?;
    // O_DIRECT needs a buffer aligned to the logical block size.
    let mut buffer = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; the result is checked.
    if unsafe { libc::posix_memalign(&mut buffer, 4096, 4096) } != 0 {
        bail!("posix_memalign failed");
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let (mut failed, mut i) = (0_u64, 0_i64);
    while Instant::now() < until {
        // Different sectors, so nothing is served from a cache.
        let offset = (i % 4096) * 4096;
        i += 1;
        // SAFETY: `buffer` holds 4096 bytes; the fd is open.
        let read = unsafe { libc::pread(disk.as_raw_fd(), buffer, 4096, offset) };
        if read < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EIO) {
                // SAFETY: allocated above.
                unsafe { libc::free(buffer) };
                bail!("a read failed with {err}, not EIO");
            }
            failed += 1;
        }
    }
    // SAFETY: allocated above, freed once.
    unsafe { libc::free(buffer) };
    if failed == 0 {
        bail!("no read of {device} failed: the disk is not failing");
    }
    Ok((failed, failed as f64 / started.elapsed().as_secs_f64()))
}

/// What the daemon paid and counted during the storm.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct DaemonDuringBlockStorm {
    pub(crate) failures: u64,
    pub(crate) failures_per_second: f64,
    pub(crate) wall_seconds: f64,
    pub(crate) cpu: procfs::CpuTime,
    /// Deltas of the fs detector's counters (its hook runs on every failed request).
    pub(crate) hook_hits: f64,
    pub(crate) records: f64,
    pub(crate) rate_limited: f64,
    pub(crate) ring_buffer_drops: f64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct BlockStormResult {
    pub(crate) seconds: f64,
    /// Failed reads per second without npd, before and after the runs with it.
    pub(crate) without_npd: [f64; 2],
    pub(crate) daemon: DaemonDuringBlockStorm,
    /// From event-dump: failed reads, and the failures its block_io_error records stand for.
    pub(crate) failures: u64,
    pub(crate) accounted: u64,
    pub(crate) records: u64,
}

impl BlockStormResult {
    pub(crate) fn rate_change(&self) -> f64 {
        self.daemon.failures_per_second / ((self.without_npd[0] + self.without_npd[1]) / 2.0) - 1.0
    }
}

fn fs_counters(scrape: &Scrape) -> [f64; 4] {
    [
        scrape.value("npd_hook_hits_total", &["detector=\"fs\""]),
        scrape.value("npd_records_total", &["kind=\"block_io_error\""]),
        scrape.value("npd_rate_limited_total", &["detector=\"fs\""]),
        scrape.value("npd_ring_buffer_drops_total", &[]),
    ]
}

pub(crate) fn run(seconds: f64) -> anyhow::Result<BlockStormResult> {
    eprintln!("npd-bench: block I/O error storm ({seconds} s each run)");
    let disk = FailingDisk::create().context("a failing disk (loop device on a shut-down XFS)")?;
    let device = disk.inner.0.clone();
    let (major, minor) = disk.dev();
    let before = read_storm(&device, seconds)?.1;

    let mut agent = AgentProcess::start(&["--standalone", "--detectors", "fs"])?;
    agent.wait_ready(Duration::from_secs(60))?;
    let pid = agent.pid();
    let counters_before = fs_counters(&Scrape::take(&agent)?);
    let cpu_before = procfs::CpuTime::read(pid)?;
    let started = Instant::now();
    let (failures, failures_per_second) = read_storm(&device, seconds)?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu = procfs::CpuTime::read(pid)?.since(cpu_before);
    // The sweep reports a storm's tail within a few seconds.
    std::thread::sleep(Duration::from_secs(3));
    let counters_after = fs_counters(&Scrape::take(&agent)?);
    agent.stop()?;
    let daemon = DaemonDuringBlockStorm {
        failures,
        failures_per_second,
        wall_seconds,
        cpu,
        hook_hits: counters_after[0] - counters_before[0],
        records: counters_after[1] - counters_before[1],
        rate_limited: counters_after[2] - counters_before[2],
        ring_buffer_drops: counters_after[3] - counters_before[3],
    };
    let after = read_storm(&device, seconds)?.1;

    let mut dump = EventDump::start(&["--detectors", "fs"])?;
    let (failed, _) = read_storm(&device, seconds)?;
    let on_disk = |seen: &[Value]| -> Vec<Value> {
        seen.iter()
            .filter(|e| e["kind"] == "block_io_error" && e["major"] == major && e["minor"] == minor)
            .cloned()
            .collect()
    };
    dump.collect_until(Duration::from_secs(10), |seen| {
        on_disk(seen).iter().map(block_failures).sum::<u64>() >= failed
    });
    let records = on_disk(&dump.seen);
    drop(dump);
    disk.unmount()?;
    Ok(BlockStormResult {
        seconds,
        without_npd: [before, after],
        daemon,
        failures: failed,
        accounted: records.iter().map(block_failures).sum(),
        records: records.len() as u64,
    })
}
