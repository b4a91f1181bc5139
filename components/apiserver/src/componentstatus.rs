//! `componentstatuses` (v1 ComponentStatus, deprecated in Kubernetes but still served, and
//! what `kubectl get cs` reads): computed on every read by probing the scheduler's and the
//! controller manager's `/healthz` and each etcd server's `/health` — or, with the embedded
//! store, by reading the store — into one `Healthy` condition per component.

use std::sync::Arc;

use axum::response::Response;
use futures::future::join_all;
use http::StatusCode;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::probes::{self, ProbeResult};
use crate::response::{json_response, list_output, object_output, output_kind};
use crate::state::{Ctx, State};

/// Name of the component standing for the embedded store.
pub const EMBEDDED_STORE: &str = "embedded-store";

/// One component to probe.
enum Component {
    /// An HTTP(S) healthz URL; `verified` says whether its certificate is checked.
    Http { url: String, verified: bool },
    /// The embedded store.
    Embedded,
}

/// The components this server reports, by name, in Kubernetes' order.
fn components(state: &State) -> Vec<(String, Component)> {
    let config = &state.component_status;
    let mut out = vec![
        (
            "scheduler".to_string(),
            Component::Http {
                url: config.scheduler.clone(),
                verified: false,
            },
        ),
        (
            "controller-manager".to_string(),
            Component::Http {
                url: config.controller_manager.clone(),
                verified: false,
            },
        ),
    ];
    if config.etcd_servers.is_empty() {
        out.push((EMBEDDED_STORE.to_string(), Component::Embedded));
    }
    for (i, server) in config.etcd_servers.iter().enumerate() {
        out.push((
            format!("etcd-{i}"),
            Component::Http {
                url: format!("{}/health", server.trim_end_matches('/')),
                verified: true,
            },
        ));
    }
    out
}

/// Whether an etcd `/health` body says healthy (`{"health":"true",...}`).
fn etcd_healthy(body: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| format!("unhealthy: cannot read the etcd health answer {body:?}: {e}"))?;
    match v.get("health").and_then(Value::as_str) {
        Some("true") => Ok(()),
        _ => Err(format!("unhealthy: etcd answered {}", body.trim())),
    }
}

async fn probe(state: &State, component: &Component) -> ProbeResult {
    match component {
        Component::Embedded => state
            .objects
            .healthy()
            .await
            .map(|_| "ok".to_string())
            .map_err(|e| format!("the embedded store does not answer: {e}")),
        Component::Http { url, verified } => {
            let tls = match (verified, &state.component_status.etcd_tls) {
                (true, Some(tls)) => tls.clone(),
                (true, None) => probes::etcd_tls(None, None).map_err(|e| e.to_string())?,
                (false, _) => probes::insecure_tls(),
            };
            let body = probes::http_get(url, &tls).await?;
            if *verified {
                etcd_healthy(&body)?;
                Ok("ok".to_string())
            } else {
                Ok(body.trim().to_string())
            }
        }
    }
}

/// A ComponentStatus object from a probe result.
pub fn component_status(name: &str, result: &ProbeResult) -> Value {
    let condition = match result {
        Ok(message) => json!({"type": "Healthy", "status": "True", "message": message}),
        Err(error) => json!({"type": "Healthy", "status": "False", "error": error}),
    };
    json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": name},
        "conditions": [condition],
    })
}

async fn statuses(state: &Arc<State>, only: Option<&str>) -> Vec<Value> {
    let wanted: Vec<(String, Component)> = components(state)
        .into_iter()
        .filter(|(n, _)| only.is_none_or(|o| o == n))
        .collect();
    join_all(
        wanted
            .iter()
            .map(|(name, c)| async move { component_status(name, &probe(state, c).await) }),
    )
    .await
}

/// GET of one component's status.
pub async fn get(ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let def = ctx.def();
    let name = ctx.target.name.as_str();
    let status = statuses(ctx.state, Some(name))
        .await
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(def.group, def.resource, name))?;
    Ok(json_response(
        StatusCode::OK,
        &object_output(def, status, &output_kind(ctx.headers, ctx.query)),
    ))
}

/// LIST of every component's status.
pub async fn list(ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let def = ctx.def();
    let items = statuses(ctx.state, None).await;
    Ok(json_response(
        StatusCode::OK,
        &list_output(
            def,
            items,
            "",
            None,
            None,
            &output_kind(ctx.headers, ctx.query),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_like_kubernetes() {
        let ok = component_status("scheduler", &Ok("ok".into()));
        assert_eq!(
            ok["conditions"],
            json!([{"type": "Healthy", "status": "True", "message": "ok"}])
        );
        let bad = component_status("controller-manager", &Err("Get \"x\": refused".into()));
        assert_eq!(bad["conditions"][0]["status"], "False");
        assert_eq!(bad["conditions"][0]["error"], "Get \"x\": refused");
        assert!(etcd_healthy("{\"health\":\"true\",\"reason\":\"\"}").is_ok());
        assert!(etcd_healthy("{\"health\":\"false\"}").is_err());
        assert!(etcd_healthy("garbage").is_err());
    }
}
