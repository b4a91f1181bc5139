//! `kinit apply -i inventory.yaml`: the whole cluster from its inventory, idempotently.
//!
//! Order: the cluster state (PKI, kubeconfigs) on the admin box; preflight on hosts kinit has
//! never touched; every host converged in parallel (observe, then run only the phases it
//! lacks); then, through the API, wait for `/readyz`, publish `cluster-info`, apply the add-ons
//! (cluster DNS) and wait for the nodes to be Ready. A re-run on a finished cluster runs no phase and writes nothing.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use ipnet::IpNet;
use kinit::addons::{self, AddonReport, ObjectAction};
use kinit::bootstrap::{self, NodeState};
use kinit::client;
use kinit::converge::{converge, run_id, ConvergeOptions, HostOutcome};
use kinit::desired::{default_state_dir, ClusterState};
use kinit::output::{emit, OutputFormat};
use kinit::phases::{Binary, HostTarget};
use kinit_executor::preflight::{check_host, HostReport, PreflightOptions};
use kinit_executor::{run_on_all, AnyHost, Host};
use kinit_inventory::{Inventory, Role};
use kinit_templates::ClusterRenderContext;
use serde::Serialize;

use crate::cmd::hosts::{HostArgs, Selected};
use crate::cmd::preflight::roles_from_inventory;

/// `kinit apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub hosts: HostArgs,

    #[command(flatten)]
    pub settings: ApplySettings,
}

/// What `apply` and `init` share besides host selection.
#[derive(Debug, Args)]
pub struct ApplySettings {
    /// Cluster state directory on this machine (PKI, kubeconfigs) [default:
    /// ~/.kinit/clusters/<metadata.name>].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The kinit binary to install on the hosts [default: this program].
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,

    /// The busybox the admin-box image (`kinit.local/admin-box`) is built from, here, before
    /// it is imported on every node; without one the image is skipped with a note (Debian:
    /// apt-get install -y busybox).
    #[arg(long, value_name = "FILE", default_value = kinit_images::admin_box::DEFAULT_BUSYBOX)]
    pub busybox: PathBuf,

    /// Observe every host and print the plan; change nothing (not even the state dir).
    #[arg(long)]
    pub dry_run: bool,

    /// Skip the preflight checks kinit runs on hosts it has not installed yet.
    #[arg(long)]
    pub skip_preflight: bool,

    /// Seconds to wait for the API server, and again for the nodes to be Ready.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub wait_timeout: u64,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// One host in the summary.
#[derive(Debug, Serialize)]
struct HostSummary {
    host: String,
    roles: Vec<String>,
    /// Phases that ran (or, on a dry run, would run), in order.
    phases: Vec<String>,
    /// Why each phase was planned.
    reasons: Vec<String>,
    /// Files that differed.
    files_changed: usize,
    /// The node's state in the API after the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<NodeState>,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What `kinit apply` reports.
#[derive(Debug, Serialize)]
pub(crate) struct ApplyReport {
    cluster: String,
    dry_run: bool,
    state_dir: PathBuf,
    /// PKI files generated on this run (0 when everything was reused).
    pki_generated: usize,
    hosts: Vec<HostSummary>,
    /// Seconds until `/readyz` answered, when the API was waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    api_ready_seconds: Option<f64>,
    /// Whether `kube-public/cluster-info` was created or updated.
    cluster_info_changed: bool,
    /// Whether `kube-system/kinit-config` (settings for `kinit join`) was created or updated.
    cluster_config_changed: bool,
    /// What the add-ons phase did, per add-on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addons: Vec<AddonReport>,
    /// Anything on the cluster that failed outside a single host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
    /// True when this run changed (or a dry run would change) anything.
    changed: bool,
    pub(crate) admin_kubeconfig: PathBuf,
    seconds: f64,
}

impl ApplyReport {
    pub(crate) fn ok(&self) -> bool {
        self.errors.is_empty()
            && self.hosts.iter().all(|h| {
                h.error.is_none() && (self.dry_run || h.node.as_ref() == Some(&NodeState::Ready))
            })
    }
}

fn role_names(host: &kinit_inventory::Host) -> Vec<String> {
    host.roles.iter().map(|r| r.to_string()).collect()
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

pub(crate) fn table(report: &ApplyReport) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "Host",
            "Roles",
            if report.dry_run { "Would run" } else { "Ran" },
            "Node",
            "Time",
        ]);
    for h in &report.hosts {
        let phases = if h.phases.is_empty() {
            "nothing (up to date)".to_string()
        } else {
            h.phases
                .iter()
                .zip(&h.reasons)
                .map(|(p, r)| format!("{p}: {r}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let node = match (&h.error, &h.node) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, Some(n)) => n.to_string(),
            (None, None) => "-".into(),
        };
        table.add_row(vec![
            h.host.clone(),
            h.roles.join(","),
            phases,
            node,
            format!("{:.1}s", h.seconds),
        ]);
    }
    let mut out = format!("{table}\n");
    for e in &report.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    if report.dry_run {
        out.push_str(&format!(
            "dry run: {} (nothing was changed)\n",
            if report.changed {
                "the hosts above need the listed phases"
            } else {
                "the cluster is up to date"
            }
        ));
    } else {
        if let Some(s) = report.api_ready_seconds {
            out.push_str(&format!(
                "API ready after {s:.1}s; cluster-info {}\n",
                if report.cluster_info_changed {
                    "published"
                } else {
                    "unchanged"
                }
            ));
        }
        for addon in &report.addons {
            let kept: Vec<&str> = addon
                .objects
                .iter()
                .filter(|o| o.action == ObjectAction::KeptUserEdit)
                .map(|o| o.object.as_str())
                .collect();
            out.push_str(&format!(
                "add-on {}: {}{}\n",
                addon.addon,
                if addon.changed() {
                    "applied"
                } else {
                    "up to date"
                },
                if kept.is_empty() {
                    String::new()
                } else {
                    format!(" (kept your edits of {})", kept.join(", "))
                }
            ));
        }
        out.push_str(&format!(
            "{} in {:.1}s\n",
            if !report.ok() {
                "cluster NOT converged"
            } else if report.changed {
                "cluster converged"
            } else {
                "no changes: the cluster was already converged"
            },
            report.seconds
        ));
        out.push_str(&format!(
            "admin kubeconfig: {}\n  kubectl --kubeconfig {} get nodes\n  join more nodes: kinit token create --print-join-command --kubeconfig {}",
            report.admin_kubeconfig.display(),
            report.admin_kubeconfig.display(),
            report.admin_kubeconfig.display()
        ));
    }
    out
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
                kinit::sync::STATE_ROOT,
                kinit::sync::MANAGED_LIST
            ))
            .await
            .map(|o| o.success())
            .unwrap_or(false);
        if installed {
            return None;
        }
        Some(
            check_host(
                *host,
                &roles_from_inventory(entry),
                &PreflightOptions::default(),
            )
            .await,
        )
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
        files_changed: planned.map_or(0, |p| {
            p.files
                .iter()
                .filter(|f| f.status != kinit::sync::FileStatus::UpToDate)
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
async fn registered_pod_cidrs(admin_kubeconfig: &Path) -> Option<BTreeMap<String, IpNet>> {
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
            eprintln!(
                "warning: cannot read the Nodes' pod ranges ({e:#}); new hosts avoid only the ranges kinit recorded, not those of nodes joined with `kinit join`"
            );
            None
        }
        Err(_) => {
            eprintln!(
                "warning: the API server did not answer within 5 s; new hosts avoid only the pod ranges kinit recorded, not those of nodes joined with `kinit join`"
            );
            None
        }
    }
}

/// The admin-box image archive, built here from `busybox` into `<state dir>/images` (so its
/// libraries are this machine's, matching this busybox): `None`, with a note, when busybox is
/// not at the default path; an error when a path given explicitly is unusable.
pub(crate) fn admin_box_archive(
    busybox: &Path,
    state_dir: &Path,
) -> anyhow::Result<Option<Binary>> {
    let default = busybox.as_os_str() == kinit_images::admin_box::DEFAULT_BUSYBOX;
    if !busybox.exists() && default {
        eprintln!(
            "note: no admin-box image: busybox not found at {}; {}",
            busybox.display(),
            kinit_images::admin_box::INSTALL_HINT
        );
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
        eprintln!("note: {note}");
    }
    let built = report
        .images
        .first()
        .context("the admin-box build wrote no archive")?;
    Binary::load(&built.path)
        .map(Some)
        .with_context(|| format!("cannot read {}", built.path.display()))
}

/// Converges `selected` (hosts of `inventory`) and bootstraps the cluster through its API.
pub(crate) async fn apply(
    args: &ApplySettings,
    concurrency: usize,
    inventory: &Inventory,
    selected: Vec<Selected>,
) -> anyhow::Result<ApplyReport> {
    let started = Instant::now();
    let real_state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(inventory));

    // A dry run prepares the state in a scratch copy: the plan is exact, the admin box untouched.
    let scratch;
    let state_dir = if args.dry_run {
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
    let registered = registered_pod_cidrs(&real_state_dir.join("admin.conf")).await;
    let (state, pki) = ClusterState::prepare(inventory, &state_dir, registered.as_ref())?;

    let pki_generated = pki
        .files
        .iter()
        .filter(|f| f.action != kinit_pki::FileAction::Reused)
        .count();

    let binary_path = match &args.binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find this kinit binary")?,
    };
    let binary = Binary::load(&binary_path)
        .with_context(|| format!("cannot read the kinit binary {}", binary_path.display()))?;
    let admin_box = admin_box_archive(&args.busybox, &state_dir)?;
    // Rendered before any host is touched: a bad setting fails here, not after the install.
    let addon_objects = addons::rendered(
        inventory,
        &ClusterRenderContext::default().images,
        &binary.sha256,
    )?;

    let mut hosts = Vec::new();
    let mut entries = Vec::new();
    for s in selected {
        let entry = s
            .entry
            .expect("hosts selected from an inventory have entries");
        let files = state.host_files(inventory, &entry)?;
        hosts.push((
            s.host,
            HostTarget {
                binary: binary.clone(),
                files,
                admin_box: admin_box.clone(),
            },
        ));
        entries.push(entry);
    }

    if !args.skip_preflight {
        let failed = preflight_fresh_hosts(&hosts, &entries, concurrency).await;
        if !failed.is_empty() {
            let mut message = String::from("preflight failed on hosts kinit has not installed yet; fix these (or pass --skip-preflight) and re-run:");
            for report in &failed {
                for check in report
                    .checks
                    .iter()
                    .filter(|c| c.status == kinit_executor::preflight::CheckStatus::Fail)
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
            bail!(message);
        }
    }

    let progress = args.output == OutputFormat::Table && std::io::stderr().is_terminal();
    let outcomes = converge(
        &hosts,
        ConvergeOptions {
            concurrency: concurrency.max(1),
            dry_run: args.dry_run,
            progress,
        },
        &run_id(),
    )
    .await;
    let mut summaries: Vec<HostSummary> = outcomes
        .iter()
        .zip(&entries)
        .map(|(o, e)| summarize(o, e, args.dry_run))
        .collect();

    let admin_kubeconfig = real_state_dir.join("admin.conf");
    let mut report = ApplyReport {
        cluster: inventory.metadata.name.clone(),
        dry_run: args.dry_run,
        state_dir: real_state_dir,
        pki_generated,
        hosts: Vec::new(),
        api_ready_seconds: None,
        cluster_info_changed: false,
        cluster_config_changed: false,
        addons: Vec::new(),
        errors: Vec::new(),
        changed: false,
        admin_kubeconfig: admin_kubeconfig.clone(),
        seconds: 0.0,
    };

    let control_planes_ok = outcomes
        .iter()
        .zip(&entries)
        .filter(|(_, e)| e.has_role(Role::ControlPlane))
        .all(|(o, _)| o.ok());
    if !args.dry_run && control_planes_ok {
        let timeout = Duration::from_secs(args.wait_timeout);
        let spinner = if progress {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let result: anyhow::Result<()> = async {
            spinner.set_message("waiting for the API server");
            let admin = kinit_pki::Kubeconfig::load(&admin_kubeconfig)?;
            let server = admin
                .current_cluster()
                .map(|c| c.cluster.server.clone())
                .context("admin.conf names no cluster")?;
            let client = client::from_kubeconfig(&admin_kubeconfig).await?;
            let waited = bootstrap::wait_for_api(&client, &server, timeout).await?;
            spinner.set_message("publishing cluster-info and the cluster settings");
            report.api_ready_seconds = Some((waited.as_secs_f64() * 10.0).round() / 10.0);
            let ca = std::fs::read(state_dir.join("pki/ca.crt"))
                .context("cannot read the cluster CA certificate")?;
            let kubeconfig = bootstrap::cluster_info_kubeconfig(&server, &ca);
            report.cluster_info_changed =
                bootstrap::publish_cluster_info(&client, &kubeconfig).await?;
            report.cluster_config_changed =
                bootstrap::publish_cluster_config(&client, &inventory.spec.cluster).await?;
            for (addon, objects) in &addon_objects {
                spinner.set_message(format!("applying the {addon} add-on"));
                let (done, failed) = addons::apply_objects(&client, addon, objects).await;
                report.addons.push(done);
                // Recorded, and the nodes are still waited for: the hosts are fine.
                if let Some(e) = failed {
                    report.errors.push(format!("{e:#}; fix it and re-run kinit apply"));
                }
            }
            // A host whose phases failed is reported as such; waiting for its node is pointless.
            let names: Vec<String> = entries
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| o.ok())
                .map(|(e, _)| e.name.clone())
                .collect();
            spinner.set_message(format!("waiting for {} node(s) to be Ready", names.len()));
            let states = bootstrap::wait_for_nodes(&client, &names, timeout).await?;
            for (summary, entry) in summaries.iter_mut().zip(&entries) {
                summary.node = states.get(&entry.name).cloned();
            }
            let not_ready: Vec<String> = states
                .iter()
                .filter(|(_, s)| **s != NodeState::Ready)
                .map(|(n, s)| format!("{n}: {s}"))
                .collect();
            if !not_ready.is_empty() {
                bail!(
                    "nodes not Ready after {}s: {}; look at `journalctl -u kinit-agent` on those hosts",
                    args.wait_timeout,
                    not_ready.join("; ")
                );
            }
            Ok(())
        }
        .await;
        spinner.finish_and_clear();
        if let Err(e) = result {
            report.errors.push(format!("{e:#}"));
        }
    } else if !args.dry_run {
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

/// Runs `kinit apply`.
pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let Some(inventory) = args.hosts.inventory()? else {
        bail!("kinit apply works from an inventory: pass -i FILE (see `kinit config print init-defaults`)");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let selected = args.hosts.select(Some(&inventory))?;
    let report = runtime.block_on(apply(
        &args.settings,
        args.hosts.concurrency,
        &inventory,
        selected,
    ))?;
    emit(&report, args.settings.output, table)?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(host: &str, phases: &[&str], node: Option<NodeState>) -> HostSummary {
        HostSummary {
            host: host.into(),
            roles: vec!["worker".into()],
            phases: phases.iter().map(|p| p.to_string()).collect(),
            reasons: phases.iter().map(|_| "because".to_string()).collect(),
            files_changed: 0,
            node,
            seconds: 1.0,
            error: None,
        }
    }

    fn report(hosts: Vec<HostSummary>, changed: bool) -> ApplyReport {
        ApplyReport {
            cluster: "lab".into(),
            dry_run: false,
            state_dir: "/s".into(),
            pki_generated: 0,
            hosts,
            api_ready_seconds: Some(0.2),
            cluster_info_changed: false,
            cluster_config_changed: false,
            addons: vec![],
            errors: vec![],
            changed,
            admin_kubeconfig: "/s/admin.conf".into(),
            seconds: 3.0,
        }
    }

    #[test]
    fn a_converged_cluster_reports_no_changes() {
        let r = report(
            vec![
                summary("node1", &[], Some(NodeState::Ready)),
                summary("node2", &[], Some(NodeState::Ready)),
            ],
            false,
        );
        assert!(r.ok());
        let text = table(&r);
        assert!(text.contains("nothing (up to date)"), "{text}");
        assert!(text.contains("no changes"), "{text}");
    }

    #[test]
    fn a_node_not_ready_fails_the_run_and_is_shown() {
        let r = report(
            vec![
                summary("node1", &["start node agent"], Some(NodeState::Ready)),
                summary(
                    "node2",
                    &[],
                    Some(NodeState::NotReady("network not ready".into())),
                ),
            ],
            true,
        );
        assert!(!r.ok());
        let text = table(&r);
        assert!(text.contains("NotReady (network not ready)"), "{text}");
        assert!(text.contains("start node agent: because"), "{text}");
        assert!(text.contains("NOT converged"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["hosts"][1]["node"]["not-ready"], "network not ready");
        assert_eq!(json["changed"], true);
    }

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
