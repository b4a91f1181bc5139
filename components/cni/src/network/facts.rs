//! What a node knows about itself (uplink, subnet, MTU, VTEP MAC) and publishes to its peers
//! as Node annotations.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::Handle;

use super::{
    Backend, ANNOTATION_BACKEND, ANNOTATION_UPLINK_SUBNET, ANNOTATION_VTEP_MAC, VXLAN_OVERHEAD_V4,
    VXLAN_OVERHEAD_V6,
};
use crate::error::CniError;
use crate::netlink as nl;

/// The VXLAN device's MAC for a node: locally administered and unicast, derived from the node
/// address alone, so a rebooted node comes back with the same MAC and its peers' neighbour
/// and FDB entries stay valid. IPv4 gives `02:4b:<a>:<b>:<c>:<d>` (one MAC per address);
/// IPv6 gives `02:4b` + four bytes of a SHA-256 of the address.
pub fn vtep_mac(node_ip: IpAddr) -> [u8; 6] {
    let tail: [u8; 4] = match node_ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            use sha2::{Digest, Sha256};
            let d = Sha256::digest(v6.octets());
            [d[0], d[1], d[2], d[3]]
        }
    };
    [0x02, 0x4b, tail[0], tail[1], tail[2], tail[3]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub(crate) fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

/// This node's network facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFacts {
    /// The node address the facts were discovered from.
    pub node_ip: IpAddr,
    /// The interface carrying the node address.
    pub uplink: String,
    /// Its interface index.
    pub uplink_index: u32,
    /// The subnet of the node address on the uplink (host bits cleared).
    pub uplink_subnet: IpNet,
    /// The uplink's MTU.
    pub mtu: u32,
    /// The VXLAN device's MAC ([`vtep_mac`] of the node address).
    pub vtep_mac: [u8; 6],
}

impl LocalFacts {
    /// Discovers the facts in the calling thread's network namespace.
    pub async fn discover(node_ip: IpAddr) -> Result<LocalFacts, CniError> {
        let handle = nl::connect()?;
        LocalFacts::discover_with(&handle, node_ip).await
    }

    /// Discovers the facts through `handle` (whose socket decides the namespace).
    pub async fn discover_with(handle: &Handle, node_ip: IpAddr) -> Result<LocalFacts, CniError> {
        let msgs: Vec<_> = handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| CniError::netlink("list the node's addresses", e))?;
        let found = msgs.iter().find_map(|m| {
            let has = m.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == node_ip)
            });
            has.then_some((m.header.index, m.header.prefix_len))
        });
        let Some((index, prefix)) = found else {
            return Err(CniError::Network(format!(
                "no interface of this node carries the node address {node_ip}; configure the agent with an address of this host"
            )));
        };
        let link = nl::link_by_index(handle, index).await?.ok_or_else(|| {
            CniError::Network(format!(
                "the interface #{index} carrying {node_ip} vanished during discovery; retry"
            ))
        })?;
        let uplink = nl::link_name(&link)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{index}"));
        let mtu = nl::link_mtu(&link).unwrap_or(1500);
        let uplink_subnet = IpNet::new(node_ip, prefix)
            .map_err(|e| CniError::Network(format!("address {node_ip}/{prefix} on {uplink}: {e}")))?
            .trunc();
        Ok(LocalFacts {
            node_ip,
            uplink,
            uplink_index: index,
            uplink_subnet,
            mtu,
            vtep_mac: vtep_mac(node_ip),
        })
    }

    /// VXLAN's per-packet overhead on this node's underlay.
    pub fn vxlan_overhead(&self) -> u32 {
        if self.node_ip.is_ipv4() {
            VXLAN_OVERHEAD_V4
        } else {
            VXLAN_OVERHEAD_V6
        }
    }

    /// The MTU pods must use with `backend`: the uplink's for host-gw, less the VXLAN
    /// overhead for vxlan.
    pub fn pod_mtu(&self, backend: Backend) -> u32 {
        match backend {
            Backend::HostGw => self.mtu,
            Backend::Vxlan => self.mtu.saturating_sub(self.vxlan_overhead()).max(68),
        }
    }

    /// The Node annotations this node publishes (the agent merges them into its Node).
    pub fn annotations(&self, backend: Backend) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ANNOTATION_BACKEND.to_string(), backend.to_string()),
            (
                ANNOTATION_UPLINK_SUBNET.to_string(),
                self.uplink_subnet.to_string(),
            ),
            (ANNOTATION_VTEP_MAC.to_string(), format_mac(&self.vtep_mac)),
        ])
    }
}

/// What a peer published in its annotations; values that do not parse are left out and
/// described in `problems` (the peer is then judged as if it had not published them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerFacts {
    /// [`ANNOTATION_BACKEND`].
    pub backend: Option<Backend>,
    /// [`ANNOTATION_UPLINK_SUBNET`] (host bits cleared).
    pub uplink_subnet: Option<IpNet>,
    /// [`ANNOTATION_VTEP_MAC`].
    pub vtep_mac: Option<[u8; 6]>,
    /// One message per malformed annotation.
    pub problems: Vec<String>,
}

/// Parses a Node's annotations (all of them; keys other than kinit's are ignored).
pub fn peer_facts_from_annotations(annotations: &BTreeMap<String, String>) -> PeerFacts {
    let mut facts = PeerFacts::default();
    if let Some(v) = annotations.get(ANNOTATION_BACKEND) {
        match v.parse::<Backend>() {
            Ok(b) => facts.backend = Some(b),
            Err(e) => facts.problems.push(format!("{ANNOTATION_BACKEND}: {e}")),
        }
    }
    if let Some(v) = annotations.get(ANNOTATION_UPLINK_SUBNET) {
        match v.trim().parse::<IpNet>() {
            Ok(n) => facts.uplink_subnet = Some(n.trunc()),
            Err(_) => facts
                .problems
                .push(format!("{ANNOTATION_UPLINK_SUBNET}: {v:?} is not a CIDR")),
        }
    }
    if let Some(v) = annotations.get(ANNOTATION_VTEP_MAC) {
        match parse_mac(v) {
            Some(m) if m[0] & 1 == 0 => facts.vtep_mac = Some(m),
            _ => facts.problems.push(format!(
                "{ANNOTATION_VTEP_MAC}: {v:?} is not a unicast MAC address"
            )),
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_local_unicast_and_stable() {
        let a = vtep_mac("10.88.0.11".parse().unwrap());
        assert_eq!(a, [0x02, 0x4b, 10, 88, 0, 11]);
        assert_eq!(a, vtep_mac("10.88.0.11".parse().unwrap()));
        assert_ne!(a, vtep_mac("10.88.0.12".parse().unwrap()));
        let v6 = vtep_mac("fd00::11".parse().unwrap());
        assert_eq!(v6, vtep_mac("fd00::11".parse().unwrap()));
        assert_ne!(v6, vtep_mac("fd00::12".parse().unwrap()));
        for m in [a, v6] {
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
    }

    #[test]
    fn macs_print_and_parse() {
        let m = [0x02, 0x4b, 0x0a, 0xff, 0, 1];
        assert_eq!(format_mac(&m), "02:4b:0a:ff:00:01");
        assert_eq!(parse_mac("02:4B:0a:ff:00:01"), Some(m));
        for bad in [
            "",
            "02:4b:0a:ff:00",
            "02:4b:0a:ff:00:01:02",
            "zz:4b:0a:ff:00:01",
            "2:4b:0a:ff:00:011",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn annotations_round_trip() {
        let local = LocalFacts {
            node_ip: "10.88.0.11".parse().unwrap(),
            uplink: "eth0".into(),
            uplink_index: 2,
            uplink_subnet: "10.88.0.0/24".parse().unwrap(),
            mtu: 1500,
            vtep_mac: vtep_mac("10.88.0.11".parse().unwrap()),
        };
        let mut ann = local.annotations(Backend::Vxlan);
        assert_eq!(ann[ANNOTATION_BACKEND], "vxlan");
        assert_eq!(ann[ANNOTATION_UPLINK_SUBNET], "10.88.0.0/24");
        assert_eq!(ann[ANNOTATION_VTEP_MAC], "02:4b:0a:58:00:0b");
        assert!(ann
            .keys()
            .all(|k| k.starts_with(super::super::ANNOTATION_PREFIX)));
        ann.insert("other.io/x".into(), "y".into());
        let back = peer_facts_from_annotations(&ann);
        assert_eq!(back.backend, Some(Backend::Vxlan));
        assert_eq!(back.uplink_subnet, Some(local.uplink_subnet));
        assert_eq!(back.vtep_mac, Some(local.vtep_mac));
        assert!(back.problems.is_empty());
        let peer = super::super::Peer::from_node("b", local.node_ip, vec![], &ann);
        assert_eq!(peer.uplink_subnet, Some(local.uplink_subnet));
        assert_eq!(peer.vtep_mac, Some(local.vtep_mac));
    }

    #[test]
    fn malformed_annotations_are_reported_not_used() {
        let ann = BTreeMap::from([
            (ANNOTATION_BACKEND.to_string(), "udp".to_string()),
            (
                ANNOTATION_UPLINK_SUBNET.to_string(),
                "10.88.0.7/24".to_string(),
            ),
            (
                ANNOTATION_VTEP_MAC.to_string(),
                "03:00:00:00:00:01".to_string(),
            ),
        ]);
        let f = peer_facts_from_annotations(&ann);
        assert_eq!(f.backend, None);
        assert_eq!(f.uplink_subnet, Some("10.88.0.0/24".parse().unwrap()));
        assert_eq!(f.vtep_mac, None);
        assert_eq!(f.problems.len(), 2, "{:?}", f.problems);
        let ann = BTreeMap::from([(ANNOTATION_UPLINK_SUBNET.to_string(), "x".to_string())]);
        assert_eq!(peer_facts_from_annotations(&ann).problems.len(), 1);
        assert_eq!(
            peer_facts_from_annotations(&BTreeMap::new()),
            PeerFacts::default()
        );
    }

    #[test]
    fn pod_mtu_follows_the_backend() {
        let mut f = LocalFacts {
            node_ip: "10.0.0.1".parse().unwrap(),
            uplink: "eth0".into(),
            uplink_index: 2,
            uplink_subnet: "10.0.0.0/24".parse().unwrap(),
            mtu: 9000,
            vtep_mac: [2, 0, 0, 0, 0, 1],
        };
        assert_eq!(f.pod_mtu(Backend::HostGw), 9000);
        assert_eq!(f.pod_mtu(Backend::Vxlan), 8950);
        f.node_ip = "fd00::1".parse().unwrap();
        assert_eq!(f.pod_mtu(Backend::Vxlan), 8930);
    }
}
