//! A watch of this node's pods (`spec.nodeName`), kept as a directory of pod uid -> name,
//! namespace and container ids -> names, for attribution. Deleted pods stay a while: the
//! problem that killed a pod is often attributed after the pod is gone.

use std::{
    collections::VecDeque,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

use crate::attribution::{PodDirectoryMap, PodEntry, bare_container_id};

/// How long a deleted pod stays resolvable.
const KEEP_DELETED: Duration = Duration::from_secs(600);

pub type SharedPods = Arc<RwLock<PodDirectoryMap>>;

pub fn entry(pod: &Pod) -> Option<(String, PodEntry)> {
    let uid = pod.metadata.uid.clone()?;
    let mut entry = PodEntry {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        ..PodEntry::default()
    };
    if let Some(status) = &pod.status {
        for container in status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .chain(status.ephemeral_container_statuses.iter().flatten())
        {
            if let Some(id) = &container.container_id {
                entry
                    .containers
                    .insert(bare_container_id(id).to_owned(), container.name.clone());
            }
            // A restarted container's previous id: its OOM kill is attributed after the restart.
            if let Some(previous) = container
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.container_id.as_ref())
            {
                entry.containers.insert(
                    bare_container_id(previous).to_owned(),
                    container.name.clone(),
                );
            }
        }
    }
    Some((uid, entry))
}

/// Watches until the stream ends (it retries internally with backoff); `ready` is set once
/// the first full list arrived.
pub async fn watch(
    client: Client,
    node_name: String,
    pods: SharedPods,
    ready: Arc<std::sync::atomic::AtomicBool>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut deleted: VecDeque<(Instant, String)> = VecDeque::new();
    let mut fresh: Option<PodDirectoryMap> = None;
    let stream = watcher(api, config).default_backoff();
    futures_util::pin_mut!(stream);
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(err) => {
                tracing::warn!("watching pods on {node_name}: {err}; retrying");
                continue;
            }
        };
        let mut directory = pods.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Init => fresh = Some(PodDirectoryMap::default()),
            watcher::Event::InitApply(pod) => {
                if let (Some(fresh), Some((uid, entry))) = (fresh.as_mut(), entry(&pod)) {
                    fresh.insert(uid, entry);
                }
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = fresh.take() {
                    *directory = fresh;
                }
                ready.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            watcher::Event::Apply(pod) => {
                if let Some((uid, entry)) = entry(&pod) {
                    directory.insert(uid, entry);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid {
                    deleted.push_back((Instant::now() + KEEP_DELETED, uid));
                }
            }
        }
        let now = Instant::now();
        while deleted.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, uid)) = deleted.pop_front() {
                directory.remove(&uid);
            }
        }
    }
}
