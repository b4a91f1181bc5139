//! From plans to nftables objects: the fixed skeleton of the table (base chains, dispatch
//! chains, verdict maps) and, per Service, its chains, affinity sets and map elements.
//!
//! The layout follows kube-proxy's nftables mode, in one `inet` table carrying both families
//! (maps are per family because their keys hold addresses):
//!
//! - `nat-prerouting` / `nat-output` jump to `services`, which looks the destination up in
//!   `service-ips-v4|v6` (cluster, external and load-balancer IPs) and, for local destination
//!   addresses other than loopback, `service-nodeports-v4|v6`. Elements jump (`goto`) to
//!   a service chain.
//! - A service chain (`service-…` for cluster-wide endpoints, `local-…` for this node's)
//!   marks traffic for masquerade when needed, honours session affinity, then picks an
//!   endpoint with `numgen random mod N`. External destinations go through `external-…`
//!   first (masquerade for Cluster policy; source-preserving for Local policy, with pods and
//!   the node itself short-circuited to the cluster-wide chain).
//! - An endpoint chain (`endpoint-…`) marks hairpin traffic, records affinity and DNATs.
//! - Filter chains on input/forward/output (before DNAT) look new connections up in
//!   `no-endpoint-services-*` and, on input (packets for this node), in
//!   `no-endpoint-nodeports-*`: Services without endpoints are rejected (TCP reset / ICMP
//!   unreachable), Local-policy destinations without local endpoints are dropped. The node's
//!   own connections to its node ports are not checked on output, so they can still be
//!   short-circuited to cluster-wide endpoints. After DNAT (forward, and output at a later
//!   priority) a packet still addressed to a cluster IP matched no service port and is
//!   rejected (`cluster-ips-*`). `firewall-check` enforces `loadBalancerSourceRanges`.
//! - `nat-postrouting` masquerades packets carrying the masquerade mark bit.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

use crate::model::{EndpointAddr, Family, ServicePortPlan};
use crate::names::{EndpointNames, ServiceChainNames};

/// Chain that sets the masquerade mark.
pub const MARK_MASQ_CHAIN: &str = "mark-for-masquerade";
/// Chain (in nat postrouting) that masquerades marked packets.
pub const MASQUERADING_CHAIN: &str = "masquerading";
/// Dispatch chain for service destinations.
pub const SERVICES_CHAIN: &str = "services";
/// Filter chain consulting the no-endpoint map of service addresses.
pub const SERVICE_ENDPOINTS_CHECK_CHAIN: &str = "service-endpoints-check";
/// Filter chain (input only) consulting the no-endpoint map of node ports.
pub const NODEPORT_ENDPOINTS_CHECK_CHAIN: &str = "nodeport-endpoints-check";
/// Filter chain rejecting traffic to cluster IPs on ports no Service uses.
pub const CLUSTER_IPS_CHECK_CHAIN: &str = "cluster-ips-check";
/// Filter chain consulting the firewall map.
pub const FIREWALL_CHECK_CHAIN: &str = "firewall-check";
/// Chain rejecting connections to Services without endpoints.
pub const REJECT_CHAIN: &str = "reject-chain";

/// Settings the rules depend on besides the plans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderContext {
    /// The nft table (family `inet`).
    pub table: String,
    /// The masquerade mark value (a single bit, e.g. `0x4000`).
    pub masquerade_mark: u32,
    /// Pod CIDRs of the cluster: traffic from elsewhere to a cluster IP is masqueraded, and
    /// pods reaching an external address of a Local-policy Service are short-circuited.
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all traffic to cluster IPs (kube-proxy's `--masquerade-all`).
    pub masquerade_all: bool,
}

impl RenderContext {
    fn cidrs(&self, family: Family) -> Vec<String> {
        let of_family: Vec<IpNet> = self
            .cluster_cidrs
            .iter()
            .filter(|n| Family::of(&n.addr()) == family)
            .copied()
            .collect();
        interval_set(&of_family)
    }

    /// `ip saddr <cidrs>` (or `!=`) for `family`, `None` when no CIDR of that family is known.
    fn source_match(&self, family: Family, negate: bool) -> Option<String> {
        let cidrs = self.cidrs(family);
        let op = if negate { "!= " } else { "" };
        match cidrs.len() {
            0 => None,
            1 => Some(format!("{} saddr {op}{}", family.nft(), cidrs[0])),
            _ => Some(format!(
                "{} saddr {op}{{ {} }}",
                family.nft(),
                cidrs.join(", ")
            )),
        }
    }
}

/// One of the table's verdict maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapName {
    /// `service-ips-*`: address . protocol . port → service chain.
    ServiceIps(Family),
    /// `service-nodeports-*`: protocol . port → external chain.
    ServiceNodePorts(Family),
    /// `no-endpoint-services-*`: address . protocol . port → reject or drop.
    NoEndpointServices(Family),
    /// `no-endpoint-nodeports-*`: protocol . port → reject or drop.
    NoEndpointNodePorts(Family),
    /// `firewall-ips-*`: load-balancer address . protocol . port → firewall chain.
    FirewallIps(Family),
    /// `cluster-ips-*`: the set (not a map) of active cluster IPs.
    ClusterIps(Family),
}

impl MapName {
    /// Every map of the table.
    pub fn all() -> Vec<MapName> {
        let mut all = Vec::new();
        for f in Family::ALL {
            all.extend([
                MapName::ServiceIps(f),
                MapName::ServiceNodePorts(f),
                MapName::NoEndpointServices(f),
                MapName::NoEndpointNodePorts(f),
                MapName::FirewallIps(f),
                MapName::ClusterIps(f),
            ]);
        }
        all
    }

    fn family(self) -> Family {
        match self {
            MapName::ServiceIps(f)
            | MapName::ServiceNodePorts(f)
            | MapName::NoEndpointServices(f)
            | MapName::NoEndpointNodePorts(f)
            | MapName::FirewallIps(f)
            | MapName::ClusterIps(f) => f,
        }
    }

    /// Whether this is a plain set (elements without a verdict).
    pub fn is_set(self) -> bool {
        matches!(self, MapName::ClusterIps(_))
    }

    /// `map` or `set`, for nft commands.
    pub fn kind(self) -> &'static str {
        if self.is_set() {
            "set"
        } else {
            "map"
        }
    }

    /// An element of this map in nft syntax: `key : verdict`, or `key` for a set.
    pub fn element(self, key: &str, value: &str) -> String {
        if self.is_set() {
            key.to_string()
        } else {
            format!("{key} : {value}")
        }
    }

    /// The map's declaration body (inside `{ }`).
    pub fn declaration(self) -> String {
        let f = self.family();
        if self.is_set() {
            return format!("type {}; comment \"active cluster IPs\";", f.addr_type());
        }
        let (key, comment) = match self {
            MapName::ServiceIps(_) => (
                format!("{} . inet_proto . inet_service", f.addr_type()),
                "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            ),
            MapName::ServiceNodePorts(_) => {
                ("inet_proto . inet_service".to_string(), "NodePort traffic")
            }
            MapName::NoEndpointServices(_) => (
                format!("{} . inet_proto . inet_service", f.addr_type()),
                "services without usable endpoints: reject or drop",
            ),
            MapName::NoEndpointNodePorts(_) => (
                "inet_proto . inet_service".to_string(),
                "node ports without usable endpoints: reject or drop",
            ),
            MapName::FirewallIps(_) => (
                format!("{} . inet_proto . inet_service", f.addr_type()),
                "destinations subject to loadBalancerSourceRanges",
            ),
            MapName::ClusterIps(_) => unreachable!("sets return above"),
        };
        format!("type {key} : verdict; comment \"{comment}\";")
    }
}

impl fmt::Display for MapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = match self {
            MapName::ServiceIps(_) => "service-ips",
            MapName::ServiceNodePorts(_) => "service-nodeports",
            MapName::NoEndpointServices(_) => "no-endpoint-services",
            MapName::NoEndpointNodePorts(_) => "no-endpoint-nodeports",
            MapName::FirewallIps(_) => "firewall-ips",
            MapName::ClusterIps(_) => "cluster-ips",
        };
        write!(f, "{base}-{}", self.family().suffix())
    }
}

/// A map element: which map, and its key in nft syntax.
pub type ElementKey = (MapName, String);

/// Everything one Service contributes to the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chain name → its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Set name → declaration body (inside `{ }`).
    pub sets: BTreeMap<String, String>,
    /// Map element → verdict.
    pub elements: BTreeMap<ElementKey, String>,
}

impl ServiceRules {
    fn chain(&mut self, name: &str) -> &mut Vec<String> {
        self.chains.entry(name.to_string()).or_default()
    }
}

/// A base chain: hooked into netfilter, with its fixed rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseChain {
    /// The chain name.
    pub name: &'static str,
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// The netfilter hook.
    pub hook: &'static str,
    /// The priority (numeric).
    pub priority: i32,
}

impl BaseChain {
    /// The chain's declaration body (inside `{ }`).
    pub fn declaration(&self) -> String {
        format!(
            "type {} hook {} priority {}; policy accept;",
            self.kind, self.hook, self.priority
        )
    }
}

/// Filter chains run before DNAT (dstnat is -100) so they see the original destination.
const FILTER_PRIORITY: i32 = -110;

/// Runs after DNAT on output (dstnat is -100), to see where a packet really goes.
const POST_DNAT_PRIORITY: i32 = -90;

/// The base chains of the table.
pub const BASE_CHAINS: [BaseChain; 8] = [
    BaseChain {
        name: "filter-prerouting",
        kind: "filter",
        hook: "prerouting",
        priority: FILTER_PRIORITY,
    },
    BaseChain {
        name: "filter-input",
        kind: "filter",
        hook: "input",
        priority: FILTER_PRIORITY,
    },
    BaseChain {
        name: "filter-forward",
        kind: "filter",
        hook: "forward",
        priority: FILTER_PRIORITY,
    },
    BaseChain {
        name: "filter-output",
        kind: "filter",
        hook: "output",
        priority: FILTER_PRIORITY,
    },
    BaseChain {
        name: "filter-output-post-dnat",
        kind: "filter",
        hook: "output",
        priority: POST_DNAT_PRIORITY,
    },
    BaseChain {
        name: "nat-prerouting",
        kind: "nat",
        hook: "prerouting",
        priority: -100,
    },
    BaseChain {
        name: "nat-output",
        kind: "nat",
        hook: "output",
        priority: -100,
    },
    BaseChain {
        name: "nat-postrouting",
        kind: "nat",
        hook: "postrouting",
        priority: 100,
    },
];

/// The fixed chains of the table (base chains and the shared regular chains) with their
/// rules, in creation order.
pub fn skeleton_chains(ctx: &RenderContext) -> Vec<(String, Vec<String>)> {
    let mark = format!("{:#x}", ctx.masquerade_mark);
    let new = "ct state new";
    let mut service_check = Vec::new();
    let mut nodeport_check = Vec::new();
    let mut cluster_ips_check = Vec::new();
    let mut firewall_check = Vec::new();
    let mut services = Vec::new();
    for f in Family::ALL {
        let ipx = f.nft();
        let not_loopback = match f {
            Family::V4 => "ip daddr != 127.0.0.0/8",
            Family::V6 => "ip6 daddr != ::1",
        };
        service_check.push(format!(
            "{ipx} daddr . meta l4proto . th dport vmap @{}",
            MapName::NoEndpointServices(f)
        ));
        // Reached from the input hook only: the destination is this node.
        nodeport_check.push(format!(
            "{not_loopback} meta l4proto . th dport vmap @{}",
            MapName::NoEndpointNodePorts(f)
        ));
        cluster_ips_check.push(format!("{ipx} daddr @{} reject", MapName::ClusterIps(f)));
        firewall_check.push(format!(
            "{ipx} daddr . meta l4proto . th dport vmap @{}",
            MapName::FirewallIps(f)
        ));
        services.push(format!(
            "{ipx} daddr . meta l4proto . th dport vmap @{}",
            MapName::ServiceIps(f)
        ));
        services.push(format!(
            "{not_loopback} fib daddr type local meta l4proto . th dport vmap @{}",
            MapName::ServiceNodePorts(f)
        ));
    }
    vec![
        (
            "filter-prerouting".into(),
            vec![format!("{new} jump {FIREWALL_CHECK_CHAIN}")],
        ),
        (
            "filter-input".into(),
            vec![
                format!("{new} jump {NODEPORT_ENDPOINTS_CHECK_CHAIN}"),
                format!("{new} jump {SERVICE_ENDPOINTS_CHECK_CHAIN}"),
            ],
        ),
        (
            "filter-forward".into(),
            vec![
                format!("{new} jump {SERVICE_ENDPOINTS_CHECK_CHAIN}"),
                format!("{new} jump {CLUSTER_IPS_CHECK_CHAIN}"),
            ],
        ),
        (
            "filter-output".into(),
            vec![
                format!("{new} jump {SERVICE_ENDPOINTS_CHECK_CHAIN}"),
                format!("{new} jump {FIREWALL_CHECK_CHAIN}"),
            ],
        ),
        (
            "filter-output-post-dnat".into(),
            vec![format!("{new} jump {CLUSTER_IPS_CHECK_CHAIN}")],
        ),
        (
            "nat-prerouting".into(),
            vec![format!("jump {SERVICES_CHAIN}")],
        ),
        ("nat-output".into(), vec![format!("jump {SERVICES_CHAIN}")]),
        (
            "nat-postrouting".into(),
            vec![format!("jump {MASQUERADING_CHAIN}")],
        ),
        (SERVICE_ENDPOINTS_CHECK_CHAIN.into(), service_check),
        (NODEPORT_ENDPOINTS_CHECK_CHAIN.into(), nodeport_check),
        (CLUSTER_IPS_CHECK_CHAIN.into(), cluster_ips_check),
        (FIREWALL_CHECK_CHAIN.into(), firewall_check),
        (SERVICES_CHAIN.into(), services),
        (
            MASQUERADING_CHAIN.into(),
            vec![
                format!("meta mark & {mark} == 0 return"),
                format!("meta mark set meta mark xor {mark}"),
                "masquerade fully-random".into(),
            ],
        ),
        (
            MARK_MASQ_CHAIN.into(),
            vec![format!("meta mark set meta mark or {mark}")],
        ),
        (
            REJECT_CHAIN.into(),
            vec![
                "meta l4proto tcp reject with tcp reset".into(),
                "reject".into(),
            ],
        ),
    ]
}

/// Whether `name` is one of the skeleton's chains.
pub fn is_skeleton_chain(name: &str) -> bool {
    BASE_CHAINS.iter().any(|b| b.name == name)
        || [
            SERVICE_ENDPOINTS_CHECK_CHAIN,
            NODEPORT_ENDPOINTS_CHECK_CHAIN,
            CLUSTER_IPS_CHECK_CHAIN,
            FIREWALL_CHECK_CHAIN,
            SERVICES_CHAIN,
            MASQUERADING_CHAIN,
            MARK_MASQ_CHAIN,
            REJECT_CHAIN,
        ]
        .contains(&name)
}

/// Prefixes for an anonymous interval set: overlapping and adjacent ones merged (older nft
/// versions reject overlapping intervals in a set), sorted.
fn interval_set(nets: &[IpNet]) -> Vec<String> {
    IpNet::aggregate(&nets.to_vec())
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn ip_key(ip: &std::net::IpAddr, plan: &ServicePortPlan, port: u16) -> String {
    format!("{ip} . {} . {port}", plan.name.protocol.nft())
}

/// The chains, sets and map elements of one Service (all its port plans).
pub fn render_service(ctx: &RenderContext, plans: &[ServicePortPlan]) -> ServiceRules {
    let mut out = ServiceRules::default();
    for plan in plans {
        render_plan(ctx, plan, &mut out);
    }
    out
}

fn render_plan(ctx: &RenderContext, plan: &ServicePortPlan, out: &mut ServiceRules) {
    let family = plan.family;
    let ipx = family.nft();
    let proto = plan.name.protocol.nft();
    let names = ServiceChainNames::new(&plan.name, family);

    let uses_cluster_chain = plan.uses_cluster_endpoints() && !plan.cluster_endpoints.is_empty();
    let uses_local_chain = plan.uses_local_endpoints() && !plan.local_endpoints.is_empty();
    let has_internal = plan.has_internal_endpoints();
    let has_external = plan.has_external_endpoints();
    let internal_chain = if plan.internal_local {
        &names.local
    } else {
        &names.cluster
    };
    let external_policy_chain = if plan.external_local {
        &names.local
    } else {
        &names.cluster
    };
    let uses_external_chain = plan.has_endpoints && plan.externally_accessible();
    let reject = format!("goto {REJECT_CHAIN}");
    // No endpoints at all: reject. Endpoints, but none for this kind of traffic (Local
    // policy without local endpoints): drop, as kube-proxy does.
    let no_endpoint_verdict = if plan.has_endpoints {
        "drop".to_string()
    } else {
        reject
    };

    // Map elements.
    for ip in &plan.cluster_ips {
        out.elements
            .insert((MapName::ClusterIps(family), ip.to_string()), String::new());
        let key = ip_key(ip, plan, plan.port);
        if has_internal {
            out.elements.insert(
                (MapName::ServiceIps(family), key),
                format!("goto {internal_chain}"),
            );
        } else {
            out.elements.insert(
                (MapName::NoEndpointServices(family), key),
                no_endpoint_verdict.clone(),
            );
        }
    }
    for ip in plan
        .external_ips
        .iter()
        .chain(plan.load_balancer_ips.iter())
    {
        let key = ip_key(ip, plan, plan.port);
        if plan.has_endpoints {
            out.elements.insert(
                (MapName::ServiceIps(family), key.clone()),
                format!("goto {}", names.external),
            );
        }
        if !has_external {
            out.elements.insert(
                (MapName::NoEndpointServices(family), key),
                no_endpoint_verdict.clone(),
            );
        }
    }
    if let Some(node_port) = plan.node_port {
        let key = format!("{proto} . {node_port}");
        if plan.has_endpoints {
            out.elements.insert(
                (MapName::ServiceNodePorts(family), key.clone()),
                format!("goto {}", names.external),
            );
        }
        if !has_external {
            out.elements.insert(
                (MapName::NoEndpointNodePorts(family), key),
                no_endpoint_verdict.clone(),
            );
        }
    }
    if !plan.load_balancer_ips.is_empty() && !plan.load_balancer_source_ranges.is_empty() {
        let ranges = interval_set(&plan.load_balancer_source_ranges);
        out.chain(&names.firewall)
            .push(format!("{ipx} saddr != {{ {} }} drop", ranges.join(", ")));
        for ip in &plan.load_balancer_ips {
            out.elements.insert(
                (MapName::FirewallIps(family), ip_key(ip, plan, plan.port)),
                format!("goto {}", names.firewall),
            );
        }
    }

    // Cluster-IP traffic from outside the pod network is masqueraded: it may have been
    // routed here from anywhere and the reply must come back through this node.
    if has_internal {
        let masq = if ctx.masquerade_all {
            Some(String::new())
        } else {
            ctx.source_match(family, true).map(|m| format!(" {m}"))
        };
        if let Some(condition) = masq {
            for ip in &plan.cluster_ips {
                out.chain(internal_chain).push(format!(
                    "{ipx} daddr {ip} {proto} dport {}{condition} jump {MARK_MASQ_CHAIN}",
                    plan.port
                ));
            }
        }
    }

    if uses_external_chain {
        let ext = out.chain(&names.external);
        if !plan.external_local {
            // Endpoints may be on other nodes: masquerade so replies come back here.
            ext.push(format!("jump {MARK_MASQ_CHAIN}"));
        } else {
            // Pods reaching an external address behave as if they went out to the load
            // balancer and came back: no traffic policy, cluster-wide endpoints.
            if let Some(from_pods) = ctx.source_match(family, false) {
                ext.push(format!("{from_pods} goto {}", names.cluster));
            }
            // The node itself: its source address is local, so masquerade and use the
            // cluster-wide endpoints too.
            ext.push(format!("fib saddr type local jump {MARK_MASQ_CHAIN}"));
            ext.push(format!("fib saddr type local goto {}", names.cluster));
        }
        if has_external {
            ext.push(format!("goto {external_policy_chain}"));
        }
    }

    if let Some(timeout) = plan.affinity_timeout_seconds {
        for ep in plan.reachable_endpoints() {
            let n = EndpointNames::new(&plan.name, family, &ep);
            out.sets.insert(
                n.affinity_set,
                format!(
                    "type {}; flags dynamic,timeout; timeout {timeout}s;",
                    family.addr_type()
                ),
            );
        }
    }

    if uses_cluster_chain {
        endpoint_dispatch(plan, &names.cluster, &plan.cluster_endpoints, out);
    }
    if uses_local_chain {
        endpoint_dispatch(plan, &names.local, &plan.local_endpoints, out);
    }

    for ep in plan.reachable_endpoints() {
        let n = EndpointNames::new(&plan.name, family, &ep);
        let chain = out.chain(&n.chain);
        // Hairpin: a pod reaching itself through its Service must see a foreign source.
        chain.push(format!("{ipx} saddr {} jump {MARK_MASQ_CHAIN}", ep.ip));
        if plan.affinity_timeout_seconds.is_some() {
            chain.push(format!("update @{} {{ {ipx} saddr }}", n.affinity_set));
        }
        chain.push(format!("meta l4proto {proto} dnat {ipx} to {ep}"));
    }
}

/// Affinity lookups, then a random choice among `endpoints`, appended to `chain`.
fn endpoint_dispatch(
    plan: &ServicePortPlan,
    chain: &str,
    endpoints: &[EndpointAddr],
    out: &mut ServiceRules,
) {
    let family = plan.family;
    let names: Vec<EndpointNames> = endpoints
        .iter()
        .map(|ep| EndpointNames::new(&plan.name, family, ep))
        .collect();
    let rules = out.chain(chain);
    if plan.affinity_timeout_seconds.is_some() {
        for n in &names {
            rules.push(format!(
                "{} saddr @{} goto {}",
                family.nft(),
                n.affinity_set,
                n.chain
            ));
        }
    }
    let choices: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{i} : goto {}", n.chain))
        .collect();
    rules.push(format!(
        "numgen random mod {} vmap {{ {} }}",
        names.len(),
        choices.join(", ")
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{plan_service, Protocol, ServiceKey, ServicePortName};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn ctx() -> RenderContext {
        RenderContext {
            table: "kinit-proxy".into(),
            masquerade_mark: 0x4000,
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:244::/56".parse().unwrap(),
            ],
            masquerade_all: false,
        }
    }

    fn svc(spec: serde_json::Value) -> Service {
        let mut s = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80}]}
        });
        for (k, v) in spec.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        serde_json::from_value(s).unwrap()
    }

    fn slice(family: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{family}"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": family,
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints
        }))
        .unwrap()
    }

    fn ready(ip: &str, node: &str) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}})
    }

    fn rules_for(s: &Service, slices: &[&EndpointSlice], node: &str) -> ServiceRules {
        render_service(&ctx(), &plan_service(s, slices, node).unwrap())
    }

    fn names(family: Family) -> ServiceChainNames {
        ServiceChainNames::new(
            &ServicePortName {
                service: ServiceKey::new("default", "web"),
                port: "http".into(),
                protocol: Protocol::Tcp,
            },
            family,
        )
    }

    fn element(r: &ServiceRules, map: MapName, key: &str) -> Option<String> {
        r.elements.get(&(map, key.to_string())).cloned()
    }

    #[test]
    fn cluster_ip_dispatches_randomly_over_endpoint_chains() {
        let s = svc(json!({}));
        let sl = slice(
            "IPv4",
            json!([ready("10.244.1.5", "n1"), ready("10.244.2.5", "n2")]),
        );
        let r = rules_for(&s, &[&sl], "n1");
        let n = names(Family::V4);
        assert_eq!(
            element(&r, MapName::ServiceIps(Family::V4), "10.96.0.10 . tcp . 80"),
            Some(format!("goto {}", n.cluster))
        );
        let chain = &r.chains[&n.cluster];
        assert_eq!(
            chain[0],
            "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
        );
        assert!(
            chain[1].starts_with("numgen random mod 2 vmap { 0 : goto endpoint-"),
            "{}",
            chain[1]
        );
        assert!(chain[1].contains(", 1 : goto endpoint-"));
        let endpoint_chains: Vec<&String> = r
            .chains
            .keys()
            .filter(|k| k.starts_with("endpoint-"))
            .collect();
        assert_eq!(endpoint_chains.len(), 2);
        let ep = &r.chains[endpoint_chains[0]];
        assert_eq!(ep[0], "ip saddr 10.244.1.5 jump mark-for-masquerade");
        assert_eq!(ep[1], "meta l4proto tcp dnat ip to 10.244.1.5:8080");
        assert!(r.sets.is_empty());
    }

    #[test]
    fn service_without_endpoints_is_rejected_not_dnatted() {
        let s = svc(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            "externalIPs": ["192.0.2.7"]}),
        );
        let r = rules_for(&s, &[], "n1");
        assert!(r.chains.is_empty(), "{:?}", r.chains);
        assert_eq!(
            element(
                &r,
                MapName::NoEndpointServices(Family::V4),
                "10.96.0.10 . tcp . 80"
            ),
            Some("goto reject-chain".into())
        );
        assert_eq!(
            element(
                &r,
                MapName::NoEndpointServices(Family::V4),
                "192.0.2.7 . tcp . 80"
            ),
            Some("goto reject-chain".into())
        );
        assert_eq!(
            element(&r, MapName::NoEndpointNodePorts(Family::V4), "tcp . 30080"),
            Some("goto reject-chain".into())
        );
        assert!(element(&r, MapName::ServiceIps(Family::V4), "10.96.0.10 . tcp . 80").is_none());
        assert!(element(&r, MapName::ServiceNodePorts(Family::V4), "tcp . 30080").is_none());
    }

    #[test]
    fn nodeport_and_external_ips_go_through_masquerading_external_chain() {
        let s = svc(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            "externalIPs": ["192.0.2.7"]}),
        );
        let sl = slice("IPv4", json!([ready("10.244.1.5", "n1")]));
        let r = rules_for(&s, &[&sl], "n1");
        let n = names(Family::V4);
        assert_eq!(
            element(&r, MapName::ServiceNodePorts(Family::V4), "tcp . 30080"),
            Some(format!("goto {}", n.external))
        );
        assert_eq!(
            element(&r, MapName::ServiceIps(Family::V4), "192.0.2.7 . tcp . 80"),
            Some(format!("goto {}", n.external))
        );
        assert_eq!(
            r.chains[&n.external],
            vec![
                "jump mark-for-masquerade".to_string(),
                format!("goto {}", n.cluster)
            ]
        );
    }

    #[test]
    fn external_local_policy_keeps_source_and_short_circuits_pods() {
        let s = svc(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}));
        let sl = slice(
            "IPv4",
            json!([ready("10.244.1.5", "n1"), ready("10.244.2.5", "n2")]),
        );
        let r = rules_for(&s, &[&sl], "n1");
        let n = names(Family::V4);
        assert_eq!(
            r.chains[&n.external],
            vec![
                format!("ip saddr 10.244.0.0/16 goto {}", n.cluster),
                "fib saddr type local jump mark-for-masquerade".to_string(),
                format!("fib saddr type local goto {}", n.cluster),
                format!("goto {}", n.local),
            ]
        );
        assert!(r.chains[&n.local]
            .iter()
            .any(|l| l.starts_with("numgen random mod 1 ")));
        assert!(r.chains[&n.cluster]
            .iter()
            .any(|l| l.starts_with("numgen random mod 2 ")));

        // No local endpoint: external traffic from outside is dropped (not rejected), but
        // the external chain still exists for the short-circuit of pods and the node.
        let r = rules_for(&s, &[&sl], "n3");
        assert_eq!(
            element(&r, MapName::NoEndpointNodePorts(Family::V4), "tcp . 30080"),
            Some("drop".into())
        );
        assert_eq!(
            element(&r, MapName::ServiceNodePorts(Family::V4), "tcp . 30080"),
            Some(format!("goto {}", n.external))
        );
        assert_eq!(
            r.chains[&n.external].len(),
            3,
            "{:?}",
            r.chains[&n.external]
        );
        assert!(!r.chains.contains_key(&n.local));
    }

    #[test]
    fn internal_local_policy_without_local_endpoints_drops_cluster_ip() {
        let s = svc(json!({"internalTrafficPolicy": "Local"}));
        let sl = slice("IPv4", json!([ready("10.244.2.5", "n2")]));
        let r = rules_for(&s, &[&sl], "n1");
        assert_eq!(
            element(
                &r,
                MapName::NoEndpointServices(Family::V4),
                "10.96.0.10 . tcp . 80"
            ),
            Some("drop".into())
        );
        assert!(r.chains.is_empty());
        let r = rules_for(&s, &[&sl], "n2");
        let n = names(Family::V4);
        assert_eq!(
            element(&r, MapName::ServiceIps(Family::V4), "10.96.0.10 . tcp . 80"),
            Some(format!("goto {}", n.local))
        );
        assert!(r.chains[&n.local][0].contains("jump mark-for-masquerade"));
    }

    #[test]
    fn session_affinity_sets_are_checked_before_the_random_choice() {
        let s = svc(json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}));
        let sl = slice(
            "IPv4",
            json!([ready("10.244.1.5", "n1"), ready("10.244.1.6", "n1")]),
        );
        let r = rules_for(&s, &[&sl], "n1");
        assert_eq!(r.sets.len(), 2);
        for decl in r.sets.values() {
            assert_eq!(decl, "type ipv4_addr; flags dynamic,timeout; timeout 600s;");
        }
        let chain = &r.chains[&names(Family::V4).cluster];
        assert!(
            chain[1].starts_with("ip saddr @affinity-") && chain[1].contains(" goto endpoint-")
        );
        assert!(chain[2].starts_with("ip saddr @affinity-"));
        assert!(chain[3].starts_with("numgen random mod 2"));
        let (set, _) = r.sets.iter().next().unwrap();
        let ep_chain = r
            .chains
            .iter()
            .find(|(k, _)| k.starts_with("endpoint-") && k[9..] == set[9..])
            .unwrap()
            .1;
        assert_eq!(ep_chain[1], format!("update @{set} {{ ip saddr }}"));
    }

    #[test]
    fn ipv6_plans_use_ip6_matches_and_v6_maps() {
        let s = svc(json!({"clusterIP": "fd00:96::10", "clusterIPs": ["fd00:96::10"]}));
        let sl = slice("IPv6", json!([ready("fd00:244::5", "n1")]));
        let r = rules_for(&s, &[&sl], "n1");
        let n = names(Family::V6);
        assert_eq!(
            element(
                &r,
                MapName::ServiceIps(Family::V6),
                "fd00:96::10 . tcp . 80"
            ),
            Some(format!("goto {}", n.cluster))
        );
        assert_eq!(
            r.chains[&n.cluster][0],
            "ip6 daddr fd00:96::10 tcp dport 80 ip6 saddr != fd00:244::/56 jump mark-for-masquerade"
        );
        let ep = r
            .chains
            .iter()
            .find(|(k, _)| k.starts_with("endpoint-"))
            .unwrap()
            .1;
        assert_eq!(ep[0], "ip6 saddr fd00:244::5 jump mark-for-masquerade");
        assert_eq!(ep[1], "meta l4proto tcp dnat ip6 to [fd00:244::5]:8080");
    }

    #[test]
    fn no_cluster_cidrs_means_no_cluster_ip_masquerade_unless_masquerade_all() {
        let s = svc(json!({}));
        let sl = slice("IPv4", json!([ready("10.244.1.5", "n1")]));
        let plans = plan_service(&s, &[&sl], "n1").unwrap();
        let mut c = ctx();
        c.cluster_cidrs.clear();
        let r = render_service(&c, &plans);
        let chain = &r.chains[&names(Family::V4).cluster];
        assert_eq!(chain.len(), 1);
        c.masquerade_all = true;
        let r = render_service(&c, &plans);
        assert_eq!(
            r.chains[&names(Family::V4).cluster][0],
            "ip daddr 10.96.0.10 tcp dport 80 jump mark-for-masquerade"
        );
    }

    #[test]
    fn udp_and_sctp_ports() {
        let s = svc(
            json!({"ports": [{"name": "http", "port": 80, "protocol": "UDP"},
                                      {"name": "http", "port": 80, "protocol": "SCTP"}]}),
        );
        let r = rules_for(&s, &[], "n1");
        assert!(element(
            &r,
            MapName::NoEndpointServices(Family::V4),
            "10.96.0.10 . udp . 80"
        )
        .is_some());
        assert!(element(
            &r,
            MapName::NoEndpointServices(Family::V4),
            "10.96.0.10 . sctp . 80"
        )
        .is_some());
    }

    #[test]
    fn load_balancer_source_ranges_get_a_firewall_chain() {
        let mut s = svc(json!({"type": "LoadBalancer",
            "ports": [{"name": "http", "port": 80, "nodePort": 31000}],
            "loadBalancerSourceRanges": ["192.0.2.0/24"]}));
        s.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}))
                .unwrap();
        let sl = slice("IPv4", json!([ready("10.244.1.5", "n1")]));
        let r = rules_for(&s, &[&sl], "n1");
        let n = names(Family::V4);
        assert_eq!(
            r.chains[&n.firewall],
            vec!["ip saddr != { 192.0.2.0/24 } drop".to_string()]
        );
        assert_eq!(
            element(
                &r,
                MapName::FirewallIps(Family::V4),
                "198.51.100.1 . tcp . 80"
            ),
            Some(format!("goto {}", n.firewall))
        );
        assert_eq!(
            element(
                &r,
                MapName::ServiceIps(Family::V4),
                "198.51.100.1 . tcp . 80"
            ),
            Some(format!("goto {}", n.external))
        );
    }

    #[test]
    fn overlapping_source_ranges_and_cidrs_are_merged() {
        let mut s = svc(json!({"type": "LoadBalancer",
            "ports": [{"name": "http", "port": 80, "nodePort": 31000}],
            "loadBalancerSourceRanges": ["192.0.2.0/25", "198.51.100.7/24", "192.0.2.128/25",
                                         "192.0.2.64/26"]}));
        s.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}))
                .unwrap();
        let sl = slice("IPv4", json!([ready("10.244.1.5", "n1")]));
        let plans = plan_service(&s, &[&sl], "n1").unwrap();
        let mut c = ctx();
        c.cluster_cidrs.extend([
            "10.244.3.0/24".parse::<IpNet>().unwrap(),
            "10.245.0.0/16".parse().unwrap(),
        ]);
        let r = render_service(&c, &plans);
        let n = names(Family::V4);
        assert_eq!(
            r.chains[&n.firewall],
            vec!["ip saddr != { 192.0.2.0/24, 198.51.100.0/24 } drop".to_string()]
        );
        assert!(
            r.chains[&n.cluster][0]
                .ends_with(" ip saddr != 10.244.0.0/15 jump mark-for-masquerade"),
            "{:?}",
            r.chains[&n.cluster]
        );
    }

    #[test]
    fn skeleton_has_reject_and_masquerade_machinery() {
        let chains: BTreeMap<String, Vec<String>> = skeleton_chains(&ctx()).into_iter().collect();
        assert_eq!(
            chains["mark-for-masquerade"],
            vec!["meta mark set meta mark or 0x4000"]
        );
        assert_eq!(chains["masquerading"][0], "meta mark & 0x4000 == 0 return");
        assert!(chains["service-endpoints-check"].contains(
            &"ip daddr . meta l4proto . th dport vmap @no-endpoint-services-v4".to_string()
        ));
        assert!(chains["nodeport-endpoints-check"].contains(
            &"ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports-v4"
                .to_string()
        ));
        // Node ports are checked for packets addressed to this node only (input), never on
        // output, where the node's own traffic is still to be short-circuited.
        assert!(chains["filter-input"]
            .iter()
            .any(|r| r.ends_with("jump nodeport-endpoints-check")));
        assert!(!chains["filter-output"]
            .iter()
            .any(|r| r.contains("nodeport")));
        assert_eq!(
            chains["cluster-ips-check"][0],
            "ip daddr @cluster-ips-v4 reject"
        );
        assert!(chains["filter-output-post-dnat"][0].ends_with("jump cluster-ips-check"));
        assert!(chains["services"].contains(
            &"ip6 daddr != ::1 fib daddr type local meta l4proto . th dport vmap @service-nodeports-v6"
                .to_string()
        ));
        for base in BASE_CHAINS {
            assert!(chains.contains_key(base.name));
            assert!(is_skeleton_chain(base.name));
        }
        assert_eq!(MapName::all().len(), 12);
    }
}
