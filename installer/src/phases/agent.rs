//! `agent`: (re)start the node agent when it is down or its binary or configuration changed.

use async_trait::async_trait;
use kinit_executor::Host;

use super::{exec_error, locked, unit_active, HostContext, HostPhase, PhaseError, PhaseName};

/// The agent's systemd unit name.
pub const AGENT_UNIT: &str = "kinit-agent.service";

/// Files whose change means the agent must restart.
pub const AGENT_INPUTS: &[&str] = &[
    "/etc/systemd/system/kinit-agent.service",
    "/var/lib/kinit/agent/config.yaml",
    "/etc/kubernetes/kubelet.conf",
];

impl PhaseName {
    /// The [`AgentPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as callers spelled it before
    pub const Agent: PhaseName = PhaseName::new("agent");
}

/// Starts or restarts `kinit-agent.service`.
pub struct AgentPhase;

const TITLE: &str = "start node agent";

#[async_trait]
impl<H: Host> HostPhase<H> for AgentPhase {
    fn name(&self) -> PhaseName {
        PhaseName::Agent
    }

    fn title(&self) -> &'static str {
        TITLE
    }

    /// Reads the binary and files observations recorded before it in `ctx`.
    async fn observe(
        &self,
        host: &H,
        ctx: &mut HostContext<'_>,
    ) -> Result<Option<String>, PhaseError> {
        let active = unit_active(host, AGENT_UNIT)
            .await
            .map_err(exec_error(TITLE))?;
        let inputs_changed =
            ctx.planned(PhaseName::Binary) || AGENT_INPUTS.iter().any(|p| ctx.file_changed(p));
        Ok(if !active {
            Some("the agent is not running".into())
        } else if inputs_changed {
            Some("its binary or configuration changed".into())
        } else {
            None
        })
    }

    async fn run(&self, host: &H, _ctx: &HostContext<'_>) -> Result<(), PhaseError> {
        host.run_checked(&locked(&format!(
            "sh -c 'systemctl daemon-reload && systemctl enable {AGENT_UNIT} >/dev/null 2>&1 && systemctl restart {AGENT_UNIT}'"
        )))
        .await
        .map(|_| ())
        .map_err(exec_error(TITLE))
    }
}
