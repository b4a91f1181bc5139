//! Why a component could not start, or had to stop.

use std::path::PathBuf;

/// A start-up or leadership failure shared by every component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The kubeconfig could not be read or used.
    #[error("cannot load kubeconfig {}: {message}; check --kubeconfig points at a readable kubeconfig with this component's credentials (kubeadm layout: /etc/kubernetes/<component>.conf)", display_path(path))]
    Kubeconfig {
        /// The file (empty when the configuration was inferred from the environment).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No API client could be built from a loaded configuration.
    #[error("cannot create an API client: {0}")]
    Client(#[source] kube::Error),
    /// The /healthz listener could not be bound.
    #[error("cannot serve /healthz on {address}: {source}; is another instance running? Pick a free --bind-address/--secure-port (--secure-port=0 disables it)")]
    Healthz {
        /// `--bind-address:--secure-port`.
        address: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// The self-signed /healthz certificate or TLS configuration could not be made.
    #[error("cannot set up TLS for /healthz: {0}")]
    HealthzTls(String),
    /// SIGTERM/SIGINT handlers could not be installed.
    #[error("cannot install SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The component's main work ended abnormally (a panic).
    #[error("the component's work stopped: {0}")]
    WorkFailed(String),
    /// The `--leader-elect-*` timings are inconsistent.
    #[error("invalid leader election flags: {0}")]
    LeaderElectionFlags(String),
    /// Leadership was lost (no renewal within the renew deadline); like kube-scheduler and
    /// kube-controller-manager the process exits so a fresh instance can re-elect.
    #[error("lost leadership of Lease {namespace}/{name}: it was not renewed within the renew deadline ({detail}); exiting so a fresh instance can re-elect")]
    LeaderElectionLost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The last renewal problem.
        detail: String,
    },
}

fn display_path(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        "(from the environment)".to_string()
    } else {
        path.display().to_string()
    }
}
