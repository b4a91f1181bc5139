//! Errors of the controller manager and of single reconciles.

use std::path::PathBuf;

/// Why `kinit controller-manager` stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The kubeconfig could not be read or used.
    #[error("cannot load kubeconfig {path:?}: {message}; check --kubeconfig points at a readable kubeconfig (kubeadm: /etc/kubernetes/controller-manager.conf)")]
    Kubeconfig {
        /// The file (empty when inferred from the environment).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The API client could not be built.
    #[error("cannot build an API client: {0}")]
    Client(#[source] kube::Error),
    /// A flag value is unusable.
    #[error("invalid flag {flag}: {message}")]
    InvalidFlag {
        /// The flag, e.g. `--controllers`.
        flag: &'static str,
        /// What is wrong with it and what is accepted.
        message: String,
    },
    /// `--controllers` named a controller nobody runs.
    #[error("--controllers: unknown controller {0:?}; known controllers: {1}")]
    UnknownController(String, String),
    /// The /healthz listener could not be bound.
    #[error("cannot listen for /healthz on {address}: {source}; is another controller manager running, or pass a free --secure-port (0 disables)")]
    Healthz {
        /// `--bind-address:--secure-port`.
        address: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// The self-signed /healthz certificate could not be made.
    #[error("cannot prepare the /healthz TLS certificate: {0}")]
    HealthzTls(String),
    /// Signal handlers could not be installed.
    #[error("cannot install SIGTERM handler: {0}")]
    Signals(#[source] std::io::Error),
    /// Leadership was lost; like kube-controller-manager the process must exit and restart.
    #[error("lost leadership of Lease {namespace}/{name}: {detail}; exiting so a fresh instance can re-elect")]
    LeaderElectionLost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The last renewal problem.
        detail: String,
    },
    /// A controller stopped unexpectedly.
    #[error("controller {name} stopped: {message}")]
    ControllerStopped {
        /// The controller (`deployment`, `node-ipam`, …).
        name: String,
        /// Why.
        message: String,
    },
}

/// Why one reconcile failed; the object is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What was attempted, e.g. `create pod for replicaset default/web-abc`.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object is malformed in a way validation should have caught.
    #[error("{0}")]
    Invalid(String),
}

impl ReconcileError {
    /// Adapter for `map_err`: wraps a kube error with what was attempted.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
        let action = action.into();
        move |source| ReconcileError::Api { action, source }
    }
}

pub use kinit_rules::errors::{is_conflict, is_not_found};
