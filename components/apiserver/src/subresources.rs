//! Subresources with their own shapes: `scale`, `pods/binding`, `pods/eviction`,
//! `serviceaccounts/token`, and the node-proxied `pods/log|exec|attach|portforward`.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use kinit_auth::{NodeWrite, TokenClaims};
use serde_json::{json, Value};

use crate::admission::node_forbidden;
use crate::error::{ApiError, Cause};
use crate::handlers::{apply_patch_body, delete_object, DeleteOptions};
pub use crate::node_proxy::{node_endpoint, NodeEndpoint, NodeProxy, NodeRequest};
use crate::objects::meta_str;
use crate::registry;
use crate::request::{content_type, decode_body};
use crate::response::json_response;
use crate::state::Ctx;

// ---- scale ----

/// The `autoscaling/v1` Scale view of a workload.
pub fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector")
        .and_then(|s| crate::selectors::LabelSelector::from_object(s).ok())
        .map(|s| s.render())
        .unwrap_or_default();
    let mut meta = json!({});
    for key in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj.pointer(&format!("/metadata/{key}")) {
            meta[key] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

/// GET/PUT/PATCH on `scale`.
pub async fn scale(
    ctx: &Ctx<'_>,
    method: &http::Method,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let def = ctx.target.def;
    let t = ctx.target;
    // Like Kubernetes, a PATCH is retried on a lost race; a PUT answers 409.
    let retry = *method == http::Method::PATCH;
    let scale = ctx
        .state
        .objects
        .guaranteed_update(def, &t.namespace, &t.name, retry, |old, old_rev| async move {
            let current = scale_of(&old);
            if *method == http::Method::GET {
                return Ok(current);
            }
            let requested = if *method == http::Method::PUT {
                let s = decode_body(ctx.headers, body)?;
                if let Some(rv) = s
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .filter(|r| !r.is_empty())
                {
                    if rv != old_rev.to_string() {
                        return Err(ApiError::conflict(def.group, def.resource, &t.name, "the object has been modified; please apply your changes to the latest version and try again"));
                    }
                }
                s
            } else {
                if content_type(ctx.headers) == "application/apply-patch+yaml" {
                    return Err(ApiError::unsupported_media_type("server-side apply of the scale subresource is not supported; use a merge patch"));
                }
                apply_patch_body(ctx, &current, body)?.0
            };
            let replicas = requested
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::invalid(
                    "autoscaling",
                    "Scale",
                    &t.name,
                    vec![Cause::invalid(
                        "spec.replicas",
                        replicas,
                        "must be greater than or equal to 0",
                    )],
                ));
            }
            let mut new = old.clone();
            new["spec"]["replicas"] = json!(replicas);
            if new == old {
                return Ok(current);
            }
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
            if ctx.query.dry_run()? {
                return Ok(scale_of(&new));
            }
            let stored = ctx
                .state
                .objects
                .update(def, &t.namespace, &t.name, &new, old_rev)
                .await?;
            Ok(scale_of(&stored))
        })
        .await?;
    Ok(json_response(StatusCode::OK, &scale))
}

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

// ---- pods/binding ----

/// POST `pods/<name>/binding`: assigns the pod to a node (the scheduler's write).
pub async fn binding(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let t = ctx.target;
    let def = t.def;
    let b = decode_body(ctx.headers, body)?;
    let name = meta_str(&b, "name");
    if !name.is_empty() && name != t.name {
        return Err(ApiError::bad_request(format!(
            "the name of the binding ({name}) does not match the pod ({})",
            t.name
        )));
    }
    let node = b
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            &t.name,
            vec![Cause::required("target.name")],
        ));
    }
    let kind = b
        .pointer("/target/kind")
        .and_then(Value::as_str)
        .unwrap_or("Node");
    if kind != "Node" && !kind.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            &t.name,
            vec![Cause::not_supported("target.kind", kind, &["Node"])],
        ));
    }
    let b = &b;
    ctx.state
        .objects
        .guaranteed_update(def, &t.namespace, &t.name, true, |old, old_rev| async move {
            if let Some(uid) = b
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
            {
                if uid != meta_str(&old, "uid") {
                    return Err(ApiError::conflict(
                        def.group,
                        def.resource,
                        &t.name,
                        "the UID in the binding does not match the pod",
                    ));
                }
            }
            if old
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null())
            {
                return Err(ApiError::conflict(
                    def.group,
                    def.resource,
                    &t.name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            let current = old
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !current.is_empty() {
                return Err(ApiError::conflict(
                    def.group,
                    def.resource,
                    &t.name,
                    &format!("pod {} is already assigned to node \"{current}\"", t.name),
                ));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            let mut conditions: Vec<Value> = new
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": crate::objects::now_string()}));
            new["status"]["conditions"] = json!(conditions);
            if ctx.query.dry_run()? {
                return Ok(());
            }
            ctx.state
                .objects
                .update(def, &t.namespace, &t.name, &new, old_rev)
                .await
                .map(|_| ())
        })
        .await?;
    Ok(json_response(StatusCode::CREATED, &success(201)))
}

// ---- pods/eviction ----

/// POST `pods/<name>/eviction`: deletes the pod with the eviction's DeleteOptions.
/// PodDisruptionBudgets are enforced by the disruption controller's status (not yet
/// maintained), so evictions are currently never refused with 429.
pub async fn eviction(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let t = ctx.target;
    let e = decode_body(ctx.headers, body)?;
    let name = meta_str(&e, "name");
    if !name.is_empty() && name != t.name {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {} vs {name}",
            t.name
        )));
    }
    let options = DeleteOptions::parse(e.get("deleteOptions"), ctx.query)?;
    delete_object(ctx, &t.name, &options).await?;
    Ok(json_response(StatusCode::CREATED, &success(201)))
}

// ---- serviceaccounts/token ----

/// POST `serviceaccounts/<name>/token` (TokenRequest).
pub async fn token(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let t = ctx.target;
    let issuer = ctx.state.token_issuer.as_ref().ok_or_else(|| {
        ApiError::service_unavailable(
            "this API server has no --service-account-signing-key-file, so it cannot issue tokens",
        )
    })?;
    let req = decode_body(ctx.headers, body)?;
    let (sa, _) = ctx
        .state
        .objects
        .get_existing(t.def, &t.namespace, &t.name)
        .await?;
    let expiration = req
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if expiration < 600 {
        return Err(ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            &t.name,
            vec![Cause::invalid(
                "spec.expirationSeconds",
                expiration,
                "may not specify a duration less than 10 minutes",
            )],
        ));
    }
    let audiences: Vec<String> = req
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| ctx.state.api_audiences.clone());
    let mut claims = TokenClaims {
        namespace: t.namespace.clone(),
        service_account: t.name.clone(),
        service_account_uid: meta_str(&sa, "uid").to_string(),
        audiences,
        expiration_seconds: expiration,
        bound_pod: None,
        bound_secret: None,
    };
    if let Some(bound) = req
        .pointer("/spec/boundObjectRef")
        .filter(|b| b.is_object())
    {
        let kind = bound.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = bound
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (resource, slot) = match kind {
            "Pod" => ("pods", &mut claims.bound_pod),
            "Secret" => ("secrets", &mut claims.bound_secret),
            other => {
                return Err(ApiError::invalid(
                    "authentication.k8s.io",
                    "TokenRequest",
                    &t.name,
                    vec![Cause::not_supported(
                        "spec.boundObjectRef.kind",
                        other,
                        &["Pod", "Secret"],
                    )],
                ));
            }
        };
        let def = registry::find("", "v1", resource).expect("served");
        let (obj, _) = ctx
            .state
            .objects
            .get_existing(def, &t.namespace, &name)
            .await?;
        let uid = meta_str(&obj, "uid").to_string();
        if let Some(want) = bound
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            if want != uid {
                return Err(ApiError::conflict(
                    def.group,
                    def.resource,
                    &name,
                    "the UID in the bound object reference does not match",
                ));
            }
        }
        *slot = Some((name, uid));
    }
    if ctx.user.node_name().is_some() {
        let bound_pod = claims
            .bound_pod
            .as_ref()
            .map(|(n, u)| (n.as_str(), u.as_str()));
        ctx.state
            .access
            .node
            .admit(
                ctx.user,
                NodeWrite::TokenRequest {
                    namespace: &t.namespace,
                    service_account: &t.name,
                    bound_pod,
                },
            )
            .await
            .map_err(|e| node_forbidden(ctx, e))?;
    }
    let (token, exp) = issuer.issue(&claims).map_err(|e| match e.http_status() {
        422 => ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            &t.name,
            vec![Cause::invalid("spec", "", &e.to_string())],
        ),
        _ => ApiError::internal(format!("issuing the token failed: {e}")),
    })?;
    let expires = time::OffsetDateTime::from_unix_timestamp(exp)
        .map(crate::tables::format_time)
        .unwrap_or_default();
    let mut out = req.clone();
    out["kind"] = json!("TokenRequest");
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["metadata"] = json!({"name": t.name, "namespace": t.namespace, "creationTimestamp": null});
    out["spec"]["expirationSeconds"] = json!(expiration);
    out["spec"]["audiences"] = json!(claims.audiences);
    out["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(json_response(StatusCode::CREATED, &out))
}

// ---- node proxy (logs, exec, attach, port-forward) ----

/// `pods/<name>/log|exec|attach|portforward`.
pub async fn pod_proxy(ctx: &Ctx<'_>, request: http::Request<Body>) -> Result<Response, ApiError> {
    let t = ctx.target;
    if request.method() == http::Method::GET
        && matches!(t.subresource.as_str(), "exec" | "attach" | "portforward")
    {
        // A WebSocket upgrade must be a GET, which was authorized as `get`; starting a command
        // or a tunnel also needs `create`, as on the POST (SPDY) path — like the kube-apiserver
        // (AuthorizePodWebsocketUpgradeCreatePermission, on by default since 1.35).
        let mut attrs = kinit_auth::Attributes::resource(
            ctx.user.clone(),
            "create",
            &t.namespace,
            t.def.group,
            t.def.resource,
            &t.name,
        );
        attrs.subresource = t.subresource.clone();
        attrs.api_version = t.def.version.to_string();
        attrs.path = request.uri().path().to_string();
        let decision = ctx.state.access.authorize(&attrs).await;
        if !decision.allowed {
            return Err(crate::access::forbidden(&attrs, &decision.reason));
        }
    }
    let (pod, _) = ctx
        .state
        .objects
        .get_existing(t.def, &t.namespace, &t.name)
        .await?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let container = match ctx.query.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None if containers.len() == 1 || t.subresource == "portforward" => {
            containers.first().cloned().unwrap_or_default()
        }
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                t.name,
                containers.join(" ")
            )))
        }
    };
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {} does not have a host assigned",
            t.name
        )));
    }
    let node_def = registry::find("", "v1", "nodes").expect("served");
    let node = ctx.state.objects.get(node_def, "", node_name).await?;
    let endpoint = node
        .as_ref()
        .and_then(|(n, _)| node_endpoint(n))
        .ok_or_else(|| {
            ApiError::service_unavailable(format!(
                "no agent reachable for node {node_name}: the node has not registered an address"
            ))
        })?;
    let Some(proxy) = ctx.state.node_proxy.as_ref() else {
        return Err(ApiError::service_unavailable(format!(
            "no agent reachable for node {node_name} ({}:{}): this API server has no node proxy configured",
            endpoint.address, endpoint.port
        )));
    };
    let agent_path = match t.subresource.as_str() {
        "log" => format!("/containerLogs/{}/{}/{container}", t.namespace, t.name),
        "portforward" => format!("/portForward/{}/{}", t.namespace, t.name),
        other => format!("/{other}/{}/{}/{container}", t.namespace, t.name),
    };
    let query = agent_query(&t.subresource, request.uri().query())?;
    proxy
        .forward(NodeRequest {
            endpoint,
            path_and_query: format!("{agent_path}{query}"),
            request,
        })
        .await
}

/// A boolean query parameter as the Kubernetes API reads it: absent is false, present is true
/// unless its first value is `0` or `false` (any case) — so `stdin=true`, Python's `stdin=True`
/// and `stdin=1` all mean true.
fn query_bool(pairs: &[(String, String)], key: &str) -> bool {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .is_some_and(|(_, v)| v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The agent's query for a pod subresource, built like the kube-apiserver builds the kubelet's:
/// exec/attach options (`stdin`, `stdout`, `stderr`, `tty`, `command`) become the kubelet's
/// `input|output|error|tty=1` and `command=`; port-forward's `ports` (repeated or
/// comma-separated) become `port=`; log options pass through. The container is in the path.
pub fn agent_query(subresource: &str, raw: Option<&str>) -> Result<String, ApiError> {
    let raw = raw.unwrap_or("");
    if subresource == "log" {
        return Ok(if raw.is_empty() {
            String::new()
        } else {
            format!("?{raw}")
        });
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid query {raw:?}: {e}")))?;
    let mut out: Vec<(&str, String)> = Vec::new();
    match subresource {
        "exec" | "attach" => {
            for (option, kubelet) in [
                ("stdin", "input"),
                ("stdout", "output"),
                ("stderr", "error"),
                ("tty", "tty"),
            ] {
                if query_bool(&pairs, option) {
                    out.push((kubelet, "1".into()));
                }
            }
            if subresource == "exec" {
                out.extend(
                    pairs
                        .iter()
                        .filter(|(k, _)| k == "command")
                        .map(|(_, v)| ("command", v.clone())),
                );
            }
        }
        "portforward" => {
            let mut ports = Vec::new();
            for value in pairs.iter().filter(|(k, _)| k == "ports").map(|(_, v)| v) {
                for p in value.split(',') {
                    match p.trim().parse::<u16>() {
                        Ok(port) if port > 0 => ports.push(port.to_string()),
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "invalid port {p:?} in ports={value:?}: ports must be 1-65535"
                            )))
                        }
                    }
                }
            }
            if !ports.is_empty() {
                out.push(("port", ports.join(",")));
            }
        }
        _ => {}
    }
    if out.is_empty() {
        return Ok(String::new());
    }
    let encoded = serde_urlencoded::to_string(&out)
        .map_err(|e| ApiError::internal(format!("encoding the agent query: {e}")))?;
    Ok(format!("?{encoded}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_queries_use_the_kubelet_parameters() {
        // kubectl: stdin/stdout/tty=true; the container goes in the path, not the query.
        assert_eq!(
            agent_query(
                "attach",
                Some("container=c&stdin=true&stdout=true&stderr=false&tty=true")
            )
            .unwrap(),
            "?input=1&output=1&tty=1"
        );
        // The Python client: Python booleans, a command with spaces.
        assert_eq!(
            agent_query(
                "exec",
                Some("command=sh&command=-c&command=echo+hi%26there&stderr=True&stdin=False&stdout=True&tty=False")
            )
            .unwrap(),
            "?output=1&error=1&command=sh&command=-c&command=echo+hi%26there"
        );
        assert_eq!(
            agent_query("portforward", Some("ports=8080&ports=90,91")).unwrap(),
            "?port=8080%2C90%2C91"
        );
        assert_eq!(agent_query("portforward", None).unwrap(), "");
        assert_eq!(
            agent_query("portforward", Some("ports=0"))
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            agent_query("portforward", Some("ports=http"))
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            agent_query("log", Some("tailLines=2&follow=true")).unwrap(),
            "?tailLines=2&follow=true"
        );
    }

    use super::*;

    #[test]
    fn scale_view() {
        let d = json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "5"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2}});
        let s = scale_of(&d);
        assert_eq!(s["kind"], "Scale");
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=web");
        assert_eq!(s["metadata"]["resourceVersion"], "5");
    }

    #[test]
    fn node_endpoints() {
        let n = json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}}}});
        assert_eq!(
            node_endpoint(&n),
            Some(NodeEndpoint {
                node: "n1".into(),
                address: "10.0.0.5".into(),
                port: 10350
            })
        );
        assert_eq!(
            node_endpoint(&json!({"metadata": {"name": "n2"}, "status": {}})),
            None
        );
    }
}
