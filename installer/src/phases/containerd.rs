//! `containerd`: (re)start containerd with kinit's configuration. containerd itself is a
//! prerequisite: its absence is an error of the observation, with how to install it.

use async_trait::async_trait;
use kinit_executor::Host;

use super::{exec_error, locked, unit_active, HostContext, HostPhase, PhaseError, PhaseName};

/// containerd's configuration file, rendered by kinit.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

impl PhaseName {
    /// The [`ContainerdPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as callers spelled it before
    pub const Containerd: PhaseName = PhaseName::new("containerd");
}

/// Restarts containerd when it is down or its configuration changed.
pub struct ContainerdPhase;

const TITLE: &str = "restart containerd";

#[async_trait]
impl<H: Host> HostPhase<H> for ContainerdPhase {
    fn name(&self) -> PhaseName {
        PhaseName::Containerd
    }

    fn title(&self) -> &'static str {
        TITLE
    }

    async fn observe(
        &self,
        host: &H,
        ctx: &mut HostContext<'_>,
    ) -> Result<Option<String>, PhaseError> {
        let has_containerd = host
            .run("command -v containerd >/dev/null")
            .await
            .map_err(exec_error(TITLE))?
            .success();
        if !has_containerd {
            return Err(PhaseError::Prerequisite {
                host: host.name().to_string(),
                what: "containerd is not installed; install containerd and runc (Debian/Ubuntu: apt-get install -y containerd runc) and re-run".into(),
            });
        }
        let active = unit_active(host, "containerd")
            .await
            .map_err(exec_error(TITLE))?;
        Ok(if !active {
            Some("containerd is not running".into())
        } else if ctx.file_changed(CONTAINERD_CONFIG) {
            Some("its configuration changed".into())
        } else {
            None
        })
    }

    async fn run(&self, host: &H, _ctx: &HostContext<'_>) -> Result<(), PhaseError> {
        host.run_checked(&locked(
            "sh -c 'systemctl enable containerd >/dev/null 2>&1; systemctl restart containerd'",
        ))
        .await
        .map(|_| ())
        .map_err(exec_error(TITLE))
    }
}
