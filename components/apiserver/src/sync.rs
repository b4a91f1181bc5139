//! In-memory views kept in sync with the store (the RBAC index, pods by node): one list of the
//! watched resources to fill the view, then a watch from that revision; when a watch ends
//! (compaction, lagging consumer, store restart) the view is filled again from a fresh list.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kinit_store::{Store, WatchEvent};
use serde_json::Value;

use crate::error::ApiError;
use crate::objects::{decode, Objects};
use crate::registry::ResourceDef;

/// A view of some resources; `resource` is the index into the list the view was started with.
pub trait StoreView: Send + Sync + 'static {
    /// Replaces the whole view with `objects` (on start and after every re-list).
    fn reset(&self, objects: Vec<(usize, Value)>);
    /// An object was created or changed.
    fn put(&self, resource: usize, object: Value);
    /// An object was deleted (`object` is its last state).
    fn delete(&self, resource: usize, object: Value);
}

/// Lists every object of `resources` into `view`; returns the revision to watch from.
async fn fill(
    store: &Arc<dyn Store>,
    resources: &[&'static ResourceDef],
    view: &dyn StoreView,
) -> Result<i64, ApiError> {
    let objects = Objects {
        store: store.clone(),
    };
    let mut revision = i64::MAX;
    let mut all = Vec::new();
    for (index, def) in resources.iter().enumerate() {
        let (items, rev) = objects.list_all(def, None).await?;
        revision = revision.min(rev);
        all.extend(items.into_iter().map(|item| (index, item)));
    }
    view.reset(all);
    Ok(revision)
}

/// Fills `view` now, then keeps it in sync in the background. `what` names the view in logs.
pub async fn start(
    store: Arc<dyn Store>,
    resources: Vec<&'static ResourceDef>,
    view: Arc<dyn StoreView>,
    what: &'static str,
) -> Result<(), ApiError> {
    let revision = fill(&store, &resources, view.as_ref()).await?;
    let objects = Objects {
        store: store.clone(),
    };
    tokio::spawn(async move {
        let mut revision = revision;
        loop {
            let mut streams = Vec::new();
            for (index, def) in resources.iter().enumerate() {
                match objects.watch(&def.prefix(None), revision).await {
                    Ok(s) => streams.push(s.map(move |e| (index, e)).boxed()),
                    Err(e) => {
                        tracing::warn!("{what}: watch on {} failed: {e}; re-listing", def.resource)
                    }
                }
            }
            if streams.len() == resources.len() {
                let mut merged = futures::stream::select_all(streams);
                while let Some((index, event)) = merged.next().await {
                    match event {
                        Ok(WatchEvent::Put { kv, .. }) => match decode(&kv) {
                            Ok(object) => view.put(index, object),
                            Err(e) => tracing::warn!(
                                "{what}: ignoring undecodable object {}: {}",
                                kv.key,
                                e.message
                            ),
                        },
                        Ok(WatchEvent::Delete { prev, .. }) => {
                            if let Ok(object) = decode(&prev) {
                                view.delete(index, object);
                            }
                        }
                        Ok(WatchEvent::Progress { .. }) => {}
                        Err(e) => {
                            tracing::warn!("{what}: watch ended: {e}; re-listing");
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            match fill(&store, &resources, view.as_ref()).await {
                Ok(rev) => revision = rev,
                Err(e) => tracing::warn!("{what}: re-listing failed: {}", e.message),
            }
        }
    });
    Ok(())
}
