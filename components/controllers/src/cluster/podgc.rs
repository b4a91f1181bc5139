//! Pod garbage collector (`pod-garbage-collector`), like kube-controller-manager's.
//!
//! Nothing else ever removes a pod whose node is gone: its agent will not confirm the end of a
//! graceful deletion, and workload controllers keep counting it. Every `period` the collector
//! force-deletes (grace period 0, guarded by the pod's UID):
//!
//! - pods bound to a node that has been absent for `quarantine` and is confirmed absent by a
//!   fresh read (a node that is only slow to appear in the cache is left alone). Before the
//!   deletion a pod that had not finished is marked `Failed` with a `DisruptionTarget`
//!   condition, so whoever watches it sees why it ended;
//! - terminating pods that were never scheduled (no agent will ever confirm them);
//! - the oldest finished (Succeeded/Failed) pods beyond `terminated_threshold`.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::util::{is_conflict, is_not_found, now};
use super::{ClusterControllerError, ReconcileError};
use crate::informer::Informers;

/// Reason of the `DisruptionTarget` condition set on pods of deleted nodes.
pub const REASON_DELETION_BY_POD_GC: &str = "DeletionByPodGC";

/// Timing and limits of the pod garbage collector.
#[derive(Debug, Clone, Copy)]
pub struct PodGcConfig {
    /// How often pods are checked (kube-controller-manager: 20 s).
    pub period: Duration,
    /// How long a node must have been missing before its pods go (kube-controller-manager:
    /// 40 s), so a node that is being re-registered keeps them.
    pub quarantine: Duration,
    /// `--terminated-pod-gc-threshold`: finished pods kept before the oldest are deleted;
    /// 0 keeps them all.
    pub terminated_threshold: usize,
}

impl Default for PodGcConfig {
    fn default() -> Self {
        PodGcConfig {
            period: Duration::from_secs(20),
            quarantine: Duration::from_secs(40),
            terminated_threshold: 12_500,
        }
    }
}

/// Why a pod is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Bound to a node that no longer exists.
    Orphaned,
    /// Being deleted and never scheduled.
    UnscheduledTerminating,
    /// Finished, and one of the oldest beyond the threshold.
    Terminated,
}

/// One pod to force-delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Collect {
    /// The pod as the sweep saw it (its conditions are kept when it is marked Failed).
    pub pod: Arc<Pod>,
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// UID of the pod (the deletion's precondition).
    pub uid: String,
    /// The node it is bound to (orphans).
    pub node: Option<String>,
    /// Why it goes.
    pub why: Why,
    /// Whether it had not finished yet (orphans are marked Failed first).
    pub running: bool,
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// What the collector remembers between sweeps: since when each missing node is missing.
#[derive(Debug, Default)]
pub struct Sweeper {
    missing_since: HashMap<String, Instant>,
}

impl Sweeper {
    /// The pods to collect now, given every pod and the names of the nodes that exist.
    /// Orphans are reported only once their node has been missing for `config.quarantine`
    /// (counted from the first sweep that saw it missing).
    pub fn plan(
        &mut self,
        pods: &[Arc<Pod>],
        nodes: &BTreeSet<String>,
        now: Instant,
        config: &PodGcConfig,
    ) -> Vec<Collect> {
        let collect = |pod: &Arc<Pod>, why: Why| Collect {
            pod: pod.clone(),
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            node: node_name(pod).map(str::to_string),
            why,
            running: !finished(pod),
        };
        let mut out = Vec::new();

        let mut missing_now: BTreeSet<&str> = BTreeSet::new();
        for pod in pods {
            let Some(node) = node_name(pod) else {
                if pod.metadata.deletion_timestamp.is_some() {
                    out.push(collect(pod, Why::UnscheduledTerminating));
                }
                continue;
            };
            if nodes.contains(node) {
                continue;
            }
            missing_now.insert(node);
            let since = *self.missing_since.entry(node.to_string()).or_insert(now);
            if now.duration_since(since) >= config.quarantine {
                out.push(collect(pod, Why::Orphaned));
            }
        }
        // Forget nodes that came back or have no pods left.
        self.missing_since
            .retain(|node, _| missing_now.contains(node.as_str()));

        if config.terminated_threshold > 0 {
            let mut done: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| finished(p) && p.metadata.deletion_timestamp.is_none())
                .filter(|p| !out.iter().any(|c| Some(&c.uid) == p.metadata.uid.as_ref()))
                .collect();
            if done.len() > config.terminated_threshold {
                done.sort_by(|a, b| {
                    let created = |p: &Pod| p.metadata.creation_timestamp.clone().map(|t| t.0);
                    created(a)
                        .cmp(&created(b))
                        .then_with(|| a.name_any().cmp(&b.name_any()))
                });
                let excess = done.len() - config.terminated_threshold;
                out.extend(
                    done.into_iter()
                        .take(excess)
                        .map(|p| collect(p, Why::Terminated)),
                );
            }
        }
        out
    }
}

/// The conditions of `pod` with `DisruptionTarget=True` (reason DeletionByPodGC) set.
fn disruption_conditions(pod: &Pod, node: &str) -> Vec<PodCondition> {
    let mut conditions: Vec<PodCondition> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != "DisruptionTarget");
    conditions.push(PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        reason: Some(REASON_DELETION_BY_POD_GC.into()),
        message: Some(format!("PodGC: node {node} no longer exists")),
        last_transition_time: Some(now()),
        ..PodCondition::default()
    });
    conditions
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    config: PodGcConfig,
}

/// Collects one pod: orphans are confirmed and marked first, then the pod is force-deleted.
async fn collect(ctx: &Ctx, item: &Collect) -> Result<(), ReconcileError> {
    let what = format!("{}/{}", item.namespace, item.name);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &item.namespace);
    if let (Why::Orphaned, Some(node)) = (item.why, item.node.as_deref()) {
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let live = nodes
            .get_opt(node)
            .await
            .map_err(ReconcileError::kube(format!("reading node {node}")))?;
        if live.is_some() {
            return Ok(());
        }
        if item.running {
            let patch = json!({"status": {
                "phase": "Failed",
                "conditions": disruption_conditions(&item.pod, node),
            }});
            match pods
                .patch_status(&item.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => {
                    return Err(ReconcileError::Kube {
                        action: format!("marking pod {what} Failed"),
                        source: e,
                    })
                }
            }
        }
    }
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(item.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&item.name, &params).await {
        Ok(_) => {
            tracing::info!(pod = %what, node = ?item.node, why = ?item.why, "garbage-collected pod");
            Ok(())
        }
        // Gone already, or replaced by a pod of the same name (UID precondition).
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(ReconcileError::Kube {
            action: format!("deleting pod {what}"),
            source: e,
        }),
    }
}

async fn sweep_forever(ctx: Arc<Ctx>) {
    ctx.pods.wait_until_ready().await.ok();
    ctx.nodes.wait_until_ready().await.ok();
    let mut sweeper = Sweeper::default();
    let mut ticker = tokio::time::interval(ctx.config.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let nodes: BTreeSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
        let plan = sweeper.plan(&ctx.pods.state(), &nodes, Instant::now(), &ctx.config);
        for item in &plan {
            if let Err(e) = collect(&ctx, item).await {
                tracing::warn!(error = %e, "pod garbage collection failed; retrying next period");
            }
        }
    }
}

/// Sets the pod garbage collector up on the shared Pod and Node informers and returns the
/// future that runs it until dropped.
pub fn run(
    informers: &mut Informers,
    config: PodGcConfig,
) -> impl Future<Output = Result<(), ClusterControllerError>> + Send + 'static {
    let ctx = Arc::new(Ctx {
        client: informers.client().clone(),
        pods: informers.get::<Pod>().store(),
        nodes: informers.get::<Node>().store(),
        config,
    });
    async move {
        sweep_forever(ctx).await;
        Err(ClusterControllerError::Stopped {
            controller: "pod-garbage-collector",
            reason: "its sweep loop ended".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, node: Option<&str>, phase: &str, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).unwrap(),
                )),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
        })
    }

    fn names(plan: &[Collect]) -> Vec<(&str, Why)> {
        plan.iter().map(|c| (c.name.as_str(), c.why)).collect()
    }

    #[test]
    fn orphans_go_only_after_the_quarantine() {
        let config = PodGcConfig::default();
        let pods = vec![
            pod("a", Some("gone"), "Running", 0),
            pod("b", Some("here"), "Running", 0),
            pod("pending", None, "Pending", 0),
        ];
        let nodes: BTreeSet<String> = ["here".to_string()].into();
        let mut sweeper = Sweeper::default();
        let t0 = Instant::now();
        assert!(sweeper.plan(&pods, &nodes, t0, &config).is_empty());
        assert!(sweeper
            .plan(&pods, &nodes, t0 + Duration::from_secs(39), &config)
            .is_empty());
        let plan = sweeper.plan(&pods, &nodes, t0 + Duration::from_secs(40), &config);
        assert_eq!(names(&plan), [("a", Why::Orphaned)]);
        assert_eq!(plan[0].node.as_deref(), Some("gone"));
        assert!(plan[0].running);
        assert_eq!(plan[0].uid, "uid-a");
    }

    #[test]
    fn a_node_that_comes_back_restarts_the_quarantine() {
        let config = PodGcConfig::default();
        let pods = vec![pod("a", Some("flappy"), "Running", 0)];
        let none = BTreeSet::new();
        let back: BTreeSet<String> = ["flappy".to_string()].into();
        let mut sweeper = Sweeper::default();
        let t0 = Instant::now();
        sweeper.plan(&pods, &none, t0, &config);
        sweeper.plan(&pods, &back, t0 + Duration::from_secs(30), &config);
        // Missing again at 35 s: the clock starts over.
        assert!(sweeper
            .plan(&pods, &none, t0 + Duration::from_secs(35), &config)
            .is_empty());
        assert!(sweeper
            .plan(&pods, &none, t0 + Duration::from_secs(74), &config)
            .is_empty());
        assert_eq!(
            names(&sweeper.plan(&pods, &none, t0 + Duration::from_secs(75), &config)),
            [("a", Why::Orphaned)]
        );
    }

    #[test]
    fn unscheduled_terminating_pods_go_at_once() {
        let mut deleting = (*pod("d", None, "Pending", 0)).clone();
        deleting.metadata.deletion_timestamp = Some(now());
        let pods = vec![Arc::new(deleting), pod("p", None, "Pending", 0)];
        let plan = Sweeper::default().plan(
            &pods,
            &BTreeSet::new(),
            Instant::now(),
            &PodGcConfig::default(),
        );
        assert_eq!(names(&plan), [("d", Why::UnscheduledTerminating)]);
    }

    #[test]
    fn oldest_finished_pods_beyond_the_threshold_go() {
        let config = PodGcConfig {
            terminated_threshold: 2,
            ..PodGcConfig::default()
        };
        let nodes: BTreeSet<String> = ["n".to_string()].into();
        let pods = vec![
            pod("new-ok", Some("n"), "Succeeded", 30),
            pod("old-ok", Some("n"), "Succeeded", 10),
            pod("running", Some("n"), "Running", 0),
            pod("oldest-failed", Some("n"), "Failed", 5),
            pod("mid-failed", Some("n"), "Failed", 20),
        ];
        let plan = Sweeper::default().plan(&pods, &nodes, Instant::now(), &config);
        assert_eq!(
            names(&plan),
            [
                ("oldest-failed", Why::Terminated),
                ("old-ok", Why::Terminated)
            ]
        );
        assert!(plan.iter().all(|c| !c.running));
        let keep_all = PodGcConfig {
            terminated_threshold: 0,
            ..config
        };
        assert!(Sweeper::default()
            .plan(&pods, &nodes, Instant::now(), &keep_all)
            .is_empty());
    }

    #[test]
    fn disruption_condition_replaces_an_older_one() {
        let mut p = (*pod("a", Some("gone"), "Running", 0)).clone();
        p.status.as_mut().unwrap().conditions = Some(vec![
            PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            },
            PodCondition {
                type_: "DisruptionTarget".into(),
                status: "False".into(),
                ..PodCondition::default()
            },
        ]);
        let c = disruption_conditions(&p, "gone");
        assert_eq!(c.len(), 2);
        let d = c.iter().find(|c| c.type_ == "DisruptionTarget").unwrap();
        assert_eq!(d.status, "True");
        assert_eq!(d.reason.as_deref(), Some(REASON_DELETION_BY_POD_GC));
        assert!(d.message.as_deref().unwrap().contains("gone"));
    }
}
