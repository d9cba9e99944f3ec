//! The live event stream: the kernel ring buffer, decoded and enriched, plus what the agent
//! finds by itself on a timer (a rate-limited storm's tail, hung tasks recovering, the
//! kernel's problem counters where fentry is refused).

use std::{io, path::Path, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::MissedTickBehavior,
};

use crate::{
    clock,
    decode::{self, DecodeStats, Record},
    detectors::{
        fd::FdAccounting, hung_task::HungTaskTracker, oom::OomDecoder, oops, oops::CounterWatcher,
    },
    event::Event,
    kernel::{CgroupLayout, kallsyms::Symbolizer},
    probes::{KernelCounters, Probes},
};

/// How often the agent looks for what no record brings.
const TICK: Duration = Duration::from_secs(1);

pub struct EventSource {
    ring: AsyncFd<RingBuf<MapData>>,
    probes: ProbesRest,
    pub decoder: Decoder,
    tick: tokio::time::Interval,
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSource")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

/// Turns ring-buffer records into events, with the per-detector state that needs.
#[derive(Debug)]
pub struct Decoder {
    pub fd_accounting: FdAccounting,
    pub hung_tasks: HungTaskTracker,
    oom: OomDecoder,
    /// `None` when the oops detector is off.
    counters: Option<CounterWatcher>,
    symbolizer: Symbolizer,
    pub stats: DecodeStats,
    /// Records read from the ring buffer, valid or not.
    pub records_read: u64,
}

impl Decoder {
    pub fn new(
        layout: CgroupLayout,
        host_root: &Path,
        oops_coverage: Option<oops::FentryCoverage>,
    ) -> Self {
        let proc_root = host_root.join("proc");
        let cgroup_root = layout.attribution_root(host_root);
        Self {
            fd_accounting: FdAccounting::default(),
            hung_tasks: HungTaskTracker::new(&proc_root, layout, &cgroup_root),
            oom: OomDecoder::new(&proc_root, layout, &cgroup_root),
            counters: oops_coverage.map(|coverage| CounterWatcher::new(Path::new("/"), coverage)),
            symbolizer: Symbolizer::default(),
            stats: DecodeStats::default(),
            records_read: 0,
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>, events: &mut Vec<Event>) {
        while let Some(item) = ring.next() {
            self.records_read += 1;
            match decode::decode(&item) {
                Ok(record) => events.push(self.on_record(&record)),
                Err(err) => {
                    self.stats.count(&err);
                    tracing::warn!("skipped a malformed record: {err}");
                }
            }
        }
    }

    fn on_record(&mut self, record: &Record) -> Event {
        match record {
            Record::FdExhausted(record) => self.fd_accounting.on_record(record),
            Record::HungTask(record) => self.hung_tasks.on_record(record, &mut self.symbolizer),
            Record::OomKill(record) => self.oom.on_record(record, &mut self.symbolizer),
            Record::KernelOops(record) => oops::on_record(true, record, &mut self.symbolizer),
            Record::KernelWarning(record) => oops::on_record(false, record, &mut self.symbolizer),
        }
    }
}

/// What of [`Probes`] stays alive beside the ring buffer.
struct ProbesRest {
    // Owns the programs and links: dropping it detaches them.
    ebpf: aya::Ebpf,
    counters: aya::maps::PerCpuArray<MapData, u64>,
    fd_rate: aya::maps::HashMap<MapData, u32, npd_common::fd::FdRateState>,
    fd_rate_limit_ns: u64,
    logger: Option<AsyncFd<aya_log::EbpfLogger<crate::probes::TracingLogger>>>,
}

impl EventSource {
    pub fn new(probes: Probes) -> io::Result<Self> {
        let Probes {
            ebpf,
            ring,
            counters,
            fd_rate,
            config,
            logger,
            cgroup_layout,
            oops_coverage,
            host_root,
            ..
        } = probes;
        let logger = logger.map(register).transpose()?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            ring: register(ring)?,
            probes: ProbesRest {
                ebpf,
                counters,
                fd_rate,
                fd_rate_limit_ns: config.fd_rate_limit_ns,
                logger,
            },
            decoder: Decoder::new(cgroup_layout, &host_root, oops_coverage),
            tick,
        })
    }

    pub fn ebpf(&self) -> &aya::Ebpf {
        &self.probes.ebpf
    }

    pub fn kernel_counters(&self) -> KernelCounters {
        KernelCounters::read(&self.probes.counters)
    }

    /// Waits for the next events: a ring-buffer wakeup or a timer tick. May return none.
    pub async fn next(&mut self) -> io::Result<Vec<Event>> {
        let mut events = Vec::new();
        tokio::select! {
            guard = self.ring.readable_mut() => {
                let mut guard = guard?;
                self.decoder.drain(guard.get_inner_mut(), &mut events);
                guard.clear_ready();
            }
            _ = self.tick.tick() => {
                // Drain first: the sweep must not count what a pending record carries.
                self.decoder.drain(self.ring.get_mut(), &mut events);
                let now = clock::monotonic_ns();
                events.extend(self.decoder.fd_accounting.sweep(
                    &mut self.probes.fd_rate,
                    now,
                    self.probes.fd_rate_limit_ns,
                ));
                events.extend(self.decoder.hung_tasks.check_recoveries(now));
                if let Some(counters) = self.decoder.counters.as_mut() {
                    events.extend(counters.poll(now));
                }
            }
            Some(guard) = async {
                match self.probes.logger.as_mut() {
                    Some(logger) => Some(logger.readable_mut().await),
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
        Ok(events)
    }
}

/// Watches a map's fd for readability.
fn register<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: ring buffers and the logger own their map fd (an OwnedFd inside aya's MapData)
    // for as long as they live, and the AsyncFd owns them.
    Ok(unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }?)
}
