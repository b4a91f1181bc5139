//! `kinit join ENDPOINT --token T --discovery-token-ca-cert-hash sha256:H`, run as root on the
//! new worker: discovery, TLS bootstrap, then the installer's host phases on this machine. The
//! workflow is [`kinit::join::join_this_machine`]; this module parses the flags and prints.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use clap::Args;
use kinit::bootstrap::NodeState;
use kinit::join::{join_this_machine, JoinOptions, JoinReport};
use kinit::output::{emit, OutputFormat};
use kinit::phases::PhaseSelection;
use kinit_executor::AnyHost;

/// The host phases' names, for `--only`/`--skip-phases` (join runs no cluster phase).
fn host_phase_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        kinit::phases::host_phases::<AnyHost>()
            .into_iter()
            .map(|p| p.name().as_str()),
    )
}

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

    /// Run only these host phases (comma-separate or repeat).
    #[arg(long = "only", value_name = "PHASE", value_delimiter = ',', value_parser = host_phase_names())]
    pub only_phases: Vec<String>,

    /// Run every host phase but these (comma-separate or repeat).
    #[arg(long, value_name = "PHASE", value_delimiter = ',', value_parser = host_phase_names())]
    pub skip_phases: Vec<String>,

    /// Seconds to wait for each certificate, the pod CIDR and the node to be Ready.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub wait_timeout: u64,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: OutputFormat,
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

impl JoinArgs {
    fn options(&self) -> anyhow::Result<JoinOptions> {
        Ok(JoinOptions {
            endpoint: self.endpoint.clone(),
            token: self.token.clone(),
            ca_hashes: self.ca_hashes.clone(),
            node_name: self.node_name.clone(),
            node_ip: self.node_ip,
            binary: self.binary.clone(),
            force: self.force,
            skip_preflight: self.skip_preflight,
            wait_timeout: Duration::from_secs(self.wait_timeout),
            phases: PhaseSelection::new(&self.only_phases, &self.skip_phases)?,
            notify: |message| eprintln!("{message}"),
        })
    }
}

/// Runs `kinit join`.
pub fn run(args: JoinArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = args.options()?;
    let table_output = args.output == OutputFormat::Table;
    let say = move |m: &str| {
        if table_output {
            eprintln!("[join] {m}");
        }
    };
    let report = runtime.block_on(join_this_machine(&options, &say))?;
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
            kinit::join::source_ip("127.0.0.1:6443").unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
    }
}
