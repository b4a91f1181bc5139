//! The inventory types as they appear in the YAML file (camelCase keys, unknown keys rejected).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::names;

/// The only `apiVersion` this crate reads.
pub const API_VERSION: &str = "kinit.dev/v1alpha1";
/// The only `kind` this crate reads.
pub const KIND: &str = "Cluster";
/// Kubernetes API version installed when `spec.cluster.version` is not set.
pub const DEFAULT_VERSION: &str = "v1.33.0";
/// Port the API server listens on on every control-plane host.
pub const API_SERVER_PORT: u16 = 6443;

/// A whole cluster description: the file `kinit apply -i` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inventory {
    /// Must be `kinit.dev/v1alpha1`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Must be `Cluster`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Name of this inventory.
    #[serde(default)]
    pub metadata: Metadata,
    /// Hosts and cluster settings.
    pub spec: InventorySpec,
}

fn default_api_version() -> String {
    API_VERSION.to_string()
}

fn default_kind() -> String {
    KIND.to_string()
}

/// `metadata` of an inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Name of the inventory (default `kinit`).
    #[serde(default = "default_name")]
    pub name: String,
}

fn default_name() -> String {
    "kinit".to_string()
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            name: default_name(),
        }
    }
}

/// `spec`: the hosts and the cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InventorySpec {
    /// Every machine kinit manages, in a stable order (pod CIDRs are handed out in this order).
    #[serde(default)]
    pub hosts: Vec<Host>,
    /// Cluster-wide settings; every field has a default.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// One machine of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "HostFile")]
pub struct Host {
    /// Node name (RFC 1123, lower case); defaults to `address` when omitted.
    pub name: String,
    /// Where kinit reaches the host over SSH: an IP address, or a DNS name when
    /// `privateAddress` is set.
    pub address: String,
    /// How to log in.
    pub ssh: SshConfig,
    /// What the host runs.
    pub roles: Vec<Role>,
    /// Node labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Node taints, written `key[=value]:Effect`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Address for cluster traffic when it differs from `address` (e.g. SSH through a public
    /// address, pods and etcd over a private network).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_address: Option<IpAddr>,
}

/// A host as written in the file: `name` and `ssh` may be omitted.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HostFile {
    #[serde(default)]
    name: Option<String>,
    address: String,
    #[serde(default)]
    ssh: SshConfig,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    taints: Vec<Taint>,
    #[serde(default)]
    private_address: Option<IpAddr>,
}

impl From<HostFile> for Host {
    fn from(f: HostFile) -> Self {
        Host {
            name: f.name.unwrap_or_else(|| f.address.clone()),
            address: f.address,
            ssh: f.ssh,
            roles: f.roles,
            labels: f.labels,
            taints: f.taints,
            private_address: f.private_address,
        }
    }
}

impl Host {
    /// A host with default SSH settings and the given roles; `name` doubles as its address.
    pub fn new(name: &str, address: &str, roles: &[Role]) -> Host {
        Host {
            name: name.to_string(),
            address: address.to_string(),
            ssh: SshConfig::default(),
            roles: roles.to_vec(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            private_address: None,
        }
    }

    /// Whether the host has role `r`.
    pub fn has_role(&self, r: Role) -> bool {
        self.roles.contains(&r)
    }

    /// The address the node uses for cluster traffic: `privateAddress`, else `address`.
    ///
    /// # Panics
    /// When neither is an IP address; a validated inventory never has such a host.
    pub fn node_ip(&self) -> IpAddr {
        self.try_node_ip().unwrap_or_else(|| {
            panic!(
                "host {} has neither an IP address nor a privateAddress; validate the inventory first",
                self.name
            )
        })
    }

    /// [`Host::node_ip`] without the panic.
    pub fn try_node_ip(&self) -> Option<IpAddr> {
        self.private_address
            .or_else(|| self.address.parse::<IpAddr>().ok())
    }
}

/// How kinit logs in to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "SshConfigFile")]
pub struct SshConfig {
    /// Login user (default `root`).
    pub user: String,
    /// SSH port (default 22).
    pub port: u16,
    /// Private key file; a leading `~/` means the admin's home directory. When unset, the SSH
    /// agent and the default keys are tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_path: Option<PathBuf>,
    /// Name of the environment variable holding the SSH password (the password itself never
    /// goes in the file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Run privileged commands through sudo (default: true unless `user` is root).
    pub sudo: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SshConfigFile {
    #[serde(default = "default_ssh_user")]
    user: String,
    #[serde(default = "default_ssh_port")]
    port: u16,
    #[serde(default)]
    key_path: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    sudo: Option<bool>,
}

fn default_ssh_user() -> String {
    "root".to_string()
}

fn default_ssh_port() -> u16 {
    22
}

impl From<SshConfigFile> for SshConfig {
    fn from(f: SshConfigFile) -> Self {
        let sudo = f.sudo.unwrap_or(f.user != "root");
        SshConfig {
            user: f.user,
            port: f.port,
            key_path: f.key_path,
            password_env: f.password_env,
            sudo,
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            user: default_ssh_user(),
            port: default_ssh_port(),
            key_path: None,
            password_env: None,
            sudo: false,
        }
    }
}

/// What a host does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs the API server, controller manager and scheduler as static pods.
    ControlPlane,
    /// Runs workloads.
    Worker,
    /// Runs an etcd member (only with the etcd datastore).
    Etcd,
    /// Runs haproxy + keepalived holding the API VIP.
    Lb,
}

impl Role {
    /// Every role, in file spelling order.
    pub const ALL: [Role; 4] = [Role::ControlPlane, Role::Worker, Role::Etcd, Role::Lb];

    /// The spelling used in the file (`control-plane`, `worker`, `etcd`, `lb`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::Etcd => "etcd",
            Role::Lb => "lb",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`"))
    }
}

/// A node taint, written `key[=value]:Effect` in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Taint {
    /// Taint key (a qualified name like `dedicated` or `example.com/gpu`).
    pub key: String,
    /// Optional value (a label value).
    pub value: Option<String>,
    /// What the scheduler does with pods that do not tolerate it.
    pub effect: TaintEffect,
}

impl Taint {
    /// Checks key and value syntax; `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        names::check_qualified_name(&self.key)
            .map_err(|e| format!("taint key `{}` {e}", self.key))?;
        if let Some(value) = &self.value {
            names::check_label_value(value).map_err(|e| format!("taint value `{value}` {e}"))?;
        }
        Ok(())
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={}:{}", self.key, v, self.effect),
            None => write!(f, "{}:{}", self.key, self.effect),
        }
    }
}

impl FromStr for Taint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key_value, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("taint `{s}` has no effect; write it as key[=value]:Effect"))?;
        let effect = effect.parse::<TaintEffect>()?;
        let (key, value) = match key_value.split_once('=') {
            Some((_, "")) => {
                return Err(format!(
                    "taint `{s}` has an empty value after `=`; drop the `=` or give a value"
                ))
            }
            Some((k, v)) => (k, Some(v.to_string())),
            None => (key_value, None),
        };
        let taint = Taint {
            key: key.to_string(),
            value,
            effect,
        };
        taint.check()?;
        Ok(taint)
    }
}

impl TryFrom<String> for Taint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Taint> for String {
    fn from(t: Taint) -> String {
        t.to_string()
    }
}

/// Taint effect, spelled as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    /// New pods that do not tolerate the taint are not scheduled.
    NoSchedule,
    /// The scheduler avoids the node for such pods.
    PreferNoSchedule,
    /// Running pods that do not tolerate the taint are evicted.
    NoExecute,
}

impl TaintEffect {
    /// Every effect.
    pub const ALL: [TaintEffect; 3] = [
        TaintEffect::NoSchedule,
        TaintEffect::PreferNoSchedule,
        TaintEffect::NoExecute,
    ];

    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaintEffect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaintEffect::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                format!("unknown taint effect `{s}`; use NoSchedule, PreferNoSchedule or NoExecute")
            })
    }
}

/// `spec.cluster`: cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Kubernetes API version, `vMAJOR.MINOR.PATCH`.
    pub version: String,
    /// Cluster name used in kubeconfigs.
    pub cluster_name: String,
    /// Range pod addresses are taken from.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: IpNet,
    /// Range service cluster IPs are taken from.
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: IpNet,
    /// Prefix length of each node's slice of `podCIDR`.
    #[serde(rename = "nodeCIDRMaskSize")]
    pub node_cidr_mask_size: u8,
    /// Cluster DNS domain.
    pub dns_domain: String,
    /// Address clients use for the API; derived when unset (see `Inventory::api_endpoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<ApiEndpoint>,
    /// Virtual IP for a highly available API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<Vip>,
    /// Pod network.
    pub cni: CniConfig,
    /// Optional cluster add-ons.
    pub addons: Addons,
    /// Cluster DNS settings.
    pub dns: DnsConfig,
    /// Certificate settings.
    pub pki: PkiConfig,
    /// Where the control plane keeps its state; derived when unset (see `Inventory::datastore`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore: Option<Datastore>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            version: DEFAULT_VERSION.to_string(),
            cluster_name: "kinit".to_string(),
            pod_cidr: "10.244.0.0/16".parse().expect("valid default pod CIDR"),
            service_cidr: "10.96.0.0/12".parse().expect("valid default service CIDR"),
            node_cidr_mask_size: 24,
            dns_domain: "cluster.local".to_string(),
            api_endpoint: None,
            vip: None,
            cni: CniConfig::default(),
            addons: Addons::default(),
            dns: DnsConfig::default(),
            pki: PkiConfig::default(),
            datastore: None,
        }
    }
}

/// Where clients reach the API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiEndpoint {
    /// IP address or DNS name.
    pub host: String,
    /// Port (default 6443).
    #[serde(default = "default_api_port")]
    pub port: u16,
}

fn default_api_port() -> u16 {
    API_SERVER_PORT
}

/// A virtual IP held by keepalived on the `lb` hosts (or on the control planes when no host
/// has the `lb` role), with haproxy forwarding to every API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Vip {
    /// The virtual address.
    pub address: IpAddr,
    /// Prefix of the network the VIP and its holders share (default 24).
    #[serde(default = "default_vip_prefix")]
    pub prefix_length: u8,
    /// Network interface carrying the VIP on its holders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Port haproxy listens on (default 8443: on control-plane hosts 6443 is the API server's).
    #[serde(default = "default_vip_port")]
    pub port: u16,
    /// VRRP virtual router id, unique on the network segment (default 51).
    #[serde(default = "default_virtual_router_id")]
    pub virtual_router_id: u8,
}

fn default_vip_prefix() -> u8 {
    24
}

fn default_vip_port() -> u16 {
    8443
}

fn default_virtual_router_id() -> u8 {
    51
}

impl Vip {
    /// A VIP with default prefix, port and router id.
    pub fn new(address: IpAddr) -> Vip {
        Vip {
            address,
            prefix_length: default_vip_prefix(),
            interface: None,
            port: default_vip_port(),
            virtual_router_id: default_virtual_router_id(),
        }
    }
}

/// Pod network settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CniConfig {
    /// How pod traffic crosses hosts.
    pub mode: CniMode,
}

/// How pod traffic crosses hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CniMode {
    /// host-gw when every node shares the uplink subnet, VXLAN otherwise (decided by the node
    /// agents from the Nodes they see, so a node joining from another subnet switches all).
    #[default]
    Auto,
    /// Plain routes to each node's pod CIDR; needs all hosts on one L2 network.
    HostGw,
    /// VXLAN overlay (VNI 1, UDP 8472, as flannel); works across routed networks.
    Vxlan,
}

impl CniMode {
    /// The inventory spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CniMode::Auto => "auto",
            CniMode::HostGw => "host-gw",
            CniMode::Vxlan => "vxlan",
        }
    }
}

/// Cluster DNS settings (the `kinit dns` addon, deployed as `coredns` like kubeadm's).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Where names outside the cluster domain are forwarded: `IP` or `IP:port`. Empty: the
    /// upstreams of each DNS pod's node (`/etc/resolv.conf`), as kubeadm's Corefile does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
}

impl DnsConfig {
    /// An upstream as a socket address (`IP`, `IP:port` or `[IPv6]:port`; port 53 when none).
    pub fn parse_upstream(text: &str) -> Option<std::net::SocketAddr> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(std::net::SocketAddr::new(ip, 53));
        }
        text.parse::<std::net::SocketAddr>()
            .ok()
            .filter(|a| a.port() != 0)
    }
}

/// Optional add-ons applied once the API is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Addons {
    /// Cluster DNS (default on).
    pub dns: bool,
    /// Ingress controller (default off).
    pub ingress: bool,
}

impl Default for Addons {
    fn default() -> Self {
        Addons {
            dns: true,
            ingress: false,
        }
    }
}

/// Certificate settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PkiConfig {
    /// CA certificate lifetime (default 3650 days).
    pub ca_validity_days: u32,
    /// Leaf certificate lifetime (default 365 days).
    pub cert_validity_days: u32,
    /// `ecdsa-p256` (default) or `rsa-2048`.
    pub key_algorithm: String,
}

/// Key algorithms the PKI supports.
pub const KEY_ALGORITHMS: [&str; 2] = ["ecdsa-p256", "rsa-2048"];

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            ca_validity_days: 3650,
            cert_validity_days: 365,
            key_algorithm: KEY_ALGORITHMS[0].to_string(),
        }
    }
}

/// Where the control plane keeps cluster state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Datastore {
    /// kinit's embedded single-file store (one control plane only).
    Embedded,
    /// An etcd cluster installed by kinit.
    Etcd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_parses_and_prints_every_form() {
        let t: Taint = "dedicated=infra:NoSchedule".parse().unwrap();
        assert_eq!(t.key, "dedicated");
        assert_eq!(t.value.as_deref(), Some("infra"));
        assert_eq!(t.effect, TaintEffect::NoSchedule);
        assert_eq!(t.to_string(), "dedicated=infra:NoSchedule");
        let t: Taint = "example.com/gpu:NoExecute".parse().unwrap();
        assert_eq!(t.key, "example.com/gpu");
        assert_eq!(t.value, None);
        assert_eq!(t.to_string(), "example.com/gpu:NoExecute");
    }

    #[test]
    fn taint_rejects_bad_syntax_and_effects() {
        for bad in [
            "dedicated",
            "dedicated=infra:noschedule",
            "dedicated=:NoSchedule",
            ":NoSchedule",
            "bad key:NoSchedule",
            "k=bad value:NoExecute",
        ] {
            assert!(bad.parse::<Taint>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn taint_effect_display_uses_kubernetes_spelling() {
        assert_eq!(
            TaintEffect::PreferNoSchedule.to_string(),
            "PreferNoSchedule"
        );
    }

    #[test]
    fn role_spellings_match_serde() {
        for role in Role::ALL {
            let yaml = serde_yaml::to_string(&role).unwrap();
            assert_eq!(yaml.trim(), role.as_str());
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
    }

    #[test]
    fn ssh_sudo_defaults_to_true_for_non_root_users() {
        let ssh: SshConfig = serde_yaml::from_str("user: ubuntu").unwrap();
        assert!(ssh.sudo);
        assert_eq!(ssh.port, 22);
        let ssh: SshConfig = serde_yaml::from_str("user: root").unwrap();
        assert!(!ssh.sudo);
        let ssh: SshConfig = serde_yaml::from_str("{user: ubuntu, sudo: false}").unwrap();
        assert!(!ssh.sudo);
    }

    #[test]
    fn host_name_defaults_to_address() {
        let host: Host = serde_yaml::from_str("{address: 10.0.0.5, roles: [worker]}").unwrap();
        assert_eq!(host.name, "10.0.0.5");
        assert_eq!(host.ssh, SshConfig::default());
    }

    #[test]
    fn node_ip_prefers_private_address() {
        let mut host = Host::new("n1", "203.0.113.5", &[Role::Worker]);
        assert_eq!(host.node_ip(), "203.0.113.5".parse::<IpAddr>().unwrap());
        host.private_address = Some("10.0.0.5".parse().unwrap());
        assert_eq!(host.node_ip(), "10.0.0.5".parse::<IpAddr>().unwrap());
        host.address = "n1.example.com".into();
        assert_eq!(host.node_ip(), "10.0.0.5".parse::<IpAddr>().unwrap());
        host.private_address = None;
        assert_eq!(host.try_node_ip(), None);
    }
}
