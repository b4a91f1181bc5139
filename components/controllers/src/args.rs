//! Flags of `kinit controller-manager`, named like kube-controller-manager's.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;
use kinit_component_base::LeaderElectionConfig;

use crate::cluster::{ClusterControllerOptions, ControllerName};
use crate::error::ControllerError;

pub use crate::registry::resolve as resolve_controllers;
/// Go-syntax durations (`15s`, `1m30s`), the value parser of the duration flags.
pub use kinit_component_base::parse_duration;

/// Flags of the cluster controllers ([`crate::cluster`]), mapped onto their options by
/// [`cluster_options`].
#[derive(Debug, Clone, Args)]
pub struct ClusterControllerFlags {
    /// Allocate pod CIDRs to nodes from --cluster-cidr (node-ipam controller).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allocate_node_cidrs: bool,
    /// Pod network CIDR(s), comma separated, one per IP family.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// Prefix length of node pod CIDRs (single-stack).
    #[arg(long)]
    pub node_cidr_mask_size: Option<u8>,
    /// Prefix length of IPv4 node pod CIDRs in dual-stack clusters.
    #[arg(long)]
    pub node_cidr_mask_size_ipv4: Option<u8>,
    /// Prefix length of IPv6 node pod CIDRs in dual-stack clusters.
    #[arg(long)]
    pub node_cidr_mask_size_ipv6: Option<u8>,
    /// Service CIDR(s), kept out of node pod CIDRs.
    #[arg(long, value_delimiter = ',')]
    pub service_cluster_ip_range: Vec<IpNet>,
    /// CA certificate (PEM) used to sign approved CSRs (csrsigning).
    #[arg(long)]
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// CA private key (PEM) used to sign approved CSRs (csrsigning).
    #[arg(long)]
    pub cluster_signing_key_file: Option<PathBuf>,
    /// Longest validity of signed certificates.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pub cluster_signing_duration: Duration,
    /// How often node health is checked (node-lifecycle).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub node_monitor_period: Duration,
    /// Heartbeat age after which a node is marked unhealthy (node-lifecycle).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How long pods stay on an unhealthy node before eviction when they have no matching
    /// toleration (node-lifecycle).
    #[arg(long, default_value = "5m0s", value_parser = parse_duration)]
    pub pod_eviction_timeout: Duration,
    /// Finished pods kept before the pod garbage collector deletes the oldest; 0 keeps all.
    #[arg(long, default_value_t = 12_500)]
    pub terminated_pod_gc_threshold: usize,
    /// Concurrent garbage-collector syncs.
    #[arg(long, default_value_t = 20)]
    pub concurrent_gc_syncs: u16,
    /// Concurrent namespace syncs.
    #[arg(long, default_value_t = 10)]
    pub concurrent_namespace_syncs: u16,
    /// Concurrent endpoints syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_endpoint_syncs: u16,
}

/// `kinit controller-manager` flags.
#[derive(Debug, Clone, Args)]
pub struct ControllerManagerArgs {
    /// Kubeconfig with the controller manager's credentials (kubeadm:
    /// /etc/kubernetes/controller-manager.conf); without it the in-cluster or default config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Address /healthz listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// HTTPS port for /healthz (self-signed certificate); 0 disables it.
    #[arg(long, default_value_t = 10257)]
    pub secure_port: u16,
    /// Run only while holding the kube-system/kube-controller-manager Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// How long a non-renewed lease stays valid.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long the leader retries renewing before giving up leadership.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// Pause between acquire/renew attempts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// Lease name.
    #[arg(long, default_value = "kube-controller-manager")]
    pub leader_elect_resource_name: String,
    /// Lease namespace.
    #[arg(long, default_value = "kube-system")]
    pub leader_elect_resource_namespace: String,
    /// Controllers to run: `*` for all on-by-default ones, `name` to enable, `-name` to disable
    /// (e.g. `*,-job`).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub controllers: Vec<String>,
    /// Concurrent Deployment syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_deployment_syncs: u16,
    /// Concurrent ReplicaSet syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_replicaset_syncs: u16,
    /// Concurrent DaemonSet syncs.
    #[arg(long, default_value_t = 2)]
    pub concurrent_daemonset_syncs: u16,
    /// Concurrent Job syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_job_syncs: u16,
    /// Concurrent StatefulSet syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_statefulset_syncs: u16,
    /// Concurrent CronJob syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_cron_job_syncs: u16,
    /// Cluster name (accepted for kube-controller-manager compatibility; only cloud providers
    /// use it).
    #[arg(long, default_value = "kubernetes")]
    pub cluster_name: String,
    /// Flags of the cluster controllers.
    #[command(flatten)]
    pub cluster: ClusterControllerFlags,
}

impl ControllerManagerArgs {
    /// Checks flags that clap cannot: election timings (like client-go) and the controller
    /// list.
    pub fn validate(&self) -> Result<(), ControllerError> {
        if self.leader_elect {
            self.election_config().validate()?;
        }
        self.enabled_controllers().map(|_| ())
    }

    /// The leader election settings of these flags, with a fresh `<hostname>_<uuid>` identity.
    pub fn election_config(&self) -> LeaderElectionConfig {
        LeaderElectionConfig {
            namespace: self.leader_elect_resource_namespace.clone(),
            name: self.leader_elect_resource_name.clone(),
            identity: kinit_component_base::leader_identity(),
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        }
    }

    /// The enabled controllers, resolved like kube-controller-manager's `--controllers` (`*`,
    /// `name`, `-name`; a name's explicit setting beats `*`).
    pub fn enabled_controllers(&self) -> Result<BTreeSet<String>, ControllerError> {
        resolve_controllers(&self.controllers)
    }

    /// True when `name` (e.g. `deployment`, `node-ipam`) is enabled.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.enabled_controllers().is_ok_and(|s| s.contains(name))
    }
}

/// Maps the cluster controllers' flags and the `--controllers` list onto their options.
pub fn cluster_options(
    flags: &ClusterControllerFlags,
    controllers: &[String],
) -> Result<ClusterControllerOptions, ControllerError> {
    let defaults = ClusterControllerOptions::default();
    Ok(ClusterControllerOptions {
        cluster_cidrs: flags.cluster_cidr.clone(),
        node_cidr_mask_size_ipv4: flags
            .node_cidr_mask_size_ipv4
            .or(flags.node_cidr_mask_size)
            .unwrap_or(defaults.node_cidr_mask_size_ipv4),
        node_cidr_mask_size_ipv6: flags
            .node_cidr_mask_size_ipv6
            .unwrap_or(defaults.node_cidr_mask_size_ipv6),
        allocate_node_cidrs: flags.allocate_node_cidrs,
        cluster_signing_cert_file: flags
            .cluster_signing_cert_file
            .clone()
            .unwrap_or(defaults.cluster_signing_cert_file),
        cluster_signing_key_file: flags
            .cluster_signing_key_file
            .clone()
            .unwrap_or(defaults.cluster_signing_key_file),
        cluster_signing_duration: flags.cluster_signing_duration,
        node_monitor_period: flags.node_monitor_period,
        node_monitor_grace_period: flags.node_monitor_grace_period,
        pod_eviction_timeout: flags.pod_eviction_timeout,
        pod_gc: crate::cluster::podgc::PodGcConfig {
            terminated_threshold: flags.terminated_pod_gc_threshold,
            ..defaults.pod_gc
        },
        controllers: resolve_controllers(controllers)?
            .iter()
            .filter_map(|name| ControllerName::parse(name))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerManagerArgs,
    }

    #[test]
    fn accepts_the_static_pod_flags() {
        let cli = Cli::try_parse_from([
            "kinit",
            "--kubeconfig=/etc/kubernetes/controller-manager.conf",
            "--bind-address=127.0.0.1",
            "--secure-port=10257",
            "--leader-elect=true",
            "--cluster-name=kinit",
            "--allocate-node-cidrs=true",
            "--cluster-cidr=10.244.0.0/16",
            "--node-cidr-mask-size=24",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt",
            "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key",
        ])
        .unwrap();
        let a = cli.args;
        assert!(a.leader_elect);
        assert!(a.cluster.allocate_node_cidrs);
        assert_eq!(
            a.cluster.cluster_cidr,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(a.cluster.node_cidr_mask_size, Some(24));
        assert_eq!(a.secure_port, 10257);
        a.validate().unwrap();
        assert!(a.is_enabled("deployment"));
        assert!(a.is_enabled("node-ipam"));
        assert!(!a.is_enabled("bootstrapsigner"));
    }

    #[test]
    fn controller_lists_work_like_kube_controller_manager() {
        let s =
            |v: &[&str]| resolve_controllers(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let all = s(&["*"]).unwrap();
        assert!(all.contains("job") && all.contains("garbage-collector"));
        let some = s(&["*", "-job", "bootstrapsigner"]).unwrap();
        assert!(
            !some.contains("job")
                && some.contains("bootstrapsigner")
                && some.contains("deployment")
        );
        assert_eq!(
            s(&["deployment"]).unwrap(),
            BTreeSet::from(["deployment".to_string()])
        );
        assert!(matches!(
            s(&["bogus"]),
            Err(ControllerError::UnknownController(..))
        ));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(8760 * 3600))
        );
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn election_timings_are_checked() {
        let mut a = Cli::try_parse_from(["kinit"]).unwrap().args;
        a.leader_elect_renew_deadline = Duration::from_secs(20);
        assert!(a.validate().is_err());
    }

    #[test]
    fn cluster_flags_reach_the_cluster_controllers() {
        let cli = Cli::parse_from([
            "x",
            "--allocate-node-cidrs=true",
            "--cluster-cidr=10.244.0.0/16",
            "--node-cidr-mask-size=25",
            "--cluster-signing-cert-file=/p/ca.crt",
            "--controllers=*,-node-lifecycle",
            "--terminated-pod-gc-threshold=100",
        ]);
        let options = cluster_options(&cli.args.cluster, &cli.args.controllers).unwrap();
        assert!(options.allocate_node_cidrs);
        assert_eq!(options.cluster_cidrs, ["10.244.0.0/16".parse().unwrap()]);
        assert_eq!(options.node_cidr_mask_size_ipv4, 25);
        assert_eq!(
            options.cluster_signing_cert_file,
            std::path::Path::new("/p/ca.crt")
        );
        assert_eq!(options.pod_gc.terminated_threshold, 100);
        assert!(options
            .controllers
            .contains(&ControllerName::PodGarbageCollector));
        let lifecycle = ControllerName::select(&["node-lifecycle".to_string()], false).unwrap();
        assert!(options.controllers.is_disjoint(&lifecycle));
    }
}
