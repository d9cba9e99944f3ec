//! The connection-tracking table: entries against `net.netfilter.nf_conntrack_max`, and the
//! packets the kernel dropped because the table was full. When it is full, every new flow
//! through NAT or a stateful rule (kube-proxy's Services, NetworkPolicies) is dropped: NPD's
//! `ConntrackFull`, from its custom-plugin scripts.
//!
//! Read every [`PERIOD_NS`]: the host network namespace's counters from
//! `/proc/1/net/stat/nf_conntrack` (pid 1's namespace, so also right for an agent in a pod
//! without `hostNetwork`: `/proc/sys/net` would show the agent's own namespace), the limit
//! from `/proc/sys/net/netfilter/nf_conntrack_max` (global).

use std::path::{Path, PathBuf};

use aya::Ebpf;
use serde::Serialize;

use super::{
    AttachContext, Attached, Detector, DetectorStatus, Sampled, Sampler, Watermarks, read_number,
    read_text,
};
use crate::{
    event::{Event, Source, Task},
    finding,
    metrics::{Level, LevelMetric},
    problem::{Assessment, EventReason, Report},
};

/// NPD's name (its conntrack plugin's reason).
pub const CONNTRACK_FULL: EventReason = EventReason::warning("ConntrackFull");

/// How often the table is read.
pub const PERIOD_NS: u64 = 10_000_000_000;

/// The per-CPU statistics of pid 1's network namespace, below the proc root.
const STAT_FILE: &str = "1/net/stat/nf_conntrack";
const COUNT_FILE: &str = "sys/net/netfilter/nf_conntrack_count";
const MAX_FILE: &str = "sys/net/netfilter/nf_conntrack_max";

#[derive(Debug)]
pub struct ConntrackDetector;

pub static DETECTOR: ConntrackDetector = ConntrackDetector;

impl Detector for ConntrackDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        None
    }

    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn about(&self) -> &'static str {
        "conntrack table fill vs nf_conntrack_max, and drops when full -> ConntrackFull"
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[CONNTRACK_FULL]
    }

    fn attach(&self, _ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        let files = Files::new(&ctx.host.proc_root);
        status.tried(
            Source::Sampled,
            format!(
                "{} and {}, every 10 s",
                files.stat.display(),
                files.max.display()
            ),
            Ok(()),
        );
        if let Err(err) = files.read() {
            // Not an error: the table appears when something first needs it (kube-proxy,
            // a stateful rule), and npd starts watching then.
            status.notes.push(format!(
                "connection tracking is not in use yet (nf_conntrack not loaded or no rule \
                 needs it): {err}"
            ));
        }
        Attached {
            status,
            runtime: Sampled::boxed(
                ConntrackRuntime {
                    files: Files::new(&ctx.host.proc_root),
                    watch: ConntrackWatch::new(ctx.options.resources.conntrack),
                },
                PERIOD_NS,
            ),
        }
    }
}

/// What the kernel's per-CPU statistics say (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConntrackStats {
    /// Entries in the table (the namespace's, the same on every CPU's row).
    pub entries: u64,
    /// Packets dropped because no entry could be allocated (the table was full).
    pub drop: u64,
    /// Entries evicted early to make room.
    pub early_drop: u64,
    pub insert_failed: u64,
}

/// Parses `/proc/net/stat/nf_conntrack`: a header naming the columns, then one row per CPU
/// of hexadecimal numbers.
pub fn parse_stat(text: &str) -> Option<ConntrackStats> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let entries = column("entries")?;
    let (drop, early_drop, insert_failed) = (
        column("drop"),
        column("early_drop"),
        column("insert_failed"),
    );
    let mut stats = ConntrackStats::default();
    let mut rows = 0;
    for line in lines {
        let values: Vec<u64> = line
            .split_whitespace()
            .map(|v| u64::from_str_radix(v, 16))
            .collect::<Result<_, _>>()
            .ok()?;
        let at = |i: Option<usize>| i.and_then(|i| values.get(i)).copied().unwrap_or(0);
        stats.entries = at(Some(entries));
        stats.drop += at(drop);
        stats.early_drop += at(early_drop);
        stats.insert_failed += at(insert_failed);
        rows += 1;
    }
    (rows > 0).then_some(stats)
}

/// The host namespace's table on /metrics.
pub static ENTRIES: LevelMetric = LevelMetric::gauge(
    "conntrack_entries",
    "Connections tracked in the host network namespace",
);
pub static ENTRIES_LIMIT: LevelMetric = LevelMetric::gauge(
    "conntrack_entries_limit",
    "net.netfilter.nf_conntrack_max: new flows are dropped at this many entries",
);
pub static DROPPED_PACKETS: LevelMetric = LevelMetric::counter(
    "conntrack_dropped_packets",
    "Packets dropped because no conntrack entry could be allocated (the kernel's drop \
           counter, summed over CPUs)",
);

/// Where the runtime reads.
#[derive(Debug)]
struct Files {
    stat: PathBuf,
    count: PathBuf,
    max: PathBuf,
}

impl Files {
    fn new(proc_root: &Path) -> Self {
        Self {
            stat: proc_root.join(STAT_FILE),
            count: proc_root.join(COUNT_FILE),
            max: proc_root.join(MAX_FILE),
        }
    }

    /// (statistics, max). Without the statistics file (CONFIG_NF_CONNTRACK_PROCFS off) the
    /// count alone, from the reader's namespace.
    fn read(&self) -> Result<(ConntrackStats, u64), String> {
        let max = read_number(&self.max)?;
        let stats = match read_text(&self.stat) {
            Ok(text) => parse_stat(&text)
                .ok_or_else(|| format!("{}: unexpected format", self.stat.display()))?,
            Err(_) => ConntrackStats {
                entries: read_number(&self.count)?,
                ..ConntrackStats::default()
            },
        };
        Ok((stats, max))
    }
}

/// The table full or nearly, or packets dropped because it was.
#[derive(Clone, Debug, Serialize)]
pub struct ConntrackFull {
    pub entries: u64,
    pub max: u64,
    pub percent: f64,
    /// Packets dropped for want of an entry since the last sample.
    pub dropped: u64,
    #[serde(flatten)]
    pub totals: ConntrackStats,
}

finding!(ConntrackFull, "conntrack_full", {
    fn summary(&self) -> String {
        let dropped = if self.dropped > 0 {
            format!("; {} packets dropped for want of an entry", self.dropped)
        } else {
            String::new()
        };
        format!(
            "conntrack table at {:.0} % ({} of {} entries){dropped}",
            self.percent, self.entries, self.max
        )
    }

    fn assess(&self, _event: &Event) -> Assessment {
        Assessment::report(Report {
            reason: CONNTRACK_FULL,
            detail_key: "conntrack".to_owned(),
            message: format!(
                "{} (net.netfilter.nf_conntrack_max); when it is full the kernel drops new \
                 connections",
                self.summary()
            ),
            count: 1,
            since_boot: false,
        })
    }
});

/// The fill level with hysteresis (a problem at the high-water mark, reported again only
/// after the table went below the low one), and the drop counter's last value.
#[derive(Debug)]
pub struct ConntrackWatch {
    marks: Watermarks,
    over: bool,
    last_drop: Option<u64>,
}

impl ConntrackWatch {
    pub fn new(marks: Watermarks) -> Self {
        Self {
            marks,
            over: false,
            last_drop: None,
        }
    }

    /// A sample: the finding to report, if any.
    pub fn sample(&mut self, stats: ConntrackStats, max: u64) -> Option<ConntrackFull> {
        // 0 means no limit.
        let percent = if max == 0 {
            0.0
        } else {
            stats.entries as f64 * 100.0 / max as f64
        };
        let dropped = self
            .last_drop
            .map_or(0, |last| stats.drop.saturating_sub(last));
        self.last_drop = Some(stats.drop);
        let over = self.marks.over(percent, self.over);
        let crossed = over && !self.over;
        self.over = over;
        (crossed || dropped > 0).then_some(ConntrackFull {
            entries: stats.entries,
            max,
            percent,
            dropped,
            totals: stats,
        })
    }
}

#[derive(Debug)]
struct ConntrackRuntime {
    files: Files,
    watch: ConntrackWatch,
}

impl Sampler for ConntrackRuntime {
    fn sample(&mut self, now_ns: u64, levels: &mut Vec<Level>) -> Vec<Event> {
        let Ok((stats, max)) = self.files.read() else {
            return Vec::new();
        };
        levels.extend([
            Level::new(&ENTRIES, stats.entries as f64),
            Level::new(&ENTRIES_LIMIT, max as f64),
            Level::new(&DROPPED_PACKETS, stats.drop as f64),
        ]);
        self.watch
            .sample(stats, max)
            .map(|full| Event::new(now_ns, Task::default(), Source::Sampled, full))
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "entries  clashres found new invalid ignore delete chainlength insert \
                        insert_failed drop early_drop icmp_error  expect_new expect_create \
                        expect_delete search_restart\n\
        000003e8  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 \
        00000001 00000010 00000002 00000000  00000000 00000000 00000000 00000000\n\
        000003e8  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 \
        00000000 00000005 00000000 00000000  00000000 00000000 00000000 00000000\n";

    #[test]
    fn parses_the_per_cpu_statistics() {
        assert_eq!(
            parse_stat(STAT),
            Some(ConntrackStats {
                entries: 1000,
                drop: 0x15,
                early_drop: 2,
                insert_failed: 1,
            })
        );
        assert_eq!(parse_stat("entries\n"), None, "no CPU rows");
        assert_eq!(parse_stat("entries drop\nzz 1\n"), None, "not hex");
        assert_eq!(parse_stat("nothing\n1\n"), None, "no entries column");
    }

    fn stats(entries: u64, drop: u64) -> ConntrackStats {
        ConntrackStats {
            entries,
            drop,
            ..ConntrackStats::default()
        }
    }

    #[test]
    fn reports_crossing_ninety_percent_once_and_every_drop() {
        let mut watch = ConntrackWatch::new(Watermarks::DEFAULT);
        assert!(watch.sample(stats(100, 7), 1000).is_none());
        let full = watch.sample(stats(950, 7), 1000).expect("crossed 90 %");
        assert_eq!((full.percent.round(), full.dropped), (95.0, 0));
        // Still above, or back to 85 %: hysteresis, no new report.
        assert!(watch.sample(stats(990, 7), 1000).is_none());
        assert!(watch.sample(stats(850, 7), 1000).is_none());
        assert!(watch.sample(stats(950, 7), 1000).is_none());
        // Drops are reported whatever the level.
        let dropped = watch.sample(stats(500, 19), 1000).expect("drops");
        assert_eq!(dropped.dropped, 12);
        // Below 80 %: re-armed.
        assert!(watch.sample(stats(920, 19), 1000).is_some());
        // No limit: never full.
        let mut unlimited = ConntrackWatch::new(Watermarks::DEFAULT);
        assert!(unlimited.sample(stats(1_000_000, 0), 0).is_none());

        let event = Event::new(1, Task::default(), Source::Sampled, full);
        let report = event.assess().report.unwrap();
        assert_eq!(report.reason, CONNTRACK_FULL);
        assert!(
            report.message.contains("95 % (950 of 1000"),
            "{}",
            report.message
        );
    }

    #[test]
    fn reads_the_files_under_a_proc_root() {
        let root = std::env::temp_dir().join(format!("npd-conntrack-{}", std::process::id()));
        let files = Files::new(&root);
        assert!(
            files.read().is_err(),
            "no module: an error the runtime skips"
        );
        std::fs::create_dir_all(root.join("sys/net/netfilter")).unwrap();
        std::fs::write(root.join(MAX_FILE), "1000\n").unwrap();
        std::fs::write(root.join(COUNT_FILE), "12\n").unwrap();
        assert_eq!(files.read().unwrap(), (stats(12, 0), 1000));
        std::fs::create_dir_all(root.join("1/net/stat")).unwrap();
        std::fs::write(root.join(STAT_FILE), STAT).unwrap();
        assert_eq!(files.read().unwrap().0.entries, 1000);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
