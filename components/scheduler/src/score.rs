//! Scores: how good each feasible node is for a pod, 0–100 per plugin (kube-scheduler's
//! `MaxNodeScore`), combined with kube-scheduler's default plugin weights.

use crate::filter::{taints, tolerated};
use crate::node_info::{NodeInfo, PodInfo};
use kinit_rules::node_affinity::term_matches;

/// Highest score one plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;
/// Weight of [`least_allocated`] (NodeResourcesFit, LeastAllocated strategy).
pub const WEIGHT_LEAST_ALLOCATED: i64 = 1;
/// Weight of owner spreading (like PodTopologySpread's default hostname constraint).
pub const WEIGHT_SPREAD: i64 = 2;
/// Weight of PreferNoSchedule taint avoidance (TaintToleration).
pub const WEIGHT_TAINT: i64 = 3;
/// Weight of preferred node affinity (NodeAffinity).
pub const WEIGHT_NODE_AFFINITY: i64 = 2;

/// LeastAllocated: the share of CPU and memory left free after placing the pod, averaged; pods
/// without requests count kube-scheduler's defaults (100m, 200Mi).
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let free = |alloc: i64, requested: i64| {
        if alloc <= 0 || requested > alloc {
            0
        } else {
            (alloc - requested) * MAX_NODE_SCORE / alloc
        }
    };
    let cpu = free(
        node.allocatable.milli_cpu,
        node.nonzero_cpu + pod.nonzero_cpu,
    );
    let mem = free(
        node.allocatable.memory,
        node.nonzero_memory + pod.nonzero_memory,
    );
    (cpu + mem) / 2
}

/// Pods of the same controlling owner already on the node.
pub fn same_owner_count(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.owner_uid
        .as_ref()
        .and_then(|o| node.owner_counts.get(o))
        .map_or(0, |n| i64::from(*n))
}

/// PreferNoSchedule taints on the node that the pod does not tolerate.
pub fn intolerable_prefer_no_schedule(pod: &PodInfo, node: &NodeInfo) -> i64 {
    taints(&node.node)
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&pod.tolerations, t))
        .count() as i64
}

/// Sum of the weights of the pod's preferred node affinity terms that match the node.
pub fn preferred_affinity(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.node_affinity
        .as_ref()
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|terms| {
            terms
                .iter()
                .filter(|t| t.weight != 0 && term_matches(&t.preference, &node.node))
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .unwrap_or(0)
}

/// Maps raw counts to 0–100 where fewer is better (the lowest count scores 100 when `max` is 0).
fn normalize_reverse(raw: &[i64]) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&c| {
            if max <= 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE - c * MAX_NODE_SCORE / max
            }
        })
        .collect()
}

/// Maps raw values to 0–100 relative to the highest (all 0 when nothing scored).
fn normalize(raw: &[i64]) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&c| {
            if max <= 0 {
                0
            } else {
                c * MAX_NODE_SCORE / max
            }
        })
        .collect()
}

/// The weighted total score of each feasible node, in the order given.
pub fn score_nodes(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let spread = normalize_reverse(
        &nodes
            .iter()
            .map(|n| same_owner_count(pod, n))
            .collect::<Vec<_>>(),
    );
    let taint = normalize_reverse(
        &nodes
            .iter()
            .map(|n| intolerable_prefer_no_schedule(pod, n))
            .collect::<Vec<_>>(),
    );
    let affinity = normalize(
        &nodes
            .iter()
            .map(|n| preferred_affinity(pod, n))
            .collect::<Vec<_>>(),
    );
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            WEIGHT_LEAST_ALLOCATED * least_allocated(pod, n)
                + WEIGHT_SPREAD * spread[i]
                + WEIGHT_TAINT * taint[i]
                + WEIGHT_NODE_AFFINITY * affinity[i]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{node, pod};
    use serde_json::json;

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let empty = NodeInfo::new(node("a").cpu("4").memory("4Gi").build());
        let mut busy = NodeInfo::new(node("b").cpu("4").memory("4Gi").build());
        busy.add_pod(&PodInfo::new(&pod("x").cpu("2").memory("2Gi").build()));
        let p = PodInfo::new(&pod("p").cpu("1").memory("1Gi").build());
        assert_eq!(least_allocated(&p, &empty), 75);
        assert_eq!(least_allocated(&p, &busy), 25);
        let huge = PodInfo::new(&pod("h").cpu("8").memory("8Gi").build());
        assert_eq!(least_allocated(&huge, &empty), 0);
    }

    #[test]
    fn pods_without_requests_score_with_defaults() {
        let n = NodeInfo::new(node("a").cpu("1").memory("1000Mi").build());
        let p = PodInfo::new(&pod("p").build());
        // cpu: (1000-100)/1000 = 90, memory: (1000-200)/1000 = 80
        assert_eq!(least_allocated(&p, &n), 85);
    }

    #[test]
    fn spreading_prefers_nodes_with_fewer_siblings() {
        let p = PodInfo::new(&pod("p").owner("rs1").build());
        let mut a = NodeInfo::new(node("a").build());
        let b = NodeInfo::new(node("b").build());
        a.add_pod(&PodInfo::new(&pod("s").owner("rs1").build()));
        a.add_pod(&PodInfo::new(&pod("other").owner("rs2").build()));
        assert_eq!(same_owner_count(&p, &a), 1);
        assert_eq!(same_owner_count(&p, &b), 0);
        let scores = score_nodes(&p, &[&a, &b]);
        assert!(scores[1] > scores[0], "{scores:?}");
    }

    #[test]
    fn prefer_no_schedule_taints_lower_the_score_unless_tolerated() {
        let tainted = NodeInfo::new(node("a").taint("k", "v", "PreferNoSchedule").build());
        let clean = NodeInfo::new(node("b").build());
        let p = PodInfo::new(&pod("p").build());
        assert_eq!(intolerable_prefer_no_schedule(&p, &tainted), 1);
        let s = score_nodes(&p, &[&tainted, &clean]);
        assert_eq!(s[1] - s[0], WEIGHT_TAINT * MAX_NODE_SCORE);
        let tolerant = PodInfo::new(
            &pod("t")
                .toleration(json!({"key": "k", "operator": "Exists", "effect": "PreferNoSchedule"}))
                .build(),
        );
        assert_eq!(intolerable_prefer_no_schedule(&tolerant, &tainted), 0);
        let s = score_nodes(&tolerant, &[&tainted, &clean]);
        assert_eq!(s[0], s[1]);
    }

    #[test]
    fn preferred_affinity_sums_matching_weights() {
        let p = PodInfo::new(
            &pod("p")
                .node_affinity(json!({"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
                    {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}
                ]}))
                .build(),
        );
        let a = NodeInfo::new(node("a").label("zone", "a").build());
        let ab = NodeInfo::new(node("ab").label("zone", "a").label("disk", "ssd").build());
        let none = NodeInfo::new(node("n").build());
        assert_eq!(preferred_affinity(&p, &a), 10);
        assert_eq!(preferred_affinity(&p, &ab), 40);
        assert_eq!(preferred_affinity(&p, &none), 0);
        let s = score_nodes(&p, &[&a, &ab, &none]);
        assert!(s[1] > s[0] && s[0] > s[2], "{s:?}");
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_reverse(&[0, 0]), vec![100, 100]);
        assert_eq!(normalize_reverse(&[0, 2, 4]), vec![100, 50, 0]);
        assert_eq!(normalize(&[0, 0]), vec![0, 0]);
        assert_eq!(normalize(&[10, 40]), vec![25, 100]);
    }
}
