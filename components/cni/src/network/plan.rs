//! Pure planning: which routes, policy rules, neighbours and FDB entries the peers need
//! ([`plan`]), and what to add and remove to get there from what the kernel has ([`diff`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::facts::{format_mac, vtep_mac};
use super::{Backend, LocalFacts, NetworkConfig, Peer, POLICY_ROUTE_TABLE};

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A route kinit's network owns (protocol [`super::ROUTE_PROTOCOL`]), in the main table or
/// in kinit's policy table [`POLICY_ROUTE_TABLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlannedRoute {
    /// Destination: a peer's pod range (main table) or a peer's node address (policy table).
    pub dst: IpNet,
    /// Next hop: the peer's node address (host-gw) or its range's network address (vxlan).
    pub via: IpAddr,
    /// Output interface index: the uplink (host-gw) or the VXLAN device.
    pub oif: u32,
    /// `onlink` (vxlan: the next hop is not on any subnet of the device).
    pub onlink: bool,
    /// Routing table: [`MAIN_TABLE`] or [`POLICY_ROUTE_TABLE`].
    pub table: u32,
}

impl fmt::Display for PlannedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {} dev #{}", self.dst, self.via, self.oif)?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

/// `from <src> lookup` [`POLICY_ROUTE_TABLE`] at priority [`super::POLICY_RULE_PRIORITY`]:
/// the policy rule for one of this node's pod ranges.
pub fn rule_text(src: &IpNet) -> String {
    format!(
        "from {src} lookup {POLICY_ROUTE_TABLE} pref {}",
        super::POLICY_RULE_PRIORITY
    )
}

/// A VXLAN forwarding entry: frames for `mac` are sent to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    /// The peer's VTEP MAC.
    pub mac: [u8; 6],
    /// The peer's node address.
    pub dst: IpAddr,
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dst {}", format_mac(&self.mac), self.dst)
    }
}

/// A peer (or one of its ranges) left out of the plan, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedPeer {
    /// Node name.
    pub name: String,
    /// Why, in words an operator can act on.
    pub reason: String,
}

/// What the node should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Routes to the peers' pod ranges (main table) and, vxlan only, to the peers' node
    /// addresses through the overlay (policy table).
    pub routes: BTreeSet<PlannedRoute>,
    /// vxlan only: source prefixes (this node's pod ranges of the node address's family)
    /// whose traffic looks up the policy table first.
    pub rules: BTreeSet<IpNet>,
    /// Permanent neighbours on the VXLAN device: next-hop address → VTEP MAC.
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
    /// Permanent FDB entries on the VXLAN device.
    pub fdb: BTreeSet<FdbEntry>,
    /// Peers or ranges left out (not an error).
    pub skipped: Vec<SkippedPeer>,
    /// host-gw only: peers that are not on the uplink's subnet (an error).
    pub refused: Vec<Peer>,
}

/// What the node has (routes with kinit's protocol; neighbours and FDB entries on the VXLAN
/// device).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentState {
    /// kinit's routes (main and policy table).
    pub routes: BTreeSet<PlannedRoute>,
    /// Source prefixes of the rules at kinit's priority that look up kinit's table.
    pub rules: BTreeSet<IpNet>,
    /// Permanent neighbours on the VXLAN device.
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
    /// FDB entries on the VXLAN device.
    pub fdb: BTreeSet<FdbEntry>,
}

/// The difference between [`DesiredState`] and [`CurrentState`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Routes to add (or to replace a kinit route with the same destination).
    pub add_routes: Vec<PlannedRoute>,
    /// kinit routes to remove.
    pub del_routes: Vec<PlannedRoute>,
    /// Policy rules to add (by source prefix).
    pub add_rules: Vec<IpNet>,
    /// Policy rules to remove (by source prefix).
    pub del_rules: Vec<IpNet>,
    /// Neighbours to add or replace.
    pub add_neighbours: Vec<(IpAddr, [u8; 6])>,
    /// Neighbours to remove.
    pub del_neighbours: Vec<(IpAddr, [u8; 6])>,
    /// FDB entries to add or replace.
    pub add_fdb: Vec<FdbEntry>,
    /// FDB entries to remove.
    pub del_fdb: Vec<FdbEntry>,
}

impl Changes {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Plans the state `backend` needs for `peers`. `vxlan_index` is the VXLAN device's index
/// (vxlan only). Peers are taken in name order, so when two claim overlapping ranges the
/// first by name keeps it, on every node alike.
///
/// With vxlan, traffic from this node's pods to a peer's node address keeps the pod's
/// address (it is not masqueraded), so it must take the overlay as the peer's reply does:
/// sent over the underlay it would leave with a source the underlay does not route back
/// (anti-spoofing in cloud networks, strict reverse-path filtering on the peer). Hence a
/// policy rule per own pod range of the node address's family, `from <range> lookup`
/// [`POLICY_ROUTE_TABLE`], and in that table per peer `<node address>/32 via <peer range's
/// network address> dev kinit.1 onlink`. The encapsulated packets come from the node
/// address, so they never match the rule.
pub fn plan(
    backend: Backend,
    local: &LocalFacts,
    config: &NetworkConfig,
    peers: &[Peer],
    vxlan_index: Option<u32>,
) -> DesiredState {
    let mut out = DesiredState::default();
    let mut sorted: Vec<&Peer> = peers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name).then(a.node_ip.cmp(&b.node_ip)));
    let own: Vec<IpNet> = config.pod_cidrs.iter().map(IpNet::trunc).collect();
    if backend == Backend::Vxlan && vxlan_index.is_some() {
        out.rules = own
            .iter()
            .filter(|c| c.prefix_len() > 0 && c.addr().is_ipv4() == local.node_ip.is_ipv4())
            .copied()
            .collect();
    }
    let mut claimed: Vec<(IpNet, String)> = Vec::new();
    let skip = |out: &mut DesiredState, p: &Peer, reason: String| {
        out.skipped.push(SkippedPeer {
            name: p.name.clone(),
            reason,
        })
    };
    for p in sorted {
        if p.name == config.node_name || p.node_ip == local.node_ip {
            continue;
        }
        if p.node_ip.is_ipv4() != local.node_ip.is_ipv4() {
            skip(
                &mut out,
                p,
                format!(
                    "its node address {} is not of the same IP family as this node's {}",
                    p.node_ip, local.node_ip
                ),
            );
            continue;
        }
        if p.pod_cidrs.is_empty() {
            skip(&mut out, p, "it has no pod CIDR assigned yet".into());
            continue;
        }
        if backend == Backend::HostGw && !local.uplink_subnet.contains(&p.node_ip) {
            out.refused.push(p.clone());
            continue;
        }
        let mac = p.vtep_mac.unwrap_or_else(|| vtep_mac(p.node_ip));
        let mut routed = false;
        for cidr in p.pod_cidrs.iter().map(IpNet::trunc) {
            let reason = if cidr.prefix_len() == 0 {
                Some(format!("pod CIDR {cidr} would replace the default route"))
            } else if !config.cluster_cidrs.is_empty()
                && !config.cluster_cidrs.iter().any(|c| c.contains(&cidr))
            {
                Some(format!(
                    "pod CIDR {cidr} lies outside the cluster's pod network {:?}",
                    config
                        .cluster_cidrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                ))
            } else if let Some(o) = own.iter().find(|o| overlaps(o, &cidr)) {
                Some(format!(
                    "pod CIDR {cidr} overlaps this node's own range {o}"
                ))
            } else if let Some((c, by)) = claimed.iter().find(|(c, _)| overlaps(c, &cidr)) {
                Some(format!("pod CIDR {cidr} overlaps {c} of node {by}"))
            } else if backend == Backend::HostGw && cidr.addr().is_ipv4() != p.node_ip.is_ipv4() {
                Some(format!(
                    "host-gw routes pod CIDR {cidr} only via a node address of its family; use vxlan for it"
                ))
            } else if backend == Backend::Vxlan && vxlan_index.is_none() {
                Some("the VXLAN device is missing".to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                skip(&mut out, p, reason);
                continue;
            }
            claimed.push((cidr, p.name.clone()));
            routed = true;
            match (backend, vxlan_index) {
                (Backend::HostGw, _) => {
                    out.routes.insert(PlannedRoute {
                        dst: cidr,
                        via: p.node_ip,
                        oif: local.uplink_index,
                        onlink: false,
                        table: MAIN_TABLE,
                    });
                }
                (Backend::Vxlan, Some(index)) => {
                    let next_hop = cidr.network();
                    out.routes.insert(PlannedRoute {
                        dst: cidr,
                        via: next_hop,
                        oif: index,
                        onlink: true,
                        table: MAIN_TABLE,
                    });
                    out.neighbours.insert(next_hop, mac);
                    // The peer's node address through the overlay, via the next hop of its
                    // range of the same family (first such range; one route per address).
                    let node_dst = IpNet::from(p.node_ip);
                    if !out.rules.is_empty()
                        && cidr.addr().is_ipv4() == p.node_ip.is_ipv4()
                        && !out
                            .routes
                            .iter()
                            .any(|r| r.table == POLICY_ROUTE_TABLE && r.dst == node_dst)
                    {
                        out.routes.insert(PlannedRoute {
                            dst: node_dst,
                            via: next_hop,
                            oif: index,
                            onlink: true,
                            table: POLICY_ROUTE_TABLE,
                        });
                    }
                }
                (Backend::Vxlan, None) => unreachable!("skipped above"),
            }
        }
        if routed && backend == Backend::Vxlan {
            out.fdb.insert(FdbEntry {
                mac,
                dst: p.node_ip,
            });
        }
    }
    out
}

/// What to add and remove to turn `current` into `desired`.
pub fn diff(desired: &DesiredState, current: &CurrentState) -> Changes {
    Changes {
        add_routes: desired
            .routes
            .difference(&current.routes)
            .copied()
            .collect(),
        del_routes: current
            .routes
            .difference(&desired.routes)
            .copied()
            .collect(),
        add_rules: desired.rules.difference(&current.rules).copied().collect(),
        del_rules: current.rules.difference(&desired.rules).copied().collect(),
        add_neighbours: desired
            .neighbours
            .iter()
            .filter(|(ip, mac)| current.neighbours.get(ip) != Some(mac))
            .map(|(ip, mac)| (*ip, *mac))
            .collect(),
        del_neighbours: current
            .neighbours
            .iter()
            .filter(|(ip, _)| !desired.neighbours.contains_key(ip))
            .map(|(ip, mac)| (*ip, *mac))
            .collect(),
        add_fdb: desired.fdb.difference(&current.fdb).copied().collect(),
        del_fdb: current.fdb.difference(&desired.fdb).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{facts, peer};
    use super::*;

    fn config() -> NetworkConfig {
        NetworkConfig::new(
            "a",
            "10.0.0.1".parse().unwrap(),
            vec!["10.244.1.0/24".parse().unwrap()],
            vec!["10.244.0.0/16".parse().unwrap()],
        )
    }

    fn route(dst: &str, via: &str, oif: u32, onlink: bool) -> PlannedRoute {
        PlannedRoute {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
            oif,
            onlink,
            table: MAIN_TABLE,
        }
    }

    fn policy_route(dst: &str, via: &str, oif: u32) -> PlannedRoute {
        PlannedRoute {
            table: POLICY_ROUTE_TABLE,
            ..route(dst, via, oif, true)
        }
    }

    #[test]
    fn host_gw_routes_each_peer_via_its_node_address() {
        let local = facts("10.0.0.1", "10.0.0.0/24");
        let peers = [
            peer("a", "10.0.0.1", "10.244.1.0/24", None), // own node
            peer("b", "10.0.0.2", "10.244.2.0/24", None),
            peer("c", "10.0.0.3", "10.244.3.0/24", None),
        ];
        let d = plan(Backend::HostGw, &local, &config(), &peers, None);
        let want: BTreeSet<_> = [
            route("10.244.2.0/24", "10.0.0.2", 2, false),
            route("10.244.3.0/24", "10.0.0.3", 2, false),
        ]
        .into();
        assert_eq!(d.routes, want);
        assert!(d.neighbours.is_empty() && d.fdb.is_empty());
        assert!(
            d.rules.is_empty(),
            "host-gw is symmetric without policy routing"
        );
        assert!(d.skipped.is_empty() && d.refused.is_empty(), "{d:?}");
    }

    #[test]
    fn host_gw_refuses_peers_off_the_uplink_subnet() {
        let local = facts("10.0.0.1", "10.0.0.0/24");
        let peers = [
            peer("b", "10.0.0.2", "10.244.2.0/24", None),
            peer("far", "10.0.9.2", "10.244.9.0/24", None),
        ];
        let d = plan(Backend::HostGw, &local, &config(), &peers, None);
        assert_eq!(d.routes.len(), 1, "the others are still routed");
        assert_eq!(d.refused.len(), 1);
        assert_eq!(d.refused[0].name, "far");
        // vxlan takes the same peer.
        let d = plan(Backend::Vxlan, &local, &config(), &peers, Some(9));
        assert!(d.refused.is_empty());
        let pod_routes = d.routes.iter().filter(|r| r.table == MAIN_TABLE).count();
        assert_eq!(pod_routes, 2);
    }

    #[test]
    fn vxlan_plans_neighbour_fdb_and_onlink_route_per_peer() {
        let local = facts("10.0.0.1", "10.0.0.0/24");
        let mut b = peer("b", "192.168.5.2", "10.244.2.0/24", Some("192.168.5.0/24"));
        b.vtep_mac = Some([2, 0, 0, 0, 0, 0xb]);
        b.pod_cidrs.push("fd10:0:0:2::/64".parse().unwrap());
        let c = peer("c", "10.0.0.3", "10.244.3.0/24", None);
        let mut cfg = config();
        cfg.cluster_cidrs.push("fd10::/56".parse().unwrap());
        let d = plan(Backend::Vxlan, &local, &cfg, &[c, b], Some(7));
        let want: BTreeSet<_> = [
            route("10.244.2.0/24", "10.244.2.0", 7, true),
            route("fd10:0:0:2::/64", "fd10:0:0:2::", 7, true),
            route("10.244.3.0/24", "10.244.3.0", 7, true),
            // The peers' node addresses through the overlay, for traffic from own pods.
            policy_route("192.168.5.2/32", "10.244.2.0", 7),
            policy_route("10.0.0.3/32", "10.244.3.0", 7),
        ]
        .into();
        assert_eq!(d.routes, want);
        assert_eq!(
            d.rules,
            BTreeSet::from(["10.244.1.0/24".parse::<IpNet>().unwrap()])
        );
        assert_eq!(
            d.neighbours,
            BTreeMap::from([
                ("10.244.2.0".parse().unwrap(), [2, 0, 0, 0, 0, 0xb]),
                ("fd10:0:0:2::".parse().unwrap(), [2, 0, 0, 0, 0, 0xb]),
                // No annotation: the MAC a kinit node derives from its address.
                (
                    "10.244.3.0".parse().unwrap(),
                    vtep_mac("10.0.0.3".parse().unwrap())
                ),
            ])
        );
        assert_eq!(
            d.fdb,
            BTreeSet::from([
                FdbEntry {
                    mac: [2, 0, 0, 0, 0, 0xb],
                    dst: "192.168.5.2".parse().unwrap()
                },
                FdbEntry {
                    mac: vtep_mac("10.0.0.3".parse().unwrap()),
                    dst: "10.0.0.3".parse().unwrap()
                },
            ])
        );
    }

    #[test]
    fn vxlan_policy_routing_follows_the_node_address_family() {
        // IPv6 nodes, dual-stack pods: the rule covers the own IPv6 range, the policy
        // routes go via the peers' IPv6 next hops.
        let local = facts("fd00::1", "fd00::/64");
        let mut cfg = NetworkConfig::new(
            "a",
            "fd00::1".parse().unwrap(),
            vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd10:0:0:1::/64".parse().unwrap(),
            ],
            vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd10::/56".parse().unwrap(),
            ],
        );
        let mut b = peer("b", "fd00::2", "10.244.2.0/24", None);
        b.pod_cidrs.push("fd10:0:0:2::/64".parse().unwrap());
        let d = plan(
            Backend::Vxlan,
            &local,
            &cfg,
            std::slice::from_ref(&b),
            Some(7),
        );
        assert_eq!(
            d.rules,
            BTreeSet::from(["fd10:0:0:1::/64".parse::<IpNet>().unwrap()])
        );
        let policy: Vec<_> = d
            .routes
            .iter()
            .filter(|r| r.table == POLICY_ROUTE_TABLE)
            .copied()
            .collect();
        assert_eq!(policy, [policy_route("fd00::2/128", "fd10:0:0:2::", 7)]);
        // No own range of the node address's family: no rule, no policy route.
        cfg.pod_cidrs.truncate(1);
        let d = plan(Backend::Vxlan, &local, &cfg, &[b], Some(7));
        assert!(d.rules.is_empty());
        assert!(d.routes.iter().all(|r| r.table == MAIN_TABLE), "{d:?}");
        // Without the device nothing is planned.
        let d = plan(Backend::Vxlan, &local, &config(), &[], None);
        assert!(d.rules.is_empty() && d.routes.is_empty());
    }

    #[test]
    fn bad_ranges_are_skipped_with_reasons() {
        let local = facts("10.0.0.1", "10.0.0.0/24");
        let peers = [
            peer("b", "10.0.0.2", "10.244.1.128/25", None), // overlaps own
            peer("c", "10.0.0.3", "10.99.0.0/24", None),    // outside the cluster
            peer("d", "10.0.0.4", "10.244.4.0/24", None),
            peer("e", "10.0.0.5", "10.244.4.0/25", None), // overlaps d's
            Peer {
                pod_cidrs: vec![],
                ..peer("f", "10.0.0.6", "10.244.6.0/24", None)
            },
            peer("g", "fd00::7", "10.244.7.0/24", None), // other family
            peer("h", "10.0.0.8", "0.0.0.0/0", None),
            peer("i", "10.0.0.9", "fd10::/64", None), // v6 range via v4 node in host-gw
        ];
        let mut cfg = config();
        cfg.cluster_cidrs.push("fd10::/56".parse().unwrap());
        let d = plan(Backend::HostGw, &local, &cfg, &peers, None);
        assert_eq!(
            d.routes
                .iter()
                .map(|r| r.dst.to_string())
                .collect::<Vec<_>>(),
            ["10.244.4.0/24"]
        );
        let reasons: BTreeMap<&str, &str> = d
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason.as_str()))
            .collect();
        assert!(
            reasons["b"].contains("overlaps this node's own range"),
            "{reasons:?}"
        );
        assert!(reasons["c"].contains("outside the cluster"), "{reasons:?}");
        assert!(
            reasons["e"].contains("overlaps 10.244.4.0/24 of node d"),
            "{reasons:?}"
        );
        assert!(reasons["f"].contains("no pod CIDR"), "{reasons:?}");
        assert!(reasons["g"].contains("IP family"), "{reasons:?}");
        assert!(reasons["h"].contains("default route"), "{reasons:?}");
        assert!(reasons["i"].contains("use vxlan"), "{reasons:?}");
        assert!(!reasons.contains_key("d"));
    }

    #[test]
    fn diff_adds_missing_and_removes_stale() {
        let local = facts("10.0.0.1", "10.0.0.0/24");
        let peers = [
            peer("b", "10.0.0.2", "10.244.2.0/24", None),
            peer("c", "10.0.0.3", "10.244.3.0/24", None),
        ];
        let desired = plan(Backend::Vxlan, &local, &config(), &peers, Some(7));
        // Nothing yet: everything is added.
        let c = diff(&desired, &CurrentState::default());
        assert_eq!(
            (
                c.add_routes.len(),
                c.add_rules.len(),
                c.add_neighbours.len(),
                c.add_fdb.len()
            ),
            (4, 1, 2, 2)
        );
        assert!(c.del_routes.is_empty() && c.del_neighbours.is_empty() && c.del_fdb.is_empty());
        assert!(c.del_rules.is_empty());
        // In place: nothing to do.
        let now = CurrentState {
            routes: desired.routes.clone(),
            rules: desired.rules.clone(),
            neighbours: desired.neighbours.clone(),
            fdb: desired.fdb.clone(),
        };
        assert!(diff(&desired, &now).is_empty());
        // c left; b's MAC changed; a host-gw leftover exists.
        let after = plan(
            Backend::Vxlan,
            &local,
            &config(),
            &[Peer {
                vtep_mac: Some([2, 9, 9, 9, 9, 9]),
                ..peers[0].clone()
            }],
            Some(7),
        );
        let mut now = now;
        now.routes
            .insert(route("10.244.5.0/24", "10.0.0.5", 2, false));
        now.rules.insert("10.244.9.0/24".parse().unwrap());
        let c = diff(&after, &now);
        assert!(c.add_routes.is_empty());
        assert!(c.add_rules.is_empty());
        assert_eq!(
            c.del_rules,
            ["10.244.9.0/24".parse::<IpNet>().unwrap()],
            "a rule for a range this node no longer has goes"
        );
        assert_eq!(
            c.del_routes,
            [
                policy_route("10.0.0.3/32", "10.244.3.0", 7),
                route("10.244.3.0/24", "10.244.3.0", 7, true),
                route("10.244.5.0/24", "10.0.0.5", 2, false)
            ]
        );
        assert_eq!(
            c.add_neighbours,
            [("10.244.2.0".parse().unwrap(), [2, 9, 9, 9, 9, 9])]
        );
        assert_eq!(c.del_neighbours.len(), 1);
        assert_eq!(
            c.del_neighbours[0].0,
            "10.244.3.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.add_fdb,
            [FdbEntry {
                mac: [2, 9, 9, 9, 9, 9],
                dst: "10.0.0.2".parse().unwrap()
            }]
        );
        assert_eq!(c.del_fdb.len(), 2, "c's entry and b's old MAC");
    }

    #[test]
    fn switching_backend_replaces_every_route() {
        let local = facts("10.0.0.1", "10.0.0.0/24");
        let peers = [peer("b", "10.0.0.2", "10.244.2.0/24", None)];
        let hostgw = plan(Backend::HostGw, &local, &config(), &peers, None);
        let vxlan = plan(Backend::Vxlan, &local, &config(), &peers, Some(7));
        let now = CurrentState {
            routes: hostgw.routes.clone(),
            ..Default::default()
        };
        let c = diff(&vxlan, &now);
        assert_eq!(
            c.add_routes,
            [
                policy_route("10.0.0.2/32", "10.244.2.0", 7),
                route("10.244.2.0/24", "10.244.2.0", 7, true)
            ]
        );
        assert_eq!(c.del_routes, [route("10.244.2.0/24", "10.0.0.2", 2, false)]);
        assert_eq!(c.add_rules, ["10.244.1.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(
            route("10.244.2.0/24", "10.244.2.0", 7, true).to_string(),
            "10.244.2.0/24 via 10.244.2.0 dev #7 onlink"
        );
        assert_eq!(
            policy_route("10.0.0.2/32", "10.244.2.0", 7).to_string(),
            format!("10.0.0.2/32 via 10.244.2.0 dev #7 onlink table {POLICY_ROUTE_TABLE}")
        );
        // And back: the rule and the policy route go with the overlay.
        let now = CurrentState {
            routes: vxlan.routes.clone(),
            rules: vxlan.rules.clone(),
            ..Default::default()
        };
        let c = diff(&hostgw, &now);
        assert_eq!(c.del_rules, ["10.244.1.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(c.del_routes.len(), 2, "{c:?}");
    }
}
