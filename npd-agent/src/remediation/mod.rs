//! Closing the loop, opt-in: while a chosen condition is True, npd taints its own Node
//! (`npd.io/<condition>=added-by-npd:NoSchedule`) so new pods go elsewhere, and takes exactly
//! that taint off when the condition turns False; never more than `maxUnhealthy` nodes at
//! once across the cluster (see [`budget`] for how agents agree without a controller).
//!
//! Its own task, fed the same desired conditions as the reporter: the decisions are pure
//! ([`plan`], [`budget`]); [`api`] holds the calls. Failures are classified like the
//! reporter's and retried with backoff; every change is a Normal Event on the Node (`notices`:
//! their reasons, words and queue). This file is the loop: a pass on each change of the
//! conditions and every retry interval, the budget's slot taken and given back.

pub mod api;
pub mod budget;
mod notices;
pub mod plan;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1::Taint;
use kube::Client;
use thiserror::Error;
use tokio::sync::watch;

pub use budget::MaxUnhealthy;
pub use notices::reason;
pub use plan::TaintEffect;

use self::{
    api::RemediationApi,
    budget::{Reservation, reserve},
    notices::{Notice, NoticeQueue},
    plan::{WantedTaint, is_own, taint_key},
};
use crate::{
    engine::{ConditionType, NodeCondition},
    health::Health,
    k8s::{ApiFailure, backoff::Backoff, node::ConditionNames},
    metrics::Metrics,
};

/// Conflicting writes in a row before a pass gives up and backs off.
const CONFLICTS_IN_A_ROW: u32 = 5;

/// `remediation.taints`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaintConfig {
    /// The conditions whose True taints the node.
    pub conditions: Vec<ConditionType>,
    pub effect: TaintEffect,
    pub max_unhealthy: MaxUnhealthy,
    /// Log and emit Events about what would change; change nothing.
    pub dry_run: bool,
    /// Where the Lease holding the budget's ledger lives.
    pub lease_namespace: String,
    pub lease_name: String,
    /// How often the node's taints are checked again, and a refused slot asked for again.
    pub retry_interval: Duration,
}

impl TaintConfig {
    /// By type name: the conditions that need the node drained or rebooted.
    pub const DEFAULT_CONDITIONS: [&str; 2] = ["KernelDeadlock", "KernelOops"];
    pub const DEFAULT_MAX_UNHEALTHY: MaxUnhealthy = MaxUnhealthy::Percent(10);
    pub const DEFAULT_LEASE_NAMESPACE: &str = "kube-system";
    pub const DEFAULT_LEASE_NAME: &str = "npd-taint-budget";
    pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(30);
}

/// The node the agent runs on, and how it reports about it.
#[derive(Clone, Debug)]
pub struct NodeTarget {
    pub node_name: String,
    pub names: ConditionNames,
    pub event_namespace: String,
    pub max_backoff: Duration,
}

#[derive(Debug, Error)]
pub enum RemediationError {
    #[error("{}", .failure.describe(.verb, .resource))]
    Api {
        verb: &'static str,
        resource: String,
        failure: ApiFailure,
    },
    #[error(
        "the budget ledger in {resource} (annotation {annotation}) is not valid: {message}; npd \
         adds no taint until it is fixed or the Lease is deleted",
        annotation = budget::LEDGER_ANNOTATION
    )]
    CorruptLedger { resource: String, message: String },
    #[error("{resource} kept changing under npd ({CONFLICTS_IN_A_ROW} conflicts in a row)")]
    Contended { resource: String },
}

impl RemediationError {
    /// Whether trying again can help (a rejected request never will).
    fn is_retryable(&self) -> bool {
        match self {
            Self::Api { failure, .. } => failure.is_retryable() || *failure == ApiFailure::Conflict,
            Self::CorruptLedger { .. } | Self::Contended { .. } => true,
        }
    }

    fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::Api {
                failure: ApiFailure::Conflict,
                ..
            }
        )
    }
}

/// Starts the remediation task. It waits for the first desired conditions (published once
/// they are restored from the Node) and ends when `conditions`' sender is dropped. A pass
/// stuck on the API server, or the task dying, fails /healthz.
pub fn spawn(
    client: Client,
    config: TaintConfig,
    target: NodeTarget,
    conditions: watch::Receiver<Option<Vec<NodeCondition>>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) {
    let keys: Vec<String> = config
        .conditions
        .iter()
        .map(|&c| taint_key(target.names.name(c)))
        .collect();
    tracing::info!(
        dry_run = config.dry_run,
        "remediation: taints {} with effect {} while their condition is True, at most {} \
         node(s) at once (budget in Lease {}/{})",
        keys.join(", "),
        config.effect,
        config.max_unhealthy,
        config.lease_namespace,
        config.lease_name
    );
    if config.effect == TaintEffect::NoExecute {
        tracing::warn!(
            "remediation.taints.effect is NoExecute: every running pod without a matching \
             toleration is evicted from a node as soon as npd taints it, not only kept from \
             being scheduled there"
        );
    }
    if config.dry_run {
        tracing::info!("remediation dry run: taint changes are logged and reported, not made");
    }
    let api = RemediationApi::new(client, &target, &config);
    let task = tokio::spawn(
        Remediator {
            api,
            config,
            target,
            metrics,
            health: Arc::clone(&health),
            conditions,
            ledger_entry: None,
            notices: NoticeQueue::default(),
        }
        .run(),
    );
    tokio::spawn(async move {
        if let Err(err) = task.await
            && err.is_panic()
        {
            tracing::error!("remediation: the task panicked; taints are no longer managed");
            health.task_ended("the remediation task panicked".to_owned());
        }
    });
}

/// How a pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PassOutcome {
    Settled,
    BudgetRefused,
}

struct Remediator {
    api: RemediationApi,
    config: TaintConfig,
    target: NodeTarget,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    conditions: watch::Receiver<Option<Vec<NodeCondition>>>,
    /// Whether this node is in the budget's ledger, as last read or written (`None`: not
    /// known yet, so read before deciding).
    ledger_entry: Option<bool>,
    notices: NoticeQueue,
}

impl Remediator {
    /// The remediated conditions as the engine wants them now; `None` until published.
    fn wanted(&self) -> Option<Vec<WantedTaint>> {
        let conditions = self.conditions.borrow();
        let conditions = conditions.as_ref()?;
        let names = &self.target.names;
        Some(
            self.config
                .conditions
                .iter()
                .filter_map(|&condition_type| {
                    let found = conditions
                        .iter()
                        .find(|c| c.condition_type == condition_type)?;
                    let name = names.name(condition_type);
                    Some(WantedTaint {
                        key: taint_key(name),
                        condition: name.to_owned(),
                        wanted: found.is_true(),
                        why: format!(
                            "{name} is {} ({}: {})",
                            found.status,
                            names.reason_out(&found.reason),
                            found.message
                        ),
                    })
                })
                .collect(),
        )
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(
            Duration::from_secs(1).min(self.target.max_backoff),
            self.target.max_backoff,
        );
        let mut last_wanted: Option<Vec<(String, bool)>> = None;
        let mut next_pass: Option<Instant> = None;
        let mut conflicts = 0;
        loop {
            if let Some(wanted) = self.wanted() {
                let summary: Vec<(String, bool)> =
                    wanted.iter().map(|w| (w.key.clone(), w.wanted)).collect();
                // Only a condition turning True or False matters, not a new message.
                let changed = last_wanted.as_ref() != Some(&summary);
                if changed || next_pass.is_some_and(|at| at <= Instant::now()) {
                    last_wanted = Some(summary);
                    self.health.remediation_pass(true);
                    let result = self.pass(&wanted).await;
                    self.notices
                        .send(&self.api, |err| failed(&self.metrics, err))
                        .await;
                    self.health.remediation_pass(false);
                    next_pass = Some(match result {
                        Ok(_) => {
                            backoff.reset();
                            conflicts = 0;
                            Instant::now() + self.config.retry_interval
                        }
                        // Someone wrote in between: read again at once, a few times.
                        Err(err) if err.is_conflict() && conflicts + 1 < CONFLICTS_IN_A_ROW => {
                            conflicts += 1;
                            tracing::debug!("{err}; reading again");
                            Instant::now()
                        }
                        Err(err) => {
                            conflicts = 0;
                            failed(&self.metrics, &err);
                            Instant::now() + backoff.next_delay()
                        }
                    });
                }
            }
            let sleep = async {
                match next_pass {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.conditions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = sleep => {}
            }
        }
    }

    /// One look at the node: plan, ask the budget if a taint is to go on, change the taints
    /// (or, in a dry run, say what would change), and give back a slot no longer used.
    async fn pass(&mut self, wanted: &[WantedTaint]) -> Result<PassOutcome, RemediationError> {
        let node = self.api.node().await?;
        let current: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let plan = plan::plan(&current, wanted, self.config.effect);
        let mut notices = Vec::new();
        for foreign in &plan.left_alone {
            notices.push(Notice::left_alone(foreign, wanted));
        }
        let keeps_own = plan.keeps_own(&current);
        let mut outcome = PassOutcome::Settled;
        let mut budget_note = String::new();
        // A node already carrying an npd taint holds its slot: more keys take no other.
        if !plan.add.is_empty() && !keeps_own {
            match self.reserve(false, !self.config.dry_run).await? {
                Reservation::Refused { holders, limit } => {
                    self.metrics.taint_budget_refusals.inc();
                    notices.push(Notice::refused(
                        &self.config,
                        &plan,
                        wanted,
                        &holders,
                        limit,
                    ));
                    outcome = PassOutcome::BudgetRefused;
                }
                Reservation::Granted { used, limit, .. } => {
                    let verb = if self.config.dry_run {
                        "would be"
                    } else {
                        "are"
                    };
                    budget_note =
                        format!("; {used} of at most {limit} node(s) {verb} tainted by npd");
                }
                Reservation::AlreadyHeld => {}
            }
        }
        let with_additions = outcome == PassOutcome::Settled;
        if self.config.dry_run {
            notices.extend(Notice::dry_run(
                &plan,
                wanted,
                self.config.effect,
                with_additions,
                &budget_note,
            ));
            self.notices.announce(notices, &self.metrics);
            return Ok(outcome);
        }
        if keeps_own && self.ledger_entry != Some(true) {
            // Tainted by an earlier run: make sure the ledger says so.
            self.reserve(true, true).await?;
        }
        let after = plan.apply(&current, with_additions);
        if after != current {
            let resource_version = node.metadata.resource_version.clone().unwrap_or_default();
            self.api.set_taints(&resource_version, &after).await?;
            if with_additions {
                for taint in &plan.add {
                    notices.push(Notice::added(taint, wanted, &budget_note));
                }
            }
            for taint in &plan.remove {
                notices.push(Notice::removed(taint, wanted, self.config.effect));
            }
        }
        self.notices.announce(notices, &self.metrics);
        if !after.iter().any(is_own) && self.ledger_entry != Some(false) {
            self.release().await?;
        }
        Ok(outcome)
    }

    /// Asks the budget for a slot (compare-and-swap on the Lease; see [`budget`]). With
    /// `write` false (a dry run) only tells what the answer would be.
    async fn reserve(
        &mut self,
        already_tainted: bool,
        write: bool,
    ) -> Result<Reservation, RemediationError> {
        let me = self.target.node_name.clone();
        for _ in 0..CONFLICTS_IN_A_ROW {
            // The ledger first, then the Nodes: an entry read is for a Node that existed
            // then, so one missing from the later list was deleted (and its slot is free).
            let (lease, ledger) = self.api.ledger().await?;
            if ledger.holds(&me) {
                self.ledger_entry = Some(true);
                return Ok(Reservation::AlreadyHeld);
            }
            let view = self.api.cluster_view().await?;
            let now = crate::clock::rfc3339(SystemTime::now());
            let decision = reserve(
                &ledger,
                &view,
                &me,
                self.config.max_unhealthy,
                already_tainted,
                &now,
            );
            let limit = self.config.max_unhealthy.limit(view.nodes.len());
            self.metrics.taint_budget_limit.set(limit as i64);
            match &decision {
                Reservation::Granted {
                    ledger: updated,
                    used,
                    ..
                } if write => match self.api.write_ledger(lease, updated).await {
                    Ok(()) => {
                        self.metrics.taint_budget_used.set(*used as i64);
                        self.ledger_entry = Some(true);
                        return Ok(decision);
                    }
                    Err(err) if err.is_conflict() => continue,
                    Err(err) => return Err(err),
                },
                Reservation::Refused { holders, .. } => {
                    self.metrics.taint_budget_used.set(holders.len() as i64);
                    return Ok(decision);
                }
                _ => return Ok(decision),
            }
        }
        Err(RemediationError::Contended {
            resource: self.api.lease_resource(),
        })
    }

    /// Takes this node out of the ledger (its last npd taint is off).
    async fn release(&mut self) -> Result<(), RemediationError> {
        for _ in 0..CONFLICTS_IN_A_ROW {
            let (lease, ledger) = self.api.ledger().await?;
            let Some(updated) = ledger.without(&self.target.node_name) else {
                self.ledger_entry = Some(false);
                return Ok(());
            };
            match self.api.write_ledger(lease, &updated).await {
                Ok(()) => {
                    tracing::info!("remediation: gave back this node's slot in the taint budget");
                    self.metrics
                        .taint_budget_used
                        .set(updated.holders.len() as i64);
                    self.ledger_entry = Some(false);
                    return Ok(());
                }
                Err(err) if err.is_conflict() => continue,
                Err(err) => return Err(err),
            }
        }
        Err(RemediationError::Contended {
            resource: self.api.lease_resource(),
        })
    }
}

/// Counts and logs a failed call, by what can be done about it.
fn failed(metrics: &Metrics, err: &RemediationError) {
    if let RemediationError::Api {
        verb,
        resource,
        failure,
    } = err
    {
        metrics.api_error(verb, resource, &failure.code_label());
    }
    match err {
        RemediationError::Api {
            failure: ApiFailure::Forbidden { .. },
            ..
        } => tracing::error!(
            "remediation: {err}; taints need the extra rights of \
             deploy/overlays/remediation"
        ),
        RemediationError::Api {
            failure: ApiFailure::Invalid { .. },
            ..
        }
        | RemediationError::CorruptLedger { .. } => tracing::error!("remediation: {err}"),
        _ => tracing::warn!("remediation: {err}; retrying"),
    }
}
