//! Who owns a cgroup, from its path alone: the kubelet's naming for both cgroup drivers and
//! the common runtimes, or the systemd unit of a process outside pods. Pure string work.

/// The path from the directory names the kernel wrote into a record (leaf first, `depth`
/// of them), when every name is intact; `None` otherwise (the agent then goes by the cgroup
/// id). The caller knows whether the walk reached the root.
pub fn from_kernel_names(
    names: &[[u8; npd_common::cgroup::CGROUP_NAME_LEN]],
    depth: u32,
) -> Option<String> {
    let depth = (depth as usize).min(names.len());
    let names = names[..depth]
        .iter()
        .rev()
        .map(|name| crate::event::comm_string(name))
        .collect::<Vec<_>>();
    // A name that filled its slot may have been cut.
    let cut = |name: &String| name.len() >= npd_common::cgroup::CGROUP_NAME_LEN - 1;
    if names
        .iter()
        .any(|name| name.is_empty() || name.contains('/') || cut(name))
    {
        return None;
    }
    Some(format!("/{}", names.join("/")))
}

/// A pod's QoS class, as the kubelet encodes it in the cgroup path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The spelling `PodRef::qos` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

/// A pod's cgroup, or one of its containers'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// With dashes, as the API server spells it (the systemd driver writes underscores).
    pub uid: String,
    pub qos: Qos,
    /// The runtime's container id (the pause/sandbox container's too: a path cannot tell
    /// them apart); `None` for the pod's own cgroup and for runtime helpers such as conmon.
    pub container_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupOwner {
    Pod(PodCgroup),
    /// A systemd unit, e.g. `containerd.service` or `session-3.scope`.
    Unit(String),
    /// Neither: only the path says where the process runs.
    Other,
}

/// Container cgroup prefixes of the runtimes, as written by the systemd driver
/// (`<prefix><id>.scope`) or by CRI-O with cgroupfs (`crio-<id>`).
const RUNTIME_PREFIXES: [&str; 5] = [
    "cri-containerd-",
    "crio-",
    "docker-",
    "cri-dockerd-",
    "libpod-",
];

/// Runtime helpers that sit beside the container in the pod, not in it.
const HELPER_PREFIXES: [&str; 1] = ["crio-conmon-"];

/// Parses a cgroup path (relative to the hierarchy root or absolute under /sys/fs/cgroup).
/// The outermost pod wins: it is the one this node's kubelet runs (a kind node or a
/// docker-in-docker pod nests other kubelets' pods inside it).
pub fn parse_cgroup_path(path: &str) -> CgroupOwner {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, segment) in segments.iter().enumerate() {
        let parent = i.checked_sub(1).and_then(|p| segments.get(p)).copied();
        if let Some((uid, qos, inline_container)) = pod_segment(segment, parent) {
            let container_id = match inline_container {
                Some(id) => Some(id),
                None => segments.get(i + 1).and_then(|next| container_segment(next)),
            };
            return CgroupOwner::Pod(PodCgroup {
                uid,
                qos,
                container_id: container_id.map(str::to_owned),
            });
        }
    }
    unit(&segments).map_or(CgroupOwner::Other, |unit| {
        CgroupOwner::Unit(unit.to_owned())
    })
}

/// A pod's cgroup directory: (uid, qos, container id when the segment carries one).
fn pod_segment<'a>(
    segment: &'a str,
    parent: Option<&str>,
) -> Option<(String, Qos, Option<&'a str>)> {
    // cgroupfs driver: kubepods/[burstable|besteffort/]pod<uid>
    if let Some(uid) = segment.strip_prefix("pod") {
        let qos = match parent? {
            "kubepods" => Qos::Guaranteed,
            "burstable" => Qos::Burstable,
            "besteffort" => Qos::BestEffort,
            _ => return None,
        };
        return Some((pod_uid(uid)?, qos, None));
    }
    // A systemd-style name used as a plain path when the runtime and the kubelet disagree on
    // the driver: `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`.
    let (slice, inline_container) = match segment.split_once(':') {
        Some((slice, rest)) => {
            let (_, id) = rest.split_once(':')?;
            (slice, Some(id).filter(|id| is_container_id(id)))
        }
        None => (segment, None),
    };
    // systemd driver: kubepods[-burstable|-besteffort]-pod<uid_with_underscores>.slice, with
    // a cgroup-root prefix on some nodes (kind: kubelet-kubepods-...).
    let name = slice.strip_suffix(".slice")?;
    let (classes, uid) = name.rsplit_once("-pod")?;
    let qos = if classes.ends_with("kubepods-burstable") {
        Qos::Burstable
    } else if classes.ends_with("kubepods-besteffort") {
        Qos::BestEffort
    } else if classes.ends_with("kubepods") {
        Qos::Guaranteed
    } else {
        return None;
    };
    Some((pod_uid(uid)?, qos, inline_container))
}

/// A pod uid: a UUID, or 32 hex digits for static pods (a hash of the manifest).
fn pod_uid(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-");
    let hex_digits = uid.chars().filter(char::is_ascii_hexdigit).count();
    let well_formed = uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        && hex_digits == 32
        && !uid.starts_with('-')
        && !uid.ends_with('-');
    well_formed.then(|| uid.to_ascii_lowercase())
}

fn is_container_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The container id in the segment below a pod's: `<id>`, `crio-<id>`,
/// `cri-containerd-<id>.scope`, ...; `None` for nested slices and runtime helpers.
fn container_segment(segment: &str) -> Option<&str> {
    if segment.ends_with(".slice")
        || HELPER_PREFIXES
            .iter()
            .any(|prefix| segment.starts_with(prefix))
    {
        return None;
    }
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then_some(id)
}

const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// The innermost systemd unit in the path; a slice only if no unit is below it.
fn unit<'a>(segments: &[&'a str]) -> Option<&'a str> {
    let named = |name: &str, suffix: &str| name.len() > suffix.len() && name.ends_with(suffix);
    let is_unit = |name: &str| UNIT_SUFFIXES.iter().any(|suffix| named(name, suffix));
    let innermost =
        |accept: &dyn Fn(&str) -> bool| segments.iter().rev().copied().find(|s| accept(s));
    innermost(&is_unit).or_else(|| innermost(&|name| named(name, ".slice")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_make_a_path_only_when_intact() {
        use npd_common::cgroup::{CGROUP_NAME_LEN, KernelCgroupPath};
        let path = |names: &[&[u8]]| {
            let mut path = KernelCgroupPath::EMPTY;
            for (slot, name) in path.names.iter_mut().zip(names) {
                slot[..name.len()].copy_from_slice(name);
            }
            from_kernel_names(&path.names, names.len() as u32)
        };
        let long = [b'x'; CGROUP_NAME_LEN - 1];
        // (names leaf first, the path)
        type Case<'a> = (&'a [&'a [u8]], Option<&'a str>);
        let cases: [Case<'_>; 5] = [
            (&[b"ctr", b"pod1", b"kubepods"], Some("/kubepods/pod1/ctr")),
            (&[], Some("/")),
            (&[b"ctr", b"", b"kubepods"], None),
            (&[b"a/b"], None),
            (&[&long], None),
        ];
        for (names, expected) in cases {
            assert_eq!(path(names).as_deref(), expected, "{names:?}");
        }
    }

    const UID: &str = "5f0c8f6e-2d4a-4d8e-9a51-3b8d1c2e7f10";
    const UID_: &str = "5f0c8f6e_2d4a_4d8e_9a51_3b8d1c2e7f10";
    const STATIC_UID: &str = "6d4c8e1a9b3f2e7d0c5a4b3e2f1d0c9b";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn pod(uid: &str, qos: Qos, container_id: Option<&str>) -> CgroupOwner {
        CgroupOwner::Pod(PodCgroup {
            uid: uid.to_owned(),
            qos,
            container_id: container_id.map(str::to_owned),
        })
    }

    fn unit(name: &str) -> CgroupOwner {
        CgroupOwner::Unit(name.to_owned())
    }

    #[test]
    fn parses_real_world_paths() {
        use Qos::*;
        let cases: Vec<(&str, String, CgroupOwner)> = vec![
            // cgroupfs driver (containerd, CRI-O, dockershim), v1 and v2.
            (
                "cgroupfs burstable",
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                pod(UID, Burstable, Some(ID)),
            ),
            (
                "cgroupfs besteffort",
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                pod(UID, BestEffort, Some(ID)),
            ),
            (
                "cgroupfs guaranteed",
                format!("/kubepods/pod{UID}/{ID}"),
                pod(UID, Guaranteed, Some(ID)),
            ),
            (
                "cgroupfs pod level",
                format!("/kubepods/burstable/pod{UID}"),
                pod(UID, Burstable, None),
            ),
            (
                "cgroupfs crio",
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                pod(UID, Burstable, Some(ID)),
            ),
            (
                "cgroupfs crio conmon",
                format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}"),
                pod(UID, Burstable, None),
            ),
            (
                "cgroupfs static pod",
                format!("/kubepods/burstable/pod{STATIC_UID}/{ID}"),
                pod(STATIC_UID, Burstable, Some(ID)),
            ),
            (
                "cgroupfs, nested cgroup in container",
                format!("/kubepods/pod{UID}/{ID}/init"),
                pod(UID, Guaranteed, Some(ID)),
            ),
            // systemd driver.
            (
                "systemd containerd burstable",
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(UID, Burstable, Some(ID)),
            ),
            (
                "systemd crio besteffort",
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                pod(UID, BestEffort, Some(ID)),
            ),
            (
                "systemd crio conmon",
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope"
                ),
                pod(UID, BestEffort, None),
            ),
            (
                "systemd docker guaranteed",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"),
                pod(UID, Guaranteed, Some(ID)),
            ),
            (
                "systemd pod slice only",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice"),
                pod(UID, Guaranteed, None),
            ),
            (
                "systemd with dashes in uid",
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/cri-containerd-{ID}.scope"
                ),
                pod(UID, Burstable, Some(ID)),
            ),
            (
                "systemd, container runs systemd inside",
                format!(
                    "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/system.slice/foo.service"
                ),
                pod(UID, Guaranteed, Some(ID)),
            ),
            // Absolute v2 paths.
            (
                "v2 absolute",
                format!(
                    "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(UID, Burstable, Some(ID)),
            ),
            (
                "v1 memory absolute",
                format!("/sys/fs/cgroup/memory/kubepods/besteffort/pod{UID}/{ID}"),
                pod(UID, BestEffort, Some(ID)),
            ),
            // Nested: kind, docker-in-docker, cgroup namespaces, a cgroup root.
            (
                "kind v1 docker prefix",
                format!("/docker/{ID}/kubepods/burstable/pod{UID}/{ID}"),
                pod(UID, Burstable, Some(ID)),
            ),
            (
                "kind cgroupfs root",
                format!("/kubelet/kubepods/besteffort/pod{UID}/{ID}"),
                pod(UID, BestEffort, Some(ID)),
            ),
            (
                "kind v2 systemd with cgroup root",
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(UID, BestEffort, Some(ID)),
            ),
            (
                "kind guaranteed with cgroup root",
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(UID, Guaranteed, Some(ID)),
            ),
            (
                "driver mismatch, systemd name as a path",
                format!(
                    "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
                ),
                pod(UID, Burstable, Some(ID)),
            ),
            (
                "driver mismatch at the root",
                format!("/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}"),
                pod(UID, BestEffort, Some(ID)),
            ),
            (
                "pod in a pod: the outer one is this node's",
                format!(
                    "/kubepods/burstable/pod{UID}/{ID}/kubelet/kubepods/besteffort/pod{STATIC_UID}/abc"
                ),
                pod(UID, Burstable, Some(ID)),
            ),
            (
                "uppercase uid is normalized",
                format!("/kubepods/pod{}/{ID}", UID.to_uppercase()),
                pod(UID, Guaranteed, Some(ID)),
            ),
            // Not pods.
            (
                "systemd service",
                "/system.slice/containerd.service".to_owned(),
                unit("containerd.service"),
            ),
            (
                "kubelet",
                "/system.slice/kubelet.service".to_owned(),
                unit("kubelet.service"),
            ),
            (
                "login session",
                "/user.slice/user-1000.slice/session-3.scope".to_owned(),
                unit("session-3.scope"),
            ),
            (
                "user manager app",
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-foo.scope"
                    .to_owned(),
                unit("app-gnome-foo.scope"),
            ),
            ("init", "/init.scope".to_owned(), unit("init.scope")),
            (
                "a slice itself",
                "/system.slice".to_owned(),
                unit("system.slice"),
            ),
            (
                "service sub-cgroup",
                "/system.slice/docker.service/sub".to_owned(),
                unit("docker.service"),
            ),
            (
                "docker scope outside k8s",
                format!("/system.slice/docker-{ID}.scope"),
                unit(&format!("docker-{ID}.scope")),
            ),
            ("the root", "/".to_owned(), CgroupOwner::Other),
            ("empty", String::new(), CgroupOwner::Other),
            (
                "plain docker v1",
                format!("/docker/{ID}"),
                CgroupOwner::Other,
            ),
            (
                "kubepods itself",
                "/kubepods/burstable".to_owned(),
                CgroupOwner::Other,
            ),
            (
                "kubepods slice itself",
                "/kubepods.slice/kubepods-burstable.slice".to_owned(),
                unit("kubepods-burstable.slice"),
            ),
            // Look-alikes that are not pods.
            (
                "pod-named dir elsewhere",
                format!("/custom/pod{UID}/x"),
                CgroupOwner::Other,
            ),
            (
                "short uid",
                "/kubepods/burstable/pod1234/abc".to_owned(),
                CgroupOwner::Other,
            ),
            (
                "non-hex uid",
                "/kubepods/burstable/podzzzzzzzz-2d4a-4d8e-9a51-3b8d1c2e7f10/abc".to_owned(),
                CgroupOwner::Other,
            ),
            (
                "slice without kubepods",
                format!("/foo-pod{UID_}.slice"),
                unit(&format!("foo-pod{UID_}.slice")),
            ),
            (
                "suffix alone is no unit",
                "/.service".to_owned(),
                CgroupOwner::Other,
            ),
        ];
        for (name, path, expected) in cases {
            assert_eq!(parse_cgroup_path(&path), expected, "{name}: {path}");
        }
    }

    #[test]
    fn qos_spelling_matches_pod_ref() {
        assert_eq!(Qos::Guaranteed.as_str(), "guaranteed");
        assert_eq!(Qos::Burstable.as_str(), "burstable");
        assert_eq!(Qos::BestEffort.as_str(), "besteffort");
    }
}
