//! kinit's service proxy: the kube-proxy role in nftables mode.
//!
//! Services and EndpointSlices are watched and turned into one nftables table (family
//! `inet`, both IP families; default name `kinit-proxy`) that DNATs traffic for cluster
//! IPs, node ports, external IPs and load-balancer IPs to endpoints, with kube-proxy's
//! semantics: ready endpoints with a terminating fallback, traffic policies, ClientIP
//! session affinity, masquerading where replies would otherwise go astray, and fast
//! rejection for Services without endpoints.
//!
//! Layers, each usable alone:
//! - [`model`]: Service + slices + node name → per-port plans (pure);
//! - [`render`]: plans → nft chains, sets and map elements (pure);
//! - [`table`]: the applied model, full (rebuild in place) and incremental scripts, and the
//!   content comparison with the kernel's table (pure);
//! - [`nft`]: running `nft -f -` and reading `nft -j list table`;
//! - [`listing`]: nft's JSON listing in the forms the model is compared with;
//! - [`conntrack`]: clearing stale UDP conntrack entries over netlink;
//! - [`engine`]: caches + model + kernel operations (synchronous);
//! - [`start`]: the watch loop for the node agent.
//!
//! ```no_run
//! # async fn run(client: kube::Client) -> Result<(), kinit_proxy::ProxyError> {
//! let config = kinit_proxy::ProxyConfig {
//!     node_name: "node1".into(),
//!     cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
//!     ..Default::default()
//! };
//! let proxy = kinit_proxy::start(client, config).await?;
//! let services = proxy.services(); // reflector store of all Services
//! # drop(services); proxy.stop(); Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod conntrack;
pub mod engine;
pub mod error;
pub mod listing;
pub mod model;
pub mod names;
pub mod nft;
mod proxy;
pub mod render;
pub mod table;

pub use config::{ConntrackCleanup, ProxyConfig, DEFAULT_TABLE, TABLE_PREFIX};
pub use engine::{Engine, SyncKind, SyncReport};
pub use error::ProxyError;
pub use nft::NftCommand;
pub use proxy::{start, ProxyHandle, ProxyStatus};

/// Deletes the proxy's table `table` (family `inet`) if it exists, e.g. for `kinit reset`
/// or after tests. Returns whether it existed.
pub fn delete_table(nft: &NftCommand, table: &str) -> Result<bool, ProxyError> {
    let existed = nft.table_exists(table)?;
    if existed {
        // Creating first makes the delete valid even if the table vanished meanwhile.
        let script = format!("add table inet {table}\ndelete table inet {table}\n");
        nft.apply(table, "table deletion", &script)?;
    }
    Ok(existed)
}
