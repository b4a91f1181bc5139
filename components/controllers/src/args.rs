//! Flags of `kinit controller-manager`, named like kube-controller-manager's.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;

use crate::error::ControllerError;

/// Controllers this crate runs (kube-controller-manager names).
pub const WORKLOAD_CONTROLLERS: &[&str] = &[
    "deployment",
    "replicaset",
    "daemonset",
    "job",
    "ttl-after-finished",
    "cronjob",
    "statefulset",
];

/// Controllers of the cluster-controllers crate, accepted in `--controllers` and handed over
/// through [`ClusterControllerFlags`].
pub const CLUSTER_CONTROLLERS: &[&str] = &[
    "endpoint",
    "endpointslice",
    "namespace",
    "garbage-collector",
    "node-ipam",
    "node-lifecycle",
    "pod-garbage-collector",
    "csrapproving",
    "csrsigning",
];

/// Controllers kube-controller-manager disables unless named (`bootstrapsigner`, `tokencleaner`).
const OFF_BY_DEFAULT: &[&str] = &["bootstrapsigner", "tokencleaner"];

/// Parses a Go-style duration (`15s`, `1m30s`, `500ms`, `2h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {s:?}: use a number with a unit, e.g. 15s, 1m30s, 500ms");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(value * scale);
        rest = tail;
    }
    Ok(total)
}

/// Flags for the cluster controllers (another crate); parsed here so one flag set serves the
/// whole `kinit controller-manager`, and handed over unchanged.
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
    /// Checks flags that clap cannot: election timings and the controller list.
    pub fn validate(&self) -> Result<(), ControllerError> {
        if self.leader_elect {
            if self.leader_elect_lease_duration < Duration::from_secs(1) {
                return Err(ControllerError::InvalidFlag {
                    flag: "--leader-elect-lease-duration",
                    message: "must be at least 1s (a Lease counts whole seconds)".into(),
                });
            }
            if self.leader_elect_lease_duration <= self.leader_elect_renew_deadline
                || self.leader_elect_renew_deadline <= self.leader_elect_retry_period
            {
                return Err(ControllerError::InvalidFlag {
                    flag: "--leader-elect-lease-duration",
                    message: format!(
                        "need lease duration ({:?}) > renew deadline ({:?}) > retry period ({:?})",
                        self.leader_elect_lease_duration,
                        self.leader_elect_renew_deadline,
                        self.leader_elect_retry_period
                    ),
                });
            }
        }
        self.enabled_controllers().map(|_| ())
    }

    /// The enabled controllers of both crates, resolved like kube-controller-manager's
    /// `--controllers` (`*`, `name`, `-name`; a name's explicit setting beats `*`).
    pub fn enabled_controllers(&self) -> Result<BTreeSet<String>, ControllerError> {
        resolve_controllers(&self.controllers)
    }

    /// True when `name` (e.g. `deployment`, `node-ipam`) is enabled.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.enabled_controllers().is_ok_and(|s| s.contains(name))
    }
}

/// Resolves a `--controllers` list against every known controller name.
pub fn resolve_controllers(list: &[String]) -> Result<BTreeSet<String>, ControllerError> {
    let known: Vec<&str> = WORKLOAD_CONTROLLERS
        .iter()
        .chain(CLUSTER_CONTROLLERS)
        .chain(OFF_BY_DEFAULT)
        .copied()
        .collect();
    let mut star = false;
    let mut on = BTreeSet::new();
    let mut off = BTreeSet::new();
    for item in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if item == "*" {
            star = true;
            continue;
        }
        let (negated, name) = match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, item),
        };
        if !known.contains(&name) {
            return Err(ControllerError::UnknownController(
                name.to_string(),
                known.join(", "),
            ));
        }
        if negated {
            off.insert(name.to_string());
        } else {
            on.insert(name.to_string());
        }
    }
    if star {
        for name in WORKLOAD_CONTROLLERS.iter().chain(CLUSTER_CONTROLLERS) {
            if !off.contains(*name) {
                on.insert(name.to_string());
            }
        }
    }
    Ok(on.difference(&off).cloned().collect())
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
}
