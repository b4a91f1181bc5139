//! The StatefulSet controller: pods with a stable identity, like kube-controller-manager's.
//!
//! - Pod `<set>-<ordinal>` for each ordinal below `replicas`, with `hostname` = pod name and
//!   `subdomain` = `serviceName`, labelled `statefulset.kubernetes.io/pod-name`,
//!   `apps.kubernetes.io/pod-index` and `controller-revision-hash`; a pod that failed is
//!   replaced under the same name.
//! - `volumeClaimTemplates`: the PVC `<template>-<set>-<ordinal>` is created before its pod and
//!   mounted by it; PVCs are kept when pods or the set go (Retain, Kubernetes' default).
//! - `podManagementPolicy: OrderedReady` (default): ordinal n is created only when 0…n-1 are
//!   Running and Ready, and scale-down removes the highest ordinal first, one at a time;
//!   `Parallel` creates and removes all at once.
//! - Revisions are ControllerRevisions `<set>-<hash>` holding the pod template (what `kubectl
//!   rollout history/undo statefulset` read), pruned to `revisionHistoryLimit`. `RollingUpdate` replaces pods from the highest
//!   ordinal down to `partition`, one at a time, each waiting for the previous to be Ready;
//!   `OnDelete` replaces a pod only when someone deletes it.
//! - Status: replicas, ready/available/current/updated counts, current and update revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use serde_json::json;

use super::daemonset::REVISION_HASH;
use super::pods::{self, key};
use super::rollout;
use crate::error::{is_conflict, is_not_found, ReconcileError};
use crate::informer::Informer;

/// Label with the pod's name (Kubernetes' name).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal (Kubernetes' name).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Shared state of the StatefulSet controller.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of all pods.
    pub pods: Store<Pod>,
    /// Cache of all ControllerRevisions.
    pub revisions: Store<ControllerRevision>,
}

/// Builds the controller; the future runs until `stop` resolves.
pub fn controller(
    client: Client,
    sets_informer: &mut Informer<StatefulSet>,
    pods_informer: &mut Informer<Pod>,
    revisions_informer: &mut Informer<ControllerRevision>,
    concurrency: u16,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let pod_triggers = pods_informer.triggers(|pod: &Pod, _, _| {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        pods::controller_ref(&pod.metadata)
            .filter(|r| r.kind == "StatefulSet")
            .map(|owner| vec![ObjectRef::<StatefulSet>::new(&owner.name).within(&ns)])
            .unwrap_or_default()
    });
    let ctx = Arc::new(Context {
        client,
        pods: pods_informer.store(),
        revisions: revisions_informer.store(),
    });
    Controller::for_stream(sets_informer.objects(), sets_informer.store())
        .reconcile_on(pod_triggers)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .boxed()
}

fn error_policy(set: Arc<StatefulSet>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(statefulset = %key(&set.metadata), %error, "sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The ordinal of `pod_name` in set `set`: `web-2` → 2.
pub fn ordinal(set: &str, pod_name: &str) -> Option<usize> {
    let rest = pod_name.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// Name of the PVC of `claim` for pod `pod_name`.
pub fn claim_name(claim: &str, pod_name: &str) -> String {
    format!("{claim}-{pod_name}")
}

/// The pod for `ordinal` of `set` from `template` (of revision `hash`).
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, hash: &str, ordinal: usize) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let namespace = set.metadata.namespace.clone().unwrap_or_default();
    let name = format!("{set_name}-{ordinal}");
    let mut pod = pods::pod_from_template(template, &namespace, "", pods::owner_ref_to(set));
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_HASH.into(), hash.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(name.clone());
    if let Some(service) = set.spec.as_ref().and_then(|s| s.service_name.clone()) {
        if !service.is_empty() {
            spec.subdomain = Some(service);
        }
    }
    let claims = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for claim in claims {
        let Some(claim_template) = claim.metadata.name.clone() else {
            continue;
        };
        volumes.retain(|v| v.name != claim_template);
        volumes.push(Volume {
            name: claim_template.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&claim_template, &name),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if volumes.is_empty() {
        spec.volumes = None;
    }
    pod
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

fn healthy(pod: &Pod) -> bool {
    pods::phase(pod) == "Running"
        && pods::is_ready(pod)
        && pod.metadata.deletion_timestamp.is_none()
}

fn failed(pod: &Pod) -> bool {
    matches!(pods::phase(pod), "Failed" | "Succeeded")
}

/// What one reconcile does to the pods, decided from their state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the pod of this ordinal (from the current revision when `current`).
    Create { ordinal: usize, current: bool },
    /// Delete this pod (failed, condemned by a scale-down, or outdated).
    Delete { name: String },
}

/// A pod as the planner sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Pod name.
    pub name: String,
    /// Running and Ready (and not terminating).
    pub healthy: bool,
    /// Being deleted.
    pub terminating: bool,
    /// Failed or Succeeded: to be replaced.
    pub failed: bool,
    /// Made from the update revision.
    pub updated: bool,
}

/// Inputs of [`plan`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// `spec.replicas`.
    pub replicas: usize,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// `updateStrategy.type: RollingUpdate` (else OnDelete).
    pub rolling: bool,
    /// `rollingUpdate.partition`: ordinals below keep the current revision.
    pub partition: usize,
}

/// The steps for `members` (by ordinal), in order; OrderedReady stops at the first step that
/// must wait for others.
pub fn plan(p: &Plan, members: &BTreeMap<usize, Member>) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut blocked = false;
    // Failed pods are replaced: delete now, recreate on a later pass.
    for m in members.values() {
        if m.failed && !m.terminating {
            steps.push(Step::Delete {
                name: m.name.clone(),
            });
            if !p.parallel {
                return steps;
            }
        }
    }
    for ordinal in 0..p.replicas {
        match members.get(&ordinal) {
            None => {
                steps.push(Step::Create {
                    ordinal,
                    current: p.rolling && ordinal < p.partition,
                });
                if !p.parallel {
                    return steps;
                }
            }
            Some(m) if !m.healthy && !p.parallel => {
                blocked = true;
                break;
            }
            Some(_) => {}
        }
    }
    // Scale down: the highest ordinal first; OrderedReady only when everything below is healthy.
    let condemned: Vec<&Member> = members
        .range(p.replicas..)
        .rev()
        .map(|(_, m)| m)
        .filter(|m| !m.terminating)
        .collect();
    if !condemned.is_empty() {
        if p.parallel {
            steps.extend(condemned.iter().map(|m| Step::Delete {
                name: m.name.clone(),
            }));
        } else if !blocked && !members.range(p.replicas..).any(|(_, m)| m.terminating) {
            steps.push(Step::Delete {
                name: condemned[0].name.clone(),
            });
            return steps;
        }
        return steps;
    }
    if blocked || !p.rolling || members.range(..p.replicas).count() < p.replicas {
        return steps;
    }
    // Rolling update: from the highest ordinal down to the partition, one pod at a time.
    for ordinal in (p.partition..p.replicas).rev() {
        let m = &members[&ordinal];
        if m.terminating {
            return steps;
        }
        if !m.updated {
            steps.push(Step::Delete {
                name: m.name.clone(),
            });
            return steps;
        }
        if !m.healthy {
            return steps;
        }
    }
    steps
}

/// Names of the revisions beyond `limit` to delete, oldest first: never one in `in_use` (the
/// current and update revisions, and any a pod still runs).
pub fn revisions_to_prune(
    owned: &[ControllerRevision],
    in_use: &[String],
    limit: usize,
) -> Vec<String> {
    let mut spare: Vec<&ControllerRevision> = owned
        .iter()
        .filter(|r| {
            r.metadata
                .name
                .as_ref()
                .is_some_and(|n| !in_use.contains(n))
        })
        .collect();
    spare.sort_by_key(|r| r.revision);
    let excess = spare.len().saturating_sub(limit);
    spare
        .into_iter()
        .take(excess)
        .filter_map(|r| r.metadata.name.clone())
        .collect()
}

/// The ControllerRevision of `set` for `template`/`hash`, numbered `revision`.
fn controller_revision(
    set: &StatefulSet,
    template: &PodTemplateSpec,
    hash: &str,
    revision: i64,
) -> ControllerRevision {
    let name = set.metadata.name.clone().unwrap_or_default();
    let mut labels = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    let mut template = serde_json::to_value(template).unwrap_or_default();
    template["$patch"] = json!("replace");
    ControllerRevision {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![pods::owner_ref_to(set)]),
            ..Default::default()
        },
        data: Some(RawExtension(json!({"spec": {"template": template}}))),
        revision,
    }
}

fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut value = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(m) = value.as_object_mut() {
        m.remove("$patch");
    }
    serde_json::from_value(value).ok()
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let Some(spec) = set.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = set.metadata.namespace.clone().unwrap_or_default();
    let name = set.metadata.name.clone().unwrap_or_default();
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let status = set.status.clone().unwrap_or_default();

    // Revisions: the update revision is the template's hash; keep one ControllerRevision each.
    let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let owned: Vec<ControllerRevision> = ctx
        .revisions
        .state()
        .iter()
        .filter(|r| {
            r.metadata.namespace.as_deref() == Some(ns.as_str())
                && pods::is_controlled_by(&r.metadata, &uid)
        })
        .map(|r| ControllerRevision::clone(r))
        .collect();
    let update_hash = rollout::pod_template_hash(&spec.template, status.collision_count);
    let update_name = format!("{name}-{update_hash}");
    if !owned
        .iter()
        .any(|r| r.metadata.name.as_deref() == Some(update_name.as_str()))
    {
        let next = owned.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        let revision = controller_revision(&set, &spec.template, &update_hash, next);
        match revisions.create(&PostParams::default(), &revision).await {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {}
            Err(e) => {
                return Err(ReconcileError::api(format!(
                    "creating controller revision {ns}/{update_name}"
                ))(e))
            }
        }
    }
    let current_hash = status
        .current_revision
        .as_deref()
        .and_then(|r| r.strip_prefix(&format!("{name}-")))
        .unwrap_or(&update_hash)
        .to_string();
    let current_template = owned
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(format!("{name}-{current_hash}").as_str()))
        .and_then(template_of)
        .unwrap_or_else(|| spec.template.clone());

    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && pods::is_controlled_by(&p.metadata, &uid)
        })
        .collect();
    let by_ordinal: BTreeMap<usize, Arc<Pod>> = pods
        .iter()
        .filter_map(|p| Some((ordinal(&name, p.metadata.name.as_deref()?)?, p.clone())))
        .collect();
    // History: revisions beyond revisionHistoryLimit (10) go, unless something still uses them.
    let mut in_use: Vec<String> = vec![update_name.clone(), format!("{name}-{current_hash}")];
    in_use.extend(
        by_ordinal
            .values()
            .filter_map(|p| revision_of(p).map(|h| format!("{name}-{h}"))),
    );
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(0);
    for old in revisions_to_prune(&owned, &in_use, limit) {
        match revisions.delete(&old, &Default::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(ReconcileError::api(format!(
                    "deleting controller revision {ns}/{old}"
                ))(e))
            }
        }
    }
    let members: BTreeMap<usize, Member> = by_ordinal
        .iter()
        .map(|(o, p)| {
            (
                *o,
                Member {
                    name: p.metadata.name.clone().unwrap_or_default(),
                    healthy: healthy(p),
                    terminating: p.metadata.deletion_timestamp.is_some(),
                    failed: failed(p),
                    updated: revision_of(p) == Some(update_hash.as_str()),
                },
            )
        })
        .collect();
    let replicas = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition = strategy
        .rolling_update
        .and_then(|r| r.partition)
        .map(|p| usize::try_from(p.max(0)).unwrap_or(0))
        .unwrap_or(0);
    let steps = plan(
        &Plan {
            replicas,
            parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
            rolling,
            partition,
        },
        &members,
    );

    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let claim_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for step in &steps {
        match step {
            Step::Create { ordinal, current } => {
                let (template, hash) = if *current {
                    (&current_template, current_hash.as_str())
                } else {
                    (&spec.template, update_hash.as_str())
                };
                let pod = pod_for(&set, template, hash, *ordinal);
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                for claim in spec.volume_claim_templates.iter().flatten() {
                    let Some(template_name) = claim.metadata.name.clone() else {
                        continue;
                    };
                    let mut pvc = claim.clone();
                    pvc.metadata.name = Some(claim_name(&template_name, &pod_name));
                    pvc.metadata.namespace = Some(ns.clone());
                    let labels = pvc.metadata.labels.get_or_insert_with(BTreeMap::new);
                    for (k, v) in spec.selector.match_labels.iter().flatten() {
                        labels.insert(k.clone(), v.clone());
                    }
                    pvc.status = None;
                    match claim_api.create(&PostParams::default(), &pvc).await {
                        Ok(_) => {}
                        Err(e) if is_conflict(&e) => {}
                        Err(e) => {
                            return Err(ReconcileError::api(format!(
                                "creating claim {ns}/{} for pod {pod_name}",
                                pvc.metadata.name.unwrap_or_default()
                            ))(e))
                        }
                    }
                }
                match pod_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => {
                        return Err(ReconcileError::api(format!("creating pod {ns}/{pod_name}"))(e))
                    }
                }
            }
            Step::Delete { name: pod_name } => {
                match pod_api.delete(pod_name, &Default::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        return Err(ReconcileError::api(format!("deleting pod {ns}/{pod_name}"))(e))
                    }
                }
            }
        }
    }

    // Status from the pods as they are now (the next event refines it).
    let live: Vec<&Arc<Pod>> = by_ordinal
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let updated = count(&|p| revision_of(p) == Some(update_hash.as_str()));
    let current = count(&|p| revision_of(p) == Some(current_hash.as_str()));
    let ready = count(&|p| pods::is_ready(p));
    let available = count(&|p| pods::is_available(p, min_ready, now));
    let all_updated = usize::try_from(updated).unwrap_or(0) == replicas
        && live.len() == replicas
        && steps.is_empty();
    let (current_revision, current_replicas) = if all_updated {
        (update_name.clone(), updated)
    } else {
        (format!("{name}-{current_hash}"), current)
    };
    let new_status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: i32::try_from(live.len()).unwrap_or(i32::MAX),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        current_replicas: Some(current_replicas),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision),
        update_revision: Some(update_name),
        collision_count: status.collision_count,
        conditions: status.conditions.clone(),
    };
    if set.status.as_ref() != Some(&new_status) {
        // At the resourceVersion this sync read: a newer StatefulSet (409) syncs again anyway.
        let mut updated = (*set).clone();
        updated.metadata.managed_fields = None;
        updated.status = Some(new_status);
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(e) => {
                return Err(ReconcileError::api(format!(
                    "updating the status of statefulset {ns}/{name}"
                ))(e))
            }
        }
    }
    // Not-yet-available pods become available after minReadySeconds without another event.
    if available < ready {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, healthy: bool, updated: bool) -> Member {
        Member {
            name: name.into(),
            healthy,
            terminating: false,
            failed: false,
            updated,
        }
    }

    fn members(list: &[(usize, Member)]) -> BTreeMap<usize, Member> {
        list.iter().cloned().collect()
    }

    fn ordered(replicas: usize) -> Plan {
        Plan {
            replicas,
            parallel: false,
            rolling: true,
            partition: 0,
        }
    }

    #[test]
    fn ordinals_parse_strictly() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "webx-1"), None);
        assert_eq!(ordinal("web", "web-"), None);
        assert_eq!(ordinal("web-a", "web-a-3"), Some(3));
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_in_order() {
        assert_eq!(
            plan(&ordered(3), &BTreeMap::new()),
            [Step::Create {
                ordinal: 0,
                current: false
            }]
        );
        // web-0 exists but is not Ready yet: wait.
        let m = members(&[(0, member("web-0", false, true))]);
        assert!(plan(&ordered(3), &m).is_empty());
        let m = members(&[(0, member("web-0", true, true))]);
        assert_eq!(
            plan(&ordered(3), &m),
            [Step::Create {
                ordinal: 1,
                current: false
            }]
        );
        // Parallel: everything missing at once.
        let parallel = Plan {
            parallel: true,
            ..ordered(3)
        };
        assert_eq!(plan(&parallel, &BTreeMap::new()).len(), 3);
    }

    #[test]
    fn scale_down_takes_the_highest_ordinal_first() {
        let m = members(&[
            (0, member("web-0", true, true)),
            (1, member("web-1", true, true)),
            (2, member("web-2", true, true)),
        ]);
        assert_eq!(
            plan(&ordered(1), &m),
            [Step::Delete {
                name: "web-2".into()
            }]
        );
        let mut terminating = m.clone();
        terminating.get_mut(&2).unwrap().terminating = true;
        assert!(plan(&ordered(1), &terminating).is_empty(), "one at a time");
        let parallel = Plan {
            parallel: true,
            ..ordered(1)
        };
        assert_eq!(
            plan(&parallel, &m),
            [
                Step::Delete {
                    name: "web-2".into()
                },
                Step::Delete {
                    name: "web-1".into()
                }
            ]
        );
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition_one_ready_pod_at_a_time() {
        let m = members(&[
            (0, member("web-0", true, false)),
            (1, member("web-1", true, false)),
            (2, member("web-2", true, false)),
        ]);
        assert_eq!(
            plan(&ordered(3), &m),
            [Step::Delete {
                name: "web-2".into()
            }]
        );
        // web-2 recreated from the new revision but not Ready: wait.
        let mut m2 = m.clone();
        m2.insert(2, member("web-2", false, true));
        assert!(plan(&ordered(3), &m2).is_empty());
        m2.insert(2, member("web-2", true, true));
        assert_eq!(
            plan(&ordered(3), &m2),
            [Step::Delete {
                name: "web-1".into()
            }]
        );
        // Partition 2: web-0 and web-1 stay on the current revision.
        let partitioned = Plan {
            partition: 2,
            ..ordered(3)
        };
        assert!(plan(&partitioned, &m2).is_empty());
        // A missing pod below the partition comes back from the current revision.
        let mut gone = m2.clone();
        gone.remove(&0);
        assert_eq!(
            plan(&partitioned, &gone),
            [Step::Create {
                ordinal: 0,
                current: true
            }]
        );
        // OnDelete: nothing is replaced by the controller.
        let on_delete = Plan {
            rolling: false,
            ..ordered(3)
        };
        assert!(plan(&on_delete, &m).is_empty());
    }

    #[test]
    fn old_revisions_beyond_the_limit_go_unless_in_use() {
        let revision = |name: &str, n: i64| ControllerRevision {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: None,
            revision: n,
        };
        let owned = vec![
            revision("web-e", 5),
            revision("web-a", 1),
            revision("web-c", 3),
            revision("web-b", 2),
            revision("web-d", 4),
        ];
        let in_use = vec!["web-e".to_string(), "web-a".to_string()];
        // Spare: b, c, d (oldest first); keep 1.
        assert_eq!(revisions_to_prune(&owned, &in_use, 1), ["web-b", "web-c"]);
        assert!(revisions_to_prune(&owned, &in_use, 10).is_empty());
        assert_eq!(revisions_to_prune(&owned, &in_use, 0).len(), 3);
    }

    #[test]
    fn failed_pods_are_replaced() {
        let mut m = members(&[(0, member("web-0", false, true))]);
        m.get_mut(&0).unwrap().failed = true;
        assert_eq!(
            plan(&ordered(1), &m),
            [Step::Delete {
                name: "web-0".into()
            }]
        );
    }

    #[test]
    fn pods_get_identity_claims_and_revision() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "data", "uid": "u-1"},
            "spec": {
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "c", "image": "demo"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}}}]
            }
        }))
        .unwrap();
        let template = set.spec.as_ref().unwrap().template.clone();
        let pod = pod_for(&set, &template, "abc", 2);
        assert_eq!(pod.metadata.name.as_deref(), Some("db-2"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "db-2");
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        assert_eq!(labels[REVISION_HASH], "abc");
        assert_eq!(labels["app"], "db");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("db-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
        let claim = spec.volumes.as_ref().unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap();
        assert_eq!(claim.claim_name, "data-db-2");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("StatefulSet", "u-1")
        );
        // The revision keeps the template for later re-creation.
        let revision = controller_revision(&set, &template, "abc", 1);
        assert_eq!(revision.metadata.name.as_deref(), Some("db-abc"));
        assert_eq!(template_of(&revision), Some(template));
    }
}
