//! The node authorizer and the node-restriction checks for writes whose body matters.
//!
//! Follows Kubernetes' NodeAuthorizer + NodeRestriction, simplified: instead of a graph kept in
//! sync, references are found by listing the pods bound to the node at request time
//! ([`ObjectLookup::pods_on_node`]). Persistent volumes, volume attachments and DRA objects are
//! not graph-checked here (no opinion: RBAC decides).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, Node, Pod, PodSpec, Volume};

use crate::{Attributes, AuthError, Decision, ObjectLookup, UserInfo};

/// Annotation marking mirror pods (the API copies of static pods).
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Namespace of node heartbeat leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Label prefix a node may not set or change on itself.
pub const NODE_RESTRICTION_LABEL_PREFIX: &str = "node-restriction.kubernetes.io/";

/// Objects a pod refers to, in the pod's namespace.
#[derive(Debug, Default, PartialEq, Eq)]
struct PodReferences {
    secrets: BTreeSet<String>,
    config_maps: BTreeSet<String>,
    claims: BTreeSet<String>,
    service_account: String,
}

fn add_env(refs: &mut PodReferences, env: &[EnvVar], env_from: &[EnvFromSource]) {
    for var in env {
        if let Some(from) = &var.value_from {
            if let Some(s) = &from.secret_key_ref {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(c) = &from.config_map_key_ref {
                refs.config_maps.insert(c.name.clone());
            }
        }
    }
    for source in env_from {
        if let Some(s) = &source.secret_ref {
            refs.secrets.insert(s.name.clone());
        }
        if let Some(c) = &source.config_map_ref {
            refs.config_maps.insert(c.name.clone());
        }
    }
}

fn add_volume(refs: &mut PodReferences, pod_name: &str, volume: &Volume) {
    let mut secret = |name: Option<&String>| {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            refs.secrets.insert(name.clone());
        }
    };
    secret(volume.secret.as_ref().and_then(|s| s.secret_name.as_ref()));
    secret(volume.azure_file.as_ref().map(|a| &a.secret_name));
    secret(
        volume
            .cephfs
            .as_ref()
            .and_then(|c| c.secret_ref.as_ref())
            .map(|r| &r.name),
    );
    secret(
        volume
            .rbd
            .as_ref()
            .and_then(|c| c.secret_ref.as_ref())
            .map(|r| &r.name),
    );
    secret(
        volume
            .flex_volume
            .as_ref()
            .and_then(|c| c.secret_ref.as_ref())
            .map(|r| &r.name),
    );
    secret(
        volume
            .iscsi
            .as_ref()
            .and_then(|c| c.secret_ref.as_ref())
            .map(|r| &r.name),
    );
    secret(
        volume
            .csi
            .as_ref()
            .and_then(|c| c.node_publish_secret_ref.as_ref())
            .map(|r| &r.name),
    );
    if let Some(cm) = &volume.config_map {
        refs.config_maps.insert(cm.name.clone());
    }
    for source in volume
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
    {
        if let Some(s) = &source.secret {
            refs.secrets.insert(s.name.clone());
        }
        if let Some(c) = &source.config_map {
            refs.config_maps.insert(c.name.clone());
        }
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        refs.claims.insert(claim.claim_name.clone());
    }
    if volume.ephemeral.is_some() {
        // Generic ephemeral volumes create a claim named <pod>-<volume>.
        refs.claims.insert(format!("{pod_name}-{}", volume.name));
    }
}

fn pod_references(pod: &Pod) -> PodReferences {
    let mut refs = PodReferences::default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = &pod.spec else {
        refs.service_account = "default".into();
        return refs;
    };
    let containers = |c: &Container| {
        (
            c.env.clone().unwrap_or_default(),
            c.env_from.clone().unwrap_or_default(),
        )
    };
    let mut all: Vec<(Vec<EnvVar>, Vec<EnvFromSource>)> =
        spec.containers.iter().map(containers).collect();
    all.extend(spec.init_containers.iter().flatten().map(containers));
    for ephemeral in spec.ephemeral_containers.iter().flatten() {
        all.push((
            ephemeral.env.clone().unwrap_or_default(),
            ephemeral.env_from.clone().unwrap_or_default(),
        ));
    }
    for (env, env_from) in &all {
        add_env(&mut refs, env, env_from);
    }
    for volume in spec.volumes.iter().flatten() {
        add_volume(&mut refs, name, volume);
    }
    for pull in spec.image_pull_secrets.iter().flatten() {
        if !pull.name.is_empty() {
            refs.secrets.insert(pull.name.clone());
        }
    }
    refs.service_account = service_account_of(spec);
    refs
}

fn service_account_of(spec: &PodSpec) -> String {
    #[allow(deprecated)]
    let legacy = spec.service_account.as_deref();
    spec.service_account_name
        .as_deref()
        .or(legacy)
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_string()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION))
}

/// Kinds of objects a node may read when a pod bound to it refers to them.
#[derive(Debug, Clone, Copy)]
enum Referenced {
    Secret,
    ConfigMap,
    Claim,
    ServiceAccount,
}

impl Referenced {
    fn label(self) -> &'static str {
        match self {
            Referenced::Secret => "secret",
            Referenced::ConfigMap => "configmap",
            Referenced::Claim => "persistentvolumeclaim",
            Referenced::ServiceAccount => "serviceaccount",
        }
    }

    fn referenced_by(self, refs: &PodReferences, name: &str) -> bool {
        match self {
            Referenced::Secret => refs.secrets.contains(name),
            Referenced::ConfigMap => refs.config_maps.contains(name),
            Referenced::Claim => refs.claims.contains(name),
            Referenced::ServiceAccount => refs.service_account == name,
        }
    }
}

/// A write by a node whose body the authorizer did not see (see [`NodeAuthorizer::admit`]).
#[derive(Debug, Clone, Copy)]
pub enum NodeWrite<'a> {
    /// `create pods`: nodes may only create mirror pods bound to themselves.
    CreatePod(&'a Pod),
    /// `create`/`update`/`patch` of a Node (`old` is `None` on create).
    Node {
        /// The object as it would be stored.
        new: &'a Node,
        /// The stored object before the write.
        old: Option<&'a Node>,
    },
    /// `create serviceaccounts/token`: tokens must be bound to a pod on the node.
    TokenRequest {
        /// Namespace of the service account.
        namespace: &'a str,
        /// Name of the service account.
        service_account: &'a str,
        /// `(name, uid)` of `spec.boundObjectRef` when it is a Pod.
        bound_pod: Option<(&'a str, &'a str)>,
    },
}

/// The node authorizer (Kubernetes' NodeAuthorizer semantics, simplified where noted in docs):
/// users `system:node:<name>` in group `system:nodes` may read services/endpoints/nodes/pods, create and
/// update their own Node and node status, create/update/delete mirror pods bound to themselves and
/// update status of pods bound to them, read secrets/configmaps/pvcs/serviceaccount tokens referenced
/// by pods bound to them, create events, manage Lease `kube-node-lease/<name>`, create/get CSRs.
/// Anything else → "no opinion" (falls through to RBAC).
///
/// For creates, the API server must put the new object's name into [`Attributes::name`]
/// (nodes, leases, csinodes): an unnamed create of those is refused. kinit's agent also runs the
/// service proxy under the node identity, so nodes may read endpointslices too.
pub struct NodeAuthorizer {
    lookup: Arc<dyn ObjectLookup>,
}

impl std::fmt::Debug for NodeAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuthorizer").finish_non_exhaustive()
    }
}

const READ: &[&str] = &["get", "list", "watch"];

impl NodeAuthorizer {
    /// A node authorizer reading pods, secrets and service accounts through `lookup`.
    pub fn new(lookup: Arc<dyn ObjectLookup>) -> Self {
        NodeAuthorizer { lookup }
    }

    /// `None` when the request is not a node's resource request (no opinion); `Some(allowed)`
    /// when allowed. `Some` with `allowed == false` is a refusal *with a reason* but not a final
    /// denial: [`crate::Authorizer`] still asks RBAC, as Kubernetes does with a no-opinion answer.
    pub async fn authorize(&self, attrs: &Attributes) -> Option<Decision> {
        let node = attrs.user.node_name()?;
        if !attrs.resource_request {
            return None;
        }
        let verb = attrs.verb.as_str();
        let one_of = |verbs: &[&str]| verbs.contains(&verb);
        let allow = || {
            Some(Decision::allow(format!(
                "node authorizer: allowed for node {node:?}"
            )))
        };
        let refuse = |why: String| {
            Some(Decision::deny(format!(
                "node authorizer: node {node:?} cannot {}: {why}",
                attrs.describe()
            )))
        };
        let own_name = |what: &str| {
            if attrs.name == node {
                allow()
            } else {
                refuse(format!("a node may only {verb} its own {what}"))
            }
        };
        match (
            attrs.api_group.as_str(),
            attrs.resource.as_str(),
            attrs.subresource.as_str(),
        ) {
            ("", "secrets", "") => {
                self.referenced(attrs, node, Referenced::Secret, &["get"])
                    .await
            }
            ("", "configmaps", "") => {
                self.referenced(attrs, node, Referenced::ConfigMap, &["get"])
                    .await
            }
            ("", "persistentvolumeclaims", "") => {
                self.referenced(attrs, node, Referenced::Claim, &["get"])
                    .await
            }
            ("", "serviceaccounts", "token") => {
                self.referenced(attrs, node, Referenced::ServiceAccount, &["create"])
                    .await
            }
            ("", "nodes", "") if one_of(READ) => allow(),
            ("", "nodes", "") if one_of(&["create", "update", "patch"]) => own_name("Node object"),
            ("", "nodes", "status") if one_of(&["get", "update", "patch"]) => {
                own_name("Node status")
            }
            ("", "pods", "") if one_of(READ) => allow(),
            // The body is checked by `admit(NodeWrite::CreatePod)`: mirror pods bound to the node.
            ("", "pods", "") if verb == "create" => allow(),
            ("", "pods", "") if verb == "delete" => self.bound_pod(attrs, node, false).await,
            ("", "pods", "") if one_of(&["update", "patch"]) => {
                self.bound_pod(attrs, node, true).await
            }
            ("", "pods", "status") if one_of(&["get", "update", "patch"]) => {
                self.bound_pod(attrs, node, false).await
            }
            ("", "pods", "eviction") if verb == "create" => {
                self.bound_pod(attrs, node, false).await
            }
            ("", "services" | "endpoints", "") if one_of(READ) => allow(),
            ("discovery.k8s.io", "endpointslices", "") if one_of(READ) => allow(),
            ("" | "events.k8s.io", "events", "") if one_of(&["create", "update", "patch"]) => {
                allow()
            }
            ("coordination.k8s.io", "leases", "") => {
                if !one_of(&["get", "create", "update", "patch", "delete"]) {
                    refuse("nodes may only get, create, update, patch or delete their lease".into())
                } else if attrs.namespace != NODE_LEASE_NAMESPACE || attrs.name != node {
                    refuse(format!(
                        "a node may only use the lease {NODE_LEASE_NAMESPACE}/{node}"
                    ))
                } else {
                    allow()
                }
            }
            ("certificates.k8s.io", "certificatesigningrequests", "")
                if one_of(&["create", "get", "list", "watch"]) =>
            {
                allow()
            }
            ("authentication.k8s.io", "tokenreviews", "") if verb == "create" => allow(),
            ("authorization.k8s.io", "subjectaccessreviews" | "localsubjectaccessreviews", "")
                if verb == "create" =>
            {
                allow()
            }
            ("storage.k8s.io", "csinodes", "")
                if one_of(&["get", "create", "update", "patch", "delete"]) =>
            {
                own_name("CSINode object")
            }
            ("storage.k8s.io", "csidrivers", "") if one_of(READ) => allow(),
            ("node.k8s.io", "runtimeclasses", "") if one_of(READ) => allow(),
            (
                "",
                "secrets"
                | "configmaps"
                | "persistentvolumeclaims"
                | "nodes"
                | "pods"
                | "services"
                | "endpoints"
                | "events",
                _,
            )
            | ("coordination.k8s.io", "leases", _)
            | ("certificates.k8s.io", "certificatesigningrequests", _)
            | ("storage.k8s.io", "csinodes", _) => {
                refuse("not among the node's permissions".into())
            }
            _ => None,
        }
    }

    /// Allows `verbs` on a named object of `kind` when a pod bound to the node refers to it.
    async fn referenced(
        &self,
        attrs: &Attributes,
        node: &str,
        kind: Referenced,
        verbs: &[&str],
    ) -> Option<Decision> {
        let label = kind.label();
        let refuse = |why: String| {
            Some(Decision::deny(format!(
                "node authorizer: node {node:?} cannot {}: {why}",
                attrs.describe()
            )))
        };
        if !verbs.contains(&attrs.verb.as_str())
            || attrs.name.is_empty()
            || attrs.namespace.is_empty()
        {
            return refuse(format!(
                "nodes may only {} individual {label}s by name",
                verbs.join("/")
            ));
        }
        let pods = match self.lookup.pods_on_node(node).await {
            Ok(pods) => pods,
            Err(e) => return refuse(format!("cannot list the pods bound to the node: {e}")),
        };
        let referencing = pods.iter().find(|pod| {
            pod.metadata.namespace.as_deref() == Some(attrs.namespace.as_str())
                && kind.referenced_by(&pod_references(pod), &attrs.name)
        });
        match referencing {
            Some(pod) => Some(Decision::allow(format!(
                "node authorizer: {label} {}/{} is referenced by pod {:?} bound to node {node:?}",
                attrs.namespace,
                attrs.name,
                pod.metadata.name.as_deref().unwrap_or_default()
            ))),
            None => refuse(format!(
                "no pod bound to this node references {label} {}/{}",
                attrs.namespace, attrs.name
            )),
        }
    }

    /// Allows the request when the named pod is bound to the node (and is a mirror pod when
    /// `mirror_only`).
    async fn bound_pod(
        &self,
        attrs: &Attributes,
        node: &str,
        mirror_only: bool,
    ) -> Option<Decision> {
        let refuse = |why: String| {
            Some(Decision::deny(format!(
                "node authorizer: node {node:?} cannot {}: {why}",
                attrs.describe()
            )))
        };
        if attrs.name.is_empty() || attrs.namespace.is_empty() {
            return refuse("nodes may only act on individual pods by name".into());
        }
        let pod = match self.lookup.pod(&attrs.namespace, &attrs.name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => {
                return refuse(format!(
                    "pod {}/{} does not exist",
                    attrs.namespace, attrs.name
                ))
            }
            Err(e) => return refuse(format!("cannot read the pod: {e}")),
        };
        if node_of(&pod) != Some(node) {
            return refuse(format!(
                "pod {}/{} is not bound to this node",
                attrs.namespace, attrs.name
            ));
        }
        if mirror_only && !is_mirror(&pod) {
            return refuse(format!(
                "pod {}/{} is not a mirror pod; nodes may only change the spec of their mirror pods",
                attrs.namespace, attrs.name
            ));
        }
        Some(Decision::allow(format!(
            "node authorizer: pod bound to node {node:?}"
        )))
    }

    /// Node restriction for writes whose body matters (Kubernetes' NodeRestriction admission).
    /// `Ok` for users that are not nodes; `Err(Forbidden)` explains what the node may not do.
    pub async fn admit(&self, user: &UserInfo, write: NodeWrite<'_>) -> Result<(), AuthError> {
        let Some(node) = user.node_name() else {
            return Ok(());
        };
        let forbid = |why: String| Err(AuthError::Forbidden(format!("node {node:?}: {why}")));
        match write {
            NodeWrite::CreatePod(pod) => {
                if !is_mirror(pod) {
                    return forbid(format!(
                        "may only create mirror pods (annotation {MIRROR_POD_ANNOTATION})"
                    ));
                }
                if node_of(pod) != Some(node) {
                    return forbid(
                        "may only create mirror pods with spec.nodeName set to itself".into(),
                    );
                }
                let refs = pod_references(pod);
                let explicit_sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.as_deref());
                if explicit_sa.is_some_and(|s| !s.is_empty() && s != "default") {
                    return forbid("may not create mirror pods that use a service account".into());
                }
                if !refs.secrets.is_empty()
                    || !refs.config_maps.is_empty()
                    || !refs.claims.is_empty()
                {
                    return forbid(
                        "may not create mirror pods that reference secrets, configmaps or persistentvolumeclaims".into(),
                    );
                }
                for owner in pod.metadata.owner_references.iter().flatten() {
                    if owner.kind != "Node" || owner.name != node {
                        return forbid(format!(
                            "mirror pods may only be owned by Node {node:?}, not {} {:?}",
                            owner.kind, owner.name
                        ));
                    }
                }
                Ok(())
            }
            NodeWrite::Node { new, old } => {
                if new.metadata.name.as_deref() != Some(node) {
                    return forbid(format!(
                        "may not write Node {:?}, only its own",
                        new.metadata.name.as_deref().unwrap_or_default()
                    ));
                }
                let restricted = |n: Option<&Node>| {
                    n.and_then(|n| n.metadata.labels.clone())
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(k, _)| restricted_label(k))
                        .collect::<Vec<_>>()
                };
                if restricted(Some(new)) != restricted(old) {
                    return forbid(format!(
                        "may not set or change labels under {NODE_RESTRICTION_LABEL_PREFIX} on itself"
                    ));
                }
                if let Some(old) = old {
                    let taints = |n: &Node| {
                        n.spec
                            .as_ref()
                            .and_then(|s| s.taints.clone())
                            .unwrap_or_default()
                    };
                    if taints(new) != taints(old) {
                        return forbid("may not change its own taints after registration".into());
                    }
                }
                Ok(())
            }
            NodeWrite::TokenRequest {
                namespace,
                service_account,
                bound_pod,
            } => {
                let Some((pod_name, pod_uid)) = bound_pod else {
                    return forbid("may only request service-account tokens bound to a pod".into());
                };
                let pod = match self.lookup.pod(namespace, pod_name).await? {
                    Some(pod) => pod,
                    None => return forbid(format!("pod {namespace}/{pod_name} does not exist")),
                };
                if node_of(&pod) != Some(node) {
                    return forbid(format!(
                        "pod {namespace}/{pod_name} is not bound to this node"
                    ));
                }
                if pod.metadata.uid.as_deref() != Some(pod_uid) {
                    return forbid(format!(
                        "pod {namespace}/{pod_name} has a different uid than requested"
                    ));
                }
                let used = pod
                    .spec
                    .as_ref()
                    .map(service_account_of)
                    .unwrap_or_else(|| "default".into());
                if used != service_account {
                    return forbid(format!(
                        "pod {namespace}/{pod_name} runs as service account {used:?}, not {service_account:?}"
                    ));
                }
                Ok(())
            }
        }
    }
}

fn restricted_label(key: &str) -> bool {
    let prefix = key.split_once('/').map(|(p, _)| p).unwrap_or_default();
    key.starts_with(NODE_RESTRICTION_LABEL_PREFIX)
        || prefix.ends_with(".node-restriction.kubernetes.io")
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
