//! The shared write pipeline of create, update, patch and apply: type meta, the typed schema
//! check, the namespace check of creates, and which part of an object a write changes.

use serde_json::{json, Value};

use crate::error::{qualified, ApiError, Cause};
use crate::objects::meta_str;
use crate::registry::{self, ResourceDef};
use crate::state::{Ctx, State};

/// Checks and sets `kind`/`apiVersion` of a written object and makes sure it has `metadata`.
pub fn check_type_meta(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object of kind {}",
            def.kind
        )));
    }
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !kind.is_empty() && kind != def.kind {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): kind {kind:?} does not match the URL",
            def.kind
        )));
    }
    if !api_version.is_empty() && api_version != def.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    obj["kind"] = json!(def.kind);
    obj["apiVersion"] = json!(def.api_version());
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    Ok(())
}

/// Typed check of an object: type errors → 400; unknown fields per `fieldValidation`.
pub fn schema_check(ctx: &Ctx<'_>, obj: Value) -> Result<Value, ApiError> {
    let def = ctx.def();
    let normalized = (def.normalize)(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            def.kind, def.version, def.kind
        ))
    })?;
    if !normalized.unknown_fields.is_empty() {
        let fields: Vec<String> = normalized
            .unknown_fields
            .iter()
            .filter(|f| !f.starts_with(".metadata.managedFields"))
            .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))
            .collect();
        if !fields.is_empty() {
            match ctx.query.get("fieldValidation").unwrap_or("Warn") {
                "Strict" => {
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        fields.join(", ")
                    )))
                }
                "Ignore" => {}
                _ => fields.into_iter().for_each(|f| ctx.warn(f)),
            }
        }
    }
    Ok(normalized.object)
}

/// 422 for `obj` with `causes`.
pub fn invalid(def: &ResourceDef, obj: &Value, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(def.group, def.kind, meta_str(obj, "name"), causes)
}

/// The 5-character suffix of a `generateName`.
pub fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Checks that `namespace` exists and is not terminating (for creates).
pub async fn check_namespace(
    state: &State,
    def: &ResourceDef,
    namespace: &str,
    name: &str,
) -> Result<(), ApiError> {
    if !def.namespaced {
        return Ok(());
    }
    let ns_def = registry::find("", "v1", "namespaces").expect("namespaces served");
    match state.objects.get(ns_def, "", namespace).await? {
        None => Err(ApiError::not_found("", "namespaces", namespace)),
        Some((ns, _)) => {
            let terminating = ns.pointer("/status/phase").and_then(Value::as_str)
                == Some("Terminating")
                || ns
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|v| !v.is_null());
            if terminating {
                Err(ApiError::forbidden(
                    def.group,
                    def.resource,
                    name,
                    format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        qualified(def.group, def.resource)
                    ),
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but status.
    Main,
    /// `status` only.
    Status,
    /// `status.conditions` of a CSR (approval).
    Approval,
    /// `spec.finalizers` of a namespace.
    Finalize,
    /// `spec.ephemeralContainers` of a pod.
    EphemeralContainers,
}

impl Part {
    /// The part a subresource writes.
    pub fn of(subresource: &str) -> Option<Part> {
        Some(match subresource {
            "" => Part::Main,
            "status" => Part::Status,
            "approval" => Part::Approval,
            "finalize" => Part::Finalize,
            "ephemeralcontainers" => Part::EphemeralContainers,
            _ => return None,
        })
    }

    /// The subresource that writes this part (`""` for the main resource).
    pub fn subresource(self) -> &'static str {
        match self {
            Part::Main => "",
            Part::Status => "status",
            Part::Approval => "approval",
            Part::Finalize => "finalize",
            Part::EphemeralContainers => "ephemeralcontainers",
        }
    }
}

fn take(from: &Value, ptr: &str) -> Option<Value> {
    from.pointer(ptr).cloned()
}

fn put(into: &mut Value, path: &[&str], value: Option<Value>) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = into;
    for p in parents {
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = cur.get_mut(*p).expect("just inserted");
    }
    match value {
        Some(v) => cur[*last] = v,
        None => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(*last);
            }
        }
    }
}

/// Combines the stored object and a full new object according to the part written.
pub fn combine(def: &ResourceDef, part: Part, old: &Value, new: Value) -> Value {
    match part {
        Part::Main => {
            let mut out = new;
            if def.has_status {
                put(&mut out, &["status"], take(old, "/status"));
            }
            out
        }
        Part::Status => {
            let mut out = old.clone();
            put(&mut out, &["status"], take(&new, "/status"));
            out
        }
        Part::Approval => {
            let mut out = old.clone();
            put(
                &mut out,
                &["status", "conditions"],
                take(&new, "/status/conditions"),
            );
            out
        }
        Part::Finalize => {
            let mut out = old.clone();
            put(
                &mut out,
                &["spec", "finalizers"],
                take(&new, "/spec/finalizers"),
            );
            out
        }
        Part::EphemeralContainers => {
            let mut out = old.clone();
            put(
                &mut out,
                &["spec", "ephemeralContainers"],
                take(&new, "/spec/ephemeralContainers"),
            );
            out
        }
    }
}

/// The object without what changes on every write (for no-op detection).
pub fn strip_volatile(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(meta) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_parts() {
        let def = registry::find("apps", "v1", "deployments").unwrap();
        let old = json!({"spec": {"replicas": 1}, "status": {"replicas": 1}});
        let new = json!({"spec": {"replicas": 2}, "status": {"replicas": 9}});
        assert_eq!(
            combine(def, Part::Main, &old, new.clone()),
            json!({"spec": {"replicas": 2}, "status": {"replicas": 1}})
        );
        assert_eq!(
            combine(def, Part::Status, &old, new),
            json!({"spec": {"replicas": 1}, "status": {"replicas": 9}})
        );
    }
}
