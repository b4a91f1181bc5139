//! Errors of the controller manager and of single reconciles.

/// Why `kinit controller-manager` stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Start-up or leadership failed (kubeconfig, /healthz, signals, lost Lease).
    #[error(transparent)]
    Component(#[from] kinit_component_base::ComponentError),
    /// A cluster controller could not start (bad CIDR, unreadable signing CA, API error).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterControllerError),
    /// `--controllers` named a controller nobody runs.
    #[error("--controllers: unknown controller {0:?}; known controllers: {1}")]
    UnknownController(String, String),
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
