//! The Normal and Warning Events npd writes on the Node about its taints: their reasons, the
//! words of each, and the queue that logs them once per situation and sends them (kept while
//! the API server refuses them).

use std::{
    collections::{BTreeSet, VecDeque},
    time::SystemTime,
};

use k8s_openapi::api::core::v1::Taint;

use super::{
    RemediationError, TaintConfig,
    api::RemediationApi,
    plan::{self, TaintEffect, TaintPlan, WantedTaint, describe},
};
use crate::metrics::{Metrics, TaintLabels};

/// Events kept while the API server refuses them.
const MAX_UNSENT_EVENTS: usize = 64;

/// Event reasons, all on the Node.
pub mod reason {
    pub const TAINT_ADDED: &str = "TaintAdded";
    pub const TAINT_REMOVED: &str = "TaintRemoved";
    pub const BUDGET_EXHAUSTED: &str = "TaintBudgetExhausted";
    pub const LEFT_ALONE: &str = "TaintLeftAlone";
    pub const WOULD_ADD: &str = "TaintWouldBeAdded";
    pub const WOULD_REMOVE: &str = "TaintWouldBeRemoved";
}

/// An Event to write, and whether it repeats a situation already reported.
#[derive(Clone, Debug)]
pub(super) struct Notice {
    /// Set for notices about a lasting situation (budget refused, a taint left alone, a dry
    /// run's would-be change): given once until the situation ends.
    once_key: Option<String>,
    warning: bool,
    reason: &'static str,
    message: String,
    /// The taint change it reports, counted when the notice is given.
    change: Option<TaintLabels>,
}

impl Notice {
    /// A change to `taint`, made (`added`, `removed`) or in a dry run that would be made
    /// (`would_add`, `would_remove`), as the metric's action names it.
    fn of_change(
        taint: &Taint,
        action: &str,
        reason: &'static str,
        once_key: Option<String>,
        message: String,
    ) -> Self {
        Self {
            change: Some(TaintLabels {
                key: taint.key.clone(),
                action: action.to_owned(),
            }),
            once_key,
            warning: false,
            reason,
            message,
        }
    }

    /// npd put `taint` on the node.
    pub(super) fn added(taint: &Taint, wanted: &[WantedTaint], budget_note: &str) -> Self {
        let message = format!(
            "npd tainted the node with {}: {}{budget_note}",
            describe(taint),
            why(wanted, taint)
        );
        Self::of_change(taint, "added", reason::TAINT_ADDED, None, message)
    }

    /// npd took its `taint` off the node.
    pub(super) fn removed(taint: &Taint, wanted: &[WantedTaint], effect: TaintEffect) -> Self {
        let message = format!(
            "npd removed its taint {}: {}",
            describe(taint),
            why_removed(wanted, taint, effect)
        );
        Self::of_change(taint, "removed", reason::TAINT_REMOVED, None, message)
    }

    /// A taint under npd's key that npd did not add: it stays.
    pub(super) fn left_alone(foreign: &Taint, wanted: &[WantedTaint]) -> Self {
        Self {
            change: None,
            once_key: Some(format!("left-alone {}", describe(foreign))),
            warning: false,
            reason: reason::LEFT_ALONE,
            message: format!(
                "{}; the node already has {}, which npd did not add (its value is not `{}`): \
                 npd leaves it alone and will not remove it",
                why(wanted, foreign),
                describe(foreign),
                plan::OWN_TAINT_VALUE
            ),
        }
    }

    /// The budget refused the slot the plan's additions need.
    pub(super) fn refused(
        config: &TaintConfig,
        plan: &TaintPlan,
        wanted: &[WantedTaint],
        holders: &[String],
        limit: usize,
    ) -> Self {
        let taints: Vec<String> = plan.add.iter().map(describe).collect();
        let why: Vec<String> = plan.add.iter().map(|t| why(wanted, t)).collect();
        Self {
            change: None,
            once_key: Some("budget".to_owned()),
            warning: true,
            reason: reason::BUDGET_EXHAUSTED,
            message: format!(
                "{}npd does not taint the node with {} although {}: {} of at most {limit} \
                 node(s) (maxUnhealthy {}) are tainted by npd already ({}); asking again \
                 every {}s",
                dry_run_prefix(config.dry_run),
                taints.join(", "),
                why.join("; "),
                holders.len(),
                config.max_unhealthy,
                holders.join(", "),
                config.retry_interval.as_secs()
            ),
        }
    }

    /// What a dry run would change: the additions (unless refused) and the removals.
    pub(super) fn dry_run(
        plan: &TaintPlan,
        wanted: &[WantedTaint],
        effect: TaintEffect,
        with_additions: bool,
        budget_note: &str,
    ) -> Vec<Self> {
        let mut notices = Vec::new();
        if with_additions {
            for taint in &plan.add {
                let message = format!(
                    "dry run: npd would taint the node with {}: {}{}",
                    describe(taint),
                    why(wanted, taint),
                    budget_note
                );
                let once_key = Some(format!("would add {}", describe(taint)));
                notices.push(Self::of_change(
                    taint,
                    "would_add",
                    reason::WOULD_ADD,
                    once_key,
                    message,
                ));
            }
        }
        for taint in &plan.remove {
            let message = format!(
                "dry run: npd would remove its taint {}: {}",
                describe(taint),
                why_removed(wanted, taint, effect)
            );
            let once_key = Some(format!("would remove {}", describe(taint)));
            notices.push(Self::of_change(
                taint,
                "would_remove",
                reason::WOULD_REMOVE,
                once_key,
                message,
            ));
        }
        notices
    }
}

/// The notices given and not yet sent.
#[derive(Debug, Default)]
pub(super) struct NoticeQueue {
    /// `once_key`s of the notices given for the current situation.
    announced: BTreeSet<String>,
    unsent: VecDeque<(Notice, SystemTime)>,
}

impl NoticeQueue {
    /// Logs and queues a pass's notices; a lasting situation's notice only the first time.
    pub(super) fn announce(&mut self, notices: Vec<Notice>, metrics: &Metrics) {
        let current: BTreeSet<String> = notices.iter().filter_map(|n| n.once_key.clone()).collect();
        for notice in notices {
            if notice
                .once_key
                .as_ref()
                .is_some_and(|k| self.announced.contains(k))
            {
                continue;
            }
            if let Some(labels) = &notice.change {
                metrics.taint_changes.get_or_create(labels).inc();
            }
            if notice.warning {
                tracing::warn!(reason = notice.reason, "remediation: {}", notice.message);
            } else {
                tracing::info!(reason = notice.reason, "remediation: {}", notice.message);
            }
            if self.unsent.len() >= MAX_UNSENT_EVENTS {
                self.unsent.pop_front();
            }
            self.unsent.push_back((notice, SystemTime::now()));
        }
        self.announced = current;
    }

    /// Writes the queued Events, each failure to `failed`; what fails waits for the next pass.
    pub(super) async fn send(&mut self, api: &RemediationApi, failed: impl Fn(&RemediationError)) {
        while let Some((notice, at)) = self.unsent.front() {
            match api
                .event(notice.warning, notice.reason, &notice.message, *at)
                .await
            {
                Ok(()) => {
                    self.unsent.pop_front();
                }
                Err(err) => {
                    failed(&err);
                    if err.is_retryable() {
                        return;
                    }
                    // The API server will never take it: drop it, said above.
                    self.unsent.pop_front();
                }
            }
        }
    }
}

fn dry_run_prefix(dry_run: bool) -> &'static str {
    if dry_run { "dry run: " } else { "" }
}

/// The condition behind a taint's key, in words.
fn why(wanted: &[WantedTaint], taint: &Taint) -> String {
    wanted
        .iter()
        .find(|w| w.key == taint.key)
        .map_or_else(|| format!("{} is wanted", taint.key), |w| w.why.clone())
}

fn why_removed(wanted: &[WantedTaint], taint: &Taint, effect: TaintEffect) -> String {
    match wanted.iter().find(|w| w.key == taint.key) {
        Some(w) if w.wanted => format!("the configured effect is now {effect}"),
        Some(w) => w.why.clone(),
        None => format!(
            "its condition is no longer in remediation.taints.conditions ({})",
            taint.key
        ),
    }
}
