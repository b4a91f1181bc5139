//! kinit's cluster DNS (`kinit dns`), the CoreDNS role: it reads a CoreDNS Corefile (the
//! `coredns` ConfigMap), answers the cluster zone from Services, EndpointSlices, Namespaces
//! and Pods per the Kubernetes DNS specification, and forwards everything else upstream with
//! a cache. `/health`, `/ready` and authenticated HTTPS `/metrics` come with it.
//!
//! Modules: [`corefile`] parses the configuration, [`records`] turns cluster objects into
//! prepared answers, [`wire`] reads queries and writes responses, [`cache`] and [`forward`]
//! handle non-cluster names, [`watch`] follows the API, [`metrics`] and [`http`] the
//! endpoints, [`server`] ties them together.

#![warn(missing_docs)]

pub mod cache;
pub mod corefile;
pub mod forward;
pub mod http;
pub mod metrics;
pub mod records;
pub mod server;
pub mod watch;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub use forward::ForwardTimeouts;
pub use records::ClusterSnapshot;
pub use server::{DnsServer, ServerOptions};
pub use watch::ClusterSource;

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The Corefile could not be read.
    #[error("reading the Corefile {}: {source}; check --conf and that the coredns ConfigMap is mounted there", path.display())]
    ReadCorefile {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Corefile does not parse.
    #[error("{}: {source}", path.display())]
    Corefile {
        /// Its path.
        path: PathBuf,
        /// The problem and its line.
        source: corefile::CorefileError,
    },
    /// A resolv.conf named by `forward` could not be used.
    #[error("forward (Corefile line {line}): upstreams from {}: {message}", path.display())]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The `forward` line.
        line: usize,
        /// What went wrong.
        message: String,
    },
    /// A listener could not be bound.
    #[error(
        "binding the {what} listener on {addr}: {source}; is the port taken by another process?"
    )]
    Bind {
        /// Which listener.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No Kubernetes client could be made.
    #[error("connecting to the Kubernetes API: {0}; pass --kubeconfig or run in a pod with a service account")]
    Kube(String),
    /// The metrics registry failed.
    #[error("setting up metrics: {0}")]
    Metrics(String),
    /// The metrics endpoint's TLS setup failed.
    #[error("setting up TLS for metrics: {0}")]
    Tls(String),
    /// Start-up failed (signal handlers).
    #[error(transparent)]
    Component(#[from] kinit_component_base::ComponentError),
}

/// Flags of `kinit dns`.
#[derive(clap::Args, Debug, Clone)]
pub struct DnsArgs {
    /// The Corefile (CoreDNS syntax), normally the `coredns` ConfigMap's key.
    #[arg(long, default_value = "/etc/coredns/Corefile")]
    pub conf: PathBuf,
    /// Kubeconfig to reach the API; default: in-cluster service account (or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Port of `/health` when the Corefile's `health` gives no address.
    #[arg(long, default_value_t = 8080)]
    pub health_port: u16,
    /// Port of `/ready` when the Corefile's `ready` gives no address.
    #[arg(long, default_value_t = 8181)]
    pub ready_port: u16,
    /// Address the DNS listeners bind (default: all addresses).
    #[arg(long)]
    pub listen_address: Option<IpAddr>,
    /// Use this DNS port for every server block instead of the Corefile's.
    #[arg(long)]
    pub dns_port: Option<u16>,
    /// UDP receive loops per port (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub udp_workers: usize,
}

/// Runs `kinit dns` until SIGTERM or Ctrl-C, then keeps serving for the `health` plugin's
/// lameduck time and stops.
pub async fn run(args: DnsArgs) -> Result<(), DnsError> {
    let signals = kinit_component_base::ShutdownSignals::install()?;
    let client = kinit_component_base::client(args.kubeconfig.as_deref())
        .await
        .map_err(|e| DnsError::Kube(e.to_string()))?;
    let mut opts = ServerOptions::new(&args.conf, ClusterSource::Kube(client));
    opts.health_addr = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), args.health_port);
    opts.ready_addr = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), args.ready_port);
    opts.listen_ip = args.listen_address;
    opts.dns_port = args.dns_port;
    opts.udp_workers = args.udp_workers;
    let server = DnsServer::start(opts).await?;
    signals.recv().await;
    let lameduck = server.lameduck();
    if !lameduck.is_zero() {
        tracing::info!("shutting down after the lameduck period of {lameduck:?}");
        tokio::time::sleep(lameduck).await;
    }
    server.shutdown().await;
    Ok(())
}
