//! The ReplicaSet controller: keeps `spec.replicas` pods from the template running.
//!
//! Each sync claims pods (adopts active orphans the selector matches, releases owned pods it no
//! longer matches), creates or deletes pods to reach the wanted count — only when its own earlier
//! creates/deletes have been observed (see [`super::expectations`]) — and writes the status.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use serde_json::json;

use super::expectations::Expectations;
use super::manage::{create_pods, delete_pods, patch_pod_owner, BURST};
use super::pods::{self, key};
use crate::error::{is_not_found, ReconcileError};
use crate::informer::{Change, Informer};

/// Shared state of the ReplicaSet controller.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of all pods.
    pub pods: Store<Pod>,
    /// Outstanding creates/deletes per ReplicaSet.
    pub expectations: Expectations,
}

/// Maps pod changes to ReplicaSets to sync and keeps expectations: the controlling ReplicaSet
/// (before and after the change), or for orphans every ReplicaSet whose selector matches.
pub fn pod_triggers(
    pod: &Pod,
    old: Option<&Pod>,
    change: Change,
    replica_sets: &Store<ReplicaSet>,
    expectations: &Expectations,
) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = Vec::new();
    let owner_of = |p: &Pod| {
        pods::controller_ref(&p.metadata)
            .filter(|r| r.kind == "ReplicaSet" && r.api_version.starts_with("apps/"))
            .map(|r| r.name.clone())
    };
    let owner = owner_of(pod);
    if let Some(name) = &owner {
        let k = format!("{ns}/{name}");
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        match change {
            Change::Added if pod.metadata.deletion_timestamp.is_none() => {
                expectations.creation_observed(&k)
            }
            Change::Added | Change::Deleted => expectations.deletion_observed(&k, pod_name),
            Change::Updated if pod.metadata.deletion_timestamp.is_some() => {
                expectations.deletion_observed(&k, pod_name)
            }
            Change::Updated => {}
        }
        out.push(ObjectRef::new(name).within(&ns));
    }
    if let Some(old_owner) = old.and_then(owner_of) {
        if owner.as_ref() != Some(&old_owner) {
            out.push(ObjectRef::new(&old_owner).within(&ns));
        }
    }
    if owner.is_none() && change != Change::Deleted && pods::is_active(pod) {
        for rs in replica_sets.state() {
            if rs.metadata.namespace.as_deref() == Some(ns.as_str())
                && pods::selector_matches(
                    rs.spec.as_ref().map(|s| &s.selector),
                    pod.metadata.labels.as_ref(),
                )
            {
                out.push(ObjectRef::from_obj(rs.as_ref()));
            }
        }
    }
    out
}

/// Builds the controller over the shared informers; the future runs until `stop` resolves.
pub fn controller(
    client: Client,
    replica_sets: &mut Informer<ReplicaSet>,
    pods_informer: &mut Informer<Pod>,
    concurrency: u16,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let expectations = Expectations::new();
    let rs_store = replica_sets.store();
    let forget = expectations.clone();
    replica_sets.on_change(move |rs, _, change| {
        if change == Change::Deleted {
            forget.forget(&key(&rs.metadata));
        }
    });
    let exp = expectations.clone();
    let store_for_map = rs_store.clone();
    let pod_triggers = pods_informer
        .triggers(move |pod, old, change| pod_triggers(pod, old, change, &store_for_map, &exp));
    let ctx = Arc::new(Context {
        client,
        pods: pods_informer.store(),
        expectations,
    });
    Controller::for_stream(replica_sets.objects(), rs_store)
        .reconcile_on(pod_triggers)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .boxed()
}

fn error_policy(rs: Arc<ReplicaSet>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(replicaset = %key(&rs.metadata), %error, "sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The status of `rs` given the pods it owns (active ones), and when to look again because a
/// ready pod will become available.
pub fn compute_status(
    rs: &ReplicaSet,
    owned: &[&Pod],
    manage_error: Option<&ReconcileError>,
    now: Timestamp,
) -> (ReplicaSetStatus, Option<Duration>) {
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut fully_labeled = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut recheck: Option<Duration> = None;
    for p in owned {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            fully_labeled += 1;
        }
        if pods::is_ready(p) {
            ready += 1;
        }
        match pods::available_in(p, min_ready, now) {
            Some(Duration::ZERO) => available += 1,
            Some(d) => recheck = Some(recheck.map_or(d, |r| r.min(d))),
            None => {}
        }
    }
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(e) = manage_error {
        let reason = if e.to_string().starts_with("delete") {
            "FailedDelete"
        } else {
            "FailedCreate"
        };
        conditions.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(e.to_string()),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
        });
    }
    let status = ReplicaSetStatus {
        replicas: owned.len() as i32,
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    };
    (status, recheck.map(|d| d + Duration::from_secs(1)))
}

/// One sync of a ReplicaSet.
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let rs_key = key(&rs.metadata);
    let spec = rs.spec.clone().unwrap_or_default();
    let owner = pods::owner_ref_to(rs.as_ref());
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let satisfied = ctx.expectations.satisfied(&rs_key);

    // Claim: keep owned pods that still match, adopt matching orphans, release the rest.
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for pod in ctx.pods.state() {
        if pod.metadata.namespace.as_deref() != Some(ns.as_str()) || !pods::is_active(&pod) {
            continue;
        }
        let matches = pods::selector_matches(Some(&spec.selector), pod.metadata.labels.as_ref());
        match pods::controller_ref(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(pod);
                } else if !deleting {
                    patch_pod_owner(&ctx.client, &pod, &owner, false).await?;
                }
            }
            Some(_) => {}
            None if matches && !deleting => {
                patch_pod_owner(&ctx.client, &pod, &owner, true).await?;
                owned.push(pod);
            }
            None => {}
        }
    }

    let mut manage_error = None;
    if satisfied && !deleting {
        let wanted = spec.replicas.unwrap_or(1).max(0) as usize;
        let template = spec.template.clone().unwrap_or_default();
        if owned.len() < wanted {
            let n = (wanted - owned.len()).min(BURST);
            let new_pods = (0..n)
                .map(|_| {
                    pods::pod_from_template(&template, &ns, &format!("{name}-"), owner.clone())
                })
                .collect();
            match create_pods(&ctx.client, &ns, new_pods, &ctx.expectations, &rs_key).await {
                Ok(c) => tracing::info!(replicaset = %rs_key, created = c, "created pods"),
                Err(e) => manage_error = Some(e),
            }
        } else if owned.len() > wanted {
            let n = (owned.len() - wanted).min(BURST);
            let refs: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
            let victims = pods::pods_to_delete(&refs, n);
            match delete_pods(&ctx.client, &ns, &victims, &ctx.expectations, &rs_key).await {
                Ok(()) => tracing::info!(replicaset = %rs_key, deleted = n, "deleted pods"),
                Err(e) => manage_error = Some(e),
            }
        }
    }

    let refs: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
    let (status, recheck) = compute_status(&rs, &refs, manage_error.as_ref(), Timestamp::now());
    if !same_status(rs.status.as_ref(), &status) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let mut value = serde_json::to_value(&status).unwrap_or_default();
        if status.conditions.is_none() {
            value["conditions"] = serde_json::Value::Null;
        }
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": value })),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => {
                return Err(ReconcileError::api(format!(
                    "update status of replicaset {rs_key}"
                ))(e))
            }
        }
    }
    if let Some(e) = manage_error {
        return Err(e);
    }
    Ok(match recheck {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Status equality ignoring condition timestamps.
fn same_status(old: Option<&ReplicaSetStatus>, new: &ReplicaSetStatus) -> bool {
    let Some(old) = old else { return false };
    let strip = |s: &ReplicaSetStatus| {
        let mut s = s.clone();
        if let Some(c) = s.conditions.as_mut() {
            for c in c.iter_mut() {
                c.last_transition_time = None;
            }
        }
        s.terminating_replicas = None;
        s
    };
    strip(old) == strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::pods::tests::pod;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn rs(min_ready: i32) -> ReplicaSet {
        let labels = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "fe".to_string()),
        ]);
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                generation: Some(4),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(3),
                min_ready_seconds: Some(min_ready),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn status_counts_labels_readiness_and_availability() {
        let mut a = pod("a", Some("n"), "Running", true, 100); // ready at 110
        a.metadata.labels = Some(BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "fe".to_string()),
        ]));
        let b = pod("b", Some("n"), "Running", true, 1000); // ready at 1010
        let c = pod("c", None, "Pending", false, 100);
        let now = Timestamp::from_second(1020).unwrap();
        let (s, recheck) = compute_status(&rs(30), &[&a, &b, &c], None, now);
        assert_eq!(s.replicas, 3);
        assert_eq!(s.fully_labeled_replicas, Some(1));
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.available_replicas, Some(1));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(recheck, Some(Duration::from_secs(21)));
        let (s, recheck) = compute_status(&rs(0), &[&a, &b, &c], None, now);
        assert_eq!(s.available_replicas, Some(2));
        assert_eq!(recheck, None);
    }

    #[test]
    fn orphans_trigger_matching_replica_sets_and_owned_pods_lower_expectations() {
        let exp = Expectations::new();
        exp.expect_creations("default/web", 1);
        let mut p = pod("web-1", None, "Pending", false, 1);
        p.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "u1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        let store = kube::runtime::reflector::store::Writer::<ReplicaSet>::default().as_reader();
        let refs = pod_triggers(&p, None, Change::Added, &store, &exp);
        assert_eq!(refs, vec![ObjectRef::new("web").within("default")]);
        assert!(exp.satisfied("default/web"));
    }
}
