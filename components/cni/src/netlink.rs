//! Thin helpers over rtnetlink: connections bound to a network namespace, link/address/route
//! look-ups that treat "not found" as `None`, and idempotent "ensure" operations.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::error::CniError;

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;

/// The errno of a netlink NACK, if `e` is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// Opens the network namespace file `path` (e.g. `/var/run/netns/cni-...`).
pub fn open_netns(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|source| CniError::Netns {
        path: path.to_path_buf(),
        source,
    })
}

/// A netlink connection in the current thread's network namespace.
pub fn connect() -> Result<Handle, CniError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| CniError::sys("open a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink connection whose socket lives in `netns`.
///
/// A netlink socket belongs to the namespace it was created in, so the calling thread enters
/// `netns` just long enough to create the socket and then returns to its own namespace; no
/// other code runs in between (this is synchronous), and later requests on the socket act on
/// `netns` from any thread.
pub fn connect_in(netns: &File, netns_path: &Path) -> Result<Handle, CniError> {
    let own = File::open("/proc/thread-self/ns/net").map_err(|e| {
        CniError::io(
            "cannot open own network namespace",
            "/proc/thread-self/ns/net",
            e,
        )
    })?;
    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| CniError::Netns {
        path: netns_path.to_path_buf(),
        source: std::io::Error::from(e),
    })?;
    let created = rtnetlink::new_connection();
    // Going back cannot reasonably fail (the fd is our own namespace); if it did, the thread
    // would act on the container's namespace, so treat it as fatal for this command.
    setns(own.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| CniError::sys("return to the host network namespace", e))?;
    let (conn, handle, _) =
        created.map_err(|e| CniError::sys("open a netlink socket in the container", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The link named `name`, or `None` when it does not exist.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    let mut stream = handle.link().get().match_name(name).execute();
    match stream.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(CniError::netlink(format!("look up link {name}"), e)),
    }
}

/// The link with index `index`, or `None` when it does not exist.
pub async fn link_by_index(handle: &Handle, index: u32) -> Result<Option<LinkMessage>, CniError> {
    let mut stream = handle.link().get().match_index(index).execute();
    match stream.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(CniError::netlink(format!("look up link #{index}"), e)),
    }
}

/// Link name attribute.
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Hardware address as `aa:bb:cc:dd:ee:ff`.
pub fn link_mac(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) if !bytes.is_empty() => Some(
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        ),
        _ => None,
    })
}

/// The link's kind (`bridge`, `veth`, ...).
pub fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// Index of the bridge (controller) the link is attached to.
pub fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

/// Whether the link is administratively up.
pub fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

/// Sets the link up.
pub async fn set_up(handle: &Handle, index: u32, what: &str) -> Result<(), CniError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| CniError::netlink(format!("set {what} up"), e))
}

/// Deletes the link; a link that is already gone is not an error.
pub async fn delete_link(handle: &Handle, index: u32, what: &str) -> Result<(), CniError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(CniError::netlink(format!("delete {what}"), e)),
    }
}

/// The addresses (with prefix) on link `index`.
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<IpNet>, CniError> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| CniError::netlink(format!("list addresses of link #{index}"), e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })?;
            IpNet::new(ip, m.header.prefix_len).ok()
        })
        .collect())
}

/// Adds `addr` to link `index` unless it is already there.
pub async fn ensure_address(
    handle: &Handle,
    index: u32,
    addr: IpNet,
    what: &str,
) -> Result<(), CniError> {
    if addresses(handle, index).await?.contains(&addr) {
        return Ok(());
    }
    match handle
        .address()
        .add(index, addr.addr(), addr.prefix_len())
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(CniError::netlink(
            format!("add address {addr} to {what}"),
            e,
        )),
    }
}

/// A route of the main table: destination and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination network.
    pub dst: IpNet,
    /// Gateway, if any.
    pub gw: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
}

/// A route message's destination, gateway and output interface (the default route's
/// destination is the family's unspecified address /0).
pub(crate) fn route_entry(m: &RouteMessage) -> Option<RouteEntry> {
    let v4 = m.header.address_family == rtnetlink::packet_route::AddressFamily::Inet;
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gw = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v4 {
        IpAddr::V4(0.into())
    } else {
        IpAddr::V6(0u128.into())
    });
    let dst = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
    Some(RouteEntry { dst, gw, oif })
}

/// A netlink route address as an IP address.
pub(crate) fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// Routes of the main table for the family of `family_of`.
pub async fn routes(handle: &Handle, family_of: IpAddr) -> Result<Vec<RouteEntry>, CniError> {
    let query = match family_of {
        IpAddr::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        IpAddr::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    };
    let msgs: Vec<RouteMessage> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(|e| CniError::netlink("list routes", e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
        .filter_map(route_entry)
        .collect())
}

/// Adds a route to `dst` via `gw` out of link `index`; an identical existing route is fine.
pub async fn ensure_route(
    handle: &Handle,
    dst: IpNet,
    gw: Option<IpAddr>,
    index: u32,
) -> Result<(), CniError> {
    let what = || match gw {
        Some(gw) => format!("add route {dst} via {gw}"),
        None => format!("add route {dst}"),
    };
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .map_err(|e| CniError::Config(format!("route {dst}: {e}")))?
        .output_interface(index);
    if let Some(gw) = gw {
        builder = builder
            .gateway(gw)
            .map_err(|e| CniError::Config(format!("route {dst} via {gw}: {e}")))?;
    }
    match handle.route().add(builder.build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(CniError::netlink(what(), e)),
    }
}

/// The link's MTU.
pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// Sets the link's MTU.
pub async fn set_mtu(handle: &Handle, index: u32, mtu: u32, what: &str) -> Result<(), CniError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
        .execute()
        .await
        .map_err(|e| CniError::netlink(format!("set the MTU of {what} to {mtu}"), e))
}

/// The MTU of the interface holding the default route (IPv4 first), if there is one.
pub async fn default_route_mtu(handle: &Handle) -> Result<Option<u32>, CniError> {
    for family in [
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    ] {
        let oif = routes(handle, family)
            .await?
            .into_iter()
            .find(|r| r.dst.prefix_len() == 0)
            .and_then(|r| r.oif);
        if let Some(oif) = oif {
            if let Some(link) = link_by_index(handle, oif).await? {
                return Ok(link_mtu(&link));
            }
        }
    }
    Ok(None)
}

/// Whether a netlink error means "nothing to delete".
pub fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(
        errno(e),
        Some(ENODEV) | Some(ENOENT) | Some(ESRCH) | Some(EADDRNOTAVAIL)
    )
}
