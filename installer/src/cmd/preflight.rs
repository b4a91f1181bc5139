//! `kinit preflight`: check that hosts are ready for a cluster, before anything is installed.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, ContentArrangement, Table};
use kinit_executor::preflight::{
    check_all, CheckStatus, HostReport, HostRoles, PreflightOptions, PreflightTarget,
};
use kinit_executor::AnyHost;

use crate::cmd::hosts::HostArgs;

use kinit::output::{emit, OutputFormat};

/// A host role, as in the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// apiserver, controller-manager, scheduler.
    ControlPlane,
    /// An etcd member.
    Etcd,
    /// Runs workloads.
    Worker,
    /// Load balancer for the API (haproxy + keepalived).
    Lb,
}

/// Arguments of `kinit preflight`.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub hosts: HostArgs,

    /// Roles of the --host / --local machine (decide which ports must be free).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "control-plane,worker"
    )]
    pub roles: Vec<Role>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// The checks a host needs follow from its inventory roles (`lb` adds none of its own).
pub(crate) fn roles_from_inventory(host: &kinit_inventory::Host) -> HostRoles {
    kinit::apply::preflight_roles(host)
}

fn roles_from_args(roles: &[Role]) -> HostRoles {
    HostRoles {
        control_plane: roles.contains(&Role::ControlPlane),
        etcd: roles.contains(&Role::Etcd),
        worker: roles.contains(&Role::Worker),
    }
}

fn targets(args: &PreflightArgs) -> anyhow::Result<Vec<PreflightTarget<AnyHost>>> {
    let inventory = args.hosts.inventory()?;
    Ok(args
        .hosts
        .select(inventory.as_ref())?
        .into_iter()
        .map(|s| PreflightTarget {
            roles: s
                .entry
                .as_ref()
                .map(roles_from_inventory)
                .unwrap_or_else(|| roles_from_args(&args.roles)),
            host: s.host,
        })
        .collect())
}

fn status_cell(status: CheckStatus) -> Cell {
    let color = match status {
        CheckStatus::Pass => Color::Green,
        CheckStatus::Warn => Color::Yellow,
        CheckStatus::Fail => Color::Red,
    };
    Cell::new(status.to_string()).fg(color)
}

/// Renders one table per host and a summary line.
fn render_tables(reports: &[HostReport]) -> String {
    let mut out = String::new();
    for report in reports {
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(vec!["Check", "Status", "Details", "Fix"]);
        for check in &report.checks {
            table.add_row(vec![
                Cell::new(&check.check),
                status_cell(check.status),
                Cell::new(&check.message),
                Cell::new(check.fix.as_deref().unwrap_or("")),
            ]);
        }
        out.push_str(&format!("{}: {}\n{table}\n\n", report.host, report.worst()));
    }
    let failed = reports.iter().filter(|r| r.has_failures()).count();
    out.push_str(&format!(
        "{} of {} host(s) ready{}",
        reports.len() - failed,
        reports.len(),
        if failed > 0 {
            format!("; {failed} failed: fix the FAIL rows above and run preflight again")
        } else {
            String::new()
        }
    ));
    out
}

/// Runs every check on every selected host; exits non-zero when any check fails.
pub fn run(args: PreflightArgs) -> anyhow::Result<ExitCode> {
    let targets = targets(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reports = runtime.block_on(check_all(
        &targets,
        args.hosts.concurrency,
        &PreflightOptions::default(),
    ));
    emit(&reports, args.output, |r| render_tables(r))?;
    Ok(if reports.iter().any(HostReport::has_failures) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinit_executor::preflight::CheckResult;

    const INVENTORY: &str = "\
apiVersion: kinit.dev/v1alpha1
kind: Cluster
metadata: { name: lab }
spec:
  hosts:
    - name: node1
      address: 10.88.0.11
      ssh: { user: root, port: 22, keyPath: keys/id_ed25519 }
      roles: [control-plane, etcd]
    - address: 10.88.0.12
      ssh: { user: admin, sudo: true }
      roles: [worker]
  cluster:
    datastore: etcd
";

    #[test]
    fn inventory_hosts_become_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.yaml");
        std::fs::write(&path, INVENTORY).unwrap();
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: PreflightArgs,
        }
        let cli = Cli::parse_from(["x", "-i", path.to_str().unwrap()]);
        let hosts = targets(&cli.args).unwrap();
        use kinit_executor::Host;
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].host.name(), "node1");
        assert!(hosts[0].roles.control_plane && hosts[0].roles.etcd && !hosts[0].roles.worker);
        assert_eq!(hosts[1].host.name(), "10.88.0.12");
        assert!(hosts[1].roles.worker && !hosts[1].roles.control_plane);
    }

    #[test]
    fn unknown_role_names_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.yaml");
        std::fs::write(
            &path,
            "apiVersion: kinit.dev/v1alpha1\nkind: Cluster\nspec:\n  hosts:\n    - address: 10.0.0.1\n      roles: [master]\n",
        )
        .unwrap();
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: PreflightArgs,
        }
        let cli = Cli::parse_from(["x", "-i", path.to_str().unwrap()]);
        let Err(err) = targets(&cli.args) else {
            panic!("the inventory is invalid");
        };
        let err = format!("{err:#}");
        assert!(err.contains("spec.hosts[0]"), "{err}");
        assert!(err.contains("master"), "{err}");
        assert!(err.contains("inv.yaml:6"), "{err}");
    }

    #[test]
    fn tables_show_every_check_and_a_summary() {
        let reports = vec![
            HostReport {
                host: "node1".into(),
                checks: vec![CheckResult::pass("swap", "swap is off")],
            },
            HostReport {
                host: "node2".into(),
                checks: vec![CheckResult::fail(
                    "ports",
                    "port 10250 (kubelet API) is in use",
                    "stop it",
                )],
            },
        ];
        let text = render_tables(&reports);
        assert!(text.contains("node1: PASS"));
        assert!(text.contains("node2: FAIL"));
        assert!(text.contains("port 10250"));
        assert!(text.contains("1 of 2 host(s) ready; 1 failed"));
    }
}
