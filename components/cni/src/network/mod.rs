//! The cross-node pod network: routes from this node to every other node's pod range, kept
//! by the node agent from the cluster's Node objects.
//!
//! Two backends, with flannel's behaviour (the reference users know):
//! - **host-gw**: one route per peer, `<peer pod range> via <peer node IP> dev <uplink>`;
//!   needs every node on the uplink's subnet (one L2 segment);
//! - **vxlan**: one VXLAN device [`VXLAN_DEVICE`] (VNI [`VXLAN_VNI`], UDP port
//!   [`VXLAN_PORT`], learning off) carrying the pod range's network address; per peer a
//!   permanent neighbour `<peer range .0> lladdr <peer VTEP MAC>`, a permanent FDB entry
//!   `<peer VTEP MAC> dst <peer node IP>` and a route
//!   `<peer range> via <peer range .0> dev kinit.1 onlink`. Works across routed subnets.
//!   Traffic from pods to other nodes' addresses keeps the pod address, so it takes the
//!   overlay too, as the replies do (else underlay anti-spoofing or a peer's strict
//!   `rp_filter` drops it): a policy rule `from <own pod range> lookup`
//!   [`POLICY_ROUTE_TABLE`] at priority [`POLICY_RULE_PRIORITY`], and in that table per peer
//!   `<peer node IP>/32 via <peer range .0> dev kinit.1 onlink`.
//!
//! [`CniMode::Auto`] picks host-gw when every node's address lies in every other node's uplink
//! subnet, else vxlan ([`decide`]); nodes publish the facts this needs as Node annotations
//! ([`LocalFacts::annotations`], parsed back by [`peer_facts_from_annotations`]), so every
//! node decides alike from the same Node set.
//!
//! [`NodeNetwork::sync`] is an idempotent reconcile: it compares what the kernel has (routes
//! are recognised by their protocol number [`ROUTE_PROTOCOL`] in the main table and in
//! [`POLICY_ROUTE_TABLE`]; policy rules by their priority and table; neighbours and FDB
//! entries live on kinit's own device) with what the peers need, and adds and removes only
//! the difference. It also keeps the masquerade table's node address sets (traffic to nodes keeps
//! the pod's address) and writes the state file [`DEFAULT_STATE_FILE`] from which the CNI
//! plugin takes the pods' MTU.

mod facts;
mod kernel;
mod plan;
mod state;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::CniError;
use crate::netlink as nl;

pub use facts::{peer_facts_from_annotations, vtep_mac, LocalFacts, PeerFacts};
pub use plan::{
    diff, plan, rule_text, Changes, CurrentState, DesiredState, FdbEntry, PlannedRoute,
    SkippedPeer, MAIN_TABLE,
};
pub use state::NetworkState;

/// Prefix of every Node annotation kinit's network publishes.
pub const ANNOTATION_PREFIX: &str = "network.kinit.io/";
/// Node annotation: the backend the node runs (`host-gw` or `vxlan`).
pub const ANNOTATION_BACKEND: &str = "network.kinit.io/backend";
/// Node annotation: the subnet of the node's uplink, e.g. `10.88.0.0/24`.
pub const ANNOTATION_UPLINK_SUBNET: &str = "network.kinit.io/uplink-subnet";
/// Node annotation: the MAC of the node's VXLAN device, e.g. `02:4b:0a:58:00:0b`.
pub const ANNOTATION_VTEP_MAC: &str = "network.kinit.io/vtep-mac";

/// Route protocol number (`proto` in `ip route`) of every route kinit's network adds, so
/// they can be told from others: `ip route flush proto 107` removes them all.
pub const ROUTE_PROTOCOL: u8 = 107;
/// Priority of kinit's policy rules (`ip rule`, vxlan only): `from <own pod range> lookup`
/// [`POLICY_ROUTE_TABLE`]. Before the main table's rule (32766); a lookup that finds no
/// route in kinit's table goes on to the next rule. `kinit reset` removes them:
/// `while ip -4 rule del pref 107 table 107; do :; done` (and the same with `-6`).
pub const POLICY_RULE_PRIORITY: u32 = 107;
/// Routing table of kinit's policy routes (vxlan only): `<peer node IP>/32 via <peer range
/// .0> dev kinit.1 onlink proto 107`. `kinit reset` empties it: `ip -4 route flush table
/// 107` (and `-6`).
pub const POLICY_ROUTE_TABLE: u32 = 107;
/// Name of the VXLAN device; it starts with `kinit` so `kinit reset` deletes it.
pub const VXLAN_DEVICE: &str = "kinit.1";
/// VXLAN network identifier (flannel's default).
pub const VXLAN_VNI: u32 = 1;
/// VXLAN UDP port (the Linux kernel's historical default, also flannel's).
pub const VXLAN_PORT: u16 = 8472;
/// Bytes VXLAN adds to a frame over an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Bytes VXLAN adds to a frame over an IPv6 underlay (outer IPv6 header is 40 bytes).
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// Where [`NodeNetwork::sync`] writes the [`NetworkState`] the CNI plugin reads. It is on
/// persistent storage (not `/run`), so right after a reboot, before the agent's first sync,
/// ADD still gives pods the MTU of the backend the node runs; `kinit reset` removes it with
/// `/var/lib/kinit`.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/kinit/cni/network.json";
/// How long ADD waits for the state file when the configuration names it
/// (`networkStateFile`) and it does not exist yet (a node's first boot, before the agent's
/// first sync); after that ADD falls back to the MTU of the default route's interface.
pub const STATE_FILE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Network (conflist `name`) whose masquerade table holds the node address sets.
pub const DEFAULT_NETWORK_NAME: &str = "kinit";

/// The configured pod network mode (the inventory's CNI mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CniMode {
    /// Always host-gw.
    HostGw,
    /// Always VXLAN.
    Vxlan,
    /// host-gw when all nodes share the uplink subnet, else VXLAN.
    Auto,
}

/// The backend a node runs, as decided by [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Plain routes via the peers' node addresses.
    HostGw,
    /// A VXLAN overlay.
    Vxlan,
}

impl Backend {
    /// The name used in annotations and files: `host-gw` or `vxlan`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "host-gw" => Ok(Backend::HostGw),
            "vxlan" => Ok(Backend::Vxlan),
            other => Err(CniError::Config(format!(
                "network backend {other:?} is not host-gw or vxlan"
            ))),
        }
    }
}

impl fmt::Display for CniMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CniMode::HostGw => "host-gw",
            CniMode::Vxlan => "vxlan",
            CniMode::Auto => "auto",
        })
    }
}

impl FromStr for CniMode {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "host-gw" => Ok(CniMode::HostGw),
            "vxlan" => Ok(CniMode::Vxlan),
            "auto" => Ok(CniMode::Auto),
            other => Err(CniError::Config(format!(
                "CNI mode {other:?} is not host-gw, vxlan or auto"
            ))),
        }
    }
}

/// Another node, as the agent sees it in its Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// The node's InternalIP (the address its agent runs the network on).
    pub node_ip: IpAddr,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<IpNet>,
    /// From [`ANNOTATION_UPLINK_SUBNET`]; `None` until the peer published it.
    pub uplink_subnet: Option<IpNet>,
    /// From [`ANNOTATION_VTEP_MAC`]; `None` until published (then [`vtep_mac`] of the node
    /// IP is used, which is what a kinit node publishes).
    pub vtep_mac: Option<[u8; 6]>,
}

impl Peer {
    /// A peer from a Node's name, InternalIP, pod CIDRs and annotations.
    pub fn from_node(
        name: impl Into<String>,
        node_ip: IpAddr,
        pod_cidrs: Vec<IpNet>,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Peer {
        let facts = peer_facts_from_annotations(annotations);
        Peer {
            name: name.into(),
            node_ip,
            pod_cidrs,
            uplink_subnet: facts.uplink_subnet,
            vtep_mac: facts.vtep_mac,
        }
    }
}

/// Decides the backend from the configured mode, this node's facts and all peers (the own
/// node among `peers`, by address, is ignored). The result depends only on the nodes'
/// addresses and published uplink subnets, so every node decides alike; a peer that has not
/// published its subnet yet is judged by the local one.
pub fn decide(mode: CniMode, local: &LocalFacts, peers: &[Peer]) -> Backend {
    match mode {
        CniMode::HostGw => return Backend::HostGw,
        CniMode::Vxlan => return Backend::Vxlan,
        CniMode::Auto => {}
    }
    let mut nodes: Vec<(IpAddr, IpNet)> = vec![(local.node_ip, local.uplink_subnet)];
    for p in peers.iter().filter(|p| p.node_ip != local.node_ip) {
        nodes.push((p.node_ip, p.uplink_subnet.unwrap_or(local.uplink_subnet)));
    }
    let shared = nodes.iter().enumerate().all(|(i, (ip, _))| {
        nodes
            .iter()
            .enumerate()
            .all(|(j, (_, subnet))| i == j || subnet.contains(ip))
    });
    if shared {
        Backend::HostGw
    } else {
        Backend::Vxlan
    }
}

/// What [`NodeNetwork`] needs to know about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// This node's name (peers with it are skipped).
    pub node_name: String,
    /// This node's InternalIP; its interface is the uplink.
    pub node_ip: IpAddr,
    /// This node's pod ranges (`spec.podCIDRs`).
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster's pod networks; peer ranges outside them are never routed.
    pub cluster_cidrs: Vec<IpNet>,
    /// The conflist's network name, whose masquerade table gets the node address sets.
    pub network_name: String,
    /// Where the state file for the CNI plugin goes.
    pub state_file: PathBuf,
}

impl NetworkConfig {
    /// A configuration with the default network name and state file path.
    pub fn new(
        node_name: impl Into<String>,
        node_ip: IpAddr,
        pod_cidrs: Vec<IpNet>,
        cluster_cidrs: Vec<IpNet>,
    ) -> NetworkConfig {
        NetworkConfig {
            node_name: node_name.into(),
            node_ip,
            pod_cidrs,
            cluster_cidrs,
            network_name: DEFAULT_NETWORK_NAME.to_string(),
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
        }
    }
}

/// What one [`NodeNetwork::sync`] changed (entries read like `ip` commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// The backend now in place.
    pub backend: Backend,
    /// The MTU pods must use, as written to the state file.
    pub pod_mtu: u32,
    /// Changes to the VXLAN device (created, recreated, MTU/MAC/address fixed, deleted).
    pub device: Vec<String>,
    /// Routes added or replaced.
    pub routes_added: Vec<String>,
    /// Routes removed.
    pub routes_removed: Vec<String>,
    /// Policy rules added (vxlan), e.g. `from 10.244.1.0/24 lookup 107 pref 107`.
    pub rules_added: Vec<String>,
    /// Policy rules removed.
    pub rules_removed: Vec<String>,
    /// Neighbour entries added or replaced.
    pub neighbours_added: Vec<String>,
    /// Neighbour entries removed.
    pub neighbours_removed: Vec<String>,
    /// FDB entries added or replaced.
    pub fdb_added: Vec<String>,
    /// FDB entries removed.
    pub fdb_removed: Vec<String>,
    /// Whether the masquerade table's node address sets were rewritten.
    pub node_addresses_changed: bool,
    /// Whether the state file was rewritten.
    pub state_file_changed: bool,
    /// Peers left out, with the reason (no pod CIDR yet, range outside the cluster, ...).
    pub skipped: Vec<SkippedPeer>,
}

impl SyncReport {
    /// Whether the sync changed anything on the node.
    pub fn changed(&self) -> bool {
        !(self.device.is_empty()
            && self.routes_added.is_empty()
            && self.routes_removed.is_empty()
            && self.rules_added.is_empty()
            && self.rules_removed.is_empty()
            && self.neighbours_added.is_empty()
            && self.neighbours_removed.is_empty()
            && self.fdb_added.is_empty()
            && self.fdb_removed.is_empty())
            || self.node_addresses_changed
            || self.state_file_changed
    }
}

/// The node's side of the pod network, driven by the agent.
///
/// It acts on the network namespace of the thread that created it (netlink socket) and of
/// the threads that call [`sync`](NodeNetwork::sync) (`nft` child processes); the agent
/// runs in the host namespace, tests in private ones.
///
/// [`sync`](NodeNetwork::sync) is an `async fn` for its netlink requests but also blocks
/// its thread: it runs `nft` child processes and waits for them, and reads and writes
/// sysctls and the state file with blocking file I/O. Run it on a thread of its own with its
/// own current-thread runtime (as the agent does, and the tests do), not on a worker of a
/// shared runtime, where it would stall the other tasks for the length of a sync.
pub struct NodeNetwork {
    config: NetworkConfig,
    handle: rtnetlink::Handle,
    facts: LocalFacts,
}

impl NodeNetwork {
    /// Opens a netlink socket (inside a tokio runtime) and discovers the local facts.
    pub async fn new(config: NetworkConfig) -> Result<NodeNetwork, CniError> {
        if config.pod_cidrs.is_empty() {
            return Err(CniError::Network(format!(
                "node {} has no pod CIDR yet; wait for the node IPAM controller to assign spec.podCIDRs",
                config.node_name
            )));
        }
        let handle = nl::connect()?;
        let facts = LocalFacts::discover_with(&handle, config.node_ip).await?;
        Ok(NodeNetwork {
            config,
            handle,
            facts,
        })
    }

    /// This node's facts (as of the last [`new`](NodeNetwork::new) or `sync`).
    pub fn facts(&self) -> &LocalFacts {
        &self.facts
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Reconciles the node with `backend` and `peers`: adds what is missing, removes what
    /// belongs to peers that left or to the other backend, fixes the VXLAN device, the node
    /// address sets and the state file. Running it again with the same input changes
    /// nothing. In host-gw mode a peer that is not on the uplink's subnet is refused: the
    /// others are still synced, then the error names the refused peers.
    pub async fn sync(&mut self, backend: Backend, peers: &[Peer]) -> Result<SyncReport, CniError> {
        // The uplink may have changed (a reboot renumbers links, an MTU was raised).
        self.facts = LocalFacts::discover_with(&self.handle, self.config.node_ip).await?;
        let facts = self.facts.clone();
        let pod_mtu = facts.pod_mtu(backend);
        let mut report = SyncReport {
            backend,
            pod_mtu,
            device: Vec::new(),
            routes_added: Vec::new(),
            routes_removed: Vec::new(),
            rules_added: Vec::new(),
            rules_removed: Vec::new(),
            neighbours_added: Vec::new(),
            neighbours_removed: Vec::new(),
            fdb_added: Vec::new(),
            fdb_removed: Vec::new(),
            node_addresses_changed: false,
            state_file_changed: false,
            skipped: Vec::new(),
        };

        let vxlan_index = match backend {
            Backend::Vxlan => Some(
                kernel::ensure_vxlan(
                    &self.handle,
                    &facts,
                    &self.config.pod_cidrs,
                    &mut report.device,
                )
                .await?,
            ),
            Backend::HostGw => None,
        };
        let desired = plan(backend, &facts, &self.config, peers, vxlan_index);
        report.skipped = desired.skipped.clone();
        let mut current = kernel::current_state(&self.handle, vxlan_index).await?;
        if kernel::has_stray_rules(&current) {
            // A foreign rule sits at kinit's priority and table: start the rules afresh.
            kernel::flush_rules(&self.handle, &current, &mut report).await?;
            current = kernel::current_state(&self.handle, vxlan_index).await?;
        }
        let changes = diff(&desired, &current.0);
        kernel::apply(
            &self.handle,
            &changes,
            &current,
            &facts,
            vxlan_index,
            &mut report,
        )
        .await?;
        if backend == Backend::HostGw {
            kernel::delete_vxlan(&self.handle, &mut report.device).await?;
        }

        let families: BTreeSet<bool> = self
            .config
            .pod_cidrs
            .iter()
            .map(|c| c.addr().is_ipv4())
            .collect();
        for v4 in families {
            crate::sysctl::enable_forwarding(v4)?;
        }
        let mut addresses: BTreeSet<IpAddr> = peers.iter().map(|p| p.node_ip).collect();
        addresses.insert(self.config.node_ip);
        report.node_addresses_changed =
            crate::masq::set_node_addresses(&self.config.network_name, &addresses)?;
        report.state_file_changed = NetworkState {
            backend,
            mtu: pod_mtu,
        }
        .write(&self.config.state_file)?;

        if !desired.refused.is_empty() {
            return Err(CniError::NotOnLink {
                peers: desired
                    .refused
                    .iter()
                    .map(|p| format!("{} ({})", p.name, p.node_ip))
                    .collect::<Vec<_>>()
                    .join(", "),
                subnet: facts.uplink_subnet,
                uplink: facts.uplink.clone(),
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn facts(ip: &str, subnet: &str) -> LocalFacts {
        let node_ip: IpAddr = ip.parse().unwrap();
        LocalFacts {
            node_ip,
            uplink: "eth0".into(),
            uplink_index: 2,
            uplink_subnet: subnet.parse().unwrap(),
            mtu: 1500,
            vtep_mac: vtep_mac(node_ip),
        }
    }

    pub(super) fn peer(name: &str, ip: &str, cidr: &str, subnet: Option<&str>) -> Peer {
        Peer {
            name: name.into(),
            node_ip: ip.parse().unwrap(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            uplink_subnet: subnet.map(|s| s.parse().unwrap()),
            vtep_mac: None,
        }
    }

    #[test]
    fn state_file_survives_a_reboot() {
        // /run is a tmpfs: after a reboot ADD would find no file and give pods the uplink's
        // MTU until the agent's first sync. /var/lib/kinit persists and `kinit reset`
        // removes it.
        let path = std::path::Path::new(DEFAULT_STATE_FILE);
        assert!(path.starts_with("/var/lib/kinit"), "{DEFAULT_STATE_FILE}");
        assert!(!path.starts_with("/run") && !path.starts_with("/var/run"));
    }

    #[test]
    fn configured_modes_win() {
        let local = facts("10.0.0.1", "10.0.0.0/24");
        let far = [peer(
            "b",
            "192.168.1.2",
            "10.244.2.0/24",
            Some("192.168.1.0/24"),
        )];
        assert_eq!(decide(CniMode::HostGw, &local, &far), Backend::HostGw);
        assert_eq!(decide(CniMode::Vxlan, &local, &[]), Backend::Vxlan);
    }

    #[test]
    fn auto_picks_host_gw_only_when_all_nodes_share_the_subnet() {
        let a = facts("10.0.0.1", "10.0.0.0/24");
        let near = peer("b", "10.0.0.2", "10.244.2.0/24", Some("10.0.0.0/24"));
        let far = peer("c", "10.0.1.3", "10.244.3.0/24", Some("10.0.1.0/24"));
        assert_eq!(decide(CniMode::Auto, &a, &[]), Backend::HostGw);
        assert_eq!(
            decide(CniMode::Auto, &a, std::slice::from_ref(&near)),
            Backend::HostGw
        );
        assert_eq!(
            decide(CniMode::Auto, &a, &[near.clone(), far.clone()]),
            Backend::Vxlan
        );
        // The own node among the peers changes nothing.
        let me = peer("a", "10.0.0.1", "10.244.1.0/24", Some("10.0.0.0/24"));
        assert_eq!(
            decide(CniMode::Auto, &a, &[me, near.clone()]),
            Backend::HostGw
        );
        // A peer without annotations is judged by the local subnet.
        let quiet_near = peer("d", "10.0.0.4", "10.244.4.0/24", None);
        let quiet_far = peer("e", "10.9.0.5", "10.244.5.0/24", None);
        assert_eq!(decide(CniMode::Auto, &a, &[quiet_near]), Backend::HostGw);
        assert_eq!(decide(CniMode::Auto, &a, &[quiet_far]), Backend::Vxlan);
    }

    #[test]
    fn auto_is_symmetric_across_nodes() {
        // b's /16 holds a, but a's /24 does not hold b: both must pick vxlan.
        let a = facts("10.0.0.1", "10.0.0.0/24");
        let b = facts("10.0.5.2", "10.0.0.0/16");
        let pa = peer("a", "10.0.0.1", "10.244.1.0/24", Some("10.0.0.0/24"));
        let pb = peer("b", "10.0.5.2", "10.244.2.0/24", Some("10.0.0.0/16"));
        assert_eq!(decide(CniMode::Auto, &a, &[pb]), Backend::Vxlan);
        assert_eq!(decide(CniMode::Auto, &b, &[pa]), Backend::Vxlan);
        // Three nodes on one /24 agree on host-gw from every point of view.
        let nodes = [("n1", "10.1.0.1"), ("n2", "10.1.0.2"), ("n3", "10.1.0.3")];
        for (i, (_, ip)) in nodes.iter().enumerate() {
            let local = facts(ip, "10.1.0.0/24");
            let peers: Vec<Peer> = nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, (n, pip))| peer(n, pip, &format!("10.244.{j}.0/24"), Some("10.1.0.0/24")))
                .collect();
            assert_eq!(decide(CniMode::Auto, &local, &peers), Backend::HostGw);
        }
    }

    #[test]
    fn modes_and_backends_parse_and_print() {
        for m in ["host-gw", "vxlan", "auto"] {
            assert_eq!(m.parse::<CniMode>().unwrap().to_string(), m);
        }
        for b in ["host-gw", "vxlan"] {
            assert_eq!(b.parse::<Backend>().unwrap().to_string(), b);
        }
        assert!("udp".parse::<CniMode>().is_err());
        assert!("auto".parse::<Backend>().is_err());
        assert_eq!(
            serde_json::to_string(&Backend::HostGw).unwrap(),
            "\"host-gw\""
        );
        assert_eq!(
            serde_json::from_str::<CniMode>("\"auto\"").unwrap(),
            CniMode::Auto
        );
    }
}
