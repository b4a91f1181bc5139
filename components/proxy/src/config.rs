//! The proxy's configuration.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::error::ProxyError;
use crate::nft::NftCommand;
use crate::render::RenderContext;

/// The prefix every kinit nft table carries (`kinit reset` deletes tables starting with it).
pub const TABLE_PREFIX: &str = "kinit";
/// The default table name.
pub const DEFAULT_TABLE: &str = "kinit-proxy";

/// How stale UDP conntrack entries are cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConntrackCleanup {
    /// Through ctnetlink, in this process's network namespace (`netns: None`) or in the
    /// namespace at the given path (it must be the one `nft` acts on).
    Netlink {
        /// Path of a network namespace file, e.g. `/var/run/netns/NAME`.
        netns: Option<PathBuf>,
    },
    /// Not at all.
    Disabled,
}

/// Everything the proxy needs besides the API client.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// This node's name (endpoints with this `nodeName` are local).
    pub node_name: String,
    /// The cluster's pod CIDRs (both families allowed). Traffic from elsewhere to a cluster
    /// IP is masqueraded; without a CIDR for a family, cluster-IP traffic of that family is
    /// not masqueraded (unless `masquerade_all`) and pods are not short-circuited.
    pub cluster_cidrs: Vec<IpNet>,
    /// The nft table (family `inet`); must start with `kinit`.
    pub table: String,
    /// The bit of the packet mark that asks for masquerade (default 14 = `0x4000`).
    pub masquerade_bit: u32,
    /// Masquerade all traffic to cluster IPs, like kube-proxy's `--masquerade-all`.
    pub masquerade_all: bool,
    /// How often the whole table is rewritten regardless (default 1 h), in place, keeping
    /// session-affinity state.
    pub full_resync_period: Duration,
    /// How often the table is compared with the model, by content (default 10 s; what is
    /// compared: [`crate::table::TableModel::differences`]). When one check takes
    /// long (a very large table), the next waits at least 20 times as long, so checks stay
    /// under about 5 % of one core.
    pub tamper_check_period: Duration,
    /// Quiet time after an event before changes are applied (default 10 ms).
    pub sync_debounce: Duration,
    /// Longest delay from the first pending event to the transaction (default 200 ms).
    pub sync_max_delay: Duration,
    /// Minimum age of a flushed chain before it is deleted (default 1 s).
    pub stale_chain_grace: Duration,
    /// How `nft` is run.
    pub nft: NftCommand,
    /// How stale UDP conntrack entries are cleared.
    pub conntrack: ConntrackCleanup,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            node_name: String::new(),
            cluster_cidrs: Vec::new(),
            table: DEFAULT_TABLE.to_string(),
            masquerade_bit: 14,
            masquerade_all: false,
            full_resync_period: Duration::from_secs(3600),
            tamper_check_period: Duration::from_secs(10),
            sync_debounce: Duration::from_millis(10),
            sync_max_delay: Duration::from_millis(200),
            stale_chain_grace: Duration::from_secs(1),
            nft: NftCommand::default(),
            conntrack: ConntrackCleanup::Netlink { netns: None },
        }
    }
}

impl ProxyConfig {
    /// Checks the fields; the error names the field and what is accepted.
    pub fn validate(&self) -> Result<(), ProxyError> {
        let bad = |field, message: &str| {
            Err(ProxyError::Config {
                field,
                message: message.to_string(),
            })
        };
        if self.node_name.is_empty() {
            return bad("node_name", "must be this node's name");
        }
        if !self.table.starts_with(TABLE_PREFIX) {
            return bad(
                "table",
                &format!(
                    "{:?} must start with {TABLE_PREFIX:?} so kinit reset removes it",
                    self.table
                ),
            );
        }
        let valid_name = self.table.len() <= 64
            && self
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !valid_name {
            return bad("table", "use at most 64 letters, digits, '-' or '_'");
        }
        if self.masquerade_bit > 31 {
            return bad(
                "masquerade_bit",
                "must be 0..=31 (a bit of the 32-bit packet mark)",
            );
        }
        for (field, d) in [
            ("full_resync_period", self.full_resync_period),
            ("tamper_check_period", self.tamper_check_period),
            ("sync_max_delay", self.sync_max_delay),
        ] {
            if d.is_zero() {
                return bad(field, "must be greater than zero");
            }
        }
        if self.sync_debounce > self.sync_max_delay {
            return bad("sync_debounce", "must not exceed sync_max_delay");
        }
        Ok(())
    }

    /// The settings the rules depend on.
    pub fn render_context(&self) -> RenderContext {
        RenderContext {
            table: self.table.clone(),
            masquerade_mark: 1u32 << self.masquerade_bit.min(31),
            cluster_cidrs: self.cluster_cidrs.clone(),
            masquerade_all: self.masquerade_all,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_a_node_name() {
        let mut c = ProxyConfig::default();
        assert!(c.validate().is_err());
        c.node_name = "n1".into();
        c.validate().unwrap();
        assert_eq!(c.render_context().masquerade_mark, 0x4000);
        assert_eq!(c.table, "kinit-proxy");
    }

    #[test]
    fn table_must_carry_the_kinit_prefix() {
        let c = ProxyConfig {
            node_name: "n1".into(),
            table: "kube-proxy".into(),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("table") && e.contains("kinit"), "{e}");
        let c = ProxyConfig {
            node_name: "n1".into(),
            table: "kinit proxy;".into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn masquerade_bit_is_range_checked() {
        let c = ProxyConfig {
            node_name: "n1".into(),
            masquerade_bit: 32,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
