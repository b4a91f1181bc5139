//! `kinit reset`: leave hosts as they were before kinit, and remove their Nodes from the API.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use k8s_openapi::api::core::v1::Node;
use kinit::client;
use kinit::desired::default_state_dir;
use kinit::output::{emit, OutputFormat};
use kinit::phases::AGENT_UNIT;
use kinit::reset::{reset, ResetReport};
use kinit_executor::{run_on_all, Host};
use kinit_inventory::{Inventory, Role};
use kube::api::DeleteParams;
use serde::Serialize;

use crate::cmd::hosts::HostArgs;

/// `kinit reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub hosts: HostArgs,

    /// List what would be removed, change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,

    /// Admin kubeconfig used to delete the hosts' Nodes [default: admin.conf in the cluster
    /// state dir of the inventory].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Node name of a --host or --local machine [default: its address, or its hostname].
    #[arg(long)]
    pub node_name: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// The result on one host.
#[derive(Debug, Serialize)]
struct HostResult {
    #[serde(flatten)]
    report: Option<ResetReport>,
    host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// What happened to the host's Node object.
    node: String,
    /// The add-on objects removed through the API (on the first control plane of a reset that
    /// takes down every control plane of the inventory).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addons: Vec<String>,
}

fn table(results: &Vec<HostResult>) -> String {
    let mut out = String::new();
    for r in results {
        let verb = match &r.report {
            Some(rep) if rep.dry_run => "would run",
            _ => "ran",
        };
        match (&r.report, &r.error) {
            (_, Some(e)) => out.push_str(&format!("{}: FAILED: {e}\n", r.host)),
            (Some(rep), None) => {
                out.push_str(&format!(
                    "{}: {verb} {} action(s)\n",
                    r.host,
                    rep.actions.len()
                ));
                for a in &rep.actions {
                    out.push_str(&format!("  {a}\n"));
                }
            }
            (None, None) => {}
        }
        out.push_str(&format!("  node: {}\n", r.node));
        for a in &r.addons {
            out.push_str(&format!("  add-on: {a}\n"));
        }
    }
    out.trim_end().to_string()
}

fn confirm(hosts: &[String]) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to reset {} without confirmation; pass --yes (or --dry-run to see what would be removed)", hosts.join(", "));
    }
    eprint!(
        "This stops kinit and removes its files, containers, images and network settings from: {}\nProceed? [y/N] ",
        hosts.join(", ")
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("aborted; nothing was changed");
    }
    Ok(())
}

async fn delete_node(kubeconfig: &Option<PathBuf>, name: &str, dry_run: bool) -> String {
    let Some(path) = kubeconfig else {
        return "kept (no kubeconfig to reach the API)".into();
    };
    if dry_run {
        return format!("would delete Node {name}");
    }
    let client = match client::from_kubeconfig(path).await {
        Ok(c) => c,
        Err(e) => return format!("kept: {e:#}"),
    };
    let nodes: kube::Api<Node> = kube::Api::all(client);
    match nodes.delete(name, &DeleteParams::default()).await {
        Ok(_) => format!("deleted Node {name}"),
        Err(kube::Error::Api(s)) if s.code == 404 => format!("Node {name} was not registered"),
        Err(e) => {
            format!("kept: cannot delete Node {name} ({e}); delete it when the API is reachable")
        }
    }
}

/// Deletes the add-on objects kinit creates for `inventory` (see [`kinit::addons`]).
async fn remove_addons(kubeconfig: &Path, inventory: &Inventory, dry_run: bool) -> Vec<String> {
    let rendered = match kinit::addons::rendered(
        inventory,
        &kinit_templates::ClusterRenderContext::default().images,
        "",
    ) {
        Ok(r) => r,
        Err(e) => return vec![format!("kept: {e}")],
    };
    let client = match client::from_kubeconfig(kubeconfig).await {
        Ok(c) => c,
        Err(e) => return vec![format!("kept (the API is not reachable: {e:#})")],
    };
    let mut out = Vec::new();
    for (_, objects) in rendered {
        out.extend(kinit::addons::delete_objects(&client, &objects, dry_run).await);
    }
    out
}

/// Runs `kinit reset`.
pub fn run(args: ResetArgs) -> anyhow::Result<ExitCode> {
    let inventory = args.hosts.inventory()?;
    let selected = args.hosts.select(inventory.as_ref())?;
    let names: Vec<String> = selected.iter().map(|s| s.host.name().to_string()).collect();
    if !args.dry_run && !args.yes {
        confirm(&names)?;
    }
    let kubeconfig = args.kubeconfig.clone().or_else(|| {
        let path = default_state_dir(inventory.as_ref()?).join("admin.conf");
        path.is_file().then_some(path)
    });
    let node_names: Vec<String> = selected
        .iter()
        .map(|s| match (&s.entry, &args.node_name) {
            (Some(entry), _) => entry.name.clone(),
            (None, Some(name)) => name.clone(),
            (None, None) => s.host.name().to_string(),
        })
        .collect();
    // Taking down every control plane of the inventory ends the cluster: the add-on objects
    // kinit created go first, through the API (with an external datastore they would outlive
    // the hosts).
    let whole_cluster = inventory.as_ref().is_some_and(|inv| {
        inv.spec
            .hosts
            .iter()
            .filter(|h| h.has_role(Role::ControlPlane))
            .all(|h| names.contains(&h.name))
    });
    let results = client::block_on(async {
        let addons_removed = match (&kubeconfig, &inventory) {
            (Some(path), Some(inv)) if whole_cluster => {
                remove_addons(path, inv, args.dry_run).await
            }
            _ => Vec::new(),
        };
        let hosts: Vec<_> = selected.iter().zip(&node_names).collect();
        // First every Node, with its agent stopped (so it cannot register the Node again) but
        // all pods still running — on control planes they are the API; then the hosts.
        let node_results = run_on_all(&hosts, args.hosts.concurrency, |(s, node)| {
            let kubeconfig = &kubeconfig;
            async move {
                if !args.dry_run {
                    let _ = s
                        .host
                        .run(&format!("systemctl stop {AGENT_UNIT} 2>/dev/null"))
                        .await;
                }
                delete_node(kubeconfig, node, args.dry_run).await
            }
        })
        .await;
        let reports = run_on_all(&selected, args.hosts.concurrency, |s| {
            reset(&s.host, args.dry_run)
        })
        .await;
        let first_control_plane = selected.iter().position(|s| {
            s.entry
                .as_ref()
                .is_some_and(|e| e.has_role(Role::ControlPlane))
        });
        let mut addons_removed = Some(addons_removed);
        Ok(selected
            .iter()
            .zip(reports)
            .zip(node_results)
            .enumerate()
            .map(|(i, ((s, report), node_result))| {
                let host = s.host.name().to_string();
                let addons = if Some(i) == first_control_plane {
                    addons_removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                };
                match report {
                    Ok(report) => HostResult {
                        report: Some(report),
                        host,
                        error: None,
                        node: node_result,
                        addons,
                    },
                    Err(e) => HostResult {
                        report: None,
                        host,
                        error: Some(e.to_string()),
                        node: format!("{node_result}; the host reset failed"),
                        addons,
                    },
                }
            })
            .collect::<Vec<_>>())
    })
    .context("reset")?;
    emit(&results, args.output, table)?;
    Ok(if results.iter().any(|r| r.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
