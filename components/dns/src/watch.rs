//! The cluster view: kube-rs watchers and reflector stores for Services, EndpointSlices,
//! Namespaces and (only while some block uses `pods verified`) Pods. Every change wakes the
//! record builder; nothing polls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::records::ClusterSnapshot;

/// Where the records come from.
#[derive(Clone)]
pub enum ClusterSource {
    /// Watch the cluster through this client.
    Kube(Client),
    /// A fixed set of objects (benchmarks, tests).
    Static(Arc<ClusterSnapshot>),
}

struct Watched<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    synced: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl<K: Resource + Clone + 'static> Drop for Watched<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn watch<K>(api: Api<K>, changed: Arc<Notify>, what: &'static str) -> Watched<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let synced = Arc::new(AtomicBool::new(false));
    let flag = synced.clone();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            // Managed fields are never needed here; dropping them keeps the stores small.
            .modify(|o: &mut K| o.managed_fields_mut().clear()),
    );
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::InitDone) => {
                    if !flag.swap(true, Ordering::SeqCst) {
                        tracing::info!("cluster DNS: {what} synced");
                    }
                    failing = false;
                    changed.notify_one();
                }
                Ok(Event::Apply(_)) | Ok(Event::Delete(_)) => {
                    failing = false;
                    changed.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    // The backoff retries; log once per outage, not per retry.
                    if !failing {
                        tracing::warn!(
                            "cluster DNS: watching {what} failed: {e}; retrying (records keep their last known state)"
                        );
                    }
                    failing = true;
                }
            }
        }
    });
    Watched {
        store,
        synced,
        task,
    }
}

/// Watchers of the objects cluster records are built from.
pub struct ClusterWatch {
    client: Client,
    changed: Arc<Notify>,
    services: Watched<Service>,
    slices: Watched<EndpointSlice>,
    namespaces: Watched<Namespace>,
    pods: Mutex<Option<Watched<Pod>>>,
}

impl ClusterWatch {
    /// Starts watching; `changed` is notified on every change.
    pub fn start(client: Client, changed: Arc<Notify>) -> ClusterWatch {
        ClusterWatch {
            services: watch(Api::all(client.clone()), changed.clone(), "Services"),
            slices: watch(Api::all(client.clone()), changed.clone(), "EndpointSlices"),
            namespaces: watch(Api::all(client.clone()), changed.clone(), "Namespaces"),
            pods: Mutex::new(None),
            changed,
            client,
        }
    }

    /// Starts or stops the Pod watcher (needed only for `pods verified`).
    pub fn want_pods(&self, want: bool) {
        let Ok(mut pods) = self.pods.lock() else {
            return;
        };
        match (want, pods.is_some()) {
            (true, false) => {
                *pods = Some(watch(
                    Api::all(self.client.clone()),
                    self.changed.clone(),
                    "Pods",
                ));
            }
            (false, true) => *pods = None,
            _ => {}
        }
    }

    /// Whether every running watcher has listed its objects once.
    pub fn synced(&self) -> bool {
        let pods = self
            .pods
            .lock()
            .map(|p| p.as_ref().is_none_or(|w| w.synced.load(Ordering::SeqCst)))
            .unwrap_or(false);
        self.services.synced.load(Ordering::SeqCst)
            && self.slices.synced.load(Ordering::SeqCst)
            && self.namespaces.synced.load(Ordering::SeqCst)
            && pods
    }

    /// The objects as currently known.
    pub fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            services: self.services.store.state(),
            endpoint_slices: self.slices.store.state(),
            namespaces: self.namespaces.store.state(),
            pods: self
                .pods
                .lock()
                .ok()
                .and_then(|p| p.as_ref().map(|w| w.store.state()))
                .unwrap_or_default(),
        }
    }
}

/// The object counts of a snapshot, for logs.
pub fn describe(s: &ClusterSnapshot) -> String {
    format!(
        "{} Services, {} EndpointSlices, {} Namespaces, {} Pods",
        s.services.len(),
        s.endpoint_slices.len(),
        s.namespaces.len(),
        s.pods.len()
    )
}
