//! One scheduling decision: filter every node, score the feasible ones, pick the best.

use std::collections::BTreeMap;
use std::fmt;

use crate::filter::filter;
use crate::node_info::{NodeInfo, PodInfo};
use crate::score::score_nodes;

/// Why a pod fits no node: how many nodes were considered and how many failed for each reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    /// Nodes considered.
    pub num_nodes: usize,
    /// Reason → number of nodes that failed with it.
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for FitError {
    /// kube-scheduler's wording, e.g. `0/3 nodes are available: 1 node(s) had untolerated taint
    /// {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu.`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.num_nodes,
            parts.join(", ")
        )
    }
}

impl std::error::Error for FitError {}

/// The filter/score pipeline with its tie-break state.
///
/// Ties between equally good nodes are broken round robin: a counter picks the next of the tied
/// nodes each time, so identical pods spread over identical nodes deterministically (kube-scheduler
/// samples randomly; a counter gives the same spread and reproducible tests).
#[derive(Debug, Default)]
pub struct Algorithm {
    tie_breaks: u64,
}

impl Algorithm {
    /// A fresh pipeline.
    pub fn new() -> Algorithm {
        Algorithm::default()
    }

    /// Chooses a node for `pod` among `nodes`, returning its index in `nodes`.
    pub fn schedule(&mut self, pod: &PodInfo, nodes: &[NodeInfo]) -> Result<usize, FitError> {
        let mut feasible: Vec<usize> = Vec::with_capacity(nodes.len());
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for (i, node) in nodes.iter().enumerate() {
            match filter(pod, node) {
                Ok(()) => feasible.push(i),
                Err(rs) => {
                    for r in rs {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        match feasible.len() {
            0 => {
                return Err(FitError {
                    num_nodes: nodes.len(),
                    reasons,
                })
            }
            1 => return Ok(feasible[0]),
            _ => {}
        }
        let refs: Vec<&NodeInfo> = feasible.iter().map(|&i| &nodes[i]).collect();
        let scores = score_nodes(pod, &refs);
        let best = scores.iter().copied().max().unwrap_or(0);
        let tied: Vec<usize> = feasible
            .iter()
            .zip(&scores)
            .filter(|(_, s)| **s == best)
            .map(|(i, _)| *i)
            .collect();
        let pick = tied[(self.tie_breaks % tied.len() as u64) as usize];
        self.tie_breaks = self.tie_breaks.wrapping_add(1);
        Ok(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{node, pod};

    fn nodes(list: Vec<k8s_openapi::api::core::v1::Node>) -> Vec<NodeInfo> {
        list.into_iter().map(NodeInfo::new).collect()
    }

    #[test]
    fn message_matches_kubernetes() {
        let ns = nodes(vec![
            node("cp")
                .taint("node-role.kubernetes.io/control-plane", "", "NoSchedule")
                .build(),
            node("w1").cpu("1").build(),
            node("w2").cpu("1").build(),
        ]);
        let err = Algorithm::new()
            .schedule(&PodInfo::new(&pod("p").cpu("2").build()), &ns)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint \
             {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu."
        );
        let none = Algorithm::new()
            .schedule(&PodInfo::new(&pod("p").build()), &[])
            .unwrap_err();
        assert_eq!(none.to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn picks_the_only_feasible_node() {
        let ns = nodes(vec![
            node("a").build(),
            node("b").label("disk", "ssd").build(),
            node("c").build(),
        ]);
        let p = PodInfo::new(&pod("p").node_selector("disk", "ssd").build());
        assert_eq!(Algorithm::new().schedule(&p, &ns), Ok(1));
    }

    #[test]
    fn ties_rotate_over_equal_nodes() {
        let ns = nodes(vec![
            node("a").build(),
            node("b").build(),
            node("c").build(),
        ]);
        let p = PodInfo::new(&pod("p").build());
        let mut alg = Algorithm::new();
        let picks: Vec<usize> = (0..6).map(|_| alg.schedule(&p, &ns).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn replicas_spread_when_accounted() {
        let mut ns = nodes(vec![
            node("a").build(),
            node("b").build(),
            node("c").build(),
        ]);
        let mut alg = Algorithm::new();
        let mut per_node = [0; 3];
        for i in 0..9 {
            let p = PodInfo::new(&pod(&format!("r{i}")).cpu("100m").owner("rs").build());
            let n = alg.schedule(&p, &ns).unwrap();
            ns[n].add_pod(&p);
            per_node[n] += 1;
        }
        assert_eq!(per_node, [3, 3, 3]);
    }

    #[test]
    fn prefers_emptier_node() {
        let mut ns = nodes(vec![node("a").build(), node("b").build()]);
        ns[0].add_pod(&PodInfo::new(&pod("x").cpu("3").memory("6Gi").build()));
        let p = PodInfo::new(&pod("p").cpu("100m").build());
        assert_eq!(Algorithm::new().schedule(&p, &ns), Ok(1));
    }
}
