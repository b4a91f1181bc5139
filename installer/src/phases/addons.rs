//! `addons`: create or update the objects of every enabled add-on (cluster DNS) through the
//! API; the policy is [`crate::addons`]'s. A failing add-on is recorded and the phases after
//! it still run (the hosts are fine).

use async_trait::async_trait;

use super::{ClusterContext, ClusterFacts, ClusterPhase, PhaseName};
use crate::addons;

impl PhaseName {
    /// The [`AddonsPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as the host phases' names are
    pub const Addons: PhaseName = PhaseName::new("addons");
}

/// Applies the add-ons, in order.
pub struct AddonsPhase;

#[async_trait]
impl ClusterPhase for AddonsPhase {
    fn name(&self) -> PhaseName {
        PhaseName::Addons
    }

    fn title(&self) -> &'static str {
        "applying the add-ons"
    }

    fn observe(&self, facts: &ClusterFacts<'_>) -> Option<String> {
        (!facts.addons.is_empty()).then(|| {
            let names: Vec<String> = facts
                .addons
                .iter()
                .map(|(addon, objects)| format!("{addon} ({} objects)", objects.len()))
                .collect();
            format!("enabled: {}", names.join(", "))
        })
    }

    async fn run(&self, ctx: &mut ClusterContext<'_>) -> anyhow::Result<()> {
        for (addon, objects) in ctx.addons {
            ctx.progress
                .set_message(format!("applying the {addon} add-on"));
            let (done, failed) = addons::apply_objects(&ctx.client, addon, objects).await;
            ctx.outcome.addons.push(done);
            if let Some(e) = failed {
                ctx.outcome
                    .errors
                    .push(format!("{e:#}; fix it and re-run kinit apply"));
            }
        }
        Ok(())
    }
}
