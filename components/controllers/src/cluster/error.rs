//! Errors of the cluster controllers.

use std::path::PathBuf;

/// Why the cluster controllers could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterControllerError {
    /// A `--controllers` entry names no controller.
    #[error("unknown controller {0:?} in --controllers; known: endpoint, endpointslice, namespace, garbage-collector, node-ipam, node-lifecycle, csrapproving, csrsigning")]
    UnknownController(String),
    /// Node IPAM is on but there is nothing to allocate from.
    #[error("--allocate-node-cidrs needs --cluster-cidr (e.g. 10.244.0.0/16)")]
    MissingClusterCidr,
    /// The node mask does not fit the cluster CIDR.
    #[error("node CIDR mask /{mask} does not fit cluster CIDR {cidr}: it must be longer than the cluster prefix and at most /{max}; adjust --node-cidr-mask-size")]
    InvalidNodeMask {
        /// Cluster CIDR.
        cidr: ipnet::IpNet,
        /// Requested mask size.
        mask: u8,
        /// Largest allowed mask for the family.
        max: u8,
    },
    /// Two cluster CIDRs of the same family.
    #[error("--cluster-cidr lists two {family} networks ({first}, {second}); give at most one per IP family")]
    DuplicateFamily {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// First network.
        first: ipnet::IpNet,
        /// Second network.
        second: ipnet::IpNet,
    },
    /// The signing CA could not be loaded.
    #[error("cannot load the cluster signing CA from {cert} and {key}: {source}; check --cluster-signing-cert-file/--cluster-signing-key-file")]
    SigningCa {
        /// Certificate path.
        cert: PathBuf,
        /// Key path.
        key: PathBuf,
        /// Cause.
        source: Box<kinit_pki::PkiError>,
    },
    /// The signing CA has no private key.
    #[error("the cluster signing CA {cert} has no private key at {key}; csrsigning needs it (or disable it with --controllers=*,-csrsigning)")]
    SigningKeyMissing {
        /// Certificate path.
        cert: PathBuf,
        /// Key path.
        key: PathBuf,
    },
    /// A controller ended.
    #[error("the {controller} controller stopped: {reason}")]
    Stopped {
        /// Controller name.
        controller: &'static str,
        /// Why.
        reason: String,
    },
    /// An API call needed to start failed.
    #[error("Kubernetes API request failed: {0}; check the kubeconfig and that the API server is reachable")]
    Kube(#[from] Box<kube::Error>),
}

impl From<kube::Error> for ClusterControllerError {
    fn from(e: kube::Error) -> Self {
        ClusterControllerError::Kube(Box::new(e))
    }
}

/// Why one reconcile failed; the controller logs it and retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was attempted (e.g. `updating endpoints default/web`).
        action: String,
        /// Cause.
        source: kube::Error,
    },
    /// The object cannot be handled as it is.
    #[error("{0}")]
    Invalid(String),
}

impl ReconcileError {
    /// Wraps a kube error with what was being done.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
        let action = action.into();
        move |source| ReconcileError::Kube { action, source }
    }
}
