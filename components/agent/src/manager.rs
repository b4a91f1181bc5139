//! One worker task per pod. A worker re-runs [`pods::sync_pod`] whenever its pod changes and
//! on a short timer while the pod is settling (1 s) or a long one when it is steady (10 s),
//! reports status through a [`StatusSink`], and on deletion stops the pod gracefully.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::watch;

use crate::config::Settings;
use crate::pods::{self, PodState, SyncContext};
use crate::runtime::{Runtime, LABEL_NODE, LABEL_POD_UID};
use crate::sources::ObjectSource;
use crate::spec::pod_key;

/// Where a pod comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PodSource {
    /// Bound to this node in the API.
    Api,
    /// A manifest in the static pod directory.
    Static,
}

/// Receives pod status and termination.
#[async_trait]
pub trait StatusSink: Send + Sync + 'static {
    /// The pod's status changed.
    async fn report(&self, pod: &Pod, source: PodSource, status: &PodStatus);
    /// The pod's containers are stopped after deletion was requested; API pods are now
    /// deleted for good (grace period 0).
    async fn terminated(&self, pod: &Pod, source: PodSource);
}

struct Worker {
    tx: watch::Sender<Option<Pod>>,
    source: PodSource,
    pod: Pod,
    poke: Arc<tokio::sync::Notify>,
}

/// The set of pods this agent runs.
#[derive(Clone)]
pub struct PodManager {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<dyn Runtime>,
    settings: Arc<Settings>,
    sources: RwLock<Arc<dyn ObjectSource>>,
    sink: Arc<dyn StatusSink>,
    workers: Mutex<HashMap<String, Worker>>,
    statuses: Mutex<HashMap<String, PodStatus>>,
    fast: Duration,
    slow: Duration,
}

fn strip_times(s: &PodStatus) -> PodStatus {
    let mut s = s.clone();
    for c in s.conditions.iter_mut().flatten() {
        c.last_transition_time = None;
        c.last_probe_time = None;
    }
    s
}

/// Keeps the transition time of conditions whose status did not change.
fn carry_transition_times(old: Option<&PodStatus>, new: &mut PodStatus) {
    let Some(old) = old else { return };
    for c in new.conditions.iter_mut().flatten() {
        if let Some(o) = old
            .conditions
            .iter()
            .flatten()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            if o.last_transition_time.is_some() {
                c.last_transition_time = o.last_transition_time.clone();
            }
        }
    }
}

fn settling(pod: &Pod, status: &PodStatus) -> bool {
    let spec = pod.spec.clone().unwrap_or_default();
    let probes = spec.containers.iter().any(|c| {
        c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some()
    });
    let not_ready = status.container_statuses.iter().flatten().any(|c| !c.ready);
    let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    !terminal && (probes || not_ready || status.phase.as_deref() == Some("Pending"))
}

impl PodManager {
    /// A manager over `runtime`, reporting to `sink`.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        settings: Arc<Settings>,
        sources: Arc<dyn ObjectSource>,
        sink: Arc<dyn StatusSink>,
    ) -> PodManager {
        PodManager {
            inner: Arc::new(Inner {
                runtime,
                settings,
                sources: RwLock::new(sources),
                sink,
                workers: Mutex::new(HashMap::new()),
                statuses: Mutex::new(HashMap::new()),
                fast: Duration::from_secs(1),
                slow: Duration::from_secs(10),
            }),
        }
    }

    /// Switches where ConfigMaps, Secrets and tokens come from (once the API is reachable).
    pub fn set_sources(&self, sources: Arc<dyn ObjectSource>) {
        *self.inner.sources.write().unwrap() = sources;
    }

    /// The runtime.
    pub fn runtime(&self) -> Arc<dyn Runtime> {
        self.inner.runtime.clone()
    }

    /// The settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.inner.settings.clone()
    }

    /// Adds or updates one pod.
    pub fn update(&self, pod: Pod, source: PodSource) {
        let (_, _, uid) = pod_key(&pod);
        if uid.is_empty() {
            tracing::warn!(pod = ?pod.metadata.name, "ignoring a pod without uid");
            return;
        }
        let mut workers = self.inner.workers.lock().unwrap();
        if let Some(w) = workers.get_mut(&uid) {
            w.pod = pod.clone();
            let _ = w.tx.send(Some(pod));
            return;
        }
        let (tx, rx) = watch::channel(Some(pod.clone()));
        let poke = Arc::new(tokio::sync::Notify::new());
        workers.insert(
            uid.clone(),
            Worker {
                tx,
                source,
                pod: pod.clone(),
                poke: poke.clone(),
            },
        );
        let this = self.clone();
        tokio::spawn(async move { this.work(uid, source, rx, poke).await });
    }

    /// Removes one pod: its containers are stopped with the pod's grace period and removed.
    pub fn remove(&self, uid: &str) {
        if let Some(w) = self.inner.workers.lock().unwrap().get(uid) {
            let _ = w.tx.send(None);
        }
    }

    /// Replaces all pods of `source` with `pods`.
    pub fn set_all(&self, source: PodSource, pods: Vec<Pod>) {
        let keep: std::collections::HashSet<String> = pods.iter().map(|p| pod_key(p).2).collect();
        let gone: Vec<String> = self
            .inner
            .workers
            .lock()
            .unwrap()
            .iter()
            .filter(|(uid, w)| w.source == source && !keep.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.remove(&uid);
        }
        for pod in pods {
            self.update(pod, source);
        }
    }

    /// The pods being run, with their source (not those already removed and stopping).
    pub fn pods(&self) -> Vec<(Pod, PodSource)> {
        self.inner
            .workers
            .lock()
            .unwrap()
            .values()
            .filter(|w| w.tx.borrow().is_some())
            .map(|w| (w.pod.clone(), w.source))
            .collect()
    }

    /// A pod by namespace and name.
    pub fn find(&self, ns: &str, name: &str) -> Option<Pod> {
        self.pods().into_iter().map(|(p, _)| p).find(|p| {
            let (pns, pname, _) = pod_key(p);
            pns == ns && pname == name
        })
    }

    /// The last status computed for pod `uid`.
    pub fn status(&self, uid: &str) -> Option<PodStatus> {
        self.inner.statuses.lock().unwrap().get(uid).cloned()
    }

    /// Removes sandboxes (and their containers) created by this node's agent for pods it no
    /// longer runs. Call only when every pod source has been listed.
    pub async fn collect_garbage(&self) -> Result<usize, crate::AgentError> {
        let known: std::collections::HashSet<String> =
            self.inner.workers.lock().unwrap().keys().cloned().collect();
        let node = &self.inner.settings.node_name;
        let mut orphans: BTreeMap<String, ()> = BTreeMap::new();
        for s in self.inner.runtime.list_pod_sandboxes(None).await? {
            if s.labels.get(LABEL_NODE) != Some(node) {
                continue;
            }
            if let Some(uid) = s.labels.get(LABEL_POD_UID) {
                if !known.contains(uid) {
                    orphans.insert(uid.clone(), ());
                }
            }
        }
        for uid in orphans.keys() {
            tracing::info!(pod_uid = %uid, "removing the sandbox of a pod this node no longer runs");
            pods::remove_pod(self.inner.runtime.as_ref(), &self.inner.settings, uid).await?;
        }
        Ok(orphans.len())
    }

    /// Relists the runtime every `period` (the kubelet's PLEG) and wakes the worker of every
    /// pod whose containers or sandboxes changed state, so exits are noticed within a period.
    pub async fn relist_loop(self, period: Duration) {
        let mut last: HashMap<String, (String, i32)> = HashMap::new();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let runtime = &self.inner.runtime;
            let (Ok(containers), Ok(sandboxes)) = (
                runtime.list_containers(None).await,
                runtime.list_pod_sandboxes(None).await,
            ) else {
                continue;
            };
            let mut now: HashMap<String, (String, i32)> = HashMap::new();
            for c in containers {
                if let Some(uid) = c.labels.get(LABEL_POD_UID) {
                    now.insert(c.id, (uid.clone(), c.state));
                }
            }
            for s in sandboxes {
                if let Some(uid) = s.labels.get(LABEL_POD_UID) {
                    now.insert(s.id, (uid.clone(), s.state + 100));
                }
            }
            let mut changed: std::collections::HashSet<&String> = std::collections::HashSet::new();
            for (id, (uid, state)) in &now {
                if last.get(id).map(|(_, s)| s) != Some(state) {
                    changed.insert(uid);
                }
            }
            for (id, (uid, _)) in &last {
                if !now.contains_key(id) {
                    changed.insert(uid);
                }
            }
            if !changed.is_empty() {
                let workers = self.inner.workers.lock().unwrap();
                for uid in changed {
                    if let Some(w) = workers.get(uid) {
                        w.poke.notify_one();
                    }
                }
            }
            last = now;
        }
    }

    async fn work(
        self,
        uid: String,
        source: PodSource,
        mut rx: watch::Receiver<Option<Pod>>,
        poke: Arc<tokio::sync::Notify>,
    ) {
        let inner = &self.inner;
        let mut state = PodState::default();
        let mut last_pod: Option<Pod> = None;
        let mut last_reported: Option<PodStatus> = None;
        let mut terminated_reported = false;
        loop {
            let current = rx.borrow_and_update().clone();
            let sources = inner.sources.read().unwrap().clone();
            let ctx = SyncContext {
                runtime: inner.runtime.as_ref(),
                settings: &inner.settings,
                sources: sources.as_ref(),
                now_ns: pods::now_ns(),
            };
            let Some(pod) = current else {
                // Removed from its source: stop gracefully (if still running) and clean up.
                if let Some(pod) = &last_pod {
                    if let Err(e) =
                        pods::kill_pod(&ctx, pod, &mut state, pods::grace_period(pod)).await
                    {
                        tracing::warn!(pod_uid = %uid, "stopping the removed pod failed: {e}");
                    }
                }
                if let Err(e) =
                    pods::remove_pod(inner.runtime.as_ref(), &inner.settings, &uid).await
                {
                    tracing::warn!(pod_uid = %uid, "removing the pod's containers failed: {e}");
                }
                let mut workers = inner.workers.lock().unwrap();
                // Only drop the entry if no new pod with this uid arrived meanwhile.
                if workers.get(&uid).is_some_and(|w| w.tx.borrow().is_none()) {
                    workers.remove(&uid);
                    inner.statuses.lock().unwrap().remove(&uid);
                    return;
                }
                continue;
            };
            if state.start_time.is_none() {
                state.start_time = pod.status.as_ref().and_then(|s| s.start_time.clone());
            }
            last_pod = Some(pod.clone());
            let deleting = pod.metadata.deletion_timestamp.is_some();
            let result = if deleting {
                pods::kill_pod(&ctx, &pod, &mut state, pods::grace_period(&pod)).await
            } else {
                pods::sync_pod(&ctx, &pod, &mut state).await
            };
            let mut delay = inner.slow;
            match result {
                Ok(mut status) => {
                    pods::add_sandbox_ips(inner.runtime.as_ref(), &uid, &mut status).await;
                    carry_transition_times(
                        last_reported.as_ref().or(pod.status.as_ref()),
                        &mut status,
                    );
                    inner
                        .statuses
                        .lock()
                        .unwrap()
                        .insert(uid.clone(), status.clone());
                    if last_reported.as_ref().map(strip_times) != Some(strip_times(&status)) {
                        inner.sink.report(&pod, source, &status).await;
                        last_reported = Some(status.clone());
                    }
                    if deleting {
                        if !terminated_reported {
                            inner.sink.terminated(&pod, source).await;
                            terminated_reported = true;
                        }
                    } else if settling(&pod, &status) {
                        delay = inner.fast;
                    }
                }
                Err(e) => {
                    tracing::warn!(pod_uid = %uid, pod = ?pod.metadata.name, "pod sync failed: {e}");
                    delay = inner.fast * 2;
                }
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = poke.notified() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeRuntime;
    use crate::sources::NoApi;

    #[derive(Default)]
    struct Recorder {
        reports: Mutex<Vec<(String, PodStatus)>>,
        terminated: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl StatusSink for Recorder {
        async fn report(&self, pod: &Pod, _source: PodSource, status: &PodStatus) {
            self.reports
                .lock()
                .unwrap()
                .push((pod.metadata.name.clone().unwrap(), status.clone()));
        }
        async fn terminated(&self, pod: &Pod, _source: PodSource) {
            self.terminated
                .lock()
                .unwrap()
                .push(pod.metadata.name.clone().unwrap());
        }
    }

    fn pod(name: &str, uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}], "terminationGracePeriodSeconds": 3}
        }))
        .unwrap()
    }

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn lifecycle_and_garbage_collection() {
        let rt = Arc::new(FakeRuntime::new());
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::node::tests_support::settings();
        settings.config.root_dir = dir.path().join("root");
        settings.config.pod_logs_dir = dir.path().join("logs");
        let sink = Arc::new(Recorder::default());
        let m = PodManager::new(
            rt.clone(),
            Arc::new(settings),
            Arc::new(NoApi),
            sink.clone(),
        );
        m.update(pod("a", "ua"), PodSource::Api);
        m.update(pod("b", "ub"), PodSource::Static);
        wait_for("both running", || {
            ["ua", "ub"]
                .iter()
                .all(|u| m.status(u).and_then(|s| s.phase) == Some("Running".into()))
        })
        .await;
        assert!(sink.reports.lock().unwrap().iter().any(|(n, _)| n == "a"));
        // Deletion requested: graceful stop, then the sink is told.
        let mut deleting = pod("a", "ua");
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        deleting.metadata.deletion_grace_period_seconds = Some(7);
        m.update(deleting, PodSource::Api);
        wait_for("terminated", || {
            sink.terminated.lock().unwrap().contains(&"a".to_string())
        })
        .await;
        assert!(
            rt.calls().iter().any(|c| c == "StopContainer c 7"),
            "{:?}",
            rt.calls()
        );
        // Replacing the static set removes b.
        m.set_all(PodSource::Static, vec![]);
        m.remove("ua");
        assert!(m.pods().is_empty(), "removed pods are not listed");
        wait_for("sandboxes removed", || rt.sandbox_count() == 0).await;
        wait_for("workers gone", || {
            m.inner.workers.lock().unwrap().is_empty()
        })
        .await;
        // An orphan sandbox from an earlier agent run is collected; another node's is not.
        let mut orphan = crate::spec::sandbox_config(&m.settings(), &pod("o", "uo"), 0);
        rt.run_pod_sandbox(&orphan).await.unwrap();
        orphan.labels.insert(LABEL_NODE.into(), "other".into());
        rt.run_pod_sandbox(&orphan).await.unwrap();
        assert_eq!(m.collect_garbage().await.unwrap(), 1);
        assert_eq!(rt.sandbox_count(), 1);
    }
}
