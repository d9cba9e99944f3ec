//! Who a problem belongs to: cgroup id -> cgroup path ([`CgroupIndex`]) -> pod and container,
//! or systemd unit ([`parse_cgroup_path`]), with names from a [`PodDirectory`] when one is
//! present (the API-server pod watch; absent in standalone mode).

mod cgroup_path;
mod index;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

pub use cgroup_path::{CgroupOwner, PodCgroup, Qos, from_kernel_names, parse_cgroup_path};
pub use index::{CgroupIndex, CgroupIndexOptions, ScanSummary};

use crate::event::{Attribution, Event, PodRef};

/// A pod's identity as the API server knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    /// The container's name, when the container id was given and is known.
    pub container: Option<String>,
}

/// Names for pod uids and container ids, kept by whoever watches the node's pods.
pub trait PodDirectory {
    /// The pod with this uid and, if `container_id` (bare, without `containerd://`) is one of
    /// its containers (init and ephemeral included), that container's name.
    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodIdentity>;
}

/// A directory shared with the watch that fills it: the watch writes, the Attributor reads.
impl<T: PodDirectory> PodDirectory for RwLock<T> {
    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodIdentity> {
        self.read()
            .unwrap_or_else(PoisonError::into_inner)
            .lookup(pod_uid, container_id)
    }
}

/// One pod in a [`PodDirectoryMap`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodEntry {
    pub namespace: String,
    pub name: String,
    /// Bare container id -> container name.
    pub containers: HashMap<String, String>,
}

/// A ready-made [`PodDirectory`]: pod uid -> pod.
#[derive(Clone, Debug, Default)]
pub struct PodDirectoryMap {
    pods: HashMap<String, PodEntry>,
}

impl PodDirectoryMap {
    pub fn insert(&mut self, uid: impl Into<String>, pod: PodEntry) {
        self.pods.insert(uid.into(), pod);
    }

    pub fn remove(&mut self, uid: &str) -> Option<PodEntry> {
        self.pods.remove(uid)
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

impl PodDirectory for PodDirectoryMap {
    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodIdentity> {
        let pod = self.pods.get(pod_uid)?;
        Some(PodIdentity {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            container: container_id.and_then(|id| pod.containers.get(id).cloned()),
        })
    }
}

/// A container id from a pod's status (`containerd://<id>`, `cri-o://<id>`,
/// `docker://<id>`) as it appears in cgroup paths: bare.
pub fn bare_container_id(status_id: &str) -> &str {
    status_id.split_once("://").map_or(status_id, |(_, id)| id)
}

/// Turns a record's cgroup id into an [`Attribution`].
pub struct Attributor {
    index: CgroupIndex,
    pods: Option<Arc<dyn PodDirectory + Send + Sync>>,
}

impl fmt::Debug for Attributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attributor")
            .field("index", &self.index)
            .field("pods", &self.pods.as_ref().map(|_| "PodDirectory"))
            .finish()
    }
}

impl Attributor {
    /// Standalone: pods are known by uid, QoS class and container id only.
    pub fn new(index: CgroupIndex) -> Self {
        Self { index, pods: None }
    }

    /// Pods are named (namespace, name, container) from `pods` too.
    pub fn with_pod_directory(mut self, pods: Arc<dyn PodDirectory + Send + Sync>) -> Self {
        self.pods = Some(pods);
        self
    }

    pub fn index(&self) -> &CgroupIndex {
        &self.index
    }

    /// `None` when the id is 0 (unknown to the kernel) or not found in the hierarchy.
    pub fn attribute(&mut self, cgroup_id: u64, now: Instant) -> Option<Attribution> {
        let path = self.index.lookup(cgroup_id, now)?.to_owned();
        Some(self.attribute_path(&path))
    }

    /// Fills `event.attribution` from its task's cgroup: the path the kernel read at the event
    /// if the record has one, else the cgroup id through the index (left alone if it cannot be
    /// found).
    pub fn attribute_event(&mut self, event: &mut Event, now: Instant) {
        let attribution = match event.detail.cgroup_path() {
            Some(path) => Some(self.attribute_path(path)),
            None => self.attribute(event.task.cgroup_id, now),
        };
        if attribution.is_some() {
            event.attribution = attribution;
        }
    }

    /// A pod known only by uid (e.g. from a volume's path), named if the pod directory knows it.
    pub fn pod_by_uid(&self, uid: &str) -> PodRef {
        let identity = self.pods.as_ref().and_then(|pods| pods.lookup(uid, None));
        PodRef {
            uid: uid.to_owned(),
            namespace: identity.as_ref().map(|i| i.namespace.clone()),
            name: identity.map(|i| i.name),
            ..PodRef::default()
        }
    }

    /// The attribution of a cgroup path; no IO.
    pub fn attribute_path(&self, path: &str) -> Attribution {
        let mut attribution = Attribution {
            cgroup: Some(path.to_owned()),
            pod: None,
            unit: None,
        };
        match parse_cgroup_path(path) {
            CgroupOwner::Pod(pod) => {
                let identity = self
                    .pods
                    .as_ref()
                    .and_then(|pods| pods.lookup(&pod.uid, pod.container_id.as_deref()));
                let (namespace, name, container) = match identity {
                    Some(identity) => (
                        Some(identity.namespace),
                        Some(identity.name),
                        identity.container,
                    ),
                    None => (None, None, None),
                };
                attribution.pod = Some(PodRef {
                    uid: pod.uid,
                    namespace,
                    name,
                    qos: Some(pod.qos.as_str().to_owned()),
                    container_id: pod.container_id,
                    container,
                });
            }
            CgroupOwner::Unit(unit) => attribution.unit = Some(unit),
            CgroupOwner::Other => {}
        }
        attribution
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        fs,
        os::unix::fs::MetadataExt,
        path::{Path, PathBuf},
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A directory under the system temp dir, removed on drop (no tempfile crate needed).
    #[derive(Debug)]
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "npd-test-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).expect("create a temp dir");
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const UID: &str = "5f0c8f6e-2d4a-4d8e-9a51-3b8d1c2e7f10";
    const UID_: &str = "5f0c8f6e_2d4a_4d8e_9a51_3b8d1c2e7f10";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const SANDBOX: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn directory() -> Arc<RwLock<PodDirectoryMap>> {
        let mut map = PodDirectoryMap::default();
        map.insert(
            UID,
            PodEntry {
                namespace: "shop".to_owned(),
                name: "db-0".to_owned(),
                containers: HashMap::from([(
                    bare_container_id(&format!("containerd://{ID}")).to_owned(),
                    "mysql".to_owned(),
                )]),
            },
        );
        Arc::new(RwLock::new(map))
    }

    #[test]
    fn attributes_paths_with_and_without_a_pod_directory() {
        let tmp = TempDir::new("attributor");
        let standalone = Attributor::new(CgroupIndex::new(tmp.path()));
        let watched = Attributor::new(CgroupIndex::new(tmp.path())).with_pod_directory(directory());
        let container = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        let sandbox = format!("/kubepods/burstable/pod{UID}/{SANDBOX}");
        let other_pod = "/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/abc";
        let pod = |namespace: Option<&str>,
                   name: Option<&str>,
                   qos: &str,
                   id: &str,
                   container: Option<&str>| PodRef {
            uid: UID.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            qos: Some(qos.to_owned()),
            container_id: Some(id.to_owned()),
            container: container.map(str::to_owned),
        };
        // (name, attributor, path, pod, unit)
        type Case<'a> = (
            &'a str,
            &'a Attributor,
            &'a str,
            Option<PodRef>,
            Option<&'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "standalone container",
                &standalone,
                &container,
                Some(pod(None, None, "burstable", ID, None)),
                None,
            ),
            (
                "named container",
                &watched,
                &container,
                Some(pod(
                    Some("shop"),
                    Some("db-0"),
                    "burstable",
                    ID,
                    Some("mysql"),
                )),
                None,
            ),
            // The sandbox is not a container of the pod's status: the pod is named, not the container.
            (
                "sandbox",
                &watched,
                &sandbox,
                Some(pod(Some("shop"), Some("db-0"), "burstable", SANDBOX, None)),
                None,
            ),
            (
                "unit",
                &watched,
                "/system.slice/containerd.service",
                None,
                Some("containerd.service"),
            ),
            ("bare cgroup", &watched, "/custom/batch", None, None),
        ];
        for (name, attributor, path, expected_pod, expected_unit) in cases {
            let attribution = attributor.attribute_path(path);
            assert_eq!(attribution.cgroup.as_deref(), Some(path), "{name}");
            assert_eq!(attribution.pod, expected_pod, "{name}");
            assert_eq!(attribution.unit.as_deref(), expected_unit, "{name}");
        }
        // A pod the directory does not know (yet): uid only.
        let unknown = watched.attribute_path(other_pod).pod.expect("a pod");
        assert_eq!(unknown.uid, "11111111-2222-3333-4444-555555555555");
        assert_eq!(unknown.qos.as_deref(), Some("besteffort"));
        assert_eq!((unknown.namespace, unknown.name), (None, None));
    }

    #[test]
    fn attributes_cgroup_ids_through_the_index() {
        let tmp = TempDir::new("attribute-id");
        let dir = tmp.path().join(format!("kubepods/burstable/pod{UID}/{ID}"));
        fs::create_dir_all(&dir).unwrap();
        let id = fs::metadata(&dir).unwrap().ino();
        let pods = directory();
        let mut attributor =
            Attributor::new(CgroupIndex::new(tmp.path())).with_pod_directory(pods.clone());
        let now = Instant::now();

        let attribution = attributor.attribute(id, now).expect("found");
        let pod = attribution.pod.expect("a pod");
        assert_eq!(pod.name.as_deref(), Some("db-0"));
        assert_eq!(pod.container.as_deref(), Some("mysql"));
        assert_eq!(attributor.attribute(0, now), None);

        // The watch learns of changes while the attributor holds the directory.
        pods.write().unwrap().remove(UID);
        let pod = attributor
            .attribute(id, now)
            .and_then(|a| a.pod)
            .expect("a pod");
        assert_eq!((pod.name, pod.container), (None, None));
        assert_eq!(pod.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn bare_container_ids() {
        for (status, bare) in [
            ("containerd://abc", "abc"),
            ("cri-o://abc", "abc"),
            ("docker://abc", "abc"),
            ("abc", "abc"),
        ] {
            assert_eq!(bare_container_id(status), bare);
        }
    }
}
