//! From the inventory to what the lower layers take: the PKI spec and each host's render context.
//!
//! This is the one place that decides cluster-wide derived settings (node pod CIDRs, the VIP
//! layout, etcd membership, control-plane labels and taints), so `config render`, `certs
//! generate -i` and the installer phases all agree.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ipnet::IpNet;
use kinit_inventory::{Datastore, Host, Inventory, Role};
use kinit_pki::{ControlPlaneNode, KeyAlgorithm, PkiSpec};
use kinit_templates::{
    ApiHealthCheck, CgroupDriver, ClusterRenderContext, ClusterSettings, ControlPlaneSettings,
    EtcdClusterSettings, EtcdInitialClusterState, EtcdMember, EtcdMemberSettings,
    LoadBalancerBackend, LoadBalancerSettings, NodeSettings, Taint, TaintEffect, VrrpState,
};
use sha2::{Digest, Sha256};

/// Label and taint kubeadm puts on control-plane nodes.
pub const CONTROL_PLANE_ROLE_KEY: &str = "node-role.kubernetes.io/control-plane";

/// Port the API server listens on on every control-plane host.
pub const API_SERVER_PORT: u16 = 6443;

/// The PKI of the cluster described by `inventory`, written to `pki_dir`.
pub fn pki_spec(
    inventory: &Inventory,
    pki_dir: &Path,
    kubeconfig_dir: Option<PathBuf>,
) -> anyhow::Result<PkiSpec> {
    let cluster = &inventory.spec.cluster;
    let key_algorithm: KeyAlgorithm = cluster.pki.key_algorithm.parse().with_context(|| {
        format!(
            "spec.cluster.pki.keyAlgorithm `{}` is not supported",
            cluster.pki.key_algorithm
        )
    })?;
    let endpoint = inventory.api_endpoint();
    let mut extra_sans = Vec::new();
    if let Some(vip) = &cluster.vip {
        extra_sans.push(vip.address.to_string());
    }
    Ok(PkiSpec {
        pki_dir: pki_dir.to_path_buf(),
        kubeconfig_dir,
        cluster_name: cluster.cluster_name.clone(),
        dns_domain: cluster.dns_domain.clone(),
        service_cidr: cluster.service_cidr.to_string(),
        control_plane_endpoint: Some(format_endpoint(&endpoint.host, endpoint.port)),
        nodes: inventory
            .control_planes()
            .into_iter()
            .map(|host| ControlPlaneNode {
                name: host.name.clone(),
                ips: host_ips(host),
            })
            .collect(),
        extra_sans,
        ca_validity_days: cluster.pki.ca_validity_days,
        leaf_validity_days: cluster.pki.cert_validity_days,
        key_algorithm,
    })
}

/// `host:port`, with IPv6 literals in brackets.
fn format_endpoint(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// The node IP first, then the SSH address when it is a different IP.
fn host_ips(host: &Host) -> Vec<IpAddr> {
    let mut ips = vec![host.node_ip()];
    if let Ok(ip) = host.address.parse::<IpAddr>() {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// The pod CIDR of every inventory host.
///
/// `in_use` holds the ranges nodes already have, by name (the API's Nodes and what earlier runs
/// recorded). A host found there keeps its range, so removing or reordering hosts never moves a
/// node; every other host gets the lowest free `/nodeCIDRMaskSize` subnet of the cluster pod
/// CIDR, in inventory order. The node IPAM controller allocates the same way (lowest free), so
/// on a fresh cluster the n-th host gets the n-th subnet.
pub fn assign_pod_cidrs(
    inventory: &Inventory,
    in_use: &BTreeMap<String, IpNet>,
) -> anyhow::Result<BTreeMap<String, IpNet>> {
    let cluster = &inventory.spec.cluster;
    let subnets = cluster
        .pod_cidr
        .subnets(cluster.node_cidr_mask_size)
        .with_context(|| {
            format!(
                "spec.cluster.nodeCIDRMaskSize /{} does not fit in podCIDR {}",
                cluster.node_cidr_mask_size, cluster.pod_cidr
            )
        })?;
    let fits =
        |c: &IpNet| cluster.pod_cidr.contains(c) && c.prefix_len() == cluster.node_cidr_mask_size;
    let mut out = BTreeMap::new();
    for host in &inventory.spec.hosts {
        if let Some(existing) = in_use.get(&host.name) {
            if !fits(existing) {
                bail!(
                    "host {} already has pod range {existing}, which is not a /{} of spec.cluster.podCIDR {}; \
                     the pod network of an installed cluster cannot change: restore podCIDR and \
                     nodeCIDRMaskSize, or `kinit reset` the cluster first",
                    host.name,
                    cluster.node_cidr_mask_size,
                    cluster.pod_cidr
                );
            }
            out.insert(host.name.clone(), *existing);
        }
    }
    let mut taken: std::collections::BTreeSet<IpNet> = in_use.values().copied().collect();
    let mut free = subnets
        .filter(|s| !taken.contains(s))
        .collect::<Vec<_>>()
        .into_iter();
    for host in &inventory.spec.hosts {
        if out.contains_key(&host.name) {
            continue;
        }
        let Some(subnet) = free.next() else {
            bail!(
                "podCIDR {} has no free /{} range left for host {} ({} in use); widen \
                 spec.cluster.podCIDR or raise nodeCIDRMaskSize",
                cluster.pod_cidr,
                cluster.node_cidr_mask_size,
                host.name,
                taken.len()
            );
        };
        taken.insert(subnet);
        out.insert(host.name.clone(), subnet);
    }
    Ok(out)
}

/// Hosts that carry the API VIP: the `lb` hosts, or the control planes when no host has `lb`.
pub fn vip_holders(inventory: &Inventory) -> Vec<&Host> {
    let lb = inventory.lb_hosts();
    if lb.is_empty() {
        inventory.control_planes()
    } else {
        lb
    }
}

/// Inputs to [`render_context`] computed once per cluster.
pub struct ClusterDerived {
    /// Pod CIDR per host name.
    pub pod_cidrs: BTreeMap<String, IpNet>,
    /// keepalived's VRRP password (8 characters, keepalived's limit), derived from the cluster
    /// CA key so it is stable across runs and not guessable from the inventory.
    pub vrrp_password: String,
}

impl ClusterDerived {
    /// Computes the derived settings; `ca_key_pem` is the cluster CA's private key and
    /// `in_use` the pod ranges nodes already have (see [`assign_pod_cidrs`]).
    pub fn new(
        inventory: &Inventory,
        ca_key_pem: &[u8],
        in_use: &BTreeMap<String, IpNet>,
    ) -> anyhow::Result<Self> {
        let digest = Sha256::new()
            .chain_update(b"kinit-vrrp:")
            .chain_update(ca_key_pem)
            .finalize();
        Ok(ClusterDerived {
            pod_cidrs: assign_pod_cidrs(inventory, in_use)?,
            vrrp_password: hex::encode(&digest[..4]),
        })
    }
}

/// Everything the templates need to render `host`'s files.
pub fn render_context(
    inventory: &Inventory,
    host: &Host,
    derived: &ClusterDerived,
) -> anyhow::Result<ClusterRenderContext> {
    let cluster = &inventory.spec.cluster;
    let defaults = ClusterRenderContext::default();
    let is_control_plane = host.has_role(Role::ControlPlane);

    let etcd = match inventory.datastore() {
        Datastore::Etcd => Some(EtcdClusterSettings {
            members: inventory
                .etcd_members()
                .into_iter()
                .map(|h| EtcdMember {
                    name: h.name.clone(),
                    ip: h.node_ip(),
                })
                .collect(),
        }),
        Datastore::Embedded => None,
    };
    let is_etcd_member =
        etcd.is_some() && inventory.etcd_members().iter().any(|h| h.name == host.name);

    let mut labels = host.labels.clone();
    let mut taints: Vec<Taint> = host
        .taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: match t.effect {
                kinit_inventory::TaintEffect::NoSchedule => TaintEffect::NoSchedule,
                kinit_inventory::TaintEffect::PreferNoSchedule => TaintEffect::PreferNoSchedule,
                kinit_inventory::TaintEffect::NoExecute => TaintEffect::NoExecute,
            },
        })
        .collect();
    if is_control_plane {
        labels.insert(CONTROL_PLANE_ROLE_KEY.to_string(), String::new());
        // A control plane that is also a worker takes workloads, like kubeadm after
        // removing the taint.
        if !host.has_role(Role::Worker) && !taints.iter().any(|t| t.key == CONTROL_PLANE_ROLE_KEY) {
            taints.push(Taint {
                key: CONTROL_PLANE_ROLE_KEY.to_string(),
                value: None,
                effect: TaintEffect::NoSchedule,
            });
        }
    }

    let pod_cidr = *derived
        .pod_cidrs
        .get(&host.name)
        .with_context(|| format!("host {} has no pod CIDR; this is a bug in kinit", host.name))?;

    let load_balancer = match &cluster.vip {
        Some(vip) => {
            let holders = vip_holders(inventory);
            match holders.iter().position(|h| h.name == host.name) {
                None => None,
                Some(index) => {
                    let interface = vip.interface.clone().with_context(|| {
                        format!(
                            "spec.cluster.vip.interface is not set; name the network interface that carries {} on host {} (e.g. eth0)",
                            vip.address, host.name
                        )
                    })?;
                    let vip_net =
                        IpNet::new(vip.address, vip.prefix_length).with_context(|| {
                            format!(
                                "spec.cluster.vip.prefixLength /{} is invalid for {}",
                                vip.prefix_length, vip.address
                            )
                        })?;
                    let first = index == 0;
                    Some(LoadBalancerSettings {
                        vip: vip_net,
                        frontend_port: vip.port,
                        interface,
                        virtual_router_id: vip.virtual_router_id,
                        // The first holder starts as master; the others back it up in order.
                        priority: 150u8.saturating_sub(u8::try_from(index).unwrap_or(100)),
                        state: if first {
                            VrrpState::Master
                        } else {
                            VrrpState::Backup
                        },
                        auth_pass: derived.vrrp_password.clone(),
                        unicast_peers: holders
                            .iter()
                            .filter(|h| h.name != host.name)
                            .map(|h| h.node_ip())
                            .collect(),
                        backends: inventory
                            .control_planes()
                            .into_iter()
                            .map(|h| LoadBalancerBackend {
                                name: h.name.clone(),
                                address: h.node_ip(),
                                port: API_SERVER_PORT,
                            })
                            .collect(),
                        health_check: ApiHealthCheck::Healthz,
                    })
                }
            }
        }
        None => None,
    };

    Ok(ClusterRenderContext {
        cluster: ClusterSettings {
            name: cluster.cluster_name.clone(),
            pod_cidr: cluster.pod_cidr,
            service_cidr: cluster.service_cidr,
            node_cidr_mask_size: cluster.node_cidr_mask_size,
            cluster_domain: cluster.dns_domain.clone(),
            cluster_dns_ip: inventory.cluster_dns_ip(),
            cni_mode: inventory.spec.cluster.cni.mode.as_str().to_string(),
            api_server_port: API_SERVER_PORT,
            service_account_issuer: format!(
                "https://kubernetes.default.svc.{}",
                cluster.dns_domain
            ),
            etcd,
        },
        node: NodeSettings {
            name: host.name.clone(),
            ip: host.node_ip(),
            pod_cidr,
            labels,
            taints,
            cgroup_driver: CgroupDriver::Systemd,
            cgroup_parent: defaults.node.cgroup_parent.clone(),
        },
        images: defaults.images.clone(),
        control_plane: is_control_plane.then_some(ControlPlaneSettings {
            apiserver_bind_address: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            controller_manager_port: 10257,
            scheduler_port: 10259,
        }),
        etcd_member: is_etcd_member.then_some(EtcdMemberSettings {
            initial_cluster_state: EtcdInitialClusterState::New,
        }),
        load_balancer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(name: &str) -> Inventory {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../inventory/examples")
            .join(name);
        Inventory::from_path(&path).unwrap()
    }

    #[test]
    fn pki_spec_lists_every_control_plane_and_the_vip() {
        let inv = inventory("ha.yaml");
        let spec = pki_spec(&inv, Path::new("/tmp/pki"), None).unwrap();
        assert_eq!(spec.nodes.len(), inv.control_planes().len());
        assert!(spec.nodes.len() >= 3);
        let vip = inv.spec.cluster.vip.as_ref().unwrap().address.to_string();
        assert!(spec.extra_sans.contains(&vip));
        assert!(spec
            .control_plane_endpoint
            .as_ref()
            .unwrap()
            .starts_with(&vip));
        spec.validate().unwrap();
    }

    #[test]
    fn pod_cidrs_are_distinct_and_inside_the_cluster_range() {
        let inv = inventory("ha.yaml");
        let cidrs = assign_pod_cidrs(&inv, &BTreeMap::new()).unwrap();
        assert_eq!(cidrs.len(), inv.spec.hosts.len());
        let unique: std::collections::BTreeSet<_> = cidrs.values().collect();
        assert_eq!(unique.len(), cidrs.len());
        for c in cidrs.values() {
            assert!(inv.spec.cluster.pod_cidr.contains(c));
            assert_eq!(c.prefix_len(), inv.spec.cluster.node_cidr_mask_size);
        }
        // A fresh cluster: the n-th host has the n-th subnet, like the IPAM controller.
        let first = inv
            .spec
            .cluster
            .pod_cidr
            .subnets(inv.spec.cluster.node_cidr_mask_size);
        for (host, subnet) in inv.spec.hosts.iter().zip(first.unwrap()) {
            assert_eq!(cidrs[&host.name], subnet);
        }
    }

    #[test]
    fn removed_or_reordered_hosts_never_move_a_node_and_joined_nodes_are_avoided() {
        let mut inv = inventory("ha.yaml");
        let before = assign_pod_cidrs(&inv, &BTreeMap::new()).unwrap();
        // A node joined with `kinit join` took the next free range from the IPAM controller.
        let mut in_use = before.clone();
        let joined: IpNet = inv
            .spec
            .cluster
            .pod_cidr
            .subnets(inv.spec.cluster.node_cidr_mask_size)
            .unwrap()
            .nth(inv.spec.hosts.len())
            .unwrap();
        in_use.insert("joined".into(), joined);
        // The second host leaves, the last moves to the front, a new one comes.
        let gone = inv.spec.hosts.remove(1);
        let last = inv.spec.hosts.pop().unwrap();
        inv.spec.hosts.insert(0, last);
        let mut new_host = inv.spec.hosts.last().unwrap().clone();
        new_host.name = "newcomer".into();
        inv.spec.hosts.push(new_host);
        in_use.remove(&gone.name);

        let after = assign_pod_cidrs(&inv, &in_use).unwrap();
        for host in inv.spec.hosts.iter().filter(|h| h.name != "newcomer") {
            assert_eq!(after[&host.name], before[&host.name], "{} moved", host.name);
        }
        // The newcomer reuses the range the removed host freed, not the joined node's.
        assert_eq!(after["newcomer"], before[&gone.name]);
        assert_ne!(after["newcomer"], joined);
    }

    #[test]
    fn a_changed_pod_cidr_on_an_installed_cluster_is_refused() {
        let inv = inventory("single-node.yaml");
        let host = inv.spec.hosts[0].name.clone();
        let elsewhere: BTreeMap<String, IpNet> =
            BTreeMap::from([(host.clone(), "10.99.0.0/24".parse().unwrap())]);
        let err = assign_pod_cidrs(&inv, &elsewhere).unwrap_err().to_string();
        assert!(err.contains(&host) && err.contains("10.99.0.0/24"), "{err}");
        assert!(err.contains("cannot change"), "{err}");
    }

    #[test]
    fn control_planes_get_role_label_taint_and_one_vrrp_master() {
        let inv = inventory("ha.yaml");
        let derived = ClusterDerived::new(&inv, b"test-ca-key", &BTreeMap::new()).unwrap();
        let mut masters = 0;
        for host in &inv.spec.hosts {
            let ctx = render_context(&inv, host, &derived).unwrap();
            ctx.validate().unwrap();
            if host.has_role(Role::ControlPlane) {
                assert!(ctx.node.labels.contains_key(CONTROL_PLANE_ROLE_KEY));
                assert!(ctx.control_plane.is_some());
            } else {
                assert!(ctx.control_plane.is_none());
            }
            if let Some(lb) = &ctx.load_balancer {
                if lb.state == VrrpState::Master {
                    masters += 1;
                }
                assert_eq!(lb.auth_pass.len(), 8);
                assert!(!lb.unicast_peers.contains(&host.node_ip()));
            }
        }
        assert_eq!(masters, 1);
    }

    #[test]
    fn single_node_uses_the_embedded_store() {
        let inv = inventory("single-node.yaml");
        let derived = ClusterDerived::new(&inv, b"k", &BTreeMap::new()).unwrap();
        let ctx = render_context(&inv, &inv.spec.hosts[0], &derived).unwrap();
        assert!(ctx.cluster.etcd.is_none());
        assert!(ctx.etcd_member.is_none());
        assert!(ctx.load_balancer.is_none());
    }

    /// The API server command each rendered static pod runs, as `kinit apiserver` parses it.
    fn apiserver_command(inv: &Inventory, host: &Host) -> Vec<String> {
        let derived = ClusterDerived::new(inv, b"k", &BTreeMap::new()).unwrap();
        let ctx = render_context(inv, host, &derived).unwrap();
        let manifest = kinit_templates::render_all(&ctx)
            .unwrap()
            .into_iter()
            .find(|f| f.path.ends_with("manifests/kube-apiserver.yaml"))
            .expect("control planes get an API server manifest");
        let pod: serde_yaml::Value = serde_yaml::from_str(&manifest.contents).unwrap();
        pod["spec"]["containers"][0]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    #[derive(clap::Parser)]
    struct ApiServerCli {
        #[command(subcommand)]
        command: ApiServerCommand,
    }

    #[derive(clap::Subcommand)]
    enum ApiServerCommand {
        Apiserver(Box<kinit_apiserver::ApiServerArgs>),
    }

    #[test]
    fn rendered_apiserver_flags_are_ones_kinit_apiserver_accepts() {
        use clap::Parser;
        for (file, datastore_flag) in [
            ("single-node.yaml", "--data-dir=/var/lib/kinit/apiserver"),
            ("ha.yaml", "--etcd-servers=https://"),
        ] {
            let inv = inventory(file);
            let host = inv.control_planes()[0];
            let command = apiserver_command(&inv, host);
            assert!(
                command.iter().any(|a| a.starts_with(datastore_flag)),
                "{file}: {command:?}"
            );
            // The image's entrypoint is the kinit binary; clap sees it as argv[0].
            let parsed = ApiServerCli::try_parse_from(&command)
                .unwrap_or_else(|e| panic!("{file}: {command:?}\n{e}"));
            let ApiServerCommand::Apiserver(args) = parsed.command;
            assert_eq!(args.secure_port, 6443, "{file}");
            assert_eq!(args.advertise_address, Some(host.node_ip()), "{file}");
        }
    }
}
