//! Deterministic nft object names for service ports and endpoints.
//!
//! Names read like kube-proxy's: a prefix saying what the object is, a short hash of the
//! full name (so names stay unique and visually distinct even when truncated), then
//! `namespace/service/family/protocol/port` and, for endpoints, `__ip/port`. nft identifiers
//! allow `[A-Za-z0-9_./-]`; anything else (IPv6 colons included) is replaced. Kernel object
//! names are limited to 255 bytes; every name here stays within [`NAME_MAX`].

use sha2::{Digest, Sha256};

use crate::model::{EndpointAddr, Family, ServicePortName};

/// Longest object name produced (prefix included); below the kernel's 255-byte limit.
pub const NAME_MAX: usize = 240;
/// Longest prefix used (`endpoint-`, `affinity-`, `external-`, `firewall-`).
const PREFIX_MAX: usize = 9;
/// Longest name part after the prefix.
const BASE_MAX: usize = NAME_MAX - PREFIX_MAX;

/// Prefix of cluster-policy service chains.
pub const SERVICE_PREFIX: &str = "service-";
/// Prefix of local-policy service chains.
pub const LOCAL_PREFIX: &str = "local-";
/// Prefix of external-traffic chains.
pub const EXTERNAL_PREFIX: &str = "external-";
/// Prefix of load-balancer source-range chains.
pub const FIREWALL_PREFIX: &str = "firewall-";
/// Prefix of endpoint chains.
pub const ENDPOINT_PREFIX: &str = "endpoint-";
/// Prefix of session-affinity sets.
pub const AFFINITY_PREFIX: &str = "affinity-";

/// Names of the chains of one service port in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceChainNames {
    /// Chain with the cluster-wide endpoints.
    pub cluster: String,
    /// Chain with this node's endpoints.
    pub local: String,
    /// Chain every external destination (node port, external IP, LB IP) goes to first.
    pub external: String,
    /// Chain enforcing `loadBalancerSourceRanges`.
    pub firewall: String,
}

impl ServiceChainNames {
    /// The names for `port` in `family`.
    pub fn new(port: &ServicePortName, family: Family) -> ServiceChainNames {
        let base = service_base(port, family);
        ServiceChainNames {
            cluster: format!("{SERVICE_PREFIX}{base}"),
            local: format!("{LOCAL_PREFIX}{base}"),
            external: format!("{EXTERNAL_PREFIX}{base}"),
            firewall: format!("{FIREWALL_PREFIX}{base}"),
        }
    }
}

/// Names of the objects of one endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointNames {
    /// The endpoint's DNAT chain.
    pub chain: String,
    /// The endpoint's session-affinity set.
    pub affinity_set: String,
}

impl EndpointNames {
    /// The names for `endpoint` of `port` in `family`.
    pub fn new(port: &ServicePortName, family: Family, endpoint: &EndpointAddr) -> EndpointNames {
        let ip = endpoint.ip.to_string().replace(':', ".");
        let base = hash_and_truncate(&format!(
            "{}__{}/{}",
            service_path(port, family),
            ip,
            endpoint.port
        ));
        EndpointNames {
            chain: format!("{ENDPOINT_PREFIX}{base}"),
            affinity_set: format!("{AFFINITY_PREFIX}{base}"),
        }
    }
}

/// Whether `name` is one of the per-service objects (chain or set) this crate creates.
pub fn is_service_object(name: &str) -> bool {
    [
        SERVICE_PREFIX,
        LOCAL_PREFIX,
        EXTERNAL_PREFIX,
        FIREWALL_PREFIX,
        ENDPOINT_PREFIX,
        AFFINITY_PREFIX,
    ]
    .iter()
    .any(|p| name.starts_with(p))
        && name.contains('/')
}

fn service_path(port: &ServicePortName, family: Family) -> String {
    format!(
        "{}/{}/ip{}/{}/{}",
        port.service.namespace,
        port.service.name,
        family.suffix(),
        port.protocol.nft(),
        port.port
    )
}

fn service_base(port: &ServicePortName, family: Family) -> String {
    hash_and_truncate(&service_path(port, family))
}

/// `HASH-name` with unsafe characters replaced, cut to [`BASE_MAX`] (ending in `...` when cut).
fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hash = hex::encode_upper(&digest[..4]);
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut out = format!("{hash}-{safe}");
    if out.len() > BASE_MAX {
        // Only ASCII is left, so byte indices are character boundaries.
        out.truncate(BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServiceKey};

    fn port(ns: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName {
            service: ServiceKey::new(ns, name),
            port: port.into(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn names_are_deterministic_and_readable() {
        let p = port("default", "web", "http");
        let a = ServiceChainNames::new(&p, Family::V4);
        let b = ServiceChainNames::new(&p, Family::V4);
        assert_eq!(a, b);
        assert!(a.cluster.starts_with("service-"), "{}", a.cluster);
        assert!(
            a.cluster.ends_with("-default/web/ipv4/tcp/http"),
            "{}",
            a.cluster
        );
        assert_eq!(
            a.cluster.len(),
            "service-".len() + 8 + 1 + "default/web/ipv4/tcp/http".len()
        );
        assert!(a.external.starts_with("external-"));
        assert!(a.local.starts_with("local-"));
        let v6 = ServiceChainNames::new(&p, Family::V6);
        assert_ne!(a.cluster, v6.cluster);
        assert!(is_service_object(&a.cluster));
        assert!(!is_service_object("services"));
    }

    #[test]
    fn endpoint_names_differ_per_endpoint_and_have_no_colons() {
        let p = port("default", "web", "http");
        let e1 = EndpointNames::new(
            &p,
            Family::V6,
            &EndpointAddr {
                ip: "fd00::1".parse().unwrap(),
                port: 80,
            },
        );
        let e2 = EndpointNames::new(
            &p,
            Family::V6,
            &EndpointAddr {
                ip: "fd00::2".parse().unwrap(),
                port: 80,
            },
        );
        assert_ne!(e1.chain, e2.chain);
        assert!(!e1.chain.contains(':'));
        assert!(e1.chain.ends_with("__fd00..1/80"), "{}", e1.chain);
        assert!(e1.affinity_set.starts_with("affinity-"));
        // The hash part differs, so near-identical names are told apart at a glance.
        assert_ne!(e1.chain[9..17], e2.chain[9..17]);
    }

    #[test]
    fn longest_possible_names_stay_within_the_kernel_limit() {
        let long = "a".repeat(63);
        let p = port(&long, &long, &"p".repeat(15));
        let ep = EndpointAddr {
            ip: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap(),
            port: 65535,
        };
        let names = EndpointNames::new(&p, Family::V6, &ep);
        assert!(names.chain.len() <= NAME_MAX, "{}", names.chain.len());
        assert!(names.affinity_set.len() <= NAME_MAX);
        let chains = ServiceChainNames::new(&p, Family::V6);
        for n in [
            &chains.cluster,
            &chains.local,
            &chains.external,
            &chains.firewall,
        ] {
            assert!(n.len() <= NAME_MAX);
        }
        // Even absurd input (not valid in the API) is cut and stays unique via the hash.
        let huge = "b".repeat(500);
        let a = EndpointNames::new(&port(&huge, "x", ""), Family::V4, &ep);
        let b = EndpointNames::new(&port(&huge, "y", ""), Family::V4, &ep);
        assert!(a.chain.len() <= NAME_MAX);
        assert!(a.chain.ends_with("..."));
        assert_ne!(a.chain, b.chain);
    }

    #[test]
    fn unsafe_characters_are_replaced() {
        let p = port("ns", "we b;drop", "x");
        let n = ServiceChainNames::new(&p, Family::V4);
        assert!(
            n.cluster.ends_with("ns/we_b_drop/ipv4/tcp/x"),
            "{}",
            n.cluster
        );
    }
}
