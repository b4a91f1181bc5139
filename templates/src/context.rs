//! The typed render context: what the installer knows about the cluster and one host.
//!
//! The installer fills these structs from the inventory. Which optional sections are present
//! decides the host's roles: `control_plane` → static pods for the API server, controller
//! manager and scheduler; `etcd_member` → the etcd static pod; `load_balancer` → haproxy and
//! keepalived. Every host gets the agent unit and config, the containerd config and the CNI
//! conflist.
//!
//! The structs serialize to exactly the shape the templates read (field names unchanged,
//! absent sections as `null`), so a context can also be given as JSON to
//! [`render_template`](crate::render_template).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{ContextProblem, TemplateError};

/// Everything needed to render the files of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRenderContext {
    /// Settings shared by every host of the cluster.
    pub cluster: ClusterSettings,
    /// The host being rendered.
    pub node: NodeSettings,
    /// Container images referenced by the rendered files.
    pub images: ImageSettings,
    /// Present when the host runs the control plane (API server, controller manager, scheduler).
    pub control_plane: Option<ControlPlaneSettings>,
    /// Present when the host runs an etcd member; it must be listed in `cluster.etcd.members`.
    pub etcd_member: Option<EtcdMemberSettings>,
    /// Present when the host runs haproxy + keepalived for the API VIP.
    pub load_balancer: Option<LoadBalancerSettings>,
}

/// Cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Cluster name (`--cluster-name`), e.g. `kubernetes`.
    pub name: String,
    /// Pod network of the whole cluster (`--cluster-cidr`).
    pub pod_cidr: IpNet,
    /// Service network (`--service-cluster-ip-range`).
    pub service_cidr: IpNet,
    /// Prefix length of each node's pod range (`--node-cidr-mask-size`).
    pub node_cidr_mask_size: u8,
    /// DNS domain of the cluster, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Service IP of the cluster DNS, inside `service_cidr`.
    pub cluster_dns_ip: IpAddr,
    /// How pod traffic crosses nodes: `auto`, `host-gw` or `vxlan`.
    pub cni_mode: String,
    /// Secure port of every API server (`--secure-port`), usually 6443.
    pub api_server_port: u16,
    /// Service-account token issuer URL (`--service-account-issuer`).
    pub service_account_issuer: String,
    /// Replicated datastore; `None` means each API server uses the embedded store.
    pub etcd: Option<EtcdClusterSettings>,
}

/// The etcd cluster kinit runs for a replicated control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdClusterSettings {
    /// Every etcd member, in a stable order (it is rendered as given).
    pub members: Vec<EtcdMember>,
}

/// One etcd member: its name (`--name`, the host name) and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    /// Member name; equals the host's node name.
    pub name: String,
    /// Address used for client (2379) and peer (2380) traffic.
    pub ip: IpAddr,
}

/// Per-host etcd settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMemberSettings {
    /// `new` when bootstrapping the cluster, `existing` when this member joins a running one.
    pub initial_cluster_state: EtcdInitialClusterState,
}

/// Value of etcd's `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcdInitialClusterState {
    /// The member is part of the initial bootstrap.
    New,
    /// The member joins an already running cluster.
    Existing,
}

/// The host being rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    /// Node name (DNS-1123 subdomain), also the etcd member name.
    pub name: String,
    /// Primary address of the node; the API server advertises it.
    pub ip: IpAddr,
    /// This node's pod range, inside `cluster.pod_cidr`; used by the CNI IPAM.
    pub pod_cidr: IpNet,
    /// Labels the agent registers the node with.
    pub labels: BTreeMap<String, String>,
    /// Taints the agent registers the node with.
    pub taints: Vec<Taint>,
    /// Cgroup driver shared by containerd (`SystemdCgroup`) and the agent.
    pub cgroup_driver: CgroupDriver,
    /// Parent cgroup for pods, e.g. `kubepods.slice` (systemd) or `/kubepods` (cgroupfs).
    pub cgroup_parent: String,
}

/// A node taint, serialized like a Kubernetes `Taint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    /// Taint key.
    pub key: String,
    /// Optional taint value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Effect on pods that do not tolerate it.
    pub effect: TaintEffect,
}

/// Effect of a [`Taint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaintEffect {
    /// New pods are not scheduled.
    NoSchedule,
    /// The scheduler avoids the node.
    PreferNoSchedule,
    /// Running pods are evicted.
    NoExecute,
}

/// Cgroup driver used by containerd and the agent; both must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// systemd manages pod cgroups (recommended on systemd hosts with cgroup v2).
    Systemd,
    /// Pod cgroups are managed directly in cgroupfs.
    Cgroupfs,
}

/// Container images referenced by the rendered files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSettings {
    /// The kinit control-plane image, e.g. `kinit.local/kinit:v0.1.0`.
    pub control_plane: String,
    /// The kinit executable inside the control-plane image (first word of the pod command).
    pub control_plane_command: String,
    /// Pause (sandbox) image for containerd, e.g. `kinit.local/pause:v0.1.0`.
    pub pause: String,
    /// etcd image for replicated control planes, e.g. `registry.k8s.io/etcd:3.5.21-0`.
    pub etcd: String,
}

/// Per-host control-plane settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneSettings {
    /// Address the API server listens on (`--bind-address`), usually `0.0.0.0`.
    pub apiserver_bind_address: IpAddr,
    /// Secure port of the controller manager (`--secure-port`), usually 10257.
    pub controller_manager_port: u16,
    /// Secure port of the scheduler (`--secure-port`), usually 10259.
    pub scheduler_port: u16,
}

/// haproxy + keepalived settings for a host that carries the API VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerSettings {
    /// Virtual IP with its prefix length, e.g. `10.0.0.100/24`.
    pub vip: IpNet,
    /// Port haproxy listens on; must differ from the API server port on control-plane hosts.
    pub frontend_port: u16,
    /// Network interface that carries the VIP, e.g. `eth0`.
    pub interface: String,
    /// VRRP router id shared by all load balancers of this VIP (1..=255).
    pub virtual_router_id: u8,
    /// VRRP priority of this host (1..=254); the highest live one holds the VIP.
    pub priority: u8,
    /// Initial VRRP state of this host.
    pub state: VrrpState,
    /// VRRP password shared by all load balancers (1..=8 printable ASCII characters).
    pub auth_pass: String,
    /// Other load balancers to talk to by unicast; empty means multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// API servers behind the VIP.
    pub backends: Vec<LoadBalancerBackend>,
    /// How haproxy checks each backend.
    pub health_check: ApiHealthCheck,
}

/// Initial VRRP state of a keepalived instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpState {
    /// Starts holding the VIP.
    Master,
    /// Starts as standby.
    Backup,
}

/// One API server behind the load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerBackend {
    /// Server name in haproxy (the host name).
    pub name: String,
    /// API server address.
    pub address: IpAddr,
    /// API server port, usually 6443.
    pub port: u16,
}

/// How haproxy decides an API server is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiHealthCheck {
    /// `GET /healthz` over TLS must answer 200 (needs unauthenticated health endpoints).
    Healthz,
    /// The TCP connection must succeed.
    Tcp,
}

impl Default for ClusterRenderContext {
    /// A single control-plane node with the embedded store: what `init` renders by default.
    fn default() -> Self {
        ClusterRenderContext {
            cluster: ClusterSettings {
                name: "kubernetes".into(),
                pod_cidr: net("10.244.0.0/16"),
                service_cidr: net("10.96.0.0/12"),
                node_cidr_mask_size: 24,
                cluster_domain: "cluster.local".into(),
                cluster_dns_ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
                cni_mode: "auto".into(),
                api_server_port: 6443,
                service_account_issuer: "https://kubernetes.default.svc.cluster.local".into(),
                etcd: None,
            },
            node: NodeSettings {
                name: "cp-1".into(),
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 11)),
                pod_cidr: net("10.244.0.0/24"),
                labels: BTreeMap::from([(
                    "node-role.kubernetes.io/control-plane".to_string(),
                    String::new(),
                )]),
                taints: vec![Taint {
                    key: "node-role.kubernetes.io/control-plane".into(),
                    value: None,
                    effect: TaintEffect::NoSchedule,
                }],
                cgroup_driver: CgroupDriver::Systemd,
                cgroup_parent: "kubepods.slice".into(),
            },
            images: ImageSettings {
                control_plane: format!("kinit.local/kinit:v{}", env!("CARGO_PKG_VERSION")),
                control_plane_command: "kinit".into(),
                pause: format!("kinit.local/pause:v{}", env!("CARGO_PKG_VERSION")),
                etcd: "registry.k8s.io/etcd:3.5.21-0".into(),
            },
            control_plane: Some(ControlPlaneSettings {
                apiserver_bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                controller_manager_port: 10257,
                scheduler_port: 10259,
            }),
            etcd_member: None,
            load_balancer: None,
        }
    }
}

impl ClusterRenderContext {
    /// The first of three control-plane hosts (`cp-1..3`, 10.0.0.11-13), each running etcd and
    /// haproxy + keepalived for the VIP 10.0.0.100/24 on port 8443.
    pub fn example_ha() -> Self {
        let mut context = ClusterRenderContext::default();
        let hosts: Vec<(String, IpAddr)> = (1u8..=3)
            .map(|i| {
                (
                    format!("cp-{i}"),
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i)),
                )
            })
            .collect();
        context.cluster.etcd = Some(EtcdClusterSettings {
            members: hosts
                .iter()
                .map(|(name, ip)| EtcdMember {
                    name: name.clone(),
                    ip: *ip,
                })
                .collect(),
        });
        context.etcd_member = Some(EtcdMemberSettings {
            initial_cluster_state: EtcdInitialClusterState::New,
        });
        context.load_balancer = Some(LoadBalancerSettings {
            vip: net("10.0.0.100/24"),
            frontend_port: 8443,
            interface: "eth0".into(),
            virtual_router_id: 51,
            priority: 101,
            state: VrrpState::Master,
            auth_pass: "kinit-ha".into(),
            unicast_peers: hosts[1..].iter().map(|(_, ip)| *ip).collect(),
            backends: hosts
                .iter()
                .map(|(name, ip)| LoadBalancerBackend {
                    name: name.clone(),
                    address: *ip,
                    port: 6443,
                })
                .collect(),
            health_check: ApiHealthCheck::Healthz,
        });
        context
    }

    /// Checks the whole context and reports every problem at once, naming each field.
    pub fn validate(&self) -> Result<(), TemplateError> {
        let mut problems = Problems::default();
        self.validate_cluster(&mut problems);
        self.validate_node(&mut problems);
        self.validate_images(&mut problems);
        self.validate_control_plane(&mut problems);
        self.validate_etcd_member(&mut problems);
        self.validate_load_balancer(&mut problems);
        if problems.0.is_empty() {
            Ok(())
        } else {
            Err(TemplateError::InvalidContext {
                host: self.node.name.clone(),
                problems: problems.0,
            })
        }
    }

    fn validate_cluster(&self, problems: &mut Problems) {
        let cluster = &self.cluster;
        if !is_token(&cluster.name) {
            problems.add(
                "cluster.name",
                format!(
                    "{:?} must be non-empty and use only letters, digits, '.', '_' or '-'",
                    cluster.name
                ),
            );
        }
        check_network_address(problems, "cluster.pod_cidr", &cluster.pod_cidr);
        check_network_address(problems, "cluster.service_cidr", &cluster.service_cidr);
        if cluster.pod_cidr.contains(&cluster.service_cidr.network())
            || cluster.service_cidr.contains(&cluster.pod_cidr.network())
        {
            problems.add(
                "cluster.service_cidr",
                format!(
                    "{} overlaps the pod network {}; choose disjoint ranges",
                    cluster.service_cidr, cluster.pod_cidr
                ),
            );
        }
        let mask = cluster.node_cidr_mask_size;
        if mask <= cluster.pod_cidr.prefix_len() || mask > cluster.pod_cidr.max_prefix_len() {
            problems.add(
                "cluster.node_cidr_mask_size",
                format!(
                    "/{mask} must be longer than the pod network prefix /{} and at most /{}",
                    cluster.pod_cidr.prefix_len(),
                    cluster.pod_cidr.max_prefix_len()
                ),
            );
        }
        if !is_dns_subdomain(&cluster.cluster_domain) {
            problems.add(
                "cluster.cluster_domain",
                format!(
                    "{:?} is not a DNS name (lowercase letters, digits, '-' and '.')",
                    cluster.cluster_domain
                ),
            );
        }
        if !cluster.service_cidr.contains(&cluster.cluster_dns_ip) {
            problems.add(
                "cluster.cluster_dns_ip",
                format!(
                    "{} is outside the service network {}",
                    cluster.cluster_dns_ip, cluster.service_cidr
                ),
            );
        }
        if cluster.api_server_port == 0 {
            problems.add("cluster.api_server_port", "must be 1..=65535".to_string());
        }
        if !cluster.service_account_issuer.starts_with("https://")
            || cluster
                .service_account_issuer
                .chars()
                .any(char::is_whitespace)
        {
            problems.add(
                "cluster.service_account_issuer",
                format!(
                    "{:?} must be an https:// URL without spaces",
                    cluster.service_account_issuer
                ),
            );
        }
        if let Some(etcd) = &cluster.etcd {
            if etcd.members.is_empty() {
                problems.add(
                    "cluster.etcd.members",
                    "list at least one etcd member, or remove cluster.etcd to use the embedded store"
                        .to_string(),
                );
            }
            let mut names = BTreeSet::new();
            let mut ips = BTreeSet::new();
            for (index, member) in etcd.members.iter().enumerate() {
                let field = format!("cluster.etcd.members[{index}]");
                if !is_dns_subdomain(&member.name) {
                    problems.add(
                        format!("{field}.name"),
                        format!("{:?} is not a valid member name (DNS-1123)", member.name),
                    );
                }
                if !names.insert(member.name.as_str()) {
                    problems.add(
                        format!("{field}.name"),
                        format!("{:?} is listed twice", member.name),
                    );
                }
                if !ips.insert(member.ip) {
                    problems.add(
                        format!("{field}.ip"),
                        format!("{} is used by two members", member.ip),
                    );
                }
                if member.ip.is_unspecified() {
                    problems.add(format!("{field}.ip"), "must be a host address".to_string());
                }
            }
        }
    }

    fn validate_node(&self, problems: &mut Problems) {
        let node = &self.node;
        if !is_dns_subdomain(&node.name) {
            problems.add(
                "node.name",
                format!(
                    "{:?} is not a valid node name (lowercase letters, digits, '-' and '.', at most 253)",
                    node.name
                ),
            );
        }
        if node.ip.is_unspecified() || node.ip.is_multicast() {
            problems.add("node.ip", format!("{} is not a host address", node.ip));
        }
        check_network_address(problems, "node.pod_cidr", &node.pod_cidr);
        if !self.cluster.pod_cidr.contains(&node.pod_cidr) {
            problems.add(
                "node.pod_cidr",
                format!(
                    "{} is not inside the cluster pod network {}",
                    node.pod_cidr, self.cluster.pod_cidr
                ),
            );
        }
        for key in node.labels.keys() {
            if key.is_empty() {
                problems.add("node.labels", "label keys must not be empty".to_string());
            }
        }
        for (index, taint) in node.taints.iter().enumerate() {
            if taint.key.is_empty() {
                problems.add(
                    format!("node.taints[{index}].key"),
                    "must not be empty".to_string(),
                );
            }
        }
        match node.cgroup_driver {
            CgroupDriver::Systemd if !node.cgroup_parent.ends_with(".slice") => problems.add(
                "node.cgroup_parent",
                format!(
                    "{:?} must be a systemd slice (e.g. kubepods.slice) with the systemd cgroup driver",
                    node.cgroup_parent
                ),
            ),
            CgroupDriver::Cgroupfs if !node.cgroup_parent.starts_with('/') => problems.add(
                "node.cgroup_parent",
                format!(
                    "{:?} must be an absolute cgroup path (e.g. /kubepods) with the cgroupfs driver",
                    node.cgroup_parent
                ),
            ),
            _ => {}
        }
    }

    fn validate_images(&self, problems: &mut Problems) {
        let images = &self.images;
        for (field, value) in [
            ("images.control_plane", &images.control_plane),
            (
                "images.control_plane_command",
                &images.control_plane_command,
            ),
            ("images.pause", &images.pause),
            ("images.etcd", &images.etcd),
        ] {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.add(
                    field,
                    format!("{value:?} must be non-empty and contain no spaces"),
                );
            }
        }
    }

    fn validate_control_plane(&self, problems: &mut Problems) {
        let Some(control_plane) = &self.control_plane else {
            return;
        };
        let api_port = self.cluster.api_server_port;
        for (field, port) in [
            (
                "control_plane.controller_manager_port",
                control_plane.controller_manager_port,
            ),
            ("control_plane.scheduler_port", control_plane.scheduler_port),
        ] {
            if port == 0 || port == api_port {
                problems.add(
                    field,
                    format!(
                        "{port} must be 1..=65535 and differ from the API server port {api_port}"
                    ),
                );
            }
        }
        if control_plane.controller_manager_port == control_plane.scheduler_port {
            problems.add(
                "control_plane.scheduler_port",
                format!(
                    "{} is also the controller manager port",
                    control_plane.scheduler_port
                ),
            );
        }
    }

    fn validate_etcd_member(&self, problems: &mut Problems) {
        if self.etcd_member.is_none() {
            return;
        }
        let Some(etcd) = &self.cluster.etcd else {
            problems.add(
                "etcd_member",
                "this host runs etcd but cluster.etcd is not set; list the members in cluster.etcd"
                    .to_string(),
            );
            return;
        };
        match etcd.members.iter().find(|m| m.name == self.node.name) {
            None => problems.add(
                "etcd_member",
                format!(
                    "host {:?} runs etcd but is not in cluster.etcd.members",
                    self.node.name
                ),
            ),
            Some(member) if member.ip != self.node.ip => problems.add(
                "etcd_member",
                format!(
                    "cluster.etcd.members lists {} for {:?} but node.ip is {}",
                    member.ip, self.node.name, self.node.ip
                ),
            ),
            Some(_) => {}
        }
    }

    fn validate_load_balancer(&self, problems: &mut Problems) {
        let Some(lb) = &self.load_balancer else {
            return;
        };
        let vip = lb.vip.addr();
        if vip.is_unspecified() || vip.is_multicast() || vip == self.node.ip {
            problems.add(
                "load_balancer.vip",
                format!("{vip} must be a free host address, not the node's own address"),
            );
        }
        if vip.is_ipv4() != self.node.ip.is_ipv4() {
            problems.add(
                "load_balancer.vip",
                format!(
                    "{vip} and node.ip {} must be the same IP family",
                    self.node.ip
                ),
            );
        }
        if lb.frontend_port == 0 {
            problems.add(
                "load_balancer.frontend_port",
                "must be 1..=65535".to_string(),
            );
        } else if self.control_plane.is_some() && lb.frontend_port == self.cluster.api_server_port {
            problems.add(
                "load_balancer.frontend_port",
                format!(
                    "{} is the API server port on this control-plane host; use another port such as 8443",
                    lb.frontend_port
                ),
            );
        }
        if !is_interface_name(&lb.interface) {
            problems.add(
                "load_balancer.interface",
                format!(
                    "{:?} is not a network interface name (1-15 letters, digits, '.', '_' or '-')",
                    lb.interface
                ),
            );
        }
        if lb.virtual_router_id == 0 {
            problems.add(
                "load_balancer.virtual_router_id",
                "0 is out of range; use 1..=255".to_string(),
            );
        }
        if !(1..=254).contains(&lb.priority) {
            problems.add(
                "load_balancer.priority",
                format!(
                    "{} is out of range; use 1..=254 (highest live host holds the VIP)",
                    lb.priority
                ),
            );
        }
        // keepalived treats '#' and '!' as comment starts and has no quoting for auth_pass.
        if lb.auth_pass.len() > 8 || !is_token(&lb.auth_pass) {
            problems.add(
                "load_balancer.auth_pass",
                "must be 1..=8 letters, digits, '.', '_' or '-' (VRRP PASS limit)".to_string(),
            );
        }
        for (index, peer) in lb.unicast_peers.iter().enumerate() {
            if *peer == self.node.ip || peer.is_ipv4() != self.node.ip.is_ipv4() {
                problems.add(
                    format!("load_balancer.unicast_peers[{index}]"),
                    format!(
                        "{peer} must be another host of the same IP family as node.ip {}",
                        self.node.ip
                    ),
                );
            }
        }
        if lb.backends.is_empty() {
            problems.add(
                "load_balancer.backends",
                "list at least one API server".to_string(),
            );
        }
        let mut names = BTreeSet::new();
        for (index, backend) in lb.backends.iter().enumerate() {
            let field = format!("load_balancer.backends[{index}]");
            if !is_token(&backend.name) {
                problems.add(
                    format!("{field}.name"),
                    format!(
                        "{:?} must use only letters, digits, '.', '_' or '-'",
                        backend.name
                    ),
                );
            }
            if !names.insert(backend.name.as_str()) {
                problems.add(
                    format!("{field}.name"),
                    format!("{:?} is listed twice", backend.name),
                );
            }
            if backend.port == 0 {
                problems.add(format!("{field}.port"), "must be 1..=65535".to_string());
            }
            if backend.address.is_unspecified() {
                problems.add(
                    format!("{field}.address"),
                    "must be a host address".to_string(),
                );
            }
        }
    }
}

/// Collects problems in the order they are found.
#[derive(Default)]
struct Problems(Vec<ContextProblem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: String) {
        self.0.push(ContextProblem {
            field: field.into(),
            problem,
        });
    }
}

/// Parses a literal CIDR used in the built-in examples.
fn net(cidr: &str) -> IpNet {
    cidr.parse()
        .unwrap_or_else(|err| unreachable!("built-in CIDR {cidr:?} is invalid: {err}"))
}

/// Rejects CIDRs with host bits set (e.g. `10.244.1.5/24`), which tools read differently.
fn check_network_address(problems: &mut Problems, field: &str, cidr: &IpNet) {
    if cidr.trunc() != *cidr {
        problems.add(
            field,
            format!(
                "{cidr} has host bits set; use the network address {}",
                cidr.trunc()
            ),
        );
    }
}

/// A word that is safe unquoted in haproxy/keepalived configs and command lines.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Linux interface names: at most 15 bytes, no '/', ':' or whitespace.
fn is_interface_name(value: &str) -> bool {
    (1..=15).contains(&value.len()) && is_token(value)
}

/// RFC 1123 subdomain as Kubernetes uses it for node names.
fn is_dns_subdomain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_fields(context: &ClusterRenderContext) -> Vec<String> {
        match context.validate() {
            Ok(()) => Vec::new(),
            Err(TemplateError::InvalidContext { problems, .. }) => {
                problems.into_iter().map(|p| p.field).collect()
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn examples_are_valid() {
        ClusterRenderContext::default().validate().unwrap();
        ClusterRenderContext::example_ha().validate().unwrap();
    }

    #[test]
    fn example_image_carries_crate_version() {
        let context = ClusterRenderContext::default();
        assert_eq!(
            context.images.control_plane,
            format!("kinit.local/kinit:v{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn keepalived_priority_and_router_id_are_range_checked() {
        for priority in [0u8, 255] {
            let mut context = ClusterRenderContext::example_ha();
            context.load_balancer.as_mut().unwrap().priority = priority;
            assert_eq!(problem_fields(&context), ["load_balancer.priority"]);
        }
        let mut context = ClusterRenderContext::example_ha();
        context.load_balancer.as_mut().unwrap().virtual_router_id = 0;
        assert_eq!(
            problem_fields(&context),
            ["load_balancer.virtual_router_id"]
        );
    }

    #[test]
    fn load_balancer_inputs_are_checked() {
        let mut context = ClusterRenderContext::example_ha();
        let lb = context.load_balancer.as_mut().unwrap();
        lb.frontend_port = 6443;
        lb.interface = "eth0 up".into();
        lb.auth_pass = "much-too-long".into();
        lb.backends[1].name = "cp 2".into();
        lb.backends[2].name = "cp-1".into();
        lb.unicast_peers.push("10.0.0.11".parse().unwrap());
        assert_eq!(
            problem_fields(&context),
            [
                "load_balancer.frontend_port",
                "load_balancer.interface",
                "load_balancer.auth_pass",
                "load_balancer.unicast_peers[2]",
                "load_balancer.backends[1].name",
                "load_balancer.backends[2].name",
            ]
        );
        context.load_balancer.as_mut().unwrap().backends.clear();
        assert!(problem_fields(&context).contains(&"load_balancer.backends".to_string()));
    }

    #[test]
    fn networks_are_checked() {
        let mut context = ClusterRenderContext::default();
        context.cluster.service_cidr = net("10.244.128.0/20");
        context.cluster.cluster_dns_ip = "10.96.0.10".parse().unwrap();
        context.node.pod_cidr = "10.245.0.5/24".parse().unwrap();
        context.cluster.node_cidr_mask_size = 16;
        assert_eq!(
            problem_fields(&context),
            [
                "cluster.service_cidr",
                "cluster.node_cidr_mask_size",
                "cluster.cluster_dns_ip",
                "node.pod_cidr",
                "node.pod_cidr",
            ]
        );
    }

    #[test]
    fn names_and_cgroups_are_checked() {
        let mut context = ClusterRenderContext::default();
        context.node.name = "CP_1".into();
        context.cluster.cluster_domain = "cluster..local".into();
        context.node.cgroup_parent = "/kubepods".into();
        context.images.pause = String::new();
        assert_eq!(
            problem_fields(&context),
            [
                "cluster.cluster_domain",
                "node.name",
                "node.cgroup_parent",
                "images.pause"
            ]
        );
        context = ClusterRenderContext::default();
        context.node.cgroup_driver = CgroupDriver::Cgroupfs;
        assert_eq!(problem_fields(&context), ["node.cgroup_parent"]);
        context.node.cgroup_parent = "/kubepods".into();
        assert!(problem_fields(&context).is_empty());
    }

    #[test]
    fn etcd_member_must_be_listed_with_its_address() {
        let mut context = ClusterRenderContext::example_ha();
        context.node.ip = "10.0.0.21".parse().unwrap();
        context
            .load_balancer
            .as_mut()
            .unwrap()
            .unicast_peers
            .clear();
        assert_eq!(problem_fields(&context), ["etcd_member"]);

        let mut context = ClusterRenderContext::example_ha();
        context.cluster.etcd = None;
        assert_eq!(problem_fields(&context), ["etcd_member"]);

        let mut context = ClusterRenderContext::example_ha();
        let members = &mut context.cluster.etcd.as_mut().unwrap().members;
        members[1].name = "cp-1".into();
        assert_eq!(problem_fields(&context), ["cluster.etcd.members[1].name"]);
    }

    #[test]
    fn control_plane_ports_must_not_collide() {
        let mut context = ClusterRenderContext::default();
        context.control_plane.as_mut().unwrap().scheduler_port = 10257;
        assert_eq!(problem_fields(&context), ["control_plane.scheduler_port"]);
        context.control_plane.as_mut().unwrap().scheduler_port = 6443;
        assert_eq!(problem_fields(&context), ["control_plane.scheduler_port"]);
    }

    #[test]
    fn context_round_trips_through_json() {
        let context = ClusterRenderContext::example_ha();
        let json = serde_json::to_value(&context).unwrap();
        assert_eq!(json["cluster"]["pod_cidr"], "10.244.0.0/16");
        assert_eq!(json["load_balancer"]["state"], "MASTER");
        assert_eq!(json["node"]["cgroup_driver"], "systemd");
        assert!(json["node"]["taints"][0].get("value").is_none());
        let back: ClusterRenderContext = serde_json::from_value(json).unwrap();
        assert_eq!(back, context);
    }
}
