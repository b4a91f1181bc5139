//! `kinit apply -i inventory.yaml`: the whole cluster from its inventory, idempotently. The
//! workflow is [`kinit::apply`]; this module parses the flags and prints the report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::PossibleValuesParser;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use kinit::addons::ObjectAction;
use kinit::apply::{apply, ApplyOptions, ApplyReport};
use kinit::output::{emit, OutputFormat};
use kinit::phases::PhaseSelection;
use kinit_executor::AnyHost;

use crate::cmd::hosts::{HostArgs, Selected};

/// `kinit apply`.
#[derive(Debug, Args)]
// `--only` picks phases here (kubeadm's addressing); hosts are picked with `--only-hosts`.
#[command(mut_arg("only", |a| a.long("only-hosts")))]
pub struct ApplyArgs {
    #[command(flatten)]
    pub hosts: HostArgs,

    #[command(flatten)]
    pub settings: ApplySettings,
}

/// Every phase name, for `--only`/`--skip-phases` (shown in `--help`, checked by clap).
fn phase_names() -> PossibleValuesParser {
    PossibleValuesParser::new(kinit::phases::names().into_iter().map(|n| n.as_str()))
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

    /// Run only these phases (comma-separate or repeat); the others are observed and reported
    /// as skipped. Host phases run on every host, in order; the cluster phases after them.
    #[arg(long = "only", value_name = "PHASE", value_delimiter = ',', value_parser = phase_names())]
    pub only_phases: Vec<String>,

    /// Run every phase but these (comma-separate or repeat).
    #[arg(long, value_name = "PHASE", value_delimiter = ',', value_parser = phase_names())]
    pub skip_phases: Vec<String>,

    /// Seconds to wait for the API server, and again for the nodes to be Ready.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub wait_timeout: u64,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

impl ApplySettings {
    /// The library's options for these flags.
    pub fn options(&self, concurrency: usize) -> anyhow::Result<ApplyOptions> {
        Ok(ApplyOptions {
            state_dir: self.state_dir.clone(),
            binary: self.binary.clone(),
            busybox: self.busybox.clone(),
            dry_run: self.dry_run,
            skip_preflight: self.skip_preflight,
            wait_timeout: Duration::from_secs(self.wait_timeout),
            concurrency,
            progress: self.output == OutputFormat::Table && std::io::stderr().is_terminal(),
            phases: PhaseSelection::new(&self.only_phases, &self.skip_phases)?,
            notify: |message| eprintln!("{message}"),
        })
    }
}

/// The selected hosts with their inventory entries.
pub(crate) fn with_entries(
    selected: Vec<Selected>,
) -> anyhow::Result<Vec<(AnyHost, kinit_inventory::Host)>> {
    selected
        .into_iter()
        .map(|s| {
            let entry = s
                .entry
                .context("hosts selected from an inventory have entries")?;
            Ok((s.host, entry))
        })
        .collect()
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
        let mut phases = if h.phases.is_empty() {
            "nothing (up to date)".to_string()
        } else {
            h.phases
                .iter()
                .zip(&h.reasons)
                .map(|(p, r)| format!("{p}: {r}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        for skipped in &h.skipped {
            phases.push_str(&format!("\nskipped {skipped}"));
        }
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
    if !report.cluster_phases_skipped.is_empty() {
        let names: Vec<&str> = report
            .cluster_phases_skipped
            .iter()
            .map(|p| p.as_str())
            .collect();
        out.push_str(&format!("skipped cluster phases: {}\n", names.join(", ")));
    }
    if report.dry_run {
        if !report.cluster_phases.is_empty() {
            out.push_str("then, through the API:\n");
            for p in &report.cluster_phases {
                out.push_str(&format!("  {}: {}\n", p.phase.title(), p.reason));
            }
        }
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

/// Runs `kinit apply`.
pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let Some(inventory) = args.hosts.inventory()? else {
        bail!("kinit apply works from an inventory: pass -i FILE (see `kinit config print init-defaults`)");
    };
    let options = args.settings.options(args.hosts.concurrency)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let selected = with_entries(args.hosts.select_as(Some(&inventory), "--only-hosts")?)?;
    let report = runtime.block_on(apply(&options, &inventory, selected))?;
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
    use clap::Parser;
    use kinit::apply::HostSummary;
    use kinit::bootstrap::NodeState;

    fn summary(host: &str, phases: &[&str], node: Option<NodeState>) -> HostSummary {
        HostSummary {
            host: host.into(),
            roles: vec!["worker".into()],
            phases: phases.iter().map(|p| p.to_string()).collect(),
            reasons: phases.iter().map(|_| "because".to_string()).collect(),
            skipped: vec![],
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
            cluster_phases: vec![],
            cluster_phases_skipped: vec![],
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
    fn a_run_without_wait_for_nodes_does_not_need_ready_nodes_and_says_what_it_left_out() {
        let mut r = report(vec![summary("node1", &["write files"], None)], true);
        assert!(!r.ok(), "the nodes were waited for and node1 has no state");
        r.cluster_phases_skipped = vec![
            kinit::phases::PhaseName::WaitForApi,
            kinit::phases::PhaseName::WaitForNodes,
        ];
        r.hosts[0].skipped = vec!["import images: kinit.local/pause not in containerd".into()];
        assert!(r.ok());
        let text = table(&r);
        assert!(
            text.contains("skipped import images: kinit.local/pause not in containerd"),
            "{text}"
        );
        assert!(
            text.contains("skipped cluster phases: wait-for-api, wait-for-nodes"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["cluster_phases_skipped"],
            serde_json::json!(["wait-for-api", "wait-for-nodes"])
        );
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ApplyArgs,
    }

    #[test]
    fn only_takes_phase_names_and_only_hosts_takes_host_names() {
        let cli = Cli::try_parse_from([
            "x",
            "-i",
            "inv.yaml",
            "--only",
            "files,agent",
            "--only-hosts",
            "node2",
            "--skip-phases",
            "images",
        ])
        .unwrap();
        assert_eq!(cli.args.settings.only_phases, ["files", "agent"]);
        assert_eq!(cli.args.settings.skip_phases, ["images"]);
        assert_eq!(cli.args.hosts.only, ["node2"]);
        let err = Cli::try_parse_from(["x", "-i", "inv.yaml", "--only", "node2"])
            .err()
            .expect("node2 is no phase")
            .to_string();
        assert!(err.contains("node2"), "{err}");
        assert!(
            err.contains("binary") && err.contains("wait-for-nodes"),
            "the valid names are listed: {err}"
        );
        let err = Cli::try_parse_from(["x", "-i", "inv.yaml", "--skip-phases", "image"])
            .err()
            .expect("image is no phase")
            .to_string();
        assert!(err.contains("images"), "{err}");
    }

    #[test]
    fn the_phase_names_are_in_the_help() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for name in kinit::phases::names() {
            assert!(help.contains(name.as_str()), "{name} in {help}");
        }
        assert!(help.contains("--skip-phases") && help.contains("--only-hosts"));
    }
}
