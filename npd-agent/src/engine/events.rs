//! Temporary problems as Events: aggregated into series by key (like Kubernetes event series)
//! and bounded by token buckets: one per reason and budget (a pod, or the node's own
//! processes), under a node-wide ceiling per reason, so one noisy pod cannot spend the
//! Events every other pod's problems need. Nothing is dropped silently: an occurrence that
//! cannot be sent now stays in its series and is counted in the series' next Event.

use std::{collections::HashMap, time::SystemTime};

use super::{
    config::EngineConfig,
    time::{Timestamp, duration_ns},
};

pub use crate::problem::{EventReason, EventType};

/// An object an Event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventTarget {
    /// This node.
    Node,
    /// The pod the problem happened in (the container is named in the message).
    Pod {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// An Event to write: create it, or update the one written earlier for the same series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemEvent {
    pub reason: EventReason,
    pub event_type: EventType,
    /// The latest occurrence's message.
    pub message: String,
    /// The Node first; the Pod too when known. One Kubernetes Event per target.
    pub targets: Vec<EventTarget>,
    /// Identifies the series: equal keys are the same problem at the same place.
    pub aggregation_key: String,
    /// Occurrences in the series so far, including those held back by the rate limit.
    pub count: u64,
    pub first_timestamp: SystemTime,
    pub last_timestamp: SystemTime,
    /// False: a new series, create an Event. True: the series' Event already exists (same
    /// key); update its count, last timestamp and message.
    pub series_update: bool,
    /// Occurrences of this reason from other series that npd had to forget before it could
    /// report them (the `max_event_series` bound); reported here so none goes unseen.
    pub unreported_elsewhere: u64,
}

/// Per reason, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Problems seen (a record may stand for several).
    pub occurrences: u64,
    /// Events written (created or updated).
    pub sent: u64,
    /// Times a due Event waited for a token.
    pub rate_limited: u64,
    /// Occurrences of forgotten series, not yet folded into a sent Event.
    pub unreported: u64,
}

/// One problem, before aggregation.
#[derive(Clone, Debug)]
pub(crate) struct Occurrence {
    pub(crate) reason: EventReason,
    pub(crate) key: String,
    pub(crate) message: String,
    pub(crate) targets: Vec<EventTarget>,
    /// How many problems it stands for (an fd record counts the failures folded into it).
    pub(crate) count: u64,
    /// When the kernel saw it.
    pub(crate) at: SystemTime,
    /// Whose Event budget it spends: `pod:<uid>`, or `node` for everything not in a pod.
    pub(crate) budget: String,
}

/// The node-wide ceiling per reason is this many budgets' worth: one pod can spend at most a
/// quarter of it, and a storm across many pods still stays bounded for the API server.
const NODE_CEILING_BUDGETS: u32 = 4;

#[derive(Debug)]
struct Series {
    reason: EventReason,
    message: String,
    targets: Vec<EventTarget>,
    first_timestamp: SystemTime,
    last_timestamp: SystemTime,
    last_occurrence_ns: u64,
    count: u64,
    /// `count` as of the last Event sent; 0 while the series' Event is not created yet.
    sent_count: u64,
    last_sent_ns: Option<u64>,
    /// Creation order, to serve waiting series oldest first.
    seq: u64,
    budget: String,
}

impl Series {
    fn pending(&self) -> bool {
        self.count > self.sent_count
    }
}

#[derive(Debug)]
struct TokenBucket {
    tokens: u32,
    burst: u32,
    refill_ns: u64,
    last_refill_ns: u64,
}

impl TokenBucket {
    fn full(burst: u32, refill_ns: u64, now_ns: u64) -> Self {
        Self {
            tokens: burst,
            burst,
            refill_ns,
            last_refill_ns: now_ns,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        if self.tokens >= self.burst {
            // A full bucket does not bank time.
            self.last_refill_ns = now_ns;
            return;
        }
        let earned = now_ns.saturating_sub(self.last_refill_ns) / self.refill_ns;
        if earned > 0 {
            let earned_u32 = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned_u32).min(self.burst);
            self.last_refill_ns = if self.tokens >= self.burst {
                now_ns
            } else {
                self.last_refill_ns + earned * self.refill_ns
            };
        }
    }

    fn has_token(&mut self, now_ns: u64) -> bool {
        self.refill(now_ns);
        self.tokens > 0
    }

    fn take(&mut self) {
        self.tokens = self.tokens.saturating_sub(1);
    }

    /// A full bucket is the same as a new one: forgetting it loses nothing.
    fn is_full(&mut self, now_ns: u64) -> bool {
        self.refill(now_ns);
        self.tokens >= self.burst
    }
}

#[derive(Debug)]
pub(crate) struct EventQueue {
    window_ns: u64,
    update_interval_ns: u64,
    max_series: usize,
    series: HashMap<String, Series>,
    /// Per reason and budget, created full when first needed and forgotten when full again.
    buckets: HashMap<(EventReason, String), TokenBucket>,
    /// The node-wide ceiling per reason; a reason first met later than [`EventQueue::new`]
    /// gets a full one then.
    ceilings: HashMap<EventReason, TokenBucket>,
    stats: HashMap<EventReason, EventStats>,
    /// Unsent occurrences of forgotten series, per reason and budget: reported with that
    /// budget's next Event of the reason, or with any once the budget has no series left.
    unreported: HashMap<(EventReason, String), u64>,
    burst: u32,
    refill_ns: u64,
    next_seq: u64,
}

impl EventQueue {
    pub(crate) fn new(config: &EngineConfig, reasons: &[EventReason], now: Timestamp) -> Self {
        let limit = config.event_rate_limit;
        let refill_ns = duration_ns(limit.refill_every).max(1);
        Self {
            window_ns: duration_ns(config.event_aggregation_window),
            update_interval_ns: duration_ns(config.event_series_update_interval),
            max_series: config.max_event_series,
            series: HashMap::new(),
            buckets: HashMap::new(),
            ceilings: reasons
                .iter()
                .map(|&reason| (reason, Self::ceiling(limit.burst, refill_ns, now)))
                .collect(),
            stats: reasons
                .iter()
                .map(|&reason| (reason, EventStats::default()))
                .collect(),
            unreported: HashMap::new(),
            burst: limit.burst,
            refill_ns,
            next_seq: 0,
        }
    }

    fn ceiling(burst: u32, refill_ns: u64, now: Timestamp) -> TokenBucket {
        TokenBucket::full(
            burst.saturating_mul(NODE_CEILING_BUDGETS),
            (refill_ns / u64::from(NODE_CEILING_BUDGETS)).max(1),
            now.monotonic_ns,
        )
    }

    pub(crate) fn stats(&self, reason: EventReason) -> EventStats {
        self.stats.get(&reason).copied().unwrap_or_default()
    }

    fn stats_mut(&mut self, reason: EventReason) -> &mut EventStats {
        self.stats.entry(reason).or_default()
    }

    /// Adds an occurrence to its series and sends what is due.
    pub(crate) fn record(
        &mut self,
        occurrence: Occurrence,
        now: Timestamp,
        out: &mut Vec<ProblemEvent>,
    ) {
        self.stats_mut(occurrence.reason).occurrences += occurrence.count;
        let window_ns = self.window_ns;
        let continues = self.series.get(&occurrence.key).is_some_and(|series| {
            // A series with unsent occurrences goes on whatever its age, so they are
            // reported with it rather than lost.
            series.pending()
                || now.monotonic_ns.saturating_sub(series.last_occurrence_ns) <= window_ns
        });
        if continues {
            if let Some(series) = self.series.get_mut(&occurrence.key) {
                series.count += occurrence.count;
                series.first_timestamp = series.first_timestamp.min(occurrence.at);
                series.last_timestamp = series.last_timestamp.max(occurrence.at);
                series.last_occurrence_ns = now.monotonic_ns;
                series.message = occurrence.message;
                series.targets = occurrence.targets;
            }
        } else {
            self.next_seq += 1;
            self.series.insert(
                occurrence.key.clone(),
                Series {
                    reason: occurrence.reason,
                    message: occurrence.message,
                    targets: occurrence.targets,
                    first_timestamp: occurrence.at,
                    last_timestamp: occurrence.at,
                    last_occurrence_ns: now.monotonic_ns,
                    count: occurrence.count,
                    sent_count: 0,
                    last_sent_ns: None,
                    seq: self.next_seq,
                    budget: occurrence.budget,
                },
            );
            self.bound_memory(&occurrence.key);
        }
        self.send_if_due(&occurrence.key, now, out);
    }

    /// Sends every series that is due and has a token (oldest first), then forgets series
    /// that are over and fully reported.
    pub(crate) fn flush(&mut self, now: Timestamp, out: &mut Vec<ProblemEvent>) {
        // A reason whose node-wide ceiling is empty sends nothing this time: its series are
        // only counted as held back, not walked one by one (a storm holds hundreds).
        let mut held: Vec<EventReason> = Vec::new();
        let (burst, refill_ns) = (self.burst, self.refill_ns);
        for series in self.series.values() {
            if held.contains(&series.reason) || !self.is_due(series, now) {
                continue;
            }
            let ceiling = self
                .ceilings
                .entry(series.reason)
                .or_insert_with(|| Self::ceiling(burst, refill_ns, now));
            if !ceiling.has_token(now.monotonic_ns) {
                held.push(series.reason);
            }
        }
        let mut due: Vec<(u64, String)> = Vec::new();
        for (key, series) in &self.series {
            if !self.is_due(series, now) {
                continue;
            }
            if held.contains(&series.reason) {
                self.stats.entry(series.reason).or_default().rate_limited += 1;
            } else {
                due.push((series.seq, key.clone()));
            }
        }
        due.sort_unstable();
        for (_, key) in due {
            self.send_if_due(&key, now, out);
        }
        let window_ns = self.window_ns;
        self.series.retain(|_, series| {
            series.pending()
                || now.monotonic_ns.saturating_sub(series.last_occurrence_ns) <= window_ns
        });
        // Pods come and go: their budgets would otherwise pile up.
        self.buckets
            .retain(|_, bucket| !bucket.is_full(now.monotonic_ns));
    }

    fn is_due(&self, series: &Series, now: Timestamp) -> bool {
        series.pending()
            && series
                .last_sent_ns
                .is_none_or(|sent| now.monotonic_ns.saturating_sub(sent) >= self.update_interval_ns)
    }

    fn send_if_due(&mut self, key: &str, now: Timestamp, out: &mut Vec<ProblemEvent>) {
        let Some(series) = self.series.get(key) else {
            return;
        };
        if !self.is_due(series, now) {
            return;
        }
        let reason = series.reason;
        let (burst, refill_ns) = (self.burst, self.refill_ns);
        let bucket = self
            .buckets
            .entry((reason, series.budget.clone()))
            .or_insert_with(|| TokenBucket::full(burst, refill_ns, now.monotonic_ns));
        let ceiling = self
            .ceilings
            .entry(reason)
            .or_insert_with(|| Self::ceiling(burst, refill_ns, now));
        if !(bucket.has_token(now.monotonic_ns) && ceiling.has_token(now.monotonic_ns)) {
            self.stats_mut(reason).rate_limited += 1;
            return;
        }
        bucket.take();
        ceiling.take();
        let budget = series.budget.clone();
        let unreported_elsewhere = self.take_unreported(reason, &budget);
        self.stats_mut(reason).unreported -= unreported_elsewhere;
        let Some(series) = self.series.get_mut(key) else {
            return;
        };
        let series_update = series.sent_count > 0;
        series.sent_count = series.count;
        series.last_sent_ns = Some(now.monotonic_ns);
        self.stats.entry(reason).or_default().sent += 1;
        let mut message = series.message.clone();
        if unreported_elsewhere > 0 {
            message.push_str(&format!(
                " ({unreported_elsewhere} more {} problems elsewhere were not reported \
                 individually: too many at once)",
                series.reason
            ));
        }
        out.push(ProblemEvent {
            reason: series.reason,
            event_type: series.reason.event_type(),
            message,
            targets: series.targets.clone(),
            aggregation_key: key.to_owned(),
            count: series.count,
            first_timestamp: series.first_timestamp,
            last_timestamp: series.last_timestamp,
            series_update,
            unreported_elsewhere,
        });
    }

    /// What an Event of `reason` in `budget` carries of forgotten series: that budget's own,
    /// and those of budgets with no series of the reason left to carry them.
    fn take_unreported(&mut self, reason: EventReason, budget: &str) -> u64 {
        let series = &self.series;
        let mut taken = 0;
        self.unreported
            .retain(|(tally_reason, tally_budget), count| {
                let carried_here = *tally_reason == reason
                    && (tally_budget == budget
                        || !series
                            .values()
                            .any(|s| s.reason == reason && s.budget == *tally_budget));
                if carried_here {
                    taken += *count;
                }
                !carried_here
            });
        taken
    }

    /// Keeps at most `max_series`: forgets fully reported series first (nothing is lost),
    /// then unsent ones of the newcomer's own reason and budget, then of its reason, oldest
    /// occurrence first; so a storm in one pod evicts its own backlog before anyone else's.
    /// A forgotten series' unsent occurrences go to its reason and budget's tally.
    fn bound_memory(&mut self, keep: &str) {
        let Some((reason, budget)) = self
            .series
            .get(keep)
            .map(|series| (series.reason, series.budget.clone()))
        else {
            return;
        };
        while self.series.len() > self.max_series {
            let victim = self
                .series
                .iter()
                .filter(|(key, _)| key.as_str() != keep)
                .min_by_key(|(_, series)| {
                    (
                        series.pending(),
                        series.reason != reason,
                        series.budget != budget,
                        series.last_occurrence_ns,
                    )
                })
                .map(|(key, _)| key.clone());
            let Some(victim) = victim else { return };
            if let Some(series) = self.series.remove(&victim) {
                let lost = series.count - series.sent_count;
                if lost > 0 {
                    self.stats_mut(series.reason).unreported += lost;
                    *self
                        .unreported
                        .entry((series.reason, series.budget))
                        .or_default() += lost;
                }
            }
        }
    }
}
