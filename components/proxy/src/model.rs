//! From Kubernetes objects to what the proxy programs: a Service, its EndpointSlices and this
//! node's name become one [`ServicePortPlan`] per service port and IP family, holding the
//! addresses that catch traffic, the endpoints chosen for it and the policies that apply.
//!
//! This layer is pure (no kernel, no API); it follows kube-proxy's semantics:
//! - ExternalName and headless Services, and Services labelled
//!   `service.kubernetes.io/service-proxy-name` (owned by another proxy) are not proxied;
//! - slices belong to a Service through the `kubernetes.io/service-name` label; a service port
//!   takes the slice ports with the same *name* and protocol (the slice port number is the
//!   resolved targetPort, so named target ports work);
//! - only `ready` endpoints are used; when none is ready anywhere, endpoints that are both
//!   `serving` and `terminating` are used instead (KEP-1669);
//! - `internalTrafficPolicy: Local` / `externalTrafficPolicy: Local` restrict cluster-IP /
//!   external traffic to endpoints on this node (the same ready-then-terminating fallback
//!   applies to the local set).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use kinit_rules::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL};
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// Largest affinity timeout the API accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// An IP family; one inet table carries both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The nft payload keyword of the family: `ip` or `ip6`.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The nft address type: `ipv4_addr` or `ipv6_addr`.
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// Short suffix used in object names: `v4` or `v6`.
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }

    /// The Kubernetes spelling: `IPv4` or `IPv6` (EndpointSlice `addressType`).
    pub fn kubernetes(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// A transport protocol a Service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the API default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses the API spelling; `None` (unset) is TCP, unknown values give `None`.
    pub fn from_api(value: Option<&str>) -> Option<Protocol> {
        match value {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    /// The nft keyword: `tcp`, `udp` or `sctp`.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number (6, 17, 132).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// Namespace and name of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The namespace.
    pub namespace: String,
    /// The Service name.
    pub name: String,
}

impl ServiceKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Service object (`None` without a name).
    pub fn of(service: &Service) -> Option<ServiceKey> {
        Some(ServiceKey::new(
            service.metadata.namespace.clone().unwrap_or_default(),
            service.metadata.name.clone()?,
        ))
    }

    /// The Service an EndpointSlice belongs to, from its `kubernetes.io/service-name` label.
    pub fn owning(slice: &EndpointSlice) -> Option<ServiceKey> {
        let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        if name.is_empty() {
            return None;
        }
        Some(ServiceKey::new(
            slice.metadata.namespace.clone().unwrap_or_default(),
            name.clone(),
        ))
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of a Service: the Service, the port's name (may be empty) and protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The Service.
    pub service: ServiceKey,
    /// `spec.ports[].name` (empty for a single unnamed port).
    pub port: String,
    /// The protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.service, self.port, self.protocol.nft())
    }
}

/// Where an endpoint listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointAddr {
    /// The endpoint's IP.
    pub ip: IpAddr,
    /// The endpoint's port (the resolved target port).
    pub port: u16,
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// What the proxy programs for one service port in one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortPlan {
    /// The service port.
    pub name: ServicePortName,
    /// The family of every address below.
    pub family: Family,
    /// The cluster IP(s) of this family (normally exactly one).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports[].port`.
    pub port: u16,
    /// `spec.ports[].nodePort`, if allocated.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of this family (not `ipMode: Proxy` ones).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of this family.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// ClientIP session affinity timeout in seconds, when affinity is on.
    pub affinity_timeout_seconds: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` (only when the Service is reachable externally).
    pub external_local: bool,
    /// Endpoints used for "Cluster" traffic policy (empty when the policy is not used).
    pub cluster_endpoints: Vec<EndpointAddr>,
    /// Endpoints on this node used for "Local" traffic policy (empty when not used).
    pub local_endpoints: Vec<EndpointAddr>,
    /// Whether the service port has any usable endpoint anywhere in the cluster.
    pub has_endpoints: bool,
}

impl ServicePortPlan {
    /// Whether traffic can come from outside: a node port, external IPs or load-balancer IPs.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Whether cluster-wide endpoints are needed: Cluster internal policy, or any external
    /// traffic (even with Local external policy, pods reaching an external address are
    /// short-circuited to the cluster-wide endpoints).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_local || self.externally_accessible()
    }

    /// Whether node-local endpoints are needed.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_local || (self.external_local && self.externally_accessible())
    }

    /// Whether cluster-IP traffic has somewhere to go.
    pub fn has_internal_endpoints(&self) -> bool {
        if self.internal_local {
            !self.local_endpoints.is_empty()
        } else {
            self.has_endpoints
        }
    }

    /// Whether external traffic (from outside the cluster) has somewhere to go.
    pub fn has_external_endpoints(&self) -> bool {
        if self.external_local {
            !self.local_endpoints.is_empty()
        } else {
            self.has_endpoints
        }
    }

    /// Every endpoint traffic can be sent to from this node, sorted, without duplicates.
    pub fn reachable_endpoints(&self) -> Vec<EndpointAddr> {
        let mut all: Vec<EndpointAddr> = self
            .cluster_endpoints
            .iter()
            .chain(self.local_endpoints.iter())
            .copied()
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Every address that catches traffic for this port (cluster, external, load balancer).
    pub fn service_ips(&self) -> impl Iterator<Item = &IpAddr> {
        self.cluster_ips
            .iter()
            .chain(self.external_ips.iter())
            .chain(self.load_balancer_ips.iter())
    }
}

/// Why a Service gets no rules at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotProxied {
    /// `type: ExternalName` (a DNS alias).
    ExternalName,
    /// `clusterIP: None` (or empty): clients use endpoint addresses directly.
    Headless,
    /// Labelled `service.kubernetes.io/service-proxy-name`: another proxy owns it.
    OtherProxy(String),
    /// No parsable cluster IP.
    NoClusterIp,
}

impl fmt::Display for NotProxied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotProxied::ExternalName => write!(f, "type ExternalName"),
            NotProxied::Headless => write!(f, "headless (clusterIP None)"),
            NotProxied::OtherProxy(p) => write!(f, "handled by service proxy {p:?}"),
            NotProxied::NoClusterIp => write!(f, "no valid cluster IP"),
        }
    }
}

/// One endpoint as read from a slice, before selection.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    addr: EndpointAddr,
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// The plans for `service` given the EndpointSlices that belong to it (others are ignored)
/// and the name of this node. Ports with an unknown protocol or an invalid number are skipped.
pub fn plan_service(
    service: &Service,
    slices: &[&EndpointSlice],
    node_name: &str,
) -> Result<Vec<ServicePortPlan>, NotProxied> {
    let labels = service.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)) {
        return Err(NotProxied::OtherProxy(proxy.clone()));
    }
    let Some(key) = ServiceKey::of(service) else {
        return Err(NotProxied::NoClusterIp);
    };
    let spec = service.spec.clone().unwrap_or_default();
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kinit_rules::is_external_name(service) {
        return Err(NotProxied::ExternalName);
    }
    if !kinit_rules::has_cluster_ip(service) {
        return Err(NotProxied::Headless);
    }
    let primary = spec.cluster_ip.as_deref().unwrap_or("");
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let listed = spec.cluster_ips.clone().unwrap_or_default();
    let candidates = if listed.is_empty() {
        vec![primary.to_string()]
    } else {
        listed
    };
    for text in &candidates {
        if let Ok(ip) = text.parse::<IpAddr>() {
            // One cluster IP per family (the API allows no more).
            if !cluster_ips.iter().any(|c| Family::of(c) == Family::of(&ip)) {
                cluster_ips.push(ip);
            }
        }
    }
    if cluster_ips.is_empty() {
        return Err(NotProxied::NoClusterIp);
    }

    let external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect();
    let load_balancer_ips: Vec<IpAddr> = if service_type == "LoadBalancer" {
        service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            // ipMode Proxy: the load balancer proxies itself, packets arrive for the node.
            .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|ing| ing.ip.as_deref()?.parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    let source_ranges: Vec<IpNet> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let affinity_timeout_seconds =
        (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .map(|t| t.min(MAX_AFFINITY_TIMEOUT_SECONDS))
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
        });
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let service_externally_accessible = matches!(service_type, "LoadBalancer" | "NodePort")
        || (service_type == "ClusterIP" && !external_ips.is_empty());
    let external_local =
        service_externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");

    let own_slices: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| ServiceKey::owning(s).as_ref() == Some(&key))
        .collect();

    let mut plans = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::from_api(port.protocol.as_deref()) else {
            continue;
        };
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        if number == 0 {
            continue;
        }
        let node_port = port
            .node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let name = ServicePortName {
            service: key.clone(),
            port: port.name.clone().unwrap_or_default(),
            protocol,
        };
        for family in Family::ALL {
            let family_ips: Vec<IpAddr> = cluster_ips
                .iter()
                .filter(|ip| Family::of(ip) == family)
                .copied()
                .collect();
            if family_ips.is_empty() {
                continue;
            }
            let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
                ips.iter()
                    .filter(|ip| Family::of(ip) == family)
                    .copied()
                    .collect()
            };
            let candidates = candidates_for(&own_slices, &name, family, node_name);
            let mut plan = ServicePortPlan {
                name: name.clone(),
                family,
                cluster_ips: family_ips,
                port: number,
                node_port,
                external_ips: of_family(&external_ips),
                load_balancer_ips: of_family(&load_balancer_ips),
                load_balancer_source_ranges: source_ranges
                    .iter()
                    .filter(|n| Family::of(&n.addr()) == family)
                    .copied()
                    .collect(),
                affinity_timeout_seconds,
                internal_local,
                external_local,
                cluster_endpoints: Vec::new(),
                local_endpoints: Vec::new(),
                has_endpoints: false,
            };
            categorize(&mut plan, &candidates);
            plans.push(plan);
        }
    }
    Ok(plans)
}

/// The endpoints of `family` for `port` across `slices`, deduplicated by address (an
/// endpoint listed twice counts as local if any listing says so), sorted by address.
fn candidates_for(
    slices: &[&EndpointSlice],
    port: &ServicePortName,
    family: Family,
    node_name: &str,
) -> Vec<Candidate> {
    let mut found: BTreeMap<EndpointAddr, Candidate> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != family.kubernetes() {
            continue;
        }
        for slice_port in slice.ports.iter().flatten() {
            if slice_port.name.as_deref().unwrap_or("") != port.port
                || Protocol::from_api(slice_port.protocol.as_deref()) != Some(port.protocol)
            {
                continue;
            }
            let Some(number) = slice_port
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                // kube-proxy uses the first address only (the API says they are fungible).
                let Some(ip) = endpoint
                    .addresses
                    .first()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                else {
                    continue;
                };
                if Family::of(&ip) != family {
                    continue;
                }
                let candidate = Candidate {
                    addr: EndpointAddr { ip, port: number },
                    local: endpoint.node_name.as_deref() == Some(node_name),
                    ready: kinit_rules::endpoint_ready(endpoint),
                    serving: kinit_rules::endpoint_serving(endpoint),
                    terminating: kinit_rules::endpoint_terminating(endpoint),
                };
                match found.get(&candidate.addr) {
                    Some(existing) if existing.local || !candidate.local => {}
                    _ => {
                        found.insert(candidate.addr, candidate);
                    }
                }
            }
        }
    }
    found.into_values().collect()
}

/// Fills the plan's endpoint lists the way kube-proxy categorizes endpoints (without
/// topology hints): ready endpoints, or serving+terminating ones when none is ready.
fn categorize(plan: &mut ServicePortPlan, candidates: &[Candidate]) {
    let pick = |filter: &dyn Fn(&Candidate) -> bool| -> Vec<EndpointAddr> {
        candidates
            .iter()
            .filter(|c| filter(c))
            .map(|c| c.addr)
            .collect()
    };
    let usable_fallback = |c: &Candidate| c.serving && c.terminating;
    plan.has_endpoints = candidates.iter().any(|c| c.ready || usable_fallback(c));
    if plan.uses_cluster_endpoints() {
        let mut cluster = pick(&|c| c.ready);
        if cluster.is_empty() {
            cluster = pick(&|c| usable_fallback(c));
        }
        plan.cluster_endpoints = cluster;
    }
    if plan.uses_local_endpoints() {
        let mut local = pick(&|c| c.local && c.ready);
        if local.is_empty() {
            local = pick(&|c| c.local && usable_fallback(c));
        }
        plan.local_endpoints = local;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    pub(crate) fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    fn web(spec: serde_json::Value) -> Service {
        let mut s = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        });
        for (k, v) in spec.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        service(s)
    }

    fn web_slice(endpoints: serde_json::Value) -> EndpointSlice {
        slice(json!({
            "metadata": {"name": "web-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
    }

    fn ep(
        ip: &str,
        node: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
    ) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    fn addr(s: &str) -> EndpointAddr {
        let (ip, port) = s.rsplit_once(':').unwrap();
        EndpointAddr {
            ip: ip.trim_matches(|c| c == '[' || c == ']').parse().unwrap(),
            port: port.parse().unwrap(),
        }
    }

    #[test]
    fn named_target_port_is_matched_by_service_port_name() {
        let svc = web(json!({}));
        let s = web_slice(json!([ep("10.244.1.5", "n1", true, true, false)]));
        let plans = plan_service(&svc, &[&s], "n1").unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].port, 80);
        // The slice's port number is the resolved target port.
        assert_eq!(plans[0].cluster_endpoints, vec![addr("10.244.1.5:8080")]);
    }

    #[test]
    fn slice_ports_with_other_name_or_protocol_are_ignored() {
        let svc = web(json!({}));
        let s = slice(json!({
            "metadata": {"name": "web-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080, "protocol": "UDP"}],
            "endpoints": [ep("10.244.1.5", "n1", true, true, false)]
        }));
        let plans = plan_service(&svc, &[&s], "n1").unwrap();
        assert!(plans[0].cluster_endpoints.is_empty());
        assert!(!plans[0].has_endpoints);
    }

    #[test]
    fn slices_of_other_services_are_ignored() {
        let svc = web(json!({}));
        let mut other = web_slice(json!([ep("10.244.1.5", "n1", true, true, false)]));
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(SERVICE_NAME_LABEL.into(), "db".into());
        let plans = plan_service(&svc, &[&other], "n1").unwrap();
        assert!(plans[0].cluster_endpoints.is_empty());
    }

    #[test]
    fn only_ready_endpoints_are_used_when_any_is_ready() {
        let svc = web(json!({}));
        let s = web_slice(json!([
            ep("10.244.1.5", "n1", true, true, false),
            ep("10.244.1.6", "n1", false, true, true),
            ep("10.244.1.7", "n1", false, false, false),
        ]));
        let plans = plan_service(&svc, &[&s], "n1").unwrap();
        assert_eq!(plans[0].cluster_endpoints, vec![addr("10.244.1.5:8080")]);
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback_when_none_is_ready() {
        let svc = web(json!({}));
        let s = web_slice(json!([
            ep("10.244.1.6", "n1", false, true, true),
            ep("10.244.1.7", "n1", false, false, true),
            ep("10.244.1.8", "n1", false, false, false),
        ]));
        let plans = plan_service(&svc, &[&s], "n1").unwrap();
        assert!(plans[0].has_endpoints);
        assert_eq!(plans[0].cluster_endpoints, vec![addr("10.244.1.6:8080")]);
    }

    #[test]
    fn unset_conditions_mean_ready() {
        let svc = web(json!({}));
        let s = web_slice(json!([{"addresses": ["10.244.1.9"]}]));
        let plans = plan_service(&svc, &[&s], "n1").unwrap();
        assert_eq!(plans[0].cluster_endpoints, vec![addr("10.244.1.9:8080")]);
    }

    #[test]
    fn unset_serving_follows_ready_for_the_terminating_fallback() {
        let svc = web(json!({}));
        let s = web_slice(json!([
            {"addresses": ["10.244.1.6"], "conditions": {"ready": false, "terminating": true}},
            {"addresses": ["10.244.1.7"], "conditions": {"terminating": true}},
        ]));
        let plans = plan_service(&svc, &[&s], "n1").unwrap();
        // 10.244.1.7 is ready (unset), so there is no fallback; 10.244.1.6 is not serving.
        assert_eq!(plans[0].cluster_endpoints, vec![addr("10.244.1.7:8080")]);
        let s = web_slice(json!([
            {"addresses": ["10.244.1.6"], "conditions": {"ready": false, "terminating": true}},
        ]));
        let plans = plan_service(&svc, &[&s], "n1").unwrap();
        assert!(!plans[0].has_endpoints);
    }

    #[test]
    fn duplicate_endpoints_across_slices_are_listed_once() {
        let a = web_slice(json!([ep("10.244.1.5", "n2", true, true, false)]));
        let mut b = web_slice(json!([ep("10.244.1.5", "n1", true, true, false)]));
        b.metadata.name = Some("web-def".into());
        let svc = web(json!({"internalTrafficPolicy": "Local"}));
        let plans = plan_service(&svc, &[&a, &b], "n1").unwrap();
        assert_eq!(plans[0].local_endpoints, vec![addr("10.244.1.5:8080")]);
        assert_eq!(plans[0].cluster_endpoints, Vec::<EndpointAddr>::new());
    }

    #[test]
    fn internal_local_policy_uses_only_this_nodes_endpoints() {
        let svc = web(json!({"internalTrafficPolicy": "Local"}));
        let s = web_slice(json!([
            ep("10.244.1.5", "n1", true, true, false),
            ep("10.244.2.5", "n2", true, true, false),
        ]));
        let plans = plan_service(&svc, &[&s], "n1").unwrap();
        let p = &plans[0];
        assert!(p.internal_local);
        assert_eq!(p.local_endpoints, vec![addr("10.244.1.5:8080")]);
        // A ClusterIP-only service with Local internal policy does not need cluster endpoints.
        assert!(p.cluster_endpoints.is_empty());
        assert!(p.has_internal_endpoints());

        let none_here = plan_service(&svc, &[&s], "n3").unwrap();
        assert!(none_here[0].has_endpoints);
        assert!(!none_here[0].has_internal_endpoints());
    }

    #[test]
    fn external_local_policy_keeps_cluster_endpoints_for_short_circuit() {
        let svc = web(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}));
        let s = web_slice(json!([
            ep("10.244.1.5", "n1", true, true, false),
            ep("10.244.2.5", "n2", true, true, false),
        ]));
        let p = &plan_service(&svc, &[&s], "n2").unwrap()[0];
        assert!(p.external_local);
        assert_eq!(p.node_port, Some(30080));
        assert_eq!(p.local_endpoints, vec![addr("10.244.2.5:8080")]);
        assert_eq!(p.cluster_endpoints.len(), 2);
        let elsewhere = &plan_service(&svc, &[&s], "n3").unwrap()[0];
        assert!(!elsewhere.has_external_endpoints());
        assert!(elsewhere.has_internal_endpoints());
    }

    #[test]
    fn local_policy_falls_back_to_local_terminating_endpoints() {
        let svc = web(json!({"internalTrafficPolicy": "Local"}));
        let s = web_slice(json!([
            ep("10.244.1.5", "n1", false, true, true),
            ep("10.244.2.5", "n2", true, true, false),
        ]));
        let p = &plan_service(&svc, &[&s], "n1").unwrap()[0];
        assert_eq!(p.local_endpoints, vec![addr("10.244.1.5:8080")]);
    }

    #[test]
    fn external_policy_local_needs_external_reachability() {
        let svc = web(json!({"externalTrafficPolicy": "Local"}));
        let p = &plan_service(&svc, &[], "n1").unwrap()[0];
        assert!(
            !p.external_local,
            "a plain ClusterIP service has no external traffic"
        );
    }

    #[test]
    fn skipped_services() {
        let ext = service(json!({"metadata": {"name": "e", "namespace": "d"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}}));
        assert_eq!(plan_service(&ext, &[], "n"), Err(NotProxied::ExternalName));
        let headless = web(json!({"clusterIP": "None", "clusterIPs": ["None"]}));
        assert_eq!(plan_service(&headless, &[], "n"), Err(NotProxied::Headless));
        let empty = web(json!({"clusterIP": "", "clusterIPs": []}));
        assert_eq!(plan_service(&empty, &[], "n"), Err(NotProxied::Headless));
        let mut other = web(json!({}));
        other.metadata.labels = Some(
            [(SERVICE_PROXY_NAME_LABEL.to_string(), "other".to_string())]
                .into_iter()
                .collect(),
        );
        assert_eq!(
            plan_service(&other, &[], "n"),
            Err(NotProxied::OtherProxy("other".into()))
        );
    }

    #[test]
    fn dual_stack_service_gets_one_plan_per_family_with_family_endpoints() {
        let svc = web(
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "externalIPs": ["192.0.2.7", "2001:db8::7"]}),
        );
        let v4 = web_slice(json!([ep("10.244.1.5", "n1", true, true, false)]));
        let mut v6 = web_slice(json!([ep("fd00:244::5", "n1", true, true, false)]));
        v6.address_type = "IPv6".into();
        v6.metadata.name = Some("web-v6".into());
        let plans = plan_service(&svc, &[&v4, &v6], "n1").unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].family, Family::V4);
        assert_eq!(
            plans[0].external_ips,
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(plans[0].cluster_endpoints, vec![addr("10.244.1.5:8080")]);
        assert_eq!(plans[1].family, Family::V6);
        assert_eq!(
            plans[1].cluster_ips,
            vec!["fd00:96::10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(plans[1].cluster_endpoints, vec![addr("[fd00:244::5]:8080")]);
    }

    #[test]
    fn multi_port_and_protocols() {
        let svc = web(json!({"ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "sig", "port": 3868, "protocol": "SCTP"},
            {"name": "bad", "port": 1, "protocol": "ICMP"}
        ]}));
        let plans = plan_service(&svc, &[], "n1").unwrap();
        let protos: Vec<Protocol> = plans.iter().map(|p| p.name.protocol).collect();
        assert_eq!(protos, vec![Protocol::Udp, Protocol::Tcp, Protocol::Sctp]);
    }

    #[test]
    fn affinity_timeout_defaults_and_is_capped() {
        let svc = web(json!({"sessionAffinity": "ClientIP"}));
        let p = &plan_service(&svc, &[], "n1").unwrap()[0];
        assert_eq!(
            p.affinity_timeout_seconds,
            Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
        );
        let svc = web(json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}));
        assert_eq!(
            plan_service(&svc, &[], "n1").unwrap()[0].affinity_timeout_seconds,
            Some(60)
        );
        let svc = web(json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 999999}}}));
        assert_eq!(
            plan_service(&svc, &[], "n1").unwrap()[0].affinity_timeout_seconds,
            Some(MAX_AFFINITY_TIMEOUT_SECONDS)
        );
        let svc = web(json!({"sessionAffinity": "None"}));
        assert_eq!(
            plan_service(&svc, &[], "n1").unwrap()[0].affinity_timeout_seconds,
            None
        );
    }

    #[test]
    fn load_balancer_ingress_ips_except_proxy_mode() {
        let mut svc = web(json!({"type": "LoadBalancer",
            "ports": [{"name": "http", "port": 80, "nodePort": 31000}],
            "loadBalancerSourceRanges": ["192.0.2.0/24", "2001:db8::/32"]}));
        svc.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "198.51.100.1"}, {"ip": "198.51.100.2", "ipMode": "Proxy"},
            {"hostname": "lb.example.org"}]}}))
        .unwrap();
        let p = &plan_service(&svc, &[], "n1").unwrap()[0];
        assert_eq!(
            p.load_balancer_ips,
            vec!["198.51.100.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            p.load_balancer_source_ranges,
            vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(p.externally_accessible());
    }
}
