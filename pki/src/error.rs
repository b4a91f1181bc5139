//! The error type of this crate: every variant names the file or setting involved and what to do.

use std::path::PathBuf;

/// Everything that can go wrong while generating, checking or renewing the cluster PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A setting of [`crate::PkiSpec`] is invalid; nothing was written.
    #[error("invalid PKI setting `{field}`: {reason}")]
    InvalidSpec {
        /// Name of the setting, as spelled in the serialized spec.
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },

    /// Reading, writing or renaming a file failed.
    #[error(
        "{action} {path}: {source}; check that the directory exists and is writable by this user"
    )]
    Io {
        /// What was attempted ("read", "write", "create directory", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },

    /// A certificate file exists but cannot be used.
    #[error("{path}: not a usable PEM certificate ({reason}); restore a valid file or move it away so it can be regenerated")]
    InvalidCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },

    /// A private key file exists but cannot be used.
    #[error("{path}: not a usable private key ({reason}); kinit reads PKCS#8 (\"PRIVATE KEY\"), PKCS#1 RSA (\"RSA PRIVATE KEY\") and SEC1 P-256 (\"EC PRIVATE KEY\") PEM; convert it with `openssl pkcs8 -topk8 -nocrypt` or move it away")]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },

    /// A certificate and the key stored next to it do not belong together.
    #[error("{cert} does not match the private key {key}; restore the matching pair or move both away so they can be regenerated")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },

    /// A private key exists without its certificate; generating a new pair would destroy it.
    #[error("{key} exists but {missing} is missing; restore {missing} or move {key} away before generating")]
    OrphanKey {
        /// The key file that exists.
        key: PathBuf,
        /// The file that should sit next to it.
        missing: PathBuf,
    },

    /// The CA has no private key on disk (externally managed), so a certificate cannot be signed.
    #[error("{target}: cannot be signed because CA {ca_cert} has no private key at {ca_key} (externally managed CA); {reason}. Provide a valid {target} signed by this CA, or place the CA key at {ca_key}")]
    ExternalCa {
        /// The certificate or kubeconfig that needed signing.
        target: String,
        /// Why the existing file (if any) could not be reused.
        reason: String,
        /// The CA certificate file.
        ca_cert: PathBuf,
        /// Where the CA key was expected.
        ca_key: PathBuf,
    },

    /// A CA certificate has expired; kinit never replaces a CA on its own.
    #[error("CA certificate {path} expired on {expired}; every certificate it signed is invalid. Rotate the CA deliberately (move the old CA files away and re-run) — kinit will not replace it on its own")]
    CaExpired {
        /// The CA certificate file.
        path: PathBuf,
        /// Its notAfter, RFC 3339.
        expired: String,
    },

    /// A kubeconfig file exists but cannot be used.
    #[error("{path}: invalid kubeconfig ({reason}); restore a valid file or move it away so it can be regenerated")]
    InvalidKubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A certificate to renew was not issued by the CA kinit would renew it with.
    #[error("{path} was not signed by {ca}; renewing it with this CA would change its trust chain. Check that the PKI directory is the one this certificate belongs to")]
    NotSignedByCa {
        /// The certificate or kubeconfig.
        path: PathBuf,
        /// The CA certificate file.
        ca: PathBuf,
    },

    /// A file that must already exist (a certificate to renew, the CA to sign with) is missing.
    #[error("{path} not found (`{name}`); generate the PKI first (`kinit init` does)")]
    Missing {
        /// Name as in `check-expiration` (e.g. `apiserver`).
        name: String,
        /// The expected file.
        path: PathBuf,
    },

    /// An unknown certificate name was given to renew.
    #[error("unknown certificate `{name}`; expected `all` or one of: {expected}")]
    UnknownTarget {
        /// What the user asked for.
        name: String,
        /// Comma-separated list of valid names.
        expected: String,
    },

    /// Renewal was refused because a CA is externally managed.
    #[error("cannot renew {targets}: their CA has no private key ({details}); renew them with the holder of the CA key, or renew the other certificates one by one")]
    RenewExternalCa {
        /// Names of the certificates concerned.
        targets: String,
        /// Which CA key is missing for which name.
        details: String,
    },

    /// Building or signing a certificate or key failed.
    #[error("{what}: {reason}")]
    Crypto {
        /// The certificate, key or file being produced.
        what: String,
        /// The library's message.
        reason: String,
    },
}

impl PkiError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        PkiError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn crypto(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        PkiError::Crypto {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn spec(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PkiError::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
