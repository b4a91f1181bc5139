//! Cluster controllers of `kinit controller-manager`.
//!
//! Each controller is a kube-rs style `reconcile(object, ctx) -> Result<Action>` driven by
//! watches on the API server, written to be re-run any number of times:
//!
//! - [`endpoints`]: Endpoints and EndpointSlices for Services with a selector;
//! - [`namespace`]: empties Terminating namespaces, then releases the `kubernetes` finalizer;
//! - [`gc`]: the garbage collector (dangling owners, foreground and orphan deletion);
//! - [`ipam`]: pod CIDRs for nodes (`--allocate-node-cidrs`);
//! - [`node_lifecycle`]: unreachable / not-ready taints and NoExecute evictions;
//! - [`podgc`]: force-deletion of pods whose node is gone and of excess finished pods;
//! - [`csr`]: auto-approval of kubelet client CSRs and signing with the cluster CA.
//!
//! [`run`] starts the enabled ones on one client and runs them until the future is dropped.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use ipnet::IpNet;

pub mod csr;
pub mod endpoints;
mod error;
pub mod gc;
pub mod ipam;
pub mod namespace;
pub mod node_lifecycle;
pub mod podgc;

pub use error::{ClusterControllerError, ReconcileError};

/// One controller this crate runs; names follow kube-controller-manager's `--controllers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ControllerName {
    /// `endpoint`: core/v1 Endpoints.
    Endpoints,
    /// `endpointslice`: discovery.k8s.io/v1 EndpointSlices.
    EndpointSlice,
    /// `namespace`: deletion of Terminating namespaces.
    Namespace,
    /// `garbage-collector`: ownerReference-based deletion.
    GarbageCollector,
    /// `node-ipam`: pod CIDR allocation (needs `allocate_node_cidrs`).
    NodeIpam,
    /// `node-lifecycle`: node health taints and NoExecute evictions.
    NodeLifecycle,
    /// `pod-garbage-collector`: pods of deleted nodes, excess finished pods.
    PodGarbageCollector,
    /// `csrapproving`: auto-approval of kubelet client certificates.
    CsrApproving,
    /// `csrsigning`: signing of approved CSRs with the cluster CA.
    CsrSigning,
}

impl ControllerName {
    /// Every controller of this crate.
    pub const ALL: [ControllerName; 9] = [
        ControllerName::Endpoints,
        ControllerName::EndpointSlice,
        ControllerName::Namespace,
        ControllerName::GarbageCollector,
        ControllerName::NodeIpam,
        ControllerName::NodeLifecycle,
        ControllerName::PodGarbageCollector,
        ControllerName::CsrApproving,
        ControllerName::CsrSigning,
    ];

    /// The `--controllers` name.
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerName::Endpoints => "endpoint",
            ControllerName::EndpointSlice => "endpointslice",
            ControllerName::Namespace => "namespace",
            ControllerName::GarbageCollector => "garbage-collector",
            ControllerName::NodeIpam => "node-ipam",
            ControllerName::NodeLifecycle => "node-lifecycle",
            ControllerName::PodGarbageCollector => "pod-garbage-collector",
            ControllerName::CsrApproving => "csrapproving",
            ControllerName::CsrSigning => "csrsigning",
        }
    }

    /// Parses a `--controllers` name.
    pub fn parse(name: &str) -> Option<ControllerName> {
        ControllerName::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Resolves a kube-controller-manager style list (`*`, `name`, `-name`) to the set of
    /// this crate's controllers. Names of controllers this crate does not own (e.g.
    /// `deployment`) are ignored when `ignore_unknown` is set, so one flag can serve several
    /// controller crates.
    pub fn select(
        list: &[String],
        ignore_unknown: bool,
    ) -> Result<BTreeSet<ControllerName>, ClusterControllerError> {
        let mut all = false;
        let mut on = BTreeSet::new();
        let mut off = BTreeSet::new();
        for item in list.iter().flat_map(|s| s.split(',')).map(str::trim) {
            if item.is_empty() {
                continue;
            }
            if item == "*" {
                all = true;
                continue;
            }
            let (negated, name) = match item.strip_prefix('-') {
                Some(n) => (true, n),
                None => (false, item),
            };
            match ControllerName::parse(name) {
                Some(c) if negated => {
                    off.insert(c);
                }
                Some(c) => {
                    on.insert(c);
                }
                None if ignore_unknown => {}
                None => return Err(ClusterControllerError::UnknownController(name.to_string())),
            }
        }
        if all {
            on.extend(ControllerName::ALL);
        }
        Ok(on.difference(&off).copied().collect())
    }
}

impl fmt::Display for ControllerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of the cluster controllers (the lead maps `kinit controller-manager` flags here).
#[derive(Debug, Clone)]
pub struct ClusterControllerOptions {
    /// `--cluster-cidr`: pod network(s) node CIDRs are carved from (one per IP family).
    pub cluster_cidrs: Vec<IpNet>,
    /// `--node-cidr-mask-size-ipv4` (default 24).
    pub node_cidr_mask_size_ipv4: u8,
    /// `--node-cidr-mask-size-ipv6` (default 64).
    pub node_cidr_mask_size_ipv6: u8,
    /// `--allocate-node-cidrs`: run node IPAM.
    pub allocate_node_cidrs: bool,
    /// `--cluster-signing-cert-file` (kubeadm: `/etc/kubernetes/pki/ca.crt`).
    pub cluster_signing_cert_file: PathBuf,
    /// `--cluster-signing-key-file` (kubeadm: `/etc/kubernetes/pki/ca.key`).
    pub cluster_signing_key_file: PathBuf,
    /// `--cluster-signing-duration`: longest validity of signed certificates (default 1 year).
    pub cluster_signing_duration: Duration,
    /// `--node-monitor-period`: how often node health is checked (default 5 s).
    pub node_monitor_period: Duration,
    /// `--node-monitor-grace-period`: heartbeat age after which a node is unreachable
    /// (default 40 s).
    pub node_monitor_grace_period: Duration,
    /// `--pod-eviction-timeout`: how long pods without a matching NoExecute toleration stay on
    /// an unhealthy node before eviction (default 300 s, the DefaultTolerationSeconds value).
    pub pod_eviction_timeout: Duration,
    /// The pod garbage collector's period, quarantine and `--terminated-pod-gc-threshold`.
    pub pod_gc: podgc::PodGcConfig,
    /// Controllers to run.
    pub controllers: BTreeSet<ControllerName>,
}

impl Default for ClusterControllerOptions {
    fn default() -> Self {
        ClusterControllerOptions {
            cluster_cidrs: Vec::new(),
            node_cidr_mask_size_ipv4: 24,
            node_cidr_mask_size_ipv6: 64,
            allocate_node_cidrs: false,
            cluster_signing_cert_file: PathBuf::from("/etc/kubernetes/pki/ca.crt"),
            cluster_signing_key_file: PathBuf::from("/etc/kubernetes/pki/ca.key"),
            cluster_signing_duration: Duration::from_secs(365 * 24 * 3600),
            node_monitor_period: Duration::from_secs(5),
            node_monitor_grace_period: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            pod_gc: podgc::PodGcConfig::default(),
            controllers: ControllerName::ALL.into_iter().collect(),
        }
    }
}

type ControllerFuture =
    futures::future::BoxFuture<'static, (ControllerName, Result<(), ClusterControllerError>)>;

/// Runs every enabled controller until the returned future is dropped.
///
/// Fails early when the options are unusable (bad CIDR/mask, unreadable signing CA) and later
/// when a controller stops; `node-ipam` runs only with `allocate_node_cidrs`.
pub async fn run(
    client: kube::Client,
    options: ClusterControllerOptions,
) -> Result<(), ClusterControllerError> {
    let enabled = &options.controllers;
    let mut started: Vec<ControllerFuture> = Vec::new();
    let mut start =
        |name: ControllerName,
         fut: futures::future::BoxFuture<'static, Result<(), ClusterControllerError>>| {
            tracing::info!(controller = %name, "starting controller");
            started.push(fut.map(move |r| (name, r)).boxed());
        };
    if enabled.contains(&ControllerName::Endpoints)
        || enabled.contains(&ControllerName::EndpointSlice)
    {
        let config = endpoints::EndpointsConfig {
            endpoints: enabled.contains(&ControllerName::Endpoints),
            slices: enabled.contains(&ControllerName::EndpointSlice),
        };
        start(
            ControllerName::EndpointSlice,
            endpoints::run(client.clone(), config).boxed(),
        );
    }
    if enabled.contains(&ControllerName::Namespace) {
        start(
            ControllerName::Namespace,
            namespace::run(client.clone()).boxed(),
        );
    }
    if enabled.contains(&ControllerName::GarbageCollector) {
        start(
            ControllerName::GarbageCollector,
            gc::run(client.clone()).boxed(),
        );
    }
    if enabled.contains(&ControllerName::NodeIpam) && options.allocate_node_cidrs {
        let allocator = ipam::MultiAllocator::new(
            &options.cluster_cidrs,
            options.node_cidr_mask_size_ipv4,
            options.node_cidr_mask_size_ipv6,
        )?;
        start(
            ControllerName::NodeIpam,
            ipam::run(client.clone(), allocator).boxed(),
        );
    }
    if enabled.contains(&ControllerName::NodeLifecycle) {
        let config = node_lifecycle::LifecycleConfig {
            monitor_period: options.node_monitor_period,
            grace_period: options.node_monitor_grace_period,
            pod_eviction_timeout: options.pod_eviction_timeout,
        };
        start(
            ControllerName::NodeLifecycle,
            node_lifecycle::run(client.clone(), config).boxed(),
        );
    }
    if enabled.contains(&ControllerName::PodGarbageCollector) {
        start(
            ControllerName::PodGarbageCollector,
            podgc::run(client.clone(), options.pod_gc).boxed(),
        );
    }
    let approving = enabled.contains(&ControllerName::CsrApproving);
    let signing = enabled.contains(&ControllerName::CsrSigning);
    if approving || signing {
        let signer = if signing {
            Some(csr::Signer::load(
                &options.cluster_signing_cert_file,
                &options.cluster_signing_key_file,
                options.cluster_signing_duration,
            )?)
        } else {
            None
        };
        let name = if signing {
            ControllerName::CsrSigning
        } else {
            ControllerName::CsrApproving
        };
        start(name, csr::run(client.clone(), approving, signer).boxed());
    }
    let mut running: FuturesUnordered<ControllerFuture> = started.into_iter().collect();
    match running.next().await {
        None => {
            // Nothing enabled: stay up like an idle controller manager.
            futures::future::pending::<()>().await;
            Ok(())
        }
        Some((name, Ok(()))) => Err(ClusterControllerError::Stopped {
            controller: name.as_str(),
            reason: "its watch stream ended".into(),
        }),
        Some((_, Err(e))) => Err(e),
    }
}

/// Shared helpers.
pub(crate) mod util {
    pub use kinit_rules::errors::{is_conflict, is_not_found};
    pub use kinit_rules::labels::{
        map_selector_matches as selector_matches, map_selector_string as selector_string,
    };
    pub use kinit_rules::owners::controller_reference_to;

    /// RFC 3339 time now, as k8s-openapi's Time.
    pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    #[test]
    fn controllers_flag_selects_like_kube_controller_manager() {
        let all = ControllerName::select(&list("*"), false).unwrap();
        assert_eq!(all.len(), ControllerName::ALL.len());
        let some = ControllerName::select(&list("*,-csrsigning,-node-ipam"), false).unwrap();
        assert!(!some.contains(&ControllerName::CsrSigning));
        assert!(some.contains(&ControllerName::GarbageCollector));
        let one = ControllerName::select(&list("namespace,deployment"), true).unwrap();
        assert_eq!(
            one.into_iter().collect::<Vec<_>>(),
            [ControllerName::Namespace]
        );
        assert!(matches!(
            ControllerName::select(&list("deployment"), false),
            Err(ClusterControllerError::UnknownController(n)) if n == "deployment"
        ));
    }
}
