//! Objects in the store: JSON encoding, `resourceVersion` from store revisions, and typed
//! reads for the rest of the server.

use std::sync::Arc;

use kinit_store::{KeyValue, ListOptions, Store};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::registry::ResourceDef;
use crate::tables::format_time;

/// The current time as Kubernetes writes timestamps.
pub fn now_string() -> String {
    format_time(OffsetDateTime::now_utc())
}

/// Decodes a stored value and sets `metadata.resourceVersion` to its `mod_revision`.
pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!("stored object {} is not valid JSON: {e}", kv.key))
    })?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(obj: &mut Value, revision: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// Encodes an object for the store (without `resourceVersion`, which the revision carries).
pub fn encode(obj: &Value) -> Vec<u8> {
    let mut copy = obj.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&copy).unwrap_or_default()
}

/// `metadata.<field>` as a string ("" when absent).
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.resourceVersion` parsed, if present.
pub fn resource_version(obj: &Value) -> Option<i64> {
    meta_str(obj, "resourceVersion").parse().ok()
}

/// Typed helpers over the store for one resource.
#[derive(Clone)]
pub struct Objects {
    /// The store.
    pub store: Arc<dyn Store>,
}

impl Objects {
    /// Reads one object (None when absent).
    pub async fn get(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(Value, i64)>, ApiError> {
        let key = def.key(namespace, name);
        match self.store.get(&key).await {
            Ok(Some(kv)) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            Ok(None) => Ok(None),
            Err(e) => Err(ApiError::from_store(e, def.group, def.resource, name)),
        }
    }

    /// Reads one object or answers 404.
    pub async fn get_existing(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
    ) -> Result<(Value, i64), ApiError> {
        self.get(def, namespace, name)
            .await?
            .ok_or_else(|| ApiError::not_found(def.group, def.resource, name))
    }

    /// Creates an object; returns it with its resourceVersion.
    pub async fn create(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
        obj: &Value,
    ) -> Result<Value, ApiError> {
        let key = def.key(namespace, name);
        let kv = self
            .store
            .create(&key, encode(obj))
            .await
            .map_err(|e| ApiError::from_store(e, def.group, def.resource, name))?;
        let mut out = obj.clone();
        set_resource_version(&mut out, kv.mod_revision);
        Ok(out)
    }

    /// Replaces an object if its revision is still `expected`.
    pub async fn update(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
        obj: &Value,
        expected: i64,
    ) -> Result<Value, ApiError> {
        let key = def.key(namespace, name);
        let kv = self
            .store
            .update(&key, encode(obj), Some(expected))
            .await
            .map_err(|e| ApiError::from_store(e, def.group, def.resource, name))?;
        let mut out = obj.clone();
        set_resource_version(&mut out, kv.mod_revision);
        Ok(out)
    }

    /// Deletes an object if its revision is still `expected`; returns it with the deletion
    /// revision as resourceVersion.
    pub async fn delete(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
        expected: i64,
    ) -> Result<Value, ApiError> {
        let key = def.key(namespace, name);
        let (kv, rev) = self
            .store
            .delete(&key, Some(expected))
            .await
            .map_err(|e| ApiError::from_store(e, def.group, def.resource, name))?;
        let mut out = decode(&kv)?;
        set_resource_version(&mut out, rev);
        Ok(out)
    }

    /// Lists every object of `def` (optionally in one namespace) at the latest revision.
    pub async fn list_all(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, i64), ApiError> {
        let prefix = def.prefix(namespace);
        let res = self
            .store
            .list(&prefix, &ListOptions::default())
            .await
            .map_err(|e| ApiError::from_store(e, def.group, def.resource, ""))?;
        let items = res
            .items
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((items, res.revision))
    }
}
