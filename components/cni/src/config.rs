//! The network configuration a runtime streams on stdin (one plugin entry of the conflist,
//! with the list's `name` and `cniVersion` filled in).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::CniError;
use crate::types::{Dns, Route};

/// Spec versions this plugin accepts (0.1.0/0.2.0 used a different result format).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version this plugin implements.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Default directory of the IPAM store (one subdirectory per network).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// Just the version field, for VERSION and for error objects.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VersionOnly {
    #[serde(default)]
    pub cni_version: Option<String>,
}

/// One plugin's network configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version of this configuration (and of our result).
    pub cni_version: String,
    /// Network name (also the IPAM store's subdirectory).
    pub name: String,
    /// Plugin type: `kinit-cni` (bridge) or `loopback`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Host bridge to attach containers to.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Give the bridge the gateway address, so the host routes for its pods.
    #[serde(default)]
    pub is_gateway: bool,
    /// Add a default route via the gateway even if the IPAM routes have none.
    #[serde(default)]
    pub is_default_gateway: bool,
    /// Masquerade pod traffic leaving `clusterCIDR` (or the pod range when unset).
    #[serde(default)]
    pub ip_masq: bool,
    /// Let a pod reach itself through a service (the bridge sends frames back out the port).
    #[serde(default)]
    pub hairpin_mode: bool,
    /// MTU of the bridge and both veth ends. When unset, ADD takes the MTU from the node
    /// network's state file (`networkStateFile`), else from the interface holding the
    /// default route, else the kernel default.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// kinit extension: the node network's state file, written by the node agent (default
    /// [`crate::network::DEFAULT_STATE_FILE`]). When set and the file does not exist yet,
    /// ADD waits up to [`crate::network::STATE_FILE_WAIT`] for it.
    #[serde(default)]
    pub network_state_file: Option<PathBuf>,
    /// kinit extension: the whole cluster's pod network; traffic to it is never masqueraded.
    #[serde(default, rename = "clusterCIDR")]
    pub cluster_cidr: Option<IpNet>,
    /// Address management.
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    /// DNS settings returned in the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Result of the previous ADD (CHECK, DEL) or of the previous plugin (chained ADD).
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// Capability arguments from the runtime: `portMappings` (see [`crate::hostport`]).
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    /// Spec 1.1 GC: attachments the runtime still knows.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One attachment named in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_string()
}

/// host-local style IPAM configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    /// Must be `host-local` (handled inside this plugin, no separate binary).
    #[serde(rename = "type")]
    pub ipam_type: String,
    /// Range sets; each set yields one address (one per IP family, for dual stack).
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// Legacy single-range form.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// Legacy single-range form.
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    /// Legacy single-range form.
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    /// Legacy single-range form.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Routes to set up in the container.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Where allocations are stored (`<dataDir>/<network name>/`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// One range of a range set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    /// The subnet; addresses get its prefix length.
    pub subnet: IpNet,
    /// First allocatable address (default: the subnet's second address).
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    /// Last allocatable address (default: the one before the subnet's last).
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    /// Gateway (default: the subnet's first host address).
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// A validated range with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The subnet (host bits cleared).
    pub subnet: IpNet,
    /// First allocatable address.
    pub start: IpAddr,
    /// Last allocatable address.
    pub end: IpAddr,
    /// The gateway, never allocated.
    pub gateway: IpAddr,
}

impl Range {
    /// Whether `ip` lies between `start` and `end`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip_to_u128(ip) >= ip_to_u128(self.start)
            && ip_to_u128(ip) <= ip_to_u128(self.end)
            && ip.is_ipv4() == self.start.is_ipv4()
    }
}

pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub(crate) fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

impl RangeConf {
    fn validate(&self) -> Result<Range, CniError> {
        let subnet = self.subnet.trunc();
        let net = ip_to_u128(subnet.network());
        let last = ip_to_u128(subnet.broadcast());
        let v4 = subnet.addr().is_ipv4();
        if last - net < 3 {
            return Err(CniError::Config(format!(
                "subnet {subnet} is too small: it needs room for the network, gateway, one pod and broadcast addresses"
            )));
        }
        let inside = |ip: IpAddr, what: &str| -> Result<IpAddr, CniError> {
            if subnet.contains(&ip) {
                Ok(ip)
            } else {
                Err(CniError::Config(format!(
                    "{what} {ip} is outside subnet {subnet}"
                )))
            }
        };
        let gateway = match self.gateway {
            Some(g) => inside(g, "gateway")?,
            None => u128_to_ip(net + 1, v4),
        };
        let start = match self.range_start {
            Some(s) => inside(s, "rangeStart")?,
            None => u128_to_ip(net + 1, v4),
        };
        let end = match self.range_end {
            Some(e) => inside(e, "rangeEnd")?,
            None => u128_to_ip(last - 1, v4),
        };
        if ip_to_u128(start) > ip_to_u128(end) {
            return Err(CniError::Config(format!(
                "rangeStart {start} is after rangeEnd {end}"
            )));
        }
        if ip_to_u128(start) == net || ip_to_u128(end) == last {
            return Err(CniError::Config(format!(
                "range {start}-{end} includes the network or broadcast address of {subnet}"
            )));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }
}

impl IpamConf {
    /// The range sets with defaults applied; errors name the offending field.
    pub fn range_sets(&self) -> Result<Vec<Vec<Range>>, CniError> {
        if self.ipam_type != "host-local" {
            return Err(CniError::Unsupported(format!(
                "ipam.type {:?}: kinit-cni has built-in host-local IPAM only; use \"host-local\"",
                self.ipam_type
            )));
        }
        let mut sets = self.ranges.clone();
        if let Some(subnet) = self.subnet {
            sets.push(vec![RangeConf {
                subnet,
                range_start: self.range_start,
                range_end: self.range_end,
                gateway: self.gateway,
            }]);
        }
        if sets.is_empty() || sets.iter().any(Vec::is_empty) {
            return Err(CniError::Config(
                "ipam needs at least one range: set ipam.ranges to [[{\"subnet\": \"<pod CIDR>\"}]]"
                    .into(),
            ));
        }
        let mut out = Vec::new();
        for set in &sets {
            let ranges = set
                .iter()
                .map(RangeConf::validate)
                .collect::<Result<Vec<_>, _>>()?;
            let v4 = ranges[0].start.is_ipv4();
            if ranges.iter().any(|r| r.start.is_ipv4() != v4) {
                return Err(CniError::Config(
                    "a range set mixes IPv4 and IPv6 subnets; use one set per family".into(),
                ));
            }
            out.push(ranges);
        }
        for (i, a) in out.iter().flatten().enumerate() {
            for b in out.iter().flatten().skip(i + 1) {
                let same_family = a.start.is_ipv4() == b.start.is_ipv4();
                if same_family
                    && ip_to_u128(a.start) <= ip_to_u128(b.end)
                    && ip_to_u128(b.start) <= ip_to_u128(a.end)
                {
                    return Err(CniError::Config(format!(
                        "ranges {}-{} and {}-{} overlap",
                        a.start, a.end, b.start, b.end
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Where this network's allocations live.
    pub fn store_dir(&self, network: &str) -> PathBuf {
        self.data_root().join(network)
    }

    /// The data directory shared by all networks (`dataDir`, or the default).
    pub fn data_root(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

/// Compares dotted versions numerically; `a < b`.
pub fn version_lt(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

impl NetConf {
    /// Parses and validates stdin; the version check comes first so an old runtime gets code 1.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let probe: VersionOnly = serde_json::from_slice(stdin).map_err(CniError::Decode)?;
        if let Some(v) = &probe.cni_version {
            check_version(v)?;
        }
        let conf: NetConf = serde_json::from_slice(stdin).map_err(CniError::Decode)?;
        let name_ok = conf
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && conf
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(CniError::Config(format!(
                "network name {:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'",
                conf.name
            )));
        }
        if let Some(mtu) = conf.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::Config(format!(
                    "mtu {mtu} is out of range 68-65535"
                )));
            }
        }
        if conf.bridge.is_empty() || conf.bridge.len() > 15 || conf.bridge.contains('/') {
            return Err(CniError::Config(format!(
                "bridge name {:?} is not a valid interface name (1-15 characters)",
                conf.bridge
            )));
        }
        Ok(conf)
    }

    /// The IPAM section, required by the bridge plugin.
    pub fn ipam(&self) -> Result<&IpamConf, CniError> {
        self.ipam.as_ref().ok_or_else(|| {
            CniError::Config(
                "the ipam section is missing; add {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"<pod CIDR>\"}]]}".into(),
            )
        })
    }
}

/// Error code 1 unless `v` is one of [`SUPPORTED_VERSIONS`].
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion(
            v.to_string(),
            SUPPORTED_VERSIONS.join(", "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What templates/files/10-kinit.conflist.j2 renders for plugin 0, after the runtime
    /// copies the list's name and cniVersion into it.
    pub(crate) const KINIT_PLUGIN: &str = r#"{
        "cniVersion": "1.0.0",
        "name": "kinit",
        "type": "kinit-cni",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "clusterCIDR": "10.244.0.0/16",
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.7.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "/var/lib/kinit/cni/networks"
        }
    }"#;

    #[test]
    fn parses_the_kinit_conflist_entry() {
        let c = NetConf::parse(KINIT_PLUGIN.as_bytes()).unwrap();
        assert_eq!(c.plugin_type, "kinit-cni");
        assert_eq!(c.bridge, "cni0");
        assert!(c.is_gateway && c.ip_masq && c.hairpin_mode);
        assert_eq!(c.cluster_cidr, Some("10.244.0.0/16".parse().unwrap()));
        let ipam = c.ipam().unwrap();
        let sets = ipam.range_sets().unwrap();
        assert_eq!(sets.len(), 1);
        let r = sets[0][0];
        assert_eq!(r.gateway, "10.244.7.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.start, "10.244.7.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.end, "10.244.7.254".parse::<IpAddr>().unwrap());
        assert_eq!(
            ipam.store_dir("kinit"),
            PathBuf::from("/var/lib/kinit/cni/networks/kinit")
        );
        assert_eq!(ipam.routes[0].dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
    }

    #[test]
    fn the_rendered_template_is_accepted() {
        // The real template, rendered by the installer's template crate.
        let mut ctx = kinit_templates::ClusterRenderContext::default();
        ctx.cluster.pod_cidr = "10.244.0.0/16".parse().unwrap();
        ctx.node.pod_cidr = "10.244.7.0/24".parse().unwrap();
        let file = kinit_templates::HostFile::CniConflist.render(&ctx).unwrap();
        let list: serde_json::Value = serde_json::from_str(&file.contents).unwrap();
        let plugins = list["plugins"].as_array().unwrap();
        assert!(!plugins.is_empty());
        for plugin in plugins {
            let mut p = plugin.clone();
            p["name"] = list["name"].clone();
            p["cniVersion"] = list["cniVersion"].clone();
            let conf = NetConf::parse(p.to_string().as_bytes()).unwrap();
            assert_eq!(conf.plugin_type, "kinit-cni");
            assert_eq!(conf.cluster_cidr, Some("10.244.0.0/16".parse().unwrap()));
            // hostPort needs the runtime to pass portMappings; the MTU comes from the node
            // network's state file.
            assert_eq!(plugin["capabilities"]["portMappings"], true);
            assert_eq!(conf.mtu, None);
            let sets = conf.ipam().unwrap().range_sets().unwrap();
            assert_eq!(sets[0][0].subnet, ctx.node.pod_cidr);
        }
    }

    #[test]
    fn rejects_unsupported_versions_with_code_1() {
        let e =
            NetConf::parse(br#"{"cniVersion":"0.2.0","name":"n","type":"kinit-cni"}"#).unwrap_err();
        assert_eq!(e.code() as u32, 1);
        let e =
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n","type":"kinit-cni"}"#).unwrap_err();
        assert_eq!(e.code() as u32, 1);
    }

    #[test]
    fn rejects_garbage_with_code_6_and_bad_values_with_code_7() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code() as u32, 6);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"-x","type":"kinit-cni"}"#)
            .unwrap_err();
        assert_eq!(e.code() as u32, 7);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"x","type":"kinit-cni"}"#)
            .unwrap()
            .ipam()
            .unwrap_err();
        assert_eq!(e.code() as u32, 7);
    }

    #[test]
    fn validates_ranges() {
        let ipam = |v: serde_json::Value| -> IpamConf { serde_json::from_value(v).unwrap() };
        let e = ipam(serde_json::json!({"type": "dhcp", "subnet": "10.0.0.0/24"}))
            .range_sets()
            .unwrap_err();
        assert_eq!(e.code() as u32, 2);
        let e = ipam(serde_json::json!({"type": "host-local", "subnet": "10.0.0.0/31"}))
            .range_sets()
            .unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        let e = ipam(serde_json::json!({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]}))
            .range_sets()
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = ipam(serde_json::json!({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}))
            .range_sets()
            .unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        // Legacy form plus explicit bounds; host bits in the subnet are ignored.
        let sets = ipam(
            serde_json::json!({"type": "host-local", "subnet": "10.0.0.7/24",
            "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"}),
        )
        .range_sets()
        .unwrap();
        assert_eq!(sets[0][0].subnet, "10.0.0.0/24".parse::<IpNet>().unwrap());
        assert!(sets[0][0].contains("10.0.0.15".parse().unwrap()));
        assert!(!sets[0][0].contains("10.0.0.21".parse().unwrap()));
        // Dual stack: one set per family.
        let sets = ipam(serde_json::json!({"type": "host-local",
            "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}))
        .range_sets()
        .unwrap();
        assert_eq!(
            sets[1][0].end,
            "fd00::ffff:ffff:ffff:fffe".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn compares_versions() {
        assert!(version_lt("0.4.0", "1.0.0"));
        assert!(version_lt("0.3.1", "0.4.0"));
        assert!(!version_lt("1.1.0", "1.0.0"));
        assert!(!version_lt("1.0.0", "1.0.0"));
    }
}
