//! The live event stream: the kernel ring buffer, decoded and enriched, plus what the agent
//! finds by itself on a timer (a rate-limited storm's tail).

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::MissedTickBehavior,
};

use crate::{
    clock,
    decode::{self, DecodeStats, Record},
    detectors::fd::FdAccounting,
    event::Event,
    probes::{KernelCounters, Probes},
};

/// How often the agent looks for what no record brings (storm tails, recoveries).
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

/// Turns ring-buffer records into events, keeping the per-detector state that needs.
#[derive(Debug, Default)]
pub struct Decoder {
    pub fd_accounting: FdAccounting,
    pub stats: DecodeStats,
    /// Records read from the ring buffer, valid or not.
    pub records_read: u64,
}

impl Decoder {
    fn drain(&mut self, ring: &mut RingBuf<MapData>, events: &mut Vec<Event>) {
        while let Some(item) = ring.next() {
            self.records_read += 1;
            match decode::decode(&item) {
                Ok(Record::FdExhausted(record)) => {
                    events.push(self.fd_accounting.on_record(&record));
                }
                Ok(other) => tracing::debug!("no handler yet for {other:?}"),
                Err(err) => {
                    self.stats.count(&err);
                    tracing::warn!("skipped a malformed record: {err}");
                }
            }
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
            decoder: Decoder::default(),
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
                events.extend(self.decoder.fd_accounting.sweep(
                    &mut self.probes.fd_rate,
                    clock::monotonic_ns(),
                    self.probes.fd_rate_limit_ns,
                ));
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
