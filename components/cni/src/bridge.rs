//! The bridge plugin: a host bridge holding the pod range's gateway address, one veth pair per
//! container (host end on the bridge, container end renamed to `CNI_IFNAME` with the pod's
//! address and routes), IPAM from the node's pod CIDR, optional masquerade and hostPort
//! mappings. The pods' MTU follows the node network's state file unless the configuration
//! sets `mtu`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth};
use sha2::{Digest, Sha256};

use crate::config::{NetConf, Range};
use crate::env::CniEnv;
use crate::error::CniError;
use crate::hostport::{self, PortMapping};
use crate::ipam::Store;
use crate::netlink::{self as nl, RouteEntry};
use crate::network::{NetworkState, DEFAULT_STATE_FILE, STATE_FILE_WAIT};
use crate::types::{CniResult, Interface, IpConfig, Route};
use crate::{masq, nft, sysctl};

/// Name of the host end of the veth pair: stable for a network, container ID and interface, so
/// a retried ADD or a DEL without the netns finds it again. `veth` + 11 hex digits = 15 bytes,
/// the kernel's limit.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{network}\0{container_id}\0{ifname}").as_bytes());
    format!("veth{}", &hex::encode(digest)[..11])
}

/// A stable, locally administered MAC for the bridge. A bridge created without one takes the
/// lowest MAC of its ports, so the pods' gateway MAC would change whenever a pod comes or goes.
fn bridge_mac(bridge: &str) -> Vec<u8> {
    let digest = Sha256::digest(format!("kinit-cni bridge {bridge}").as_bytes());
    let mut mac = digest[..6].to_vec();
    mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
    mac
}

/// The gateway (with the subnet's prefix) of each range set: the first range's.
fn gateways(sets: &[Vec<Range>]) -> Vec<IpNet> {
    sets.iter()
        .map(|set| {
            let r = set[0];
            IpNet::new(r.gateway, r.subnet.prefix_len()).expect("prefix of a parsed subnet")
        })
        .collect()
}

struct Plan {
    sets: Vec<Vec<Range>>,
    store: Store,
    /// Where the hostPort lock lives (the IPAM data directory).
    data_root: std::path::PathBuf,
    /// `runtimeConfig.portMappings`. ADD and CHECK refuse malformed ones; DEL treats them
    /// as none (it removes the container's mappings by name anyway), so a bad runtime
    /// configuration never keeps a pod from being torn down.
    port_mappings: Vec<PortMapping>,
}

fn plan(conf: &NetConf, strict: bool) -> Result<Plan, CniError> {
    let ipam = conf.ipam()?;
    let port_mappings = match hostport::port_mappings(conf.runtime_config.as_ref()) {
        Ok(m) => m,
        Err(e) if strict => return Err(e),
        Err(_) => Vec::new(),
    };
    Ok(Plan {
        sets: ipam.range_sets()?,
        store: Store::new(ipam.store_dir(&conf.name)),
        data_root: ipam.data_root(),
        port_mappings,
    })
}

fn attachment<'a>(env: &'a CniEnv, conf: &'a NetConf) -> hostport::Attachment<'a> {
    hostport::Attachment {
        network: &conf.name,
        container_id: &env.container_id,
        ifname: &env.ifname,
    }
}

/// The MTU of the bridge and both veth ends: the configuration's `mtu`, else the node
/// network's state file (so pods match the overlay), else the MTU of the interface with
/// the default route; `None` leaves the kernel default. A state file the configuration
/// names is waited for up to [`STATE_FILE_WAIT`] (the agent writes it on its first sync);
/// the default one is only read.
async fn pod_mtu(conf: &NetConf, host: &Handle) -> Result<Option<u32>, CniError> {
    if let Some(mtu) = conf.mtu {
        return Ok(Some(mtu));
    }
    let (path, state) = match &conf.network_state_file {
        Some(path) => (path.clone(), NetworkState::wait_for(path, STATE_FILE_WAIT)?),
        None => {
            let path = std::path::PathBuf::from(DEFAULT_STATE_FILE);
            let state = NetworkState::read(&path)?;
            (path, state)
        }
    };
    if let Some(state) = state {
        if !(68..=65535).contains(&state.mtu) {
            return Err(CniError::Config(format!(
                "the network state file {} gives MTU {}, outside 68-65535; the node agent rewrites it on its next sync",
                path.display(),
                state.mtu
            )));
        }
        return Ok(Some(state.mtu));
    }
    nl::default_route_mtu(host).await
}

/// ADD: attach the container and return the result.
pub async fn add(env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError> {
    let plan = plan(conf, true)?;
    let netns_path = env.netns.as_deref().ok_or(CniError::Env {
        name: "CNI_NETNS",
        problem: "is required for ADD".into(),
    })?;
    let netns = nl::open_netns(netns_path)?;

    let ips: Vec<IpNet> = {
        let locked = plan.store.lock()?;
        let mut ips = Vec::new();
        for (i, set) in plan.sets.iter().enumerate() {
            match locked.allocate(i, set, &env.container_id, &env.ifname) {
                Ok(ip) => ips.push(IpNet::new(ip, set[0].subnet.prefix_len()).expect("valid")),
                Err(e) => {
                    locked.release(&env.container_id, &env.ifname)?;
                    return Err(e);
                }
            }
        }
        ips
    };

    match attach(env, conf, &plan, &netns, netns_path, &ips).await {
        Ok(result) => Ok(result),
        Err(e) => {
            // Leave nothing behind: the runtime may never call DEL for a failed ADD.
            if !plan.port_mappings.is_empty() {
                let _ = hostport::del(attachment(env, conf), &plan.data_root);
            }
            let _ = detach_host(env, conf).await;
            if let Ok(locked) = plan.store.lock() {
                let _ = locked.release(&env.container_id, &env.ifname);
            }
            Err(e)
        }
    }
}

async fn attach(
    env: &CniEnv,
    conf: &NetConf,
    plan: &Plan,
    netns: &std::fs::File,
    netns_path: &Path,
    ips: &[IpNet],
) -> Result<CniResult, CniError> {
    let host = nl::connect()?;
    let gws = gateways(&plan.sets);
    let mtu = pod_mtu(conf, &host).await?;
    let bridge = ensure_bridge(&host, conf, &gws, mtu).await?;
    let bridge_index = bridge.header.index;

    // Host end: a leftover from an earlier attempt for this container goes first (deleting it
    // also deletes its peer in the container).
    let host_name = host_veth_name(&conf.name, &env.container_id, &env.ifname);
    if let Some(old) = nl::link_by_name(&host, &host_name).await? {
        nl::delete_link(&host, old.header.index, &host_name).await?;
    }
    // The peer is created directly inside the container's namespace under its final name.
    let mut peer = LinkUnspec::new_with_name(&env.ifname).setns_by_fd(netns.as_raw_fd());
    let mut veth = LinkVeth::new(&host_name, &env.ifname);
    if let Some(mtu) = mtu {
        peer = peer.mtu(mtu);
        veth = veth.mtu(mtu);
    }
    let veth = veth
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build();
    host.link().add(veth).execute().await.map_err(|e| {
        CniError::netlink(
            format!(
                "create veth pair {host_name} / {} (in {})",
                env.ifname,
                netns_path.display()
            ),
            e,
        )
    })?;
    let host_link = nl::link_by_name(&host, &host_name)
        .await?
        .ok_or_else(|| CniError::Check(format!("veth {host_name} vanished after creation")))?;
    let host_index = host_link.header.index;
    host.link()
        .set(
            LinkUnspec::new_with_index(host_index)
                .controller(bridge_index)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| CniError::netlink(format!("attach {host_name} to {}", conf.bridge), e))?;
    if conf.hairpin_mode {
        host.link()
            .change(LinkBridgePort::new(host_index).hairpin(true).build())
            .execute()
            .await
            .map_err(|e| CniError::netlink(format!("set hairpin mode on {host_name}"), e))?;
    }

    // Container end: up, addresses, routes.
    let ctr = nl::connect_in(netns, netns_path)?;
    let ctr_link = nl::link_by_name(&ctr, &env.ifname).await?.ok_or_else(|| {
        CniError::UnknownContainer(format!(
            "{} did not appear in {}",
            env.ifname,
            netns_path.display()
        ))
    })?;
    let ctr_index = ctr_link.header.index;
    nl::set_up(&ctr, ctr_index, &env.ifname).await?;
    for ip in ips {
        nl::ensure_address(&ctr, ctr_index, *ip, &env.ifname).await?;
    }
    let routes = container_routes(conf, &gws, ips)?;
    for r in &routes {
        let gw = r.gw.or_else(|| gateway_for(&gws, r.dst.addr()));
        nl::ensure_route(&ctr, r.dst, gw, ctr_index).await?;
    }

    if conf.is_gateway {
        for gw in &gws {
            sysctl::enable_forwarding(gw.addr().is_ipv4())?;
        }
    }
    if conf.ip_masq {
        let subnets: Vec<IpNet> = plan.sets.iter().map(|s| s[0].subnet).collect();
        let no_masq: Vec<IpNet> = match conf.cluster_cidr {
            Some(c) => vec![c],
            None => subnets.clone(),
        };
        masq::ensure(&conf.name, &subnets, &no_masq)?;
    }
    if !plan.port_mappings.is_empty() {
        let pod_ips: Vec<IpAddr> = ips.iter().map(IpNet::addr).collect();
        // Validate first, so a bad mapping changes nothing.
        let rules = hostport::container_rules(&plan.port_mappings, &pod_ips)?;
        if rules.localhost {
            sysctl::enable_route_localnet(&conf.bridge)?;
        }
        hostport::add(
            attachment(env, conf),
            &plan.port_mappings,
            &pod_ips,
            &plan.data_root,
        )?;
    }

    let ctr_link = nl::link_by_index(&ctr, ctr_index)
        .await?
        .unwrap_or(ctr_link);
    let bridge = nl::link_by_index(&host, bridge_index)
        .await?
        .unwrap_or(bridge);
    Ok(CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: nl::link_mac(&bridge),
                sandbox: None,
            },
            Interface {
                name: host_name,
                mac: nl::link_mac(&host_link),
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac: nl::link_mac(&ctr_link),
                sandbox: Some(netns_path.display().to_string()),
            },
        ],
        ips: ips
            .iter()
            .map(|ip| IpConfig {
                version: None,
                address: *ip,
                gateway: gateway_for(&gws, ip.addr()),
                interface: Some(2),
            })
            .collect(),
        routes,
        dns: conf.dns.clone().unwrap_or_default(),
    })
}

/// The routes for the container: IPAM's, plus a default route with `isDefaultGateway`; only
/// for families the container has an address of.
fn container_routes(conf: &NetConf, gws: &[IpNet], ips: &[IpNet]) -> Result<Vec<Route>, CniError> {
    let mut routes: Vec<Route> = conf.ipam()?.routes.clone();
    if conf.is_default_gateway {
        for gw in gws {
            let default: IpNet = if gw.addr().is_ipv4() {
                "0.0.0.0/0".parse().expect("literal")
            } else {
                "::/0".parse().expect("literal")
            };
            if !routes.iter().any(|r| r.dst == default) {
                routes.push(Route {
                    dst: default,
                    gw: None,
                });
            }
        }
    }
    routes.retain(|r| {
        ips.iter()
            .any(|ip| ip.addr().is_ipv4() == r.dst.addr().is_ipv4())
    });
    Ok(routes)
}

fn gateway_for(gws: &[IpNet], of: IpAddr) -> Option<IpAddr> {
    gws.iter()
        .find(|g| g.addr().is_ipv4() == of.is_ipv4())
        .map(|g| g.addr())
}

/// Creates the bridge if absent (with a stable MAC), gives it the gateway addresses when
/// `isGateway`, and brings it up.
async fn ensure_bridge(
    host: &Handle,
    conf: &NetConf,
    gws: &[IpNet],
    mtu: Option<u32>,
) -> Result<rtnetlink::packet_route::link::LinkMessage, CniError> {
    let name = &conf.bridge;
    let link = match nl::link_by_name(host, name).await? {
        Some(link) => link,
        None => {
            let mut b = LinkBridge::new(name).address(bridge_mac(name));
            if let Some(mtu) = mtu {
                b = b.mtu(mtu);
            }
            match host.link().add(b.build()).execute().await {
                Ok(()) => {}
                // Another ADD created it at the same moment.
                Err(e) if nl::errno(&e) == Some(17) => {}
                Err(e) => return Err(CniError::netlink(format!("create bridge {name}"), e)),
            }
            nl::link_by_name(host, name).await?.ok_or_else(|| {
                CniError::Check(format!("bridge {name} vanished right after creation"))
            })?
        }
    };
    if nl::link_kind(&link) != Some(&InfoKind::Bridge) {
        return Err(CniError::Config(format!(
            "interface {name} exists but is not a bridge; delete it or set another \"bridge\" name"
        )));
    }
    if conf.is_gateway {
        for gw in gws {
            nl::ensure_address(host, link.header.index, *gw, name).await?;
        }
    }
    if let Some(mtu) = mtu {
        // The node network changed backend since the bridge was made: follow it.
        if nl::link_mtu(&link) != Some(mtu) {
            nl::set_mtu(host, link.header.index, mtu, name).await?;
        }
    }
    if !nl::link_is_up(&link) {
        nl::set_up(host, link.header.index, name).await?;
    }
    Ok(link)
}

/// Whether an nft failure may be ignored because nothing can have been installed: no port
/// mappings were asked for and nft is not even installed.
fn nft_absent_and_unneeded(e: &CniError, mappings: &[PortMapping]) -> bool {
    matches!(e, CniError::Nft { .. }) && mappings.is_empty() && !nft().available()
}

/// Deletes the host end of the container's veth pair (and with it the container end).
async fn detach_host(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let host = nl::connect()?;
    let name = host_veth_name(&conf.name, &env.container_id, &env.ifname);
    if let Some(link) = nl::link_by_name(&host, &name).await? {
        nl::delete_link(&host, link.header.index, &name).await?;
    }
    Ok(())
}

/// DEL: release the addresses and remove the veth pair; whatever is already gone (netns,
/// interface, allocation) is skipped, so DEL can be repeated and works for unknown containers.
pub async fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let plan = plan(conf, false)?;
    // First stop forwarding hostPorts to an address that is about to be freed.
    match hostport::del(attachment(env, conf), &plan.data_root) {
        Err(e) if !nft_absent_and_unneeded(&e, &plan.port_mappings) => return Err(e),
        _ => {}
    }
    plan.store.lock()?.release(&env.container_id, &env.ifname)?;
    if let Some(path) = env.netns.as_deref() {
        // A netns that cannot be entered any more (deleted, or its bind mount gone) has
        // nothing left to clean up: its interfaces died with it.
        if let Ok(netns) = nl::open_netns(path) {
            if let Ok(ctr) = nl::connect_in(&netns, path) {
                if let Some(link) = nl::link_by_name(&ctr, &env.ifname).await? {
                    nl::delete_link(&ctr, link.header.index, &env.ifname).await?;
                }
            }
        }
    }
    detach_host(env, conf).await
}

/// CHECK: the container's interface, addresses and routes, the host veth on the bridge and
/// the IPAM allocation must all match the previous result.
pub async fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev: CniResult = match &conf.prev_result {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| CniError::Config(format!("prevResult is not a CNI result: {e}")))?,
        None => {
            return Err(CniError::Config(
                "CHECK needs prevResult (the result of the ADD)".into(),
            ))
        }
    };
    let plan = plan(conf, true)?;
    let netns_path = env.netns.as_deref().ok_or(CniError::Env {
        name: "CNI_NETNS",
        problem: "is required for CHECK".into(),
    })?;
    let netns = nl::open_netns(netns_path)?;
    let ctr = nl::connect_in(&netns, netns_path)?;
    let link = nl::link_by_name(&ctr, &env.ifname).await?.ok_or_else(|| {
        CniError::UnknownContainer(format!(
            "interface {} does not exist in {}",
            env.ifname,
            netns_path.display()
        ))
    })?;
    if !nl::link_is_up(&link) {
        return Err(CniError::Check(format!("{} is down", env.ifname)));
    }
    let Some(own_index) = prev.interfaces.iter().position(|i| {
        i.name == env.ifname && i.sandbox.as_deref() == Some(&netns_path.display().to_string())
    }) else {
        return Err(CniError::Check(format!(
            "prevResult has no interface {} in {}",
            env.ifname,
            netns_path.display()
        )));
    };
    if let (Some(want), Some(have)) = (&prev.interfaces[own_index].mac, nl::link_mac(&link)) {
        if !want.eq_ignore_ascii_case(&have) {
            return Err(CniError::Check(format!(
                "{} has MAC {have}, prevResult says {want}",
                env.ifname
            )));
        }
    }
    let have = nl::addresses(&ctr, link.header.index).await?;
    let want: Vec<IpNet> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(own_index))
        .map(|ip| ip.address)
        .collect();
    for ip in &want {
        if !have.contains(ip) {
            return Err(CniError::Check(format!(
                "{} lacks address {ip} (has {have:?})",
                env.ifname
            )));
        }
    }
    let gws = gateways(&plan.sets);
    for r in &prev.routes {
        let gw = r.gw.or_else(|| gateway_for(&gws, r.dst.addr()));
        let table: Vec<RouteEntry> = nl::routes(&ctr, r.dst.addr()).await?;
        if !table.iter().any(|t| t.dst == r.dst && t.gw == gw) {
            return Err(CniError::Check(format!(
                "route {} via {gw:?} is missing in the container",
                r.dst
            )));
        }
    }
    let held = plan.store.lock()?.find(&env.container_id, &env.ifname)?;
    for ip in &want {
        if !held.contains(&ip.addr()) {
            return Err(CniError::Check(format!(
                "IPAM holds no allocation of {} for this container",
                ip.addr()
            )));
        }
    }
    let host = nl::connect()?;
    let bridge = nl::link_by_name(&host, &conf.bridge)
        .await?
        .ok_or_else(|| CniError::Check(format!("bridge {} does not exist", conf.bridge)))?;
    let veth_name = host_veth_name(&conf.name, &env.container_id, &env.ifname);
    let veth = nl::link_by_name(&host, &veth_name)
        .await?
        .ok_or_else(|| CniError::Check(format!("host veth {veth_name} does not exist")))?;
    if nl::link_controller(&veth) != Some(bridge.header.index) {
        return Err(CniError::Check(format!(
            "host veth {veth_name} is not attached to {}",
            conf.bridge
        )));
    }
    let pod_ips: Vec<IpAddr> = want.iter().map(IpNet::addr).collect();
    match hostport::check(attachment(env, conf), &plan.port_mappings, &pod_ips) {
        Err(e) if !nft_absent_and_unneeded(&e, &plan.port_mappings) => Err(e),
        _ => Ok(()),
    }
}

/// STATUS (1.1): ready when the store is writable, every range has a free address and, with
/// `ipMasq`, nft works.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let plan = plan(conf, false)?;
    let locked = plan
        .store
        .lock()
        .map_err(|e| CniError::NotAvailable(e.to_string()))?;
    for set in &plan.sets {
        if locked.free_count(set)? == 0 {
            return Err(CniError::NotAvailable(format!(
                "no free address in {}",
                set[0].subnet
            )));
        }
    }
    if conf.ip_masq {
        masq::probe().map_err(|e| CniError::NotAvailable(e.to_string()))?;
    }
    Ok(())
}

/// GC (1.1): release every allocation, and remove the hostPort mappings, of attachments the
/// runtime no longer lists.
pub fn gc(conf: &NetConf) -> Result<Vec<IpAddr>, CniError> {
    let plan = plan(conf, false)?;
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let released = plan.store.lock()?.retain(&valid)?;
    match hostport::gc(&conf.name, &valid, &plan.data_root) {
        Err(e) if !nft_absent_and_unneeded(&e, &[]) => Err(e),
        _ => Ok(released),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_and_fit() {
        let a = host_veth_name("kinit", "abc", "eth0");
        assert_eq!(a, host_veth_name("kinit", "abc", "eth0"));
        assert_ne!(a, host_veth_name("kinit", "abc", "eth1"));
        assert_ne!(a, host_veth_name("other", "abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
    }

    #[test]
    fn bridge_mac_is_unicast_and_local() {
        let m = bridge_mac("cni0");
        assert_eq!(m.len(), 6);
        assert_eq!(m[0] & 0x01, 0);
        assert_eq!(m[0] & 0x02, 0x02);
        assert_eq!(m, bridge_mac("cni0"));
    }

    #[test]
    fn routes_follow_ipam_and_default_gateway() {
        let mut conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"kinit-cni","isDefaultGateway":true,
                "ipam":{"type":"host-local","ranges":[[{"subnet":"10.250.0.0/24"}]],
                        "routes":[{"dst":"10.96.0.0/12"},{"dst":"fd00::/8"}]}}"#,
        )
        .unwrap();
        let gws: Vec<IpNet> = vec!["10.250.0.1/24".parse().unwrap()];
        let ips: Vec<IpNet> = vec!["10.250.0.2/24".parse().unwrap()];
        let routes = container_routes(&conf, &gws, &ips).unwrap();
        let dsts: Vec<String> = routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(dsts, ["10.96.0.0/12", "0.0.0.0/0"]);
        conf.is_default_gateway = false;
        assert_eq!(container_routes(&conf, &gws, &ips).unwrap().len(), 1);
        assert_eq!(
            gateway_for(&gws, "10.250.0.9".parse().unwrap()),
            Some("10.250.0.1".parse().unwrap())
        );
        assert_eq!(gateway_for(&gws, "fd00::9".parse().unwrap()), None);
    }
}
