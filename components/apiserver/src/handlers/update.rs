//! The update verbs: PUT (replace), PATCH (JSON, merge, strategic merge) and server-side
//! apply, over the main resource or one part of it (status, approval, finalize, ...).

use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use super::create::{prepare_new, store_new};
use super::delete::after_delete;
use super::write::{check_type_meta, combine, invalid, schema_check, strip_volatile, Part};
use crate::admission;
use crate::error::{ApiError, Cause};
use crate::kinds::Lifecycle;
use crate::objects::{meta_str, now_string, resource_version};
use crate::patch;
use crate::request::{content_type, decode_body};
use crate::response::{json_response, present};
use crate::state::Ctx;

/// Prepares an updated object: type meta, identity checks, system metadata from `old`,
/// part combination, schema check, defaulting, validation, generation.
pub fn prepare_update(
    ctx: &Ctx<'_>,
    part: Part,
    old: &Value,
    mut new: Value,
) -> Result<Value, ApiError> {
    let def = ctx.def();
    check_type_meta(def, &mut new)?;
    let name = ctx.target.name.as_str();
    let body_name = meta_str(&new, "name");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let body_ns = meta_str(&new, "namespace");
    if def.namespaced && !body_ns.is_empty() && body_ns != ctx.target.namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut out = combine(def, part, old, new);
    {
        let meta = out["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        meta.insert("name".into(), json!(name));
        if def.namespaced {
            meta.insert("namespace".into(), json!(ctx.target.namespace));
        } else {
            meta.remove("namespace");
        }
        for key in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old.pointer(&format!("/metadata/{key}")) {
                Some(v) => {
                    meta.insert(key.into(), v.clone());
                }
                None => {
                    meta.remove(key);
                }
            }
        }
        if meta
            .get("finalizers")
            .is_some_and(|f| f.as_array().is_some_and(Vec::is_empty))
        {
            meta.remove("finalizers");
        }
    }
    let mut out = schema_check(ctx, out)?;
    (def.default)(&mut out);
    let mut causes = (def.validate)(&out);
    causes.extend((def.validate_update)(&out, old));
    if !causes.is_empty() {
        return Err(invalid(def, &out, causes));
    }
    if def.tracks_generation {
        let old_gen = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let gen = if out.get("spec") != old.get("spec") {
            old_gen + 1
        } else {
            old_gen
        };
        out["metadata"]["generation"] = json!(gen);
    }
    Ok(out)
}

/// Stores an updated object (admission, no-op detection, finalizer completion, allocations,
/// dry run).
pub async fn store_update(
    ctx: &Ctx<'_>,
    old: &Value,
    old_rev: i64,
    mut new: Value,
    managed: Vec<Value>,
) -> Result<Value, ApiError> {
    let def = ctx.def();
    let t = ctx.target;
    admission::admit(ctx, &mut new, Some(old)).await?;
    if strip_volatile(&new) == strip_volatile(old) {
        return Ok(old.clone());
    }
    if managed.is_empty() {
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
    } else {
        new["metadata"]["managedFields"] = json!(managed);
    }
    let deleting = new
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let no_finalizers = new
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    let held = def.hooks.pending_finalizers(&new) || def.hooks.awaits_agent(&new);
    if ctx.dry_run()? {
        return Ok(new);
    }
    if deleting && no_finalizers && !held {
        // The last finalizer is gone: the object goes away now.
        let deleted = ctx
            .state
            .objects
            .delete(def, &t.namespace, &t.name, old_rev)
            .await?;
        after_delete(ctx, &deleted).await;
        return Ok(deleted);
    }
    if def.lifecycle.contains(&Lifecycle::ServiceAddresses) {
        let owner = format!("{}/{}", t.namespace, t.name);
        let (allocated, freed) = ctx
            .state
            .services
            .reconcile_update(&mut new, old, &owner)
            .await?;
        return match ctx
            .state
            .objects
            .update(def, &t.namespace, &t.name, &new, old_rev)
            .await
        {
            Ok(v) => {
                ctx.state.services.release(&freed).await;
                Ok(v)
            }
            Err(e) => {
                ctx.state.services.release(&allocated).await;
                Err(e)
            }
        };
    }
    ctx.state
        .objects
        .update(def, &t.namespace, &t.name, &new, old_rev)
        .await
}

/// The stale-object answer to a client's resourceVersion precondition.
fn modified(ctx: &Ctx<'_>) -> ApiError {
    let def = ctx.def();
    ApiError::conflict(
        def.group,
        def.resource,
        &ctx.target.name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

/// The stored managed fields of `old`.
fn managed_fields(old: &Value) -> Vec<Value> {
    old.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// PUT: replace (main resource or a part).
pub async fn update(ctx: &Ctx<'_>, part: Part, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let t = ctx.target;
    let input = decode_body(ctx.headers, body)?;
    let precondition = resource_version(&input);
    let input = &input;
    let stored = ctx
        .state
        .objects
        .guaranteed_update(
            def,
            &t.namespace,
            &t.name,
            false,
            |old, old_rev| async move {
                if precondition.is_some_and(|rv| rv != old_rev) {
                    return Err(modified(ctx));
                }
                let new = prepare_update(ctx, part, &old, input.clone())?;
                let mut managed = managed_fields(&old);
                patch::record_update(
                    &mut managed,
                    input,
                    &ctx.manager(),
                    "Update",
                    &def.api_version(),
                    &now_string(),
                    part.subresource(),
                );
                store_update(ctx, &old, old_rev, new, managed).await
            },
        )
        .await?;
    Ok(ctx.finish(json_response(StatusCode::OK, &present(def, stored))))
}

/// Applies a PATCH body of the request's content type to `old`.
pub fn apply_patch_body(
    ctx: &Ctx<'_>,
    old: &Value,
    body: &Bytes,
) -> Result<(Value, Value), ApiError> {
    let ct = content_type(ctx.headers);
    let patch_value = decode_body(ctx.headers, body)?;
    let patched = match ct.as_str() {
        "application/json-patch+json" => patch::json_patch(old, &patch_value).map_err(ApiError::unprocessable_patch)?,
        "application/merge-patch+json" => patch::merge_patch(old, &patch_value),
        "application/strategic-merge-patch+json" => {
            patch::strategic_merge(old, &patch_value).map_err(ApiError::unprocessable_patch)?
        }
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}); accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
            )))
        }
    };
    Ok((patched, patch_value))
}

/// PATCH (merge, JSON, strategic; server-side apply goes to [`apply`]).
pub async fn patch(ctx: &Ctx<'_>, part: Part, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let t = ctx.target;
    if content_type(ctx.headers) == "application/apply-patch+yaml" {
        return apply(ctx, part, body).await;
    }
    let stored = ctx
        .state
        .objects
        .guaranteed_update(
            def,
            &t.namespace,
            &t.name,
            true,
            |old, old_rev| async move {
                let (patched, patch_value) = apply_patch_body(ctx, &old, body)?;
                let precondition = patch_value
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<i64>().ok());
                if precondition.is_some_and(|rv| rv != old_rev) {
                    return Err(modified(ctx));
                }
                let new = prepare_update(ctx, part, &old, patched)?;
                let mut managed = managed_fields(&old);
                let fields_body = if patch_value.is_object() {
                    patch_value.clone()
                } else {
                    json!({})
                };
                patch::record_update(
                    &mut managed,
                    &fields_body,
                    &ctx.manager(),
                    "Update",
                    &def.api_version(),
                    &now_string(),
                    part.subresource(),
                );
                store_update(ctx, &old, old_rev, new, managed).await
            },
        )
        .await?;
    Ok(ctx.finish(json_response(StatusCode::OK, &present(def, stored))))
}

/// Server-side apply (`application/apply-patch+yaml`).
pub async fn apply(ctx: &Ctx<'_>, part: Part, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let t = ctx.target;
    let manager = match ctx.query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                vec![Cause::required("fieldManager")
                    .with_message("Required value: is required for apply patch")],
            ))
        }
    };
    let force = ctx.query.flag("force");
    let mut applied = decode_body(ctx.headers, body)?;
    check_type_meta(def, &mut applied)?;
    let body_name = meta_str(&applied, "name");
    if !body_name.is_empty() && body_name != t.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            t.name
        )));
    }
    if let Some(meta) = applied["metadata"].as_object_mut() {
        meta.insert("name".into(), json!(t.name));
        if def.namespaced {
            meta.insert("namespace".into(), json!(t.namespace));
        }
    }
    let now = now_string();
    let (applied, manager, now) = (&applied, &manager, &now);
    // A create that meets an object created meanwhile, or an update that loses a race,
    // starts again from a fresh read.
    let (code, stored) = ctx
        .state
        .objects
        .retry_on_conflict(def, &t.name, true, || async move {
            let existing = ctx.state.objects.get(def, &t.namespace, &t.name).await?;
            let merged = patch::server_side_apply(
                existing.as_ref().map(|(v, _)| v),
                applied,
                manager,
                force,
                &def.api_version(),
                now,
            )
            .map_err(|conflicts| apply_conflict(ctx, &conflicts))?;
            match existing {
                None => {
                    if part != Part::Main {
                        return Err(ApiError::not_found(def.group, def.resource, &t.name));
                    }
                    let obj = prepare_new(ctx, merged.object)?;
                    let created = store_new(ctx, obj, merged.managed_fields).await?;
                    Ok((StatusCode::CREATED, created))
                }
                Some((old, old_rev)) => {
                    let new = prepare_update(ctx, part, &old, merged.object)?;
                    let stored =
                        store_update(ctx, &old, old_rev, new, merged.managed_fields).await?;
                    Ok((StatusCode::OK, stored))
                }
            }
        })
        .await?;
    Ok(ctx.finish(json_response(code, &present(def, stored))))
}

/// 409 for field-manager conflicts of an apply, listing them like Kubernetes.
fn apply_conflict(ctx: &Ctx<'_>, conflicts: &[patch::ApplyConflict]) -> ApiError {
    let def = ctx.def();
    let causes: Vec<Cause> = conflicts
        .iter()
        .map(|c| Cause {
            reason: "FieldManagerConflict",
            message: format!("conflict with \"{}\"", c.manager),
            field: c.field.clone(),
        })
        .collect();
    let list: Vec<String> = conflicts
        .iter()
        .map(|c| format!("- {}: {}", c.manager, c.field))
        .collect();
    let mut e = ApiError::conflict(def.group, def.resource, &ctx.target.name, "");
    e.message = format!(
        "Apply failed with {} conflict(s): conflicts with other field managers:\n{}",
        conflicts.len(),
        list.join("\n")
    );
    if let Some(d) = e.details.as_mut() {
        d["causes"] = json!(causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect::<Vec<_>>());
    }
    e
}
