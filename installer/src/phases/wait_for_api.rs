//! `wait-for-api`: wait until the API server answers `/readyz` (the control planes' static pods
//! have just been written or restarted).

use async_trait::async_trait;

use super::{ClusterContext, ClusterFacts, ClusterPhase, PhaseName};
use crate::bootstrap;

impl PhaseName {
    /// The [`WaitForApiPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as the host phases' names are
    pub const WaitForApi: PhaseName = PhaseName::new("wait-for-api");
}

/// Polls `/readyz` for at most the wait timeout.
pub struct WaitForApiPhase;

#[async_trait]
impl ClusterPhase for WaitForApiPhase {
    fn name(&self) -> PhaseName {
        PhaseName::WaitForApi
    }

    fn title(&self) -> &'static str {
        "waiting for the API server"
    }

    fn observe(&self, _facts: &ClusterFacts<'_>) -> Option<String> {
        Some("the cluster steps after it need an API server that answers /readyz".into())
    }

    async fn run(&self, ctx: &mut ClusterContext<'_>) -> anyhow::Result<()> {
        let waited = bootstrap::wait_for_api(&ctx.client, &ctx.server, ctx.timeout).await?;
        ctx.outcome.api_ready = Some(waited);
        Ok(())
    }
}
