//! The reporting loop: converges the Node's conditions and the Events to the engine's
//! decisions, whatever the API server does. It keeps only the latest desired conditions (a
//! watch channel: newer replaces older) and a bounded set of pending Events (a series
//! collapses in place), retries failures with backoff and jitter, and says clearly when RBAC
//! forbids something.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use tokio::sync::{Notify, oneshot, watch};

use super::{
    ApiFailure,
    backoff::Backoff,
    events::{EventWriter, NodeRef, PendingEvents},
    node::{self, ConditionNames, NodeState},
};
use crate::{
    engine::{NodeCondition, ProblemEvent},
    health::Health,
    metrics::{Metrics, ReasonLabels},
};

#[derive(Clone, Debug)]
pub struct ReporterConfig {
    pub node_name: String,
    pub names: ConditionNames,
    /// How often `lastHeartbeatTime` is refreshed even when nothing changed.
    pub heartbeat: Duration,
    /// Namespace of Events about the Node.
    pub node_event_namespace: String,
    pub max_pending_events: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// The main loop's side of the reporter.
#[derive(Debug)]
pub struct ReporterHandle {
    conditions: watch::Sender<Option<Vec<NodeCondition>>>,
    events: Arc<Mutex<PendingEvents>>,
    wake: Arc<Notify>,
    /// The Node as found at start, once read (take it once).
    pub node_state: Option<oneshot::Receiver<NodeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReporterHandle {
    /// The desired conditions; sent on only if they changed.
    pub fn set_conditions(&self, conditions: &[NodeCondition]) {
        self.conditions.send_if_modified(|current| {
            if current.as_deref() == Some(conditions) {
                false
            } else {
                *current = Some(conditions.to_vec());
                true
            }
        });
    }

    /// The desired conditions as the reporter gets them (`None` until restored), for
    /// another consumer such as remediation.
    pub fn subscribe(&self) -> watch::Receiver<Option<Vec<NodeCondition>>> {
        self.conditions.subscribe()
    }

    pub fn push_events(&self, events: Vec<ProblemEvent>) {
        if events.is_empty() {
            return;
        }
        let mut pending = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            pending.push(event);
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Stops the loop after one last attempt to write what is pending (bounded in time).
    pub async fn shutdown(self, grace: Duration) {
        drop(self.conditions);
        self.wake.notify_one();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            tracing::warn!(
                "the reporter did not finish within {grace:?}; some updates may be lost"
            );
        }
    }
}

pub fn spawn(
    client: Client,
    config: ReporterConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> ReporterHandle {
    let (conditions, conditions_rx) = watch::channel(None);
    let events = Arc::new(Mutex::new(PendingEvents::new(config.max_pending_events)));
    let wake = Arc::new(Notify::new());
    let (state_tx, state_rx) = oneshot::channel();
    health.set_reporting(true);
    let task = tokio::spawn(
        Reporter {
            client,
            config,
            metrics,
            health,
            conditions: conditions_rx,
            events: Arc::clone(&events),
            wake: Arc::clone(&wake),
        }
        .run(state_tx),
    );
    ReporterHandle {
        conditions,
        events,
        wake,
        node_state: Some(state_rx),
        task,
    }
}

struct Reporter {
    client: Client,
    config: ReporterConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    conditions: watch::Receiver<Option<Vec<NodeCondition>>>,
    events: Arc<Mutex<PendingEvents>>,
    wake: Arc<Notify>,
}

impl Reporter {
    fn failed(&self, verb: &str, resource: &str, failure: &ApiFailure) {
        self.metrics
            .api_error(verb, resource, &failure.code_label());
        let text = failure.describe(verb, resource);
        match failure {
            ApiFailure::Forbidden { .. } | ApiFailure::Invalid { .. } => tracing::error!("{text}"),
            _ => tracing::warn!("{text}"),
        }
    }

    async fn read_node(&self, nodes: &Api<Node>, backoff: &mut Backoff) -> Option<NodeState> {
        let resource = format!("nodes/{}", self.config.node_name);
        loop {
            self.health.reporter_progressed();
            match node::read(
                nodes,
                &self.config.node_name,
                &self.config.names,
                node::boot_time(),
            )
            .await
            {
                Ok(state) => return Some(state),
                Err(err) => self.failed("get", &resource, &ApiFailure::classify(&err)),
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                // The main loop is gone: stop.
                () = self.closed() => return None,
            }
        }
    }

    async fn closed(&self) {
        let mut rx = self.conditions.clone();
        while rx.changed().await.is_ok() {}
    }

    async fn run(mut self, state_tx: oneshot::Sender<NodeState>) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut backoff = Backoff::new(self.config.initial_backoff, self.config.max_backoff);
        let Some(state) = self.read_node(&nodes, &mut backoff).await else {
            return;
        };
        backoff.reset();
        tracing::info!(
            node = %self.config.node_name,
            boot = ?state.boot,
            "read the node: {} npd condition(s) to continue from",
            state.conditions.len()
        );
        self.health.set_node_read();
        let writer = EventWriter::new(
            self.client.clone(),
            NodeRef {
                name: self.config.node_name.clone(),
                uid: state.uid.clone(),
            },
            self.config.node_event_namespace.clone(),
            self.config.names.clone(),
        );
        let _ = state_tx.send(state);

        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut conditions_due = true;
        let mut retry_at: Option<Instant> = None;
        let mut open = true;
        let status_resource = format!("nodes/{}/status", self.config.node_name);
        while open || retry_at.is_none() {
            self.health.reporter_progressed();
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.conditions.changed(), if open => {
                    if changed.is_err() {
                        // Shutting down: one last pass, then stop.
                        open = false;
                    }
                    conditions_due = true;
                }
                _ = heartbeat.tick() => conditions_due = true,
                () = self.wake.notified() => {}
                () = retry => retry_at = None,
            }
            if retry_at.is_some_and(|at| at > Instant::now()) {
                if !open {
                    break;
                }
                continue;
            }
            let mut failed = false;
            if conditions_due {
                let desired = self.conditions.borrow().clone();
                if let Some(desired) = desired {
                    let started = Instant::now();
                    match node::patch_conditions(
                        &nodes,
                        &self.config.node_name,
                        &desired,
                        &self.config.names,
                        SystemTime::now(),
                    )
                    .await
                    {
                        Ok(()) => {
                            self.metrics
                                .condition_patch_seconds
                                .observe(started.elapsed().as_secs_f64());
                            conditions_due = false;
                        }
                        Err(err) => {
                            self.failed("patch", &status_resource, &ApiFailure::classify(&err));
                            failed = true;
                        }
                    }
                }
            }
            while !failed {
                let next = self
                    .events
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .front()
                    .cloned();
                let Some(event) = next else { break };
                match writer.write(&event).await {
                    Ok(()) => {
                        self.metrics
                            .events_written
                            .get_or_create(&ReasonLabels {
                                reason: event.reason.as_str().to_owned(),
                            })
                            .inc();
                        self.pop_written(&event);
                    }
                    Err(write) => {
                        self.failed(write.verb, &write.resource, &write.failure);
                        if write.failure.is_retryable() {
                            failed = true;
                        } else {
                            // A request the API server will never take: drop it, said above.
                            self.pop_written(&event);
                        }
                    }
                }
            }
            if failed {
                retry_at = Some(Instant::now() + backoff.next_delay());
            } else {
                backoff.reset();
            }
            if !open && !failed {
                break;
            }
        }
    }

    /// Removes the front event if it is still the one just written (a newer state of the
    /// series may have replaced it meanwhile; then that one is written next).
    fn pop_written(&self, written: &ProblemEvent) {
        let mut pending = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.front().is_some_and(|front| front == written) {
            pending.pop_front();
        }
    }
}
