//! `kinit certs generate|check-expiration|renew`: the cluster PKI in a local directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use comfy_table::{presets::NOTHING, Table};
use kinit_pki::{
    check_expiration, default_kubeconfig_dir, generate, renew, write_node_kubeconfig, CertState,
    CertificateStatus, ControlPlaneNode, FileAction, GenerateReport, KeyAlgorithm, PkiSpec,
    RenewReport, RenewTarget,
};

use kinit::cluster;
use kinit::output::{emit, OutputFormat};

/// Arguments of `kinit certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

/// `kinit certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CAs, certificates, keys and kubeconfigs; reuse whatever valid ones exist.
    Generate(GenerateArgs),
    /// List every certificate and kubeconfig with its expiry, like kubeadm.
    CheckExpiration(CheckArgs),
    /// Re-issue certificates with their existing keys, subjects and SANs (backs up the old ones).
    Renew(RenewArgs),
}

/// Where the PKI and kubeconfigs live.
#[derive(Debug, Args)]
pub struct DirArgs {
    /// Certificate directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes/pki")]
    pub cert_dir: PathBuf,
    /// Kubeconfig directory [default: the parent of --cert-dir].
    #[arg(long, value_name = "DIR")]
    pub kubeconfig_dir: Option<PathBuf>,
}

impl DirArgs {
    fn kubeconfig_dir(&self) -> PathBuf {
        self.kubeconfig_dir
            .clone()
            .unwrap_or_else(|| default_kubeconfig_dir(&self.cert_dir))
    }
}

/// Arguments of `kinit certs generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Take cluster settings and control-plane hosts from this inventory; flags below then only
    /// add extra SANs.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Cluster name used in kubeconfigs.
    #[arg(long, default_value = "kubernetes", conflicts_with = "inventory")]
    pub cluster_name: String,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local", conflicts_with = "inventory")]
    pub dns_domain: String,
    /// Service CIDR (its first address becomes an API server SAN).
    #[arg(long, default_value = "10.96.0.0/12", conflicts_with = "inventory")]
    pub service_cidr: String,
    /// `host[:port]` clients use to reach the API [default: the node IP, port 6443].
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "inventory")]
    pub control_plane_endpoint: Option<String>,
    /// Name of this control-plane node.
    #[arg(
        long,
        conflicts_with = "inventory",
        required_unless_present = "inventory"
    )]
    pub node_name: Option<String>,
    /// Addresses of this control-plane node (repeat or comma-separate; first = advertise address).
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "inventory",
        required_unless_present = "inventory"
    )]
    pub node_ip: Vec<std::net::IpAddr>,
    /// Extra API server SANs: IP addresses or DNS names (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', value_name = "SAN")]
    pub apiserver_cert_extra_sans: Vec<String>,
    /// CA validity in days.
    #[arg(long, default_value_t = 3650, conflicts_with = "inventory")]
    pub ca_validity_days: u32,
    /// Leaf certificate validity in days.
    #[arg(long, default_value_t = 365, conflicts_with = "inventory")]
    pub cert_validity_days: u32,
    /// Key algorithm for new keys: ecdsa-p256 or rsa-2048.
    #[arg(long, default_value = "ecdsa-p256", conflicts_with = "inventory")]
    pub key_algorithm: KeyAlgorithm,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `kinit certs check-expiration`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `kinit certs renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// `all`, or one certificate by kubeadm name (apiserver, admin.conf, etcd-server, ...).
    pub target: RenewTarget,
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Validity of the renewed certificates in days (capped at the CA's expiry).
    #[arg(long, default_value_t = 365)]
    pub cert_validity_days: u32,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Runs `kinit certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertsCommand::Generate(args) => run_generate(args),
        CertsCommand::CheckExpiration(args) => run_check(args),
        CertsCommand::Renew(args) => run_renew(args),
    }
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let mut spec = match &args.inventory {
        Some(path) => {
            let inventory = kinit_inventory::Inventory::from_path(path)?;
            cluster::pki_spec(
                &inventory,
                &args.dirs.cert_dir,
                Some(args.dirs.kubeconfig_dir()),
            )?
        }
        None => {
            let Some(node_name) = args.node_name.clone() else {
                bail!("give --node-name and --node-ip, or an inventory with -i FILE");
            };
            PkiSpec {
                pki_dir: args.dirs.cert_dir.clone(),
                kubeconfig_dir: Some(args.dirs.kubeconfig_dir()),
                cluster_name: args.cluster_name.clone(),
                dns_domain: args.dns_domain.clone(),
                service_cidr: args.service_cidr.clone(),
                control_plane_endpoint: args.control_plane_endpoint.clone(),
                nodes: vec![ControlPlaneNode {
                    name: node_name,
                    ips: args.node_ip.clone(),
                }],
                extra_sans: Vec::new(),
                ca_validity_days: args.ca_validity_days,
                leaf_validity_days: args.cert_validity_days,
                key_algorithm: args.key_algorithm,
            }
        }
    };
    spec.extra_sans
        .extend(args.apiserver_cert_extra_sans.iter().cloned());
    let mut report = generate(&spec).with_context(|| {
        format!(
            "cannot generate the PKI in {}; fix the cause above and re-run (existing valid files are reused)",
            spec.pki_dir.display()
        )
    })?;
    // Like kubeadm init, the node named on the command line also gets its agent kubeconfig.
    // With an inventory, `kinit config render` writes one per host instead.
    if args.inventory.is_none() {
        if let Some(node) = spec.nodes.first() {
            let kubelet = write_node_kubeconfig(&spec, &node.name, &spec.kubeconfig_dir())
                .with_context(|| {
                    format!("cannot write the agent kubeconfig of node {}", node.name)
                })?;
            report.files.push(kubelet);
        }
    }
    emit(&report, args.output, generate_table)?;
    Ok(ExitCode::SUCCESS)
}

fn generate_table(report: &GenerateReport) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(["FILE", "ACTION", "REASON"]);
    for file in &report.files {
        let action = match file.action {
            FileAction::Created => "created",
            FileAction::Reused => "reused",
            FileAction::Regenerated => "regenerated",
        };
        table.add_row([
            file.path.display().to_string(),
            action.to_string(),
            file.reason.clone().unwrap_or_default(),
        ]);
    }
    let mut out = table.to_string();
    if let Some(dir) = &report.backup_dir {
        out.push_str(&format!(
            "\nreplaced files were backed up to {}",
            dir.display()
        ));
    }
    out
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let kubeconfig_dir = args.dirs.kubeconfig_dir();
    if !args.dirs.cert_dir.is_dir() {
        bail!(
            "certificate directory {} does not exist; pass --cert-dir, or run `kinit certs generate` first",
            args.dirs.cert_dir.display()
        );
    }
    let report = check_expiration(&args.dirs.cert_dir, &kubeconfig_dir);
    emit(&report, args.output, |r| {
        format!(
            "{}\n\n{}",
            status_table(&r.certificates, true),
            status_table(&r.certificate_authorities, false)
        )
    })?;
    let broken = report
        .certificates
        .iter()
        .chain(&report.certificate_authorities)
        .any(|c| matches!(c.state, CertState::Expired | CertState::Invalid));
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// kubeadm's check-expiration layout: one table for certificates, one for authorities.
fn status_table(rows: &[CertificateStatus], leaves: bool) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING);
    if leaves {
        table.set_header([
            "CERTIFICATE",
            "EXPIRES",
            "RESIDUAL TIME",
            "CERTIFICATE AUTHORITY",
            "EXTERNALLY MANAGED",
        ]);
    } else {
        table.set_header([
            "CERTIFICATE AUTHORITY",
            "EXPIRES",
            "RESIDUAL TIME",
            "EXTERNALLY MANAGED",
        ]);
    }
    for row in rows {
        let expires = match (&row.state, row.expires) {
            (CertState::Missing, _) => "<missing>".to_string(),
            (CertState::Invalid, _) => format!(
                "<invalid: {}>",
                row.error.as_deref().unwrap_or("unreadable")
            ),
            (_, Some(t)) => format_expiry(t),
            (_, None) => String::new(),
        };
        let residual = row.residual_time.clone().unwrap_or_default();
        let managed = if row.externally_managed { "yes" } else { "no" }.to_string();
        if leaves {
            let ca = row
                .certificate_authority
                .map(|c| c.name().to_string())
                .unwrap_or_default();
            table.add_row([row.name.clone(), expires, residual, ca, managed]);
        } else {
            table.add_row([row.name.clone(), expires, residual, managed]);
        }
    }
    table.to_string()
}

/// `Jan 02, 2027 15:04 UTC`, kubeadm's format.
fn format_expiry(t: time::OffsetDateTime) -> String {
    let format =
        time::macros::format_description!("[month repr:short] [day], [year] [hour]:[minute] UTC");
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| t.to_string())
}

fn run_renew(args: RenewArgs) -> anyhow::Result<ExitCode> {
    if args.cert_validity_days == 0 {
        bail!("--cert-validity-days must be at least 1");
    }
    let validity = time::Duration::days(i64::from(args.cert_validity_days));
    let report = renew(
        &args.dirs.cert_dir,
        &args.dirs.kubeconfig_dir(),
        args.target,
        validity,
    )
    .with_context(|| {
        format!(
            "cannot renew {} in {}; nothing was changed",
            args.target,
            args.dirs.cert_dir.display()
        )
    })?;
    emit(&report, args.output, renew_table)?;
    Ok(ExitCode::SUCCESS)
}

fn renew_table(report: &RenewReport) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(["CERTIFICATE", "OLD EXPIRY", "NEW EXPIRY"]);
    for r in &report.renewed {
        table.add_row([
            r.name.as_str().to_string(),
            format_expiry(r.old_expires),
            format_expiry(r.new_expires),
        ]);
    }
    let mut out = table.to_string();
    for s in &report.skipped {
        out.push_str(&format!("\nskipped {}: {}", s.name.as_str(), s.reason));
    }
    if let Some(dir) = &report.backup_dir {
        out.push_str(&format!("\nold files were backed up to {}", dir.display()));
    }
    out.push_str("\n\nRestart the control-plane components (or let the agent restart static pods) to use the renewed certificates.");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_formatted_like_kubeadm() {
        let t = time::macros::datetime!(2027-01-02 15:04 UTC);
        assert_eq!(format_expiry(t), "Jan 02, 2027 15:04 UTC");
    }

    #[test]
    fn authority_table_has_no_ca_column() {
        let row = CertificateStatus {
            name: "ca".into(),
            path: "/x/ca.crt".into(),
            state: CertState::Missing,
            expires: None,
            residual_time: None,
            certificate_authority: None,
            externally_managed: false,
            error: None,
        };
        let authorities = status_table(std::slice::from_ref(&row), false);
        let header = authorities.lines().next().unwrap();
        assert!(
            header.trim_start().starts_with("CERTIFICATE AUTHORITY"),
            "{authorities}"
        );
        assert_eq!(header.matches("CERTIFICATE").count(), 1, "{authorities}");
        assert!(authorities.contains("<missing>"));

        let leaves = status_table(&[row], true);
        let header = leaves.lines().next().unwrap();
        assert_eq!(header.matches("CERTIFICATE").count(), 2, "{leaves}");
    }
}
