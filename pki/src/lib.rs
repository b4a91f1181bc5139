//! The cluster PKI, laid out like kubeadm's: certificate authorities, leaf certificates,
//! the service-account key pair and kubeconfigs; expiry checks and renewal.
//!
//! - [`generate`] creates or reuses everything a [`PkiSpec`] describes (safe to re-run).
//! - [`write_node_kubeconfig`] writes a node agent's `kubelet.conf`.
//! - [`check_expiration`] lists every certificate with its expiry, like
//!   `kubeadm certs check-expiration`.
//! - [`renew`] re-issues certificates with their existing keys, backing up the old files.
//! - [`CertificateAuthority`], [`issue_client_certificate`], [`client_kubeconfig`] and
//!   [`ca_cert_hash`] serve `kinit kubeconfig` and join discovery.

mod catalog;
mod cert;
mod client;
mod error;
mod expiration;
mod files;
mod generate;
mod keys;
mod kubeconfig;
mod renew;
mod spec;

pub use catalog::{
    CertLocation, CertName, CLUSTER_ADMINS_GROUP, NODES_GROUP, SYSTEM_MASTERS_GROUP,
};
pub use cert::{
    ca_cert_hash, der_to_pem, CaKind, CertificateAuthority, RequestedCertificate, SubjectAltName,
};
pub use client::{
    client_kubeconfig, issue_client_certificate, issue_serving_certificate, write_kubeconfig,
    ClientCertificate,
};
pub use error::PkiError;
pub use expiration::{
    check_expiration, residual_time, CertState, CertificateStatus, ExpirationReport,
};
pub use generate::{generate, write_node_kubeconfig, FileAction, FileReport, GenerateReport};
pub use keys::KeyAlgorithm;
pub use kubeconfig::{
    ClusterEntry, ContextEntry, Kubeconfig, NamedCluster, NamedContext, NamedUser, UserEntry,
};
pub use renew::{renew, RenewReport, RenewTarget, RenewedCertificate, SkippedCertificate};
pub use spec::{
    default_kubeconfig_dir, first_service_ip, ApiEndpoint, ControlPlaneNode, PkiSpec,
    DEFAULT_API_PORT,
};

#[cfg(test)]
mod pki_tests;
