//! `kinit apiserver` flags (named like kube-apiserver's) and [`run`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};
use ipnet::IpNet;
use kinit_auth::AuthenticatorConfig;
use kinit_store::{CompactionPolicy, EmbeddedStore, EtcdConfig, EtcdStore, Store};
use tokio::net::TcpListener;

use crate::access::AuthorizationMode;
use crate::error::ApiServerError;
use crate::probes::{self, ComponentStatusConfig};
use crate::server::{ApiServer, ApiServerConfig, TlsMaterial};

/// Flags of `kinit apiserver`.
#[derive(Debug, Clone, Args)]
pub struct ApiServerArgs {
    /// Port to serve HTTPS on.
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Address advertised to cluster members (the `kubernetes` service endpoints); defaults to
    /// --bind-address when that is a specific address.
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// Serving certificate (PEM, leaf first).
    #[arg(long)]
    pub tls_cert_file: PathBuf,
    /// Serving key (PEM).
    #[arg(long)]
    pub tls_private_key_file: PathBuf,
    /// CA bundle for client certificates (CN = user, O = groups).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Public keys that verify service-account tokens (repeatable; `sa.pub`).
    #[arg(long, required = true)]
    pub service_account_key_file: Vec<PathBuf>,
    /// Private key that signs service-account tokens (`sa.key`).
    #[arg(long)]
    pub service_account_signing_key_file: Option<PathBuf>,
    /// Issuer of service-account tokens.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    pub service_account_issuer: String,
    /// Audiences accepted in tokens (comma-separated); defaults to the issuer.
    #[arg(long, value_delimiter = ',')]
    pub api_audiences: Vec<String>,
    /// CIDR service ClusterIPs come from.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: IpNet,
    /// NodePort range, `low-high`.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Authorizers in order (comma-separated): Node, RBAC, AlwaysAllow, AlwaysDeny.
    #[arg(long, default_value = "Node,RBAC", value_delimiter = ',')]
    pub authorization_mode: Vec<AuthorizationMode>,
    /// Accept bootstrap tokens (`kube-system/bootstrap-token-*` secrets).
    #[arg(long, action = ArgAction::Set, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub enable_bootstrap_token_auth: bool,
    /// Let unauthenticated requests through as `system:anonymous` (RBAC still decides).
    #[arg(long, action = ArgAction::Set, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub anonymous_auth: bool,
    /// etcd client URLs (comma-separated); empty means the embedded store in --data-dir.
    #[arg(long, value_delimiter = ',')]
    pub etcd_servers: Vec<String>,
    /// CA of the etcd servers.
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    /// Client certificate the API server presents to node agents (logs, exec, attach,
    /// port-forward); kubeadm's `apiserver-kubelet-client.crt`.
    #[arg(long)]
    pub kubelet_client_certificate: Option<PathBuf>,
    /// Key of --kubelet-client-certificate.
    #[arg(long)]
    pub kubelet_client_key: Option<PathBuf>,
    /// CA that signs the agents' serving certificates; agents are always verified, so pod
    /// logs/exec need all three --kubelet-* files (without them those requests get 503).
    #[arg(long)]
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// Healthz URL of the scheduler that `componentstatuses` probes (certificate not verified).
    #[arg(long, default_value = "https://127.0.0.1:10259/healthz")]
    pub component_status_scheduler_url: String,
    /// Healthz URL of the controller manager that `componentstatuses` probes (certificate not
    /// verified).
    #[arg(long, default_value = "https://127.0.0.1:10257/healthz")]
    pub component_status_controller_manager_url: String,
    /// Directory of the embedded store (one file, `store.redb`).
    #[arg(long, default_value = "/var/lib/kinit/apiserver")]
    pub data_dir: PathBuf,
}

fn read(path: &Path, what: &'static str, flag: &'static str) -> Result<Vec<u8>, ApiServerError> {
    std::fs::read(path).map_err(|source| ApiServerError::ReadFile {
        what,
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// Parses `low-high`.
pub fn parse_port_range(value: &str) -> Result<(u16, u16), ApiServerError> {
    let bad = |reason: &str| ApiServerError::InvalidFlag {
        flag: "service-node-port-range",
        value: value.into(),
        reason: reason.into(),
    };
    let (lo, hi) = value
        .split_once('-')
        .ok_or_else(|| bad("expected low-high, e.g. 30000-32767"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| bad("low end is not a port number"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| bad("high end is not a port number"))?;
    if lo == 0 || lo > hi {
        return Err(bad("low must be at least 1 and not above high"));
    }
    Ok((lo, hi))
}

impl ApiServerArgs {
    /// Reads the files named by the flags into an [`ApiServerConfig`].
    pub fn config(&self) -> Result<ApiServerConfig, ApiServerError> {
        let advertise_address = match self.advertise_address {
            Some(a) => a,
            None if !self.bind_address.is_unspecified() => self.bind_address,
            None => {
                return Err(ApiServerError::InvalidFlag {
                    flag: "advertise-address",
                    value: String::new(),
                    reason: "required when --bind-address is 0.0.0.0 or ::; give the address other hosts reach this server on".into(),
                })
            }
        };
        let mut public_keys = Vec::new();
        for path in &self.service_account_key_file {
            public_keys.push(read(
                path,
                "service-account public key",
                "service-account-key-file",
            )?);
        }
        let signing = match &self.service_account_signing_key_file {
            Some(p) => Some(read(
                p,
                "service-account signing key",
                "service-account-signing-key-file",
            )?),
            None => None,
        };
        if self.authorization_mode.is_empty() {
            return Err(ApiServerError::InvalidFlag {
                flag: "authorization-mode",
                value: String::new(),
                reason: "give at least one mode, e.g. Node,RBAC".into(),
            });
        }
        Ok(ApiServerConfig {
            tls: TlsMaterial {
                cert_chain_pem: read(&self.tls_cert_file, "serving certificate", "tls-cert-file")?,
                private_key_pem: read(
                    &self.tls_private_key_file,
                    "serving key",
                    "tls-private-key-file",
                )?,
                client_ca_pem: match &self.client_ca_file {
                    Some(p) => Some(read(p, "client CA", "client-ca-file")?),
                    None => None,
                },
            },
            advertise_address,
            advertise_port: self.secure_port,
            service_cluster_ip_range: self.service_cluster_ip_range,
            service_node_port_range: parse_port_range(&self.service_node_port_range)?,
            authentication: AuthenticatorConfig {
                service_account_public_keys: public_keys,
                service_account_issuer: self.service_account_issuer.clone(),
                api_audiences: self.api_audiences.clone(),
                enable_bootstrap_tokens: self.enable_bootstrap_token_auth,
            },
            service_account_signing_key_pem: signing,
            authorization_modes: self.authorization_mode.clone(),
            anonymous_auth: self.anonymous_auth,
            node_proxy: self.agent_proxy()?,
            component_status: self.component_status()?,
        })
    }

    /// What `componentstatuses` probes: the two component URLs and, with etcd, each server
    /// (with the etcd CA and client certificate).
    fn component_status(&self) -> Result<ComponentStatusConfig, ApiServerError> {
        let etcd_tls = if self.etcd_servers.is_empty() {
            None
        } else {
            let ca = match &self.etcd_cafile {
                Some(p) => Some(read(p, "etcd CA", "etcd-cafile")?),
                None => None,
            };
            let client = match (&self.etcd_certfile, &self.etcd_keyfile) {
                (Some(c), Some(k)) => Some((
                    read(c, "etcd client certificate", "etcd-certfile")?,
                    read(k, "etcd client key", "etcd-keyfile")?,
                )),
                _ => None,
            };
            Some(probes::etcd_tls(
                ca.as_deref(),
                client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
            )?)
        };
        Ok(ComponentStatusConfig {
            scheduler: self.component_status_scheduler_url.clone(),
            controller_manager: self.component_status_controller_manager_url.clone(),
            etcd_servers: self.etcd_servers.clone(),
            etcd_tls,
        })
    }

    /// The proxy to node agents, when all three --kubelet-* files are given.
    fn agent_proxy(&self) -> Result<Option<Arc<dyn crate::node_proxy::NodeProxy>>, ApiServerError> {
        match (
            &self.kubelet_client_certificate,
            &self.kubelet_client_key,
            &self.kubelet_certificate_authority,
        ) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                let proxy = crate::agent_proxy::AgentProxy::new(
                    &read(cert, "agent client certificate", "kubelet-client-certificate")?,
                    &read(key, "agent client key", "kubelet-client-key")?,
                    &read(ca, "agent CA", "kubelet-certificate-authority")?,
                )?;
                Ok(Some(Arc::new(proxy)))
            }
            _ => Err(ApiServerError::InvalidFlag {
                flag: "kubelet-client-certificate",
                value: String::new(),
                reason: "give --kubelet-client-certificate, --kubelet-client-key and --kubelet-certificate-authority together".into(),
            }),
        }
    }

    /// Opens the store the flags select: etcd when --etcd-servers is set, else the embedded
    /// store in --data-dir (with automatic compaction).
    pub async fn open_store(&self) -> Result<Arc<dyn Store>, ApiServerError> {
        if !self.etcd_servers.is_empty() {
            let config = EtcdConfig {
                endpoints: self.etcd_servers.clone(),
                ca_file: self.etcd_cafile.clone(),
                cert_file: self.etcd_certfile.clone(),
                key_file: self.etcd_keyfile.clone(),
                prefix: String::new(),
                progress_interval: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(30),
            };
            return Ok(Arc::new(EtcdStore::connect(config).await?));
        }
        let store = EmbeddedStore::open(self.data_dir.join("store.redb")).await?;
        store.spawn_compactor(CompactionPolicy::default());
        Ok(Arc::new(store))
    }
}

/// Runs the API server until SIGTERM/SIGINT.
pub async fn run(args: ApiServerArgs) -> Result<(), ApiServerError> {
    let config = args.config()?;
    let store = args.open_store().await?;
    let server = ApiServer::new(config, store).await?;
    let address = std::net::SocketAddr::new(args.bind_address, args.secure_port);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ApiServerError::Bind {
            address: address.to_string(),
            source,
        })?;
    tokio::select! {
        r = server.serve(listener) => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down the API server");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ApiServerArgs,
    }

    #[test]
    fn agent_proxy_needs_all_three_kubelet_files() {
        let cli = Cli::parse_from([
            "x",
            "--tls-cert-file=c",
            "--tls-private-key-file=k",
            "--service-account-key-file=s",
            "--kubelet-client-certificate=/nonexistent/client.crt",
        ]);
        let Err(err) = cli.args.agent_proxy() else {
            panic!("a lone --kubelet-client-certificate must be refused");
        };
        assert!(err.to_string().contains("together"), "{err}");
        let cli = Cli::parse_from([
            "x",
            "--tls-cert-file=c",
            "--tls-private-key-file=k",
            "--service-account-key-file=s",
        ]);
        assert!(cli.args.agent_proxy().unwrap().is_none());
    }

    #[test]
    fn flags_like_kube_apiserver() {
        let cli = Cli::try_parse_from([
            "kinit",
            "--tls-cert-file=/p/apiserver.crt",
            "--tls-private-key-file=/p/apiserver.key",
            "--service-account-key-file=/p/sa.pub",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            "--enable-bootstrap-token-auth",
            "--etcd-servers=https://10.0.0.1:2379,https://10.0.0.2:2379",
            "--advertise-address=10.0.0.1",
        ])
        .unwrap();
        let a = cli.args;
        assert_eq!(a.secure_port, 6443);
        assert_eq!(
            a.authorization_mode,
            vec![AuthorizationMode::Node, AuthorizationMode::Rbac]
        );
        assert!(a.enable_bootstrap_token_auth);
        assert!(!a.anonymous_auth);
        assert_eq!(a.etcd_servers.len(), 2);
        assert_eq!(a.data_dir, PathBuf::from("/var/lib/kinit/apiserver"));
        assert!(Cli::try_parse_from([
            "kinit",
            "--tls-cert-file=a",
            "--tls-private-key-file=b",
            "--service-account-key-file=c",
            "--authorization-mode=ABAC"
        ])
        .is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("30000-32767").unwrap(), (30000, 32767));
        assert!(parse_port_range("32767-30000").is_err());
        assert!(parse_port_range("abc").is_err());
    }

    #[test]
    fn missing_files_name_the_flag() {
        let cli = Cli::try_parse_from([
            "kinit",
            "--tls-cert-file=/nonexistent/apiserver.crt",
            "--tls-private-key-file=/nonexistent/apiserver.key",
            "--service-account-key-file=/nonexistent/sa.pub",
            "--advertise-address=10.0.0.1",
        ])
        .unwrap();
        let err = cli.args.config().unwrap_err().to_string();
        assert!(err.contains("--service-account-key-file"), "{err}");
    }
}
