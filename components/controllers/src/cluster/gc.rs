//! Garbage collector: deletes objects whose owners are all gone, and completes the deletion
//! modes the API server starts with `propagationPolicy`:
//!
//! - **Background** (default): the owner goes away at once; its dependents then have dangling
//!   owner references and are deleted here.
//! - **Foreground**: the API server keeps the owner with the `foregroundDeletion` finalizer;
//!   dependents are deleted here, and the finalizer is removed once no dependent with
//!   `blockOwnerDeletion: true` remains.
//! - **Orphan**: the API server keeps the owner with the `orphan` finalizer; the owner
//!   references to it are removed from its dependents, then the finalizer.
//!
//! Like Kubernetes' collector, it keeps a graph of object metadata — from the controller
//! manager's shared informers where there is one for a resource, else from a metadata watch of
//! its own for each listable resource (found through discovery, refreshed periodically) — and
//! verifies owners with a live GET before deleting anything (a uid mismatch counts as a missing
//! owner).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::PartialObjectMeta;
use kube::discovery::{verbs, ApiCapabilities, ApiResource, Discovery, Scope};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use super::util::{is_conflict, is_not_found};
use super::{ClusterControllerError, ReconcileError};
use crate::informer::{FedResources, Informers};

/// Finalizer of owners deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer of owners deleted with `propagationPolicy: Orphan`.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// How an owner reference resolved against the live API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists with the referenced uid and is not being deleted in the foreground.
    Solid,
    /// Absent, or present with another uid.
    Dangling,
    /// Present and being deleted in the foreground (waiting for its dependents).
    WaitingForDependents,
}

/// What to do with a dependent, given its owners' states.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep it unchanged.
    Keep,
    /// Keep it, but drop the dangling references (indices into ownerReferences) and unblock
    /// the references to owners waiting for dependents.
    Patch {
        /// Indices of dangling references to remove.
        remove: Vec<usize>,
        /// Indices of references whose blockOwnerDeletion must become false.
        unblock: Vec<usize>,
    },
    /// Delete it with this propagation policy.
    Delete(PropagationPolicy),
}

/// Kubernetes' `attemptToDeleteItem` decision: with any solid owner the object stays (minus
/// its dangling references); otherwise it is deleted — in the foreground when an owner waits
/// for it and it has dependents itself, else with the policy its own finalizers ask for.
pub fn decide(owners: &[OwnerState], has_dependents: bool, finalizers: &[String]) -> Decision {
    if owners.is_empty() {
        return Decision::Keep;
    }
    let indices = |s: OwnerState| -> Vec<usize> {
        owners
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == s)
            .map(|(i, _)| i)
            .collect()
    };
    let dangling = indices(OwnerState::Dangling);
    let waiting = indices(OwnerState::WaitingForDependents);
    if owners.contains(&OwnerState::Solid) {
        if dangling.is_empty() && waiting.is_empty() {
            return Decision::Keep;
        }
        return Decision::Patch {
            remove: dangling,
            unblock: waiting,
        };
    }
    if !waiting.is_empty() && has_dependents {
        return Decision::Delete(PropagationPolicy::Foreground);
    }
    if finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
        Decision::Delete(PropagationPolicy::Orphan)
    } else if finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
        Decision::Delete(PropagationPolicy::Foreground)
    } else {
        Decision::Delete(PropagationPolicy::Background)
    }
}

/// The state of an owner reference given the live owner (`None` = not found).
pub fn owner_state(
    reference: &OwnerReference,
    live: Option<(&str, bool, &[String])>,
) -> OwnerState {
    match live {
        None => OwnerState::Dangling,
        Some((uid, _, _)) if uid != reference.uid => OwnerState::Dangling,
        Some((_, deleting, finalizers))
            if deleting && finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) =>
        {
            OwnerState::WaitingForDependents
        }
        Some(_) => OwnerState::Solid,
    }
}

/// One object in the graph.
#[derive(Debug, Clone)]
struct Item {
    resource: ResourceKey,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

/// `group/version/plural`.
type ResourceKey = String;

#[derive(Default)]
struct Graph {
    items: HashMap<String, Item>,
    /// owner uid -> dependent uids
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn upsert(&mut self, uid: String, item: Item) -> Option<Item> {
        let old = self.items.insert(uid.clone(), item.clone());
        if let Some(old) = &old {
            for o in &old.owners {
                if let Some(d) = self.dependents.get_mut(&o.uid) {
                    d.remove(&uid);
                }
            }
        }
        for o in &item.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        old
    }

    fn remove(&mut self, uid: &str) -> Option<Item> {
        let old = self.items.remove(uid)?;
        for o in &old.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.remove(uid);
                if d.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
        Some(old)
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Item)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.items.get(d).map(|i| (d.clone(), i.clone())))
            .collect()
    }

    /// Whether the owner `uid` (deleting in the foreground) needs to wait, and which of its
    /// blocking dependents still have to be deleted.
    fn blocking_dependents(&self, uid: &str) -> Vec<(String, Item)> {
        self.dependents_of(uid)
            .into_iter()
            .filter(|(_, d)| {
                d.owners
                    .iter()
                    .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
            })
            .collect()
    }
}

/// Discovered resources: by key, and `apiVersion/kind` -> resource.
#[derive(Default)]
struct Resources {
    by_key: HashMap<ResourceKey, (ApiResource, ApiCapabilities)>,
    by_kind: HashMap<(String, String), ResourceKey>,
}

fn resource_key(ar: &ApiResource) -> ResourceKey {
    format!("{}/{}", ar.api_version, ar.plural)
}

struct Shared {
    client: Client,
    graph: Mutex<Graph>,
    resources: Mutex<Resources>,
    queue: mpsc::UnboundedSender<String>,
    pending: Mutex<HashSet<String>>,
}

impl Shared {
    fn enqueue(&self, uid: String) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.insert(uid.clone()) {
            let _ = self.queue.send(uid);
        }
    }

    fn enqueue_later(self: &Arc<Self>, uid: String, after: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            me.enqueue(uid);
        });
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn api(&self, key: &str, namespace: Option<&str>) -> Option<(Api<DynamicObject>, ApiResource)> {
        let resources = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        let (ar, caps) = resources.by_key.get(key)?;
        let api = match (caps.scope == Scope::Namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            (true, None) => return None,
            (false, _) => Api::all_with(self.client.clone(), ar),
        };
        Some((api, ar.clone()))
    }

    fn resolve_owner(&self, reference: &OwnerReference) -> Option<(ResourceKey, bool)> {
        let resources = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        let key = resources
            .by_kind
            .get(&(reference.api_version.clone(), reference.kind.clone()))?;
        let namespaced = resources.by_key.get(key)?.1.scope == Scope::Namespaced;
        Some((key.clone(), namespaced))
    }
}

fn item_of(key: &ResourceKey, meta: &PartialObjectMeta<DynamicObject>) -> Option<(String, Item)> {
    let uid = meta.uid()?;
    Some((
        uid,
        Item {
            resource: key.clone(),
            namespace: meta.namespace(),
            name: meta.name_any(),
            owners: meta.owner_references().to_vec(),
            deleting: meta.metadata.deletion_timestamp.is_some(),
            finalizers: meta.finalizers().to_vec(),
        },
    ))
}

fn needs_attention(item: &Item) -> bool {
    !item.owners.is_empty()
        || (item.deleting
            && item
                .finalizers
                .iter()
                .any(|f| f == FOREGROUND_FINALIZER || f == ORPHAN_FINALIZER))
}

/// Applies one watch event to the graph and queues what it affects.
fn observe(
    shared: &Arc<Shared>,
    key: &ResourceKey,
    event: watcher::Event<PartialObjectMeta<DynamicObject>>,
    seen: &mut Option<HashSet<String>>,
) {
    match event {
        watcher::Event::Init => *seen = Some(HashSet::new()),
        watcher::Event::InitApply(meta) | watcher::Event::Apply(meta) => {
            let Some((uid, item)) = item_of(key, &meta) else {
                return;
            };
            if let Some(seen) = seen.as_mut() {
                seen.insert(uid.clone());
            }
            let mut wake = Vec::new();
            if needs_attention(&item) {
                wake.push(uid.clone());
            }
            let old = shared.graph().upsert(uid.clone(), item.clone());
            // Owners deleting in the foreground re-check when a dependent changes.
            let owners: HashSet<String> = old
                .iter()
                .flat_map(|o| o.owners.iter())
                .chain(item.owners.iter())
                .map(|o| o.uid.clone())
                .collect();
            {
                let graph = shared.graph();
                for o in owners {
                    if graph.items.get(&o).is_some_and(|i| i.deleting) {
                        wake.push(o);
                    }
                }
                // An object that (re)appears may be an owner its dependents were waiting for.
                if old.is_none() {
                    wake.extend(graph.dependents_of(&uid).into_iter().map(|(d, _)| d));
                }
            }
            for w in wake {
                shared.enqueue(w);
            }
        }
        watcher::Event::Delete(meta) => {
            if let Some(uid) = meta.uid() {
                gone(shared, &uid);
            }
        }
        watcher::Event::InitDone => {
            if let Some(seen) = seen.take() {
                let stale: Vec<String> = shared
                    .graph()
                    .items
                    .iter()
                    .filter(|(uid, i)| &i.resource == key && !seen.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in stale {
                    gone(shared, &uid);
                }
            }
        }
    }
}

fn gone(shared: &Arc<Shared>, uid: &str) {
    let (removed, dependents) = {
        let mut graph = shared.graph();
        let removed = graph.remove(uid);
        (removed, graph.dependents_of(uid))
    };
    for (d, _) in dependents {
        shared.enqueue(d);
    }
    if let Some(item) = removed {
        for o in item.owners {
            shared.enqueue(o.uid);
        }
    }
}

async fn refresh_discovery(
    shared: &Arc<Shared>,
    watched: &mut HashSet<ResourceKey>,
) -> Result<(), kube::Error> {
    let discovery = Discovery::new(shared.client.clone()).run().await?;
    let mut found: Vec<(ApiResource, ApiCapabilities)> = Vec::new();
    let mut by_kind = HashMap::new();
    for group in discovery.groups() {
        // Every served version maps apiVersion/kind, so references in any version resolve.
        for version in group.versions() {
            for (ar, caps) in group.versioned_resources(version) {
                if caps.supports_operation(verbs::GET) {
                    by_kind.insert((ar.api_version.clone(), ar.kind.clone()), resource_key(&ar));
                }
            }
        }
        found.extend(group.recommended_resources());
        for version in group.versions() {
            for (ar, caps) in group.versioned_resources(version) {
                if !found
                    .iter()
                    .any(|(f, _)| resource_key(f) == resource_key(&ar))
                {
                    found.push((ar, caps));
                }
            }
        }
    }
    {
        let mut resources = shared.resources.lock().unwrap_or_else(|e| e.into_inner());
        for (ar, caps) in &found {
            resources
                .by_key
                .insert(resource_key(ar), (ar.clone(), caps.clone()));
        }
        resources.by_kind = by_kind;
    }
    // Watch the preferred version of each resource once.
    let preferred: Vec<(ApiResource, ApiCapabilities)> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(_, caps)| {
            caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::WATCH)
                && caps.supports_operation(verbs::DELETE)
        })
        .collect();
    for (ar, _) in preferred {
        let key = resource_key(&ar);
        if !watched.insert(key.clone()) {
            continue;
        }
        let shared = shared.clone();
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(shared.client.clone(), &ar);
        tokio::spawn(async move {
            let mut seen = None;
            let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => observe(&shared, &key, event, &mut seen),
                    Err(e) => {
                        tracing::debug!(resource = %key, error = %e, "garbage collector watch error")
                    }
                }
            }
        });
    }
    Ok(())
}

/// Live view of an object: `(uid, deleting, finalizers)`.
async fn live(
    api: &Api<DynamicObject>,
    name: &str,
) -> Result<Option<(String, bool, Vec<String>)>, kube::Error> {
    match api.get_metadata_opt(name).await? {
        Some(m) => Ok(Some((
            m.uid().unwrap_or_default(),
            m.metadata.deletion_timestamp.is_some(),
            m.finalizers().to_vec(),
        ))),
        None => Ok(None),
    }
}

async fn process(shared: &Arc<Shared>, uid: &str) -> Result<(), ReconcileError> {
    let Some(item) = shared.graph().items.get(uid).cloned() else {
        return Ok(());
    };
    let Some((api, _)) = shared.api(&item.resource, item.namespace.as_deref()) else {
        return Ok(());
    };
    let what = format!(
        "{} {}{}",
        item.resource,
        item.namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default(),
        item.name
    );
    let Some((live_uid, deleting, finalizers)) = live(&api, &item.name)
        .await
        .map_err(ReconcileError::kube(format!("reading {what}")))?
    else {
        return Ok(());
    };
    if live_uid != uid {
        return Ok(());
    }
    if deleting {
        if finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
            return orphan_dependents(shared, uid, &api, &item, &what).await;
        }
        if finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
            return delete_dependents(shared, uid, &api, &item, &what).await;
        }
        return Ok(());
    }
    if item.owners.is_empty() {
        return Ok(());
    }
    let mut states = Vec::with_capacity(item.owners.len());
    for reference in &item.owners {
        let Some((key, namespaced)) = shared.resolve_owner(reference) else {
            // Unknown kind (not served, or discovery not refreshed yet): never delete on it.
            tracing::debug!(object = %what, kind = %reference.kind, api_version = %reference.api_version, "owner kind not served; keeping the object");
            states.push(OwnerState::Solid);
            continue;
        };
        let ns = if namespaced {
            item.namespace.as_deref()
        } else {
            None
        };
        let Some((owner_api, _)) = shared.api(&key, ns) else {
            // A namespaced owner of a cluster-scoped object is invalid; treat as missing.
            states.push(OwnerState::Dangling);
            continue;
        };
        let state = live(&owner_api, &reference.name)
            .await
            .map_err(ReconcileError::kube(format!(
                "reading owner {} {} of {what}",
                reference.kind, reference.name
            )))?;
        states.push(owner_state(
            reference,
            state
                .as_ref()
                .map(|(u, d, f)| (u.as_str(), *d, f.as_slice())),
        ));
    }
    let has_dependents = !shared.graph().dependents_of(uid).is_empty();
    match decide(&states, has_dependents, &finalizers) {
        Decision::Keep => Ok(()),
        Decision::Patch { remove, unblock } => {
            let owners: Vec<OwnerReference> = item
                .owners
                .iter()
                .enumerate()
                .filter(|(i, _)| !remove.contains(i))
                .map(|(i, o)| {
                    let mut o = o.clone();
                    if unblock.contains(&i) {
                        o.block_owner_deletion = Some(false);
                    }
                    o
                })
                .collect();
            let patch = json!({"metadata": {"uid": uid, "ownerReferences": owners}});
            tracing::info!(object = %what, removed = remove.len(), "dropping references to deleted owners");
            api.patch(&item.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(ReconcileError::kube(format!(
                    "updating owner references of {what}"
                )))?;
            Ok(())
        }
        Decision::Delete(policy) => {
            tracing::info!(object = %what, ?policy, "deleting object whose owners are gone");
            let dp = DeleteParams {
                propagation_policy: Some(policy),
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_string()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&item.name, &dp).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
                Err(e) => Err(ReconcileError::Kube {
                    action: format!("deleting {what}"),
                    source: e,
                }),
            }
        }
    }
}

async fn remove_finalizer(
    api: &Api<DynamicObject>,
    name: &str,
    uid: &str,
    finalizer: &str,
    what: &str,
) -> Result<(), ReconcileError> {
    let Some(obj) = api
        .get_metadata_opt(name)
        .await
        .map_err(ReconcileError::kube(format!("reading {what}")))?
    else {
        return Ok(());
    };
    if obj.uid().as_deref() != Some(uid) {
        return Ok(());
    }
    let remaining: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let patch = json!({"metadata": {
        "resourceVersion": obj.resource_version(),
        "finalizers": remaining,
    }});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(ReconcileError::Kube {
            action: format!("removing finalizer {finalizer} from {what}"),
            source: e,
        }),
    }
}

async fn orphan_dependents(
    shared: &Arc<Shared>,
    uid: &str,
    api: &Api<DynamicObject>,
    item: &Item,
    what: &str,
) -> Result<(), ReconcileError> {
    let dependents = shared.graph().dependents_of(uid);
    for (_, dep) in dependents {
        let Some((dep_api, _)) = shared.api(&dep.resource, dep.namespace.as_deref()) else {
            continue;
        };
        let Some(latest) =
            dep_api
                .get_metadata_opt(&dep.name)
                .await
                .map_err(ReconcileError::kube(format!(
                    "reading dependent {} of {what}",
                    dep.name
                )))?
        else {
            continue;
        };
        let owners: Vec<OwnerReference> = latest
            .owner_references()
            .iter()
            .filter(|o| o.uid != uid)
            .cloned()
            .collect();
        if owners.len() == latest.owner_references().len() {
            continue;
        }
        let patch = json!({"metadata": {
            "resourceVersion": latest.resource_version(),
            "ownerReferences": owners,
        }});
        dep_api
            .patch(&dep.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ReconcileError::kube(format!(
                "orphaning dependent {} of {what}",
                dep.name
            )))?;
    }
    tracing::info!(object = %what, "dependents orphaned");
    remove_finalizer(api, &item.name, uid, ORPHAN_FINALIZER, what).await
}

async fn delete_dependents(
    shared: &Arc<Shared>,
    uid: &str,
    api: &Api<DynamicObject>,
    item: &Item,
    what: &str,
) -> Result<(), ReconcileError> {
    let blocking = shared.graph().blocking_dependents(uid);
    if blocking.is_empty() {
        // Also delete non-blocking dependents now (they would become dangling anyway).
        for (d, _) in shared.graph().dependents_of(uid) {
            shared.enqueue(d);
        }
        tracing::info!(object = %what, "no blocking dependents left; finishing foreground deletion");
        return remove_finalizer(api, &item.name, uid, FOREGROUND_FINALIZER, what).await;
    }
    for (d, dep) in shared.graph().dependents_of(uid) {
        if !dep.deleting {
            shared.enqueue(d);
        }
    }
    // Re-check even if a watch event is missed.
    shared.enqueue_later(uid.to_string(), Duration::from_secs(5));
    Ok(())
}

/// Sets the garbage collector up and returns the future that runs it until dropped.
///
/// Resources the shared `informers` watch reach its graph through them (like Kubernetes'
/// collector, which uses the shared informer of a resource when there is one); it watches the
/// metadata of every other resource itself.
pub fn run(
    informers: &mut Informers,
) -> impl Future<Output = Result<(), ClusterControllerError>> + Send + 'static {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        client: informers.client().clone(),
        graph: Mutex::default(),
        resources: Mutex::default(),
        queue: tx,
        pending: Mutex::default(),
    });
    let relists: Mutex<HashMap<ResourceKey, Option<HashSet<String>>>> = Mutex::default();
    let fed_shared = shared.clone();
    let fed = informers.feed_metadata(Arc::new(move |key: &str, event| {
        let mut relists = relists.lock().unwrap_or_else(|e| e.into_inner());
        let seen = relists.entry(key.to_string()).or_default();
        observe(&fed_shared, &key.to_string(), event, seen);
    }));
    run_collector(shared, rx, fed)
}

async fn run_collector(
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<String>,
    fed: FedResources,
) -> Result<(), ClusterControllerError> {
    let mut watched: HashSet<ResourceKey> =
        fed.get().cloned().unwrap_or_default().into_iter().collect();
    refresh_discovery(&shared, &mut watched).await?;
    // Workers.
    let workers = 4;
    let rx_shared = Arc::new(tokio::sync::Mutex::new(rx));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let shared = shared.clone();
        let rx = rx_shared.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let uid = {
                    let mut rx = rx.lock().await;
                    match rx.recv().await {
                        Some(u) => u,
                        None => return,
                    }
                };
                shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&uid);
                if let Err(e) = process(&shared, &uid).await {
                    tracing::warn!(%e, "garbage collection failed; retrying");
                    shared.enqueue_later(uid, Duration::from_secs(2));
                }
            }
        }));
    }
    let _abort = AbortOnDrop(handles);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = refresh_discovery(&shared, &mut watched).await {
            tracing::warn!(error = %e, "garbage collector discovery refresh failed");
        }
        // Periodic resync of everything that may need work.
        let uids: Vec<String> = shared
            .graph()
            .items
            .iter()
            .filter(|(_, i)| needs_attention(i))
            .map(|(u, _)| u.clone())
            .collect();
        for uid in uids {
            shared.enqueue(uid);
        }
    }
}

/// Aborts spawned tasks when the controller future is dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            uid: uid.into(),
            ..OwnerReference::default()
        }
    }

    #[test]
    fn uid_mismatch_is_dangling() {
        let r = reference("a");
        assert_eq!(owner_state(&r, None), OwnerState::Dangling);
        assert_eq!(
            owner_state(&r, Some(("b", false, &[]))),
            OwnerState::Dangling
        );
        assert_eq!(owner_state(&r, Some(("a", false, &[]))), OwnerState::Solid);
        let fg = vec![FOREGROUND_FINALIZER.to_string()];
        assert_eq!(
            owner_state(&r, Some(("a", true, &fg))),
            OwnerState::WaitingForDependents
        );
        // Being deleted without foreground: still an owner until it is gone.
        assert_eq!(owner_state(&r, Some(("a", true, &[]))), OwnerState::Solid);
    }

    #[test]
    fn all_owners_gone_means_delete() {
        use OwnerState::*;
        assert_eq!(
            decide(&[Dangling], false, &[]),
            Decision::Delete(PropagationPolicy::Background)
        );
        assert_eq!(
            decide(&[Dangling, Dangling], true, &[]),
            Decision::Delete(PropagationPolicy::Background)
        );
        assert_eq!(decide(&[], false, &[]), Decision::Keep);
        assert_eq!(decide(&[Solid], false, &[]), Decision::Keep);
    }

    #[test]
    fn solid_owner_keeps_object_and_drops_dangling_refs() {
        use OwnerState::*;
        assert_eq!(
            decide(&[Dangling, Solid, WaitingForDependents], false, &[]),
            Decision::Patch {
                remove: vec![0],
                unblock: vec![2]
            }
        );
    }

    #[test]
    fn waiting_owner_propagates_foreground_to_dependents_with_dependents() {
        use OwnerState::*;
        assert_eq!(
            decide(&[WaitingForDependents], true, &[]),
            Decision::Delete(PropagationPolicy::Foreground)
        );
        assert_eq!(
            decide(&[WaitingForDependents], false, &[]),
            Decision::Delete(PropagationPolicy::Background)
        );
        let orphan = vec![ORPHAN_FINALIZER.to_string()];
        assert_eq!(
            decide(&[Dangling], false, &orphan),
            Decision::Delete(PropagationPolicy::Orphan)
        );
    }

    #[test]
    fn graph_tracks_blocking_dependents() {
        let mut g = Graph::default();
        let mut blocking = reference("owner");
        blocking.block_owner_deletion = Some(true);
        let item = |owners: Vec<OwnerReference>| Item {
            resource: "v1/pods".into(),
            namespace: Some("default".into()),
            name: "p".into(),
            owners,
            deleting: false,
            finalizers: vec![],
        };
        g.upsert("d1".into(), item(vec![blocking.clone()]));
        g.upsert("d2".into(), item(vec![reference("owner")]));
        assert_eq!(g.dependents_of("owner").len(), 2);
        assert_eq!(g.blocking_dependents("owner").len(), 1);
        g.upsert("d1".into(), item(vec![]));
        assert!(g.blocking_dependents("owner").is_empty());
        g.remove("d2");
        assert!(g.dependents_of("owner").is_empty());
    }
}
