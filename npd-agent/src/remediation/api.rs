//! The API calls of remediation: this Node (read, taints written with its resourceVersion as
//! a precondition), every Node (for the budget), the budget's Lease (read, compare-and-swap)
//! and Events on the Node.

use std::time::SystemTime;

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Event, EventSource, Node, ObjectReference, Taint},
};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{
    NodeTarget, RemediationError, TaintConfig,
    budget::{ClusterView, LEDGER_ANNOTATION, Ledger},
    plan::is_own,
};
use crate::k8s::{ApiFailure, events::COMPONENT, k8s_time};

/// Nodes listed per page for the budget.
const NODE_PAGE: u32 = 500;

pub(super) struct RemediationApi {
    nodes: Api<Node>,
    leases: Api<Lease>,
    events: Api<Event>,
    node_name: String,
    lease_name: String,
    lease_namespace: String,
    event_namespace: String,
    /// The Node's uid, once read (Events name it).
    node_uid: Option<String>,
}

fn api_error(verb: &'static str, resource: String) -> impl FnOnce(kube::Error) -> RemediationError {
    move |err| RemediationError::Api {
        verb,
        resource,
        failure: ApiFailure::classify(&err),
    }
}

impl RemediationApi {
    pub(super) fn new(client: Client, target: &NodeTarget, config: &TaintConfig) -> Self {
        Self {
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client.clone(), &config.lease_namespace),
            events: Api::namespaced(client, &target.event_namespace),
            node_name: target.node_name.clone(),
            lease_name: config.lease_name.clone(),
            lease_namespace: config.lease_namespace.clone(),
            event_namespace: target.event_namespace.clone(),
            node_uid: None,
        }
    }

    pub(super) fn lease_resource(&self) -> String {
        format!(
            "leases/{} (namespace {})",
            self.lease_name, self.lease_namespace
        )
    }

    pub(super) async fn node(&mut self) -> Result<Node, RemediationError> {
        let node = self
            .nodes
            .get(&self.node_name)
            .await
            .map_err(api_error("get", format!("nodes/{}", self.node_name)))?;
        self.node_uid.clone_from(&node.metadata.uid);
        Ok(node)
    }

    /// Replaces the node's taints, only if the Node is still at `resource_version` (409
    /// otherwise): taints are one list with no merge key, so a blind write could drop a
    /// taint someone else added meanwhile.
    pub(super) async fn set_taints(
        &self,
        resource_version: &str,
        taints: &[Taint],
    ) -> Result<(), RemediationError> {
        let patch = json!({
            "metadata": { "resourceVersion": resource_version },
            "spec": { "taints": taints },
        });
        self.nodes
            .patch(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map(|_| ())
            .map_err(api_error("patch", format!("nodes/{}", self.node_name)))
    }

    /// Every Node's name, and which carry an npd taint.
    pub(super) async fn cluster_view(&self) -> Result<ClusterView, RemediationError> {
        let mut view = ClusterView::default();
        let mut params = ListParams::default().limit(NODE_PAGE);
        loop {
            let page = self
                .nodes
                .list(&params)
                .await
                .map_err(api_error("list", "nodes".to_owned()))?;
            for node in page.items {
                let Some(name) = node.metadata.name else {
                    continue;
                };
                let tainted = node
                    .spec
                    .and_then(|s| s.taints)
                    .is_some_and(|taints| taints.iter().any(is_own));
                if tainted {
                    view.tainted.insert(name.clone());
                }
                view.nodes.insert(name);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(view),
            }
        }
    }

    /// The budget's Lease (`None` if it does not exist yet) and the ledger in it.
    pub(super) async fn ledger(&self) -> Result<(Option<Lease>, Ledger), RemediationError> {
        let lease = self
            .leases
            .get_opt(&self.lease_name)
            .await
            .map_err(api_error("get", self.lease_resource()))?;
        let annotation = lease
            .as_ref()
            .and_then(|l| l.metadata.annotations.as_ref())
            .and_then(|a| a.get(LEDGER_ANNOTATION));
        let ledger = Ledger::parse(annotation.map(String::as_str)).map_err(|err| {
            RemediationError::CorruptLedger {
                resource: self.lease_resource(),
                message: err.to_string(),
            }
        })?;
        Ok((lease, ledger))
    }

    /// Writes `ledger` into the Lease as read (its resourceVersion makes this a
    /// compare-and-swap), or creates the Lease; a 409 means someone was faster.
    pub(super) async fn write_ledger(
        &self,
        read: Option<Lease>,
        ledger: &Ledger,
    ) -> Result<(), RemediationError> {
        match read {
            Some(mut lease) => {
                lease
                    .metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(LEDGER_ANNOTATION.to_owned(), ledger.to_annotation());
                self.leases
                    .replace(&self.lease_name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
                    .map_err(api_error("update", self.lease_resource()))
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease_name.clone()),
                        namespace: Some(self.lease_namespace.clone()),
                        annotations: Some(
                            [(LEDGER_ANNOTATION.to_owned(), ledger.to_annotation())].into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    ..Lease::default()
                };
                self.leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
                    .map_err(api_error("create", self.lease_resource()))
            }
        }
    }

    /// A core/v1 Event about the Node.
    pub(super) async fn event(
        &self,
        warning: bool,
        reason: &str,
        message: &str,
        at: SystemTime,
    ) -> Result<(), RemediationError> {
        let nanos = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let event = Event {
            metadata: ObjectMeta {
                // Like client-go's names: the object and a unique suffix.
                name: Some(format!("{}.{nanos:x}", self.node_name)),
                namespace: Some(self.event_namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(self.node_name.clone()),
                uid: self.node_uid.clone(),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_owned()),
            count: Some(1),
            first_timestamp: Some(k8s_time(at)),
            last_timestamp: Some(k8s_time(at)),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: Some(self.node_name.clone()),
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.node_name.clone()),
            ..Event::default()
        };
        match self.events.create(&PostParams::default(), &event).await {
            // Written before, the answer lost: it is there.
            Ok(_) => Ok(()),
            Err(err) if ApiFailure::classify(&err) == ApiFailure::Conflict => Ok(()),
            Err(err) => Err(api_error(
                "create",
                format!("events (namespace {})", self.event_namespace),
            )(err)),
        }
    }
}
