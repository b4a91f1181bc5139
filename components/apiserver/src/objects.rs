//! Objects in the store: JSON encoding, `resourceVersion` from store revisions, and
//! [`Objects`], the one door through which the server reads and writes the store, with
//! [`Objects::guaranteed_update`] (read, change, compare-and-swap write, retry on a lost race).

use std::sync::Arc;

use kinit_store::{KeyValue, ListOptions, ListResult, Store, StoreError, WatchStream};
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

/// How many times a read-modify-write is tried before answering 409.
const WRITE_ATTEMPTS: usize = 8;

/// The store, as the server uses it: objects of resources, raw keys for allocations, watches.
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

    /// Lists one range of keys under `prefix` (`def` names the resource in errors); a
    /// compacted revision while `continuing` a list is 410 with Kubernetes' message.
    pub async fn list_range(
        &self,
        def: &ResourceDef,
        prefix: &str,
        options: &ListOptions,
        continuing: bool,
    ) -> Result<ListResult, ApiError> {
        self.store.list(prefix, options).await.map_err(|e| match e {
            StoreError::Compacted { .. } if continuing => ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ),
            other => ApiError::from_store(other, def.group, def.resource, ""),
        })
    }

    /// The store's current revision.
    pub async fn current_revision(&self, def: &ResourceDef) -> Result<i64, ApiError> {
        self.store
            .current_revision()
            .await
            .map_err(|e| ApiError::from_store(e, def.group, def.resource, ""))
    }

    /// Whether the store answers (reads its current revision).
    pub async fn healthy(&self) -> Result<i64, StoreError> {
        self.store.current_revision().await
    }

    /// Watches `prefix` for changes after `revision`.
    pub async fn watch(&self, prefix: &str, revision: i64) -> Result<WatchStream, StoreError> {
        self.store.watch(prefix, revision).await
    }

    /// Lists raw keys under `prefix` (allocation records).
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let res = self.store.list(prefix, &ListOptions::default()).await?;
        Ok(res.items.into_iter().map(|kv| kv.key).collect())
    }

    /// Creates the raw key `key`; false when it exists already.
    pub async fn claim(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        match self.store.create(key, value).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the raw key `key` (absent is fine).
    pub async fn release(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(key, None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs `attempt` until it does not lose a write race ([`ApiError::write_race`]), at most
    /// a few times; `retry` false runs it once. Each attempt reads what it needs itself.
    pub async fn retry_on_conflict<T, F, Fut>(
        &self,
        def: &ResourceDef,
        name: &str,
        retry: bool,
        mut attempt: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            match attempt().await {
                Err(e) if e.write_race && retry => continue,
                other => return other,
            }
        }
        Err(too_many_writes(def, name))
    }

    /// Kubernetes' GuaranteedUpdate: reads the object (404 when absent), lets `update` decide
    /// and write with the read revision as precondition (`update` gets the object and that
    /// revision), and starts again from a fresh read when the write lost a race.
    pub async fn guaranteed_update<T, F, Fut>(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
        retry: bool,
        mut update: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut(Value, i64) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            let (old, rev) = self.get_existing(def, namespace, name).await?;
            match update(old, rev).await {
                Err(e) if e.write_race && retry => continue,
                other => return other,
            }
        }
        Err(too_many_writes(def, name))
    }
}

/// 409 after every attempt of a read-modify-write lost its race.
fn too_many_writes(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::conflict(
        def.group,
        def.resource,
        name,
        "too many concurrent writes; try again",
    )
}
