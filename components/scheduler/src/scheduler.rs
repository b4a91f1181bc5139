//! The scheduling loop: reflectors over nodes and pods feed the [`Cache`] and the
//! [`SchedulingQueue`]; each queued pod is decided by the [`Algorithm`], assumed onto its node and
//! bound through `pods/binding` in the background; pods that fit nowhere get a `FailedScheduling`
//! event and `PodScheduled=False` and are retried after back-off when the cluster changes.

use kinit_rules::errors::{is_conflict, is_not_found};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::algorithm::Algorithm;
use crate::cache::{needs_scheduling, pod_key, Cache};
use crate::events::{mark_unschedulable, Recorder, REASON_FAILED_SCHEDULING, REASON_SCHEDULED};
use crate::filter::is_ready;
use crate::node_info::PodInfo;
use crate::queue::SchedulingQueue;

/// Settings of the scheduling loop.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Identity reported in events (`reportingInstance`) and used for the Lease.
    pub identity: String,
    /// Bindings in flight at once.
    pub max_in_flight_binds: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            identity: kinit_component_base::leader_identity(),
            max_in_flight_binds: 16,
        }
    }
}

type BindResult = (String, Arc<Pod>, String, Result<(), kube::Error>);

struct Loop {
    client: Client,
    opts: SchedulerOptions,
    pods: Store<Pod>,
    nodes: Store<Node>,
    cache: Cache,
    queue: SchedulingQueue,
    algorithm: Algorithm,
    recorder: Arc<Recorder>,
    pods_synced: bool,
    nodes_synced: bool,
    binds: JoinSet<BindResult>,
    writes: JoinSet<()>,
    /// Fingerprint of each pending pod's spec and metadata, to tell real updates from status
    /// writes (our own PodScheduled condition must not re-trigger the pod).
    fingerprints: HashMap<String, u64>,
}

fn fingerprint(pod: &Pod) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&(&pod.spec, &pod.metadata.labels, &pod.metadata.annotations))
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Runs the scheduling loop until `stop` turns true.
pub async fn run_loop(client: Client, opts: SchedulerOptions, mut stop: watch::Receiver<bool>) {
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (node_store, node_writer) = reflector::store::<Node>();
    let mut pod_events = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .boxed();
    let mut node_events = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .boxed();
    let mut l = Loop {
        recorder: Arc::new(Recorder::new(client.clone(), opts.identity.clone())),
        client,
        opts,
        pods: pod_store,
        nodes: node_store,
        cache: Cache::new(),
        queue: SchedulingQueue::new(),
        algorithm: Algorithm::new(),
        pods_synced: false,
        nodes_synced: false,
        binds: JoinSet::new(),
        writes: JoinSet::new(),
        fingerprints: HashMap::new(),
    };
    loop {
        if *stop.borrow() {
            break;
        }
        // Apply everything already delivered before deciding, so decisions see fresh state.
        loop {
            let mut progressed = false;
            if let Some(Some(ev)) = pod_events.next().now_or_never() {
                l.on_pod_event(ev);
                progressed = true;
            }
            if let Some(Some(ev)) = node_events.next().now_or_never() {
                l.on_node_event(ev);
                progressed = true;
            }
            if let Some(done) = l.binds.try_join_next() {
                l.on_bind_done(done);
                progressed = true;
            }
            while l.writes.try_join_next().is_some() {}
            if !progressed {
                break;
            }
        }
        l.queue.flush(Instant::now());
        if l.pods_synced && l.nodes_synced && l.binds.len() < l.opts.max_in_flight_binds {
            if let Some(key) = l.queue.pop() {
                l.schedule_one(key);
                continue;
            }
        }
        let wake = l
            .queue
            .next_wakeup()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            Some(ev) = pod_events.next() => l.on_pod_event(ev),
            Some(ev) = node_events.next() => l.on_node_event(ev),
            Some(done) = l.binds.join_next(), if !l.binds.is_empty() => l.on_bind_done(done),
            Some(_) = l.writes.join_next(), if !l.writes.is_empty() => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => {}
        }
    }
    // Let in-flight bindings and writes finish so no pod is left half-handled.
    while let Some(done) = l.binds.join_next().await {
        l.on_bind_done(done);
    }
    while l.writes.join_next().await.is_some() {}
}

impl Loop {
    fn on_pod_event(&mut self, ev: Result<watcher::Event<Pod>, watcher::Error>) {
        match ev {
            Ok(watcher::Event::Apply(pod)) => {
                let key = pod_key(&pod);
                let before = self.cache.pod_count();
                self.cache.update_pod(&pod);
                if needs_scheduling(&pod) {
                    let fp = fingerprint(&pod);
                    let updated = self.fingerprints.insert(key.clone(), fp) != Some(fp);
                    if updated || !self.queue.contains(&key) {
                        self.queue.add(&key);
                    }
                } else {
                    self.fingerprints.remove(&key);
                    self.queue.remove(&key);
                }
                if self.cache.pod_count() < before {
                    // a pod finished: its resources are free again
                    self.queue.cluster_changed();
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                let key = pod_key(&pod);
                self.cache.remove_pod(&key);
                self.fingerprints.remove(&key);
                self.queue.remove(&key);
                self.queue.cluster_changed();
            }
            Ok(watcher::Event::InitDone) => {
                self.pods_synced = true;
                self.rebuild();
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying with back-off"),
        }
    }

    fn on_node_event(&mut self, ev: Result<watcher::Event<Node>, watcher::Error>) {
        match ev {
            Ok(watcher::Event::Apply(node)) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                let relevant_change = match self.cache.node(&name) {
                    None => true,
                    Some(old) => scheduling_view(&old.node) != scheduling_view(&node),
                };
                self.cache.upsert_node(node);
                if relevant_change {
                    self.queue.cluster_changed();
                }
            }
            Ok(watcher::Event::Delete(node)) => {
                self.cache
                    .remove_node(node.metadata.name.as_deref().unwrap_or(""));
            }
            Ok(watcher::Event::InitDone) => {
                self.nodes_synced = true;
                self.rebuild();
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(e) => tracing::warn!(error = %e, "node watch failed; retrying with back-off"),
        }
    }

    /// After a (re)list: rebuild the cache from the reflector stores and resync the queue.
    fn rebuild(&mut self) {
        let nodes = self.nodes.state();
        let pods = self.pods.state();
        self.cache.rebuild(
            nodes.iter().map(|n| n.as_ref()),
            pods.iter().map(|p| p.as_ref()),
        );
        if self.pods_synced {
            let pending: std::collections::HashSet<String> = pods
                .iter()
                .filter(|p| needs_scheduling(p))
                .map(|p| pod_key(p))
                .collect();
            self.queue.retain(|k| pending.contains(k));
            self.fingerprints.retain(|k, _| pending.contains(k));
            let mut keys: Vec<&String> = pending.iter().collect();
            keys.sort();
            for k in keys {
                self.queue.add(k);
            }
        }
        self.queue.cluster_changed();
    }

    fn current_pod(&self, key: &str) -> Option<Arc<Pod>> {
        let (ns, name) = key.split_once('/')?;
        self.pods.get(&ObjectRef::new(name).within(ns))
    }

    fn schedule_one(&mut self, key: String) {
        let Some(pod) = self.current_pod(&key).filter(|p| needs_scheduling(p)) else {
            self.queue.remove(&key);
            return;
        };
        let info = PodInfo::new(&pod);
        match self.algorithm.schedule(&info, self.cache.nodes()) {
            Ok(i) => {
                let node = self.cache.nodes()[i].name.clone();
                tracing::debug!(pod = %key, %node, "scheduled; binding");
                self.cache.assume(info, &node);
                let client = self.client.clone();
                self.binds.spawn(async move {
                    let result = bind(&client, &pod, &node).await;
                    (key, pod, node, result)
                });
            }
            Err(fit) => {
                let message = fit.to_string();
                tracing::info!(pod = %key, %message, "unable to schedule pod; waiting");
                self.queue.unschedulable(&key, Instant::now());
                let client = self.client.clone();
                let recorder = self.recorder.clone();
                self.writes.spawn(async move {
                    if let Err(e) = recorder
                        .pod_event(&pod, "Warning", REASON_FAILED_SCHEDULING, &message)
                        .await
                    {
                        tracing::warn!(pod = %key, error = %e, "cannot record FailedScheduling event");
                    }
                    if let Err(e) = mark_unschedulable(&client, &pod, &message).await {
                        tracing::warn!(pod = %key, error = %e, "cannot set PodScheduled=False");
                    }
                });
            }
        }
    }

    fn on_bind_done(&mut self, done: Result<BindResult, tokio::task::JoinError>) {
        let Ok((key, pod, node, result)) = done else {
            return;
        };
        match result {
            Ok(()) => {
                tracing::info!(pod = %key, %node, "bound pod");
                self.queue.remove(&key);
                let recorder = self.recorder.clone();
                let message = format!("Successfully assigned {key} to {node}");
                self.writes.spawn(async move {
                    if let Err(e) = recorder
                        .pod_event(&pod, "Normal", REASON_SCHEDULED, &message)
                        .await
                    {
                        tracing::warn!(pod = %key, error = %e, "cannot record Scheduled event");
                    }
                });
            }
            Err(e) if is_not_found(&e) || is_conflict(&e) => {
                // deleted, or already bound (by another scheduler or a previous attempt)
                tracing::info!(pod = %key, %node, reason = %e, "binding not needed any more");
                self.cache.forget(&key);
                self.queue.remove(&key);
            }
            Err(e) => {
                tracing::warn!(pod = %key, %node, error = %e, "binding failed; retrying with back-off");
                self.cache.forget(&key);
                self.queue.failed(&key, Instant::now());
            }
        }
    }
}

/// The parts of a node a scheduling decision depends on; heartbeat-only status updates leave it
/// unchanged and so do not wake unschedulable pods.
fn scheduling_view(node: &Node) -> serde_json::Value {
    let status = node.status.as_ref();
    json!({
        "labels": node.metadata.labels,
        "spec": node.spec,
        "allocatable": status.and_then(|s| s.allocatable.as_ref()),
        "capacity": status.and_then(|s| s.capacity.as_ref()),
        "ready": is_ready(node),
    })
}

/// POST `pods/<name>/binding` assigning `pod` to `node` (with the pod's UID as precondition).
pub async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(|_| ())
}
