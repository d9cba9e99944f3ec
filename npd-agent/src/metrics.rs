//! Metrics through prometheus-client: NPD's own `problem_counter` and `problem_gauge` (so
//! existing alerts and dashboards keep working), and npd's.
//!
//! Two expositions. The classic Prometheus text format (`text/plain; version=0.0.4`) is what
//! every scraper gets unless it accepts OpenMetrics alone: it is the only one in which NPD's
//! counter can keep its name `problem_counter` (OpenMetrics counters end in `_total`, and
//! Prometheus stores the `_total` name it is sent; README "Metrics and health").

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    #[prometheus(flatten)]
    pub reason: ReasonLabels,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectorLabels {
    pub detector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub detector: String,
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub verb: String,
    pub resource: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaintLabels {
    pub key: String,
    /// `added`, `removed`, or in a dry run `would_add`, `would_remove`.
    pub action: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// NPD: problems seen, by reason (Events and condition transitions to True).
    pub problem_counter: Family<ReasonLabels, Counter>,
    /// NPD: 1 while a condition of this type is True with this reason.
    pub problem_gauge: Family<ConditionLabels, Gauge>,
    pub records: Family<KindLabels, Counter>,
    pub hook_hits: Family<DetectorLabels, Counter>,
    pub ring_buffer_drops: Family<DetectorLabels, Counter>,
    pub rate_limited: Family<DetectorLabels, Counter>,
    pub hooks_attached: Family<HookLabels, Gauge>,
    pub decode_errors: Family<CauseLabels, Counter>,
    pub api_errors: Family<ApiLabels, Counter>,
    pub events_written: Family<ReasonLabels, Counter>,
    pub last_record_age_seconds: Gauge<f64, AtomicU64>,
    pub condition_patch_seconds: Histogram,
    /// Remediation: taints npd put on or took off its node (or would have, in a dry run).
    pub taint_changes: Family<TaintLabels, Counter>,
    /// Remediation: times the budget refused this node a slot.
    pub taint_budget_refusals: Counter,
    /// Remediation: nodes holding a budget slot, and the limit, as last seen.
    pub taint_budget_used: Gauge,
    pub taint_budget_limit: Gauge,
    pub record_latency_seconds: Histogram,
    /// Events (one per target) waiting for the API server, and those of them parked after
    /// a failure.
    pub events_pending: Gauge,
    pub events_parked: Gauge,
    /// What the sampled detectors last read (PSI, task counts, the conntrack table, ...).
    pub levels: Arc<LevelBoard>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let problem_counter = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "problem_counter",
            "Number of times a specific type of problem has occurred (NPD compatible)",
            problem_counter.clone(),
        );
        let problem_gauge = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "problem_gauge",
            "Whether a specific type of problem is affecting the node or not (NPD compatible)",
            problem_gauge.clone(),
        );
        // npd's own metrics, prefixed `npd_`.
        let npd = registry.sub_registry_with_prefix("npd");
        let records = Family::<KindLabels, Counter>::default();
        npd.register(
            "records",
            "Kernel records decoded, by kind",
            records.clone(),
        );
        let hook_hits = Family::<DetectorLabels, Counter>::default();
        npd.register(
            "hook_hits",
            "Times a hook found something to report, before rate limiting",
            hook_hits.clone(),
        );
        let ring_buffer_drops = Family::<DetectorLabels, Counter>::default();
        npd.register(
            "ring_buffer_drops",
            "Records lost because the ring buffer was full",
            ring_buffer_drops.clone(),
        );
        let rate_limited = Family::<DetectorLabels, Counter>::default();
        npd.register(
            "rate_limited",
            "Events folded into later records by the in-kernel rate limiter",
            rate_limited.clone(),
        );
        let hooks_attached = Family::<HookLabels, Gauge>::default();
        npd.register(
            "hook_attached",
            "1 for the hook each detector uses",
            hooks_attached.clone(),
        );
        let decode_errors = Family::<CauseLabels, Counter>::default();
        npd.register(
            "decode_errors",
            "Malformed records skipped, by cause",
            decode_errors.clone(),
        );
        let api_errors = Family::<ApiLabels, Counter>::default();
        npd.register(
            "api_errors",
            "Failed Kubernetes API calls, by verb, resource and HTTP code",
            api_errors.clone(),
        );
        let events_written = Family::<ReasonLabels, Counter>::default();
        npd.register(
            "events_written",
            "Kubernetes Events created or updated, by reason",
            events_written.clone(),
        );
        let last_record_age_seconds = Gauge::<f64, AtomicU64>::default();
        npd.register(
            "last_record_age_seconds",
            "Seconds since the last kernel record was decoded",
            last_record_age_seconds.clone(),
        );
        let condition_patch_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14),
        );
        npd.register(
            "condition_patch_seconds",
            "Latency of patching the node's conditions",
            condition_patch_seconds.clone(),
        );
        let taint_changes = Family::<TaintLabels, Counter>::default();
        npd.register(
            "taint_changes",
            "Taints npd added to or removed from its node (would_* in a dry run), by key",
            taint_changes.clone(),
        );
        let taint_budget_refusals = Counter::default();
        npd.register(
            "taint_budget_refusals",
            "Times the cluster-wide taint budget refused this node a taint",
            taint_budget_refusals.clone(),
        );
        let taint_budget_used = Gauge::default();
        npd.register(
            "taint_budget_used_nodes",
            "Nodes holding a slot of the taint budget, as this agent last saw it",
            taint_budget_used.clone(),
        );
        let taint_budget_limit = Gauge::default();
        npd.register(
            "taint_budget_limit_nodes",
            "Nodes npd may keep tainted at once (maxUnhealthy), as this agent last computed it",
            taint_budget_limit.clone(),
        );
        // 50 us to ~1.6 s: the ring buffer wakes the agent at once, so most records take well
        // under a millisecond; the top buckets catch a stalled loop.
        let record_latency_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16),
        );
        npd.register(
            "record_latency_seconds",
            "Time from the kernel's timestamp of a record to its decoding by the agent",
            record_latency_seconds.clone(),
        );
        let events_pending = Gauge::default();
        npd.register(
            "events_pending",
            "Events (one per target object) waiting to be written to the API server",
            events_pending.clone(),
        );
        let events_parked = Gauge::default();
        npd.register(
            "events_parked",
            "Pending Events that failed at least once and wait for their next try",
            events_parked.clone(),
        );
        let levels = Arc::new(LevelBoard::default());
        npd.register_collector(Box::new(Arc::clone(&levels)));
        // The kernel's per-detector counters exist at 0 from the start, so a rate or an
        // alert on their increase sees the first drop too.
        for detector in npd_common::counters::Detector::ALL {
            let labels = DetectorLabels {
                detector: detector.name().to_owned(),
            };
            for family in [&hook_hits, &ring_buffer_drops, &rate_limited] {
                family.get_or_create(&labels).inc_by(0);
            }
        }
        Self {
            registry,
            problem_counter,
            problem_gauge,
            records,
            hook_hits,
            ring_buffer_drops,
            rate_limited,
            hooks_attached,
            decode_errors,
            api_errors,
            events_written,
            last_record_age_seconds,
            condition_patch_seconds,
            taint_changes,
            taint_budget_refusals,
            taint_budget_used,
            taint_budget_limit,
            record_latency_seconds,
            events_pending,
            events_parked,
            levels,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text exposition (version 0.0.4), with NPD's counter names.
    pub fn encode_classic(&self) -> String {
        classic_from_openmetrics(&self.encode())
    }

    pub fn api_error(&self, verb: &str, resource: &str, code: &str) {
        self.api_errors
            .get_or_create(&ApiLabels {
                verb: verb.to_owned(),
                resource: resource.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }
}

/// How a level's value behaves: a gauge, or a running total the kernel keeps (exported as a
/// counter; it restarts from 0 only when the kernel's does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelKind {
    Gauge,
    Counter,
}

/// A metric a sampled detector publishes: its name after `npd_` (a counter's without
/// `_total`, which the exposition adds), its help and kind.
#[derive(Debug, PartialEq, Eq)]
pub struct LevelMetric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: LevelKind,
}

impl LevelMetric {
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: LevelKind::Gauge,
        }
    }

    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: LevelKind::Counter,
        }
    }
}

/// One series of a [`LevelMetric`] as last read. Label values are `&'static`: npd's own
/// words (a resource, a limit's name), never a pod's or a process's, so the series a detector
/// can publish are bounded by its code.
#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    pub metric: &'static LevelMetric,
    pub labels: Vec<(&'static str, &'static str)>,
    pub value: f64,
}

impl Level {
    pub fn new(metric: &'static LevelMetric, value: f64) -> Self {
        Self {
            metric,
            labels: Vec::new(),
            value,
        }
    }

    pub fn with(mut self, key: &'static str, value: &'static str) -> Self {
        self.labels.push((key, value));
        self
    }
}

/// The levels each sampled detector published last, rendered at each scrape. A detector's
/// new set replaces its old one whole: a series it could not read this time disappears
/// instead of going stale.
#[derive(Debug, Default)]
pub struct LevelBoard {
    /// By publisher (the runtime's position in the agent's list).
    published: Mutex<BTreeMap<usize, Vec<Level>>>,
}

impl LevelBoard {
    pub fn publish(&self, publisher: usize, levels: Vec<Level>) {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        published.insert(publisher, levels);
    }
}

impl Collector for LevelBoard {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let published = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Each metric once, with all its series, in the order first published.
        let mut metrics: Vec<(&LevelMetric, Vec<&Level>)> = Vec::new();
        for level in published.values().flatten() {
            match metrics.iter_mut().find(|(m, _)| *m == level.metric) {
                Some((_, series)) => series.push(level),
                None => metrics.push((level.metric, vec![level])),
            }
        }
        for (metric, series) in metrics {
            let metric_type = match metric.kind {
                LevelKind::Gauge => MetricType::Gauge,
                LevelKind::Counter => MetricType::Counter,
            };
            // Ending in a period like the registered metrics' help (the registry adds it).
            let help = format!("{}.", metric.help);
            let mut descriptor =
                encoder.encode_descriptor(metric.name, &help, None, metric_type)?;
            for level in series {
                let mut sample = descriptor.encode_family(&level.labels)?;
                match metric.kind {
                    LevelKind::Gauge => sample.encode_gauge(&level.value)?,
                    LevelKind::Counter => {
                        sample.encode_counter::<NoLabelSet, _, f64>(&level.value, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Content type of [`Metrics::encode_classic`].
pub const CLASSIC_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// NPD's counters, exported as NPD does: without `_total`.
const NPD_COUNTERS: &[&str] = &["problem_counter"];

/// Whether a scraper sending this `Accept` header gets OpenMetrics: only if it accepts
/// OpenMetrics and not the classic text format. Prometheus 2.x prefers OpenMetrics but also
/// accepts `text/plain` (and `*/*`), so it gets the classic format and NPD's names.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let mut openmetrics = false;
    let mut classic = false;
    for range in accept.unwrap_or("").split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let refused = parts
            .filter_map(|p| p.strip_prefix("q="))
            .any(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0));
        if refused {
            continue;
        }
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = true,
            "text/plain" | "text/*" | "*/*" => classic = true,
            _ => {}
        }
    }
    openmetrics && !classic
}

/// Rewrites prometheus-client's OpenMetrics text into the classic format: counters are
/// declared under their sample name (`# TYPE x_total counter`), NPD's counters lose `_total`,
/// `# UNIT` and `# EOF` go (the classic format has neither).
fn classic_from_openmetrics(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) && !NPD_COUNTERS.contains(&name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None if line.starts_with('#') => out.push_str(line),
            None => {
                let npd_sample = NPD_COUNTERS.iter().find_map(|name| {
                    let rest = line.strip_prefix(name)?.strip_prefix("_total")?;
                    rest.starts_with(['{', ' ']).then_some((name, rest))
                });
                match npd_sample {
                    Some((name, rest)) => {
                        out.push_str(name);
                        out.push_str(rest);
                    }
                    None => out.push_str(line),
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Turns a running total read from elsewhere (the kernel's counters) into counter increments.
#[derive(Debug, Default)]
pub struct Deltas {
    last: std::collections::HashMap<String, u64>,
}

impl Deltas {
    /// How much `key` grew since the last call (the first call counts everything).
    pub fn delta(&mut self, key: &str, total: u64) -> u64 {
        let last = self.last.entry(key.to_owned()).or_default();
        let delta = total.saturating_sub(*last);
        *last = total.max(*last);
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_npd_compatible_and_own_metrics() {
        let metrics = Metrics::new();
        metrics
            .problem_counter
            .get_or_create(&ReasonLabels {
                reason: "OOMKilling".into(),
            })
            .inc();
        metrics
            .problem_gauge
            .get_or_create(&ConditionLabels {
                reason: ReasonLabels {
                    reason: "TaskHung".into(),
                },
                r#type: "KernelDeadlock".into(),
            })
            .set(1);
        metrics.api_error("patch", "nodes/status", "503");
        let text = metrics.encode();
        assert!(
            text.contains("problem_counter_total{reason=\"OOMKilling\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("problem_gauge{reason=\"TaskHung\",type=\"KernelDeadlock\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "npd_api_errors_total{verb=\"patch\",resource=\"nodes/status\",code=\"503\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE npd_condition_patch_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE npd_record_latency_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn classic_format_keeps_npd_names_and_declares_sample_names() {
        let metrics = Metrics::new();
        metrics
            .problem_counter
            .get_or_create(&ReasonLabels {
                reason: "FDExhausted".into(),
            })
            .inc_by(0);
        metrics
            .records
            .get_or_create(&KindLabels {
                kind: "fd_exhausted".into(),
            })
            .inc();
        let text = metrics.encode_classic();
        // (Families without a series, e.g. problem_gauge before the first condition, are not
        // written at all.)
        for expected in [
            "# HELP problem_counter Number of times",
            "# TYPE problem_counter counter\nproblem_counter{reason=\"FDExhausted\"} 0\n",
            "# HELP npd_records_total Kernel records decoded, by kind.\n",
            "# TYPE npd_records_total counter\nnpd_records_total{kind=\"fd_exhausted\"} 1\n",
            "# TYPE npd_record_latency_seconds histogram\n",
            "npd_ring_buffer_drops_total{detector=\"fd\"} 0\n",
            "npd_record_latency_seconds_bucket{le=\"+Inf\"} 0\n",
            "# TYPE npd_last_record_age_seconds gauge\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        for absent in [
            "problem_counter_total",
            "# EOF",
            "# UNIT",
            "# TYPE npd_records counter",
        ] {
            assert!(!text.contains(absent), "{absent:?} in:\n{text}");
        }
    }

    #[test]
    fn openmetrics_only_for_clients_that_take_nothing_else() {
        // Prometheus 2.42's scrape Accept header.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(!wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain; version=0.0.4")));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text; version=1.0.0"
        )));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text, text/plain;q=0"
        )));
    }

    static STALLED: LevelMetric = LevelMetric::counter("test_stalled_seconds", "Stall time");
    static TASKS: LevelMetric = LevelMetric::gauge("test_tasks", "Tasks");

    #[test]
    fn levels_are_rendered_per_metric_and_replaced_per_publisher() {
        let metrics = Metrics::new();
        metrics.levels.publish(
            0,
            vec![
                Level::new(&STALLED, 1.5).with("resource", "memory"),
                Level::new(&TASKS, 120.0),
            ],
        );
        metrics
            .levels
            .publish(1, vec![Level::new(&STALLED, 0.25).with("resource", "io")]);
        let text = metrics.encode_classic();
        for expected in [
            "# TYPE npd_test_stalled_seconds_total counter\n\
             npd_test_stalled_seconds_total{resource=\"memory\"} 1.5\n\
             npd_test_stalled_seconds_total{resource=\"io\"} 0.25\n",
            "# HELP npd_test_tasks Tasks.\n# TYPE npd_test_tasks gauge\nnpd_test_tasks 120.0\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert_eq!(
            text.matches("# TYPE npd_test_stalled_seconds").count(),
            1,
            "{text}"
        );
        let openmetrics = metrics.encode();
        assert!(
            openmetrics.contains("# TYPE npd_test_stalled_seconds counter\n"),
            "{openmetrics}"
        );
        // A publisher's new set replaces its old one: what it no longer reads is gone.
        metrics.levels.publish(0, vec![Level::new(&TASKS, 130.0)]);
        let text = metrics.encode_classic();
        assert!(text.contains("npd_test_tasks 130.0\n"), "{text}");
        assert!(!text.contains("resource=\"memory\""), "{text}");
        assert!(text.contains("resource=\"io\""), "{text}");
    }

    #[test]
    fn deltas_follow_running_totals() {
        let mut deltas = Deltas::default();
        assert_eq!(deltas.delta("a", 5), 5);
        assert_eq!(deltas.delta("a", 7), 2);
        assert_eq!(deltas.delta("a", 7), 0);
        assert_eq!(deltas.delta("b", 1), 1);
    }
}
