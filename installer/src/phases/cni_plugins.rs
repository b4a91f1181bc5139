//! `cni-plugins`: link the CNI plugins containerd runs (`kinit-cni`, and `loopback` unless the
//! host already has one) to the kinit binary.

use async_trait::async_trait;
use kinit_executor::{shell_quote, Host};

use super::{exec_error, locked, HostContext, HostPhase, PhaseError, PhaseName, BINARY_PATH};
use crate::sync::{self, STATE_ROOT};

/// containerd's CNI plugin directory; kinit links its binary there under the plugin names.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";

impl PhaseName {
    /// The [`CniPluginsPhase`].
    #[allow(non_upper_case_globals)] // named like the phase, as callers spelled it before
    pub const CniPlugins: PhaseName = PhaseName::new("cni-plugins");
}

/// Makes the CNI plugin links.
pub struct CniPluginsPhase;

const TITLE: &str = "link CNI plugins";

#[async_trait]
impl<H: Host> HostPhase<H> for CniPluginsPhase {
    fn name(&self) -> PhaseName {
        PhaseName::CniPlugins
    }

    fn title(&self) -> &'static str {
        TITLE
    }

    async fn observe(
        &self,
        host: &H,
        _ctx: &mut HostContext<'_>,
    ) -> Result<Option<String>, PhaseError> {
        let links = host
            .run(&format!(
                "[ \"$(readlink {CNI_BIN_DIR}/kinit-cni)\" = {BINARY_PATH} ] && [ -e {CNI_BIN_DIR}/loopback ]"
            ))
            .await
            .map_err(exec_error(TITLE))?;
        Ok((!links.success()).then(|| "the CNI plugin links are missing".into()))
    }

    async fn run(&self, host: &H, _ctx: &HostContext<'_>) -> Result<(), PhaseError> {
        // Each link kinit makes is listed as managed, so `kinit reset` removes it; a
        // `loopback` plugin the host already had is left alone.
        let managed = format!("{STATE_ROOT}/{}", sync::MANAGED_LIST);
        let script = format!(
            "set -e\nmkdir -p {CNI_BIN_DIR} {STATE_ROOT}\n\
             ln -sfn {BINARY_PATH} {CNI_BIN_DIR}/kinit-cni\n\
             grep -qxF {CNI_BIN_DIR}/kinit-cni {managed} 2>/dev/null || echo {CNI_BIN_DIR}/kinit-cni >> {managed}\n\
             if [ ! -e {CNI_BIN_DIR}/loopback ]; then ln -sfn {BINARY_PATH} {CNI_BIN_DIR}/loopback; \
             grep -qxF {CNI_BIN_DIR}/loopback {managed} 2>/dev/null || echo {CNI_BIN_DIR}/loopback >> {managed}; fi\n"
        );
        let quoted = shell_quote(&script).expect("the script holds no NUL byte");
        host.run_checked(&locked(&format!("sh -c {quoted}")))
            .await
            .map(|_| ())
            .map_err(exec_error(TITLE))
    }
}
