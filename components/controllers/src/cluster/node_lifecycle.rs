//! Node lifecycle controller: watches node heartbeats (the node's Lease in `kube-node-lease`
//! and the Ready condition's `lastHeartbeatTime`). A node silent for longer than the grace period
//! gets Ready=Unknown and the `node.kubernetes.io/unreachable` NoExecute + NoSchedule taints; a
//! node reporting Ready=False gets `node.kubernetes.io/not-ready`; the taints go away when the
//! node is healthy again. Pods on a node with NoExecute taints they do not tolerate are evicted
//! (deleted) once their `tolerationSeconds` have passed since the taint was added.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::util::{is_conflict, is_not_found, now};
use super::{ClusterControllerError, ReconcileError};
use crate::informer::Informers;

/// Namespace of node heartbeat leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Taint of nodes whose heartbeat stopped.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of nodes reporting Ready=False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Timing of the node lifecycle controller.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleConfig {
    /// How often each node is checked.
    pub monitor_period: Duration,
    /// Heartbeat age after which a node is unreachable.
    pub grace_period: Duration,
    /// Eviction delay for pods without a matching NoExecute toleration.
    pub pod_eviction_timeout: Duration,
}

/// Health of a node as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Heartbeat recent and Ready=True.
    Ready,
    /// Heartbeat recent, Ready=False.
    NotReady,
    /// Heartbeat older than the grace period (or Ready=Unknown).
    Unreachable,
}

fn ts(t: &Time) -> SystemTime {
    system_time(&t.0)
}

fn system_time(t: &Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(t.as_nanosecond().max(0)).unwrap_or(u64::MAX))
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The most recent sign of life: lease renewal, Ready heartbeat, or (never heard from) the
/// node's creation; never earlier than `not_before` (the controller's start, so a restarted
/// controller gives nodes a full grace period).
pub fn last_heartbeat(node: &Node, lease: Option<&Lease>, not_before: SystemTime) -> SystemTime {
    let candidates = [
        lease
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
            .map(|m| system_time(&m.0)),
        ready_condition(node)
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(ts),
        node.metadata.creation_timestamp.as_ref().map(ts),
    ];
    candidates
        .into_iter()
        .flatten()
        .fold(not_before, SystemTime::max)
}

/// The node's health at `now`.
pub fn health(node: &Node, heartbeat: SystemTime, now: SystemTime, grace: Duration) -> Health {
    if now.duration_since(heartbeat).unwrap_or_default() > grace {
        return Health::Unreachable;
    }
    match ready_condition(node).map(|c| c.status.as_str()) {
        Some("True") => Health::Ready,
        Some("False") => Health::NotReady,
        // Unknown written by us earlier, but the heartbeat is fresh again: the kubelet will post
        // its own Ready soon; until then keep it unreachable.
        Some(_) => Health::Unreachable,
        None => Health::NotReady,
    }
}

fn taint(key: &str, effect: &str, added: Option<Time>) -> Taint {
    Taint {
        key: key.into(),
        effect: effect.into(),
        time_added: added,
        value: None,
    }
}

/// The node's taints for `health`: the lifecycle taints of other states removed, the ones of
/// this state added (existing ones keep their timeAdded).
pub fn desired_taints(current: &[Taint], health: Health, now: Time) -> Vec<Taint> {
    let want: &[&str] = match health {
        Health::Ready => &[],
        Health::NotReady => &[TAINT_NOT_READY],
        Health::Unreachable => &[TAINT_UNREACHABLE],
    };
    let ours = [TAINT_NOT_READY, TAINT_UNREACHABLE];
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| {
            !ours.contains(&t.key.as_str())
                || (want.contains(&t.key.as_str())
                    && (t.effect == "NoExecute" || t.effect == "NoSchedule"))
        })
        .cloned()
        .collect();
    for key in want {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t.key == *key && t.effect == effect) {
                let added = (effect == "NoExecute").then(|| now.clone());
                out.push(taint(key, effect, added));
            }
        }
    }
    out
}

/// When a pod must leave a node with `taints`: `None` = never (all NoExecute taints tolerated
/// forever, or none present); otherwise the time (possibly in the past). A taint no toleration
/// matches uses `default_timeout` counted from the taint's timeAdded.
pub fn eviction_time(
    pod: &Pod,
    taints: &[Taint],
    default_timeout: Duration,
    now: SystemTime,
) -> Option<SystemTime> {
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    let mut when: Option<SystemTime> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let since = taint.time_added.as_ref().map(ts).unwrap_or(now);
        let matching: Vec<&Toleration> = tolerations
            .iter()
            .filter(|t| kinit_rules::tolerations::tolerates(t, taint))
            .collect();
        let delay = if matching.is_empty() {
            Some(default_timeout)
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            None
        } else {
            matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .map(|s| Duration::from_secs(s.max(0) as u64))
        };
        if let Some(d) = delay {
            let t = since + d;
            when = Some(when.map_or(t, |w| w.min(t)));
        }
    }
    when
}

struct Ctx {
    client: Client,
    config: LifecycleConfig,
    started: SystemTime,
}

fn unknown_conditions(node: &Node, now: Time) -> Vec<NodeCondition> {
    let mut conditions: Vec<NodeCondition> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if !conditions.iter().any(|c| c.type_ == "Ready") {
        conditions.push(NodeCondition {
            type_: "Ready".into(),
            ..NodeCondition::default()
        });
    }
    for c in &mut conditions {
        if c.status != "Unknown" {
            c.status = "Unknown".into();
            c.last_transition_time = Some(now.clone());
        }
        c.reason = Some("NodeStatusUnknown".into());
        c.message = Some(if c.last_heartbeat_time.is_some() {
            "Kubelet stopped posting node status.".into()
        } else {
            "Kubelet never posted node status.".into()
        });
    }
    conditions
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let name = node.name_any();
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), NODE_LEASE_NAMESPACE);
    let lease = leases
        .get_opt(&name)
        .await
        .map_err(ReconcileError::kube(format!(
            "reading lease {NODE_LEASE_NAMESPACE}/{name}"
        )))?;
    let now_sys = SystemTime::now();
    let heartbeat = last_heartbeat(&node, lease.as_ref(), ctx.started);
    let health = health(&node, heartbeat, now_sys, ctx.config.grace_period);
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let now_t = now();

    if health == Health::Unreachable
        && ready_condition(&node).is_none_or(|c| {
            c.status != "Unknown" || c.reason.as_deref() != Some("NodeStatusUnknown")
        })
    {
        tracing::warn!(node = %name, "node stopped posting status; marking it Unknown");
        let patch = json!({"status": {"conditions": unknown_conditions(&node, now_t.clone())}});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ReconcileError::kube(format!("marking node {name} Unknown")))?;
    }

    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let taints = desired_taints(&current, health, now_t);
    if taints != current {
        tracing::info!(node = %name, ?health, "updating node lifecycle taints");
        let mut updated = (*node).clone();
        updated.metadata.managed_fields = None;
        updated.spec.get_or_insert_with(Default::default).taints =
            (!taints.is_empty()).then(|| taints.clone());
        match nodes.replace(&name, &PostParams::default(), &updated).await {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(Duration::from_millis(100))),
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => {
                return Err(ReconcileError::Kube {
                    action: format!("updating taints of node {name}"),
                    source: e,
                })
            }
        }
    }

    // NoExecute evictions.
    let mut next = ctx.config.monitor_period;
    if taints.iter().any(|t| t.effect == "NoExecute") {
        let pods: Api<Pod> = Api::all(ctx.client.clone());
        let on_node = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
            .await
            .map_err(ReconcileError::kube(format!("listing pods on node {name}")))?;
        for pod in on_node.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(when) = eviction_time(&pod, &taints, ctx.config.pod_eviction_timeout, now_sys)
            else {
                continue;
            };
            match when.duration_since(now_sys) {
                Ok(wait) if !wait.is_zero() => next = next.min(wait),
                _ => {
                    let ns = pod.namespace().unwrap_or_default();
                    tracing::info!(pod = %format!("{ns}/{}", pod.name_any()), node = %name, "evicting pod from tainted node");
                    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                    match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => {
                            return Err(ReconcileError::Kube {
                                action: format!("evicting pod {ns}/{}", pod.name_any()),
                                source: e,
                            })
                        }
                    }
                }
            }
        }
    }
    // Wake up when the heartbeat would go stale, or for the next eviction.
    if health != Health::Unreachable {
        let stale_at = heartbeat + ctx.config.grace_period;
        if let Ok(d) = stale_at.duration_since(now_sys) {
            next = next.min(d + Duration::from_millis(100));
        }
    }
    Ok(Action::requeue(next.max(Duration::from_millis(100))))
}

fn error_policy(node: Arc<Node>, error: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(node = %node.name_any(), %error, "node lifecycle check failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Sets the node lifecycle controller (health taints and NoExecute evictions) up on the shared
/// Node and Lease informers and returns the future that runs it until dropped.
pub fn run(
    informers: &mut Informers,
    config: LifecycleConfig,
) -> impl Future<Output = Result<(), ClusterControllerError>> + Send + 'static {
    let ctx = Arc::new(Ctx {
        client: informers.client().clone(),
        config,
        started: SystemTime::now(),
    });
    // Node heartbeats: the Leases of the node-lease namespace, named after their Node.
    let heartbeats = informers.get::<Lease>().triggers(|lease: &Lease, _, _| {
        if lease.namespace().as_deref() == Some(NODE_LEASE_NAMESPACE) {
            vec![ObjectRef::<Node>::new(&lease.name_any())]
        } else {
            Vec::new()
        }
    });
    let nodes = informers.get::<Node>();
    let controller =
        Controller::for_stream(nodes.objects(), nodes.store()).reconcile_on(heartbeats);
    async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "node lifecycle controller event");
                }
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeStatus, PodSpec};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn time(secs: u64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + secs as i64).unwrap())
    }

    fn node(ready: Option<&str>, heartbeat: u64) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: ready.map(|s| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: s.into(),
                        last_heartbeat_time: Some(time(heartbeat)),
                        ..NodeCondition::default()
                    }]
                }),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn stale_heartbeat_is_unreachable() {
        let n = node(Some("True"), 0);
        let hb = last_heartbeat(&n, None, at(0));
        assert_eq!(
            health(&n, hb, at(30), Duration::from_secs(40)),
            Health::Ready
        );
        assert_eq!(
            health(&n, hb, at(41), Duration::from_secs(40)),
            Health::Unreachable
        );
        let not_ready = node(Some("False"), 0);
        assert_eq!(
            health(&not_ready, hb, at(10), Duration::from_secs(40)),
            Health::NotReady
        );
    }

    #[test]
    fn lease_renewal_counts_as_heartbeat() {
        let n = node(Some("True"), 0);
        let lease = Lease {
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    time(100).0,
                )),
                ..Default::default()
            }),
            ..Lease::default()
        };
        assert_eq!(last_heartbeat(&n, Some(&lease), at(0)), at(100));
        // Controller start bounds it from below.
        assert_eq!(last_heartbeat(&n, None, at(50)), at(50));
    }

    #[test]
    fn taints_follow_health() {
        let other = taint("dedicated", "NoSchedule", None);
        let t = desired_taints(std::slice::from_ref(&other), Health::Unreachable, time(5));
        assert_eq!(t.len(), 3);
        assert!(t.iter().any(|t| t.key == TAINT_UNREACHABLE
            && t.effect == "NoExecute"
            && t.time_added == Some(time(5))));
        assert!(t
            .iter()
            .any(|t| t.key == TAINT_UNREACHABLE && t.effect == "NoSchedule"));
        // Stable: existing taints keep their time.
        assert_eq!(desired_taints(&t, Health::Unreachable, time(99)), t);
        let nr = desired_taints(&t, Health::NotReady, time(7));
        assert!(nr.iter().all(|t| t.key != TAINT_UNREACHABLE));
        assert!(nr.iter().any(|t| t.key == TAINT_NOT_READY));
        assert_eq!(desired_taints(&nr, Health::Ready, time(8)), vec![other]);
    }

    #[test]
    fn eviction_honours_toleration_seconds() {
        let taints = vec![taint(TAINT_UNREACHABLE, "NoExecute", Some(time(10)))];
        let pod = |tolerations: Vec<Toleration>| Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let tol = |secs: Option<i64>| Toleration {
            key: Some(TAINT_UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        };
        let d = Duration::from_secs(300);
        assert_eq!(
            eviction_time(&pod(vec![tol(Some(5))]), &taints, d, at(11)),
            Some(at(15))
        );
        assert_eq!(
            eviction_time(&pod(vec![tol(None)]), &taints, d, at(11)),
            None
        );
        assert_eq!(
            eviction_time(&pod(vec![]), &taints, d, at(11)),
            Some(at(310))
        );
        let everything = Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        };
        assert_eq!(
            eviction_time(&pod(vec![everything]), &taints, d, at(11)),
            None
        );
        assert_eq!(eviction_time(&pod(vec![]), &[], d, at(11)), None);
    }
}
