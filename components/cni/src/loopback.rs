//! The `loopback` plugin type: brings `lo` up in the container.
//!
//! containerd's CRI plugin runs a built-in `{"type": "loopback"}` network before the
//! conflist, by executing `<bin_dir>/loopback`; with this type handled here, a symlink
//! `/opt/cni/bin/loopback -> kinit` is all a kinit node needs.

use ipnet::IpNet;

use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::CniError;
use crate::netlink as nl;
use crate::types::{CniResult, Interface, IpConfig};

async fn lo(
    ctr: &rtnetlink::Handle,
) -> Result<rtnetlink::packet_route::link::LinkMessage, CniError> {
    nl::link_by_name(ctr, "lo")
        .await?
        .ok_or_else(|| CniError::UnknownContainer("the namespace has no lo interface".into()))
}

/// ADD: set `lo` up and report its addresses.
pub async fn add(env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError> {
    let path = env.netns.as_deref().ok_or(CniError::Env {
        name: "CNI_NETNS",
        problem: "is required for ADD".into(),
    })?;
    let netns = nl::open_netns(path)?;
    let ctr = nl::connect_in(&netns, path)?;
    let link = lo(&ctr).await?;
    nl::set_up(&ctr, link.header.index, "lo").await?;
    let addrs: Vec<IpNet> = nl::addresses(&ctr, link.header.index).await?;
    Ok(CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![Interface {
            name: "lo".into(),
            mac: Some("00:00:00:00:00:00".into()),
            sandbox: Some(path.display().to_string()),
        }],
        ips: addrs
            .into_iter()
            .map(|address| IpConfig {
                version: None,
                address,
                gateway: None,
                interface: Some(0),
            })
            .collect(),
        routes: Vec::new(),
        dns: Default::default(),
    })
}

/// CHECK: `lo` must be up.
pub async fn check(env: &CniEnv) -> Result<(), CniError> {
    let path = env.netns.as_deref().ok_or(CniError::Env {
        name: "CNI_NETNS",
        problem: "is required for CHECK".into(),
    })?;
    let netns = nl::open_netns(path)?;
    let ctr = nl::connect_in(&netns, path)?;
    if nl::link_is_up(&lo(&ctr).await?) {
        Ok(())
    } else {
        Err(CniError::Check("lo is down".into()))
    }
}
