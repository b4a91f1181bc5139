//! Pod helpers shared by the workload controllers: ownership, readiness, availability,
//! templates and the order in which surplus pods are deleted.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

/// `namespace/name`, the key of expectations and logs.
pub fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

pub use kinit_rules::labels::selector_matches;
pub use kinit_rules::owners::{
    controller_ref, controller_reference_to as owner_ref_to, is_controlled_by,
};

/// The pod's phase, `Pending` when unset.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Not terminated (Succeeded/Failed) and not being deleted (`IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    let p = phase(pod);
    p != "Succeeded" && p != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

/// True when the pod has condition Ready=True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// When the pod became Ready (the condition's lastTransitionTime), if it is ready.
/// A Ready condition without a transition time counts as ready since forever.
pub fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        cond.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// How much longer until a ready pod counts as available under `min_ready_seconds`:
/// `Some(ZERO)` = available now, `Some(d)` = in `d`, `None` = not ready.
pub fn available_in(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> Option<Duration> {
    let since = ready_since(pod)?;
    if min_ready_seconds <= 0 {
        return Some(Duration::ZERO);
    }
    let at = since
        .as_second()
        .saturating_add(i64::from(min_ready_seconds));
    let left = at - now.as_second();
    Some(Duration::from_secs(left.max(0) as u64))
}

/// Ready for at least `min_ready_seconds` (`IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    available_in(pod, min_ready_seconds, now) == Some(Duration::ZERO)
}

/// Now, as an API timestamp.
pub fn now_time() -> Time {
    Time(Timestamp::now())
}

/// A pod for `template`, owned by `owner`, named `<generate_name>xxxxx` by the API server.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    generate_name: &str,
    owner: OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn phase_rank(pod: &Pod) -> u8 {
    match phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

/// Kubernetes' `ActivePodsWithRanks` order: the pod to delete first sorts first.
///
/// Unscheduled before scheduled, Pending before Unknown before Running, not ready before ready,
/// lower `pod-deletion-cost` first, more pods of the same owner on its node first (`rank`),
/// ready for a shorter time first, more restarts first, newer first.
pub fn deletion_order(a: &Pod, rank_a: usize, b: &Pod, rank_b: usize) -> Ordering {
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    node(a)
        .cmp(&node(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
        .then_with(|| rank_b.cmp(&rank_a))
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(b).cmp(&created(a))
        })
}

/// The `count` pods of `pods` to delete first, ranked with [`deletion_order`]; a pod's rank is
/// the number of `pods` on its node.
pub fn pods_to_delete(pods: &[&Pod], count: usize) -> Vec<Pod> {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let rank = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .map(|n| per_node[n])
            .unwrap_or(0)
    };
    let mut ranked: Vec<(&Pod, usize)> = pods.iter().map(|p| (*p, rank(p))).collect();
    ranked.sort_by(|(a, ra), (b, rb)| deletion_order(a, *ra, b, *rb));
    ranked
        .into_iter()
        .take(count)
        .map(|(p, _)| p.clone())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    pub fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready.then(|| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(
                            Timestamp::from_second(created + 10).unwrap(),
                        )),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn unscheduled_pending_and_unready_pods_go_first() {
        let a = pod("running-ready", Some("n1"), "Running", true, 100);
        let b = pod("unscheduled", None, "Pending", false, 50);
        let c = pod("pending-on-node", Some("n2"), "Pending", false, 60);
        let d = pod("running-unready", Some("n3"), "Running", false, 70);
        let all = [&a, &b, &c, &d];
        assert_eq!(
            names(&pods_to_delete(&all, 4)),
            [
                "unscheduled",
                "pending-on-node",
                "running-unready",
                "running-ready"
            ]
        );
        assert_eq!(names(&pods_to_delete(&all, 1)), ["unscheduled"]);
    }

    #[test]
    fn doubled_up_then_newest_first() {
        let a = pod("old-alone", Some("n1"), "Running", true, 100);
        let b = pod("new-alone", Some("n2"), "Running", true, 200);
        let c = pod("shared-1", Some("n3"), "Running", true, 10);
        let d = pod("shared-2", Some("n3"), "Running", true, 20);
        let all = [&a, &b, &c, &d];
        assert_eq!(
            names(&pods_to_delete(&all, 4)),
            ["shared-2", "shared-1", "new-alone", "old-alone"]
        );
    }

    #[test]
    fn deletion_cost_is_honoured() {
        let mut cheap = pod("cheap", Some("n1"), "Running", true, 100);
        let dear = pod("dear", Some("n2"), "Running", true, 200);
        cheap.metadata.annotations = Some(BTreeMap::from([(
            "controller.kubernetes.io/pod-deletion-cost".to_string(),
            "-5".to_string(),
        )]));
        assert_eq!(names(&pods_to_delete(&[&dear, &cheap], 1)), ["cheap"]);
    }

    #[test]
    fn availability_honours_min_ready_seconds() {
        let p = pod("p", Some("n"), "Running", true, 100); // ready at 110
        let at = |s| Timestamp::from_second(s).unwrap();
        assert!(is_available(&p, 0, at(111)));
        assert!(!is_available(&p, 30, at(130)));
        assert_eq!(available_in(&p, 30, at(130)), Some(Duration::from_secs(10)));
        assert!(is_available(&p, 30, at(140)));
        let q = pod("q", Some("n"), "Running", false, 100);
        assert_eq!(available_in(&q, 0, at(500)), None);
    }
}
