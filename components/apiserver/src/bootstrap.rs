//! Objects every cluster has, created at start when missing: the system namespaces, their
//! `default` service accounts, the `kubernetes` service with its Endpoints/EndpointSlice, the
//! system PriorityClasses and the default RBAC policy.
//!
//! The `default` ServiceAccount of each namespace is created by the API server itself when the
//! namespace is created (Kubernetes does this in its service-account controller).

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::error::{ApiError, ApiServerError, StatusReason};
use crate::objects::{meta_str, now_string};
use crate::registry::{self, ResourceDef};
use crate::state::State;

/// Namespaces created at start.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

fn def(group: &str, resource: &str) -> &'static ResourceDef {
    registry::find(group, "v1", resource).expect("built-in resource is served")
}

fn new_meta(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({"name": name, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now_string()});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

/// Creates `obj` unless it exists; AlreadyExists is success.
async fn create_if_missing(
    state: &State,
    def: &ResourceDef,
    namespace: &str,
    name: &str,
    mut obj: Value,
) -> Result<(), ApiError> {
    if state.objects.get(def, namespace, name).await?.is_some() {
        return Ok(());
    }
    obj["kind"] = json!(def.kind);
    obj["apiVersion"] = json!(def.api_version());
    (def.default)(&mut obj);
    match state.objects.create(def, namespace, name, &obj).await {
        Ok(_) => Ok(()),
        Err(e) if e.is(StatusReason::AlreadyExists) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the `default` ServiceAccount in `namespace` (logged on failure; the request that
/// created the namespace has already succeeded).
pub async fn ensure_default_service_account(state: &State, namespace: &str) {
    let obj = json!({"metadata": new_meta("default", Some(namespace))});
    if let Err(e) =
        create_if_missing(state, def("", "serviceaccounts"), namespace, "default", obj).await
    {
        tracing::warn!(
            "creating the default service account in namespace {namespace}: {}",
            e.message
        );
    }
}

fn bootstrap_err(what: &str) -> impl Fn(ApiError) -> ApiServerError + '_ {
    move |e| ApiServerError::Bootstrap {
        what: what.to_string(),
        reason: e.message,
    }
}

/// Creates the built-in objects. Safe to run on every start.
pub async fn run(state: &Arc<State>, advertise: IpAddr, port: u16) -> Result<(), ApiServerError> {
    for ns in SYSTEM_NAMESPACES {
        let obj = json!({"metadata": new_meta(ns, None), "status": {"phase": "Active"}});
        create_if_missing(state, def("", "namespaces"), "", ns, obj)
            .await
            .map_err(bootstrap_err("namespaces"))?;
        ensure_default_service_account(state, ns).await;
    }
    kubernetes_service(state, advertise, port).await?;
    system_priority_classes(state).await?;
    default_policy(state).await
}

/// The two PriorityClasses every Kubernetes API server creates, which add-ons such as cluster
/// DNS name (`priorityClassName: system-cluster-critical`).
async fn system_priority_classes(state: &Arc<State>) -> Result<(), ApiServerError> {
    let classes = [
        (
            "system-node-critical",
            2_000_001_000,
            "Used for system critical pods that must not be moved from their current node.",
        ),
        (
            "system-cluster-critical",
            2_000_000_000,
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        ),
    ];
    for (name, value, description) in classes {
        let obj = json!({
            "metadata": new_meta(name, None),
            "value": value,
            "globalDefault": false,
            "description": description,
            "preemptionPolicy": "PreemptLowerPriority",
        });
        let def = registry::find("scheduling.k8s.io", "v1", "priorityclasses").expect("served");
        create_if_missing(state, def, "", name, obj)
            .await
            .map_err(bootstrap_err("system priority classes"))?;
    }
    Ok(())
}

async fn kubernetes_service(
    state: &Arc<State>,
    advertise: IpAddr,
    port: u16,
) -> Result<(), ApiServerError> {
    let svc_def = def("", "services");
    let err = bootstrap_err("`kubernetes` service");
    if state
        .objects
        .get(svc_def, "default", "kubernetes")
        .await
        .map_err(&err)?
        .is_none()
    {
        let ip = state.services.first_ip().to_string();
        // Taken already: by this service, from an earlier start.
        state
            .services
            .claim_ip(&ip, "default/kubernetes")
            .await
            .map_err(&err)?;
        let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
        let mut obj = json!({
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {
                "name": "kubernetes", "namespace": "default", "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now_string(),
                "labels": {"component": "apiserver", "provider": "kubernetes"}
            },
            "spec": {
                "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": [family], "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                "sessionAffinity": "None", "internalTrafficPolicy": "Cluster"
            },
            "status": {"loadBalancer": {}}
        });
        (svc_def.default)(&mut obj);
        match state
            .objects
            .create(svc_def, "default", "kubernetes", &obj)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is(StatusReason::AlreadyExists) => {}
            Err(e) => return Err(err(e)),
        }
    }
    // Endpoints and EndpointSlice always point at this server's advertise address.
    let ep_def = def("", "endpoints");
    let endpoints = json!({
        "kind": "Endpoints", "apiVersion": "v1",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": advertise.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
    });
    upsert(state, ep_def, "default", "kubernetes", endpoints)
        .await
        .map_err(&err)?;
    let slice_def = registry::find("discovery.k8s.io", "v1", "endpointslices").expect("served");
    let slice = json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "kinit-apiserver"}},
        "addressType": if advertise.is_ipv6() { "IPv6" } else { "IPv4" },
        "endpoints": [{"addresses": [advertise.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
    });
    upsert(state, slice_def, "default", "kubernetes", slice)
        .await
        .map_err(&err)?;
    Ok(())
}

/// Creates or updates an object owned by the server (keeps uid and creation time).
async fn upsert(
    state: &State,
    def: &ResourceDef,
    namespace: &str,
    name: &str,
    mut obj: Value,
) -> Result<(), ApiError> {
    match state.objects.get(def, namespace, name).await? {
        None => {
            obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
            obj["metadata"]["creationTimestamp"] = json!(now_string());
            match state.objects.create(def, namespace, name, &obj).await {
                Ok(_) => Ok(()),
                Err(e) if e.is(StatusReason::AlreadyExists) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some((old, rev)) => {
            obj["metadata"]["uid"] = json!(meta_str(&old, "uid"));
            obj["metadata"]["creationTimestamp"] = json!(meta_str(&old, "creationTimestamp"));
            let mut cmp = old.clone();
            if let Some(m) = cmp.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            if cmp == obj {
                return Ok(());
            }
            state
                .objects
                .update(def, namespace, name, &obj, rev)
                .await
                .map(|_| ())
        }
    }
}

async fn default_policy(state: &Arc<State>) -> Result<(), ApiServerError> {
    let policy = kinit_auth::default_policy();
    let err = bootstrap_err("default RBAC policy");
    let to_value = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| ApiServerError::Bootstrap {
            what: "default RBAC policy".into(),
            reason: e.to_string(),
        })
    };
    let mut objects: Vec<(&str, Value)> = Vec::new();
    for r in &policy.cluster_roles {
        objects.push(("clusterroles", to_value(serde_json::to_value(r))?));
    }
    for r in &policy.roles {
        objects.push(("roles", to_value(serde_json::to_value(r))?));
    }
    for r in &policy.cluster_role_bindings {
        objects.push(("clusterrolebindings", to_value(serde_json::to_value(r))?));
    }
    for r in &policy.role_bindings {
        objects.push(("rolebindings", to_value(serde_json::to_value(r))?));
    }
    for (resource, mut obj) in objects {
        let d = registry::find("rbac.authorization.k8s.io", "v1", resource).expect("rbac served");
        let name = meta_str(&obj, "name").to_string();
        let ns = meta_str(&obj, "namespace").to_string();
        if obj.get("metadata").is_none() {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        obj["metadata"]["creationTimestamp"] = json!(now_string());
        create_if_missing(state, d, &ns, &name, obj)
            .await
            .map_err(&err)?;
    }
    Ok(())
}
