//! `cluster-info`: publish `kube-public/cluster-info` (the API server and CA joining nodes
//! discover, signed for every bootstrap token) and `kube-system/kinit-config` (the cluster
//! settings `kinit join` renders a worker's files from), each written only when it differs.

use anyhow::Context;
use async_trait::async_trait;

use super::{ClusterContext, ClusterFacts, ClusterPhase, PhaseName};
use crate::bootstrap;

impl PhaseName {
    /// The [`ClusterInfoPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as the host phases' names are
    pub const ClusterInfo: PhaseName = PhaseName::new("cluster-info");
}

/// Publishes cluster-info and the cluster settings.
pub struct ClusterInfoPhase;

#[async_trait]
impl ClusterPhase for ClusterInfoPhase {
    fn name(&self) -> PhaseName {
        PhaseName::ClusterInfo
    }

    fn title(&self) -> &'static str {
        "publishing cluster-info and the cluster settings"
    }

    fn observe(&self, _facts: &ClusterFacts<'_>) -> Option<String> {
        Some("cluster-info and kinit-config follow the CA, the endpoint and the settings".into())
    }

    async fn run(&self, ctx: &mut ClusterContext<'_>) -> anyhow::Result<()> {
        let ca = std::fs::read(ctx.ca_cert).context("cannot read the cluster CA certificate")?;
        let kubeconfig = bootstrap::cluster_info_kubeconfig(&ctx.server, &ca);
        ctx.outcome.cluster_info_changed =
            bootstrap::publish_cluster_info(&ctx.client, &kubeconfig).await?;
        ctx.outcome.cluster_config_changed =
            bootstrap::publish_cluster_config(&ctx.client, ctx.cluster).await?;
        Ok(())
    }
}
