//! `kinit preflight`: check that hosts are ready for a cluster, before anything is installed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, ContentArrangement, Table};
use kinit_executor::preflight::{
    check_all, CheckStatus, HostReport, HostRoles, PreflightOptions, PreflightTarget,
};
use kinit_executor::{AnyHost, HostKeyPolicy, LocalHost, SshAuth, SshConfig, SshHost};

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
    /// Inventory file listing the hosts to check.
    #[arg(short = 'i', long, value_name = "FILE", required_unless_present_any = ["host", "local"])]
    pub inventory: Option<PathBuf>,

    /// Check only these inventory hosts (by name; repeat or comma-separate).
    #[arg(
        long,
        value_name = "NAME",
        value_delimiter = ',',
        requires = "inventory"
    )]
    pub only: Vec<String>,

    /// Check one host by address, without an inventory.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "inventory")]
    pub host: Option<String>,

    /// Check the machine kinit runs on, without SSH.
    #[arg(long, conflicts_with_all = ["inventory", "host"])]
    pub local: bool,

    /// Roles of the --host / --local machine (decide which ports must be free).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "control-plane,worker"
    )]
    pub roles: Vec<Role>,

    /// SSH user for --host.
    #[arg(long, default_value = "root")]
    pub ssh_user: String,

    /// SSH port for --host.
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,

    /// Private key for --host (overrides nothing in an inventory, which names its own keys).
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,

    /// Name of an environment variable holding the SSH password (never pass a password itself).
    #[arg(long, value_name = "VAR")]
    pub ssh_password_env: Option<String>,

    /// known_hosts file for host-key checking [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// Record the keys of hosts seen for the first time (a changed key is still refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,

    /// Do not check host keys at all. Insecure: only for throwaway machines.
    #[arg(long, conflicts_with = "accept_new_host_keys")]
    pub insecure_ignore_host_keys: bool,

    /// How many hosts to check at once.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,

    /// Seconds to wait for a host to answer.
    #[arg(long, default_value_t = 15)]
    pub connect_timeout: u64,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// One host to check, whatever it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostSpec {
    name: String,
    address: String,
    user: String,
    port: u16,
    key: Option<PathBuf>,
    sudo: Option<bool>,
    /// Environment variable holding this host's SSH password.
    password_env: Option<String>,
    roles: HostRoles,
}

/// The checks a host needs follow from its inventory roles (`lb` adds none of its own).
fn roles_from_inventory(host: &kinit_inventory::Host) -> HostRoles {
    use kinit_inventory::Role as R;
    HostRoles {
        control_plane: host.has_role(R::ControlPlane),
        etcd: host.has_role(R::Etcd),
        worker: host.has_role(R::Worker),
    }
}

/// Resolves an inventory key path: `~/` is the admin's home, relative paths are relative to
/// the inventory file.
fn resolve_key_path(key: &Path, inventory_dir: &Path) -> PathBuf {
    let expanded = match key.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(rest),
        Err(_) => key.to_path_buf(),
    };
    if expanded.is_relative() {
        inventory_dir.join(expanded)
    } else {
        expanded
    }
}

/// Reads and validates the inventory, then turns its hosts into check targets.
fn load_inventory(path: &Path) -> anyhow::Result<Vec<HostSpec>> {
    let inventory = kinit_inventory::Inventory::from_path(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(inventory
        .spec
        .hosts
        .iter()
        .map(|host| HostSpec {
            name: host.name.clone(),
            address: host.address.clone(),
            user: host.ssh.user.clone(),
            port: host.ssh.port,
            key: host
                .ssh
                .key_path
                .as_deref()
                .map(|k| resolve_key_path(k, base)),
            sudo: Some(host.ssh.sudo),
            password_env: host.ssh.password_env.clone(),
            roles: roles_from_inventory(host),
        })
        .collect())
}

fn roles_from_args(roles: &[Role]) -> HostRoles {
    HostRoles {
        control_plane: roles.contains(&Role::ControlPlane),
        etcd: roles.contains(&Role::Etcd),
        worker: roles.contains(&Role::Worker),
    }
}

fn host_key_policy(args: &PreflightArgs) -> HostKeyPolicy {
    if args.insecure_ignore_host_keys {
        HostKeyPolicy::InsecureIgnore
    } else if args.accept_new_host_keys {
        HostKeyPolicy::AcceptNew
    } else {
        HostKeyPolicy::Strict
    }
}

fn ssh_host(spec: &HostSpec, args: &PreflightArgs) -> anyhow::Result<SshHost> {
    let mut config = SshConfig::new(spec.name.clone(), spec.address.clone(), spec.user.clone());
    config.port = spec.port;
    if let Some(sudo) = spec.sudo {
        config.sudo = sudo;
    }
    if let Some(key) = &spec.key {
        config.auth.push(SshAuth::KeyFile {
            path: key.clone(),
            passphrase: None,
        });
    }
    if let Some(var) = spec
        .password_env
        .as_ref()
        .or(args.ssh_password_env.as_ref())
    {
        let password = std::env::var(var)
            .with_context(|| format!("--ssh-password-env {var}: the variable is not set"))?;
        config.auth.push(SshAuth::Password(password));
    }
    if let Some(known_hosts) = &args.known_hosts {
        config.known_hosts = known_hosts.clone();
    }
    config.host_key_policy = host_key_policy(args);
    config.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    Ok(SshHost::new(config))
}

fn targets(args: &PreflightArgs) -> anyhow::Result<Vec<PreflightTarget<AnyHost>>> {
    if args.local {
        return Ok(vec![PreflightTarget {
            host: LocalHost::new("localhost").into(),
            roles: roles_from_args(&args.roles),
        }]);
    }
    let specs = match (&args.inventory, &args.host) {
        (Some(path), _) => {
            let all = load_inventory(path)?;
            if args.only.is_empty() {
                all
            } else {
                for wanted in &args.only {
                    if !all.iter().any(|h| &h.name == wanted) {
                        let names: Vec<&str> = all.iter().map(|h| h.name.as_str()).collect();
                        bail!(
                            "--only {wanted}: no such host in {} (hosts: {})",
                            path.display(),
                            names.join(", ")
                        );
                    }
                }
                all.into_iter()
                    .filter(|h| args.only.contains(&h.name))
                    .collect()
            }
        }
        (None, Some(address)) => vec![HostSpec {
            name: address.clone(),
            address: address.clone(),
            user: args.ssh_user.clone(),
            port: args.ssh_port,
            key: args.ssh_key.clone(),
            sudo: None,
            password_env: None,
            roles: roles_from_args(&args.roles),
        }],
        (None, None) => bail!("give an inventory (-i FILE), --host ADDRESS or --local"),
    };
    specs
        .iter()
        .map(|spec| {
            Ok(PreflightTarget {
                host: ssh_host(spec, args)?.into(),
                roles: spec.roles,
            })
        })
        .collect()
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
        args.concurrency,
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
        let hosts = load_inventory(&path).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].name, "node1");
        assert_eq!(hosts[0].key, Some(dir.path().join("keys/id_ed25519")));
        assert!(hosts[0].roles.control_plane && hosts[0].roles.etcd && !hosts[0].roles.worker);
        assert_eq!(hosts[1].name, "10.88.0.12");
        assert_eq!(hosts[1].user, "admin");
        assert_eq!(hosts[1].sudo, Some(true));
        assert!(hosts[1].roles.worker);
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
        let err = format!("{:#}", load_inventory(&path).unwrap_err());
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

    #[test]
    fn policy_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: PreflightArgs,
        }
        let cli = Cli::parse_from(["x", "--host", "10.0.0.1", "--accept-new-host-keys"]);
        assert_eq!(host_key_policy(&cli.args), HostKeyPolicy::AcceptNew);
        let cli = Cli::parse_from(["x", "--local"]);
        assert_eq!(host_key_policy(&cli.args), HostKeyPolicy::Strict);
        assert!(Cli::try_parse_from(["x"]).is_err());
        assert!(Cli::try_parse_from([
            "x",
            "--host",
            "h",
            "--accept-new-host-keys",
            "--insecure-ignore-host-keys"
        ])
        .is_err());
    }
}
