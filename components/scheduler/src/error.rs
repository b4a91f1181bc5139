//! Errors of the scheduler.

use std::path::PathBuf;

/// What stopped the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A flag value is out of range or inconsistent with another.
    #[error("invalid flags: {0}")]
    InvalidArgs(String),
    /// The kubeconfig could not be read or used.
    #[error("cannot load kubeconfig {path}: {message}; check --kubeconfig points at the scheduler's kubeconfig (e.g. /etc/kubernetes/scheduler.conf)")]
    Kubeconfig {
        /// The file (empty when inferred from the environment).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No client could be built from the configuration.
    #[error("cannot create an API client: {0}")]
    Client(#[source] kube::Error),
    /// The healthz endpoint could not be served.
    #[error("cannot serve /healthz on {address}: {source}; pick another --bind-address/--secure-port or free the port (--secure-port=0 disables it)")]
    Healthz {
        /// The address it tried.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS setup for the healthz endpoint failed.
    #[error("cannot set up TLS for /healthz: {0}")]
    HealthzTls(String),
    /// Leader election failed at the API level.
    #[error("leader election through Lease {namespace}/{name} failed: {source}; check the API server is reachable and the scheduler may get/create/update that Lease")]
    LeaderElection {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Leadership was lost (the Lease could not be renewed within the renew deadline); the
    /// process should exit and be restarted, like kube-scheduler.
    #[error("leader election lost: the Lease {namespace}/{name} was not renewed within the renew deadline ({detail})")]
    LeaderElectionLost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// Last renewal problem.
        detail: String,
    },
    /// Waiting for termination signals failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}
