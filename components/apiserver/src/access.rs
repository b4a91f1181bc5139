//! Authentication and authorization of requests through `kinit-auth`, the store-backed
//! [`ObjectLookup`], and the task keeping the RBAC authorizer in sync with the store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kinit_auth::{
    Attributes, AuthError, Authenticator, Authorizer, Decision, NodeAuthorizer, ObjectLookup,
    RbacAuthorizer, RbacKind, RbacObject, UserInfo, GROUP_UNAUTHENTICATED, USER_ANONYMOUS,
};
use kinit_store::{Store, WatchEvent};
use serde_json::Value;

use crate::error::{qualified, ApiError};
use crate::objects::{decode, Objects};
use crate::registry;

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
}

impl StoreLookup {
    /// Lookup over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreLookup {
            objects: Objects { store },
        }
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
        let def = registry::find("", "v1", "pods").expect("pods are served");
        // A full scan: fine for the pod counts one control plane serves; an index by node
        // would come with a watch cache.
        let (items, _) = self
            .objects
            .list_all(def, None)
            .await
            .map_err(|e| AuthError::Lookup(format!("listing pods: {}", e.message)))?;
        items
            .into_iter()
            .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
            .map(|p| {
                serde_json::from_value(p)
                    .map_err(|e| AuthError::Lookup(format!("malformed pod in the store: {e}")))
            })
            .collect()
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

/// Loads every RBAC object into `rbac` once; returns the revision to watch from and the keys seen.
async fn load_rbac(
    store: &Arc<dyn Store>,
    rbac: &RbacAuthorizer,
    known: &mut HashSet<(usize, String, String)>,
) -> Result<i64, ApiError> {
    let objects = Objects {
        store: store.clone(),
    };
    let mut revision = 0;
    let mut seen = HashSet::new();
    for (idx, (resource, kind)) in RBAC_RESOURCES.iter().enumerate() {
        let def = registry::find("rbac.authorization.k8s.io", "v1", resource).expect("rbac served");
        let (items, rev) = objects.list_all(def, None).await?;
        revision = if revision == 0 {
            rev
        } else {
            revision.min(rev)
        };
        for item in items {
            let (ns, name) = ns_name(&item);
            match rbac_object(*kind, item) {
                Ok(obj) => {
                    rbac.upsert(obj);
                    seen.insert((idx, ns, name));
                }
                Err(e) => {
                    tracing::warn!("ignoring malformed {resource} {ns}/{name} in the store: {e}")
                }
            }
        }
    }
    for (idx, ns, name) in known.difference(&seen) {
        rbac.remove(RBAC_RESOURCES[*idx].1, ns, name);
    }
    *known = seen;
    Ok(revision)
}

/// Loads RBAC objects now, then keeps `rbac` in sync from store watches in the background
/// (re-listing after a compaction or a lagging watch).
pub async fn start_rbac_sync(
    store: Arc<dyn Store>,
    rbac: Arc<RbacAuthorizer>,
) -> Result<(), ApiError> {
    let mut known = HashSet::new();
    let revision = load_rbac(&store, &rbac, &mut known).await?;
    tokio::spawn(async move {
        let mut revision = revision;
        loop {
            let mut streams = Vec::new();
            for (idx, (resource, _)) in RBAC_RESOURCES.iter().enumerate() {
                let def = registry::find("rbac.authorization.k8s.io", "v1", resource)
                    .expect("rbac served");
                match store.watch(&def.prefix(None), revision).await {
                    Ok(s) => streams.push(s.map(move |e| (idx, e)).boxed()),
                    Err(e) => tracing::warn!("RBAC watch on {resource} failed: {e}; re-listing"),
                }
            }
            if streams.len() == RBAC_RESOURCES.len() {
                let mut merged = futures::stream::select_all(streams);
                while let Some((idx, event)) = merged.next().await {
                    let kind = RBAC_RESOURCES[idx].1;
                    match event {
                        Ok(WatchEvent::Put { kv, .. }) => match decode(&kv)
                            .map(|v| (ns_name(&v), v))
                        {
                            Ok(((ns, name), v)) => match rbac_object(kind, v) {
                                Ok(obj) => {
                                    rbac.upsert(obj);
                                    known.insert((idx, ns, name));
                                }
                                Err(e) => {
                                    tracing::warn!("ignoring malformed RBAC object {}: {e}", kv.key)
                                }
                            },
                            Err(e) => tracing::warn!(
                                "ignoring undecodable RBAC object {}: {}",
                                kv.key,
                                e.message
                            ),
                        },
                        Ok(WatchEvent::Delete { prev, .. }) => {
                            if let Ok(v) = decode(&prev) {
                                let (ns, name) = ns_name(&v);
                                rbac.remove(kind, &ns, &name);
                                known.remove(&(idx, ns, name));
                            }
                        }
                        Ok(WatchEvent::Progress { .. }) => {}
                        Err(e) => {
                            tracing::warn!("RBAC watch ended: {e}; re-listing");
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            match load_rbac(&store, &rbac, &mut known).await {
                Ok(rev) => revision = rev,
                Err(e) => tracing::warn!("re-listing RBAC objects failed: {}", e.message),
            }
        }
    });
    Ok(())
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
    fn modes_parse() {
        assert_eq!(
            "RBAC".parse::<AuthorizationMode>().unwrap(),
            AuthorizationMode::Rbac
        );
        assert!("ABAC".parse::<AuthorizationMode>().is_err());
    }
}
