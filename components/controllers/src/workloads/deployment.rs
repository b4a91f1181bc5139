//! The Deployment controller: one ReplicaSet per template version (`<name>-<pod-template-hash>`),
//! rolled with RollingUpdate (maxSurge/maxUnavailable) or Recreate, revisions in
//! `deployment.kubernetes.io/revision`, old ReplicaSets pruned to `revisionHistoryLimit`, and the
//! status and conditions `kubectl rollout status` reads. Rollback (`kubectl rollout undo`) copies
//! an old ReplicaSet's template into the deployment; the sync then finds that ReplicaSet by
//! template and gives it the next revision. Mirrors Kubernetes' `pkg/controller/deployment`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use serde_json::json;

use super::pods::{self, key};
use super::rollout::{self, RsCounts, POD_TEMPLATE_HASH};
use crate::error::{is_conflict, is_not_found, ReconcileError};
use crate::informer::{Change, Informer};

/// Revision of a ReplicaSet / the deployment's current one.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Deployment replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// Deployment replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations never copied to ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// Shared state of the Deployment controller.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of all ReplicaSets.
    pub replica_sets: Store<ReplicaSet>,
    /// Cache of all pods (Recreate waits for old pods to go).
    pub pods: Store<Pod>,
}

/// Builds the controller; the future runs until `stop` resolves.
pub fn controller(
    client: Client,
    deployments_informer: &mut Informer<Deployment>,
    replica_sets: &mut Informer<ReplicaSet>,
    pods_informer: &mut Informer<Pod>,
    concurrency: u16,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let deployments = deployments_informer.store();
    let controller = Controller::for_stream(deployments_informer.objects(), deployments.clone());
    let rs_store = replica_sets.store();

    let d_store = deployments.clone();
    let rs_triggers = replica_sets.triggers(move |rs: &ReplicaSet, old, _| {
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let owner = |r: &ReplicaSet| {
            pods::controller_ref(&r.metadata)
                .filter(|o| o.kind == "Deployment")
                .map(|o| o.name.clone())
        };
        let mut out: Vec<ObjectRef<Deployment>> = Vec::new();
        match owner(rs) {
            Some(name) => out.push(ObjectRef::new(&name).within(&ns)),
            None => {
                for d in d_store.state() {
                    if d.metadata.namespace.as_deref() == Some(ns.as_str())
                        && pods::selector_matches(
                            d.spec.as_ref().map(|s| &s.selector),
                            rs.metadata.labels.as_ref(),
                        )
                    {
                        out.push(ObjectRef::from_obj(d.as_ref()));
                    }
                }
            }
        }
        if let Some(o) = old.and_then(owner) {
            out.push(ObjectRef::new(&o).within(&ns));
        }
        out
    });
    // Recreate waits for old pods to disappear.
    let rs_for_pods = rs_store.clone();
    let pod_triggers = pods_informer.triggers(move |pod: &Pod, _, change| {
        if change != Change::Deleted && pods::is_active(pod) {
            return Vec::new();
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let Some(rs_name) = pods::controller_ref(&pod.metadata)
            .filter(|r| r.kind == "ReplicaSet")
            .map(|r| r.name.clone())
        else {
            return Vec::new();
        };
        rs_for_pods
            .get(&ObjectRef::new(&rs_name).within(&ns))
            .and_then(|rs| pods::controller_ref(&rs.metadata).cloned())
            .filter(|o| o.kind == "Deployment")
            .map(|o| vec![ObjectRef::new(&o.name).within(&ns)])
            .unwrap_or_default()
    });
    let ctx = Arc::new(Context {
        client,
        replica_sets: rs_store,
        pods: pods_informer.store(),
    });
    controller
        .reconcile_on(rs_triggers)
        .reconcile_on(pod_triggers)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .boxed()
}

fn error_policy(d: Arc<Deployment>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(deployment = %key(&d.metadata), %error, "sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The revision annotation of an object, 0 when absent.
pub fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> (Option<Timestamp>, String) {
    (
        rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        rs.metadata.name.clone().unwrap_or_default(),
    )
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// (maxSurge, maxUnavailable) resolved against the desired replicas; both 0 for Recreate, and
/// maxUnavailable never above the desired count (`MaxUnavailable`/`MaxSurge`).
pub fn surge_and_unavailable(d: &Deployment) -> Result<(i32, i32), ReconcileError> {
    let want = desired(d);
    if !is_rolling(d) {
        return Ok((0, 0));
    }
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let (surge, unavailable) =
        rollout::resolve_fenceposts(ru.max_surge.as_ref(), ru.max_unavailable.as_ref(), want)
            .map_err(ReconcileError::Invalid)?;
    let unavailable = if want == 0 { 0 } else { unavailable.min(want) };
    Ok((surge, unavailable))
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// `SetDeploymentCondition`: replaces the condition of that type, keeping its transition time
/// when status and reason are unchanged.
pub fn set_condition(status: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    if let Some(old) = conds.iter().find(|o| o.type_ == c.type_) {
        if old.status == c.status && old.reason == c.reason && old.message == c.message {
            return;
        }
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    conds.retain(|o| o.type_ != c.type_);
    conds.push(c);
}

fn new_condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = pods::now_time();
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// `calculateStatus`: counts from the ReplicaSets and the Available condition.
pub fn calculate_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
) -> Result<DeploymentStatus, ReconcileError> {
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|r| f(r)).sum::<i32>();
    let available_count = sum(&available);
    let total = sum(&replicas);
    let actual = |r: &ReplicaSet| r.status.as_ref().map(|s| s.replicas).unwrap_or(0);
    let ready = |r: &ReplicaSet| {
        r.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    };
    let old = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(&actual)),
        updated_replicas: Some(new.map(actual).unwrap_or(0)),
        ready_replicas: Some(sum(&ready)),
        available_replicas: Some(available_count),
        unavailable_replicas: Some((total - available_count).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: None,
    };
    let (_, max_unavailable) = surge_and_unavailable(d)?;
    let c = if available_count >= desired(d) - max_unavailable {
        new_condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        new_condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    set_condition(&mut status, c);
    Ok(status)
}

/// `DeploymentComplete`: every replica updated and available, nothing old left, status current.
pub fn is_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = desired(d);
    s.updated_replicas == Some(want)
        && s.replicas == Some(want)
        && s.available_replicas == Some(want)
        && s.observed_generation >= d.metadata.generation
}

/// `DeploymentProgressing`: more updated/ready/available pods or fewer old ones than before.
pub fn is_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let g = |v: Option<i32>| v.unwrap_or(0);
    let old_old = g(old.replicas) - g(old.updated_replicas);
    let new_old = g(new.replicas) - g(new.updated_replicas);
    g(new.updated_replicas) > g(old.updated_replicas)
        || new_old < old_old
        || g(new.ready_replicas) > g(old.ready_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
}

/// Adds the Progressing condition (`syncRolloutStatus`) to `status` and says when to look again
/// for the progress deadline.
pub fn progress(
    d: &Deployment,
    status: &mut DeploymentStatus,
    new_rs: Option<&ReplicaSet>,
    now: Timestamp,
) -> Option<Duration> {
    let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds);
    let Some(deadline) = deadline.filter(|s| *s != i32::MAX) else {
        if let Some(c) = status.conditions.as_mut() {
            c.retain(|c| c.type_ != "Progressing");
        }
        return None;
    };
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        return None;
    }
    let current = condition(status, "Progressing").cloned();
    let complete_already = status.replicas == status.updated_replicas
        && current
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
    if complete_already {
        return None;
    }
    let rs_name = new_rs
        .and_then(|r| r.metadata.name.clone())
        .unwrap_or_default();
    if is_complete(d, status) {
        set_condition(
            status,
            new_condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet {rs_name:?} has successfully progressed."),
            ),
        );
        return None;
    }
    if is_progressing(d, status) {
        let mut c = new_condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet {rs_name:?} is progressing."),
        );
        if let Some(cur) = current.as_ref().filter(|c| c.status == "True") {
            c.last_transition_time = cur.last_transition_time.clone();
        }
        // Progress resets the deadline: replace unconditionally so lastUpdateTime moves.
        if let Some(conds) = status.conditions.as_mut() {
            conds.retain(|o| o.type_ != "Progressing");
        }
        status.conditions.get_or_insert_with(Vec::new).push(c);
        return Some(Duration::from_secs(deadline as u64 + 1));
    }
    let last = current
        .as_ref()
        .and_then(|c| c.last_update_time.as_ref().map(|t| t.0));
    let Some(last) = last else {
        return Some(Duration::from_secs(deadline as u64 + 1));
    };
    if current
        .as_ref()
        .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
    {
        return None;
    }
    let expires = last.as_second() + i64::from(deadline);
    if now.as_second() > expires {
        set_condition(
            status,
            new_condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet {rs_name:?} has timed out progressing."),
            ),
        );
        None
    } else {
        Some(Duration::from_secs(
            (expires - now.as_second()).max(0) as u64 + 1,
        ))
    }
}

/// Kubernetes' `ReplicaSetsByRevision`-style ordering helper: oldest first.
fn sort_oldest_first(list: &mut [Arc<ReplicaSet>]) {
    list.sort_by_key(|r| created(r));
}

/// One sync of a Deployment.
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let selector_empty = spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    if selector_empty {
        tracing::warn!(deployment = %key(&d.metadata), "selector is empty, which would select all pods; not syncing");
        return Ok(Action::await_change());
    }
    let mut sync = Rollout {
        ctx: ctx.clone(),
        d: d.as_ref().clone(),
        rs_list: claim_replica_sets(&ctx, &d, &uid, &ns).await?,
    };
    sync.run().await
}

async fn claim_replica_sets(
    ctx: &Context,
    d: &Deployment,
    uid: &str,
    ns: &str,
) -> Result<Vec<Arc<ReplicaSet>>, ReconcileError> {
    let selector = d.spec.as_ref().map(|s| &s.selector);
    let owner = pods::owner_ref_to(d);
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let mut out = Vec::new();
    for rs in ctx.replica_sets.state() {
        if rs.metadata.namespace.as_deref() != Some(ns) {
            continue;
        }
        let matches = pods::selector_matches(selector, rs.metadata.labels.as_ref());
        let name = rs.metadata.name.clone().unwrap_or_default();
        let (adopt, keep) = match pods::controller_ref(&rs.metadata) {
            Some(r) if r.uid == uid => (None, matches),
            Some(_) => continue,
            None if matches && rs.metadata.deletion_timestamp.is_none() => (Some(true), true),
            None => continue,
        };
        let release = !keep && adopt.is_none();
        if adopt.is_some() || release {
            let mut refs: Vec<_> = rs
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.uid != uid)
                .collect();
            if adopt.is_some() {
                refs.push(owner.clone());
            }
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.metadata.resource_version}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) if keep => out.push(Arc::new(updated)),
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(ReconcileError::api(format!(
                        "claim replicaset {ns}/{name} for deployment {}",
                        key(&d.metadata)
                    ))(e))
                }
            }
        } else if keep {
            out.push(rs);
        }
    }
    Ok(out)
}

struct Rollout {
    ctx: Arc<Context>,
    d: Deployment,
    rs_list: Vec<Arc<ReplicaSet>>,
}

impl Rollout {
    fn key(&self) -> String {
        key(&self.d.metadata)
    }

    fn ns(&self) -> String {
        self.d.metadata.namespace.clone().unwrap_or_default()
    }

    fn rs_api(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.ctx.client.clone(), &self.ns())
    }

    async fn run(&mut self) -> Result<Action, ReconcileError> {
        let paused = self.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        if paused || self.is_scaling_event()? {
            return self.sync_only(paused).await;
        }
        if is_rolling(&self.d) {
            self.rolling().await
        } else {
            self.recreate().await
        }
    }

    /// (new ReplicaSet, old ones oldest first), fixing the new one's revision; creates the new
    /// one when `create` is set (`getAllReplicaSetsAndSyncRevision`).
    async fn new_and_old(
        &mut self,
        create: bool,
    ) -> Result<(Option<Arc<ReplicaSet>>, Vec<Arc<ReplicaSet>>), ReconcileError> {
        let template = self.d.spec.clone().unwrap_or_default().template;
        let mut list = self.rs_list.clone();
        sort_oldest_first(&mut list);
        let new_idx = list.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| rollout::equal_ignore_hash(t, &template))
        });
        let existing = new_idx.map(|i| list.remove(i));
        let old = list;
        let max_old = old.iter().map(|r| revision(&r.metadata)).max().unwrap_or(0);
        let new_revision = max_old + 1;
        let new = match existing {
            Some(rs) => Some(self.sync_existing_new(rs, new_revision).await?),
            None if create => Some(self.create_new(&old, new_revision).await?),
            None => None,
        };
        if let Some(rs) = &new {
            self.set_deployment_revision(revision(&rs.metadata)).await?;
        }
        Ok((new, old))
    }

    fn rs_annotations(
        &self,
        rs: &ReplicaSet,
        new_revision: i64,
    ) -> Result<BTreeMap<String, String>, ReconcileError> {
        let mut ann = rs.metadata.annotations.clone().unwrap_or_default();
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            if !NOT_COPIED.contains(&k.as_str()) {
                ann.insert(k.clone(), v.clone());
            }
        }
        if revision(&rs.metadata) < new_revision {
            ann.insert(REVISION.into(), new_revision.to_string());
        }
        let (surge, _) = surge_and_unavailable(&self.d)?;
        ann.entry(DESIRED_REPLICAS.into())
            .or_insert_with(|| desired(&self.d).to_string());
        ann.entry(MAX_REPLICAS.into())
            .or_insert_with(|| (desired(&self.d) + surge).to_string());
        Ok(ann)
    }

    async fn sync_existing_new(
        &mut self,
        rs: Arc<ReplicaSet>,
        new_revision: i64,
    ) -> Result<Arc<ReplicaSet>, ReconcileError> {
        let ann = self.rs_annotations(&rs, new_revision)?;
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if Some(&ann) == rs.metadata.annotations.as_ref()
            && min_ready.unwrap_or(0) == rs_min_ready.unwrap_or(0)
        {
            return Ok(rs);
        }
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {"annotations": ann, "resourceVersion": rs.metadata.resource_version},
            "spec": {"minReadySeconds": min_ready},
        });
        let updated = self
            .rs_api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ReconcileError::api(format!(
                "update replicaset {}/{name}",
                self.ns()
            )))?;
        if revision(&updated.metadata) != revision(&rs.metadata) {
            tracing::info!(deployment = %self.key(), replicaset = %name, revision = revision(&updated.metadata), "reusing replicaset for the current template");
        }
        let updated = Arc::new(updated);
        self.replace_in_list(&updated);
        Ok(updated)
    }

    fn replace_in_list(&mut self, rs: &Arc<ReplicaSet>) {
        let uid = rs.metadata.uid.clone();
        self.rs_list.retain(|r| r.metadata.uid != uid);
        self.rs_list.push(rs.clone());
    }

    async fn create_new(
        &mut self,
        old: &[Arc<ReplicaSet>],
        new_revision: i64,
    ) -> Result<Arc<ReplicaSet>, ReconcileError> {
        let spec = self.d.spec.clone().unwrap_or_default();
        let collision = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = rollout::pod_template_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector: LabelSelector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!(
            "{}-{hash}",
            self.d.metadata.name.as_deref().unwrap_or_default()
        );
        let (surge, _) = surge_and_unavailable(&self.d)?;
        let all_old: i32 = old.iter().map(|r| replicas(r)).sum();
        let size = if is_rolling(&self.d) {
            rollout::new_rs_replicas(desired(&self.d), surge, all_old, 0)
        } else {
            desired(&self.d)
        };
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.metadata.namespace.clone(),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![pods::owner_ref_to(&self.d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let mut ann = self.rs_annotations(&rs, new_revision)?;
        ann.insert(DESIRED_REPLICAS.into(), desired(&self.d).to_string());
        ann.insert(MAX_REPLICAS.into(), (desired(&self.d) + surge).to_string());
        rs.metadata.annotations = Some(ann);
        let created = match self.rs_api().create(&PostParams::default(), &rs).await {
            Ok(c) => c,
            Err(e) if is_conflict(&e) => {
                // Same name: ours with the same template (a stale cache) is fine; anything else
                // is a hash collision, resolved by bumping collisionCount (a new name).
                let existing =
                    self.rs_api()
                        .get(&name)
                        .await
                        .map_err(ReconcileError::api(format!(
                            "get replicaset {}/{name}",
                            self.ns()
                        )))?;
                let ours = pods::is_controlled_by(
                    &existing.metadata,
                    self.d.metadata.uid.as_deref().unwrap_or_default(),
                );
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| rollout::equal_ignore_hash(t, &spec.template));
                if ours && same {
                    let existing = Arc::new(existing);
                    self.replace_in_list(&existing);
                    return Ok(existing);
                }
                let count = collision.unwrap_or(0).wrapping_add(1);
                let mut status = self.d.status.clone().unwrap_or_default();
                status.collision_count = Some(count);
                self.write_status(&status).await?;
                return Err(ReconcileError::Invalid(format!(
                    "replicaset name {name} collides with an existing one; collisionCount is now {count}, retrying"
                )));
            }
            Err(e) => {
                return Err(ReconcileError::api(format!(
                    "create replicaset {}/{name} for deployment {}",
                    self.ns(),
                    self.key()
                ))(e))
            }
        };
        tracing::info!(deployment = %self.key(), replicaset = %name, replicas = size, "created new replicaset");
        let created = Arc::new(created);
        self.replace_in_list(&created);
        let mut status = self.d.status.clone().unwrap_or_default();
        if self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .is_some()
        {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set {name:?}"),
                ),
            );
            self.d.status = Some(status);
        }
        Ok(created)
    }

    async fn set_deployment_revision(&mut self, rev: i64) -> Result<(), ReconcileError> {
        if revision(&self.d.metadata) == rev || rev == 0 {
            return Ok(());
        }
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let name = self.d.metadata.name.clone().unwrap_or_default();
        let patch = json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
        let updated = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ReconcileError::api(format!(
                "set revision of deployment {}",
                self.key()
            )))?;
        self.d.metadata.annotations = updated.metadata.annotations;
        Ok(())
    }

    /// Scales `rs` to `size`, recording the deployment size in its annotations.
    async fn scale(&mut self, rs: &Arc<ReplicaSet>, size: i32) -> Result<bool, ReconcileError> {
        let (surge, _) = surge_and_unavailable(&self.d)?;
        let want = desired(&self.d).to_string();
        let max = (desired(&self.d) + surge).to_string();
        let ann = rs.metadata.annotations.clone().unwrap_or_default();
        let same_ann =
            ann.get(DESIRED_REPLICAS) == Some(&want) && ann.get(MAX_REPLICAS) == Some(&max);
        if replicas(rs) == size && same_ann {
            return Ok(false);
        }
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: want, MAX_REPLICAS: max}, "resourceVersion": rs.metadata.resource_version},
            "spec": {"replicas": size},
        });
        let updated = self
            .rs_api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ReconcileError::api(format!(
                "scale replicaset {}/{name} to {size}",
                self.ns()
            )))?;
        if replicas(rs) != size {
            tracing::info!(deployment = %self.key(), replicaset = %name, from = replicas(rs), to = size, "scaled replicaset");
        }
        let updated = Arc::new(updated);
        self.replace_in_list(&updated);
        Ok(replicas(rs) != size)
    }

    /// `isScalingEvent`: an active ReplicaSet was sized for a different deployment size.
    fn is_scaling_event(&self) -> Result<bool, ReconcileError> {
        let want = desired(&self.d).to_string();
        let template = self.d.spec.clone().unwrap_or_default().template;
        // Only meaningful once the current template has a ReplicaSet.
        let has_new = self.rs_list.iter().any(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| rollout::equal_ignore_hash(t, &template))
        });
        if !has_new {
            return Ok(false);
        }
        Ok(self.rs_list.iter().filter(|r| replicas(r) > 0).any(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESIRED_REPLICAS))
                .is_some_and(|v| *v != want)
        }))
    }

    /// `sync`: scale only (paused or resized), prune when paused, write status.
    async fn sync_only(&mut self, paused: bool) -> Result<Action, ReconcileError> {
        let (new, old) = self.new_and_old(false).await?;
        self.scale_proportionally(new.clone(), old.clone()).await?;
        if paused {
            self.cleanup(&old).await?;
        }
        self.finish(new, paused).await
    }

    async fn scale_proportionally(
        &mut self,
        new: Option<Arc<ReplicaSet>>,
        mut old: Vec<Arc<ReplicaSet>>,
    ) -> Result<(), ReconcileError> {
        let want = desired(&self.d);
        old.sort_by_key(|r| std::cmp::Reverse(created(r)));
        let mut active: Vec<Arc<ReplicaSet>> = new
            .iter()
            .chain(old.iter())
            .filter(|r| replicas(r) > 0)
            .cloned()
            .collect();
        // FindActiveOrLatest: a single active (or the newest) ReplicaSet simply gets the size.
        let single = match active.len() {
            0 => new.clone().or_else(|| old.first().cloned()),
            1 => Some(active[0].clone()),
            _ => None,
        };
        if let Some(rs) = single {
            self.scale(&rs, want).await?;
            return Ok(());
        }
        if let Some(n) = &new {
            let saturated = replicas(n) == want && available(n) == want;
            if saturated {
                for rs in old.iter().filter(|r| replicas(r) > 0) {
                    self.scale(rs, 0).await?;
                }
                return Ok(());
            }
        }
        if !is_rolling(&self.d) {
            return Ok(());
        }
        let (surge, _) = surge_and_unavailable(&self.d)?;
        let allowed = if want > 0 { want + surge } else { 0 };
        let total: i32 = active.iter().map(|r| replicas(r)).sum();
        if allowed > total {
            active.sort_by_key(|r| {
                (
                    std::cmp::Reverse(replicas(r)),
                    std::cmp::Reverse(created(r)),
                )
            });
        } else {
            active.sort_by_key(|r| (std::cmp::Reverse(replicas(r)), created(r)));
        }
        let sizes: Vec<i32> = active.iter().map(|r| replicas(r)).collect();
        let target = rollout::proportional(&sizes, allowed);
        for (rs, size) in active.iter().zip(target) {
            self.scale(rs, size).await?;
        }
        Ok(())
    }

    async fn rolling(&mut self) -> Result<Action, ReconcileError> {
        let (new, old) = self.new_and_old(true).await?;
        let new = new.ok_or_else(|| ReconcileError::Invalid("no new replicaset".into()))?;
        let want = desired(&self.d);
        let (surge, max_unavailable) = surge_and_unavailable(&self.d)?;
        // Scale up the new ReplicaSet if we can.
        let all: i32 = old.iter().map(|r| replicas(r)).sum::<i32>() + replicas(&new);
        let target = if replicas(&new) > want {
            want
        } else {
            rollout::new_rs_replicas(want, surge, all, replicas(&new))
        };
        if target != replicas(&new) && self.scale(&new, target).await? {
            return self.finish(self.current(&new), false).await;
        }
        // Scale down old ones if we can.
        let new = self.current(&new).unwrap_or(new);
        let active_old: Vec<Arc<ReplicaSet>> =
            old.iter().filter(|r| replicas(r) > 0).cloned().collect();
        let counts: Vec<RsCounts> = active_old
            .iter()
            .map(|r| RsCounts {
                replicas: replicas(r),
                available: available(r),
            })
            .collect();
        let sizes = rollout::scale_down_old(
            want,
            max_unavailable,
            RsCounts {
                replicas: replicas(&new),
                available: available(&new),
            },
            &counts,
        );
        let mut scaled = false;
        for (rs, size) in active_old.iter().zip(sizes) {
            if size != replicas(rs) {
                scaled |= self.scale(rs, size).await?;
            }
        }
        if !scaled {
            let status = calculate_status(&self.d, &self.all_refs(), Some(&new))?;
            if is_complete(&self.d, &status) {
                self.cleanup(&old).await?;
            }
        }
        self.finish(Some(new), false).await
    }

    async fn recreate(&mut self) -> Result<Action, ReconcileError> {
        let (new, old) = self.new_and_old(false).await?;
        let mut scaled = false;
        for rs in old.iter().filter(|r| replicas(r) > 0) {
            scaled |= self.scale(rs, 0).await?;
        }
        if scaled {
            return self.finish(new, false).await;
        }
        // Wait until no old pod runs any more.
        let old_uids: Vec<String> = old.iter().filter_map(|r| r.metadata.uid.clone()).collect();
        let running = self.ctx.pods.state().into_iter().any(|p| {
            pods::controller_ref(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
                && !matches!(pods::phase(&p), "Succeeded" | "Failed")
        });
        if running {
            return self.finish(new, false).await;
        }
        let new = match new {
            Some(n) => n,
            None => {
                let (n, _) = self.new_and_old(true).await?;
                n.ok_or_else(|| ReconcileError::Invalid("no new replicaset".into()))?
            }
        };
        self.scale(&new, desired(&self.d)).await?;
        let status = calculate_status(&self.d, &self.all_refs(), Some(&new))?;
        if is_complete(&self.d, &status) {
            self.cleanup(&old).await?;
        }
        let new = self.current(&new);
        self.finish(new, false).await
    }

    fn current(&self, rs: &Arc<ReplicaSet>) -> Option<Arc<ReplicaSet>> {
        self.rs_list
            .iter()
            .find(|r| r.metadata.uid == rs.metadata.uid)
            .cloned()
    }

    fn all_refs(&self) -> Vec<&ReplicaSet> {
        self.rs_list.iter().map(|r| r.as_ref()).collect()
    }

    /// `cleanupDeployment`: deletes the oldest fully scaled-down ReplicaSets beyond
    /// `revisionHistoryLimit`.
    async fn cleanup(&mut self, old: &[Arc<ReplicaSet>]) -> Result<(), ReconcileError> {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<Arc<ReplicaSet>> = old
            .iter()
            .filter_map(|r| self.current(r))
            .filter(|r| r.metadata.deletion_timestamp.is_none())
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit.max(0));
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|r| (revision(&r.metadata), created(r)));
        for rs in cleanable.iter().take(diff as usize) {
            let status = rs.status.clone().unwrap_or_default();
            if status.replicas != 0
                || replicas(rs) != 0
                || rs.metadata.generation > status.observed_generation
            {
                continue;
            }
            let name = rs.metadata.name.clone().unwrap_or_default();
            match self
                .rs_api()
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    tracing::info!(deployment = %self.key(), replicaset = %name, "deleted old replicaset beyond revisionHistoryLimit")
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(ReconcileError::api(format!(
                        "delete old replicaset {}/{name}",
                        self.ns()
                    ))(e))
                }
            }
            self.rs_list.retain(|r| r.metadata.uid != rs.metadata.uid);
        }
        Ok(())
    }

    /// Computes and writes the status; requeues for availability and the progress deadline.
    async fn finish(
        &mut self,
        new: Option<Arc<ReplicaSet>>,
        paused: bool,
    ) -> Result<Action, ReconcileError> {
        let new = new.and_then(|n| self.current(&n));
        let mut status = calculate_status(&self.d, &self.all_refs(), new.as_deref())?;
        let mut requeue = None;
        if paused {
            if self
                .d
                .spec
                .as_ref()
                .and_then(|s| s.progress_deadline_seconds)
                .is_some()
            {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "Unknown",
                        "DeploymentPaused",
                        "Deployment is paused".into(),
                    ),
                );
            }
        } else {
            let was_paused = self
                .d
                .status
                .as_ref()
                .and_then(|s| condition(s, "Progressing"))
                .is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
            if was_paused {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "Unknown",
                        "DeploymentResumed",
                        "Deployment is resumed".into(),
                    ),
                );
            }
            requeue = progress(&self.d, &mut status, new.as_deref(), Timestamp::now());
        }
        if status.available_replicas < status.replicas && !is_complete(&self.d, &status) {
            // Pods may turn available through minReadySeconds without an event.
            let min_ready = self
                .d
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0);
            if min_ready > 0 {
                let d = Duration::from_secs(min_ready as u64 + 1);
                requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
            }
        }
        self.write_status(&status).await?;
        Ok(Action::requeue(requeue.unwrap_or(Duration::from_secs(300))))
    }

    async fn write_status(&mut self, status: &DeploymentStatus) -> Result<(), ReconcileError> {
        if self.d.status.as_ref() == Some(status) {
            return Ok(());
        }
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns());
        let name = self.d.metadata.name.clone().unwrap_or_default();
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(updated) => {
                self.d.status = updated.status;
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ReconcileError::api(format!(
                "update status of deployment {}",
                self.key()
            ))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                progress_deadline_seconds: Some(600),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rs(name: &str, spec_replicas: i32, actual: i32, ready: i32, avail: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(spec_replicas),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas: actual,
                ready_replicas: Some(ready),
                available_replicas: Some(avail),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn status_sums_replica_sets_and_sets_available() {
        let d = deployment(
            3,
            IntOrString::String("25%".into()),
            IntOrString::String("25%".into()),
        );
        let new = rs("new", 1, 1, 0, 0);
        let old = rs("old", 3, 3, 3, 3);
        let s = calculate_status(&d, &[&old, &new], Some(&new)).unwrap();
        assert_eq!(s.replicas, Some(4));
        assert_eq!(s.updated_replicas, Some(1));
        assert_eq!(s.ready_replicas, Some(3));
        assert_eq!(s.available_replicas, Some(3));
        assert_eq!(s.unavailable_replicas, Some(1));
        assert_eq!(s.observed_generation, Some(2));
        let avail = condition(&s, "Available").unwrap();
        assert_eq!(avail.status, "True");
        assert_eq!(avail.reason.as_deref(), Some("MinimumReplicasAvailable"));
        assert!(!is_complete(&d, &s));

        let s = calculate_status(&d, &[&rs("new", 3, 3, 1, 1)], None).unwrap();
        let avail = condition(&s, "Available").unwrap();
        assert_eq!(avail.reason.as_deref(), Some("MinimumReplicasUnavailable"));
    }

    #[test]
    fn progressing_condition_follows_the_rollout() {
        let mut d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        let new = rs("web-abc", 3, 3, 3, 3);
        let mut s = calculate_status(&d, &[&new], Some(&new)).unwrap();
        assert!(is_complete(&d, &s));
        assert_eq!(progress(&d, &mut s, Some(&new), Timestamp::now()), None);
        let p = condition(&s, "Progressing").unwrap();
        assert_eq!(p.reason.as_deref(), Some("NewReplicaSetAvailable"));
        assert_eq!(
            p.message.as_deref(),
            Some("ReplicaSet \"web-abc\" has successfully progressed.")
        );

        // Mid-rollout with more updated pods than before: ReplicaSetUpdated.
        let half = rs("web-abc", 2, 2, 1, 1);
        let mut s = calculate_status(&d, &[&half], Some(&half)).unwrap();
        assert!(progress(&d, &mut s, Some(&half), Timestamp::now()).is_some());
        assert_eq!(
            condition(&s, "Progressing").unwrap().reason.as_deref(),
            Some("ReplicaSetUpdated")
        );

        // No progress past the deadline: ProgressDeadlineExceeded.
        let mut old_status = s.clone();
        for c in old_status.conditions.as_mut().unwrap() {
            c.last_update_time = Some(Time(Timestamp::from_second(1000).unwrap()));
        }
        d.status = Some(old_status.clone());
        let mut s = old_status;
        progress(
            &d,
            &mut s,
            Some(&half),
            Timestamp::from_second(1000 + 601).unwrap(),
        );
        let p = condition(&s, "Progressing").unwrap();
        assert_eq!(p.status, "False");
        assert_eq!(p.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    }

    #[test]
    fn recreate_has_no_surge_and_unavailable_is_capped() {
        let mut d = deployment(2, IntOrString::Int(0), IntOrString::Int(5));
        assert_eq!(surge_and_unavailable(&d).unwrap(), (0, 2));
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        assert_eq!(surge_and_unavailable(&d).unwrap(), (0, 0));
    }
}
