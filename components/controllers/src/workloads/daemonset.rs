//! The DaemonSet controller: one pod per eligible node.
//!
//! A node is eligible when the pod template's nodeSelector and required node affinity match it
//! and the pod (with the tolerations Kubernetes adds to every daemon pod) tolerates its
//! NoSchedule/NoExecute taints; cordoned nodes are tolerated. Pods are pinned through
//! `spec.affinity.nodeAffinity` `matchFields metadata.name In [node]` and bound by the
//! scheduler, as in Kubernetes. RollingUpdate replaces old pods at most `maxUnavailable` at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Toleration,
};
use k8s_openapi::jiff::Timestamp;
use kinit_rules::{node_affinity, tolerations};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use serde_json::json;

use super::expectations::Expectations;
use super::manage::{create_pods, delete_pods};
use super::pods::{self, key};
use super::rollout;
use crate::error::ReconcileError;
use crate::informer::{Change, Informer};
use kinit_rules::errors::is_not_found;

/// Label with the hash of the template a daemon pod was made from.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// Shared state of the DaemonSet controller.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of all pods.
    pub pods: Store<Pod>,
    /// Cache of all nodes.
    pub nodes: Store<Node>,
    /// Outstanding creates/deletes per DaemonSet.
    pub expectations: Expectations,
}

/// Builds the controller; the future runs until `stop` resolves.
pub fn controller(
    client: Client,
    daemon_sets: &mut Informer<DaemonSet>,
    nodes: &mut Informer<Node>,
    pods_informer: &mut Informer<Pod>,
    concurrency: u16,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let ds_store = daemon_sets.store();
    let controller = Controller::for_stream(daemon_sets.objects(), ds_store.clone());
    let expectations = Expectations::new();
    let exp = expectations.clone();
    let pod_triggers = pods_informer.triggers(move |pod: &Pod, _, change| {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let Some(owner) = pods::controller_ref(&pod.metadata).filter(|r| r.kind == "DaemonSet")
        else {
            return Vec::new();
        };
        let k = format!("{ns}/{}", owner.name);
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        match change {
            Change::Added if pod.metadata.deletion_timestamp.is_none() => exp.creation_observed(&k),
            Change::Updated if pod.metadata.deletion_timestamp.is_none() => {}
            _ => exp.deletion_observed(&k, name),
        }
        vec![ObjectRef::new(&owner.name).within(&ns)]
    });
    let all = ds_store.clone();
    let node_triggers = nodes.triggers(move |_: &Node, _, _| {
        all.state()
            .iter()
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect()
    });
    let ctx = Arc::new(Context {
        client,
        pods: pods_informer.store(),
        nodes: nodes.store(),
        expectations,
    });
    controller
        .reconcile_on(pod_triggers)
        .reconcile_on(node_triggers)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .boxed()
}

fn error_policy(ds: Arc<DaemonSet>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(daemonset = %key(&ds.metadata), %error, "sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// The tolerations Kubernetes adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`).
pub fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut t = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        t.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    t
}

/// Whether a daemon pod from `template` should run on `node` (`NodeShouldRunDaemonPod`).
pub fn should_run(template: &PodTemplateSpec, node: &Node) -> bool {
    let spec = template.spec.clone().unwrap_or_default();
    if !node_affinity::matches_selector_and_required_affinity(
        spec.node_selector.as_ref(),
        spec.affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref()),
        node,
    ) {
        return false;
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(default_tolerations(spec.host_network == Some(true)));
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    tolerations::first_untolerated(&tolerations, taints, tolerations::is_hard).is_none()
}

/// The pod template for `node`: default tolerations added and required node affinity replaced
/// by `matchFields metadata.name In [node]` (`ReplaceDaemonSetPodNodeNameNodeAffinity`).
pub fn pod_template_for_node(
    template: &PodTemplateSpec,
    node: &str,
    hash: &str,
    generation: i64,
) -> PodTemplateSpec {
    let mut t = template.clone();
    let labels = t
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert("pod-template-generation".into(), generation.to_string());
    let spec = t.spec.get_or_insert_with(Default::default);
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    for d in default_tolerations(spec.host_network == Some(true)) {
        if !tolerations
            .iter()
            .any(|t| t.key == d.key && t.effect == d.effect && t.operator == d.operator)
        {
            tolerations.push(d);
        }
    }
    spec.tolerations = Some(tolerations);
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
    t
}

/// The node a daemon pod is for: `spec.nodeName`, else its `metadata.name` affinity field.
pub fn pod_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

fn template_hash(ds: &DaemonSet) -> String {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    rollout::pod_template_hash(
        &template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    )
}

fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

/// One sync of a DaemonSet.
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let ds_key = key(&ds.metadata);
    let spec = ds.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let hash = template_hash(&ds);
    let now = Timestamp::now();

    // Daemon pods by node (terminating ones excluded: they are on their way out).
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for pod in ctx.pods.state() {
        if pod.metadata.namespace.as_deref() != Some(ns.as_str())
            || !pods::is_controlled_by(&pod.metadata, &uid)
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if let Some(node) = pod_node(&pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    let nodes = ctx.nodes.state();
    let mut to_create: Vec<String> = Vec::new();
    let mut to_delete: Vec<Pod> = Vec::new();
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        ..Default::default()
    };
    let (mut available, mut updated) = (0, 0);
    // Old-template pods that are available: candidates for the rolling update.
    let mut old_available: Vec<Pod> = Vec::new();
    let mut unavailable = 0;
    for node in &nodes {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        let run = should_run(&spec.template, node);
        let mut pods_here: Vec<Arc<Pod>> = by_node.remove(&node_name).unwrap_or_default();
        if !run {
            if !pods_here.is_empty() {
                status.number_misscheduled += 1;
            }
            to_delete.extend(pods_here.iter().map(|p| p.as_ref().clone()));
            continue;
        }
        status.desired_number_scheduled += 1;
        // Failed pods are deleted and replaced.
        let (failed, alive): (Vec<_>, Vec<_>) = pods_here
            .drain(..)
            .partition(|p| pods::phase(p) == "Failed");
        to_delete.extend(failed.iter().map(|p| p.as_ref().clone()));
        let mut alive = alive;
        if alive.is_empty() {
            to_create.push(node_name);
            unavailable += 1;
            continue;
        }
        status.current_number_scheduled += 1;
        // Keep the oldest pod, delete duplicates.
        alive.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        to_delete.extend(alive.iter().skip(1).map(|p| p.as_ref().clone()));
        let pod = &alive[0];
        if pods::is_ready(pod) {
            status.number_ready += 1;
        }
        let is_avail = pods::is_available(pod, min_ready, now);
        let is_updated = pod_hash(pod) == Some(hash.as_str());
        if is_avail {
            available += 1;
        } else {
            unavailable += 1;
        }
        if is_updated {
            updated += 1;
        } else if is_avail {
            old_available.push(pod.as_ref().clone());
        } else {
            // Old and unavailable: replacing it costs nothing.
            to_delete.push(pod.as_ref().clone());
        }
    }
    // Pods for nodes that no longer exist.
    for pods_gone in by_node.into_values() {
        to_delete.extend(pods_gone.iter().map(|p| p.as_ref().clone()));
    }
    // RollingUpdate: replace available old pods while under maxUnavailable.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
        let max_unavailable = rollout::scaled_value(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.as_ref())
                .or(Some(
                    &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1),
                )),
            status.desired_number_scheduled,
            true,
        )
        .map_err(ReconcileError::Invalid)?
        .max(1);
        for pod in old_available {
            if unavailable >= max_unavailable {
                break;
            }
            unavailable += 1;
            to_delete.push(pod);
        }
    }
    status.number_available = Some(available);
    status.number_unavailable = Some((status.desired_number_scheduled - available).max(0));
    status.updated_number_scheduled = Some(updated);

    let mut error = None;
    if ctx.expectations.satisfied(&ds_key) {
        if !to_delete.is_empty() {
            if let Err(e) =
                delete_pods(&ctx.client, &ns, &to_delete, &ctx.expectations, &ds_key).await
            {
                error = Some(e);
            }
        } else if !to_create.is_empty() {
            let owner = pods::owner_ref_to(ds.as_ref());
            let generation = ds.metadata.generation.unwrap_or(0);
            let new_pods = to_create
                .iter()
                .map(|node| {
                    let t = pod_template_for_node(&spec.template, node, &hash, generation);
                    pods::pod_from_template(&t, &ns, &format!("{name}-"), owner.clone())
                })
                .collect();
            match create_pods(&ctx.client, &ns, new_pods, &ctx.expectations, &ds_key).await {
                Ok(n) => tracing::info!(daemonset = %ds_key, created = n, "created daemon pods"),
                Err(e) => error = Some(e),
            }
        }
    }
    let old = ds.status.clone().unwrap_or_default();
    let mut cmp = status.clone();
    cmp.conditions = old.conditions.clone();
    if cmp != old {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => {
                return Err(ReconcileError::api(format!(
                    "update status of daemonset {ds_key}"
                ))(e))
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    let requeue = if min_ready > 0 && available < status.current_number_scheduled {
        Duration::from_secs(min_ready as u64 + 1)
    } else {
        Duration::from_secs(300)
    };
    Ok(Action::requeue(requeue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>, unschedulable: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                unschedulable: Some(unschedulable),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn template(
        node_selector: Option<(&str, &str)>,
        tolerations: Vec<Toleration>,
    ) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                node_selector: node_selector
                    .map(|(k, v)| BTreeMap::from([(k.to_string(), v.to_string())])),
                tolerations: Some(tolerations),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn eligibility_follows_selector_taints_and_default_tolerations() {
        let plain = template(None, vec![]);
        assert!(should_run(&plain, &node("a", &[], vec![], false)));
        // Cordoned and not-ready nodes are tolerated by default.
        let cordoned = node(
            "b",
            &[],
            vec![taint("node.kubernetes.io/unschedulable", "NoSchedule")],
            true,
        );
        assert!(should_run(&plain, &cordoned));
        let not_ready = node(
            "c",
            &[],
            vec![taint("node.kubernetes.io/not-ready", "NoExecute")],
            false,
        );
        assert!(should_run(&plain, &not_ready));
        // A control-plane taint is not, unless tolerated.
        let cp = node(
            "d",
            &[],
            vec![taint("node-role.kubernetes.io/control-plane", "NoSchedule")],
            false,
        );
        assert!(!should_run(&plain, &cp));
        let tolerant = template(
            None,
            vec![toleration(
                "node-role.kubernetes.io/control-plane",
                "NoSchedule",
            )],
        );
        assert!(should_run(&tolerant, &cp));
        // PreferNoSchedule does not block.
        let soft = node("e", &[], vec![taint("x", "PreferNoSchedule")], false);
        assert!(should_run(&plain, &soft));
        // nodeSelector.
        let gpu = template(Some(("gpu", "yes")), vec![]);
        assert!(!should_run(&gpu, &node("f", &[], vec![], false)));
        assert!(should_run(
            &gpu,
            &node("g", &[("gpu", "yes")], vec![], false)
        ));
    }

    #[test]
    fn pods_are_pinned_by_node_affinity() {
        let t = pod_template_for_node(&template(None, vec![]), "node-7", "h1", 3);
        let pod = pods::pod_from_template(
            &t,
            "kube-system",
            "ds-",
            pods::tests::pod("x", None, "Pending", false, 1)
                .metadata
                .owner_references
                .unwrap_or_default()
                .first()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(pod_node(&pod).as_deref(), Some("node-7"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[REVISION_HASH], "h1");
        assert_eq!(labels["pod-template-generation"], "3");
        let tolerations = pod.spec.unwrap().tolerations.unwrap();
        assert!(tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable")));
        let n = node("node-7", &[], vec![], false);
        let other = node("node-8", &[], vec![], false);
        assert!(should_run(&t, &n));
        assert!(!should_run(&t, &other));
    }
}
