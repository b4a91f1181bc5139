//! `binary`: put this kinit binary at [`BINARY_PATH`] (the agent unit and static pods run it
//! from there).

use async_trait::async_trait;
use kinit_executor::{Host, UploadSource};

use super::{exec_error, HostContext, HostPhase, PhaseError, PhaseName};
use crate::sync::{self, STATE_ROOT};

/// Where the kinit binary lives on hosts.
pub const BINARY_PATH: &str = "/usr/local/bin/kinit";

impl PhaseName {
    /// The [`BinaryPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as callers spelled it before
    pub const Binary: PhaseName = PhaseName::new("binary");
}

/// Installs the kinit binary when the host has none or another build.
pub struct BinaryPhase;

const TITLE: &str = "install kinit binary";

#[async_trait]
impl<H: Host> HostPhase<H> for BinaryPhase {
    fn name(&self) -> PhaseName {
        PhaseName::Binary
    }

    fn title(&self) -> &'static str {
        TITLE
    }

    async fn observe(
        &self,
        host: &H,
        ctx: &mut HostContext<'_>,
    ) -> Result<Option<String>, PhaseError> {
        let remote = host
            .run(&format!("sha256sum {BINARY_PATH} 2>/dev/null"))
            .await
            .map_err(exec_error(TITLE))?;
        let remote_sum = String::from_utf8_lossy(&remote.stdout)
            .split_whitespace()
            .next()
            .map(str::to_string);
        Ok(match remote_sum {
            Some(sum) if sum == ctx.target.binary.sha256 => None,
            Some(_) => Some("a different kinit binary is installed".into()),
            None => Some("kinit is not installed".into()),
        })
    }

    async fn run(&self, host: &H, ctx: &HostContext<'_>) -> Result<(), PhaseError> {
        sync::write_managed(
            host,
            UploadSource::File(&ctx.target.binary.path),
            BINARY_PATH,
            0o755,
            STATE_ROOT,
            ctx.run_id,
        )
        .await
        .map_err(exec_error(TITLE))
    }
}
