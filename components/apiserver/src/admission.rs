//! Admission: the plugins a write goes through after validation and before it is stored, as
//! the kind's table entry lists them ([`Admission`]): NodeRestriction, DefaultTolerationSeconds,
//! the CSR requester and RBAC escalation prevention ([`escalation`]).

use kinit_auth::NodeWrite;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::escalation;
use crate::kinds::Admission;
use crate::state::Ctx;

/// Runs the admission plugins of the request's kind on `new` (mutating ones change it);
/// `old` is the stored object on updates. Some plugins act on creates only.
pub async fn admit(ctx: &Ctx<'_>, new: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    for plugin in ctx.def().admission {
        match plugin {
            Admission::DefaultTolerationSeconds if old.is_none() => default_toleration_seconds(new),
            Admission::NodeRestrictionPodCreate if old.is_none() => {
                admit_node_pod(ctx, new).await?
            }
            Admission::NodeRestrictionNode => admit_node_node(ctx, new, old).await?,
            Admission::CertificateRequester if old.is_none() => {
                // Like Kubernetes' CSR strategy: the requester's identity comes from
                // authentication, never from the body, so approvers can trust
                // spec.username/groups.
                set_csr_requester(new, ctx.user)
            }
            Admission::RoleEscalation => escalation::admit_role(ctx, new, old).await?,
            Admission::BindingEscalation => escalation::admit_binding(ctx, new, old).await?,
            _ => {}
        }
    }
    Ok(())
}

/// The DefaultTolerationSeconds admission plugin: pods tolerate the node lifecycle
/// controller's `not-ready`/`unreachable` NoExecute taints for 300 s unless they say otherwise.
pub fn default_toleration_seconds(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
            (effect.is_empty() || effect == "NoExecute")
                && (k == key || (k.is_empty() && op == "Exists"))
        });
        if !tolerated {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

/// Writes the authenticated requester into a CSR's `spec.username/uid/groups/extra`.
pub fn set_csr_requester(csr: &mut Value, user: &kinit_auth::UserInfo) {
    if !csr.get("spec").is_some_and(Value::is_object) {
        csr["spec"] = json!({});
    }
    let spec = &mut csr["spec"];
    spec["username"] = json!(user.name);
    for (key, present) in [
        ("uid", !user.uid.is_empty()),
        ("groups", !user.groups.is_empty()),
        ("extra", !user.extra.is_empty()),
    ] {
        if present {
            spec[key] = match key {
                "uid" => json!(user.uid),
                "groups" => json!(user.groups),
                _ => json!(user.extra),
            };
        } else if let Some(m) = spec.as_object_mut() {
            m.remove(key);
        }
    }
}

async fn admit_node_pod(ctx: &Ctx<'_>, obj: &Value) -> Result<(), ApiError> {
    if ctx.user.node_name().is_none() {
        return Ok(());
    }
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(obj.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    ctx.state
        .access
        .node
        .admit(ctx.user, NodeWrite::CreatePod(&pod))
        .await
        .map_err(|e| node_forbidden(ctx, e))
}

async fn admit_node_node(ctx: &Ctx<'_>, new: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    if ctx.user.node_name().is_none() {
        return Ok(());
    }
    let new: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(new.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let old: Option<k8s_openapi::api::core::v1::Node> = match old {
        Some(o) => Some(
            serde_json::from_value(o.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
        None => None,
    };
    ctx.state
        .access
        .node
        .admit(
            ctx.user,
            NodeWrite::Node {
                new: &new,
                old: old.as_ref(),
            },
        )
        .await
        .map_err(|e| node_forbidden(ctx, e))
}

/// 403 for a node-restriction refusal (500 for lookup failures).
pub fn node_forbidden(ctx: &Ctx<'_>, e: kinit_auth::AuthError) -> ApiError {
    let def = ctx.def();
    match e {
        kinit_auth::AuthError::Forbidden(m) => {
            ApiError::forbidden(def.group, def.resource, &ctx.target.name, m)
        }
        other => ApiError::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_requester_comes_from_authentication() {
        let mut csr = json!({"spec": {"username": "system:node:forged", "groups": ["system:masters"], "uid": "x"}});
        let user = kinit_auth::UserInfo::new(
            "system:bootstrap:abcdef",
            vec!["system:bootstrappers".to_string()],
        );
        set_csr_requester(&mut csr, &user);
        assert_eq!(csr["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(csr["spec"]["groups"], json!(["system:bootstrappers"]));
        assert!(csr["spec"].get("uid").is_none());
    }

    #[test]
    fn default_tolerations_added_unless_present() {
        let mut pod = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
        ]}});
        default_toleration_seconds(&mut pod);
        let t = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 5);
        assert_eq!(t[1]["key"], "node.kubernetes.io/not-ready");
        assert_eq!(t[1]["tolerationSeconds"], 300);
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_toleration_seconds(&mut all);
        assert_eq!(all["spec"]["tolerations"].as_array().unwrap().len(), 1);
    }
}
