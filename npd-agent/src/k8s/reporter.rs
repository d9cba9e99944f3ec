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
    engine::{EventTarget, NodeCondition, ProblemEvent},
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
            let result = node::read(
                nodes,
                &self.config.node_name,
                &self.config.names,
                node::boot_time(),
            )
            .await;
            let asked = match result {
                Ok(state) => return Some(state),
                Err(err) => {
                    let failure = ApiFailure::classify(&err);
                    self.failed("get", &resource, &failure);
                    failure.retry_after()
                }
            };
            let asked = asked.unwrap_or_default().min(self.config.max_backoff);
            let delay = backoff.next_delay().max(asked);
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
        let mut writer = EventWriter::new(
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
        // Server-wide backoff: the API server did not answer, or answered 5xx/429/401.
        let mut retry_at: Option<Instant> = None;
        // The last pass stopped at its bound with Events still due: go on at once.
        let mut more = false;
        let mut open = true;
        let status_resource = format!("nodes/{}/status", self.config.node_name);
        while open || retry_at.is_none() {
            self.health.reporter_progressed();
            let wake_at = if more {
                Some(Instant::now())
            } else {
                retry_at.or_else(|| self.lock_events().next_due(Instant::now()))
            };
            let due = async {
                match wake_at {
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
                () = due => {}
            }
            if retry_at.is_some_and(|at| at > Instant::now()) {
                if !open {
                    break;
                }
                continue;
            }
            retry_at = None;
            more = false;
            let mut failed = false;
            let mut server_failed = false;
            // What the server asked to wait (Retry-After), if it did.
            let mut asked: Option<Duration> = None;
            if conditions_due {
                let desired = self.conditions.borrow().clone();
                if let Some(desired) = desired {
                    let started = Instant::now();
                    let result = node::patch_conditions(
                        &nodes,
                        &self.config.node_name,
                        &desired,
                        &self.config.names,
                        SystemTime::now(),
                    )
                    .await;
                    self.health.reporter_progressed();
                    match result {
                        Ok(uid) => {
                            if !uid.is_empty() && uid != writer.node_uid() {
                                // Deleted and created again under the same name: Events
                                // must name the Node that exists now.
                                tracing::warn!(
                                    node = %self.config.node_name,
                                    "the Node was recreated (uid {} -> {uid}); Events name the \
                                     new one",
                                    writer.node_uid()
                                );
                                writer.set_node_uid(uid);
                            }
                            self.metrics
                                .condition_patch_seconds
                                .observe(started.elapsed().as_secs_f64());
                            conditions_due = false;
                        }
                        Err(err) => {
                            let failure = ApiFailure::classify(&err);
                            self.failed("patch", &status_resource, &failure);
                            failed = true;
                            // Refused (RBAC, the Node gone) is about the Node only: the
                            // Events still go, the patch is retried after the backoff.
                            server_failed = is_server_wide(&failure);
                            asked = failure.retry_after();
                        }
                    }
                }
            }
            if !server_failed {
                match self.drain(&writer).await {
                    Pass::Done => {}
                    Pass::Bounded => more = true,
                    Pass::ServerFailed(retry_after) => {
                        failed = true;
                        asked = asked.max(retry_after);
                    }
                }
            }
            self.publish_queue();
            if failed {
                // Honour Retry-After, but never past the backoff ceiling: a server (or a
                // proxy) asking for an hour must not silence the node for an hour.
                let asked = asked.unwrap_or_default().min(self.config.max_backoff);
                let delay = backoff.next_delay().max(asked);
                retry_at = Some(Instant::now() + delay);
            } else {
                backoff.reset();
            }
            if !open && !failed && !more {
                break;
            }
        }
    }

    /// The queue's length and its parked items as metrics: a queue that only grows, or items
    /// that stay parked, are what the `NpdEventsParked` alert watches.
    fn publish_queue(&self) {
        let (pending, parked) = {
            let events = self.lock_events();
            (events.len(), events.parked())
        };
        self.metrics
            .events_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.metrics
            .events_parked
            .set(i64::try_from(parked).unwrap_or(i64::MAX));
    }

    fn lock_events(&self) -> std::sync::MutexGuard<'_, PendingEvents> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One pass over the Events due: each item (an Event to one target) is written and
    /// judged on its own, so no item waits for another. Progress is marked after every
    /// request, and the pass ends after [`PASS_BUDGET`] (or a heartbeat) so that the
    /// conditions' heartbeat is not held up by a long queue.
    async fn drain(&self, writer: &EventWriter) -> Pass {
        let deadline = Instant::now() + self.config.heartbeat.min(PASS_BUDGET);
        let due = self.lock_events().due(Instant::now());
        for key in due {
            if Instant::now() >= deadline {
                return Pass::Bounded;
            }
            let Some(event) = self.lock_events().get(&key) else {
                continue;
            };
            let result = writer.write(&event, &key.target).await;
            self.health.reporter_progressed();
            let write = match result {
                Ok(()) => {
                    self.metrics
                        .events_written
                        .get_or_create(&ReasonLabels {
                            reason: event.reason.as_str().to_owned(),
                        })
                        .inc();
                    let mut pending = self.lock_events();
                    pending.written(&key, &event);
                    pending.unpark_transient();
                    continue;
                }
                Err(write) => write,
            };
            self.failed(write.verb, &write.resource, &write.failure);
            match Verdict::of(&write.failure, &key.target) {
                Verdict::Drop => {
                    self.metrics
                        .api_error("drop", &write.resource, &write.failure.code_label());
                    tracing::error!(
                        reason = event.reason.as_str(),
                        "dropped the {} Event about {} for good: the API server refused it \
                         (HTTP {}); the other Events go on",
                        event.reason.as_str(),
                        describe_target(&key.target),
                        write.failure.code_label(),
                    );
                    self.lock_events().remove(&key);
                }
                Verdict::Park => {
                    let wait = self
                        .lock_events()
                        .park(&key, Instant::now(), false, |n| self.item_delay(n));
                    tracing::warn!(
                        "the {} Event about {} waits {:?} before its next try; the other \
                         Events go on",
                        event.reason.as_str(),
                        describe_target(&key.target),
                        wait.unwrap_or_default()
                    );
                }
                Verdict::Server => {
                    self.lock_events()
                        .park(&key, Instant::now(), true, |n| self.item_delay(n));
                    return Pass::ServerFailed(write.failure.retry_after());
                }
            }
        }
        Pass::Done
    }

    /// The wait of an item after its `failures`-th failure: doubling, capped.
    fn item_delay(&self, failures: u32) -> Duration {
        self.config
            .initial_backoff
            .saturating_mul(1u32 << failures.min(16))
            .min(self.config.max_backoff)
    }
}

/// The longest pass over the Events before the loop comes round again (conditions,
/// heartbeat, shutdown): with 512 Events queued and each write allowed 20 s, an unbounded
/// pass could take hours.
const PASS_BUDGET: Duration = Duration::from_secs(30);

/// How a pass over the Events ended.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    /// Nothing due is left.
    Done,
    /// It reached its time bound; more is due.
    Bounded,
    /// The API server itself failed: back off before the next pass, at least as long as it
    /// asked (Retry-After).
    ServerFailed(Option<Duration>),
}

/// What to do with an item the API server did not take.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Refused for good: a Pod's namespace refuses Events (403, e.g. being deleted), the
    /// namespace or object is gone (404), the Event is invalid (400/422).
    Drop,
    /// Refused for this item only, maybe not for ever (403 on the Node's Event namespace
    /// until RBAC is fixed, 409): retry it on its own backoff.
    Park,
    /// The server failed (5xx, 429, 401, timeouts, connections): stop the pass and back off.
    Server,
}

impl Verdict {
    fn of(failure: &ApiFailure, target: &EventTarget) -> Self {
        match failure {
            ApiFailure::Forbidden { code: 403, .. } if *target != EventTarget::Node => Self::Drop,
            ApiFailure::NotFound | ApiFailure::Invalid { .. } => Self::Drop,
            _ if is_server_wide(failure) => Self::Server,
            ApiFailure::Forbidden { .. } | ApiFailure::Conflict => Self::Park,
            ApiFailure::Transient { .. } => Self::Server,
        }
    }
}

/// A failure of the server (or of npd's credentials), not of one request.
fn is_server_wide(failure: &ApiFailure) -> bool {
    matches!(
        failure,
        ApiFailure::Transient { .. } | ApiFailure::Forbidden { code: 401, .. }
    )
}

fn describe_target(target: &EventTarget) -> String {
    match target {
        EventTarget::Node => "the Node".to_owned(),
        EventTarget::Pod {
            namespace, name, ..
        } => format!("pod {namespace}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use super::*;
    use crate::{
        engine::EventType,
        k8s::fake::{FakeApi, Reply},
    };

    const NODE: &str = "node-1";

    fn pod(namespace: &str) -> EventTarget {
        EventTarget::Pod {
            namespace: namespace.to_owned(),
            name: format!("{namespace}-pod"),
            uid: format!("{namespace}-uid"),
        }
    }

    fn event(key: &str, targets: Vec<EventTarget>) -> ProblemEvent {
        ProblemEvent {
            reason: crate::detectors::fd::FD_EXHAUSTED,
            event_type: EventType::Warning,
            message: format!("{key} hit EMFILE"),
            targets,
            aggregation_key: key.to_owned(),
            count: 1,
            first_timestamp: SystemTime::now(),
            last_timestamp: SystemTime::now(),
            series_update: false,
            unreported_elsewhere: 0,
        }
    }

    struct Run {
        api: FakeApi,
        handle: ReporterHandle,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    }

    async fn start(api: FakeApi, heartbeat: Duration, reporter_stall: Duration) -> Run {
        start_with(api, heartbeat, reporter_stall, Duration::from_millis(400)).await
    }

    async fn start_with(
        api: FakeApi,
        heartbeat: Duration,
        reporter_stall: Duration,
        max_backoff: Duration,
    ) -> Run {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(Duration::from_secs(3600), reporter_stall));
        let mut handle = spawn(
            api.client(),
            ReporterConfig {
                node_name: NODE.to_owned(),
                names: ConditionNames::new(&crate::detectors::catalog().conditions),
                heartbeat,
                node_event_namespace: "default".to_owned(),
                max_pending_events: 1024,
                initial_backoff: Duration::from_millis(50),
                max_backoff,
            },
            Arc::clone(&metrics),
            Arc::clone(&health),
        );
        handle.node_state.take().unwrap().await.unwrap();
        handle.set_conditions(&[]);
        Run {
            api,
            handle,
            health,
            metrics,
        }
    }

    /// Waits until `done` holds of the Events written (namespace, body), or panics.
    async fn wait_written(
        api: &FakeApi,
        within: Duration,
        done: impl Fn(&[(String, serde_json::Value)]) -> bool,
    ) {
        let until = Instant::now() + within;
        loop {
            let written = api.events_written();
            if done(&written) {
                return;
            }
            assert!(
                Instant::now() < until,
                "not written in {within:?}: {written:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn written_to(written: &[(String, serde_json::Value)], namespace: &str, key: &str) -> bool {
        written.iter().any(|(ns, body)| {
            ns == namespace && body["message"].as_str().is_some_and(|m| m.starts_with(key))
        })
    }

    #[tokio::test]
    async fn a_refused_target_is_dropped_and_blocks_nothing() {
        let api = FakeApi::start("uid-1").await;
        // Events in namespace `closing` are refused for good (a namespace being deleted);
        // namespace `gone` does not exist.
        api.script(|method, path| match (method, path) {
            ("POST", p) if p.contains("/namespaces/closing/") => Some(Reply::status(403)),
            ("POST", p) if p.contains("/namespaces/gone/") => Some(Reply::status(404)),
            ("POST", p) if p.contains("/namespaces/bad/") => Some(Reply::status(422)),
            _ => None,
        });
        let run = start(api, Duration::from_secs(60), Duration::from_secs(60)).await;
        run.handle.push_events(vec![
            event("first", vec![EventTarget::Node, pod("closing")]),
            event("second", vec![EventTarget::Node, pod("gone")]),
            event("third", vec![EventTarget::Node, pod("bad")]),
            event("fourth", vec![EventTarget::Node, pod("fine")]),
        ]);
        wait_written(&run.api, Duration::from_secs(5), |w| {
            ["first", "second", "third", "fourth"]
                .iter()
                .all(|k| written_to(w, "default", k))
                && written_to(w, "fine", "fourth")
        })
        .await;
        // Each refused target was tried once, not retried for ever.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let refused = run.api.seen().iter().filter(|s| s.status >= 400).count();
        assert_eq!(refused, 3, "{:#?}", run.api.seen());
        let metrics = run.metrics.encode();
        for (ns, code) in [("closing", 403), ("gone", 404), ("bad", 422)] {
            let line = format!(
                "npd_api_errors_total{{verb=\"drop\",resource=\"events (namespace {ns})\",code=\"{code}\"}} 1"
            );
            assert!(metrics.contains(&line), "{line} in\n{metrics}");
        }
    }

    #[tokio::test]
    async fn an_item_that_keeps_failing_does_not_hold_back_the_next() {
        let api = FakeApi::start("uid-1").await;
        // The Node's Event namespace refuses (RBAC not granted yet), a Pod's accepts.
        api.script(|method, path| {
            (method == "POST" && path.contains("/namespaces/default/")).then(|| Reply::status(403))
        });
        let run = start(api, Duration::from_secs(60), Duration::from_secs(60)).await;
        run.handle.push_events(vec![
            event("one", vec![EventTarget::Node, pod("a")]),
            event("two", vec![EventTarget::Node, pod("b")]),
        ]);
        wait_written(&run.api, Duration::from_secs(3), |w| {
            written_to(w, "a", "one") && written_to(w, "b", "two")
        })
        .await;
        // RBAC fixed: the parked Node Events go out on their own backoff.
        run.api.script(|_, _| None);
        wait_written(&run.api, Duration::from_secs(3), |w| {
            written_to(w, "default", "one") && written_to(w, "default", "two")
        })
        .await;
    }

    #[tokio::test]
    async fn a_long_drain_stays_live_and_keeps_the_heartbeat() {
        let api = FakeApi::start("uid-1").await;
        // Every request takes 100 ms: 40 writes take 4 s, ten times the stall limit.
        api.script(|_, _| {
            Some(Reply {
                delay: Duration::from_millis(100),
                ..Reply::default()
            })
        });
        let run = start(api, Duration::from_millis(500), Duration::from_millis(400)).await;
        let events: Vec<_> = (0..20)
            .map(|i| event(&format!("e{i:02}"), vec![EventTarget::Node, pod("a")]))
            .collect();
        run.handle.push_events(events);
        let until = Instant::now() + Duration::from_secs(10);
        while run.api.events_written().len() < 40 {
            let live = run.health.check_live();
            assert!(live.is_empty(), "during the drain: {live:?}");
            assert!(Instant::now() < until, "not drained");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The Node's heartbeat went on between the Events.
        let seen = run.api.seen();
        let event_times: Vec<_> = seen
            .iter()
            .filter(|s| s.path.contains("/events"))
            .map(|s| s.at)
            .collect();
        let (first, last) = (event_times[0], event_times[event_times.len() - 1]);
        let heartbeats = seen
            .iter()
            .filter(|s| s.method == "PATCH" && s.path.ends_with("/status"))
            .filter(|s| s.at > first && s.at < last)
            .count();
        assert!(
            heartbeats >= 3,
            "{heartbeats} status patches during a 4 s drain"
        );
    }

    /// Answers the first `n` requests matching `filter` with `reply`, then as usual.
    fn first(
        n: usize,
        filter: fn(&str, &str) -> bool,
        reply: Reply,
    ) -> impl FnMut(&str, &str) -> Option<Reply> + Send + 'static {
        let mut left = n;
        move |method, path| {
            (filter(method, path) && left > 0).then(|| {
                left -= 1;
                reply.clone()
            })
        }
    }

    fn creates(method: &str, path: &str) -> bool {
        method == "POST" && path.ends_with("/events")
    }

    fn retry_after(status: u16, secs: u64) -> Reply {
        Reply {
            status,
            retry_after: Some(secs),
            ..Reply::default()
        }
    }

    #[tokio::test]
    async fn retry_after_is_honoured_and_bounded() {
        // 1 s asked, backoff would retry after 50 ms: the next try waits the second.
        let api = FakeApi::start("uid-1").await;
        api.script(first(1, creates, retry_after(429, 1)));
        let run = start_with(
            api,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
        .await;
        run.handle
            .push_events(vec![event("asked", vec![EventTarget::Node])]);
        wait_written(&run.api, Duration::from_secs(5), |w| {
            written_to(w, "default", "asked")
        })
        .await;
        let seen = run.api.seen();
        let tries: Vec<_> = seen
            .iter()
            .filter(|s| s.path.ends_with("/events"))
            .collect();
        assert_eq!(tries.len(), 2, "{tries:#?}");
        let waited = tries[1].at - tries[0].at;
        assert!(
            waited >= Duration::from_millis(950),
            "retried after {waited:?}"
        );

        // An hour asked (429, then 503): bounded by the backoff ceiling (400 ms here), not
        // slept inside the client for an hour.
        let api = FakeApi::start("uid-1").await;
        api.script(first(2, creates, retry_after(429, 3600)));
        let run = start(api, Duration::from_secs(60), Duration::from_secs(60)).await;
        run.handle
            .push_events(vec![event("hour", vec![EventTarget::Node])]);
        wait_written(&run.api, Duration::from_secs(3), |w| {
            written_to(w, "default", "hour")
        })
        .await;
        assert!(run.health.check_live().is_empty());
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_nothing_is_written_twice() {
        for status in [500, 503, 504] {
            let api = FakeApi::start("uid-1").await;
            api.script(first(
                5,
                |_, path| path.contains("/events"),
                Reply::status(status),
            ));
            let run = start(api, Duration::from_secs(60), Duration::from_secs(60)).await;
            let keys: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
            run.handle.push_events(
                keys.iter()
                    .map(|k| event(k, vec![EventTarget::Node, pod("a")]))
                    .collect(),
            );
            wait_written(&run.api, Duration::from_secs(10), |w| w.len() >= 8).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let written = run.api.events_written();
            assert_eq!(
                written.len(),
                8,
                "{status}: each Event once to each target: {written:#?}"
            );
            for key in &keys {
                assert!(written_to(&written, "default", key) && written_to(&written, "a", key));
            }
        }
    }

    #[tokio::test]
    async fn a_conflict_on_create_updates_the_existing_event() {
        let api = FakeApi::start("uid-1").await;
        api.script(first(1, creates, Reply::status(409)));
        let run = start(api, Duration::from_secs(60), Duration::from_secs(60)).await;
        run.handle
            .push_events(vec![event("exists", vec![EventTarget::Node])]);
        wait_written(&run.api, Duration::from_secs(3), |w| !w.is_empty()).await;
        let seen = run.api.seen();
        let calls: Vec<_> = seen
            .iter()
            .filter(|s| s.path.contains("/events"))
            .map(|s| (s.method.as_str(), s.status))
            .collect();
        assert_eq!(calls, [("POST", 409), ("PATCH", 200)]);
    }

    #[tokio::test]
    async fn events_name_the_node_that_exists_now() {
        let api = FakeApi::start("uid-old").await;
        let run = start(api, Duration::from_millis(200), Duration::from_secs(60)).await;
        run.handle
            .push_events(vec![event("before", vec![EventTarget::Node])]);
        wait_written(&run.api, Duration::from_secs(3), |w| {
            written_to(w, "default", "before")
        })
        .await;
        // The Node is deleted (status patches 404) and created again with a new uid.
        run.api.set_node_uid("uid-new");
        run.api.script(first(
            2,
            |m, p| m == "PATCH" && p.ends_with("/status"),
            Reply::status(404),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        run.handle
            .push_events(vec![event("after", vec![EventTarget::Node])]);
        wait_written(&run.api, Duration::from_secs(3), |w| {
            written_to(w, "default", "after")
        })
        .await;
        let uid = |key: &str| {
            run.api
                .events_written()
                .into_iter()
                .find(|(_, b)| b["message"].as_str().is_some_and(|m| m.starts_with(key)))
                .map(|(_, b)| b["involvedObject"]["uid"].clone())
                .unwrap()
        };
        assert_eq!(uid("before"), "uid-old");
        assert_eq!(uid("after"), "uid-new");
    }
}
