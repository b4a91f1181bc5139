//! Clearing stale UDP conntrack entries, as kube-proxy does.
//!
//! UDP has no connection teardown, so a conntrack entry DNATed to an endpoint keeps
//! steering a client's packets there after the endpoint is gone; and an entry created while
//! a Service had no endpoints keeps its packets un-NATed after endpoints appear. After each
//! applied change the proxy deletes:
//! - entries towards a service address (or node port) whose reply comes from an endpoint
//!   that is no longer used;
//! - entries towards a service address (or node port) that just got its first endpoint
//!   and were not DNATed (so a restart of the proxy leaves working flows alone).
//!
//! Deletion goes through ctnetlink (`netlink-packet-netfilter` messages over a
//! `netlink-sys` socket): the kernel's conntrack table is dumped for the family, filtered
//! here, and matching entries are deleted by their original tuple.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::error::ProxyError;
use crate::model::{EndpointAddr, Family, Protocol, ServicePortPlan};

/// Which conntrack entries to delete: every set field must match.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowFilter {
    /// The family.
    pub family: Family,
    /// The protocol.
    pub protocol: Protocol,
    /// Original destination address (a service address); `None` for node ports (any).
    pub orig_dst: Option<IpAddr>,
    /// Original destination port.
    pub orig_dport: u16,
    /// Reply source (the endpoint the entry was DNATed to); `None` matches any.
    pub reply_src: Option<EndpointAddr>,
    /// Only entries that were not DNATed (the reply comes from the original destination).
    pub unnatted_only: bool,
}

/// One conntrack entry's tuples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// IP protocol number.
    pub protocol: u8,
    /// Original direction destination.
    pub orig_dst: IpAddr,
    /// Original direction destination port.
    pub orig_dport: u16,
    /// Reply direction source.
    pub reply_src: IpAddr,
    /// Reply direction source port.
    pub reply_sport: u16,
}

impl FlowFilter {
    /// Whether `entry` is one to delete.
    pub fn matches(&self, entry: &FlowEntry) -> bool {
        entry.protocol == self.protocol.number()
            && Family::of(&entry.orig_dst) == self.family
            && self.orig_dst.is_none_or(|d| d == entry.orig_dst)
            && entry.orig_dport == self.orig_dport
            && self
                .reply_src
                .is_none_or(|r| r.ip == entry.reply_src && r.port == entry.reply_sport)
            && (!self.unnatted_only || entry.reply_src == entry.orig_dst)
    }
}

/// The entries to delete after the plans of one Service went from `old` to `new`.
pub fn stale_udp_flows(old: &[ServicePortPlan], new: &[ServicePortPlan]) -> Vec<FlowFilter> {
    let key = |p: &ServicePortPlan| (p.name.clone(), p.family);
    let new_by: BTreeMap<_, &ServicePortPlan> = new.iter().map(|p| (key(p), p)).collect();
    let old_by: BTreeMap<_, &ServicePortPlan> = old.iter().map(|p| (key(p), p)).collect();
    let mut out = BTreeSet::new();
    for o in old.iter().filter(|p| p.name.protocol == Protocol::Udp) {
        let n = new_by.get(&key(o)).copied();
        let still: BTreeSet<EndpointAddr> = n
            .map(|n| n.reachable_endpoints().into_iter().collect())
            .unwrap_or_default();
        for ep in o.reachable_endpoints() {
            if still.contains(&ep) {
                continue;
            }
            for ip in o.service_ips() {
                out.insert(FlowFilter {
                    family: o.family,
                    protocol: Protocol::Udp,
                    orig_dst: Some(*ip),
                    orig_dport: o.port,
                    reply_src: Some(ep),
                    unnatted_only: false,
                });
            }
            if let Some(np) = o.node_port {
                out.insert(FlowFilter {
                    family: o.family,
                    protocol: Protocol::Udp,
                    orig_dst: None,
                    orig_dport: np,
                    reply_src: Some(ep),
                    unnatted_only: false,
                });
            }
        }
    }
    for n in new.iter().filter(|p| p.name.protocol == Protocol::Udp) {
        let o = old_by.get(&key(n)).copied();
        let had_internal = o.is_some_and(|o| o.has_internal_endpoints());
        let had_external = o.is_some_and(|o| o.has_external_endpoints());
        let mut fresh = |dst: Option<IpAddr>, port: u16| {
            out.insert(FlowFilter {
                family: n.family,
                protocol: Protocol::Udp,
                orig_dst: dst,
                orig_dport: port,
                reply_src: None,
                unnatted_only: true,
            });
        };
        if n.has_internal_endpoints() && !had_internal {
            for ip in &n.cluster_ips {
                fresh(Some(*ip), n.port);
            }
        }
        if n.has_external_endpoints() && !had_external {
            for ip in n.external_ips.iter().chain(n.load_balancer_ips.iter()) {
                fresh(Some(*ip), n.port);
            }
            if let Some(np) = n.node_port {
                fresh(None, np);
            }
        }
    }
    out.into_iter().collect()
}

/// Deletes conntrack entries over netlink, in the current network namespace or the one at
/// `netns`.
#[derive(Clone, Debug)]
pub struct Conntrack {
    netns: Option<PathBuf>,
}

const RECV_TIMEOUT: Duration = Duration::from_secs(5);

impl Conntrack {
    /// A cleaner for the network namespace at `netns` (`None`: this process's).
    pub fn new(netns: Option<PathBuf>) -> Conntrack {
        Conntrack { netns }
    }

    fn err(message: String) -> ProxyError {
        ProxyError::Conntrack { message }
    }

    fn open(&self) -> Result<Socket, ProxyError> {
        let Some(path) = self.netns.clone() else {
            return open_socket();
        };
        // A socket belongs to the namespace it was created in, whichever thread uses it.
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .map_err(|e| Conntrack::err(format!("cannot open {}: {e}", path.display())))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                Conntrack::err(format!(
                    "cannot enter network namespace {}: {e}",
                    path.display()
                ))
            })?;
            open_socket()
        })
        .join()
        .map_err(|_| Conntrack::err("namespace thread panicked".into()))?
    }

    /// Deletes every entry matching one of `filters`; returns how many were deleted.
    pub fn delete(&self, filters: &[FlowFilter]) -> Result<usize, ProxyError> {
        if filters.is_empty() {
            return Ok(0);
        }
        let socket = self.open()?;
        let mut deleted = 0;
        let families: BTreeSet<Family> = filters.iter().map(|f| f.family).collect();
        for family in families {
            let wanted: Vec<&FlowFilter> = filters.iter().filter(|f| f.family == family).collect();
            for (entry, orig, zone) in dump(&socket, family)? {
                if wanted.iter().any(|f| f.matches(&entry))
                    && delete_entry(&socket, family, orig, zone)?
                {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}

fn open_socket() -> Result<Socket, ProxyError> {
    let mut socket = Socket::new(NETLINK_NETFILTER)
        .map_err(|e| Conntrack::err(format!("cannot open a netfilter netlink socket: {e}")))?;
    socket
        .bind_auto()
        .map_err(|e| Conntrack::err(format!("cannot bind the netlink socket: {e}")))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| Conntrack::err(format!("cannot connect the netlink socket: {e}")))?;
    let timeout = nix::sys::time::TimeVal::new(RECV_TIMEOUT.as_secs() as i64, 0);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| Conntrack::err(format!("cannot set the netlink receive timeout: {e}")))?;
    Ok(socket)
}

fn nf_family(family: Family) -> NetfilterProtoFamily {
    match family {
        Family::V4 => NetfilterProtoFamily::IPv4,
        Family::V6 => NetfilterProtoFamily::IPv6,
    }
}

fn send(
    socket: &Socket,
    flags: u16,
    family: Family,
    message: ConntrackMessage,
) -> Result<(), ProxyError> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(nf_family(family), 0, 0),
            message,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .map_err(|e| Conntrack::err(format!("cannot send to the kernel: {e}")))?;
    Ok(())
}

/// Reads one batch of messages; each is handed to `each`; returns false at the end of a
/// dump or after an acknowledgement.
fn receive(
    socket: &Socket,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(NetlinkPayload<NetfilterMessage>) -> Result<bool, ProxyError>,
) -> Result<bool, ProxyError> {
    buf.clear();
    let size = socket
        .recv(buf, 0)
        .map_err(|e| Conntrack::err(format!("cannot read from the kernel: {e}")))?;
    let mut offset = 0;
    while offset < size.min(buf.len()) {
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..])
            .map_err(|e| Conntrack::err(format!("cannot decode a conntrack message: {e}")))?;
        let len = message.header.length as usize;
        if !each(message.payload)? {
            return Ok(false);
        }
        if len == 0 {
            break;
        }
        offset += (len + 3) & !3;
    }
    Ok(true)
}

type DumpedEntry = (FlowEntry, Vec<Tuple>, Option<ConntrackAttribute>);

fn dump(socket: &Socket, family: Family) -> Result<Vec<DumpedEntry>, ProxyError> {
    send(
        socket,
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        ConntrackMessage::Get(vec![]),
    )?;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut entries = Vec::new();
    loop {
        let more = receive(socket, &mut buf, |payload| match payload {
            NetlinkPayload::Done(_) => Ok(false),
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(false),
                Some(code) => Err(Conntrack::err(format!(
                    "the kernel refused the dump: {}",
                    std::io::Error::from_raw_os_error(-code.get())
                ))),
            },
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                ..
            }) => {
                if let Some(e) = parse_entry(attrs) {
                    entries.push(e);
                }
                Ok(true)
            }
            _ => Ok(true),
        })?;
        if !more {
            return Ok(entries);
        }
    }
}

/// The fields of one conntrack tuple (direction).
#[derive(Default)]
struct TupleParts {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn tuple_parts(tuple: &[Tuple]) -> TupleParts {
    let mut parts = TupleParts::default();
    for t in tuple {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => parts.src = Some(*a),
                        IPTuple::DestinationAddress(a) => parts.dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => parts.proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => parts.sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => parts.dport = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    parts
}

const CTA_ZONE: u16 = 18;

fn parse_entry(attrs: Vec<ConntrackAttribute>) -> Option<DumpedEntry> {
    let mut orig = None;
    let mut reply = None;
    let mut zone = None;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
            ConntrackAttribute::Other(ref nla)
                if netlink_packet_core::Nla::kind(nla) == CTA_ZONE =>
            {
                zone = Some(a)
            }
            _ => {}
        }
    }
    let orig = orig?;
    let reply = reply?;
    let o = tuple_parts(&orig);
    let r = tuple_parts(&reply);
    let entry = FlowEntry {
        protocol: o.proto?,
        orig_dst: o.dst?,
        orig_dport: o.dport.unwrap_or(0),
        reply_src: r.src?,
        reply_sport: r.sport.unwrap_or(0),
    };
    Some((entry, orig, zone))
}

/// Deletes one entry by its original tuple; false when it was already gone.
fn delete_entry(
    socket: &Socket,
    family: Family,
    orig: Vec<Tuple>,
    zone: Option<ConntrackAttribute>,
) -> Result<bool, ProxyError> {
    let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(orig)];
    attrs.extend(zone);
    send(
        socket,
        NLM_F_REQUEST | NLM_F_ACK,
        family,
        ConntrackMessage::Delete(attrs),
    )?;
    let mut buf = Vec::with_capacity(1 << 16);
    let mut result = Ok(true);
    loop {
        let more = receive(socket, &mut buf, |payload| match payload {
            NetlinkPayload::Error(e) => {
                match e.code {
                    None => {}
                    Some(code) if -code.get() == libc_enoent() => result = Ok(false),
                    Some(code) => {
                        result = Err(Conntrack::err(format!(
                            "the kernel refused to delete an entry: {}",
                            std::io::Error::from_raw_os_error(-code.get())
                        )))
                    }
                }
                Ok(false)
            }
            _ => Ok(true),
        })?;
        if !more {
            return result;
        }
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceKey, ServicePortName};

    fn plan(eps: &[&str], node_port: Option<u16>) -> ServicePortPlan {
        let eps: Vec<EndpointAddr> = eps
            .iter()
            .map(|ip| EndpointAddr {
                ip: ip.parse().unwrap(),
                port: 5353,
            })
            .collect();
        ServicePortPlan {
            name: ServicePortName {
                service: ServiceKey::new("default", "dns"),
                port: "dns".into(),
                protocol: Protocol::Udp,
            },
            family: Family::V4,
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            port: 53,
            node_port,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            affinity_timeout_seconds: None,
            internal_local: false,
            external_local: false,
            has_endpoints: !eps.is_empty(),
            cluster_endpoints: eps,
            local_endpoints: vec![],
        }
    }

    fn entry(dst: &str, dport: u16, reply_src: &str, proto: u8) -> FlowEntry {
        FlowEntry {
            protocol: proto,
            orig_dst: dst.parse().unwrap(),
            orig_dport: dport,
            reply_src: reply_src.parse().unwrap(),
            reply_sport: 5353,
        }
    }

    #[test]
    fn removed_udp_endpoint_gets_its_flows_deleted() {
        let old = plan(&["10.244.0.5", "10.244.0.6"], Some(30053));
        let new = plan(&["10.244.0.6"], Some(30053));
        let filters = stale_udp_flows(&[old], &[new]);
        assert_eq!(filters.len(), 2, "{filters:?}");
        let to_dead = entry("10.96.0.10", 53, "10.244.0.5", 17);
        let to_live = entry("10.96.0.10", 53, "10.244.0.6", 17);
        let nodeport_dead = entry("192.0.2.1", 30053, "10.244.0.5", 17);
        let tcp_dead = entry("10.96.0.10", 53, "10.244.0.5", 6);
        assert!(filters.iter().any(|f| f.matches(&to_dead)));
        assert!(filters.iter().any(|f| f.matches(&nodeport_dead)));
        assert!(!filters.iter().any(|f| f.matches(&to_live)));
        assert!(!filters.iter().any(|f| f.matches(&tcp_dead)));
    }

    #[test]
    fn first_endpoint_clears_unnatted_flows_to_the_service() {
        let old = plan(&[], None);
        let new = plan(&["10.244.0.5"], None);
        let filters = stale_udp_flows(&[old], std::slice::from_ref(&new));
        assert_eq!(filters.len(), 1);
        assert!(filters[0].matches(&entry("10.96.0.10", 53, "10.96.0.10", 17)));
        // A flow already DNATed to an endpoint (e.g. programmed before a restart) stays.
        assert!(!filters[0].matches(&entry("10.96.0.10", 53, "10.244.0.5", 17)));
        // Nothing to do when nothing changed.
        let same = std::slice::from_ref(&new);
        assert!(stale_udp_flows(same, same).is_empty());
    }

    #[test]
    fn deleted_service_clears_flows_to_all_its_endpoints() {
        let old = plan(&["10.244.0.5"], None);
        let filters = stale_udp_flows(&[old], &[]);
        assert_eq!(filters.len(), 1);
        assert_eq!(
            filters[0].reply_src.unwrap().ip,
            "10.244.0.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn tcp_services_are_left_alone() {
        let mut old = plan(&["10.244.0.5"], None);
        old.name.protocol = Protocol::Tcp;
        let mut new = old.clone();
        new.cluster_endpoints.clear();
        new.has_endpoints = false;
        assert!(stale_udp_flows(&[old], &[new]).is_empty());
    }
}
