//! Writing the engine's Events as core/v1 Events: one per target (the Node, and the Pod when
//! known), created once per series and updated (count, last time, message) as it grows.
//!
//! Names are derived from the series, so a create retried after a lost response finds its
//! own Event (409) and updates it instead of writing a duplicate.

use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{ApiFailure, k8s_time};
use crate::engine::{EventTarget, ProblemEvent};

/// The component name Events are reported by.
pub const COMPONENT: &str = "npd";

/// Who an Event is about, as the exporter knows the Node.
#[derive(Clone, Debug)]
pub struct NodeRef {
    pub name: String,
    pub uid: String,
}

/// Writes Events; stateless but for where to write them.
pub struct EventWriter {
    client: Client,
    node: NodeRef,
    /// Namespace for Events about the Node (cluster-scoped objects' Events go to one).
    node_event_namespace: String,
    names: super::node::ConditionNames,
}

/// A failed write: which call and why.
#[derive(Debug)]
pub struct WriteFailure {
    pub verb: &'static str,
    pub resource: String,
    pub failure: ApiFailure,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("node", &self.node)
            .field("node_event_namespace", &self.node_event_namespace)
            .finish_non_exhaustive()
    }
}

impl EventWriter {
    pub fn new(
        client: Client,
        node: NodeRef,
        node_event_namespace: String,
        names: super::node::ConditionNames,
    ) -> Self {
        Self {
            client,
            node,
            node_event_namespace,
            names,
        }
    }

    pub fn node_uid(&self) -> &str {
        &self.node.uid
    }

    /// The Node was recreated under the same name: Events name the new one.
    pub fn set_node_uid(&mut self, uid: String) {
        self.node.uid = uid;
    }

    /// Writes `event` to `target`. Each target is written and judged on its own: the
    /// reporter drops a target the API server refuses for good and retries one that failed
    /// for the moment, without holding back the other targets and Events.
    pub async fn write(
        &self,
        event: &ProblemEvent,
        target: &EventTarget,
    ) -> Result<(), WriteFailure> {
        let (namespace, reference) = self.reference(target);
        let name = event_name(&reference, event);
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let message = full_message(event);
        let object = self.object(&name, &namespace, reference, event, &message);
        let result = if event.series_update {
            match self.update(&api, &name, event, &message).await {
                // Never created (lost, or written by an earlier agent run): create it.
                Err(err) if is_not_found(&err) => {
                    self.create_or_update(&api, &object, event, &message).await
                }
                other => other,
            }
        } else {
            self.create_or_update(&api, &object, event, &message).await
        };
        result.map_err(|err| WriteFailure {
            verb: if event.series_update {
                "patch"
            } else {
                "create"
            },
            resource: format!("events (namespace {namespace})"),
            failure: ApiFailure::classify(&err),
        })
    }

    /// Creates the Event; if it exists (our own earlier create succeeded after all), updates.
    async fn create_or_update(
        &self,
        api: &Api<Event>,
        object: &Event,
        event: &ProblemEvent,
        message: &str,
    ) -> Result<(), kube::Error> {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => Ok(()),
            Err(err) if ApiFailure::classify(&err) == ApiFailure::Conflict => {
                let name = object.metadata.name.as_deref().unwrap_or_default();
                self.update(api, name, event, message).await
            }
            Err(err) => Err(err),
        }
    }

    async fn update(
        &self,
        api: &Api<Event>,
        name: &str,
        event: &ProblemEvent,
        message: &str,
    ) -> Result<(), kube::Error> {
        let patch = json!({
            "count": i32::try_from(event.count).unwrap_or(i32::MAX),
            "lastTimestamp": k8s_time(event.last_timestamp),
            "message": message,
        });
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
    }

    fn reference(&self, target: &EventTarget) -> (String, ObjectReference) {
        match target {
            EventTarget::Node => (
                self.node_event_namespace.clone(),
                ObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Node".to_owned()),
                    name: Some(self.node.name.clone()),
                    uid: Some(self.node.uid.clone()).filter(|u| !u.is_empty()),
                    ..ObjectReference::default()
                },
            ),
            EventTarget::Pod {
                namespace,
                name,
                uid,
            } => (
                namespace.clone(),
                ObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    uid: Some(uid.clone()),
                    ..ObjectReference::default()
                },
            ),
        }
    }

    fn object(
        &self,
        name: &str,
        namespace: &str,
        involved_object: ObjectReference,
        event: &ProblemEvent,
        message: &str,
    ) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            involved_object,
            reason: Some(self.names.reason_out(event.reason.as_str()).to_owned()),
            message: Some(message.to_owned()),
            type_: Some(event.event_type.as_str().to_owned()),
            count: Some(i32::try_from(event.count).unwrap_or(i32::MAX)),
            first_timestamp: Some(k8s_time(event.first_timestamp)),
            last_timestamp: Some(k8s_time(event.last_timestamp)),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: Some(self.node.name.clone()),
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.node.name.clone()),
            ..Event::default()
        }
    }
}

/// The message, with what the engine had to fold in from forgotten series.
fn full_message(event: &ProblemEvent) -> String {
    if event.unreported_elsewhere > 0 {
        format!(
            "{} (and {} more {} occurrences npd could not report separately)",
            event.message,
            event.unreported_elsewhere,
            event.reason.as_str()
        )
    } else {
        event.message.clone()
    }
}

fn is_not_found(err: &kube::Error) -> bool {
    ApiFailure::classify(err) == ApiFailure::NotFound
}

/// `<object>.<16 hex digits>`, like the names client-go gives Events, but derived from the
/// series (key and first time), so every writer of a series agrees on it.
pub fn event_name(reference: &ObjectReference, event: &ProblemEvent) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    event.aggregation_key.hash(&mut hasher);
    event.first_timestamp.hash(&mut hasher);
    reference.kind.hash(&mut hasher);
    let object = reference.name.as_deref().unwrap_or("npd");
    // Names are at most 253 characters; leave room for the suffix.
    let object: String = object.chars().take(200).collect();
    format!("{object}.{:016x}", hasher.finish())
}

/// One queued Event to one target: the unit the reporter writes and judges.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ItemKey {
    pub aggregation_key: String,
    pub target: EventTarget,
}

#[derive(Debug)]
struct Item {
    /// The Event, with `targets` holding only this item's target.
    event: ProblemEvent,
    /// Not to be tried before this (after a failure of this item).
    not_before: Option<Instant>,
    failures: u32,
    /// Parked for a failure that may have been the server's, not this item's: a later
    /// successful write makes it due again at once.
    parked_transient: bool,
}

impl Item {
    fn key(&self) -> ItemKey {
        ItemKey {
            aggregation_key: self.event.aggregation_key.clone(),
            target: self.event.targets[0].clone(),
        }
    }

    fn is(&self, key: &ItemKey) -> bool {
        self.event.aggregation_key == key.aggregation_key && self.event.targets[0] == key.target
    }
}

/// Events waiting for the API server, one item per Event and target, bounded: a storm or a
/// long outage collapses into counts instead of growing a queue. Items are written in
/// order, but none waits for another: an item that failed is parked on its own backoff and
/// the next one is written meanwhile.
#[derive(Debug)]
pub struct PendingEvents {
    queue: VecDeque<Item>,
    capacity: usize,
    /// Occurrences of items pushed out by the bound, by reason and whether they were about
    /// the Node, to be folded into the next item of that reason and kind of target.
    overflow: HashMap<(&'static str, bool), u64>,
}

impl PendingEvents {
    /// `capacity` items (an Event on the Node and its Pod is two).
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            overflow: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Items that failed at least once and wait for their next try.
    pub fn parked(&self) -> usize {
        self.queue.iter().filter(|item| item.failures > 0).count()
    }

    /// Queues an event, one item per target; a later state of a series already queued
    /// replaces it in place (an unsent create stays a create).
    pub fn push(&mut self, mut event: ProblemEvent) {
        for target in std::mem::take(&mut event.targets) {
            let mut one = event.clone();
            one.targets = vec![target];
            self.push_one(one);
        }
    }

    fn push_one(&mut self, mut event: ProblemEvent) {
        if let Some(queued) = self.queue.iter_mut().find(|q| {
            q.event.aggregation_key == event.aggregation_key
                && q.event.targets[0] == event.targets[0]
        }) {
            event.series_update = queued.event.series_update && event.series_update;
            event.first_timestamp = queued.event.first_timestamp;
            event.unreported_elsewhere += queued.event.unreported_elsewhere;
            queued.event = event;
            return;
        }
        if self.queue.len() >= self.capacity
            && let Some(dropped) = self.queue.pop_front()
        {
            let node = dropped.event.targets[0] == EventTarget::Node;
            *self
                .overflow
                .entry((dropped.event.reason.as_str(), node))
                .or_default() += dropped.event.count + dropped.event.unreported_elsewhere;
        }
        self.queue.push_back(Item {
            event,
            not_before: None,
            failures: 0,
            parked_transient: false,
        });
    }

    /// The items due at `now`, in queue order.
    pub fn due(&self, now: Instant) -> Vec<ItemKey> {
        self.queue
            .iter()
            .filter(|item| item.not_before.is_none_or(|at| at <= now))
            .map(Item::key)
            .collect()
    }

    /// When the next item is due (now if one is), if any is queued.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        self.queue
            .iter()
            .map(|item| item.not_before.unwrap_or(now))
            .min()
    }

    /// The item to write now, with any overflow of its reason folded in.
    pub fn get(&mut self, key: &ItemKey) -> Option<ProblemEvent> {
        let item = self.queue.iter_mut().find(|item| item.is(key))?;
        let node = key.target == EventTarget::Node;
        if let Some(lost) = self.overflow.remove(&(item.event.reason.as_str(), node)) {
            item.event.unreported_elsewhere += lost;
        }
        Some(item.event.clone())
    }

    /// `written` went out: removes the item if it is still that state (a newer state of
    /// the series may have replaced it meanwhile; then that one is written next).
    pub fn written(&mut self, key: &ItemKey, written: &ProblemEvent) {
        self.queue
            .retain(|item| !(item.is(key) && item.event == *written));
    }

    /// The API server refused the item for good: forget it, whatever its state.
    pub fn remove(&mut self, key: &ItemKey) {
        self.queue.retain(|item| !item.is(key));
    }

    /// The item failed: it waits `backoff(failures so far)` before its next try, while the
    /// others go on. Returns the wait.
    pub fn park(
        &mut self,
        key: &ItemKey,
        now: Instant,
        transient: bool,
        backoff: impl FnOnce(u32) -> Duration,
    ) -> Option<Duration> {
        let item = self.queue.iter_mut().find(|item| item.is(key))?;
        let wait = backoff(item.failures);
        item.failures = item.failures.saturating_add(1);
        item.not_before = Some(now + wait);
        item.parked_transient = transient;
        Some(wait)
    }

    /// A write went through, so the server is answering again: items parked only because
    /// it was not are due again.
    pub fn unpark_transient(&mut self) {
        for item in &mut self.queue {
            if item.parked_transient {
                item.not_before = None;
                item.parked_transient = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::engine::EventType;

    fn event(key: &str, count: u64, update: bool) -> ProblemEvent {
        ProblemEvent {
            reason: crate::detectors::oom::OOM_KILLING,
            event_type: EventType::Warning,
            message: format!("{key} x{count}"),
            targets: vec![EventTarget::Node],
            aggregation_key: key.to_owned(),
            count,
            first_timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(count),
            last_timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(100 + count),
            series_update: update,
            unreported_elsewhere: 0,
        }
    }

    #[test]
    fn a_series_collapses_in_place_and_the_bound_keeps_counts() {
        let mut pending = PendingEvents::new(2);
        let first = |p: &mut PendingEvents| {
            let key = p.due(Instant::now()).into_iter().next().unwrap();
            p.get(&key).unwrap()
        };
        pending.push(event("a", 1, false));
        pending.push(event("a", 5, true));
        assert_eq!(pending.len(), 1);
        let front = first(&mut pending);
        assert_eq!(front.count, 5);
        assert!(!front.series_update, "never sent: still a create");
        assert_eq!(
            front.first_timestamp,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1)
        );

        pending.push(event("b", 2, false));
        pending.push(event("c", 3, false));
        assert_eq!(pending.len(), 2, "bounded");
        // "a" (5 occurrences) was pushed out: its count rides on the next OOMKilling event.
        let front = first(&mut pending);
        assert_eq!(front.aggregation_key, "b");
        assert_eq!(front.unreported_elsewhere, 5);
    }

    #[test]
    fn parked_counts_items_that_failed_until_they_are_written() {
        let mut pending = PendingEvents::new(8);
        pending.push(event("a", 1, false));
        pending.push(event("b", 1, false));
        assert_eq!(pending.parked(), 0);
        let now = Instant::now();
        let keys = pending.due(now);
        pending.park(&keys[0], now, true, |_| Duration::from_secs(5));
        assert_eq!(pending.parked(), 1);
        assert_eq!(pending.due(now).len(), 1, "the other one goes on");
        // Due again once the server answers, but still parked until it is written.
        pending.unpark_transient();
        assert_eq!(pending.parked(), 1);
        let written = pending.get(&keys[0]).unwrap();
        pending.written(&keys[0], &written);
        assert_eq!(pending.parked(), 0);
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn names_are_stable_per_series_and_valid() {
        let node = ObjectReference {
            kind: Some("Node".into()),
            name: Some("node-1".into()),
            ..ObjectReference::default()
        };
        let a = event_name(&node, &event("a", 1, false));
        assert_eq!(a, event_name(&node, &event("a", 1, true)));
        assert_ne!(a, event_name(&node, &event("b", 1, false)));
        assert!(a.starts_with("node-1.") && a.len() == "node-1.".len() + 16);
    }
}
