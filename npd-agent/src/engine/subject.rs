//! Who a problem belongs to, in words (messages), as a key (aggregation) and as an Event
//! target: a pod's container, a systemd unit, a bare cgroup, or just a process.

use crate::event::{Attribution, PodRef, Task, escape_untrusted};

use super::events::EventTarget;

/// Runtime ids are 64 hex digits; people know them by the first 12 (`crictl ps`).
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn pod_placement(pod: &PodRef) -> String {
    let container = match (&pod.container, &pod.container_id) {
        (Some(name), _) => format!(", container {name}"),
        (None, Some(id)) => format!(", container id {}", short_id(id)),
        (None, None) => String::new(),
    };
    match (&pod.namespace, &pod.name) {
        (Some(namespace), Some(name)) => format!("pod {namespace}/{name}{container}"),
        _ => format!("pod uid {}{container}", pod.uid),
    }
}

/// Where a process runs, e.g. `pod default/web-0, container nginx` or `unit containerd.service`;
/// `None` when nothing is known.
pub(crate) fn placement(attribution: Option<&Attribution>) -> Option<String> {
    let attribution = attribution?;
    if let Some(pod) = &attribution.pod {
        return Some(pod_placement(pod));
    }
    if let Some(unit) = &attribution.unit {
        return Some(format!("unit {}", escape_untrusted(unit)));
    }
    attribution
        .cgroup
        .as_ref()
        .map(|cgroup| format!("cgroup {}", escape_untrusted(cgroup)))
}

/// `mysqld (pid 1234) in pod default/db-0, container mysql`; the thread is named when it is
/// not the process's main thread. Empty when the event has no task (e.g. a counter moved).
pub(crate) fn describe_task(task: &Task, attribution: Option<&Attribution>) -> String {
    if task.pid == 0 && task.comm.is_empty() {
        return String::new();
    }
    let thread = if task.tid != 0 && task.tid != task.pid {
        format!(", thread {}", task.tid)
    } else {
        String::new()
    };
    let place = placement(attribution)
        .map(|p| format!(" in {p}"))
        .unwrap_or_default();
    format!(
        "{} (pid {}{thread}){place}",
        escape_untrusted(&task.comm),
        task.pid
    )
}

/// Part of an aggregation key: stable for one container across its restarts when the
/// container's name is known, else per runtime container id.
pub(crate) fn subject_key(attribution: Option<&Attribution>) -> String {
    let Some(attribution) = attribution else {
        return "node".to_owned();
    };
    if let Some(pod) = &attribution.pod {
        let container = pod
            .container
            .as_deref()
            .or(pod.container_id.as_deref())
            .unwrap_or("-");
        return format!("pod:{}/{container}", pod.uid);
    }
    if let Some(unit) = &attribution.unit {
        return format!("unit:{unit}");
    }
    match &attribution.cgroup {
        Some(cgroup) => format!("cgroup:{cgroup}"),
        None => "node".to_owned(),
    }
}

/// Whose Event budget a problem spends: its pod's, or the node's for everything else (units,
/// bare cgroups and unattributed processes are the node's own).
pub(crate) fn budget_key(attribution: Option<&Attribution>) -> String {
    match attribution.and_then(|a| a.pod.as_ref()) {
        Some(pod) => format!("pod:{}", pod.uid),
        None => "node".to_owned(),
    }
}

/// The Node always; the Pod too when it is known by name (an Event needs the namespace), and
/// every other affected pod known by name, each once.
pub(crate) fn targets(attribution: Option<&Attribution>, affected: &[PodRef]) -> Vec<EventTarget> {
    let mut targets = vec![EventTarget::Node];
    let own = attribution.and_then(|a| a.pod.as_ref());
    for pod in own.into_iter().chain(affected) {
        if let PodRef {
            uid,
            namespace: Some(namespace),
            name: Some(name),
            ..
        } = pod
        {
            let target = EventTarget::Pod {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uid.clone(),
            };
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    targets
}

/// A stack frame without its offset, `percpu_rwsem_wait+0x11d/0x150` -> `percpu_rwsem_wait`.
pub(crate) fn frame_function(frame: &str) -> &str {
    frame.split('+').next().unwrap_or(frame)
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::event::{Attribution, PodRef};

    pub(crate) const UID: &str = "5f0c8f6e-2d4a-4d8e-9a51-3b8d1c2e7f10";
    pub(crate) const CONTAINER_ID: &str =
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A pod's container known by name (a PodDirectory is present).
    pub(crate) fn named_pod() -> Attribution {
        Attribution {
            cgroup: Some(format!("/kubepods/burstable/pod{UID}/{CONTAINER_ID}")),
            pod: Some(PodRef {
                uid: UID.to_owned(),
                namespace: Some("shop".to_owned()),
                name: Some("db-0".to_owned()),
                qos: Some("burstable".to_owned()),
                container_id: Some(CONTAINER_ID.to_owned()),
                container: Some("mysql".to_owned()),
            }),
            unit: None,
        }
    }

    /// A pod's container known only from the cgroup path (standalone mode).
    pub(crate) fn uid_only_pod() -> Attribution {
        Attribution {
            pod: Some(PodRef {
                uid: UID.to_owned(),
                qos: Some("burstable".to_owned()),
                container_id: Some(CONTAINER_ID.to_owned()),
                ..PodRef::default()
            }),
            ..named_pod()
        }
    }

    pub(crate) fn unit() -> Attribution {
        Attribution {
            cgroup: Some("/system.slice/containerd.service".to_owned()),
            pod: None,
            unit: Some("containerd.service".to_owned()),
        }
    }

    pub(crate) fn bare_cgroup() -> Attribution {
        Attribution {
            cgroup: Some("/custom/batch".to_owned()),
            pod: None,
            unit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    fn task(pid: u32, tid: u32, comm: &str) -> Task {
        Task {
            pid,
            tid,
            comm: comm.to_owned(),
            cgroup_id: 42,
        }
    }

    #[test]
    fn describes_tasks_by_where_they_run() {
        let cases = [
            (
                "named pod",
                Some(named_pod()),
                task(1234, 1234, "mysqld"),
                "mysqld (pid 1234) in pod shop/db-0, container mysql",
            ),
            (
                "uid-only pod",
                Some(uid_only_pod()),
                task(1234, 1240, "mysqld"),
                "mysqld (pid 1234, thread 1240) in pod uid 5f0c8f6e-2d4a-4d8e-9a51-3b8d1c2e7f10, \
                 container id 0123456789ab",
            ),
            (
                "unit",
                Some(unit()),
                task(900, 900, "containerd"),
                "containerd (pid 900) in unit containerd.service",
            ),
            (
                "bare cgroup",
                Some(bare_cgroup()),
                task(77, 0, "batch"),
                "batch (pid 77) in cgroup /custom/batch",
            ),
            (
                "bare process",
                None,
                task(77, 77, "batch"),
                "batch (pid 77)",
            ),
            ("no task", Some(named_pod()), task(0, 0, ""), ""),
        ];
        for (name, attribution, task, expected) in cases {
            assert_eq!(
                describe_task(&task, attribution.as_ref()),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn keys_and_targets() {
        let cases = [
            (Some(named_pod()), format!("pod:{UID}/mysql"), 2),
            (Some(uid_only_pod()), format!("pod:{UID}/{CONTAINER_ID}"), 1),
            (Some(unit()), "unit:containerd.service".to_owned(), 1),
            (Some(bare_cgroup()), "cgroup:/custom/batch".to_owned(), 1),
            (None, "node".to_owned(), 1),
            (Some(Attribution::default()), "node".to_owned(), 1),
        ];
        for (attribution, key, target_count) in cases {
            assert_eq!(subject_key(attribution.as_ref()), key);
            let targets = targets(attribution.as_ref(), &[]);
            assert_eq!(targets.len(), target_count, "{key}");
            assert_eq!(targets[0], EventTarget::Node);
        }
        assert_eq!(
            targets(Some(&named_pod()), &[])[1],
            EventTarget::Pod {
                namespace: "shop".to_owned(),
                name: "db-0".to_owned(),
                uid: UID.to_owned()
            }
        );
    }

    #[test]
    fn affected_pods_are_targets_once_when_named() {
        let own = named_pod();
        let same = own.pod.clone().unwrap();
        let other = PodRef {
            uid: "u2".to_owned(),
            namespace: Some("ns".to_owned()),
            name: Some("web".to_owned()),
            ..PodRef::default()
        };
        let unnamed = PodRef {
            uid: "u3".to_owned(),
            ..PodRef::default()
        };
        let all = targets(Some(&own), &[same, other, unnamed]);
        assert_eq!(all.len(), 3, "node, own pod, the other named pod: {all:?}");
        assert_eq!(
            all[2],
            EventTarget::Pod {
                namespace: "ns".into(),
                name: "web".into(),
                uid: "u2".into()
            }
        );
    }

    #[test]
    fn names_a_process_controls_are_escaped() {
        let task = Task {
            pid: 66,
            tid: 66,
            comm: "x\nkubelet (pid 1)".to_owned(),
            cgroup_id: 0,
        };
        let unit = Attribution {
            cgroup: None,
            pod: None,
            unit: Some("evil\x1b[2J.service".to_owned()),
        };
        let text = describe_task(&task, Some(&unit));
        assert!(!text.contains('\n') && !text.contains('\x1b'), "{text}");
        assert_eq!(
            text,
            "\"x\\nkubelet (pid 1)\" (pid 66) in unit evil\\x1b[2J.service"
        );
    }

    #[test]
    fn frame_functions() {
        assert_eq!(
            frame_function("percpu_rwsem_wait+0x11d/0x150"),
            "percpu_rwsem_wait"
        );
        assert_eq!(frame_function("schedule"), "schedule");
    }
}
