//! The live event stream: the kernel ring buffer, decoded and enriched, plus what the agent
//! finds by itself on a timer (a rate-limited storm's tail, hung tasks recovering, the
//! kernel's problem counters where fentry is refused).

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use npd_common::counters::Detector;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::MissedTickBehavior,
};

use crate::{
    clock,
    decode::{self, DecodeError, DecodeStats},
    detectors::Runtime,
    event::Event,
    kernel::kallsyms::Symbolizer,
    metrics::Level,
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

/// Turns ring-buffer records into events, each through its detector's runtime.
#[derive(Debug)]
pub struct Decoder {
    /// By kernel entry (`None`: agent-only); only the detectors that run.
    runtimes: Vec<(Option<Detector>, Box<dyn Runtime>)>,
    symbolizer: Symbolizer,
    pub stats: DecodeStats,
    /// Records read from the ring buffer, valid or not.
    pub records_read: u64,
}

impl Decoder {
    pub fn new(runtimes: Vec<(Option<Detector>, Box<dyn Runtime>)>) -> Self {
        Self {
            runtimes,
            symbolizer: Symbolizer::default(),
            stats: DecodeStats::default(),
            records_read: 0,
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>, events: &mut Vec<Event>) {
        while let Some(item) = ring.next() {
            self.records_read += 1;
            match self.decode(&item) {
                Ok(event) => events.push(event),
                Err(err) => {
                    self.stats.count(&err);
                    tracing::warn!("skipped a malformed record: {err}");
                }
            }
        }
    }

    fn decode(&mut self, data: &[u8]) -> Result<Event, DecodeError> {
        let kind = decode::check_header(data)?;
        let detector = kind.detector();
        let runtime = self
            .runtimes
            .iter_mut()
            .find(|(id, _)| *id == Some(detector))
            .map(|(_, runtime)| runtime)
            // A record of a detector that is not running: its programs are not attached.
            .ok_or(DecodeError::UnknownKind(kind as u16))?;
        runtime.decode(kind, data, &mut self.symbolizer)
    }

    /// The levels each runtime read since the last call, by its position (a stable name for
    /// [`LevelBoard::publish`]).
    ///
    /// [`LevelBoard::publish`]: crate::metrics::LevelBoard::publish
    pub fn take_levels(&mut self) -> Vec<(usize, Vec<Level>)> {
        self.runtimes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (_, runtime))| Some((i, runtime.take_levels()?)))
            .collect()
    }

    /// What every running detector finds by itself.
    fn poll(&mut self, now_ns: u64, events: &mut Vec<Event>) {
        for (_, runtime) in &mut self.runtimes {
            events.extend(runtime.poll(now_ns));
        }
    }
}

/// What of [`Probes`] stays alive beside the ring buffer.
struct ProbesRest {
    // Owns the programs and links: dropping it detaches them.
    ebpf: aya::Ebpf,
    counters: aya::maps::PerCpuArray<MapData, u64>,
    logger: Option<AsyncFd<aya_log::EbpfLogger<crate::probes::TracingLogger>>>,
}

impl EventSource {
    pub fn new(probes: Probes) -> io::Result<Self> {
        let Probes {
            ebpf,
            ring,
            counters,
            runtimes,
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
                logger,
            },
            decoder: Decoder::new(runtimes),
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
                // Drain first: a sweep must not count what a pending record carries.
                self.decoder.drain(self.ring.get_mut(), &mut events);
                self.decoder.poll(clock::monotonic_ns(), &mut events);
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
