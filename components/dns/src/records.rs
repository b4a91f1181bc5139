//! Cluster records: the `kubernetes` plugin's answers, computed from Services, EndpointSlices,
//! Namespaces (and Pods for `pods verified`) following the Kubernetes DNS-based service
//! discovery specification and CoreDNS's behaviour.
//!
//! A [`RecordTable`] is rebuilt whenever the cluster objects or the settings change. Every
//! answer it can give (per name and type) is prepared then, so a lookup is one hash probe and
//! the response a copy. Names that exist but lack the asked type get NODATA (NOERROR, SOA in
//! authority); names that do not exist get NXDOMAIN, or go to the next plugin where
//! `fallthrough` says so.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::corefile::{KubernetesConfig, PodMode};
use crate::wire::{self, in_zone, NameKey, Prepared};

/// The label that ties an EndpointSlice to its Service.
pub use kinit_rules::SERVICE_NAME_LABEL;
/// Schema version served at `dns-version.<zone>` (the specification's version).
pub const DNS_SCHEMA_VERSION: &str = "1.1.0";
/// TTL of the `dns-version` record.
const DNS_VERSION_TTL: u32 = 28800;

/// The cluster objects records are built from.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    /// All Services.
    pub services: Vec<Arc<Service>>,
    /// All EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// All Namespaces.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Pods (only needed for `pods verified`).
    pub pods: Vec<Arc<Pod>>,
}

/// Per-zone data of a table.
struct ZoneData {
    key: Box<[u8]>,
    reverse: bool,
    nxdomain: Arc<Prepared>,
    nodata: Arc<Prepared>,
}

/// One name's prepared answers.
struct Entry {
    zone: u16,
    answers: Vec<(u16, Arc<Prepared>)>,
    /// ExternalName Services: the CNAME record, chased for other types.
    external: Option<(Record, Name)>,
}

/// Result of a lookup in the table.
pub enum Answer<'a> {
    /// A prepared answer.
    Prepared(&'a Arc<Prepared>),
    /// An answer built for this query (pod names).
    Built(Prepared),
    /// A CNAME whose target must be resolved (ExternalName Services).
    Chase {
        /// The CNAME record.
        cname: &'a Record,
        /// Its target.
        target: &'a Name,
    },
    /// Refused (zone transfers).
    Refused,
    /// Not synced with the API yet: a name we cannot deny.
    ServFail,
    /// Not found here; the next plugin answers (`fallthrough`).
    Fallthrough,
    /// Not in this table's zones.
    NotInZone,
}

/// All answers of one `kubernetes` plugin instance.
pub struct RecordTable {
    zones: Vec<ZoneData>,
    names: HashMap<Box<[u8]>, Entry>,
    namespaces: HashSet<String>,
    pod_ips: HashSet<(String, IpAddr)>,
    fallthrough: Option<Vec<Box<[u8]>>>,
    pods: PodMode,
    ttl: u32,
    synced: bool,
    services: usize,
}

/// What a Service resolves to.
enum ServiceKind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    External(Name),
}

struct EndpointInfo {
    ip: IpAddr,
    /// The endpoint's label in names: its hostname, or the dashed IP.
    label: String,
    ports: Vec<PortInfo>,
}

#[derive(Clone)]
struct PortInfo {
    name: String,
    protocol: String,
    port: u16,
}

struct ServiceInfo {
    name: String,
    namespace: String,
    kind: ServiceKind,
    ports: Vec<PortInfo>,
    endpoints: Vec<EndpointInfo>,
}

/// Address records and more, collected per name before preparing.
#[derive(Default)]
struct NameData {
    name: Option<Name>,
    zone: u16,
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    srv: Vec<(u16, Name)>,
    srv_addrs: Vec<(Name, IpAddr)>,
    ptr: Vec<Name>,
    external: Option<Name>,
    txt: Option<&'static str>,
    apex: bool,
}

impl NameData {
    fn add_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) if !self.v4.contains(&v4) => self.v4.push(v4),
            IpAddr::V6(v6) if !self.v6.contains(&v6) => self.v6.push(v6),
            _ => {}
        }
    }
}

/// A dashed IP label as CoreDNS writes it (`10-0-0-1`, `fd00--1`).
pub fn dashed_ip(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// Parses a dashed IP label back (CoreDNS's rule: three dashes and no `--` is IPv4).
pub fn parse_dashed_ip(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        label
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    } else {
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

/// The reverse-lookup name of an address (`4.3.2.1.in-addr.arpa.`, nibbles `.ip6.arpa.`).
pub fn reverse_name(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(73);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

fn is_reverse(zone: &Name) -> bool {
    let arpa4 = Name::from_ascii("in-addr.arpa.").expect("static name");
    let arpa6 = Name::from_ascii("ip6.arpa.").expect("static name");
    arpa4.zone_of(zone) || arpa6.zone_of(zone)
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

fn service_info(svc: &Service, slices: &[&EndpointSlice]) -> Option<ServiceInfo> {
    let name = svc.metadata.name.clone()?.to_ascii_lowercase();
    let namespace = svc.metadata.namespace.clone()?.to_ascii_lowercase();
    let spec = svc.spec.as_ref()?;
    let kind = if kinit_rules::is_external_name(svc) {
        let target = spec.external_name.as_deref()?.trim();
        // CoreDNS only answers ExternalName values that are names (an IP there is skipped).
        if target.is_empty() || parse_ip(target).is_some() {
            return None;
        }
        let mut n = Name::from_ascii(target).ok()?.to_lowercase();
        n.set_fqdn(true);
        ServiceKind::External(n)
    } else if kinit_rules::is_headless(svc) {
        ServiceKind::Headless
    } else {
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|s| parse_ip(s))
            .collect();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.as_deref().and_then(parse_ip));
        }
        ServiceKind::ClusterIp(ips)
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(PortInfo {
                name: p.name.clone().unwrap_or_default().to_ascii_lowercase(),
                protocol: p
                    .protocol
                    .clone()
                    .unwrap_or_else(|| "TCP".into())
                    .to_ascii_lowercase(),
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    let mut endpoints: Vec<EndpointInfo> = Vec::new();
    if !matches!(kind, ServiceKind::External(_)) {
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let ports: Vec<PortInfo> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(PortInfo {
                        name: p.name.clone().unwrap_or_default().to_ascii_lowercase(),
                        protocol: p
                            .protocol
                            .clone()
                            .unwrap_or_else(|| "TCP".into())
                            .to_ascii_lowercase(),
                        port: u16::try_from(p.port?).ok()?,
                    })
                })
                .collect();
            for ep in &slice.endpoints {
                // Not-ready endpoints are left out (publishNotReadyAddresses is already
                // reflected in the ready condition).
                if !kinit_rules::endpoint_ready(ep) {
                    continue;
                }
                for addr in &ep.addresses {
                    let Some(ip) = parse_ip(addr) else { continue };
                    if endpoints.iter().any(|e| e.ip == ip) {
                        continue;
                    }
                    let label = ep
                        .hostname
                        .as_deref()
                        .filter(|h| !h.is_empty())
                        .map(|h| h.to_ascii_lowercase())
                        .unwrap_or_else(|| dashed_ip(&ip));
                    endpoints.push(EndpointInfo {
                        ip,
                        label,
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    Some(ServiceInfo {
        name,
        namespace,
        kind,
        ports,
        endpoints,
    })
}

fn rec(name: &Name, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name.clone(), ttl, data)
}

fn addr_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => rec(name, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => rec(name, ttl, RData::AAAA(AAAA(v6))),
    }
}

fn join(label: &str, base: &Name) -> Option<Name> {
    Name::from_ascii(label).ok()?.append_domain(base).ok()
}

struct Builder {
    zones: Vec<(Name, bool)>,
    data: HashMap<Box<[u8]>, NameData>,
}

impl Builder {
    fn entry(&mut self, name: &Name, zone: usize) -> Option<&mut NameData> {
        let key = NameKey::from_name(name, true)?;
        let d = self.data.entry(key.as_bytes().into()).or_default();
        if d.name.is_none() {
            d.name = Some(name.to_lowercase());
            d.zone = zone as u16;
        }
        Some(d)
    }

    /// The (reverse) zone index an address's PTR name belongs to.
    fn reverse_zone_of(&self, ptr: &Name) -> Option<usize> {
        self.zones
            .iter()
            .enumerate()
            .filter(|(_, (z, rev))| *rev && z.zone_of(ptr))
            .max_by_key(|(_, (z, _))| z.num_labels())
            .map(|(i, _)| i)
    }
}

impl RecordTable {
    /// Builds the table for `cfg` from the cluster objects. `local_ips` are this server's
    /// addresses (for `ns.dns.<zone>`), `serial` the SOA serial, `synced` whether the objects
    /// are a complete view of the cluster.
    pub fn build(
        cfg: &KubernetesConfig,
        snap: &ClusterSnapshot,
        local_ips: &[IpAddr],
        synced: bool,
        serial: u32,
    ) -> RecordTable {
        let ttl = cfg.ttl;
        let zones: Vec<(Name, bool)> = cfg
            .zones
            .iter()
            .map(|z| (z.to_lowercase(), is_reverse(z)))
            .collect();
        let primary = zones.iter().find(|(_, rev)| !rev).map(|(z, _)| z.clone());
        let namespaces: HashSet<String> = snap
            .namespaces
            .iter()
            .filter_map(|n| n.metadata.name.as_deref().map(str::to_ascii_lowercase))
            .collect();

        let mut slices_by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for s in &snap.endpoint_slices {
            let (Some(ns), Some(svc)) = (
                s.metadata.namespace.as_deref(),
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            slices_by_service
                .entry((ns.to_ascii_lowercase(), svc.to_ascii_lowercase()))
                .or_default()
                .push(s);
        }
        let services: Vec<ServiceInfo> = snap
            .services
            .iter()
            .filter_map(|svc| {
                let key = (
                    svc.metadata.namespace.as_deref()?.to_ascii_lowercase(),
                    svc.metadata.name.as_deref()?.to_ascii_lowercase(),
                );
                if !namespaces.contains(&key.0) {
                    return None;
                }
                let slices = slices_by_service
                    .get(&key)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                service_info(svc, slices)
            })
            .collect();

        let mut b = Builder {
            zones: zones.clone(),
            data: HashMap::new(),
        };

        // This server's addresses as the cluster sees them (ns.dns.<zone>): the Services whose
        // endpoints are this server, else the local addresses themselves.
        let mut ns_ips: Vec<IpAddr> = Vec::new();
        for s in &services {
            if s.endpoints.iter().any(|e| local_ips.contains(&e.ip)) {
                match &s.kind {
                    ServiceKind::ClusterIp(ips) => ns_ips.extend(ips),
                    ServiceKind::Headless => ns_ips.extend(s.endpoints.iter().map(|e| e.ip)),
                    ServiceKind::External(_) => {}
                }
            }
        }
        if ns_ips.is_empty() {
            ns_ips.extend(local_ips.iter().filter(|ip| !ip.is_loopback()));
        }
        ns_ips.dedup();

        for (zi, (zone, reverse)) in zones.iter().enumerate() {
            if let Some(apex) = b.entry(zone, zi) {
                apex.apex = true;
            }
            if *reverse {
                continue;
            }
            let svc_base = join("svc", zone);
            let pod_base = join("pod", zone);
            for base in [&svc_base, &pod_base].into_iter().flatten() {
                b.entry(base, zi);
            }
            if let Some(n) = join("dns-version", zone) {
                if let Some(d) = b.entry(&n, zi) {
                    d.txt = Some(DNS_SCHEMA_VERSION);
                }
            }
            if let Some(n) = join("ns.dns", zone) {
                if let Some(d) = b.entry(&n, zi) {
                    for ip in &ns_ips {
                        d.add_ip(*ip);
                    }
                }
            }
            for ns in &namespaces {
                if let Some(n) = svc_base.as_ref().and_then(|b| join(ns, b)) {
                    b.entry(&n, zi);
                }
                if cfg.pods != PodMode::Disabled {
                    if let Some(n) = pod_base.as_ref().and_then(|b| join(ns, b)) {
                        b.entry(&n, zi);
                    }
                }
            }
            let Some(svc_base) = svc_base else { continue };
            for s in &services {
                let Some(svc_name) = join(&s.namespace, &svc_base).and_then(|n| join(&s.name, &n))
                else {
                    continue;
                };
                add_service(&mut b, zi, &svc_name, s);
            }
        }

        // Reverse records: Service ClusterIPs first; endpoint IPs only where no ClusterIP
        // matches (like CoreDNS).
        if let Some(primary) = &primary {
            let svc_base = join("svc", primary);
            let mut cluster_ptr: HashMap<IpAddr, Name> = HashMap::new();
            let mut endpoint_ptr: HashMap<IpAddr, Vec<Name>> = HashMap::new();
            for s in &services {
                let Some(svc_name) = svc_base
                    .as_ref()
                    .and_then(|b| join(&s.namespace, b))
                    .and_then(|n| join(&s.name, &n))
                else {
                    continue;
                };
                if let ServiceKind::ClusterIp(ips) = &s.kind {
                    for ip in ips {
                        cluster_ptr.entry(*ip).or_insert_with(|| svc_name.clone());
                    }
                }
                for e in &s.endpoints {
                    if let Some(n) = join(&e.label, &svc_name) {
                        let v = endpoint_ptr.entry(e.ip).or_default();
                        if !v.contains(&n) {
                            v.push(n);
                        }
                    }
                }
            }
            for (ip, target) in &cluster_ptr {
                add_ptr(&mut b, ip, std::slice::from_ref(target));
            }
            for (ip, targets) in &endpoint_ptr {
                if !cluster_ptr.contains_key(ip) {
                    add_ptr(&mut b, ip, targets);
                }
            }
        }

        let pod_ips = if cfg.pods == PodMode::Verified {
            snap.pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded") | Some("Failed")
                    )
                })
                .flat_map(|p| {
                    let ns = p
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    let status = p.status.as_ref();
                    let mut ips: Vec<IpAddr> = status
                        .and_then(|s| s.pod_ips.as_ref())
                        .into_iter()
                        .flatten()
                        .filter_map(|i| parse_ip(&i.ip))
                        .collect();
                    if ips.is_empty() {
                        ips.extend(status.and_then(|s| s.pod_ip.as_deref()).and_then(parse_ip));
                    }
                    ips.into_iter().map(move |ip| (ns.clone(), ip))
                })
                .collect()
        } else {
            HashSet::new()
        };

        // Prepare every answer.
        let zone_data: Vec<ZoneData> = zones
            .iter()
            .map(|(z, reverse)| {
                let soa = soa_record(z, ttl, serial);
                let nxdomain =
                    wire::prepare_denial(ResponseCode::NXDomain, std::slice::from_ref(&soa));
                let nodata =
                    wire::prepare_denial(ResponseCode::NoError, std::slice::from_ref(&soa));
                let fallback = || Prepared {
                    rcode: 2,
                    authoritative: false,
                    counts: [0; 3],
                    rest: Box::new([]),
                    qname_len: None,
                    rotate: None,
                    ttl_offsets: Box::new([]),
                };
                ZoneData {
                    key: NameKey::from_name(z, true)
                        .map(|k| k.as_bytes().into())
                        .unwrap_or_default(),
                    reverse: *reverse,
                    nxdomain: Arc::new(nxdomain.unwrap_or_else(|e| {
                        tracing::error!("{e}");
                        fallback()
                    })),
                    nodata: Arc::new(nodata.unwrap_or_else(|e| {
                        tracing::error!("{e}");
                        fallback()
                    })),
                }
            })
            .collect();
        let mut names = HashMap::with_capacity(b.data.len());
        let ns_ips_for_apex = ns_ips.clone();
        for (key, d) in b.data {
            let Some(name) = d.name.clone() else { continue };
            let zone_name = &zones[d.zone as usize].0;
            match finish_entry(&name, zone_name, &d, ttl, serial, &ns_ips_for_apex) {
                Ok(entry) => {
                    names.insert(key, entry);
                }
                Err(e) => tracing::error!("cluster DNS: {e}; the name is left out"),
            }
        }
        RecordTable {
            zones: zone_data,
            names,
            namespaces,
            pod_ips,
            fallthrough: cfg.fallthrough.as_ref().map(|zs| {
                zs.iter()
                    .filter_map(|z| NameKey::from_name(z, true))
                    .map(|k| k.as_bytes().into())
                    .collect()
            }),
            pods: cfg.pods,
            ttl,
            synced,
            services: services.len(),
        }
    }

    /// Number of Services with records.
    pub fn service_count(&self) -> usize {
        self.services
    }

    /// Number of names with records.
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// Whether the table was built from a synced view of the cluster.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whether `key` falls in one of this table's zones.
    pub fn covers(&self, key: &NameKey) -> bool {
        self.zone_of(key).is_some()
    }

    fn zone_of(&self, key: &NameKey) -> Option<usize> {
        let bytes = key.as_bytes();
        self.zones
            .iter()
            .enumerate()
            .filter(|(_, z)| in_zone(bytes, &z.key))
            .max_by_key(|(_, z)| z.key.len())
            .map(|(i, _)| i)
    }

    fn falls_through(&self, key: &NameKey) -> bool {
        match &self.fallthrough {
            None => false,
            Some(zones) if zones.is_empty() => true,
            Some(zones) => zones.iter().any(|z| in_zone(key.as_bytes(), z)),
        }
    }

    /// The answer to `key`/`qtype`.
    pub fn lookup(&self, key: &NameKey, qtype: u16) -> Answer<'_> {
        let Some(zi) = self.zone_of(key) else {
            return Answer::NotInZone;
        };
        if qtype == u16::from(RecordType::AXFR) || qtype == u16::from(RecordType::IXFR) {
            return Answer::Refused;
        }
        let zone = &self.zones[zi];
        if let Some(entry) = self.names.get(key.as_bytes()) {
            if let Some((_, p)) = entry.answers.iter().find(|(t, _)| *t == qtype) {
                return Answer::Prepared(p);
            }
            if let Some((cname, target)) = &entry.external {
                return Answer::Chase { cname, target };
            }
            return Answer::Prepared(&self.zones[entry.zone as usize].nodata);
        }
        if !zone.reverse && self.pods != PodMode::Disabled {
            if let Some(ans) = self.pod_answer(key, zone, qtype) {
                return ans;
            }
        }
        if self.falls_through(key) {
            return Answer::Fallthrough;
        }
        if !self.synced {
            return Answer::ServFail;
        }
        Answer::Prepared(&zone.nxdomain)
    }

    /// `a-b-c-d.<ns>.pod.<zone>`.
    fn pod_answer<'a>(
        &'a self,
        key: &NameKey,
        zone: &'a ZoneData,
        qtype: u16,
    ) -> Option<Answer<'a>> {
        let bytes = key.as_bytes();
        let prefix_len = bytes.len() - zone.key.len();
        let mut labels = NameKey::labels_of(&bytes[..prefix_len]);
        let ip_label = labels.next()?;
        let ns = labels.next()?;
        if labels.next()? != b"pod" || labels.next().is_some() {
            return None;
        }
        let ns = std::str::from_utf8(ns).ok()?;
        if !self.namespaces.contains(ns) {
            return None;
        }
        let ip = parse_dashed_ip(std::str::from_utf8(ip_label).ok()?)?;
        if self.pods == PodMode::Verified && !self.pod_ips.contains(&(ns.to_string(), ip)) {
            return None;
        }
        let wanted = match ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::AAAA,
        };
        if qtype != u16::from(wanted) {
            return Some(Answer::Prepared(&zone.nodata));
        }
        let name = key.to_name();
        let built = wire::prepare(
            &name,
            wanted,
            ResponseCode::NoError,
            true,
            &[addr_record(&name, self.ttl, ip)],
            &[],
            &[],
        )
        .ok()?;
        Some(Answer::Built(built))
    }
}

impl NameKey {
    /// Labels of raw wire-name bytes (which need not end with the root byte).
    pub fn labels_of(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
        let mut pos = 0;
        std::iter::from_fn(move || {
            let len = *bytes.get(pos)? as usize;
            if len == 0 {
                return None;
            }
            let l = bytes.get(pos + 1..pos + 1 + len)?;
            pos += 1 + len;
            Some(l)
        })
    }
}

fn add_ptr(b: &mut Builder, ip: &IpAddr, targets: &[Name]) {
    let Ok(ptr) = Name::from_ascii(reverse_name(ip)) else {
        return;
    };
    let Some(zi) = b.reverse_zone_of(&ptr) else {
        return;
    };
    if let Some(d) = b.entry(&ptr, zi) {
        for t in targets {
            if !d.ptr.contains(t) {
                d.ptr.push(t.clone());
            }
        }
    }
}

/// SRV targets of one name: (port, target, address).
type SrvTargets = Vec<(u16, Name, IpAddr)>;

fn add_service(b: &mut Builder, zi: usize, svc_name: &Name, s: &ServiceInfo) {
    match &s.kind {
        ServiceKind::External(target) => {
            if let Some(d) = b.entry(svc_name, zi) {
                d.external = Some(target.clone());
            }
        }
        ServiceKind::ClusterIp(ips) => {
            let Some(d) = b.entry(svc_name, zi) else {
                return;
            };
            for ip in ips {
                d.add_ip(*ip);
            }
            for p in &s.ports {
                d.srv.push((p.port, svc_name.clone()));
                for ip in ips {
                    d.srv_addrs.push((svc_name.clone(), *ip));
                }
            }
            // `_<port>._<proto>.<svc>...`: SRV to the Service name (and, like CoreDNS, the
            // ClusterIPs for address queries).
            for p in s.ports.iter().filter(|p| !p.name.is_empty()) {
                let Some(n) = join(&format!("_{}._{}", p.name, p.protocol), svc_name) else {
                    continue;
                };
                if let Some(d) = b.entry(&n, zi) {
                    d.srv.push((p.port, svc_name.clone()));
                    for ip in ips {
                        d.add_ip(*ip);
                        d.srv_addrs.push((svc_name.clone(), *ip));
                    }
                }
            }
            add_endpoint_names(b, zi, svc_name, s);
        }
        ServiceKind::Headless => {
            // A headless Service without ready endpoints has no records (NXDOMAIN), as in
            // CoreDNS.
            if s.endpoints.is_empty() {
                return;
            }
            let Some(d) = b.entry(svc_name, zi) else {
                return;
            };
            for e in &s.endpoints {
                d.add_ip(e.ip);
            }
            let mut srv_names: Vec<(Name, SrvTargets)> = Vec::new();
            let mut all: Vec<(u16, Name, IpAddr)> = Vec::new();
            for e in &s.endpoints {
                let Some(target) = join(&e.label, svc_name) else {
                    continue;
                };
                for p in &e.ports {
                    all.push((p.port, target.clone(), e.ip));
                    if p.name.is_empty() {
                        continue;
                    }
                    let Some(n) = join(&format!("_{}._{}", p.name, p.protocol), svc_name) else {
                        continue;
                    };
                    match srv_names.iter_mut().find(|(x, _)| *x == n) {
                        Some((_, v)) => v.push((p.port, target.clone(), e.ip)),
                        None => srv_names.push((n, vec![(p.port, target.clone(), e.ip)])),
                    }
                }
            }
            if let Some(d) = b.entry(svc_name, zi) {
                for (port, target, ip) in &all {
                    d.srv.push((*port, target.clone()));
                    d.srv_addrs.push((target.clone(), *ip));
                }
            }
            for (n, targets) in srv_names {
                if let Some(d) = b.entry(&n, zi) {
                    for (port, target, ip) in targets {
                        d.add_ip(ip);
                        d.srv.push((port, target.clone()));
                        d.srv_addrs.push((target, ip));
                    }
                }
            }
            add_endpoint_names(b, zi, svc_name, s);
        }
    }
}

/// `<hostname-or-dashed-ip>.<svc>.<ns>.svc.<zone>` for every ready endpoint.
fn add_endpoint_names(b: &mut Builder, zi: usize, svc_name: &Name, s: &ServiceInfo) {
    for e in &s.endpoints {
        let Some(n) = join(&e.label, svc_name) else {
            continue;
        };
        if let Some(d) = b.entry(&n, zi) {
            d.add_ip(e.ip);
        }
    }
}

fn soa_record(zone: &Name, ttl: u32, serial: u32) -> Record {
    let mname = join("ns.dns", zone).unwrap_or_else(Name::root);
    let rname = join("hostmaster", zone).unwrap_or_else(Name::root);
    rec(
        zone,
        ttl.min(300),
        RData::SOA(SOA::new(mname, rname, serial, 7200, 1800, 86400, ttl)),
    )
}

fn finish_entry(
    name: &Name,
    zone: &Name,
    d: &NameData,
    ttl: u32,
    serial: u32,
    ns_ips: &[IpAddr],
) -> Result<Entry, wire::PrepareError> {
    let mut answers: Vec<(u16, Arc<Prepared>)> = Vec::new();
    let positive = |qtype: RecordType, ans: &[Record], extra: &[Record]| {
        wire::prepare(name, qtype, ResponseCode::NoError, true, ans, &[], extra).map(Arc::new)
    };
    if !d.v4.is_empty() {
        let recs: Vec<Record> =
            d.v4.iter()
                .map(|ip| rec(name, ttl, RData::A(A(*ip))))
                .collect();
        answers.push((1, positive(RecordType::A, &recs, &[])?));
    }
    if !d.v6.is_empty() {
        let recs: Vec<Record> =
            d.v6.iter()
                .map(|ip| rec(name, ttl, RData::AAAA(AAAA(*ip))))
                .collect();
        answers.push((28, positive(RecordType::AAAA, &recs, &[])?));
    }
    if !d.srv.is_empty() {
        let mut srv: Vec<(u16, Name)> = Vec::new();
        for s in &d.srv {
            if !srv.contains(s) {
                srv.push(s.clone());
            }
        }
        // CoreDNS: all records share priority 0 and weight floor(100 / count).
        let weight = (100 / srv.len()) as u16;
        let recs: Vec<Record> = srv
            .iter()
            .map(|(port, target)| {
                rec(
                    name,
                    ttl,
                    RData::SRV(SRV::new(0, weight, *port, target.clone())),
                )
            })
            .collect();
        let mut extra: Vec<Record> = Vec::new();
        let mut seen: Vec<(&Name, IpAddr)> = Vec::new();
        for (target, ip) in &d.srv_addrs {
            if !seen.contains(&(target, *ip)) {
                seen.push((target, *ip));
                extra.push(addr_record(target, ttl, *ip));
            }
        }
        answers.push((33, positive(RecordType::SRV, &recs, &extra)?));
    }
    if !d.ptr.is_empty() {
        let recs: Vec<Record> = d
            .ptr
            .iter()
            .map(|t| rec(name, ttl, RData::PTR(PTR(t.clone()))))
            .collect();
        answers.push((12, positive(RecordType::PTR, &recs, &[])?));
    }
    if let Some(txt) = d.txt {
        let recs = [rec(
            name,
            DNS_VERSION_TTL,
            RData::TXT(TXT::new(vec![txt.to_string()])),
        )];
        answers.push((16, positive(RecordType::TXT, &recs, &[])?));
    }
    let mut external = None;
    if let Some(target) = &d.external {
        let cname = rec(name, ttl, RData::CNAME(CNAME(target.clone())));
        answers.push((
            5,
            positive(RecordType::CNAME, std::slice::from_ref(&cname), &[])?,
        ));
        external = Some((cname, target.clone()));
    }
    if d.apex {
        let soa = soa_record(zone, ttl, serial);
        answers.push((6, positive(RecordType::SOA, &[soa], &[])?));
        if let Some(ns_name) = join("ns.dns", zone) {
            let ns = rec(name, ttl, RData::NS(NS(ns_name.clone())));
            let extra: Vec<Record> = ns_ips
                .iter()
                .map(|ip| addr_record(&ns_name, ttl, *ip))
                .collect();
            answers.push((2, positive(RecordType::NS, &[ns], &extra)?));
        }
    }
    Ok(Entry {
        zone: d.zone,
        answers,
        external,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::corefile;
    use hickory_proto::op::Message;
    use k8s_openapi::api::core::v1::{NamespaceSpec, PodIP, PodStatus, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    pub(crate) fn namespace(name: &str) -> Arc<Namespace> {
        Arc::new(Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NamespaceSpec::default()),
            ..Default::default()
        })
    }

    pub(crate) fn service(
        ns: &str,
        name: &str,
        cluster_ip: &str,
        ports: &[(&str, i32, &str)],
    ) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                cluster_ips: if cluster_ip == "None" {
                    Some(vec!["None".into()])
                } else {
                    Some(cluster_ip.split(',').map(String::from).collect())
                },
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: if n.is_empty() {
                                None
                            } else {
                                Some(n.to_string())
                            },
                            port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub(crate) fn external(ns: &str, name: &str, target: &str) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some(target.into()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Endpoints: (ip, hostname, ready).
    pub(crate) fn slice(
        ns: &str,
        svc: &str,
        endpoints: &[(&str, Option<&str>, Option<bool>)],
        ports: &[(&str, i32, &str)],
    ) -> Arc<EndpointSlice> {
        let v6 = endpoints.first().is_some_and(|e| e.0.contains(':'));
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-{}", if v6 { "v6" } else { "v4" })),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_string(),
                    svc.to_string(),
                )])),
                ..Default::default()
            },
            address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
            endpoints: endpoints
                .iter()
                .map(|(ip, host, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    hostname: host.map(String::from),
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| EndpointPort {
                        name: Some(n.to_string()),
                        port: Some(*p),
                        protocol: Some(proto.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        })
    }

    pub(crate) fn sample() -> ClusterSnapshot {
        ClusterSnapshot {
            namespaces: vec![
                namespace("default"),
                namespace("kube-system"),
                namespace("db"),
            ],
            services: vec![
                service(
                    "default",
                    "web",
                    "10.96.0.20",
                    &[("http", 80, "TCP"), ("", 8080, "TCP")],
                ),
                service(
                    "default",
                    "dual",
                    "10.96.0.21,fd00::21",
                    &[("http", 80, "TCP")],
                ),
                service(
                    "kube-system",
                    "kube-dns",
                    "10.96.0.10",
                    &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
                ),
                service("db", "pg", "None", &[("pg", 5432, "TCP")]),
                service("db", "empty", "None", &[]),
                external("default", "ext", "example.org"),
                service(
                    "nonexistent-ns",
                    "ghost",
                    "10.96.0.99",
                    &[("http", 80, "TCP")],
                ),
            ],
            endpoint_slices: vec![
                slice(
                    "db",
                    "pg",
                    &[
                        ("10.244.1.5", Some("pg-0"), Some(true)),
                        ("10.244.2.6", Some("pg-1"), None),
                        ("10.244.3.7", Some("pg-2"), Some(false)),
                        ("10.244.4.8", None, Some(true)),
                    ],
                    &[("pg", 5432, "TCP")],
                ),
                slice(
                    "default",
                    "web",
                    &[("10.244.1.9", None, Some(true))],
                    &[("http", 8080, "TCP")],
                ),
                slice(
                    "kube-system",
                    "kube-dns",
                    &[("10.244.0.3", None, Some(true))],
                    &[("dns", 53, "UDP")],
                ),
            ],
            pods: vec![],
        }
    }

    pub(crate) fn config(extra: &str) -> KubernetesConfig {
        let cf = corefile::parse(&format!(
            ".:53 {{\n kubernetes cluster.local in-addr.arpa ip6.arpa {{\n ttl 30\n {extra}\n }}\n}}\n"
        ))
        .unwrap();
        cf.blocks[0].kubernetes.clone().unwrap()
    }

    fn table(extra: &str) -> RecordTable {
        RecordTable::build(
            &config(extra),
            &sample(),
            &["10.244.0.3".parse().unwrap()],
            true,
            42,
        )
    }

    /// Looks up and decodes: (rcode, answers, authority, additional); `None` for non-answers.
    fn ask(t: &RecordTable, name: &str, qtype: RecordType) -> Option<(ResponseCode, Message)> {
        let key = NameKey::parse(name).unwrap();
        let qname = key.to_name();
        let p = match t.lookup(&key, u16::from(qtype)) {
            Answer::Prepared(p) => (**p).clone(),
            Answer::Built(p) => p,
            _ => return None,
        };
        let m = p.to_message(&qname, qtype).expect("decodes");
        Some((p.response_code(), m))
    }

    fn ips(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn cluster_ip_service() {
        let t = table("");
        let (rc, m) = ask(&t, "web.default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(ips(&m), vec!["10.96.0.20"]);
        assert_eq!(m.answers[0].ttl, 30);
        assert!(m.metadata.authoritative);
        // Case does not matter.
        let (_, m) = ask(&t, "WEB.Default.SVC.cluster.local.", RecordType::A).unwrap();
        assert_eq!(ips(&m), vec!["10.96.0.20"]);
        // Dual-stack.
        let (_, m) = ask(&t, "dual.default.svc.cluster.local.", RecordType::AAAA).unwrap();
        assert_eq!(ips(&m), vec!["fd00::21"]);
        let (_, m) = ask(&t, "dual.default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(ips(&m), vec!["10.96.0.21"]);
    }

    #[test]
    fn nodata_vs_nxdomain() {
        let t = table("");
        let nodata = |name: &str, qtype| {
            let (rc, m) = ask(&t, name, qtype).unwrap();
            assert_eq!(rc, ResponseCode::NoError, "{name} {qtype}");
            assert!(m.answers.is_empty(), "{name} {qtype}");
            assert!(matches!(m.authorities[0].data, RData::SOA(_)), "{name}");
            assert_eq!(
                m.authorities[0].name,
                Name::from_ascii("cluster.local.").unwrap()
            );
        };
        let nxdomain = |name: &str| {
            let (rc, m) = ask(&t, name, RecordType::A).unwrap();
            assert_eq!(rc, ResponseCode::NXDomain, "{name}");
            assert!(m.answers.is_empty());
            assert!(matches!(m.authorities[0].data, RData::SOA(_)), "{name}");
        };
        nodata("web.default.svc.cluster.local.", RecordType::AAAA);
        nodata("web.default.svc.cluster.local.", RecordType::MX);
        nodata("svc.cluster.local.", RecordType::A);
        nodata("default.svc.cluster.local.", RecordType::A);
        nodata("cluster.local.", RecordType::A);
        nodata("pod.cluster.local.", RecordType::A);
        nxdomain("nope.default.svc.cluster.local.");
        nxdomain("nonexistent-ns.svc.cluster.local.");
        nxdomain("ghost.nonexistent-ns.svc.cluster.local.");
        nxdomain("foo.cluster.local.");
        nxdomain("a.b.c.web.default.svc.cluster.local.");
        nxdomain("empty.db.svc.cluster.local.");
        // Intermediate pod names exist only when pod records are on.
        nxdomain("default.pod.cluster.local.");
        let t2 = table("pods insecure");
        let (rc, _) = ask(&t2, "default.pod.cluster.local.", RecordType::A).unwrap();
        assert_eq!(rc, ResponseCode::NoError);
    }

    #[test]
    fn headless_service_ready_endpoints_only() {
        let t = table("");
        let (_, m) = ask(&t, "pg.db.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(ips(&m), vec!["10.244.1.5", "10.244.2.6", "10.244.4.8"]);
        let (_, m) = ask(&t, "pg-0.pg.db.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(ips(&m), vec!["10.244.1.5"]);
        let (_, m) = ask(&t, "10-244-4-8.pg.db.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(ips(&m), vec!["10.244.4.8"]);
        let (rc, _) = ask(&t, "pg-2.pg.db.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(rc, ResponseCode::NXDomain, "not-ready endpoint has no name");
        // Endpoint names exist for ClusterIP Services too (CoreDNS).
        let (_, m) = ask(
            &t,
            "10-244-1-9.web.default.svc.cluster.local.",
            RecordType::A,
        )
        .unwrap();
        assert_eq!(ips(&m), vec!["10.244.1.9"]);
    }

    #[test]
    fn srv_records() {
        let t = table("");
        let (_, m) = ask(
            &t,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .unwrap();
        assert_eq!(m.answers.len(), 1);
        let RData::SRV(srv) = &m.answers[0].data else {
            panic!()
        };
        assert_eq!((srv.priority, srv.weight, srv.port), (0, 100, 80));
        assert_eq!(srv.target.to_ascii(), "web.default.svc.cluster.local.");
        assert_eq!(m.additionals.len(), 1);
        assert_eq!(
            m.additionals[0].name.to_ascii(),
            "web.default.svc.cluster.local."
        );
        // SRV at the Service name: every port, named or not.
        let (_, m) = ask(&t, "web.default.svc.cluster.local.", RecordType::SRV).unwrap();
        let mut ports: Vec<u16> = m
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => s.port,
                _ => 0,
            })
            .collect();
        ports.sort();
        assert_eq!(ports, vec![80, 8080]);
        // Headless: one per ready endpoint, targets the endpoint names, addresses in additional.
        let (_, m) = ask(&t, "_pg._tcp.pg.db.svc.cluster.local.", RecordType::SRV).unwrap();
        let mut targets: Vec<String> = m
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => {
                    assert_eq!(s.weight, 33);
                    s.target.to_ascii()
                }
                _ => String::new(),
            })
            .collect();
        targets.sort();
        assert_eq!(
            targets,
            vec![
                "10-244-4-8.pg.db.svc.cluster.local.",
                "pg-0.pg.db.svc.cluster.local.",
                "pg-1.pg.db.svc.cluster.local."
            ]
        );
        assert_eq!(m.additionals.len(), 3);
        // Protocol must match; unknown port names do not exist.
        let (rc, _) = ask(&t, "_pg._udp.pg.db.svc.cluster.local.", RecordType::SRV).unwrap();
        assert_eq!(rc, ResponseCode::NXDomain);
        let (rc, _) = ask(
            &t,
            "_dns._udp.kube-dns.kube-system.svc.cluster.local.",
            RecordType::SRV,
        )
        .unwrap();
        assert_eq!(rc, ResponseCode::NoError);
        // The SRV name answers A with the ClusterIP (CoreDNS) and NODATA for TXT.
        let (_, m) = ask(
            &t,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::A,
        )
        .unwrap();
        assert_eq!(ips(&m), vec!["10.96.0.20"]);
    }

    #[test]
    fn ptr_records() {
        let t = table("");
        let ptr = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            ask(&t, &reverse_name(&ip), RecordType::PTR)
        };
        let (_, m) = ptr("10.96.0.20").unwrap();
        let RData::PTR(p) = &m.answers[0].data else {
            panic!()
        };
        assert_eq!(p.0.to_ascii(), "web.default.svc.cluster.local.");
        let (_, m) = ptr("fd00::21").unwrap();
        let RData::PTR(p) = &m.answers[0].data else {
            panic!()
        };
        assert_eq!(p.0.to_ascii(), "dual.default.svc.cluster.local.");
        let (_, m) = ptr("10.244.1.5").unwrap();
        let RData::PTR(p) = &m.answers[0].data else {
            panic!()
        };
        assert_eq!(p.0.to_ascii(), "pg-0.pg.db.svc.cluster.local.");
        let (_, m) = ptr("10.244.4.8").unwrap();
        let RData::PTR(p) = &m.answers[0].data else {
            panic!()
        };
        assert_eq!(p.0.to_ascii(), "10-244-4-8.pg.db.svc.cluster.local.");
        // Unknown reverse names fall through with `fallthrough in-addr.arpa ip6.arpa` ...
        let key = NameKey::parse("1.2.3.4.in-addr.arpa.").unwrap();
        let lenient = table("fallthrough in-addr.arpa ip6.arpa");
        assert!(matches!(lenient.lookup(&key, 12), Answer::Fallthrough));
        // ... but not for the cluster zone, and without fallthrough they are NXDOMAIN.
        let cluster_key = NameKey::parse("nope.default.svc.cluster.local.").unwrap();
        assert!(matches!(lenient.lookup(&cluster_key, 1), Answer::Prepared(p) if p.rcode == 3));
        assert!(matches!(t.lookup(&key, 12), Answer::Prepared(p) if p.rcode == 3));
        // Names outside every zone are not ours.
        let key = NameKey::parse("example.org.").unwrap();
        assert!(matches!(t.lookup(&key, 1), Answer::NotInZone));
    }

    #[test]
    fn external_name_is_a_cname_to_chase() {
        let t = table("");
        let key = NameKey::parse("ext.default.svc.cluster.local.").unwrap();
        match t.lookup(&key, 1) {
            Answer::Chase { cname, target } => {
                assert_eq!(target.to_ascii(), "example.org.");
                assert_eq!(cname.ttl, 30);
            }
            _ => panic!("expected a CNAME to chase"),
        }
        let (_, m) = ask(&t, "ext.default.svc.cluster.local.", RecordType::CNAME).unwrap();
        assert!(matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "example.org."));
    }

    #[test]
    fn pods_modes() {
        let q =
            |t: &RecordTable, name: &str, qtype| ask(t, name, qtype).map(|(rc, m)| (rc, ips(&m)));
        let disabled = table("");
        assert_eq!(
            q(
                &disabled,
                "10-244-1-5.default.pod.cluster.local.",
                RecordType::A
            )
            .unwrap()
            .0,
            ResponseCode::NXDomain
        );
        let insecure = table("pods insecure");
        assert_eq!(
            q(
                &insecure,
                "10-244-1-5.default.pod.cluster.local.",
                RecordType::A
            )
            .unwrap(),
            (ResponseCode::NoError, vec!["10.244.1.5".to_string()])
        );
        assert_eq!(
            q(
                &insecure,
                "fd00--5.default.pod.cluster.local.",
                RecordType::AAAA
            )
            .unwrap(),
            (ResponseCode::NoError, vec!["fd00::5".to_string()])
        );
        assert_eq!(
            q(
                &insecure,
                "10-244-1-5.default.pod.cluster.local.",
                RecordType::AAAA
            )
            .unwrap(),
            (ResponseCode::NoError, vec![]),
            "wrong family is NODATA"
        );
        assert_eq!(
            q(
                &insecure,
                "10-244-1-5.nons.pod.cluster.local.",
                RecordType::A
            )
            .unwrap()
            .0,
            ResponseCode::NXDomain
        );
        assert_eq!(
            q(
                &insecure,
                "not-an-ip.default.pod.cluster.local.",
                RecordType::A
            )
            .unwrap()
            .0,
            ResponseCode::NXDomain
        );
        let mut snap = sample();
        snap.pods.push(Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                pod_ip: Some("10.244.1.5".into()),
                pod_ips: Some(vec![PodIP {
                    ip: "10.244.1.5".into(),
                }]),
                phase: Some("Running".into()),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let verified = RecordTable::build(&config("pods verified"), &snap, &[], true, 1);
        assert_eq!(
            q(
                &verified,
                "10-244-1-5.default.pod.cluster.local.",
                RecordType::A
            )
            .unwrap()
            .1,
            vec!["10.244.1.5".to_string()]
        );
        assert_eq!(
            q(
                &verified,
                "10-244-1-6.default.pod.cluster.local.",
                RecordType::A
            )
            .unwrap()
            .0,
            ResponseCode::NXDomain
        );
        assert_eq!(
            q(&verified, "10-244-1-5.db.pod.cluster.local.", RecordType::A)
                .unwrap()
                .0,
            ResponseCode::NXDomain,
            "the pod is in another namespace"
        );
    }

    #[test]
    fn soa_ns_and_dns_version() {
        let t = table("");
        let (_, m) = ask(&t, "cluster.local.", RecordType::SOA).unwrap();
        let RData::SOA(soa) = &m.answers[0].data else {
            panic!()
        };
        assert_eq!(soa.mname.to_ascii(), "ns.dns.cluster.local.");
        assert_eq!(soa.rname.to_ascii(), "hostmaster.cluster.local.");
        assert_eq!((soa.serial, soa.minimum), (42, 30));
        assert_eq!(m.answers[0].ttl, 30);
        let (_, m) = ask(&t, "cluster.local.", RecordType::NS).unwrap();
        assert!(
            matches!(&m.answers[0].data, RData::NS(n) if n.0.to_ascii() == "ns.dns.cluster.local.")
        );
        // This server is an endpoint of kube-dns: ns.dns answers with kube-dns's ClusterIP.
        assert_eq!(m.additionals.len(), 1);
        let (_, m) = ask(&t, "ns.dns.cluster.local.", RecordType::A).unwrap();
        assert_eq!(ips(&m), vec!["10.96.0.10"]);
        let (_, m) = ask(&t, "dns-version.cluster.local.", RecordType::TXT).unwrap();
        let RData::TXT(txt) = &m.answers[0].data else {
            panic!()
        };
        assert_eq!(&*txt.txt_data[0], b"1.1.0");
        assert_eq!(m.answers[0].ttl, 28800);
        // Zone transfers are refused.
        let key = NameKey::parse("cluster.local.").unwrap();
        assert!(matches!(t.lookup(&key, 252), Answer::Refused));
    }

    #[test]
    fn unsynced_table_does_not_deny() {
        let t = RecordTable::build(&config(""), &ClusterSnapshot::default(), &[], false, 1);
        let key = NameKey::parse("web.default.svc.cluster.local.").unwrap();
        assert!(matches!(t.lookup(&key, 1), Answer::ServFail));
        assert!(!t.synced());
    }

    #[test]
    fn dashed_ips() {
        for ip in ["10.1.2.3", "fd00::1", "2001:db8:0:1::5"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_dashed_ip(&dashed_ip(&ip)), Some(ip));
        }
        assert_eq!(parse_dashed_ip("1-2-3"), None);
        assert_eq!(
            reverse_name(&"10.96.0.1".parse().unwrap()),
            "1.0.96.10.in-addr.arpa."
        );
        assert!(reverse_name(&"fd00::1".parse().unwrap()).starts_with("1.0.0.0."));
    }
}
