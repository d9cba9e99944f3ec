//! Reading the agent's /metrics (OpenMetrics text).

use npd_tests::agent::AgentProcess;

/// A scrape of /metrics.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scrape {
    text: String,
}

impl Scrape {
    pub(crate) fn take(agent: &AgentProcess) -> anyhow::Result<Self> {
        let (code, text) = agent.get("/metrics")?;
        anyhow::ensure!(code == 200, "/metrics answered {code}: {text}");
        Ok(Self { text })
    }

    /// The sum of every sample named `name` whose labels include all of `labels`
    /// (`key="value"` each); 0 when there is none.
    pub(crate) fn value(&self, name: &str, labels: &[&str]) -> f64 {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                (series_name == name
                    && labels
                        .iter()
                        .all(|want| series_labels.split(',').any(|have| have == *want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
            })
            .sum()
    }

    /// A histogram's cumulative buckets as (upper bound, count), ascending; +Inf last.
    pub(crate) fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, rest) = rest.split_once('"')?;
                let count = rest.rsplit_once(' ')?.1.parse().ok()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// What a histogram gained between two scrapes.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct HistogramDelta {
    pub(crate) count: f64,
    pub(crate) sum: f64,
    /// (upper bound, cumulative count) per bucket.
    pub(crate) buckets: Vec<(f64, f64)>,
}

impl HistogramDelta {
    pub(crate) fn between(before: &Scrape, after: &Scrape, name: &str) -> Self {
        let old = before.buckets(name);
        let buckets = after
            .buckets(name)
            .into_iter()
            .map(|(le, count)| {
                let was = old.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
                (le, count - was)
            })
            .collect();
        Self {
            count: after.value(&format!("{name}_count"), &[])
                - before.value(&format!("{name}_count"), &[]),
            sum: after.value(&format!("{name}_sum"), &[])
                - before.value(&format!("{name}_sum"), &[]),
            buckets,
        }
    }

    pub(crate) fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// The upper bound of the bucket holding the p-th percentile: the value is at most this.
    pub(crate) fn percentile_bound(&self, p: f64) -> f64 {
        let wanted = (p / 100.0 * self.count).ceil().max(1.0);
        self.buckets
            .iter()
            .find(|(_, count)| *count >= wanted)
            .map_or(f64::NAN, |(le, _)| *le)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_and_histograms() {
        let before = Scrape {
            text: "# TYPE npd_records counter\n\
                   npd_records_total{kind=\"fd_exhausted\"} 3\n\
                   npd_records_total{kind=\"hung_task\"} 1\n\
                   h_bucket{le=\"0.001\"} 1\nh_bucket{le=\"0.002\"} 1\nh_bucket{le=\"+Inf\"} 1\n\
                   h_sum 0.0005\nh_count 1\n# EOF\n"
                .into(),
        };
        assert_eq!(
            before.value("npd_records_total", &["kind=\"fd_exhausted\""]),
            3.0
        );
        assert_eq!(before.value("npd_records_total", &[]), 4.0);
        assert_eq!(before.value("npd_nothing_total", &[]), 0.0);
        let after = Scrape {
            text: "h_bucket{le=\"0.001\"} 2\nh_bucket{le=\"0.002\"} 5\nh_bucket{le=\"+Inf\"} 5\n\
                   h_sum 0.0085\nh_count 5\n"
                .into(),
        };
        let delta = HistogramDelta::between(&before, &after, "h");
        assert_eq!(delta.count, 4.0);
        assert!((delta.mean() - 0.002).abs() < 1e-12);
        assert_eq!(delta.percentile_bound(25.0), 0.001);
        assert_eq!(delta.percentile_bound(50.0), 0.002);
        assert_eq!(delta.percentile_bound(99.0), 0.002);
    }
}
