//! Metrics in the OpenMetrics text format, through prometheus-client: NPD's own
//! `problem_counter` and `problem_gauge` (so existing dashboards keep working), and npd's.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
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
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
    fn deltas_follow_running_totals() {
        let mut deltas = Deltas::default();
        assert_eq!(deltas.delta("a", 5), 5);
        assert_eq!(deltas.delta("a", 7), 2);
        assert_eq!(deltas.delta("a", 7), 0);
        assert_eq!(deltas.delta("b", 1), 1);
    }
}
