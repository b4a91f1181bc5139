//! RBAC privilege-escalation prevention on writes of roles and bindings (Kubernetes' RBAC
//! registry checks): writing a Role/ClusterRole needs the `escalate` verb on it or every
//! permission it grants; writing a binding needs the `bind` verb on the role it references or
//! every permission of that role. `system:masters` is exempt, as in Kubernetes; so are
//! updates that leave the rules (or the roleRef) as they were.

use k8s_openapi::api::rbac::v1::{AggregationRule, PolicyRule, RoleRef};
use kinit_auth::{describe_rule, full_authority, uncovered, Attributes, UserInfo, GROUP_MASTERS};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{qualified, ApiError};
use crate::state::Ctx;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn field<T: DeserializeOwned + Default>(obj: &Value, key: &str) -> Result<T, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| ApiError::bad_request(format!("{key}: {e}"))),
    }
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether the request's own authorization allows `verb` on `resource`/`name` of the RBAC group.
async fn allowed(ctx: &Ctx<'_>, verb: &str, resource: &str, namespace: &str, name: &str) -> bool {
    let attrs = Attributes::resource(
        ctx.user.clone(),
        verb,
        namespace,
        RBAC_GROUP,
        resource,
        name,
    );
    ctx.state.access.authorize(&attrs).await.allowed
}

fn groups(user: &UserInfo) -> String {
    user.groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn escalation_error(ctx: &Ctx<'_>, name: &str, detail: String) -> ApiError {
    let def = ctx.target.def;
    ApiError::forbidden(
        def.group,
        def.resource,
        name,
        format!(
            "{} \"{name}\" is forbidden: user {:?} (groups=[{}]) {detail}",
            qualified(def.group, def.resource),
            ctx.user.name,
            groups(ctx.user)
        ),
    )
}

fn not_held(missing: &[PolicyRule]) -> String {
    let mut text = String::from("is attempting to grant RBAC permissions not currently held:");
    for rule in missing {
        text.push('\n');
        text.push_str(&describe_rule(rule));
    }
    text
}

/// Refuses a write of a Role/ClusterRole that would grant permissions the caller lacks.
/// `old` is the stored object on updates.
pub async fn admit_role(ctx: &Ctx<'_>, new: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let def = ctx.target.def;
    if ctx.user.in_group(GROUP_MASTERS) {
        return Ok(());
    }
    let namespace = ctx.target.namespace.as_str();
    let name = name_of(new);
    let rules: Vec<PolicyRule> = field(new, "rules")?;
    let aggregation: Option<AggregationRule> = field(new, "aggregationRule")?;
    if let Some(old) = old {
        let old_rules: Vec<PolicyRule> = field(old, "rules")?;
        let old_aggregation: Option<AggregationRule> = field(old, "aggregationRule")?;
        if old_rules == rules && old_aggregation == aggregation {
            return Ok(());
        }
    }
    if allowed(ctx, "escalate", def.resource, namespace, name).await {
        return Ok(());
    }
    let held = ctx.state.access.rbac.policy_rules_for(ctx.user, namespace);
    let missing = uncovered(&held, &rules);
    if !missing.is_empty() {
        return Err(escalation_error(ctx, name, not_held(&missing)));
    }
    if aggregation.is_some() && !uncovered(&held, &full_authority()).is_empty() {
        return Err(escalation_error(
            ctx,
            name,
            "must have cluster-admin privileges to use the aggregationRule".into(),
        ));
    }
    Ok(())
}

/// Refuses a write of a RoleBinding/ClusterRoleBinding to a role with permissions the caller
/// lacks (unless it may `bind` that role). `old` is the stored object on updates.
pub async fn admit_binding(
    ctx: &Ctx<'_>,
    new: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if ctx.user.in_group(GROUP_MASTERS) {
        return Ok(());
    }
    let namespace = ctx.target.namespace.as_str();
    let name = name_of(new);
    let role_ref: RoleRef = field(new, "roleRef")?;
    if let Some(old) = old {
        if field::<RoleRef>(old, "roleRef")? == role_ref {
            return Ok(());
        }
    }
    let role_resource = if role_ref.kind == "ClusterRole" {
        "clusterroles"
    } else {
        "roles"
    };
    if allowed(ctx, "bind", role_resource, namespace, &role_ref.name).await {
        return Ok(());
    }
    let rules = ctx
        .state
        .access
        .rbac
        .role_ref_rules(namespace, &role_ref)
        .map_err(|_| ApiError::not_found(RBAC_GROUP, role_resource, &role_ref.name))?;
    let held = ctx.state.access.rbac.policy_rules_for(ctx.user, namespace);
    let missing = uncovered(&held, &rules);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(escalation_error(ctx, name, not_held(&missing)))
    }
}
