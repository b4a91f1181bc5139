//! What the PKI of a cluster must look like: [`PkiSpec`], stored with the cluster state.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cert::SubjectAltName;
use crate::error::PkiError;
use crate::keys::KeyAlgorithm;

/// Default API server port when the endpoint has none.
pub const DEFAULT_API_PORT: u16 = 6443;

/// A control-plane host: its node name and the addresses it is reached on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneNode {
    /// Kubernetes node name (lower-case DNS name); also a SAN of the API server and etcd certs.
    pub name: String,
    /// Addresses of the host (advertise address first); all become SANs.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// Settings of the cluster PKI. Every field has kubeadm's default except the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PkiSpec {
    /// Where certificates and keys go (`/etc/kubernetes/pki`).
    pub pki_dir: PathBuf,
    /// Where kubeconfigs go; `None` means the parent of `pki_dir` (`/etc/kubernetes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig_dir: Option<PathBuf>,
    /// Cluster name used in kubeconfigs (`kubernetes`).
    pub cluster_name: String,
    /// Cluster DNS domain (`cluster.local`).
    pub dns_domain: String,
    /// Service CIDR, or two comma-separated for dual-stack (`10.96.0.0/12`). The first address
    /// of each range is the in-cluster `kubernetes` service IP and becomes an API server SAN.
    pub service_cidr: String,
    /// `host[:port]` clients use to reach the API (a VIP or load balancer in HA). `None` means the
    /// first IP of the first control-plane node. IPv6 literals with a port: `[fd00::1]:6443`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane_endpoint: Option<String>,
    /// Control-plane hosts. The first one names the etcd server/peer certificates.
    pub nodes: Vec<ControlPlaneNode>,
    /// Additional API server SANs (IP addresses or DNS names).
    pub extra_sans: Vec<String>,
    /// CA validity in days (3650).
    pub ca_validity_days: u32,
    /// Leaf certificate validity in days (365).
    pub leaf_validity_days: u32,
    /// Key algorithm for new certificate keys; `sa.key` is always RSA-2048.
    pub key_algorithm: KeyAlgorithm,
}

impl Default for PkiSpec {
    fn default() -> Self {
        PkiSpec {
            pki_dir: PathBuf::from("/etc/kubernetes/pki"),
            kubeconfig_dir: None,
            cluster_name: "kubernetes".into(),
            dns_domain: "cluster.local".into(),
            service_cidr: "10.96.0.0/12".into(),
            control_plane_endpoint: None,
            nodes: Vec::new(),
            extra_sans: Vec::new(),
            ca_validity_days: 3650,
            leaf_validity_days: 365,
            key_algorithm: KeyAlgorithm::EcdsaP256,
        }
    }
}

/// A parsed control-plane endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ApiEndpoint {
    /// Parses `host`, `host:port`, `ip`, `[ipv6]` or `[ipv6]:port` (a bare IPv6 address has no port).
    pub fn parse(value: &str) -> Result<ApiEndpoint, PkiError> {
        let bad = |reason: &str| {
            PkiError::spec(
                "control_plane_endpoint",
                format!("`{value}`: {reason}; expected host[:port], e.g. 10.0.0.10:6443 or [fd00::10]:6443"),
            )
        };
        let v = value.trim();
        if v.is_empty() {
            return Err(bad("empty"));
        }
        if v.contains("://") || v.contains('/') {
            return Err(bad("give a host and port, not a URL"));
        }
        let (host, port) = if let Some(rest) = v.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing `]`"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected `:port` after `]`"))?,
                ),
            };
            (host, port)
        } else if v.parse::<IpAddr>().is_ok() {
            (v, None)
        } else if let Some((h, p)) = v.rsplit_once(':') {
            (h, Some(p))
        } else {
            (v, None)
        };
        let port = match port {
            None => DEFAULT_API_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("port must be 1-65535")),
                Ok(n) => n,
            },
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host.parse::<IpAddr>().is_err() && !is_dns_name(host) {
            return Err(bad("host is neither an IP address nor a valid DNS name"));
        }
        Ok(ApiEndpoint {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// `https://host:port`, with IPv6 addresses in brackets.
    pub fn url(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("https://[{ip}]:{}", self.port),
            _ => format!("https://{}:{}", self.host, self.port),
        }
    }
}

/// The first address of a service CIDR: the ClusterIP of the `kubernetes` service
/// (10.96.0.1 for 10.96.0.0/12, fd00::1 for fd00::/108).
pub fn first_service_ip(cidr: &IpNet) -> Result<IpAddr, PkiError> {
    let bad = || {
        PkiError::spec(
            "service_cidr",
            format!(
                "`{cidr}` has no room for a service IP; use a larger range such as 10.96.0.0/12"
            ),
        )
    };
    match cidr.trunc() {
        IpNet::V4(n) => {
            if n.prefix_len() >= 31 {
                return Err(bad());
            }
            Ok(IpAddr::V4((u32::from(n.network()) + 1).into()))
        }
        IpNet::V6(n) => {
            if n.prefix_len() >= 127 {
                return Err(bad());
            }
            Ok(IpAddr::V6((u128::from(n.network()) + 1).into()))
        }
    }
}

/// RFC 1123 DNS name (optionally with a leading `*.` wildcard label), case-insensitive.
pub(crate) fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Node names must be lower-case DNS subdomains (Kubernetes object names).
pub(crate) fn is_node_name(name: &str) -> bool {
    !name.starts_with("*.") && is_dns_name(name) && !name.bytes().any(|b| b.is_ascii_uppercase())
}

impl PkiSpec {
    /// Directory for kubeconfigs: the configured one or the parent of `pki_dir`.
    pub fn kubeconfig_dir(&self) -> PathBuf {
        match &self.kubeconfig_dir {
            Some(d) => d.clone(),
            None => default_kubeconfig_dir(&self.pki_dir),
        }
    }

    /// The API endpoint clients use (explicit, or the first node's first IP on port 6443).
    pub fn endpoint(&self) -> Result<ApiEndpoint, PkiError> {
        match &self.control_plane_endpoint {
            Some(e) => ApiEndpoint::parse(e),
            None => {
                let ip = self
                    .nodes
                    .first()
                    .and_then(|n| n.ips.first())
                    .ok_or_else(|| {
                        PkiError::spec(
                            "control_plane_endpoint",
                            "not set and the first node has no IP; set control_plane_endpoint or give the node an IP",
                        )
                    })?;
                Ok(ApiEndpoint {
                    host: ip.to_string(),
                    port: DEFAULT_API_PORT,
                })
            }
        }
    }

    /// Parsed service CIDRs (one, or two for dual-stack).
    pub fn service_cidrs(&self) -> Result<Vec<IpNet>, PkiError> {
        let cidrs = self
            .service_cidr
            .split(',')
            .map(|s| {
                s.trim().parse::<IpNet>().map_err(|_| {
                    PkiError::spec(
                        "service_cidr",
                        format!("`{}` is not a CIDR such as 10.96.0.0/12", s.trim()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if cidrs.len() > 2 {
            return Err(PkiError::spec(
                "service_cidr",
                "at most two ranges (one IPv4, one IPv6) are allowed",
            ));
        }
        Ok(cidrs)
    }

    /// Checks every setting; nothing is written when this fails.
    pub fn validate(&self) -> Result<(), PkiError> {
        if self.pki_dir.as_os_str().is_empty() {
            return Err(PkiError::spec("pki_dir", "must not be empty"));
        }
        if self.cluster_name.trim().is_empty() || self.cluster_name.contains(char::is_whitespace) {
            return Err(PkiError::spec(
                "cluster_name",
                format!("`{}` must be non-empty without spaces", self.cluster_name),
            ));
        }
        if !is_dns_name(&self.dns_domain) || self.dns_domain.starts_with("*.") {
            return Err(PkiError::spec(
                "dns_domain",
                format!(
                    "`{}` is not a DNS domain such as cluster.local",
                    self.dns_domain
                ),
            ));
        }
        for cidr in self.service_cidrs()? {
            first_service_ip(&cidr)?;
        }
        if self.nodes.is_empty() {
            return Err(PkiError::spec(
                "nodes",
                "list at least one control-plane node (name and IPs)",
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if !is_node_name(&node.name) {
                return Err(PkiError::spec(
                    format!("nodes[{i}].name"),
                    format!(
                        "`{}` is not a valid node name; use a lower-case DNS name like cp-1",
                        node.name
                    ),
                ));
            }
            if self.nodes[..i].iter().any(|n| n.name == node.name) {
                return Err(PkiError::spec(
                    format!("nodes[{i}].name"),
                    format!("`{}` is listed twice", node.name),
                ));
            }
        }
        self.endpoint()?;
        for (i, san) in self.extra_sans.iter().enumerate() {
            if let SubjectAltName::Dns(d) = SubjectAltName::classify(san) {
                if !is_dns_name(&d) {
                    return Err(PkiError::spec(
                        format!("extra_sans[{i}]"),
                        format!("`{san}` is neither an IP address nor a valid DNS name"),
                    ));
                }
            }
        }
        if self.ca_validity_days == 0 {
            return Err(PkiError::spec("ca_validity_days", "must be at least 1"));
        }
        if self.leaf_validity_days == 0 {
            return Err(PkiError::spec("leaf_validity_days", "must be at least 1"));
        }
        Ok(())
    }

    /// SANs of `apiserver.crt`: the `kubernetes` service names, the first service IP(s),
    /// node names and IPs, the endpoint host, and the extra SANs, without duplicates.
    pub fn apiserver_sans(&self) -> Result<Vec<SubjectAltName>, PkiError> {
        let mut sans = vec![
            "kubernetes".to_string(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            format!("kubernetes.default.svc.{}", self.dns_domain),
        ];
        for cidr in self.service_cidrs()? {
            sans.push(first_service_ip(&cidr)?.to_string());
        }
        for node in &self.nodes {
            sans.push(node.name.clone());
            sans.extend(node.ips.iter().map(IpAddr::to_string));
        }
        sans.push(self.endpoint()?.host);
        sans.extend(self.extra_sans.iter().cloned());
        Ok(dedup(sans.iter().map(|s| SubjectAltName::classify(s))))
    }

    /// SANs of `etcd/server.crt` and `etcd/peer.crt`: localhost, 127.0.0.1, ::1 and every
    /// control-plane node's name and IPs, so one etcd certificate pair serves all members.
    pub fn etcd_sans(&self) -> Vec<SubjectAltName> {
        let mut sans = vec![
            SubjectAltName::Dns("localhost".into()),
            SubjectAltName::Ip(IpAddr::from([127, 0, 0, 1])),
            SubjectAltName::Ip(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        ];
        for node in &self.nodes {
            sans.push(SubjectAltName::Dns(node.name.clone()));
            sans.extend(node.ips.iter().map(|ip| SubjectAltName::Ip(*ip)));
        }
        dedup(sans.into_iter())
    }

    /// Common name of the etcd server/peer certificates: the first control-plane node.
    pub(crate) fn etcd_common_name(&self) -> &str {
        self.nodes
            .first()
            .map(|n| n.name.as_str())
            .unwrap_or("localhost")
    }
}

/// Parent of the PKI directory (kubeadm keeps kubeconfigs in `/etc/kubernetes`).
pub fn default_kubeconfig_dir(pki_dir: &Path) -> PathBuf {
    match pki_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn dedup(items: impl Iterator<Item = SubjectAltName>) -> Vec<SubjectAltName> {
    let mut out: Vec<SubjectAltName> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PkiSpec {
        PkiSpec {
            nodes: vec![ControlPlaneNode {
                name: "cp-1".into(),
                ips: vec!["192.168.1.10".parse().unwrap()],
            }],
            ..PkiSpec::default()
        }
    }

    #[test]
    fn first_service_ip_v4_and_v6() {
        let v4: IpNet = "10.96.0.0/12".parse().unwrap();
        assert_eq!(
            first_service_ip(&v4).unwrap(),
            "10.96.0.1".parse::<IpAddr>().unwrap()
        );
        // Host bits set in the CIDR are ignored, like Kubernetes does.
        let sloppy: IpNet = "10.100.7.9/16".parse().unwrap();
        assert_eq!(first_service_ip(&sloppy).unwrap().to_string(), "10.100.0.1");
        let v6: IpNet = "fd00:10:96::/108".parse().unwrap();
        assert_eq!(first_service_ip(&v6).unwrap().to_string(), "fd00:10:96::1");
        let tiny: IpNet = "10.0.0.0/32".parse().unwrap();
        assert!(first_service_ip(&tiny).is_err());
    }

    #[test]
    fn endpoint_forms() {
        let e = ApiEndpoint::parse("lb.example.com").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("lb.example.com", 6443));
        assert_eq!(e.url(), "https://lb.example.com:6443");
        let e = ApiEndpoint::parse("10.0.0.5:8443").unwrap();
        assert_eq!(e.url(), "https://10.0.0.5:8443");
        let e = ApiEndpoint::parse("fd00::5").unwrap();
        assert_eq!(e.url(), "https://[fd00::5]:6443");
        let e = ApiEndpoint::parse("[fd00::5]:7443").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("fd00::5", 7443));
        for bad in [
            "",
            "https://x:6443",
            "x:0",
            "x:99999",
            "[fd00::1",
            "bad_host:1",
            ":6443",
        ] {
            let err = ApiEndpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains("control_plane_endpoint"), "{bad}: {err}");
        }
    }

    #[test]
    fn defaults_and_derived_values() {
        let s = spec();
        s.validate().unwrap();
        assert_eq!(s.kubeconfig_dir(), PathBuf::from("/etc/kubernetes"));
        assert_eq!(s.endpoint().unwrap().url(), "https://192.168.1.10:6443");
        let sans: Vec<String> = s
            .apiserver_sans()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect();
        assert_eq!(
            sans,
            [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.96.0.1",
                "cp-1",
                "192.168.1.10"
            ]
        );
    }

    #[test]
    fn dual_stack_service_cidr_adds_both_ips() {
        let s = PkiSpec {
            service_cidr: "10.96.0.0/12, fd00::/108".into(),
            ..spec()
        };
        let sans = s.apiserver_sans().unwrap();
        assert!(sans.contains(&SubjectAltName::Ip("10.96.0.1".parse().unwrap())));
        assert!(sans.contains(&SubjectAltName::Ip("fd00::1".parse().unwrap())));
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(PkiSpec, &str)> = vec![
            (
                PkiSpec {
                    nodes: vec![],
                    ..spec()
                },
                "nodes",
            ),
            (
                PkiSpec {
                    service_cidr: "10.96.0.0".into(),
                    ..spec()
                },
                "service_cidr",
            ),
            (
                PkiSpec {
                    dns_domain: "bad domain".into(),
                    ..spec()
                },
                "dns_domain",
            ),
            (
                PkiSpec {
                    extra_sans: vec!["no spaces allowed".into()],
                    ..spec()
                },
                "extra_sans[0]",
            ),
            (
                PkiSpec {
                    leaf_validity_days: 0,
                    ..spec()
                },
                "leaf_validity_days",
            ),
            (
                PkiSpec {
                    nodes: vec![ControlPlaneNode {
                        name: "CP_1".into(),
                        ips: vec![],
                    }],
                    control_plane_endpoint: Some("vip:6443".into()),
                    ..spec()
                },
                "nodes[0].name",
            ),
        ];
        for (s, field) in cases {
            let msg = s.validate().unwrap_err().to_string();
            assert!(msg.contains(field), "expected {field} in {msg}");
        }
    }

    #[test]
    fn spec_round_trips_through_yaml_with_defaults() {
        let yaml = "nodes:\n- name: cp-1\n  ips: [10.0.0.1]\nkey_algorithm: rsa-2048\n";
        let s: PkiSpec = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(s.key_algorithm, KeyAlgorithm::Rsa2048);
        assert_eq!(s.leaf_validity_days, 365);
        assert_eq!(s.pki_dir, PathBuf::from("/etc/kubernetes/pki"));
        let back: PkiSpec = serde_yaml::from_str(&serde_yaml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(serde_yaml::from_str::<PkiSpec>("typo_field: 1\n").is_err());
    }
}
