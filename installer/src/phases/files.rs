//! `files`: write configuration, certificates, kubeconfigs, manifests and units — only the
//! files that differ, each replaced one backed up under the run's backup directory.

use async_trait::async_trait;
use kinit_executor::Host;

use super::{exec_error, HostContext, HostPhase, PhaseError, PhaseName};
use crate::sync::{self, FileStatus, STATE_ROOT};

impl PhaseName {
    /// The [`FilesPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as callers spelled it before
    pub const Files: PhaseName = PhaseName::new("files");
}

/// Brings the host's files to their desired bytes and modes.
pub struct FilesPhase;

const TITLE: &str = "write files";

#[async_trait]
impl<H: Host> HostPhase<H> for FilesPhase {
    fn name(&self) -> PhaseName {
        PhaseName::Files
    }

    fn title(&self) -> &'static str {
        TITLE
    }

    /// Compares every desired file with the host's copy (one command) and records the result
    /// in `ctx.files` for the phases after it.
    async fn observe(
        &self,
        host: &H,
        ctx: &mut HostContext<'_>,
    ) -> Result<Option<String>, PhaseError> {
        ctx.files = sync::observe(host, &ctx.target.files)
            .await
            .map_err(exec_error(TITLE))?;
        let changed = ctx
            .files
            .iter()
            .filter(|c| c.status != FileStatus::UpToDate)
            .count();
        Ok((changed > 0).then(|| format!("{changed} of {} files differ", ctx.files.len())))
    }

    async fn run(&self, host: &H, ctx: &HostContext<'_>) -> Result<(), PhaseError> {
        sync::apply(host, &ctx.target.files, &ctx.files, STATE_ROOT, ctx.run_id)
            .await
            .map(|_| ())
            .map_err(exec_error(TITLE))
    }
}
