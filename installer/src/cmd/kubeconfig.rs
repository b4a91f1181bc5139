//! `kinit kubeconfig`: a client kubeconfig for a user, signed by the cluster CA (like
//! `kubeadm kubeconfig user`). RBAC then decides what the user and groups may do.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use kinit_pki::{
    client_kubeconfig, default_kubeconfig_dir, write_kubeconfig, CaKind, CertificateAuthority,
    KeyAlgorithm, Kubeconfig,
};

/// `kinit kubeconfig`.
#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// User name: the certificate's common name.
    #[arg(long)]
    pub user: String,
    /// Group (certificate organization); repeat or comma-separate.
    #[arg(long = "group", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Directory with the cluster CA (ca.crt, ca.key).
    #[arg(long, value_name = "DIR", default_value = "/etc/kubernetes/pki")]
    pub cert_dir: PathBuf,
    /// API server URL [default: the server of admin.conf next to --cert-dir].
    #[arg(long)]
    pub server: Option<String>,
    /// Certificate lifetime in days.
    #[arg(long, default_value_t = 365)]
    pub validity_days: u32,
    /// Key algorithm: ecdsa-p256 or rsa-2048.
    #[arg(long, default_value = "ecdsa-p256")]
    pub key_algorithm: KeyAlgorithm,
    /// Write the kubeconfig here (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `kinit kubeconfig`.
pub fn run(args: KubeconfigArgs) -> anyhow::Result<ExitCode> {
    if args.user.trim().is_empty() {
        bail!("--user must not be empty");
    }
    if args.validity_days == 0 {
        bail!("--validity-days must be at least 1");
    }
    let admin_path = default_kubeconfig_dir(&args.cert_dir).join("admin.conf");
    let (server, cluster_name) = match &args.server {
        Some(server) => (server.clone(), "kinit".to_string()),
        None => {
            let admin = Kubeconfig::load(&admin_path).with_context(|| {
                format!(
                    "cannot find the API server URL in {}; pass --server https://HOST:PORT",
                    admin_path.display()
                )
            })?;
            let cluster = admin.current_cluster().with_context(|| {
                format!(
                    "{} has no current cluster; pass --server https://HOST:PORT",
                    admin_path.display()
                )
            })?;
            (cluster.cluster.server.clone(), cluster.name.clone())
        }
    };
    let ca = CertificateAuthority::load(&args.cert_dir, CaKind::Kubernetes).with_context(|| {
        format!(
            "cannot load the cluster CA from {}; run on a control plane or pass --cert-dir",
            args.cert_dir.display()
        )
    })?;
    let kubeconfig = client_kubeconfig(
        &ca,
        &cluster_name,
        &server,
        &args.user,
        &args.groups,
        time::Duration::days(args.validity_days.into()),
        args.key_algorithm,
    )
    .with_context(|| format!("cannot sign a client certificate for {}", args.user))?;
    match &args.out {
        Some(path) => {
            write_kubeconfig(path, &kubeconfig)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote {} for user {} (groups: {})",
                path.display(),
                args.user,
                if args.groups.is_empty() {
                    "none".to_string()
                } else {
                    args.groups.join(", ")
                }
            );
        }
        None => print!("{}", kubeconfig.to_yaml()?),
    }
    Ok(ExitCode::SUCCESS)
}
