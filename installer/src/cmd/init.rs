//! `kinit init`: a one-host cluster — a control plane on `--host ADDRESS` over SSH, or on this
//! machine with `--local` — then a bootstrap token and the `kinit join` command for workers.
//! It is the `apply` workflow ([`kinit::apply`]) on a one-host inventory built from the flags
//! (cluster settings from `--config`, an inventory file whose `spec.cluster` is used), with the
//! same `--only`/`--skip-phases`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kinit::bootstrap::{secret_field, token_valid_at};
use kinit::client;
use kinit::output::emit;
use kinit_executor::LocalHost;
use kinit_inventory::{ClusterConfig, Inventory, InventorySpec, Metadata, Role};
use kube::api::PostParams;
use serde::Serialize;

use kinit::apply::{apply, ApplyReport};

use crate::cmd::apply::{table as apply_table, with_entries, ApplySettings};
use crate::cmd::hosts::{HostArgs, Selected};
use crate::cmd::token::{generate_token, join_command, token_secret, Usage, DEFAULT_GROUP};

/// `kinit init`.
#[derive(Debug, Args)]
// `--only` picks phases, as for `apply`.
#[command(mut_arg("only", |a| a.long("only-hosts")))]
pub struct InitArgs {
    #[command(flatten)]
    pub hosts: HostArgs,

    #[command(flatten)]
    pub settings: ApplySettings,

    /// Cluster settings: an inventory file (e.g. from `kinit config print init-defaults`)
    /// whose `spec.cluster` is used; its hosts are ignored [default: kinit's defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Node name [default: the --host address, or this machine's hostname with --local].
    #[arg(long)]
    pub node_name: Option<String>,

    /// Node IP for cluster traffic [default: the --host address; required with --local].
    #[arg(long)]
    pub node_ip: Option<IpAddr>,

    /// Let the control plane run workloads too (no control-plane taint).
    #[arg(long)]
    pub schedule_workloads: bool,

    /// Lifetime of the join token printed at the end, e.g. 24h; 0 never expires.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
}

#[derive(Debug, Serialize)]
struct InitReport {
    #[serde(flatten)]
    apply: ApplyReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    join_command: Option<String>,
}

/// The one-host inventory `init` applies.
fn inventory(args: &InitArgs) -> anyhow::Result<Inventory> {
    if args.hosts.inventory.is_some() {
        bail!("kinit init sets up one host from flags; for an inventory use `kinit apply -i FILE`");
    }
    let cluster = match &args.config {
        Some(path) => Inventory::from_path(path)?.spec.cluster,
        None => ClusterConfig::default(),
    };
    let (name, address, node_ip) = match (&args.hosts.host, args.hosts.local) {
        (Some(address), _) => (
            args.node_name.clone().unwrap_or_else(|| address.clone()),
            address.clone(),
            args.node_ip,
        ),
        (None, true) => {
            let ip = args.node_ip.context(
                "--local needs --node-ip: the address other nodes reach this machine at",
            )?;
            let name = match &args.node_name {
                Some(n) => n.clone(),
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .context("cannot read the hostname; pass --node-name")?
                    .trim()
                    .to_string(),
            };
            (name, ip.to_string(), None)
        }
        (None, false) => bail!("give --host ADDRESS (over SSH) or --local"),
    };
    let mut roles = vec![Role::ControlPlane];
    if args.schedule_workloads {
        roles.push(Role::Worker);
    }
    let mut host = kinit_inventory::Host::new(&name, &address, &roles);
    host.ssh.user = args.hosts.ssh_user.clone();
    host.ssh.port = args.hosts.ssh_port;
    host.ssh.key_path = args.hosts.ssh_key.clone();
    host.ssh.sudo = args.hosts.ssh_user != "root";
    host.private_address = node_ip;
    let inventory = Inventory {
        api_version: kinit_inventory::API_VERSION.into(),
        kind: kinit_inventory::KIND.into(),
        metadata: Metadata {
            name: cluster.cluster_name.clone(),
        },
        spec: InventorySpec {
            hosts: vec![host],
            cluster,
        },
    };
    inventory
        .validate()
        .context("the settings from the flags and --config do not make a valid cluster")?;
    Ok(inventory)
}

/// Description of the tokens `init` creates; a re-run reuses one that is still valid.
const INIT_TOKEN_DESCRIPTION: &str = "created by kinit init";

/// The token of an earlier `init` that stays valid for at least another hour, if any.
fn reusable_init_token(secrets: &[Secret], now: time::OffsetDateTime) -> Option<String> {
    secrets
        .iter()
        .filter(|s| {
            secret_field(s, "description").as_deref() == Some(INIT_TOKEN_DESCRIPTION)
                && secret_field(s, "usage-bootstrap-signing").as_deref() == Some("true")
                && secret_field(s, "usage-bootstrap-authentication").as_deref() == Some("true")
                && token_valid_at(s, now + time::Duration::hours(1))
        })
        .find_map(|s| {
            Some(format!(
                "{}.{}",
                secret_field(s, "token-id")?,
                secret_field(s, "token-secret")?
            ))
        })
}

/// Creates a join token (or reuses the one an earlier `init` made) and returns the
/// `kinit join` command line.
async fn join_line(admin: &std::path::Path, ttl: Duration) -> anyhow::Result<String> {
    let kube = client::from_kubeconfig(admin).await?;
    let existing = kinit::bootstrap::bootstrap_token_secrets(&kube).await?;
    if let Some(token) = reusable_init_token(&existing, time::OffsetDateTime::now_utc()) {
        return join_command(&kinit_pki::Kubeconfig::load(admin)?, &token);
    }
    let token = generate_token();
    let secret = token_secret(
        &token,
        ttl,
        time::OffsetDateTime::now_utc(),
        Some(INIT_TOKEN_DESCRIPTION),
        &[Usage::Signing, Usage::Authentication],
        &[DEFAULT_GROUP.to_string()],
    )?;
    kube::Api::<Secret>::namespaced(kube.clone(), kinit_auth::BOOTSTRAP_TOKEN_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .context("cannot create the join token")?;
    kinit::bootstrap::resign_cluster_info(&kube)
        .await
        .context("cannot sign cluster-info for the join token")?;
    join_command(&kinit_pki::Kubeconfig::load(admin)?, &token)
}

/// Runs `kinit init`.
pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let inventory = inventory(&args)?;
    let selected = if args.hosts.local {
        vec![Selected {
            host: LocalHost::new(inventory.spec.hosts[0].name.clone()).into(),
            entry: Some(inventory.spec.hosts[0].clone()),
        }]
    } else {
        args.hosts.select_as(Some(&inventory), "--only-hosts")?
    };
    let selected = with_entries(selected)?;
    let options = args.settings.options(1)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let applied = apply(&options, &inventory, selected).await?;
        let join_command = if applied.ok() && !args.settings.dry_run {
            Some(join_line(&applied.admin_kubeconfig, args.token_ttl).await?)
        } else {
            None
        };
        anyhow::Ok(InitReport {
            apply: applied,
            join_command,
        })
    })?;
    emit(&report, args.settings.output, |r| {
        let mut out = apply_table(&r.apply);
        if let Some(line) = &r.join_command {
            out.push_str(&format!(
                "\n\nJoin workers by running this as root on each (token valid {}):\n  {line}",
                humantime::format_duration(args.token_ttl)
            ));
        }
        out
    })?;
    Ok(if report.apply.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InitArgs,
    }

    #[test]
    fn a_remote_host_becomes_a_tainted_control_plane_with_its_ssh_settings() {
        let cli = Cli::parse_from([
            "x",
            "--host",
            "10.0.0.5",
            "--ssh-user",
            "admin",
            "--node-name",
            "cp1",
        ]);
        let inv = inventory(&cli.args).unwrap();
        let host = &inv.spec.hosts[0];
        assert_eq!(host.name, "cp1");
        assert_eq!(host.address, "10.0.0.5");
        assert_eq!(host.roles, [Role::ControlPlane]);
        assert!(host.ssh.sudo, "a non-root user needs sudo");
        assert_eq!(inv.api_endpoint().host, "10.0.0.5");
    }

    #[test]
    fn a_rerun_reuses_the_init_token_while_it_lasts() {
        let now = time::OffsetDateTime::now_utc();
        let make = |description: &str, ttl_hours: u64| {
            let mut secret = token_secret(
                "abcdef.0123456789abcdef",
                Duration::from_secs(ttl_hours * 3600),
                now,
                Some(description),
                &[Usage::Signing, Usage::Authentication],
                &[DEFAULT_GROUP.to_string()],
            )
            .unwrap();
            // As read back from the API: stringData arrives as data.
            secret.data = secret.string_data.take().map(|d| {
                d.into_iter()
                    .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
                    .collect()
            });
            secret
        };
        assert_eq!(
            reusable_init_token(&[make(INIT_TOKEN_DESCRIPTION, 24)], now).as_deref(),
            Some("abcdef.0123456789abcdef")
        );
        assert_eq!(reusable_init_token(&[make("rack 4", 24)], now), None);
        assert_eq!(
            reusable_init_token(
                &[make(INIT_TOKEN_DESCRIPTION, 24)],
                now + time::Duration::hours(24)
            ),
            None,
            "an expiring token is not handed out again"
        );
    }

    #[test]
    fn local_needs_a_node_ip_and_inventories_are_refused() {
        let cli = Cli::parse_from(["x", "--local"]);
        let err = inventory(&cli.args).unwrap_err().to_string();
        assert!(err.contains("--node-ip"), "{err}");
        let cli = Cli::parse_from([
            "x",
            "--local",
            "--node-ip",
            "10.0.0.9",
            "--schedule-workloads",
        ]);
        let inv = inventory(&cli.args).unwrap();
        assert!(inv.spec.hosts[0].has_role(Role::Worker));
        let cli = Cli::parse_from(["x", "-i", "inv.yaml"]);
        let err = inventory(&cli.args).unwrap_err().to_string();
        assert!(err.contains("kinit apply"), "{err}");
    }
}
