//! The create verb: a new object's metadata, defaulting, validation, admission, allocations
//! and the objects created alongside it.

use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use super::write::{check_namespace, check_type_meta, invalid, random_suffix, schema_check};
use crate::admission;
use crate::bootstrap;
use crate::error::ApiError;
use crate::kinds::Lifecycle;
use crate::objects::{meta_str, now_string};
use crate::patch;
use crate::registry::clear_system_metadata;
use crate::request::decode_body;
use crate::response::{json_response, present};
use crate::state::Ctx;

/// Fills `metadata` of a new object and runs defaulting, schema check and validation.
pub fn prepare_new(ctx: &Ctx<'_>, mut obj: Value) -> Result<Value, ApiError> {
    let def = ctx.def();
    check_type_meta(def, &mut obj)?;
    let url_ns = ctx.target.namespace.as_str();
    {
        let meta = obj["metadata"].as_object_mut().expect("metadata object");
        if def.namespaced {
            let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
            if !body_ns.is_empty() && body_ns != url_ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta.insert("namespace".into(), json!(url_ns));
        } else {
            meta.remove("namespace");
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            if let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
            {
                let prefix: String = prefix.chars().take(58).collect();
                meta.insert("name".into(), json!(format!("{prefix}{}", random_suffix())));
            }
        }
        clear_system_metadata(meta);
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_string()));
        if def.tracks_generation {
            meta.insert("generation".into(), json!(1));
        }
    }
    if def.reset_status_on_create {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    let mut obj = schema_check(ctx, obj)?;
    (def.default)(&mut obj);
    def.hooks.prepare_create(&mut obj);
    let causes = (def.validate)(&obj);
    if !causes.is_empty() {
        return Err(invalid(def, &obj, causes));
    }
    Ok(obj)
}

/// Stores a prepared new object (admission, allocations, managed fields, dry run, the
/// objects created alongside).
pub async fn store_new(
    ctx: &Ctx<'_>,
    mut obj: Value,
    managed: Vec<Value>,
) -> Result<Value, ApiError> {
    let def = ctx.def();
    let ns = ctx.target.namespace.clone();
    let name = meta_str(&obj, "name").to_string();
    check_namespace(ctx.state, def, &ns, &name).await?;
    admission::admit(ctx, &mut obj, None).await?;
    if !managed.is_empty() {
        obj["metadata"]["managedFields"] = json!(managed);
    }
    if ctx.dry_run()? {
        return Ok(obj);
    }
    let mut allocated = None;
    if def.lifecycle.contains(&Lifecycle::ServiceAddresses) {
        allocated = Some(
            ctx.state
                .services
                .allocate_for(&mut obj, &format!("{ns}/{name}"))
                .await?,
        );
    }
    let created = match ctx.state.objects.create(def, &ns, &name, &obj).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(a) = allocated {
                ctx.state.services.release(&a).await;
            }
            return Err(e);
        }
    };
    if def.lifecycle.contains(&Lifecycle::DefaultServiceAccount) {
        bootstrap::ensure_default_service_account(ctx.state, &name).await;
    }
    Ok(created)
}

/// POST: create.
pub async fn create(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response, ApiError> {
    let def = ctx.def();
    let input = decode_body(ctx.headers, body)?;
    let obj = prepare_new(ctx, input.clone())?;
    let mut managed = Vec::new();
    patch::record_update(
        &mut managed,
        &input,
        &ctx.manager(),
        "Update",
        &def.api_version(),
        &now_string(),
        "",
    );
    let created = store_new(ctx, obj, managed).await?;
    Ok(ctx.finish(json_response(StatusCode::CREATED, &present(def, created))))
}
