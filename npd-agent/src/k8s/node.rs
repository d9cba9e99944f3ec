//! This node's status: the conditions npd owns, read at start and patched since.

use std::{collections::BTreeMap, time::SystemTime};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{k8s_time, system_time};
use crate::engine::{Boot, ConditionStatus, ConditionType, NodeCondition};

/// Condition type names as written on the Node (configurable, for clusters whose alerts use
/// other names); the engine works with [`ConditionType`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionNames {
    /// Every condition npd owns, with the type written for it.
    pub types: BTreeMap<ConditionType, String>,
    /// Reason renames (npd's name -> the name written), for conditions and Events.
    pub reasons: BTreeMap<String, String>,
}

impl ConditionNames {
    /// Each condition under its own type name, no reason renamed.
    pub fn new(conditions: &[ConditionType]) -> Self {
        Self {
            types: conditions
                .iter()
                .map(|&t| (t, t.as_str().to_owned()))
                .collect(),
            reasons: BTreeMap::new(),
        }
    }

    pub fn name(&self, condition_type: ConditionType) -> &str {
        self.types
            .get(&condition_type)
            .map_or(condition_type.as_str(), String::as_str)
    }

    /// The reason as written to the API server.
    pub fn reason_out<'a>(&'a self, reason: &'a str) -> &'a str {
        self.reasons.get(reason).map_or(reason, String::as_str)
    }

    /// npd's reason for one read back from the API server.
    pub fn reason_in(&self, written: &str) -> String {
        self.reasons
            .iter()
            .find(|(_, to)| *to == written)
            .map_or_else(|| written.to_owned(), |(from, _)| from.clone())
    }

    pub fn condition_type(&self, name: &str) -> Option<ConditionType> {
        self.types
            .iter()
            .find(|(_, written)| *written == name)
            .map(|(&t, _)| t)
    }
}

/// What npd finds on its Node at start.
#[derive(Clone, Debug)]
pub struct NodeState {
    pub uid: String,
    /// The conditions npd owns, as found.
    pub conditions: Vec<NodeCondition>,
    /// Whether they were last written during this boot.
    pub boot: Boot,
}

/// When this boot started, from /proc/stat's `btime`.
pub fn boot_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Reads the node and the conditions npd owns on it. The boot is told from their
/// `lastHeartbeatTime`: written after this boot started means an agent already ran on it.
pub async fn read(
    api: &Api<Node>,
    name: &str,
    names: &ConditionNames,
    boot_started: Option<SystemTime>,
) -> Result<NodeState, kube::Error> {
    let node = api.get(name).await?;
    let mut conditions = Vec::new();
    let mut latest_heartbeat: Option<SystemTime> = None;
    for found in node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        let Some(condition_type) = names.condition_type(&found.type_) else {
            continue;
        };
        if let Some(heartbeat) = found.last_heartbeat_time.as_ref().map(system_time) {
            latest_heartbeat = Some(latest_heartbeat.map_or(heartbeat, |l| l.max(heartbeat)));
        }
        conditions.push(NodeCondition {
            condition_type,
            status: ConditionStatus::from_name(&found.status),
            reason: names.reason_in(found.reason.as_deref().unwrap_or_default()),
            message: found.message.clone().unwrap_or_default(),
            last_transition_time: found
                .last_transition_time
                .as_ref()
                .map_or(SystemTime::UNIX_EPOCH, system_time),
        });
    }
    let boot = match (latest_heartbeat, boot_started) {
        (Some(heartbeat), Some(started)) if heartbeat >= started => Boot::Same,
        (Some(_), Some(_)) => Boot::New,
        _ => Boot::Unknown,
    };
    Ok(NodeState {
        uid: node.metadata.uid.unwrap_or_default(),
        conditions,
        boot,
    })
}

/// A strategic-merge patch of `status.conditions` with only npd's conditions: the API server
/// merges conditions by `type`, so the kubelet's and other agents' stay untouched.
pub fn conditions_patch(
    conditions: &[NodeCondition],
    names: &ConditionNames,
    heartbeat: SystemTime,
) -> serde_json::Value {
    let conditions: Vec<serde_json::Value> = conditions
        .iter()
        .map(|c| {
            json!({
                "type": names.name(c.condition_type),
                "status": c.status.as_str(),
                "reason": names.reason_out(&c.reason),
                "message": c.message,
                "lastHeartbeatTime": k8s_time(heartbeat),
                "lastTransitionTime": k8s_time(c.last_transition_time),
            })
        })
        .collect();
    json!({ "status": { "conditions": conditions } })
}

/// Patches the conditions; returns the Node's uid as the server has it now (a Node deleted
/// and created again under the same name has a new one).
pub async fn patch_conditions(
    api: &Api<Node>,
    name: &str,
    conditions: &[NodeCondition],
    names: &ConditionNames,
    heartbeat: SystemTime,
) -> Result<String, kube::Error> {
    let patch = conditions_patch(conditions, names, heartbeat);
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map(|node| node.metadata.uid.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::fd::FD_PRESSURE;

    #[test]
    fn the_patch_carries_only_npd_conditions_with_configured_names() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_739_557);
        let mut names = ConditionNames::new(&crate::detectors::catalog().conditions);
        names.types.insert(FD_PRESSURE, "NodeFDPressure".into());
        names.reasons = [("FDUnderPressure".to_owned(), "TooManyFiles".to_owned())].into();
        let conditions = vec![NodeCondition {
            condition_type: FD_PRESSURE,
            status: ConditionStatus::True,
            reason: "FDUnderPressure".into(),
            message: "95% of the file table".into(),
            last_transition_time: t,
        }];
        let patch = conditions_patch(&conditions, &names, t);
        assert_eq!(
            patch,
            json!({"status": {"conditions": [{
                "type": "NodeFDPressure",
                "status": "True",
                "reason": "TooManyFiles",
                "message": "95% of the file table",
                "lastHeartbeatTime": "2026-11-27T00:32:37Z",
                "lastTransitionTime": "2026-11-27T00:32:37Z",
            }]}})
        );
        assert_eq!(names.condition_type("NodeFDPressure"), Some(FD_PRESSURE));
        assert_eq!(names.condition_type("FDPressure"), None);
        assert_eq!(names.reason_in("TooManyFiles"), "FDUnderPressure");
        assert_eq!(names.reason_in("TaskHung"), "TaskHung");
    }
}
