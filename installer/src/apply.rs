//! The `apply` workflow (also what `init` runs on its one-host inventory): the cluster state
//! (PKI, kubeconfigs) on the admin box; preflight on hosts kinit has never touched; every host
//! converged in parallel by the host phases (observe, then run only the selected phases it
//! lacks); then the cluster phases through the API — wait for `/readyz`, publish
//! `cluster-info` and the cluster settings, apply the add-ons (cluster DNS), wait for the nodes
//! to be Ready. A re-run on a finished cluster runs no phase and writes nothing.
//!
//! The CLI (`kinit apply`, `kinit init`) parses its flags into [`ApplyOptions`] and prints the
//! [`ApplyReport`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::IpNet;
use kinit_executor::preflight::{check_host, CheckStatus, HostReport, HostRoles, PreflightOptions};
use kinit_executor::{run_on_all, AnyHost, Host};
use kinit_inventory::{Inventory, Role};
use kinit_templates::ClusterRenderContext;
use serde::Serialize;

use crate::addons::{self, AddonReport};
use crate::bootstrap::{self, NodeState};
use crate::client;
use crate::converge::{converge_selected, run_id, ConvergeOptions, HostOutcome};
use crate::desired::{default_state_dir, ClusterState};
use crate::phases::{
    cluster_phases, plan_cluster, run_cluster, Binary, ClusterContext, ClusterFacts,
    ClusterOutcome, HostTarget, PhaseName, PhaseSelection, PlannedPhase,
};

/// How to run `apply`.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Cluster state directory on this machine [default: `~/.kinit/clusters/<name>`].
    pub state_dir: Option<PathBuf>,
    /// The kinit binary to install on the hosts [default: this program].
    pub binary: Option<PathBuf>,
    /// The busybox the admin-box image is built from.
    pub busybox: PathBuf,
    /// Observe every host and report the plan; change nothing (not even the state dir).
    pub dry_run: bool,
    /// Skip the preflight checks on hosts kinit has not installed yet.
    pub skip_preflight: bool,
    /// How long to wait for the API server, and again for the nodes.
    pub wait_timeout: Duration,
    /// Hosts worked on at the same time.
    pub concurrency: usize,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// The phases to run.
    pub phases: PhaseSelection,
    /// Receives notes and warnings for the user (`note: …`, `warning: …`) as they come up.
    pub notify: fn(&str),
}

/// One host in the report.
#[derive(Debug, Serialize)]
pub struct HostSummary {
    /// Host name.
    pub host: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Phases that ran (or, on a dry run, would run), in order, by title.
    pub phases: Vec<String>,
    /// Why each phase was planned.
    pub reasons: Vec<String>,
    /// Phases that had work but were left out by `--only`/`--skip-phases`, by title, each with
    /// why it would have run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Files that differed.
    pub files_changed: usize,
    /// The node's state in the API after the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeState>,
    /// Wall time on this host.
    pub seconds: f64,
    /// What stopped this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `apply` reports.
#[derive(Debug, Serialize)]
pub struct ApplyReport {
    /// The inventory's cluster name.
    pub cluster: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// The cluster state directory.
    pub state_dir: PathBuf,
    /// PKI files generated on this run (0 when everything was reused).
    pub pki_generated: usize,
    /// Every selected host.
    pub hosts: Vec<HostSummary>,
    /// The cluster phases that ran (or, on a dry run, would run) after the hosts, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster_phases: Vec<PlannedPhase>,
    /// The cluster phases `--only`/`--skip-phases` left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster_phases_skipped: Vec<PhaseName>,
    /// Seconds until `/readyz` answered, when the API was waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_ready_seconds: Option<f64>,
    /// Whether `kube-public/cluster-info` was created or updated.
    pub cluster_info_changed: bool,
    /// Whether `kube-system/kinit-config` (settings for `kinit join`) was created or updated.
    pub cluster_config_changed: bool,
    /// What the add-ons phase did, per add-on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<AddonReport>,
    /// Anything on the cluster that failed outside a single host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// True when this run changed (or a dry run would change) anything.
    pub changed: bool,
    /// The admin kubeconfig in the state dir.
    pub admin_kubeconfig: PathBuf,
    /// Wall time.
    pub seconds: f64,
}

impl ApplyReport {
    /// Whether the run succeeded: no error, and every node Ready when the nodes were waited
    /// for (a dry run, or a run that leaves out `wait-for-nodes`, waits for none).
    pub fn ok(&self) -> bool {
        let nodes_waited = !self.dry_run
            && !self
                .cluster_phases_skipped
                .contains(&PhaseName::WaitForNodes);
        self.errors.is_empty()
            && self.hosts.iter().all(|h| {
                h.error.is_none() && (!nodes_waited || h.node.as_ref() == Some(&NodeState::Ready))
            })
    }
}

fn role_names(host: &kinit_inventory::Host) -> Vec<String> {
    host.roles.iter().map(|r| r.to_string()).collect()
}

/// The preflight roles of an inventory host.
pub fn preflight_roles(host: &kinit_inventory::Host) -> HostRoles {
    HostRoles {
        control_plane: host.has_role(Role::ControlPlane),
        etcd: host.has_role(Role::Etcd),
        worker: host.has_role(Role::Worker),
    }
}

/// Copies the state dir into `to` so a dry run can compute the plan without writing the real
/// one (file modes are kept: keys stay 0600).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Preflight on hosts kinit has not installed yet; returns the reports of hosts that failed.
async fn preflight_fresh_hosts(
    hosts: &[(AnyHost, HostTarget)],
    entries: &[kinit_inventory::Host],
    concurrency: usize,
) -> Vec<HostReport> {
    let pairs: Vec<_> = hosts.iter().map(|(h, _)| h).zip(entries).collect();
    let reports = run_on_all(&pairs, concurrency, |(host, entry)| async move {
        let installed = host
            .run(&format!(
                "test -e {}/{}",
                crate::sync::STATE_ROOT,
                crate::sync::MANAGED_LIST
            ))
            .await
            .map(|o| o.success())
            .unwrap_or(false);
        if installed {
            return None;
        }
        Some(check_host(*host, &preflight_roles(entry), &PreflightOptions::default()).await)
    })
    .await;
    reports
        .into_iter()
        .flatten()
        .filter(HostReport::has_failures)
        .collect()
}

fn summarize(outcome: &HostOutcome, entry: &kinit_inventory::Host, dry_run: bool) -> HostSummary {
    let planned = outcome.plan.as_ref();
    let phases: Vec<_> = match planned {
        Some(plan) if dry_run => plan.phases.iter().collect(),
        Some(plan) => plan
            .phases
            .iter()
            .filter(|p| outcome.ran.contains(&p.phase))
            .collect(),
        None => Vec::new(),
    };
    HostSummary {
        host: outcome.host.clone(),
        roles: role_names(entry),
        phases: phases.iter().map(|p| p.phase.title().to_string()).collect(),
        reasons: phases.iter().map(|p| p.reason.clone()).collect(),
        skipped: planned.map_or(Vec::new(), |p| {
            p.skipped
                .iter()
                .map(|s| format!("{}: {}", s.phase.title(), s.reason))
                .collect()
        }),
        files_changed: planned.map_or(0, |p| {
            p.files
                .iter()
                .filter(|f| f.status != crate::sync::FileStatus::UpToDate)
                .count()
        }),
        node: None,
        seconds: (outcome.elapsed.as_secs_f64() * 10.0).round() / 10.0,
        error: outcome.error.clone(),
    }
}

/// The pod ranges of the cluster's Nodes, when a cluster exists (its admin.conf is in the state
/// dir) and its API answers within a few seconds; `None` otherwise, with a warning when the
/// cluster exists, since then only the ranges recorded by earlier runs are known.
async fn registered_pod_cidrs(
    admin_kubeconfig: &Path,
    notify: fn(&str),
) -> Option<BTreeMap<String, IpNet>> {
    if !admin_kubeconfig.is_file() {
        return None;
    }
    let read = async {
        let client = client::from_kubeconfig(admin_kubeconfig).await?;
        Ok::<_, anyhow::Error>(bootstrap::node_pod_cidrs(&client).await?)
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(cidrs)) => Some(cidrs),
        Ok(Err(e)) => {
            notify(&format!(
                "warning: cannot read the Nodes' pod ranges ({e:#}); new hosts avoid only the ranges kinit recorded, not those of nodes joined with `kinit join`"
            ));
            None
        }
        Err(_) => {
            notify("warning: the API server did not answer within 5 s; new hosts avoid only the pod ranges kinit recorded, not those of nodes joined with `kinit join`");
            None
        }
    }
}

/// The admin-box image archive, built here from `busybox` into `<state_dir>/images` (so its
/// libraries are this machine's, matching this busybox): `None`, with a note, when busybox is
/// not at the default path; an error when a path given explicitly is unusable.
pub fn admin_box_archive(
    busybox: &Path,
    state_dir: &Path,
    notify: fn(&str),
) -> anyhow::Result<Option<Binary>> {
    let default = busybox.as_os_str() == kinit_images::admin_box::DEFAULT_BUSYBOX;
    if !busybox.exists() && default {
        notify(&format!(
            "note: no admin-box image: busybox not found at {}; {}",
            busybox.display(),
            kinit_images::admin_box::INSTALL_HINT
        ));
        return Ok(None);
    }
    let out_dir = state_dir.join("images");
    let options = kinit_images::BuildOptions {
        images: vec![kinit_images::KinitImage::AdminBox],
        busybox: Some(busybox.to_path_buf()),
        ..kinit_images::BuildOptions::new(busybox, &out_dir)
    };
    let report = kinit_images::build_images(&options).with_context(|| {
        format!(
            "cannot build the admin-box image from {} (pass another with --busybox)",
            busybox.display()
        )
    })?;
    for note in &report.notes {
        notify(&format!("note: {note}"));
    }
    let built = report
        .images
        .first()
        .context("the admin-box build wrote no archive")?;
    Binary::load(&built.path)
        .map(Some)
        .with_context(|| format!("cannot read {}", built.path.display()))
}

/// The kinit binary to install: `binary`, or this program.
pub fn load_binary(binary: Option<&Path>) -> anyhow::Result<Binary> {
    let path = match binary {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe().context("cannot find this kinit binary")?,
    };
    Binary::load(&path).with_context(|| format!("cannot read the kinit binary {}", path.display()))
}

/// The error naming every failed preflight check of hosts kinit has not installed yet.
fn preflight_failure(failed: &[HostReport]) -> anyhow::Error {
    let mut message = String::from("preflight failed on hosts kinit has not installed yet; fix these (or pass --skip-preflight) and re-run:");
    for report in failed {
        for check in report
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
        {
            message.push_str(&format!(
                "\n  {}: {}: {}{}",
                report.host,
                check.check,
                check.message,
                check
                    .fix
                    .as_deref()
                    .map(|f| format!(" (fix: {f})"))
                    .unwrap_or_default()
            ));
        }
    }
    anyhow::anyhow!(message)
}

/// Converges `selected` (hosts of `inventory`, with their entries) and bootstraps the cluster
/// through its API, running the phases `options.phases` selects.
pub async fn apply(
    options: &ApplyOptions,
    inventory: &Inventory,
    selected: Vec<(AnyHost, kinit_inventory::Host)>,
) -> anyhow::Result<ApplyReport> {
    let started = Instant::now();
    let notify = options.notify;
    let real_state_dir = options
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(inventory));

    // A dry run prepares the state in a scratch copy: the plan is exact, the admin box untouched.
    let scratch;
    let state_dir = if options.dry_run {
        scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
        if real_state_dir.is_dir() {
            copy_dir(&real_state_dir, scratch.path()).with_context(|| {
                format!("cannot read the cluster state {}", real_state_dir.display())
            })?;
        }
        scratch.path().to_path_buf()
    } else {
        real_state_dir.clone()
    };
    let registered = registered_pod_cidrs(&real_state_dir.join("admin.conf"), notify).await;
    let (state, pki) = ClusterState::prepare(inventory, &state_dir, registered.as_ref())?;

    let pki_generated = pki
        .files
        .iter()
        .filter(|f| f.action != kinit_pki::FileAction::Reused)
        .count();

    let binary = load_binary(options.binary.as_deref())?;
    let admin_box = admin_box_archive(&options.busybox, &state_dir, notify)?;
    // Rendered before any host is touched: a bad setting fails here, not after the install.
    let addon_objects = addons::rendered(
        inventory,
        &ClusterRenderContext::default().images,
        &binary.sha256,
    )?;

    let mut hosts = Vec::new();
    let mut entries = Vec::new();
    for (host, entry) in selected {
        let files = state.host_files(inventory, &entry)?;
        hosts.push((
            host,
            HostTarget {
                binary: binary.clone(),
                files,
                admin_box: admin_box.clone(),
            },
        ));
        entries.push(entry);
    }

    if !options.skip_preflight {
        let failed = preflight_fresh_hosts(&hosts, &entries, options.concurrency).await;
        if !failed.is_empty() {
            return Err(preflight_failure(&failed));
        }
    }

    let outcomes = converge_selected(
        &hosts,
        ConvergeOptions {
            concurrency: options.concurrency.max(1),
            dry_run: options.dry_run,
            progress: options.progress,
        },
        &options.phases,
        &run_id(),
    )
    .await;
    let mut summaries: Vec<HostSummary> = outcomes
        .iter()
        .zip(&entries)
        .map(|(o, e)| summarize(o, e, options.dry_run))
        .collect();

    let admin_kubeconfig = real_state_dir.join("admin.conf");
    let mut report = ApplyReport {
        cluster: inventory.metadata.name.clone(),
        dry_run: options.dry_run,
        state_dir: real_state_dir,
        pki_generated,
        hosts: Vec::new(),
        cluster_phases: Vec::new(),
        cluster_phases_skipped: cluster_phases()
            .iter()
            .map(|p| p.name())
            .filter(|n| !options.phases.includes(*n))
            .collect(),
        api_ready_seconds: None,
        cluster_info_changed: false,
        cluster_config_changed: false,
        addons: Vec::new(),
        errors: Vec::new(),
        changed: false,
        admin_kubeconfig: admin_kubeconfig.clone(),
        seconds: 0.0,
    };

    // A host whose phases failed is reported as such; waiting for its node is pointless.
    let converged_nodes: Vec<String> = entries
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.ok())
        .map(|(e, _)| e.name.clone())
        .collect();
    let planned = plan_cluster(
        &ClusterFacts {
            addons: &addon_objects,
            nodes: &converged_nodes,
        },
        &options.phases,
    );
    let control_planes_ok = outcomes
        .iter()
        .zip(&entries)
        .filter(|(_, e)| e.has_role(Role::ControlPlane))
        .all(|(o, _)| o.ok());
    if options.dry_run {
        report.cluster_phases = planned;
    } else if planned.is_empty() {
        // `--only` left out every cluster phase: nothing to do through the API.
    } else if control_planes_ok {
        let spinner = if options.progress {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let ca_cert = state_dir.join("pki/ca.crt");
        let result: anyhow::Result<()> = async {
            let admin = kinit_pki::Kubeconfig::load(&admin_kubeconfig)?;
            let server = admin
                .current_cluster()
                .map(|c| c.cluster.server.clone())
                .context("admin.conf names no cluster")?;
            let client = client::from_kubeconfig(&admin_kubeconfig).await?;
            let mut ctx = ClusterContext {
                client,
                server,
                ca_cert: &ca_cert,
                cluster: &inventory.spec.cluster,
                addons: &addon_objects,
                nodes: converged_nodes.clone(),
                timeout: options.wait_timeout,
                progress: spinner.clone(),
                outcome: ClusterOutcome::default(),
            };
            let (ran, failed) = run_cluster(&mut ctx, &planned).await;
            let outcome = ctx.outcome;
            report.cluster_phases = planned
                .iter()
                .filter(|p| ran.contains(&p.phase))
                .cloned()
                .collect();
            report.api_ready_seconds = outcome
                .api_ready
                .map(|w| (w.as_secs_f64() * 10.0).round() / 10.0);
            report.cluster_info_changed = outcome.cluster_info_changed;
            report.cluster_config_changed = outcome.cluster_config_changed;
            report.addons = outcome.addons;
            report.errors.extend(outcome.errors);
            if let Some(states) = &outcome.nodes {
                for (summary, entry) in summaries.iter_mut().zip(&entries) {
                    summary.node = states.get(&entry.name).cloned();
                }
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        .await;
        spinner.finish_and_clear();
        if let Err(e) = result {
            report.errors.push(format!("{e:#}"));
        }
    } else {
        report.errors.push(
            "a control-plane host failed; the API steps (wait for the API, cluster-info, node readiness) were skipped — fix it and re-run".into(),
        );
    }

    report.changed = pki_generated > 0
        || report.cluster_info_changed
        || report.cluster_config_changed
        || report.addons.iter().any(AddonReport::changed)
        || summaries.iter().any(|s| !s.phases.is_empty());
    report.hosts = summaries;
    report.seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_dir_keeps_key_modes() {
        use std::os::unix::fs::PermissionsExt;
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("pki")).unwrap();
        let key = from.path().join("pki/ca.key");
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let to = tempfile::tempdir().unwrap();
        copy_dir(from.path(), to.path()).unwrap();
        let mode = std::fs::metadata(to.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
