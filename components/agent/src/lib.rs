//! kinit's node agent (the kubelet): registers the Node and renews its Lease, runs static pods
//! from the manifest directory and the pods bound to the node through CRI (containerd), with
//! probes, volumes and status, and serves logs/exec to the API server on :10250.
//!
//! Shape: [`run`] wires small parts together. Pod sync ([`pods::sync_pod`]) is a re-runnable
//! reconcile step over a [`runtime::Runtime`]; [`manager::PodManager`] runs one worker per pod;
//! [`apisource`] feeds it the API's pods and reports status; [`static_pods`] feeds it manifests.

pub mod apisource;
pub mod config;
pub mod env;
pub mod etc_hosts;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod manager;
pub mod network;
pub mod node;
pub mod pods;
pub mod probes;
pub mod runtime;
pub mod server;
pub mod sources;
pub mod spec;
pub mod static_pods;
pub mod volumes;

mod agent;

pub use agent::{client_from_kubeconfig, run, Agent};
pub use config::{AgentArgs, AgentConfiguration, Settings};

/// Aborts its tasks when dropped, so a stopped agent leaves no loop behind.
pub(crate) struct AbortOnDrop(pub(crate) Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration (file or flags) is unusable.
    #[error("agent configuration: {0}")]
    Config(String),
    /// The kubeconfig could not be loaded.
    #[error(
        "cannot load the kubeconfig {path}: {message}; the installer writes it (kubelet.conf)"
    )]
    Kubeconfig {
        /// Path.
        path: String,
        /// Why.
        message: String,
    },
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What the agent was doing.
        what: String,
        /// The client error.
        source: Box<kube::Error>,
    },
    /// A container runtime call failed.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// A volume or environment reference could not be prepared.
    #[error("{0}")]
    Volume(String),
    /// The agent's HTTPS server could not start.
    #[error("agent server: {0}")]
    Server(String),
    /// Start-up failed (signal handlers).
    #[error(transparent)]
    Component(#[from] kinit_component_base::ComponentError),
    /// Anything else that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    /// Wraps a kube error with what was being done.
    pub fn api(what: &str, e: kube::Error) -> AgentError {
        AgentError::Api {
            what: what.to_string(),
            source: Box::new(e),
        }
    }
}
