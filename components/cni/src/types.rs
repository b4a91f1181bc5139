//! The spec's result object (ADD output, `prevResult` input) and its well-known parts.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An interface the plugin created or configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Netns path for interfaces inside the container; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`: only in results of spec versions before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address with the subnet's prefix length, e.g. `10.244.1.5/24`.
    pub address: IpNet,
    /// The subnet's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route set up inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop; the subnet's gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings passed through to the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The result object of ADD (and `prevResult` of CHECK/DEL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// Spec version of the result: the configuration's `cniVersion`.
    pub cni_version: String,
    /// Interfaces created (host bridge, host veth, container interface).
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Assigned addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes set up in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Adapts the result to `cni_version`: results before 1.0.0 carry an IP `version` field.
    pub fn for_version(mut self, cni_version: &str) -> CniResult {
        let legacy = crate::config::version_lt(cni_version, "1.0.0");
        for ip in &mut self.ips {
            ip.version = legacy.then(|| {
                if ip.address.addr().is_ipv4() {
                    "4".to_string()
                } else {
                    "6".to_string()
                }
            });
        }
        self.cni_version = cni_version.to_string();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some("aa:bb:cc:dd:ee:01".into()),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:02".into()),
                    sandbox: Some("/var/run/netns/x".into()),
                },
            ],
            ips: vec![IpConfig {
                version: None,
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn serializes_like_the_spec_example() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["interfaces"][0]["name"], "cni0");
        assert!(v["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/x");
        assert_eq!(v["ips"][0]["address"], "10.244.1.5/24");
        assert_eq!(v["ips"][0]["gateway"], "10.244.1.1");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        assert!(v["routes"][0].get("gw").is_none());
        assert_eq!(v["dns"], serde_json::json!({}));
    }

    #[test]
    fn legacy_versions_carry_the_ip_version() {
        let r = sample().for_version("0.4.0");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        let back: CniResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let r = r.for_version("1.1.0");
        assert_eq!(r.ips[0].version, None);
    }
}
