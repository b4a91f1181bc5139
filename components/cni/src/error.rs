//! The plugin's error type and its mapping onto the CNI spec's error object.

use std::path::PathBuf;

use serde::Serialize;

/// The spec's well-known error codes (0-99) plus this plugin's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// 1: the configuration's `cniVersion` is not supported.
    IncompatibleVersion = 1,
    /// 2: a field of the network configuration is not supported.
    UnsupportedField = 2,
    /// 3: the container (its network namespace) is unknown or does not exist.
    UnknownContainer = 3,
    /// 4: a required `CNI_*` environment variable is missing or invalid.
    InvalidEnvironment = 4,
    /// 5: reading or writing a file, or a kernel call, failed.
    IoFailure = 5,
    /// 6: stdin could not be decoded.
    DecodeFailure = 6,
    /// 7: the network configuration is invalid.
    InvalidConfig = 7,
    /// 11: a transient condition; the runtime should retry later.
    TryAgainLater = 11,
    /// 50 (spec 1.1): the plugin cannot serve ADD requests right now.
    NotAvailable = 50,
    /// 100: every address of the pod range is allocated.
    AddressesExhausted = 100,
    /// 101: CHECK found the container's networking differs from the previous result.
    CheckFailed = 101,
}

/// Everything that can make a CNI command fail.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration's `cniVersion` is not one this plugin speaks.
    #[error("CNI version {0:?} is not supported; supported versions are {1}")]
    IncompatibleVersion(String, String),
    /// A required environment variable is missing or malformed.
    #[error("environment variable {name} {problem}")]
    Env {
        /// Variable name, e.g. `CNI_NETNS`.
        name: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// stdin is not valid JSON for a network configuration.
    #[error("cannot decode the network configuration on stdin: {0}")]
    Decode(#[source] serde_json::Error),
    /// The configuration is well-formed JSON but not usable.
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// The configuration asks for something this plugin does not do.
    #[error("unsupported network configuration field: {0}")]
    Unsupported(String),
    /// The container's network namespace cannot be opened.
    #[error(
        "network namespace {path} cannot be opened: {source}; is the container still running?"
    )]
    Netns {
        /// The `CNI_NETNS` path.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot create the IPAM directory".
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: cannot {what}: {source}")]
    Netlink {
        /// The operation, e.g. "create bridge cni0".
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call failed (setns, sockets, ...).
    #[error("cannot {what}: {source}")]
    Sys {
        /// The operation.
        what: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// `nft` could not be run or refused a command or transaction.
    #[error("nftables: cannot {what}: {source}")]
    Nft {
        /// What was being done, e.g. "set up the masquerade table kinit_cni_kinit".
        what: String,
        /// The runner's error (with nft's message and the offending script line).
        #[source]
        source: kinit_nft::NftError,
    },
    /// An nftables object holds something kinit never writes.
    #[error("nftables: {0}")]
    NftContent(String),
    /// No free address is left in the configured range(s).
    #[error(
        "no free IP address left in {0}; delete unused pods or give the node a larger pod CIDR"
    )]
    Exhausted(String),
    /// CHECK found the container's network differs from the recorded result.
    #[error("check failed: {0}")]
    Check(String),
    /// The container or its interface does not exist.
    #[error("container unknown: {0}")]
    UnknownContainer(String),
    /// STATUS: the plugin cannot serve ADD.
    #[error("plugin not available: {0}")]
    NotAvailable(String),
    /// The node network cannot be discovered or set up.
    #[error("node network: {0}")]
    Network(String),
    /// host-gw was asked to route via peers that are not on the uplink's subnet.
    #[error(
        "host-gw cannot reach node(s) {peers} directly: they are not on subnet {subnet} of {uplink}; \
         their pod ranges are not routed. Use CNI mode vxlan or auto for nodes on different subnets"
    )]
    NotOnLink {
        /// The refused peers, `name (address)`, comma-separated.
        peers: String,
        /// The local uplink's subnet.
        subnet: ipnet::IpNet,
        /// The local uplink.
        uplink: String,
    },
}

impl CniError {
    /// The spec error code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            CniError::IncompatibleVersion(..) => ErrorCode::IncompatibleVersion,
            CniError::Env { .. } => ErrorCode::InvalidEnvironment,
            CniError::Decode(_) => ErrorCode::DecodeFailure,
            CniError::Config(_) => ErrorCode::InvalidConfig,
            CniError::Unsupported(_) => ErrorCode::UnsupportedField,
            CniError::Netns { .. } | CniError::UnknownContainer(_) => ErrorCode::UnknownContainer,
            CniError::Io { .. } | CniError::Netlink { .. } | CniError::Sys { .. } => {
                ErrorCode::IoFailure
            }
            CniError::Nft { .. } | CniError::NftContent(_) => ErrorCode::IoFailure,
            CniError::Exhausted(_) => ErrorCode::AddressesExhausted,
            CniError::Check(_) => ErrorCode::CheckFailed,
            CniError::NotAvailable(_) => ErrorCode::NotAvailable,
            CniError::Network(_) => ErrorCode::IoFailure,
            CniError::NotOnLink { .. } => ErrorCode::InvalidConfig,
        }
    }

    /// Short message for the error object's `msg`.
    fn short(&self) -> &'static str {
        match self.code() {
            ErrorCode::IncompatibleVersion => "incompatible CNI version",
            ErrorCode::UnsupportedField => "unsupported field in network configuration",
            ErrorCode::UnknownContainer => "container unknown or does not exist",
            ErrorCode::InvalidEnvironment => "invalid environment variables",
            ErrorCode::IoFailure => "I/O failure",
            ErrorCode::DecodeFailure => "failed to decode content",
            ErrorCode::InvalidConfig => "invalid network configuration",
            ErrorCode::TryAgainLater => "try again later",
            ErrorCode::NotAvailable => "plugin not available",
            ErrorCode::AddressesExhausted => "no IP addresses available",
            ErrorCode::CheckFailed => "check failed",
        }
    }

    /// The spec's error object for this error.
    pub fn to_object(&self, cni_version: &str) -> ErrorObject {
        ErrorObject {
            cni_version: cni_version.to_string(),
            code: self.code() as u32,
            msg: self.short().to_string(),
            details: self.to_string(),
        }
    }

    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        CniError::Netlink {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn nft(what: impl Into<String>, source: kinit_nft::NftError) -> Self {
        CniError::Nft {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        CniError::Sys {
            what: what.into(),
            source: source.into(),
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CniError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// The error object a plugin prints on stdout before exiting non-zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorObject {
    /// Spec version of the object.
    pub cni_version: String,
    /// Error code (see [`ErrorCode`]).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Full message with the cause and what to do.
    pub details: String,
}
