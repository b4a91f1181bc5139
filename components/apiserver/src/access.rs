//! Authentication and authorization of requests through `kinit-auth`, the store-backed
//! [`ObjectLookup`], and the task keeping the RBAC authorizer in sync with the store.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kinit_auth::{
    Attributes, AuthError, Authenticator, Authorizer, Decision, NodeAuthorizer, ObjectLookup,
    RbacAuthorizer, RbacKind, RbacObject, UserInfo, GROUP_UNAUTHENTICATED, USER_ANONYMOUS,
};
use kinit_store::Store;
use serde_json::Value;

use crate::error::{qualified, ApiError};
use crate::objects::Objects;
use crate::registry;
use crate::sync::{self, StoreView};

/// Which authorizers run, in order (`--authorization-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Kubelet/agent identities.
    Node,
    /// Role-based access control.
    Rbac,
    /// Everything allowed (tests and single-user labs only).
    AlwaysAllow,
    /// Everything denied.
    AlwaysDeny,
}

impl std::str::FromStr for AuthorizationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "Node" => Ok(AuthorizationMode::Node),
            "RBAC" => Ok(AuthorizationMode::Rbac),
            "AlwaysAllow" => Ok(AuthorizationMode::AlwaysAllow),
            "AlwaysDeny" => Ok(AuthorizationMode::AlwaysDeny),
            other => Err(format!(
                "unknown authorization mode `{other}`; use Node, RBAC, AlwaysAllow or AlwaysDeny"
            )),
        }
    }
}

/// Reads the objects kinit-auth needs from the store.
pub struct StoreLookup {
    objects: Objects,
    /// Pods by node, so a node's pods are found without scanning every pod.
    pods: Arc<PodsByNode>,
}

impl StoreLookup {
    /// Lookup over `store` with an index of pods by node, filled now and kept in sync from a
    /// store watch in the background.
    pub async fn new(store: Arc<dyn Store>) -> Result<Self, ApiError> {
        let pods = Arc::new(PodsByNode::default());
        let def = registry::find("", "v1", "pods").expect("pods are served");
        sync::start(store.clone(), vec![def], pods.clone(), "pods-by-node index").await?;
        Ok(StoreLookup {
            objects: Objects { store },
            pods,
        })
    }

    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<T>, AuthError> {
        let def = registry::find("", "v1", resource)
            .ok_or_else(|| AuthError::Lookup(format!("resource {resource} not served")))?;
        match self.objects.get(def, namespace, name).await {
            Ok(Some((v, _))) => serde_json::from_value(v).map(Some).map_err(|e| {
                AuthError::Lookup(format!(
                    "{resource} {namespace}/{name} is malformed in the store: {e}"
                ))
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(AuthError::Lookup(format!(
                "reading {resource} {namespace}/{name}: {}",
                e.message
            ))),
        }
    }
}

#[async_trait]
impl ObjectLookup for StoreLookup {
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, AuthError> {
        self.typed("secrets", namespace, name).await
    }

    async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ServiceAccount>, AuthError> {
        self.typed("serviceaccounts", namespace, name).await
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, AuthError> {
        self.typed("pods", namespace, name).await
    }

    async fn pods_on_node(&self, node: &str) -> Result<Vec<Pod>, AuthError> {
        let mut pods = Vec::new();
        for (namespace, name) in self.pods.pods_on(node) {
            // Read each pod: the index may trail the store by a moment.
            if let Some(pod) = self.pod(&namespace, &name).await? {
                if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node) {
                    pods.push(pod);
                }
            }
        }
        Ok(pods)
    }
}

/// Request authentication and authorization.
pub struct Access {
    authenticator: Authenticator,
    authorizer: Authorizer,
    /// The RBAC index (also used for SelfSubjectRulesReview).
    pub rbac: Arc<RbacAuthorizer>,
    /// The node authorizer (also used for node write admission).
    pub node: Arc<NodeAuthorizer>,
    modes: Vec<AuthorizationMode>,
    anonymous: bool,
}

impl Access {
    /// Builds the chain.
    pub fn new(
        authenticator: Authenticator,
        lookup: Arc<dyn ObjectLookup>,
        modes: Vec<AuthorizationMode>,
        anonymous: bool,
    ) -> Access {
        let rbac = Arc::new(RbacAuthorizer::new());
        let node = Arc::new(NodeAuthorizer::new(lookup));
        Access {
            authenticator,
            authorizer: Authorizer::new(node.clone(), rbac.clone()),
            rbac,
            node,
            modes,
            anonymous,
        }
    }

    /// Who is calling: the verified client certificate first, then a bearer token, else
    /// anonymous (only with `--anonymous-auth`).
    pub async fn authenticate(
        &self,
        client_cert: Option<&[u8]>,
        authorization: Option<&str>,
    ) -> Result<UserInfo, ApiError> {
        if let Some(der) = client_cert {
            return self
                .authenticator
                .from_client_certificate(der)
                .map_err(|e| ApiError::unauthorized(format!("Unauthorized: {e}")));
        }
        if let Some(header) = authorization {
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty());
            if let Some(token) = token {
                return self
                    .authenticator
                    .from_bearer_token(token)
                    .await
                    .map_err(|e| match e {
                        AuthError::Lookup(m) => {
                            ApiError::internal(format!("authentication lookup failed: {m}"))
                        }
                        other => ApiError::unauthorized(format!("Unauthorized: {other}")),
                    });
            }
        }
        if self.anonymous {
            return Ok(UserInfo::new(USER_ANONYMOUS, [GROUP_UNAUTHENTICATED]));
        }
        Err(ApiError::unauthorized("Unauthorized"))
    }

    /// Runs the configured authorizers in order.
    pub async fn authorize(&self, attrs: &Attributes) -> Decision {
        let mut reasons = Vec::new();
        let node_and_rbac = self.modes.contains(&AuthorizationMode::Node)
            && self.modes.contains(&AuthorizationMode::Rbac);
        for mode in &self.modes {
            match mode {
                AuthorizationMode::AlwaysAllow => {
                    return Decision {
                        allowed: true,
                        reason: String::new(),
                    }
                }
                AuthorizationMode::AlwaysDeny => {
                    return Decision {
                        allowed: false,
                        reason: "AlwaysDeny".into(),
                    }
                }
                AuthorizationMode::Node if node_and_rbac => {
                    // The kinit-auth chain runs node then RBAC in one call.
                    let d = self.authorizer.authorize(attrs).await;
                    if d.allowed {
                        return d;
                    }
                    reasons.push(d.reason);
                }
                AuthorizationMode::Rbac if node_and_rbac => {}
                AuthorizationMode::Node => match self.node.authorize(attrs).await {
                    Some(d) if d.allowed => return d,
                    Some(d) => reasons.push(d.reason),
                    None => {}
                },
                AuthorizationMode::Rbac => {
                    let d = self.rbac.authorize(attrs);
                    if d.allowed {
                        return d;
                    }
                    reasons.push(d.reason);
                }
            }
        }
        Decision {
            allowed: false,
            reason: reasons.join("; "),
        }
    }

    /// Whether the RBAC authorizer is in use (SelfSubjectRulesReview answers from it).
    pub fn uses_rbac(&self) -> bool {
        self.modes.contains(&AuthorizationMode::Rbac)
    }
}

/// The 403 message Kubernetes gives for a denied request.
pub fn forbidden(attrs: &Attributes, reason: &str) -> ApiError {
    let user = &attrs.user.name;
    let mut msg = if attrs.resource_request {
        let res = attrs.combined_resource();
        let scope = if attrs.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", attrs.namespace)
        };
        format!(
            "User \"{user}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
            attrs.verb, attrs.api_group
        )
    } else {
        format!(
            "User \"{user}\" cannot {} path \"{}\"",
            attrs.verb, attrs.path
        )
    };
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    if !attrs.resource_request {
        let mut e = ApiError::forbidden("", "", "", format!("forbidden: {msg}"));
        e.details = Some(serde_json::json!({}));
        return e;
    }
    let what = qualified(&attrs.api_group, &attrs.combined_resource());
    let full = if attrs.name.is_empty() {
        format!("{what} is forbidden: {msg}")
    } else {
        format!("{what} \"{}\" is forbidden: {msg}", attrs.name)
    };
    ApiError::forbidden(&attrs.api_group, &attrs.resource, &attrs.name, full)
}

fn rbac_object(kind: RbacKind, v: Value) -> Result<RbacObject, serde_json::Error> {
    Ok(match kind {
        RbacKind::Role => RbacObject::Role(serde_json::from_value(v)?),
        RbacKind::ClusterRole => RbacObject::ClusterRole(serde_json::from_value(v)?),
        RbacKind::RoleBinding => RbacObject::RoleBinding(serde_json::from_value(v)?),
        RbacKind::ClusterRoleBinding => RbacObject::ClusterRoleBinding(serde_json::from_value(v)?),
    })
}

const RBAC_RESOURCES: [(&str, RbacKind); 4] = [
    ("clusterroles", RbacKind::ClusterRole),
    ("roles", RbacKind::Role),
    ("clusterrolebindings", RbacKind::ClusterRoleBinding),
    ("rolebindings", RbacKind::RoleBinding),
];

fn ns_name(v: &Value) -> (String, String) {
    let m = v.get("metadata");
    let s = |k: &str| {
        m.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("namespace"), s("name"))
}

/// The RBAC authorizer as a store view; `known` remembers what it holds, so a re-list can
/// drop what was deleted while no watch was running.
struct RbacView {
    rbac: Arc<RbacAuthorizer>,
    known: Mutex<HashSet<(usize, String, String)>>,
}

impl RbacView {
    fn upsert(&self, index: usize, object: Value) -> Option<(usize, String, String)> {
        let (kind, resource) = (RBAC_RESOURCES[index].1, RBAC_RESOURCES[index].0);
        let (ns, name) = ns_name(&object);
        match rbac_object(kind, object) {
            Ok(obj) => {
                self.rbac.upsert(obj);
                Some((index, ns, name))
            }
            Err(e) => {
                tracing::warn!("ignoring malformed {resource} {ns}/{name} in the store: {e}");
                None
            }
        }
    }
}

impl StoreView for RbacView {
    fn reset(&self, objects: Vec<(usize, Value)>) {
        let seen: HashSet<(usize, String, String)> = objects
            .into_iter()
            .filter_map(|(index, object)| self.upsert(index, object))
            .collect();
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        for (index, ns, name) in known.difference(&seen) {
            self.rbac.remove(RBAC_RESOURCES[*index].1, ns, name);
        }
        *known = seen;
    }

    fn put(&self, index: usize, object: Value) {
        if let Some(key) = self.upsert(index, object) {
            self.known
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key);
        }
    }

    fn delete(&self, index: usize, object: Value) {
        let (ns, name) = ns_name(&object);
        self.rbac.remove(RBAC_RESOURCES[index].1, &ns, &name);
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(index, ns, name));
    }
}

/// Loads RBAC objects now, then keeps `rbac` in sync from store watches in the background
/// (re-listing after a compaction or a lagging watch).
pub async fn start_rbac_sync(
    store: Arc<dyn Store>,
    rbac: Arc<RbacAuthorizer>,
) -> Result<(), ApiError> {
    let resources = RBAC_RESOURCES
        .iter()
        .map(|(resource, _)| {
            registry::find("rbac.authorization.k8s.io", "v1", resource).expect("rbac served")
        })
        .collect();
    let view = Arc::new(RbacView {
        rbac,
        known: Mutex::new(HashSet::new()),
    });
    sync::start(store, resources, view, "RBAC cache").await
}

/// Which pods are bound to which node, by `(namespace, name)`: the node authorizer reads only
/// the pods of the asking node instead of scanning every pod of the cluster.
#[derive(Default)]
pub struct PodsByNode {
    inner: RwLock<PodIndex>,
}

#[derive(Default)]
struct PodIndex {
    by_node: HashMap<String, BTreeSet<(String, String)>>,
    node_of: HashMap<(String, String), String>,
}

impl PodIndex {
    fn remove(&mut self, key: &(String, String)) {
        if let Some(node) = self.node_of.remove(key) {
            if let Some(keys) = self.by_node.get_mut(&node) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_node.remove(&node);
                }
            }
        }
    }

    fn put(&mut self, pod: &Value) {
        let key = ns_name(pod);
        self.remove(&key);
        if let Some(node) = node_name(pod) {
            self.by_node
                .entry(node.to_string())
                .or_default()
                .insert(key.clone());
            self.node_of.insert(key, node.to_string());
        }
    }
}

fn node_name(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

impl PodsByNode {
    /// The `(namespace, name)` of every pod bound to `node`.
    pub fn pods_on(&self, node: &str) -> Vec<(String, String)> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_node
            .get(node)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl StoreView for PodsByNode {
    fn reset(&self, objects: Vec<(usize, Value)>) {
        let mut fresh = PodIndex::default();
        for (_, pod) in &objects {
            fresh.put(pod);
        }
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    fn put(&self, _: usize, pod: Value) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .put(&pod);
    }

    fn delete(&self, _: usize, pod: Value) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ns_name(&pod));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_messages_like_kubernetes() {
        let attrs = Attributes::resource(
            UserInfo::new("alice", ["dev"]),
            "list",
            "default",
            "",
            "pods",
            "",
        );
        let e = forbidden(&attrs, "");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let attrs = Attributes::resource(
            UserInfo::new("bob", ["dev"]),
            "get",
            "",
            "apps",
            "deployments/scale",
            "web",
        );
        let e = forbidden(&attrs, "no rule");
        assert_eq!(
            e.message,
            "deployments/scale.apps \"web\" is forbidden: User \"bob\" cannot get resource \"deployments/scale\" in API group \"apps\" at the cluster scope: no rule"
        );
        let attrs = Attributes::non_resource(UserInfo::new("x", ["y"]), "get", "/version");
        assert_eq!(
            forbidden(&attrs, "").message,
            "forbidden: User \"x\" cannot get path \"/version\""
        );
    }

    #[test]
    fn pods_by_node_follows_binding_moves_and_deletion() {
        let pod = |ns: &str, name: &str, node: Option<&str>| {
            let mut p =
                serde_json::json!({"metadata": {"namespace": ns, "name": name}, "spec": {}});
            if let Some(n) = node {
                p["spec"]["nodeName"] = serde_json::json!(n);
            }
            p
        };
        let key = |ns: &str, name: &str| (ns.to_string(), name.to_string());
        let index = PodsByNode::default();
        index.reset(vec![
            (0, pod("a", "one", Some("n1"))),
            (0, pod("a", "two", Some("n1"))),
            (0, pod("b", "pending", None)),
        ]);
        assert_eq!(index.pods_on("n1"), [key("a", "one"), key("a", "two")]);
        // Scheduled, moved (re-created elsewhere under the same name), deleted.
        index.put(0, pod("b", "pending", Some("n2")));
        index.put(0, pod("a", "two", Some("n2")));
        assert_eq!(index.pods_on("n1"), [key("a", "one")]);
        assert_eq!(index.pods_on("n2"), [key("a", "two"), key("b", "pending")]);
        index.delete(0, pod("a", "one", Some("n1")));
        assert!(index.pods_on("n1").is_empty());
        // A re-list replaces everything.
        index.reset(vec![(0, pod("c", "three", Some("n3")))]);
        assert!(index.pods_on("n2").is_empty());
        assert_eq!(index.pods_on("n3"), [key("c", "three")]);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            "RBAC".parse::<AuthorizationMode>().unwrap(),
            AuthorizationMode::Rbac
        );
        assert!("ABAC".parse::<AuthorizationMode>().is_err());
    }
}
