//! IP masquerade for pod traffic leaving the cluster, as one nftables table per network.
//!
//! Pod traffic keeps its source address towards the cluster's pod network and towards every
//! node (Kubernetes' "no NAT inside the cluster" rule); everything else is masqueraded. The
//! node addresses live in two named sets ([`NODE_ADDRESS_SET_V4`], [`NODE_ADDRESS_SET_V6`])
//! that the node network sync keeps equal to all nodes' addresses
//! ([`set_node_addresses`]), while the plugin's ADD only makes sure the table, the sets and
//! the chain exist ([`ensure`]) and never touches the sets' elements.
//!
//! The rules are per pod range, not per pod, so ADD only has to make sure the table exists
//! and DEL leaves it alone. Every change is one `nft -f` transaction.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::CniError;
use crate::nft;
use kinit_nft::{normalize, objects};

/// Name of the set (type `ipv4_addr`) of node IPv4 addresses traffic to which keeps the pod's
/// source address.
pub const NODE_ADDRESS_SET_V4: &str = "node_ips";
/// Name of the set (type `ipv6_addr`) of node IPv6 addresses traffic to which keeps the pod's
/// source address.
pub const NODE_ADDRESS_SET_V6: &str = "node_ips6";

/// The nftables table (family `inet`) holding the masquerade rules of `network`.
///
/// It starts with `kinit` so `kinit reset` removes it with kinit's other tables.
pub fn table_name(network: &str) -> String {
    let safe: String = network
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("kinit_cni_{safe}")
}

/// The masquerade rules: traffic from `pod_subnets` to anything outside `no_masq`, the node
/// address sets and multicast is masqueraded.
fn rules(pod_subnets: &[IpNet], no_masq: &[IpNet]) -> Vec<String> {
    let mut rules = Vec::new();
    for subnet in pod_subnets {
        let (fam, multicast, set) = match subnet {
            IpNet::V4(_) => ("ip", "224.0.0.0/4", NODE_ADDRESS_SET_V4),
            IpNet::V6(_) => ("ip6", "ff00::/8", NODE_ADDRESS_SET_V6),
        };
        let mut rule = format!("{fam} saddr {subnet}");
        for n in no_masq
            .iter()
            .filter(|n| n.addr().is_ipv4() == subnet.addr().is_ipv4())
        {
            rule.push_str(&format!(" {fam} daddr != {n}"));
        }
        rule.push_str(&format!(
            " {fam} daddr != @{set} {fam} daddr != {multicast} masquerade"
        ));
        rules.push(rule);
    }
    rules
}

const CHAIN_HEAD: &str = "type nat hook postrouting priority srcnat; policy accept;";

/// The masquerade chain as `nft list chain` prints it: `pod_subnets` traffic to anything
/// outside `no_masq`, the node addresses and multicast is masqueraded.
pub fn ruleset(table: &str, pod_subnets: &[IpNet], no_masq: &[IpNet]) -> String {
    let body: String = rules(pod_subnets, no_masq)
        .iter()
        .map(|r| format!("    {r}\n"))
        .collect();
    format!("table inet {table} {{\n  chain postrouting {{\n    {CHAIN_HEAD}\n{body}  }}\n}}\n")
}

/// Statements creating the table and both node address sets when absent (and leaving them,
/// with their elements, alone when present).
fn skeleton(table: &str) -> String {
    format!(
        "add table inet {table}\n\
         add set inet {table} {NODE_ADDRESS_SET_V4} {{ type ipv4_addr; }}\n\
         add set inet {table} {NODE_ADDRESS_SET_V6} {{ type ipv6_addr; }}\n"
    )
}

/// The transaction [`ensure`] applies: the skeleton, then the chain replaced in place.
fn ensure_script(table: &str, pod_subnets: &[IpNet], no_masq: &[IpNet]) -> String {
    let mut script = skeleton(table);
    script.push_str(&format!(
        "add chain inet {table} postrouting {{ {CHAIN_HEAD} }}\nflush chain inet {table} postrouting\n"
    ));
    for rule in rules(pod_subnets, no_masq) {
        script.push_str(&format!("add rule inet {table} postrouting {rule}\n"));
    }
    script
}

/// Makes sure the network's masquerade table holds the chain of [`ruleset`] and the node
/// address sets; the sets' elements are kept as they are.
pub fn ensure(network: &str, pod_subnets: &[IpNet], no_masq: &[IpNet]) -> Result<(), CniError> {
    let table = table_name(network);
    let want = ruleset(&table, pod_subnets, no_masq);
    let nft = nft();
    if let Ok(current) = nft.run(&["list", "chain", "inet", &table, "postrouting"]) {
        // The chain's rules name both sets, so a matching chain implies the sets exist.
        if normalize(&current) == normalize(&want) {
            return Ok(());
        }
    }
    nft.apply(&ensure_script(&table, pod_subnets, no_masq))
        .map_err(|e| CniError::nft(format!("set up the masquerade table inet {table}"), e))
}

/// The node addresses currently in the network's sets (empty when the table is absent).
pub fn node_addresses(network: &str) -> Result<BTreeSet<IpAddr>, CniError> {
    let table = table_name(network);
    let mut out = BTreeSet::new();
    for set in [NODE_ADDRESS_SET_V4, NODE_ADDRESS_SET_V6] {
        let listing = nft()
            .list_json(&["list", "set", "inet", &table, set])
            .map_err(|e| CniError::nft(format!("read set {set} of table inet {table}"), e))?;
        let Some(listing) = listing else {
            continue;
        };
        for s in objects(&listing, "set") {
            for elem in s["elem"].as_array().into_iter().flatten() {
                match elem.as_str().and_then(|e| e.parse::<IpAddr>().ok()) {
                    Some(ip) => {
                        out.insert(ip);
                    }
                    None => {
                        return Err(CniError::NftContent(format!(
                            "set {set} of table inet {table} holds {elem}, which is not a single address; \
                             delete the table (nft delete table inet {table}) and let kinit recreate it"
                        )))
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The transaction that makes the sets hold exactly `addresses`.
fn node_addresses_script(table: &str, addresses: &BTreeSet<IpAddr>) -> String {
    let mut script = skeleton(table);
    for (set, v4) in [(NODE_ADDRESS_SET_V4, true), (NODE_ADDRESS_SET_V6, false)] {
        script.push_str(&format!("flush set inet {table} {set}\n"));
        let elems: Vec<String> = addresses
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(IpAddr::to_string)
            .collect();
        if !elems.is_empty() {
            script.push_str(&format!(
                "add element inet {table} {set} {{ {} }}\n",
                elems.join(", ")
            ));
        }
    }
    script
}

/// Makes the network's node address sets hold exactly `addresses` (flush and add in one
/// transaction, so no packet sees a half-filled set), creating the table and sets when
/// needed. Returns whether anything changed.
pub fn set_node_addresses(network: &str, addresses: &BTreeSet<IpAddr>) -> Result<bool, CniError> {
    if let Ok(current) = node_addresses(network) {
        if &current == addresses {
            // An empty answer may also mean "no table yet": make sure it exists.
            if !addresses.is_empty() || table_exists(network)? {
                return Ok(false);
            }
        }
    }
    let table = table_name(network);
    nft()
        .apply(&node_addresses_script(&table, addresses))
        .map_err(|e| {
            CniError::nft(
                format!("update the node address sets of table inet {table}"),
                e,
            )
        })
        .map(|()| true)
}

fn table_exists(network: &str) -> Result<bool, CniError> {
    let table = table_name(network);
    nft()
        .table_exists("inet", &table)
        .map_err(|e| CniError::nft(format!("look for table inet {table}"), e))
}

/// Removes the network's masquerade table if present (used by tests and tooling).
pub fn remove(network: &str) -> Result<(), CniError> {
    let table = table_name(network);
    let script = format!("table inet {table}\ndelete table inet {table}\n");
    nft()
        .apply(&script)
        .map_err(|e| CniError::nft(format!("delete table inet {table}"), e))
}

/// Whether nftables is usable: the CLI runs and the kernel answers.
pub fn probe() -> Result<(), CniError> {
    nft()
        .probe()
        .map_err(|e| CniError::nft("list the nftables tables", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_only_traffic_leaving_the_cluster() {
        let r = ruleset(
            "kinit_cni_kinit",
            &[
                "10.244.7.0/24".parse().unwrap(),
                "fd10:0:0:7::/64".parse().unwrap(),
            ],
            &[
                "10.244.0.0/16".parse().unwrap(),
                "fd10::/56".parse().unwrap(),
            ],
        );
        assert!(r.starts_with("table inet kinit_cni_kinit {"), "{r}");
        assert!(r.contains("type nat hook postrouting priority srcnat; policy accept;"));
        assert!(r.contains(
            "ip saddr 10.244.7.0/24 ip daddr != 10.244.0.0/16 ip daddr != @node_ips ip daddr != 224.0.0.0/4 masquerade"
        ));
        assert!(r.contains(
            "ip6 saddr fd10:0:0:7::/64 ip6 daddr != fd10::/56 ip6 daddr != @node_ips6 ip6 daddr != ff00::/8 masquerade"
        ));
    }

    #[test]
    fn ensure_keeps_set_elements_and_replaces_the_chain() {
        let s = ensure_script(
            "kinit_cni_kinit",
            &["10.244.7.0/24".parse().unwrap()],
            &["10.244.0.0/16".parse().unwrap()],
        );
        // `add` never fails on an existing object and never empties a set; only the chain
        // is flushed.
        assert!(s.contains("add set inet kinit_cni_kinit node_ips { type ipv4_addr; }"));
        assert!(!s.contains("flush set"), "{s}");
        assert!(!s.contains("delete"), "{s}");
        assert!(s.contains("flush chain inet kinit_cni_kinit postrouting\n"));
        assert!(s.ends_with("ip daddr != @node_ips ip daddr != 224.0.0.0/4 masquerade\n"));
    }

    #[test]
    fn node_address_script_flushes_and_fills_both_families() {
        let addrs: BTreeSet<IpAddr> = ["10.0.0.2", "10.0.0.1", "fd00::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let s = node_addresses_script("t", &addrs);
        assert!(
            s.contains(
                "flush set inet t node_ips\nadd element inet t node_ips { 10.0.0.1, 10.0.0.2 }\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("flush set inet t node_ips6\nadd element inet t node_ips6 { fd00::1 }\n"),
            "{s}"
        );
        let s = node_addresses_script("t", &BTreeSet::new());
        assert!(!s.contains("add element"), "{s}");
    }

    #[test]
    fn table_names_are_safe_identifiers() {
        assert_eq!(table_name("kinit"), "kinit_cni_kinit");
        assert_eq!(table_name("my-net.v1"), "kinit_cni_my_net_v1");
    }
}
