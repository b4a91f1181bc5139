//! The delete verbs: DELETE of one object (preconditions, grace periods, finalizers,
//! propagation, the kind's delete policy) and of a collection.

use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::error::{ApiError, Cause, StatusReason};
use crate::kinds::Lifecycle;
use crate::objects::{meta_str, set_resource_version};
use crate::paging::{list_page, ListParams};
use crate::registry::ResourceDef;
use crate::request::{decode_body, Query, Target};
use crate::response::{json_response, present};
use crate::services::service_allocations;
use crate::state::Ctx;
use crate::tables;

/// Options of a delete (body `DeleteOptions` and query parameters).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Grace period override.
    pub grace_period_seconds: Option<i64>,
    /// Orphan, Background or Foreground.
    pub propagation_policy: Option<String>,
    /// Precondition on uid.
    pub uid: Option<String>,
    /// Precondition on resourceVersion.
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    /// From the optional JSON body and the query.
    pub fn parse(body: Option<&Value>, query: &Query) -> Result<DeleteOptions, ApiError> {
        let mut o = DeleteOptions::default();
        if let Some(b) = body {
            o.grace_period_seconds = b.get("gracePeriodSeconds").and_then(Value::as_i64);
            o.propagation_policy = b
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(String::from);
            if o.propagation_policy.is_none() {
                if let Some(orphan) = b.get("orphanDependents").and_then(Value::as_bool) {
                    o.propagation_policy =
                        Some(if orphan { "Orphan" } else { "Background" }.into());
                }
            }
            o.uid = b
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(String::from);
            o.resource_version = b
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from);
        }
        if let Some(g) = query.get("gracePeriodSeconds") {
            o.grace_period_seconds = Some(g.parse().map_err(|_| {
                ApiError::bad_request(format!("gracePeriodSeconds: invalid value {g:?}"))
            })?);
        }
        if let Some(p) = query.get("propagationPolicy") {
            o.propagation_policy = Some(p.to_string());
        }
        if let Some(p) = &o.propagation_policy {
            if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "DeleteOptions",
                    "",
                    vec![Cause::not_supported(
                        "propagationPolicy",
                        p,
                        &["Foreground", "Background", "Orphan"],
                    )],
                ));
            }
        }
        if let Some(g) = o.grace_period_seconds {
            if g < 0 {
                o.grace_period_seconds = Some(0);
            }
        }
        Ok(o)
    }
}

/// What a delete answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    /// The object: still there and being deleted (grace period, finalizers, terminating), or
    /// gone, for kinds that answer with the deleted object.
    Object(Value),
    /// A `Success` Status: the object is gone.
    Status(Value),
}

impl Deleted {
    /// The response body.
    pub fn into_body(self) -> Value {
        match self {
            Deleted::Object(v) | Deleted::Status(v) => v,
        }
    }
}

/// Deletes one object (the kind's grace period and termination, finalizers, propagation).
pub async fn delete_object(
    ctx: &Ctx<'_>,
    name: &str,
    options: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let def = ctx.def();
    let ns = ctx.target.namespace.as_str();
    let dry = ctx.dry_run()?;
    let objects = &ctx.state.objects;
    objects
        .guaranteed_update(def, ns, name, true, |old, old_rev| async move {
            check_preconditions(def, name, options, &old, old_rev)?;
            let mut new = old.clone();
            let already_deleting = old
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null());
            let now = OffsetDateTime::now_utc();
            let meta_finalizers = old
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            // Namespaces: Terminating until the namespace controller empties spec.finalizers.
            if def.hooks.delete_marks_terminating()
                && (def.hooks.pending_finalizers(&old) || meta_finalizers)
            {
                if already_deleting {
                    return Ok(Deleted::Object(old));
                }
                new["metadata"]["deletionTimestamp"] = json!(tables::format_time(now));
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                new["status"]["phase"] = json!("Terminating");
                if dry {
                    return Ok(Deleted::Object(new));
                }
                return Ok(Deleted::Object(
                    objects.update(def, ns, name, &new, old_rev).await?,
                ));
            }
            let mut finalizers: Vec<Value> = old
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match options.propagation_policy.as_deref() {
                Some("Foreground") if !finalizers.contains(&json!("foregroundDeletion")) => {
                    finalizers.push(json!("foregroundDeletion"))
                }
                Some("Orphan") if !finalizers.contains(&json!("orphan")) => {
                    finalizers.push(json!("orphan"))
                }
                _ => {}
            }
            let grace = def.hooks.grace_period(&old, options.grace_period_seconds);
            if already_deleting {
                let current = old
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if finalizers.is_empty() && grace == 0 {
                    // Forced (grace 0) removal of an object waiting for its grace period: below.
                } else if grace > 0 && grace < current {
                    // Only a shorter grace period changes an object already being deleted.
                    new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                    new["metadata"]["deletionTimestamp"] =
                        json!(tables::format_time(now + time::Duration::seconds(grace)));
                    if dry {
                        return Ok(Deleted::Object(new));
                    }
                    return Ok(Deleted::Object(
                        objects.update(def, ns, name, &new, old_rev).await?,
                    ));
                } else {
                    return Ok(Deleted::Object(old));
                }
            } else if !finalizers.is_empty() || grace > 0 {
                new["metadata"]["deletionTimestamp"] =
                    json!(tables::format_time(now + time::Duration::seconds(grace)));
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                if !finalizers.is_empty() {
                    new["metadata"]["finalizers"] = json!(finalizers);
                }
                if def.tracks_generation {
                    let g = old
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    new["metadata"]["generation"] = json!(g + 1);
                }
                if dry {
                    return Ok(Deleted::Object(new));
                }
                return Ok(Deleted::Object(
                    objects.update(def, ns, name, &new, old_rev).await?,
                ));
            }
            if dry {
                return Ok(Deleted::Status(success_status(
                    def,
                    name,
                    meta_str(&old, "uid"),
                )));
            }
            let deleted = objects.delete(def, ns, name, old_rev).await?;
            after_delete(ctx, &deleted).await;
            Ok(if def.hooks.delete_returns_object() {
                Deleted::Object(deleted)
            } else {
                Deleted::Status(success_status(def, name, meta_str(&old, "uid")))
            })
        })
        .await
}

/// The uid and resourceVersion preconditions of a delete.
fn check_preconditions(
    def: &ResourceDef,
    name: &str,
    options: &DeleteOptions,
    old: &Value,
    old_rev: i64,
) -> Result<(), ApiError> {
    if let Some(uid) = &options.uid {
        if meta_str(old, "uid") != uid {
            return Err(ApiError::conflict(
                def.group,
                def.resource,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(old, "uid")
                ),
            ));
        }
    }
    if let Some(rv) = &options.resource_version {
        if *rv != old_rev.to_string() {
            return Err(ApiError::conflict(def.group, def.resource, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {old_rev}")));
        }
    }
    Ok(())
}

fn success_status(def: &ResourceDef, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": def.resource, "uid": uid});
    if !def.group.is_empty() {
        details["group"] = json!(def.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// Releases what a deleted object held (service IPs and ports).
pub async fn after_delete(ctx: &Ctx<'_>, deleted: &Value) {
    if ctx.def().lifecycle.contains(&Lifecycle::ServiceAddresses) {
        ctx.state
            .services
            .release(&service_allocations(deleted))
            .await;
    }
}

fn delete_body(ctx: &Ctx<'_>, body: &Bytes) -> Result<Option<Value>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    decode_body(ctx.headers, body).map(Some)
}

/// DELETE of one object.
pub async fn delete(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let b = delete_body(ctx, body)?;
    let options = DeleteOptions::parse(b.as_ref(), ctx.query)?;
    let body = match delete_object(ctx, &ctx.target.name, &options).await? {
        Deleted::Object(v) => present(ctx.def(), v),
        Deleted::Status(v) => v,
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// DELETE of a collection (selectors honoured); answers the list of deleted objects.
pub async fn delete_collection(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let b = delete_body(ctx, body)?;
    let options = DeleteOptions::parse(b.as_ref(), ctx.query)?;
    let params = ListParams::parse(def, ctx.query)?;
    let page = list_page(
        &ctx.state.objects,
        def,
        &ctx.target.namespace,
        &ListParams {
            limit: 0,
            continue_token: None,
            ..params
        },
    )
    .await?;
    let mut deleted = Vec::new();
    for item in page.items {
        let name = meta_str(&item, "name").to_string();
        let item_ns = meta_str(&item, "namespace").to_string();
        let target = Target {
            namespace: item_ns,
            name: name.clone(),
            ..ctx.target.clone()
        };
        let sub = ctx.for_target(&target);
        match delete_object(&sub, &name, &options).await {
            Ok(Deleted::Object(v)) => deleted.push(present(def, v)),
            Ok(Deleted::Status(_)) => {
                let mut gone = item.clone();
                set_resource_version(&mut gone, page.revision);
                deleted.push(present(def, gone));
            }
            Err(e) if e.is(StatusReason::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    let rv = ctx.state.objects.current_revision(def).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_options_parse() {
        let q = Query::parse(Some("gracePeriodSeconds=0")).unwrap();
        let o = DeleteOptions::parse(
            Some(&json!({"propagationPolicy": "Foreground", "preconditions": {"uid": "u"}})),
            &q,
        )
        .unwrap();
        assert_eq!(o.grace_period_seconds, Some(0));
        assert_eq!(o.propagation_policy.as_deref(), Some("Foreground"));
        assert_eq!(o.uid.as_deref(), Some("u"));
        assert!(DeleteOptions::parse(
            Some(&json!({"propagationPolicy": "Sideways"})),
            &Query::default()
        )
        .is_err());
    }
}
