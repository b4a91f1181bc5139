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
//! - [`check_certificate`] decides whether a certificate on disk is kept or replaced;
//!   [`keep_or_issue_serving_certificate`] and [`keep_or_self_sign_serving_certificate`] keep
//!   serving certificates across runs on that basis.
//! - [`write_atomic`] and [`write_key_pair`] write keys and certificates (temporary file, mode,
//!   fsync, rename).

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
mod reuse;
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
pub use files::write_atomic;
pub use generate::{generate, write_node_kubeconfig, FileAction, FileReport, GenerateReport};
pub use keys::KeyAlgorithm;
pub use kubeconfig::{
    ClusterEntry, ContextEntry, Kubeconfig, NamedCluster, NamedContext, NamedUser, UserEntry,
};
pub use renew::{renew, RenewReport, RenewTarget, RenewedCertificate, SkippedCertificate};
pub use reuse::{
    certificate_still_good, check_certificate, check_key_pair, keep_or_issue_serving_certificate,
    keep_or_self_sign_serving_certificate, write_key_pair, Expectations, ReplaceReason,
    ServingPair, RENEW_BEFORE,
};
pub use spec::{
    default_kubeconfig_dir, first_service_ip, ApiEndpoint, ControlPlaneNode, PkiSpec,
    DEFAULT_API_PORT,
};

#[cfg(test)]
mod pki_tests;
