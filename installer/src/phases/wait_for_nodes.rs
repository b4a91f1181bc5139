//! `wait-for-nodes`: wait until the Node of every host that converged is Ready; a node that is
//! not fails the run, naming it and its condition.

use anyhow::bail;
use async_trait::async_trait;

use super::{ClusterContext, ClusterFacts, ClusterPhase, PhaseName};
use crate::bootstrap::{self, NodeState};

impl PhaseName {
    /// The [`WaitForNodesPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as the host phases' names are
    pub const WaitForNodes: PhaseName = PhaseName::new("wait-for-nodes");
}

/// Waits for the nodes to be Ready.
pub struct WaitForNodesPhase;

#[async_trait]
impl ClusterPhase for WaitForNodesPhase {
    fn name(&self) -> PhaseName {
        PhaseName::WaitForNodes
    }

    fn title(&self) -> &'static str {
        "waiting for the nodes to be Ready"
    }

    fn observe(&self, facts: &ClusterFacts<'_>) -> Option<String> {
        (!facts.nodes.is_empty()).then(|| format!("{} node(s) must be Ready", facts.nodes.len()))
    }

    async fn run(&self, ctx: &mut ClusterContext<'_>) -> anyhow::Result<()> {
        ctx.progress.set_message(format!(
            "waiting for {} node(s) to be Ready",
            ctx.nodes.len()
        ));
        let states = bootstrap::wait_for_nodes(&ctx.client, &ctx.nodes, ctx.timeout).await?;
        let not_ready: Vec<String> = states
            .iter()
            .filter(|(_, s)| **s != NodeState::Ready)
            .map(|(n, s)| format!("{n}: {s}"))
            .collect();
        ctx.outcome.nodes = Some(states);
        if !not_ready.is_empty() {
            bail!(
                "nodes not Ready after {}s: {}; look at `journalctl -u kinit-agent` on those hosts",
                ctx.timeout.as_secs(),
                not_ready.join("; ")
            );
        }
        Ok(())
    }
}
