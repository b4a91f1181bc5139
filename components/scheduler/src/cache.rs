//! The scheduler's view of the cluster: nodes and what the pods bound to them use, fed by the
//! node and pod reflectors, plus pods the scheduler has *assumed* onto a node while their binding
//! is in flight (so the next decision already counts them).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::node_info::{NodeInfo, PodInfo};

/// Name of the scheduler this program is (`spec.schedulerName`).
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// `namespace/name` of an object.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Whether this scheduler should place `pod`: not bound, not terminal, not being deleted, and
/// `spec.schedulerName` empty or `default-scheduler`.
pub fn needs_scheduling(pod: &Pod) -> bool {
    let scheduler = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("");
    bound_node(pod).is_none()
        && !is_terminal(pod)
        && pod.metadata.deletion_timestamp.is_none()
        && (scheduler.is_empty() || scheduler == DEFAULT_SCHEDULER_NAME)
}

#[derive(Debug)]
struct CachedPod {
    node: String,
    info: PodInfo,
    assumed: bool,
}

/// Nodes with their allocations.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, CachedPod>,
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Nodes in a stable order (changes only when nodes come and go).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Replaces everything with a fresh listing, keeping pods assumed onto nodes whose binding
    /// the listing does not show yet.
    pub fn rebuild<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) {
        let assumed: Vec<(String, CachedPod)> =
            self.pods.drain().filter(|(_, p)| p.assumed).collect();
        self.nodes.clear();
        self.index.clear();
        for node in nodes {
            self.upsert_node(node.clone());
        }
        let mut unbound = Vec::new();
        for pod in pods {
            if bound_node(pod).is_none() && !is_terminal(pod) {
                unbound.push(pod_key(pod));
            }
            self.update_pod(pod);
        }
        for (key, p) in assumed {
            if unbound.contains(&key) {
                self.insert(key, p);
            }
        }
    }

    /// Adds or updates a node, keeping its pod accounting.
    pub fn upsert_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(&i) = self.index.get(&name) {
            self.nodes[i].set_node(node);
            return;
        }
        let mut info = NodeInfo::new(node);
        for p in self.pods.values().filter(|p| p.node == name) {
            info.add_pod(&p.info);
        }
        self.index.insert(name, self.nodes.len());
        self.nodes.push(info);
    }

    /// Removes a node (its pods stay known and count again if the node comes back).
    pub fn remove_node(&mut self, name: &str) {
        if let Some(i) = self.index.remove(name) {
            self.nodes.swap_remove(i);
            if i < self.nodes.len() {
                let moved = self.nodes[i].name.clone();
                self.index.insert(moved, i);
            }
        }
    }

    /// Applies a pod as seen by the watch: bound, non-terminal pods count on their node; others
    /// are dropped (an assumed pod stays until its binding shows up or it is forgotten).
    pub fn update_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        match bound_node(pod) {
            Some(node) if !is_terminal(pod) => {
                let node = node.to_string();
                self.remove_pod(&key);
                self.insert(
                    key,
                    CachedPod {
                        node,
                        info: PodInfo::new(pod),
                        assumed: false,
                    },
                );
            }
            Some(_) => self.remove_pod(&key),
            None => {
                if self.pods.get(&key).is_some_and(|p| !p.assumed) {
                    self.remove_pod(&key);
                }
            }
        }
    }

    /// Drops a deleted pod.
    pub fn remove_pod(&mut self, key: &str) {
        if let Some(p) = self.pods.remove(key) {
            if let Some(&i) = self.index.get(&p.node) {
                self.nodes[i].remove_pod(&p.info);
            }
        }
    }

    /// Counts `pod` on `node` before the API server confirms the binding.
    pub fn assume(&mut self, pod: PodInfo, node: &str) {
        let key = pod.key.clone();
        self.remove_pod(&key);
        self.insert(
            key,
            CachedPod {
                node: node.to_string(),
                info: pod,
                assumed: true,
            },
        );
    }

    /// Undoes [`Cache::assume`] after a failed binding (no-op once the binding was observed).
    pub fn forget(&mut self, key: &str) {
        if self.pods.get(key).is_some_and(|p| p.assumed) {
            self.remove_pod(key);
        }
    }

    /// Number of pods counted on nodes (bound or assumed).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    fn insert(&mut self, key: String, pod: CachedPod) {
        if let Some(&i) = self.index.get(&pod.node) {
            self.nodes[i].add_pod(&pod.info);
        }
        self.pods.insert(key, pod);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{node, pod};
    use serde_json::json;

    fn with_phase(mut p: Pod, phase: &str) -> Pod {
        p.status = Some(serde_json::from_value(json!({"phase": phase})).unwrap());
        p
    }

    #[test]
    fn selects_pods_to_schedule() {
        assert!(needs_scheduling(&pod("a").build()));
        assert!(!needs_scheduling(&pod("a").node_name("n").build()));
        let mut other = pod("a").build();
        other.spec.as_mut().unwrap().scheduler_name = Some("my-scheduler".into());
        assert!(!needs_scheduling(&other));
        let mut ours = pod("a").build();
        ours.spec.as_mut().unwrap().scheduler_name = Some(DEFAULT_SCHEDULER_NAME.into());
        assert!(needs_scheduling(&ours));
        assert!(!needs_scheduling(&with_phase(pod("a").build(), "Failed")));
        let mut deleting = pod("a").build();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert!(!needs_scheduling(&deleting));
    }

    #[test]
    fn bound_pods_count_until_terminal_or_deleted() {
        let mut c = Cache::new();
        c.upsert_node(node("n1").build());
        let p = pod("a").cpu("1").node_name("n1").build();
        c.update_pod(&p);
        c.update_pod(&p);
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        c.update_pod(&with_phase(p.clone(), "Succeeded"));
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
        c.update_pod(&p);
        c.remove_pod("default/a");
        assert_eq!(c.node("n1").unwrap().pod_count, 0);
        assert_eq!(c.pod_count(), 0);
    }

    #[test]
    fn pods_seen_before_their_node_count_when_it_appears() {
        let mut c = Cache::new();
        c.update_pod(&pod("a").cpu("1").node_name("late").build());
        c.upsert_node(node("late").build());
        assert_eq!(c.node("late").unwrap().pod_count, 1);
        c.remove_node("late");
        assert!(c.node("late").is_none());
        c.upsert_node(node("late").build());
        assert_eq!(c.node("late").unwrap().pod_count, 1);
    }

    #[test]
    fn assumed_pods_count_until_forgotten_or_observed() {
        let mut c = Cache::new();
        c.upsert_node(node("n1").build());
        c.upsert_node(node("n2").build());
        let p = pod("a").cpu("1").build();
        c.assume(PodInfo::new(&p), "n1");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        // a stale unbound update does not drop the assumption
        c.update_pod(&p);
        assert_eq!(c.node("n1").unwrap().pod_count, 1);
        // a rebuild from a listing that still shows the pod unbound keeps it
        let nodes = [node("n1").build(), node("n2").build()];
        c.rebuild(nodes.iter(), [p.clone()].iter());
        assert_eq!(c.node("n1").unwrap().pod_count, 1);
        c.forget("default/a");
        assert_eq!(c.node("n1").unwrap().pod_count, 0);
        // once observed bound, forget is a no-op
        c.assume(PodInfo::new(&p), "n1");
        c.update_pod(&pod("a").cpu("1").node_name("n1").build());
        c.forget("default/a");
        assert_eq!(c.node("n1").unwrap().pod_count, 1);
    }

    #[test]
    fn node_removal_keeps_the_index_consistent() {
        let mut c = Cache::new();
        for n in ["a", "b", "c"] {
            c.upsert_node(node(n).build());
        }
        c.remove_node("a");
        assert_eq!(c.nodes().len(), 2);
        assert_eq!(c.node("c").unwrap().name, "c");
        assert_eq!(c.node("b").unwrap().name, "b");
        c.upsert_node(node("b").label("x", "y").build());
        assert_eq!(c.nodes().len(), 2);
    }
}
