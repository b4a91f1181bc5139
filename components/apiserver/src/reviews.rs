//! Virtual resources answered per request: access reviews (`kubectl auth can-i`, `--list`),
//! SelfSubjectReview (`kubectl auth whoami`) and TokenReview.

use std::collections::BTreeMap;

use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use kinit_auth::{Attributes, UserInfo};
use serde_json::{json, Value};

use crate::error::{ApiError, Cause};
use crate::registry::Review;
use crate::request::decode_body;
use crate::response::json_response;
use crate::state::Ctx;

fn s(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Request attributes from a review's `spec` (resourceAttributes or nonResourceAttributes).
pub fn attributes_from_spec(user: UserInfo, spec: &Value) -> Result<Attributes, Cause> {
    if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        let mut attrs = Attributes::resource(
            user,
            &s(r, "/verb"),
            &s(r, "/namespace"),
            &s(r, "/group"),
            &s(r, "/resource"),
            &s(r, "/name"),
        );
        attrs.subresource = s(r, "/subresource");
        attrs.api_version = s(r, "/version");
        return Ok(attrs);
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|n| n.is_object()) {
        return Ok(Attributes::non_resource(
            user,
            &s(n, "/verb"),
            &s(n, "/path"),
        ));
    }
    Err(Cause::invalid(
        "spec.resourceAttributes",
        "null",
        "exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

fn with_type_meta(mut v: Value, kind: &str, api_version: &str) -> Value {
    v["kind"] = json!(kind);
    v["apiVersion"] = json!(api_version);
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"]["creationTimestamp"] = Value::Null;
    v
}

fn extra_of(v: &Value) -> BTreeMap<String, Vec<String>> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, vals)| {
                    (
                        k.clone(),
                        vals.as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .map(String::from)
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// POST of a virtual resource.
pub async fn create(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.target.def;
    let input = decode_body(ctx.headers, body)?;
    let api_version = def.api_version();
    let spec = input.get("spec").cloned().unwrap_or_else(|| json!({}));
    let invalid = |c: Cause| ApiError::invalid(def.group, def.kind, "", vec![c]);
    let Some(review) = def.review else {
        return Err(ApiError::method_not_allowed(format!(
            "create is not supported on {}",
            def.kind
        )));
    };
    let out = match review {
        Review::SelfSubjectAccess | Review::SubjectAccess | Review::LocalSubjectAccess => {
            let user = if review == Review::SelfSubjectAccess {
                ctx.user.clone()
            } else {
                let name = s(&spec, "/user");
                let groups: Vec<String> = spec
                    .get("groups")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                if name.is_empty() && groups.is_empty() {
                    return Err(invalid(Cause::required("spec.user").with_message(
                        "Invalid value: \"\": at least one of user or group must be specified",
                    )));
                }
                UserInfo {
                    name,
                    uid: s(&spec, "/uid"),
                    groups,
                    extra: extra_of(spec.get("extra").unwrap_or(&Value::Null)),
                }
            };
            let attrs = attributes_from_spec(user, &spec).map_err(invalid)?;
            if review == Review::LocalSubjectAccess && attrs.namespace != ctx.target.namespace {
                return Err(invalid(Cause::invalid(
                    "spec.resourceAttributes.namespace",
                    &attrs.namespace,
                    "must match metadata.namespace",
                )));
            }
            let decision = ctx.state.access.authorize(&attrs).await;
            let mut status = json!({"allowed": decision.allowed});
            // Like Kubernetes, a plain RBAC denial carries no reason (kubectl prints "no").
            if decision.allowed && !decision.reason.is_empty() {
                status["reason"] = json!(decision.reason);
            }
            let mut out = with_type_meta(input.clone(), def.kind, &api_version);
            out["status"] = status;
            out
        }
        Review::SelfSubjectRules => {
            let namespace = s(&spec, "/namespace");
            let mut out = with_type_meta(input.clone(), def.kind, &api_version);
            if !ctx.state.access.uses_rbac() {
                out["status"] = json!({"resourceRules": [], "nonResourceRules": [], "incomplete": true,
                    "evaluationError": "the RBAC authorizer is not enabled; rules cannot be listed"});
            } else {
                let (resource, non_resource) =
                    ctx.state.access.rbac.rules_for(ctx.user, &namespace);
                out["status"] = json!({
                    "resourceRules": serde_json::to_value(resource).unwrap_or_default(),
                    "nonResourceRules": serde_json::to_value(non_resource).unwrap_or_default(),
                    "incomplete": false,
                });
            }
            out
        }
        Review::SelfSubject => {
            let mut out = with_type_meta(input.clone(), def.kind, &api_version);
            let mut user = json!({"username": ctx.user.name, "groups": ctx.user.groups});
            if !ctx.user.uid.is_empty() {
                user["uid"] = json!(ctx.user.uid);
            }
            if !ctx.user.extra.is_empty() {
                user["extra"] = json!(ctx.user.extra);
            }
            out["status"] = json!({"userInfo": user});
            out
        }
        Review::Token => {
            let token = s(&spec, "/token");
            if token.is_empty() {
                return Err(invalid(Cause::required("spec.token")));
            }
            let mut out = with_type_meta(input.clone(), def.kind, &api_version);
            out["status"] = match ctx
                .state
                .access
                .authenticate(None, Some(&format!("Bearer {token}")))
                .await
            {
                Ok(u) if u.name != kinit_auth::USER_ANONYMOUS => json!({
                    "authenticated": true,
                    "user": {"username": u.name, "uid": u.uid, "groups": u.groups, "extra": u.extra},
                    "audiences": ctx.state.api_audiences,
                }),
                Ok(_) => json!({"authenticated": false}),
                Err(e) => json!({"authenticated": false, "error": e.message}),
            };
            out
        }
    };
    Ok(json_response(StatusCode::CREATED, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_from_review_spec() {
        let u = UserInfo::new("alice", ["dev"]);
        let a = attributes_from_spec(u.clone(), &json!({"resourceAttributes": {"verb": "get", "namespace": "ns", "group": "apps", "resource": "deployments", "subresource": "scale", "name": "web"}})).unwrap();
        assert_eq!(
            (
                a.verb.as_str(),
                a.namespace.as_str(),
                a.api_group.as_str(),
                a.resource.as_str(),
                a.subresource.as_str(),
                a.name.as_str()
            ),
            ("get", "ns", "apps", "deployments", "scale", "web")
        );
        let n = attributes_from_spec(
            u.clone(),
            &json!({"nonResourceAttributes": {"verb": "get", "path": "/healthz"}}),
        )
        .unwrap();
        assert!(!n.resource_request);
        assert_eq!(n.path, "/healthz");
        assert!(attributes_from_spec(u, &json!({})).is_err());
    }
}
