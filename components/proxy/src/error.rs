//! The proxy's error type.

/// Everything that can make the proxy fail.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A configuration field is invalid.
    #[error("invalid service proxy configuration: {field}: {message}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The nft program could not be started or waited for.
    #[error("cannot run {program}: {source} (install nftables, or set the proxy's nft command)")]
    NftSpawn {
        /// The command line.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// nft rejected a transaction; nothing of it was applied.
    #[error(
        "nft transaction ({what}) on table inet {table} failed: {stderr}{}",
        offending_line.as_ref().map(|l| format!(" [offending script {l}]")).unwrap_or_default()
    )]
    NftTransaction {
        /// The table.
        table: String,
        /// Which transaction (full resync, incremental update, stale chain cleanup...).
        what: String,
        /// nft's error output.
        stderr: String,
        /// The script line nft pointed at, when it did.
        offending_line: Option<String>,
    },
    /// `nft list` failed.
    #[error("listing nft table inet {table} failed: {stderr}")]
    NftList {
        /// The table.
        table: String,
        /// nft's error output.
        stderr: String,
    },
    /// nft's listing could not be parsed.
    #[error("cannot parse nft's JSON listing of table inet {table}: {message}")]
    NftParse {
        /// The table.
        table: String,
        /// The parse error.
        message: String,
    },
    /// Talking to conntrack over netlink failed.
    #[error("conntrack cleanup over netlink failed: {message}")]
    Conntrack {
        /// What failed.
        message: String,
    },
    /// A background task of the proxy ended unexpectedly.
    #[error("service proxy task failed: {0}")]
    Task(String),
}
