//! Reading and changing the kernel's routes, policy rules, neighbours, FDB entries and the
//! VXLAN device through rtnetlink, for [`super::NodeNetwork::sync`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAttribute, RouteFlags, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::facts::format_mac;
use super::plan::{rule_text, Changes, CurrentState, FdbEntry, PlannedRoute, MAIN_TABLE};
use super::{
    Backend, LocalFacts, SyncReport, POLICY_ROUTE_TABLE, POLICY_RULE_PRIORITY, ROUTE_PROTOCOL,
    VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI,
};
use crate::error::CniError;
use crate::netlink as nl;

const EEXIST: i32 = 17;
const EAFNOSUPPORT: i32 = 97;

fn vxlan_info(link: &LinkMessage) -> Vec<InfoVxlan> {
    link.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .filter_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn link_address(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

/// Whether the device's VXLAN parameters are the ones kinit creates for `facts`.
fn vxlan_matches(link: &LinkMessage, facts: &LocalFacts) -> bool {
    let info = vxlan_info(link);
    let has = |want: &InfoVxlan| info.contains(want);
    let local = match facts.node_ip {
        IpAddr::V4(v4) => InfoVxlan::Local(v4),
        IpAddr::V6(v6) => InfoVxlan::Local6(v6),
    };
    has(&InfoVxlan::Id(VXLAN_VNI))
        && has(&local)
        && has(&InfoVxlan::Link(facts.uplink_index))
        && has(&InfoVxlan::Port(VXLAN_PORT))
        && has(&InfoVxlan::Learning(false))
}

/// Creates or fixes the VXLAN device and its addresses; returns its index. Parameters that
/// cannot change on a live device (VNI, local address, uplink, port, learning) make it be
/// recreated; MTU, MAC and addresses are fixed in place.
pub(super) async fn ensure_vxlan(
    h: &Handle,
    facts: &LocalFacts,
    pod_cidrs: &[IpNet],
    log: &mut Vec<String>,
) -> Result<u32, CniError> {
    let mtu = facts.pod_mtu(Backend::Vxlan);
    let mut existing = nl::link_by_name(h, VXLAN_DEVICE).await?;
    if let Some(link) = &existing {
        if nl::link_kind(link) != Some(&InfoKind::Vxlan) {
            return Err(CniError::Network(format!(
                "interface {VXLAN_DEVICE} exists but is not a VXLAN device; delete it (ip link del {VXLAN_DEVICE})"
            )));
        }
        if !vxlan_matches(link, facts) {
            nl::delete_link(h, link.header.index, VXLAN_DEVICE).await?;
            log.push(format!(
                "deleted {VXLAN_DEVICE}: its VNI, local address, uplink, port or learning setting was not kinit's"
            ));
            existing = None;
        }
    }
    let index = match existing {
        Some(link) => {
            let index = link.header.index;
            if nl::link_mtu(&link) != Some(mtu) {
                nl::set_mtu(h, index, mtu, VXLAN_DEVICE).await?;
                log.push(format!("set {VXLAN_DEVICE} mtu {mtu}"));
            }
            if link_address(&link) != Some(&facts.vtep_mac[..]) {
                h.link()
                    .set(
                        LinkUnspec::new_with_index(index)
                            .address(facts.vtep_mac.to_vec())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|e| CniError::netlink(format!("set the MAC of {VXLAN_DEVICE}"), e))?;
                log.push(format!(
                    "set {VXLAN_DEVICE} address {}",
                    format_mac(&facts.vtep_mac)
                ));
            }
            if !nl::link_is_up(&link) {
                nl::set_up(h, index, VXLAN_DEVICE).await?;
                log.push(format!("set {VXLAN_DEVICE} up"));
            }
            index
        }
        None => {
            let mut builder = LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                .dev(facts.uplink_index)
                .port(VXLAN_PORT)
                .learning(false);
            builder = match facts.node_ip {
                IpAddr::V4(v4) => builder.local(v4),
                IpAddr::V6(v6) => builder.local6(v6),
            };
            let msg = builder
                .mtu(mtu)
                .address(facts.vtep_mac.to_vec())
                .up()
                .build();
            h.link().add(msg).execute().await.map_err(|e| {
                CniError::netlink(
                    format!(
                        "create VXLAN device {VXLAN_DEVICE} (vni {VXLAN_VNI}, port {VXLAN_PORT}, local {}, dev {})",
                        facts.node_ip, facts.uplink
                    ),
                    e,
                )
            })?;
            let link = nl::link_by_name(h, VXLAN_DEVICE).await?.ok_or_else(|| {
                CniError::Network(format!(
                    "{VXLAN_DEVICE} vanished right after creation; retry"
                ))
            })?;
            log.push(format!(
                "created {VXLAN_DEVICE} vni {VXLAN_VNI} dstport {VXLAN_PORT} local {} dev {} nolearning mtu {mtu} address {}",
                facts.node_ip,
                facts.uplink,
                format_mac(&facts.vtep_mac)
            ));
            link.header.index
        }
    };

    // The device carries each own pod range's network address as a host address (flannel
    // style): the source of packets the node itself sends into the overlay.
    let want: Vec<IpNet> = pod_cidrs
        .iter()
        .map(|c| {
            let bits = if c.addr().is_ipv4() { 32 } else { 128 };
            IpNet::new(c.network(), bits).expect("host prefix is valid")
        })
        .collect();
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| CniError::netlink(format!("list the addresses of {VXLAN_DEVICE}"), e))?;
    for m in msgs.into_iter().filter(|m| m.header.index == index) {
        let Some(ip) = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        }) else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        let net = IpNet::new(ip, m.header.prefix_len).ok();
        if link_local || net.is_some_and(|n| want.contains(&n)) {
            continue;
        }
        h.address().del(m).execute().await.or_else(|e| {
            if nl::is_gone(&e) {
                Ok(())
            } else {
                Err(CniError::netlink(
                    format!("remove address {ip} from {VXLAN_DEVICE}"),
                    e,
                ))
            }
        })?;
        log.push(format!("removed address {ip} from {VXLAN_DEVICE}"));
    }
    let have = nl::addresses(h, index).await?;
    for addr in want {
        if !have.contains(&addr) {
            nl::ensure_address(h, index, addr, VXLAN_DEVICE).await?;
            log.push(format!("added address {addr} to {VXLAN_DEVICE}"));
        }
    }
    Ok(index)
}

/// Deletes kinit's VXLAN device if present (with it go its neighbours, FDB entries and
/// routes). An interface of that name that is not VXLAN is left alone.
pub(super) async fn delete_vxlan(h: &Handle, log: &mut Vec<String>) -> Result<(), CniError> {
    if let Some(link) = nl::link_by_name(h, VXLAN_DEVICE).await? {
        if nl::link_kind(&link) == Some(&InfoKind::Vxlan) {
            nl::delete_link(h, link.header.index, VXLAN_DEVICE).await?;
            log.push(format!("deleted {VXLAN_DEVICE}"));
        }
    }
    Ok(())
}

/// The kernel messages behind a [`CurrentState`], for precise deletes.
pub(super) struct Raw {
    routes: HashMap<PlannedRoute, RouteMessage>,
    rules: HashMap<IpNet, RuleMessage>,
    /// Rules at kinit's priority and table that are not of kinit's shape (see
    /// [`flush_rules`]).
    stray_rules: Vec<RuleMessage>,
    neighbours: HashMap<IpAddr, NeighbourMessage>,
    fdb: HashMap<FdbEntry, NeighbourMessage>,
}

fn neighbour_addr(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v) => Some(IpAddr::V4(*v)),
        NeighbourAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        // FDB dumps (family AF_BRIDGE) carry the remote's address as raw bytes.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

/// The route's table: the `RTA_TABLE` attribute (ids above 255 live only there), else the
/// header's.
fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// The rule's table, like [`route_table`].
fn rule_table(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// The rule's `from` prefix; `0.0.0.0/0` (`::/0`) when it has none.
fn rule_source(m: &RuleMessage) -> Option<IpNet> {
    let src = m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(ip) => Some(*ip),
        _ => None,
    });
    let src = src.unwrap_or(match m.header.family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    IpNet::new(src, m.header.src_len).ok()
}

/// The rules at kinit's priority that look up kinit's table (any other selector they carry
/// makes them differ from the planned `from <range>` rule, so they are replaced).
async fn kinit_rules(h: &Handle) -> Result<Vec<RuleMessage>, CniError> {
    let mut out = Vec::new();
    for (version, v6) in [(IpVersion::V4, false), (IpVersion::V6, true)] {
        let listed: Result<Vec<RuleMessage>, _> =
            h.rule().get(version).execute().try_collect().await;
        let msgs = match listed {
            Ok(m) => m,
            // A kernel without IPv6 has no IPv6 rules.
            Err(e) if v6 && nl::errno(&e) == Some(EAFNOSUPPORT) => continue,
            Err(e) => return Err(CniError::netlink("list the policy rules", e)),
        };
        out.extend(msgs.into_iter().filter(|m| {
            rule_table(m) == POLICY_ROUTE_TABLE
                && m.attributes
                    .contains(&RuleAttribute::Priority(POLICY_RULE_PRIORITY))
        }));
    }
    Ok(out)
}

/// A rule of kinit's shape carries nothing but priority, table, a source prefix and
/// protocol. Only such a rule can be deleted on its own: the kernel deletes the first rule
/// matching the selectors a request names, so a request for `from all` or without `iif`
/// would also match another rule at the same priority.
fn rule_is_plain(m: &RuleMessage) -> bool {
    m.header.src_len > 0
        && m.header.dst_len == 0
        && m.header.tos == 0
        && m.header.action == RuleAction::ToTable
        && !m.header.flags.contains(RuleFlags::Invert)
        && m.attributes.iter().all(|a| {
            matches!(
                a,
                RuleAttribute::Priority(_)
                    | RuleAttribute::Table(_)
                    | RuleAttribute::Source(_)
                    | RuleAttribute::Protocol(_)
                    | RuleAttribute::SuppressPrefixLen(u32::MAX)
                    | RuleAttribute::SuppressIfGroup(u32::MAX)
            )
        })
}

async fn kinit_routes(h: &Handle) -> Result<Vec<RouteMessage>, CniError> {
    let mut out = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let msgs: Vec<RouteMessage> = h
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| CniError::netlink("list routes", e))?;
        out.extend(msgs.into_iter().filter(|m| {
            matches!(route_table(m), MAIN_TABLE | POLICY_ROUTE_TABLE)
                && m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
        }));
    }
    Ok(out)
}

async fn neighbours(h: &Handle, family: AddressFamily) -> Result<Vec<NeighbourMessage>, CniError> {
    h.neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(|e| CniError::netlink(format!("list {family:?} neighbour entries"), e))
}

/// kinit's routes and policy rules, and the permanent neighbours and the FDB entries of the
/// VXLAN device.
pub(super) async fn current_state(
    h: &Handle,
    vxlan_index: Option<u32>,
) -> Result<(CurrentState, Raw), CniError> {
    let mut state = CurrentState::default();
    let mut raw = Raw {
        routes: HashMap::new(),
        rules: HashMap::new(),
        stray_rules: Vec::new(),
        neighbours: HashMap::new(),
        fdb: HashMap::new(),
    };
    for m in kinit_rules(h).await? {
        match rule_source(&m) {
            Some(src) if rule_is_plain(&m) && !raw.rules.contains_key(&src) => {
                state.rules.insert(src);
                raw.rules.insert(src, m);
            }
            // Another shape (or a duplicate) at kinit's priority and table: never planned,
            // so it goes.
            _ => raw.stray_rules.push(m),
        }
    }
    for m in kinit_routes(h).await? {
        let Some(entry) = crate::netlink::route_entry(&m) else {
            continue;
        };
        let unspecified = if entry.dst.addr().is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        // A kinit-protocol route of another shape (no gateway, multipath) never matches a
        // planned one, so it is removed.
        let r = PlannedRoute {
            dst: entry.dst,
            via: entry.gw.unwrap_or(unspecified),
            oif: entry.oif.unwrap_or(0),
            onlink: m.header.flags.contains(RouteFlags::Onlink),
            table: route_table(&m),
        };
        state.routes.insert(r);
        raw.routes.insert(r, m);
    }
    let Some(index) = vxlan_index else {
        return Ok((state, raw));
    };
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for m in neighbours(h, family).await? {
            if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
                continue;
            }
            let ip = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(d) => neighbour_addr(d),
                _ => None,
            });
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => mac_of(l),
                _ => None,
            });
            if let (Some(ip), Some(mac)) = (ip, mac) {
                state.neighbours.insert(ip, mac);
                raw.neighbours.insert(ip, m);
            }
        }
    }
    for m in neighbours(h, AddressFamily::Bridge).await? {
        if m.header.ifindex != index {
            continue;
        }
        let dst = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(d) => neighbour_addr(d),
            _ => None,
        });
        let mac = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac_of(l),
            _ => None,
        });
        if let (Some(dst), Some(mac)) = (dst, mac) {
            let e = FdbEntry { mac, dst };
            state.fdb.insert(e);
            raw.fdb.insert(e, m);
        }
    }
    Ok((state, raw))
}

fn gone_ok(what: String) -> impl FnOnce(rtnetlink::Error) -> Result<(), CniError> {
    move |e| {
        if nl::is_gone(&e) {
            Ok(())
        } else {
            Err(CniError::netlink(what, e))
        }
    }
}

/// Whether rules at kinit's priority and table exist that are not of kinit's shape.
pub(super) fn has_stray_rules(current: &(CurrentState, Raw)) -> bool {
    !current.1.stray_rules.is_empty()
}

/// Deletes every rule at kinit's priority and table, kinit's own and strays alike (see
/// [`rule_is_plain`] for why strays cannot go alone); the caller re-reads the state and
/// adds kinit's rules back. Each request names only family, priority and table, so it
/// deletes the first rule left there.
pub(super) async fn flush_rules(
    h: &Handle,
    current: &(CurrentState, Raw),
    report: &mut SyncReport,
) -> Result<(), CniError> {
    let (_, raw) = current;
    let described = raw
        .rules
        .keys()
        .map(rule_text)
        .chain(raw.stray_rules.iter().map(|m| match rule_source(m) {
            Some(src) => format!("{} (with other selectors)", rule_text(&src)),
            None => format!(
                "a rule at pref {POLICY_RULE_PRIORITY} lookup {POLICY_ROUTE_TABLE} that kinit did not add"
            ),
        }));
    let families = raw
        .rules
        .values()
        .chain(&raw.stray_rules)
        .map(|m| m.header.family);
    for (family, text) in families.zip(described).collect::<Vec<_>>() {
        let mut msg = RuleMessage::default();
        msg.header.family = family;
        msg.header.table = POLICY_ROUTE_TABLE.try_into().unwrap_or(0);
        msg.header.action = RuleAction::ToTable;
        msg.attributes
            .push(RuleAttribute::Priority(POLICY_RULE_PRIORITY));
        msg.attributes
            .push(RuleAttribute::Table(POLICY_ROUTE_TABLE));
        h.rule()
            .del(msg)
            .execute()
            .await
            .or_else(gone_ok(format!(
                "remove the rules at pref {POLICY_RULE_PRIORITY} lookup {POLICY_ROUTE_TABLE} (one is not kinit's)"
            )))?;
        report.rules_removed.push(text);
    }
    Ok(())
}

/// Adds the policy rule `from src lookup` [`POLICY_ROUTE_TABLE`] at [`POLICY_RULE_PRIORITY`]
/// (protocol [`ROUTE_PROTOCOL`], shown by `ip rule`); an identical rule is fine.
async fn add_rule(h: &Handle, src: IpNet) -> Result<(), CniError> {
    let base = h
        .rule()
        .add()
        .table_id(POLICY_ROUTE_TABLE)
        .priority(POLICY_RULE_PRIORITY)
        .action(RuleAction::ToTable);
    let protocol = RuleAttribute::Protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    let result = match src {
        IpNet::V4(n) => {
            let mut req = base.v4().source_prefix(n.network(), n.prefix_len());
            req.message_mut().attributes.push(protocol);
            req.execute().await
        }
        IpNet::V6(n) => {
            let mut req = base.v6().source_prefix(n.network(), n.prefix_len());
            req.message_mut().attributes.push(protocol);
            req.execute().await
        }
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if nl::errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(CniError::netlink(
            format!("add rule {}", rule_text(&src)),
            e,
        )),
    }
}

/// Applies `changes`: additions first (FDB, neighbours, routes, then the policy rules that
/// lead to the routes; a kinit route with the same destination and table is replaced in one
/// step), then removals (rules before the routes they lead to), so traffic to peers that
/// stay never sees a gap. Entries already gone count as removed.
pub(super) async fn apply(
    h: &Handle,
    changes: &Changes,
    current: &(CurrentState, Raw),
    facts: &LocalFacts,
    vxlan_index: Option<u32>,
    report: &mut SyncReport,
) -> Result<(), CniError> {
    let (state, raw) = current;
    let dev = |oif: u32| -> String {
        if oif == facts.uplink_index {
            facts.uplink.clone()
        } else if Some(oif) == vxlan_index {
            VXLAN_DEVICE.to_string()
        } else {
            format!("#{oif}")
        }
    };
    let table_arg = |r: &PlannedRoute| -> String {
        if r.table == MAIN_TABLE {
            String::new()
        } else {
            format!(" table {}", r.table)
        }
    };
    let show = |r: &PlannedRoute| -> String {
        let onlink = if r.onlink { " onlink" } else { "" };
        format!(
            "{} via {} dev {}{onlink}{}",
            r.dst,
            r.via,
            dev(r.oif),
            table_arg(r)
        )
    };
    if let Some(index) = vxlan_index {
        for e in &changes.add_fdb {
            h.neighbours()
                .add_bridge(index, &e.mac)
                .destination(e.dst)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|err| {
                    CniError::netlink(format!("add FDB entry {e} dev {VXLAN_DEVICE}"), err)
                })?;
            report.fdb_added.push(format!("{e} dev {VXLAN_DEVICE}"));
        }
        for (ip, mac) in &changes.add_neighbours {
            h.neighbours()
                .add(index, *ip)
                .link_layer_address(mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|err| {
                    CniError::netlink(
                        format!(
                            "add neighbour {ip} lladdr {} dev {VXLAN_DEVICE}",
                            format_mac(mac)
                        ),
                        err,
                    )
                })?;
            report.neighbours_added.push(format!(
                "{ip} lladdr {} dev {VXLAN_DEVICE}",
                format_mac(mac)
            ));
        }
    }
    for r in &changes.add_routes {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix_len())
            .and_then(|b| b.gateway(r.via))
            .map_err(|e| CniError::Network(format!("route {}: {e}", show(r))))?
            .output_interface(r.oif)
            .table_id(r.table)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if r.onlink {
            b = b.onlink();
        }
        let replace = state
            .routes
            .iter()
            .any(|c| c.dst == r.dst && c.table == r.table);
        let mut req = h.route().add(b.build());
        if replace {
            req = req.replace();
        }
        match req.execute().await {
            Ok(()) => {}
            Err(e) if nl::errno(&e) == Some(EEXIST) => {
                return Err(CniError::Network(format!(
                    "cannot add route {}: a route to {} that kinit did not add is in the way; remove it (ip route del {}{})",
                    show(r),
                    r.dst,
                    r.dst,
                    table_arg(r)
                )))
            }
            Err(e) => return Err(CniError::netlink(format!("add route {}", show(r)), e)),
        }
        report.routes_added.push(show(r));
    }
    for src in &changes.add_rules {
        add_rule(h, *src).await?;
        report.rules_added.push(rule_text(src));
    }
    for src in &changes.del_rules {
        let Some(msg) = raw.rules.get(src) else {
            continue;
        };
        h.rule()
            .del(msg.clone())
            .execute()
            .await
            .or_else(gone_ok(format!("remove rule {}", rule_text(src))))?;
        report.rules_removed.push(rule_text(src));
    }
    for r in &changes.del_routes {
        let Some(msg) = raw.routes.get(r) else {
            continue;
        };
        // Replaced in the step above: nothing left to remove.
        if changes
            .add_routes
            .iter()
            .any(|a| a.dst == r.dst && a.table == r.table)
        {
            report.routes_removed.push(show(r));
            continue;
        }
        let mut del = msg.clone();
        del.attributes.retain(|a| {
            matches!(
                a,
                RouteAttribute::Destination(_)
                    | RouteAttribute::Gateway(_)
                    | RouteAttribute::Oif(_)
                    | RouteAttribute::Table(_)
                    | RouteAttribute::Priority(_)
            )
        });
        h.route()
            .del(del)
            .execute()
            .await
            .or_else(gone_ok(format!("remove route {}", show(r))))?;
        report.routes_removed.push(show(r));
    }
    for (ip, mac) in &changes.del_neighbours {
        let Some(msg) = raw.neighbours.get(ip) else {
            continue;
        };
        let mut del = msg.clone();
        del.attributes
            .retain(|a| matches!(a, NeighbourAttribute::Destination(_)));
        h.neighbours()
            .del(del)
            .execute()
            .await
            .or_else(gone_ok(format!("remove neighbour {ip} dev {VXLAN_DEVICE}")))?;
        report.neighbours_removed.push(format!(
            "{ip} lladdr {} dev {VXLAN_DEVICE}",
            format_mac(mac)
        ));
    }
    for e in &changes.del_fdb {
        let Some(msg) = raw.fdb.get(e) else { continue };
        let mut del = msg.clone();
        del.attributes.retain(|a| {
            matches!(
                a,
                NeighbourAttribute::LinkLayerAddress(_) | NeighbourAttribute::Destination(_)
            )
        });
        h.neighbours()
            .del(del)
            .execute()
            .await
            .or_else(gone_ok(format!("remove FDB entry {e} dev {VXLAN_DEVICE}")))?;
        report.fdb_removed.push(format!("{e} dev {VXLAN_DEVICE}"));
    }
    Ok(())
}
