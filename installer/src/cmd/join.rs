//! `kinit join ENDPOINT --token T --discovery-token-ca-cert-hash sha256:H`, run as root on the
//! new worker: discovery, TLS bootstrap, then the installer's phases on this machine.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use kinit::bootstrap::NodeState;
use kinit::converge::{converge, run_id, ConvergeOptions};
use kinit::join::{
    bootstrap_node, check_name_is_free, discover, existing_credentials, validate_node_name,
    worker_files,
};
use kinit::output::{emit, OutputFormat};
use kinit::phases::{Binary, HostTarget};
use kinit_executor::LocalHost;
use serde::Serialize;

/// `kinit join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The API server endpoint, `host:port` (as printed by `kinit token create
    /// --print-join-command`).
    pub endpoint: String,

    /// Bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
    #[arg(long)]
    pub token: String,

    /// `sha256:<hex>` of the cluster CA's public key; repeat to accept several.
    #[arg(
        long = "discovery-token-ca-cert-hash",
        value_name = "HASH",
        required = true
    )]
    pub ca_hashes: Vec<String>,

    /// Node name [default: this machine's hostname].
    #[arg(long)]
    pub node_name: Option<String>,

    /// Node IP [default: the address this machine reaches the endpoint from].
    #[arg(long)]
    pub node_ip: Option<IpAddr>,

    /// The kinit binary to install [default: this program].
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,

    /// Take over the name of a Ready Node at another address.
    #[arg(long)]
    pub force: bool,

    /// Skip the preflight checks on a machine kinit has not installed yet.
    #[arg(long)]
    pub skip_preflight: bool,

    /// Seconds to wait for each certificate, the pod CIDR and the node to be Ready.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub wait_timeout: u64,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Serialize)]
struct JoinReport {
    node: String,
    node_ip: IpAddr,
    server: String,
    pod_cidr: String,
    phases: Vec<String>,
    state: NodeState,
    seconds: f64,
}

/// The local address the kernel would use towards `endpoint` (a connected UDP socket sends
/// nothing).
fn source_ip(endpoint: &str) -> anyhow::Result<IpAddr> {
    use std::net::ToSocketAddrs;
    let target = endpoint
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {endpoint}"))?
        .next()
        .with_context(|| format!("{endpoint} resolves to no address"))?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

fn table(report: &JoinReport) -> String {
    format!(
        "node {} ({}) joined {}: {}\n  pod CIDR {}\n  phases: {}\n  took {:.1}s",
        report.node,
        report.node_ip,
        report.server,
        report.state,
        report.pod_cidr,
        if report.phases.is_empty() {
            "none (already installed)".to_string()
        } else {
            report.phases.join(", ")
        },
        report.seconds
    )
}

async fn join(args: &JoinArgs) -> anyhow::Result<JoinReport> {
    let started = Instant::now();
    let timeout = Duration::from_secs(args.wait_timeout);
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("cannot read this machine's hostname; pass --node-name")?
            .trim()
            .to_lowercase(),
    };
    validate_node_name(&node).map_err(anyhow::Error::msg)?;
    if std::path::Path::new("/etc/kubernetes/manifests/kube-apiserver.yaml").exists() {
        bail!("this machine runs a kinit control plane; workers join, control planes are managed with `kinit apply` (or `kinit reset` it first)");
    }
    let ip = match args.node_ip {
        Some(ip) => ip,
        None => source_ip(&args.endpoint)?,
    };
    let say = |m: &str| {
        if args.output == OutputFormat::Table {
            eprintln!("[join] {m}");
        }
    };
    let local = LocalHost::new(&node);
    let managed = std::path::Path::new(kinit::sync::STATE_ROOT)
        .join(kinit::sync::MANAGED_LIST)
        .exists();
    if !managed && !args.skip_preflight {
        say("preflight");
        let roles = kinit_executor::preflight::HostRoles {
            control_plane: false,
            etcd: false,
            worker: true,
        };
        let report = kinit_executor::preflight::check_host(
            &local,
            &roles,
            &kinit_executor::preflight::PreflightOptions::default(),
        )
        .await;
        if report.has_failures() {
            let failed: Vec<String> = report
                .checks
                .iter()
                .filter(|c| c.status == kinit_executor::preflight::CheckStatus::Fail)
                .map(|c| {
                    format!(
                        "{}: {}{}",
                        c.check,
                        c.message,
                        c.fix
                            .as_deref()
                            .map(|f| format!(" (fix: {f})"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            bail!(
                "preflight failed; fix these (or pass --skip-preflight) and re-run:\n  {}",
                failed.join("\n  ")
            );
        }
    }
    say(&format!("discovering the cluster at {}", args.endpoint));
    let (discovered, bootstrap) = discover(&args.endpoint, &args.token, &args.ca_hashes).await?;
    say(&format!(
        "cluster {:?}, API {}; requesting certificates for node {node} ({ip})",
        discovered.cluster.cluster_name, discovered.server
    ));
    check_name_is_free(&bootstrap, &node, ip, args.force).await?;
    let existing = existing_credentials(&discovered.ca_pem, &node, ip);
    let boot = bootstrap_node(&bootstrap, &discovered, &node, ip, timeout, &existing).await?;
    say(&format!("pod CIDR {}; installing", boot.pod_cidr));
    let files = worker_files(&discovered, &node, ip, &boot)?;
    let binary_path = match &args.binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this kinit binary")?,
    };
    let binary = Binary::load(&binary_path)
        .with_context(|| format!("cannot read the kinit binary {}", binary_path.display()))?;
    let admin_box = crate::cmd::apply::admin_box_archive(
        std::path::Path::new(kinit_images::admin_box::DEFAULT_BUSYBOX),
        std::path::Path::new(kinit::sync::STATE_ROOT),
    )?;
    let hosts = vec![(
        local,
        HostTarget {
            binary,
            files,
            admin_box,
        },
    )];
    let outcome = converge(
        &hosts,
        ConvergeOptions {
            concurrency: 1,
            dry_run: false,
            progress: false,
        },
        &run_id(),
    )
    .await
    .remove(0);
    if let Some(e) = &outcome.error {
        bail!("installing on {node} failed: {e}; fix it and run the same join again");
    }
    let phases = outcome.ran.iter().map(|p| p.title().to_string()).collect();
    say("waiting for the node to be Ready");
    let state =
        kinit::bootstrap::wait_for_nodes(&boot.client, std::slice::from_ref(&node), timeout)
            .await?
            .remove(&node)
            .unwrap_or(NodeState::Missing);
    Ok(JoinReport {
        node,
        node_ip: ip,
        server: discovered.server,
        pod_cidr: boot.pod_cidr.to_string(),
        phases,
        state,
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// Runs `kinit join`.
pub fn run(args: JoinArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(join(&args))?;
    emit(&report, args.output, table)?;
    Ok(if report.state == NodeState::Ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_address_towards_loopback_is_loopback() {
        assert_eq!(
            source_ip("127.0.0.1:6443").unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
    }
}
