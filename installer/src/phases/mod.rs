//! The installer's phases, in the shape of k0sctl's: each phase is a small type in its own file
//! implementing one trait — a name (the id `--only` and `--skip-phases` take), a title
//! (progress text), `observe` (why it has to run, or `None` when there is nothing to do) and
//! `run`.
//!
//! - **Host phases** ([`HostPhase`], listed by [`host_phases`]) act on one host over its
//!   [`Host`] connection: [`binary`], [`files`], [`cni_plugins`], [`containerd`], [`images`],
//!   [`agent`]. Every host phase observes the host first (observing changes nothing; later phases
//!   read what earlier ones found in the [`HostContext`]) and runs only when the host differs
//!   from the desired state, so a re-run on a converged host does nothing and a run that was
//!   killed midway converges when repeated.
//! - **Cluster phases** ([`ClusterPhase`], listed by [`cluster_phases`]) run once per `apply`,
//!   after the hosts, through the cluster's API: [`wait_for_api`], [`cluster_info`], [`addons`],
//!   [`wait_for_nodes`]. They are a sibling trait of the same shape rather than the same trait:
//!   they have no host to act on, need the API client and every host's outcome, and run once.
//!
//! [`PhaseSelection`] is kubeadm-style addressing (`--only PHASE,…`, `--skip-phases PHASE,…`).
//!
//! Adding a phase is one new file here and one line in [`host_phases`] or [`cluster_phases`].

pub mod addons;
pub mod agent;
pub mod binary;
pub mod cluster_info;
pub mod cni_plugins;
pub mod containerd;
pub mod files;
pub mod images;
mod selection;
pub mod wait_for_api;
pub mod wait_for_nodes;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use kinit_executor::{AnyHost, ExecError, Host};
use kinit_images::KinitImage;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bootstrap::NodeState;
use crate::desired::DesiredFile;
use crate::sync::{FileChange, FileStatus};

pub use agent::AGENT_UNIT;
pub use binary::BINARY_PATH;
pub use cni_plugins::CNI_BIN_DIR;
pub use containerd::CONTAINERD_CONFIG;
pub use images::{ADMIN_BOX_MARKER, IMAGES_DIR};
pub use selection::{PhaseSelection, SelectionError};

/// Every host phase, in the order they run on a host.
pub fn host_phases<'a, H: Host + 'a>() -> Vec<&'a (dyn HostPhase<H> + 'a)> {
    vec![
        &binary::BinaryPhase,
        &files::FilesPhase,
        &cni_plugins::CniPluginsPhase,
        &containerd::ContainerdPhase,
        &images::ImagesPhase,
        &agent::AgentPhase,
    ]
}

/// Every cluster phase, in the order they run after the hosts converged.
pub fn cluster_phases() -> Vec<&'static dyn ClusterPhase> {
    vec![
        &wait_for_api::WaitForApiPhase,
        &cluster_info::ClusterInfoPhase,
        &addons::AddonsPhase,
        &wait_for_nodes::WaitForNodesPhase,
    ]
}

/// The names of every phase, host phases first, in the order they run.
pub fn names() -> Vec<PhaseName> {
    host_phases::<AnyHost>()
        .iter()
        .map(|p| p.name())
        .chain(cluster_phases().iter().map(|p| p.name()))
        .collect()
}

/// A phase's id, as `--only`/`--skip-phases` and the JSON output spell it (`files`,
/// `cni-plugins`, `wait-for-api` …). Each phase file defines its own constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhaseName(&'static str);

impl PhaseName {
    /// The name `id`; phase files define theirs as constants.
    pub const fn new(id: &'static str) -> PhaseName {
        PhaseName(id)
    }

    /// The id.
    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// The phase's title for progress bars and tables (the id for an unknown name).
    pub fn title(self) -> &'static str {
        host_phases::<AnyHost>()
            .iter()
            .find(|p| p.name() == self)
            .map(|p| p.title())
            .or_else(|| {
                cluster_phases()
                    .iter()
                    .find(|p| p.name() == self)
                    .map(|p| p.title())
            })
            .unwrap_or(self.0)
    }
}

impl fmt::Display for PhaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for PhaseName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// One phase with work to do and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedPhase {
    /// Which phase.
    pub phase: PhaseName,
    /// What the observation found, e.g. "3 files differ".
    pub reason: String,
}

/// What a host needs, from one observation.
#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    /// Host name.
    pub host: String,
    /// Phases to run, in order; empty when the host is converged (or every phase with work was
    /// left out by the selection).
    pub phases: Vec<PlannedPhase>,
    /// Phases that have work but were left out by `--only`/`--skip-phases`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<PlannedPhase>,
    /// Per-file comparison.
    pub files: Vec<FileChange>,
}

/// The local binary to install and its digest.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Path on the admin box.
    pub path: PathBuf,
    /// Hex SHA-256 of its contents.
    pub sha256: String,
}

impl Binary {
    /// Reads and hashes `path`.
    pub fn load(path: &Path) -> std::io::Result<Binary> {
        let bytes = std::fs::read(path)?;
        Ok(Binary {
            path: path.to_path_buf(),
            sha256: hex::encode(Sha256::digest(&bytes)),
        })
    }
}

/// Everything one host should end up with.
#[derive(Debug, Clone)]
pub struct HostTarget {
    /// The binary to install.
    pub binary: Binary,
    /// The host's desired files.
    pub files: Vec<DesiredFile>,
    /// The admin-box image archive, built once on the admin box from its busybox (so the
    /// libraries in it match that busybox, whatever the hosts have); `None`: no admin box.
    pub admin_box: Option<Binary>,
}

impl HostTarget {
    /// The images this host should have.
    pub fn images(&self) -> Vec<KinitImage> {
        let mut images = KinitImage::ALL.to_vec();
        if self.admin_box.is_some() {
            images.push(KinitImage::AdminBox);
        }
        images
    }
}

/// What host phases share on one host: the target, and what the observations found so far.
#[derive(Debug)]
pub struct HostContext<'a> {
    /// What the host should end up with.
    pub target: &'a HostTarget,
    /// The run id (names the backup directory of replaced files).
    pub run_id: &'a str,
    /// The per-file comparison made by the files phase's observation (empty before it).
    pub files: Vec<FileChange>,
    /// Phases observed so far that have work, in order, selected or not.
    pub planned: Vec<PlannedPhase>,
}

impl<'a> HostContext<'a> {
    /// A context before any observation.
    pub fn new(target: &'a HostTarget, run_id: &'a str) -> Self {
        HostContext {
            target,
            run_id,
            files: Vec::new(),
            planned: Vec::new(),
        }
    }

    /// Whether the files observation found `path` different from the desired file.
    pub fn file_changed(&self, path: &str) -> bool {
        self.files
            .iter()
            .any(|c| c.path == path && c.status != FileStatus::UpToDate)
    }

    /// Whether an earlier phase's observation found work for `phase`.
    pub fn planned(&self, phase: PhaseName) -> bool {
        self.planned.iter().any(|p| p.phase == phase)
    }
}

/// One step of installing a host.
#[async_trait]
pub trait HostPhase<H: Host>: Send + Sync {
    /// The phase's id (`files`).
    fn name(&self) -> PhaseName;
    /// Short human title for progress bars and tables (`write files`).
    fn title(&self) -> &'static str;
    /// Looks at the host (changing nothing) and says why the phase has to run, or `None` when
    /// the host already is as desired. It may record what it found in `ctx` for later phases.
    async fn observe(
        &self,
        host: &H,
        ctx: &mut HostContext<'_>,
    ) -> Result<Option<String>, PhaseError>;
    /// Brings the host to the desired state for this phase.
    async fn run(&self, host: &H, ctx: &HostContext<'_>) -> Result<(), PhaseError>;
}

/// Errors of a phase, naming the host and the phase.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// A command or transfer failed.
    #[error("{phase}: {source}")]
    Exec {
        /// The phase's title.
        phase: &'static str,
        /// What failed.
        #[source]
        source: ExecError,
    },
    /// The host lacks something kinit does not install itself.
    #[error("{host}: {what}")]
    Prerequisite {
        /// Host name.
        host: String,
        /// What is missing and how to provide it.
        what: String,
    },
}

/// Maps an executor error to the error of the phase titled `title`.
pub(crate) fn exec_error(title: &'static str) -> impl FnOnce(ExecError) -> PhaseError {
    move |source| PhaseError::Exec {
        phase: title,
        source,
    }
}

/// Lock file that serializes kinit's phase commands on a host. An `apply` killed on the admin
/// box leaves its current remote command running; the next run's commands wait for it
/// instead of racing it (two `ctr import`s of the same image fail).
pub const PHASE_LOCK: &str = "/run/kinit-phase.lock";

/// `command` run under [`PHASE_LOCK`] (flock(1) from util-linux, waiting up to 15 minutes).
pub(crate) fn locked(command: &str) -> String {
    format!("flock -w 900 {PHASE_LOCK} {command}")
}

/// Whether systemd `unit` is active on `host`.
pub(crate) async fn unit_active<H: Host>(host: &H, unit: &str) -> Result<bool, ExecError> {
    Ok(host
        .run(&format!("systemctl is-active --quiet {unit}"))
        .await?
        .success())
}

/// Observes `host` with every phase and decides which it needs (all phases selected).
pub async fn plan<H: Host>(host: &H, target: &HostTarget) -> Result<HostPlan, PhaseError> {
    plan_selected(host, target, &PhaseSelection::all()).await
}

/// Observes `host` with every host phase and splits those with work into the ones `selection`
/// runs and the ones it leaves out. Every phase observes, selected or not: observing changes
/// nothing, and later phases' decisions build on earlier observations (the agent restarts when
/// the binary differs, whether or not this run installs it).
pub async fn plan_selected<H: Host>(
    host: &H,
    target: &HostTarget,
    selection: &PhaseSelection,
) -> Result<HostPlan, PhaseError> {
    let mut ctx = HostContext::new(target, "");
    for phase in host_phases::<H>() {
        if let Some(reason) = phase.observe(host, &mut ctx).await? {
            ctx.planned.push(PlannedPhase {
                phase: phase.name(),
                reason,
            });
        }
    }
    let (phases, skipped) = ctx
        .planned
        .into_iter()
        .partition(|p| selection.includes(p.phase));
    Ok(HostPlan {
        host: host.name().to_string(),
        phases,
        skipped,
        files: ctx.files,
    })
}

/// Runs one planned phase.
pub async fn run_phase<H: Host>(
    host: &H,
    target: &HostTarget,
    plan: &HostPlan,
    phase: PhaseName,
    run_id: &str,
) -> Result<(), PhaseError> {
    let Some(step) = host_phases::<H>().into_iter().find(|p| p.name() == phase) else {
        // Names come from the phases themselves; an unknown one has nothing to run.
        return Ok(());
    };
    let ctx = HostContext {
        target,
        run_id,
        files: plan.files.clone(),
        planned: plan.phases.iter().chain(&plan.skipped).cloned().collect(),
    };
    step.run(host, &ctx).await
}

/// What cluster phases work with: the API client and what the hosts' phases produced.
pub struct ClusterContext<'a> {
    /// A client with the cluster's admin credentials.
    pub client: kube::Client,
    /// The API server URL (from admin.conf), for messages.
    pub server: String,
    /// The cluster CA certificate file on this machine.
    pub ca_cert: &'a Path,
    /// The cluster settings published for `kinit join`.
    pub cluster: &'a kinit_inventory::ClusterConfig,
    /// Every enabled add-on's rendered objects.
    pub addons: &'a [(&'static str, Vec<kinit_addons::AddonObject>)],
    /// The nodes whose hosts converged, to wait for.
    pub nodes: Vec<String>,
    /// How long to wait for the API, and again for the nodes.
    pub timeout: Duration,
    /// Progress text (hidden when not drawing).
    pub progress: indicatif::ProgressBar,
    /// What the phases did.
    pub outcome: ClusterOutcome,
}

/// What the cluster phases did.
#[derive(Debug, Default)]
pub struct ClusterOutcome {
    /// How long the API took to answer `/readyz`, when it was waited for.
    pub api_ready: Option<Duration>,
    /// Whether `kube-public/cluster-info` was created or updated.
    pub cluster_info_changed: bool,
    /// Whether `kube-system/kinit-config` was created or updated.
    pub cluster_config_changed: bool,
    /// Each add-on's outcome.
    pub addons: Vec<crate::addons::AddonReport>,
    /// Failures that did not stop the following phases (an add-on object that failed).
    pub errors: Vec<String>,
    /// The nodes' states, when they were waited for.
    pub nodes: Option<BTreeMap<String, NodeState>>,
}

/// What cluster phases decide from before they run: known without the API, so a dry run can
/// list them.
pub struct ClusterFacts<'a> {
    /// Every enabled add-on's rendered objects.
    pub addons: &'a [(&'static str, Vec<kinit_addons::AddonObject>)],
    /// The nodes whose hosts converged (or, on a dry run, would be installed).
    pub nodes: &'a [String],
}

/// One cluster-wide step, run once after the hosts converged.
#[async_trait]
pub trait ClusterPhase: Send + Sync {
    /// The phase's id (`wait-for-api`).
    fn name(&self) -> PhaseName;
    /// Short human title for progress and tables.
    fn title(&self) -> &'static str;
    /// Why the phase has to run, or `None` when there is nothing for it to do.
    fn observe(&self, facts: &ClusterFacts<'_>) -> Option<String>;
    /// Does the step, recording what it did in `ctx.outcome`. An error stops the phases after
    /// it.
    async fn run(&self, ctx: &mut ClusterContext<'_>) -> anyhow::Result<()>;
}

/// Plans the selected cluster phases from `facts`, in order.
pub fn plan_cluster(facts: &ClusterFacts<'_>, selection: &PhaseSelection) -> Vec<PlannedPhase> {
    cluster_phases()
        .into_iter()
        .filter(|p| selection.includes(p.name()))
        .filter_map(|p| {
            p.observe(facts).map(|reason| PlannedPhase {
                phase: p.name(),
                reason,
            })
        })
        .collect()
}

/// Runs the planned cluster phases in order; stops at the first that fails and returns its
/// error (what the phases did before stays in `ctx.outcome`). Returns the phases that ran.
pub async fn run_cluster(
    ctx: &mut ClusterContext<'_>,
    planned: &[PlannedPhase],
) -> (Vec<PhaseName>, Option<anyhow::Error>) {
    let mut ran = Vec::new();
    for step in planned {
        let Some(phase) = cluster_phases()
            .into_iter()
            .find(|p| p.name() == step.phase)
        else {
            continue;
        };
        ctx.progress.set_message(phase.title());
        if let Err(e) = phase.run(ctx).await {
            return (ran, Some(e));
        }
        ran.push(step.phase);
    }
    (ran, None)
}

#[cfg(test)]
mod tests;
