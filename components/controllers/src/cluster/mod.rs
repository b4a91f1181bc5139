//! Cluster controllers of `kinit controller-manager`.
//!
//! Each controller is a kube-rs style `reconcile(object, ctx) -> Result<Action>` driven by the
//! controller manager's shared informers, written to be re-run any number of times:
//!
//! - [`endpoints`]: Endpoints and EndpointSlices for Services with a selector;
//! - [`namespace`]: empties Terminating namespaces, then releases the `kubernetes` finalizer;
//! - [`gc`]: the garbage collector (dangling owners, foreground and orphan deletion);
//! - [`ipam`]: pod CIDRs for nodes (`--allocate-node-cidrs`);
//! - [`node_lifecycle`]: unreachable / not-ready taints and NoExecute evictions;
//! - [`podgc`]: force-deletion of pods whose node is gone and of excess finished pods;
//! - [`csr`]: auto-approval of kubelet client CSRs and signing with the cluster CA.
//!
//! [`crate::registry`] starts the enabled ones with the workload controllers; [`run`] runs them
//! alone on one client until the future is dropped.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use std::future::Future;

use futures::{FutureExt, TryFutureExt};
use ipnet::IpNet;

use crate::error::ControllerError;
use crate::registry::{Running, Setup};
use crate::workloads::WorkloadOptions;

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
    pub const fn as_str(self) -> &'static str {
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

/// Runs every enabled controller, with shared informers of their own, until the future is
/// dropped (the controller manager runs them together with the workload controllers instead).
///
/// Fails early when the options are unusable (bad CIDR/mask, unreadable signing CA) and later
/// when a controller stops; `node-ipam` runs only with `allocate_node_cidrs`.
pub async fn run(
    client: kube::Client,
    options: ClusterControllerOptions,
) -> Result<(), ControllerError> {
    // Never stopped: the caller drops the future instead.
    let (_keep, stop) = tokio::sync::watch::channel(false);
    crate::run_controllers(client, WorkloadOptions::none(), Some(options), stop).await
}

fn enabled<'a>(
    setup: &Setup<'a>,
    names: &[ControllerName],
) -> Option<(&'a ClusterControllerOptions, Vec<bool>)> {
    let options = setup.cluster?;
    let on: Vec<bool> = names
        .iter()
        .map(|n| options.controllers.contains(n))
        .collect();
    on.iter().any(|o| *o).then_some((options, on))
}

fn running(
    controller: impl Future<Output = Result<(), ClusterControllerError>> + Send + 'static,
) -> Option<Running> {
    Some(controller.map_err(ControllerError::from).boxed())
}

/// Starts `endpoint` and/or `endpointslice` (one loop serves both).
pub(crate) fn start_endpoints(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    let Some((_, on)) = enabled(
        setup,
        &[ControllerName::Endpoints, ControllerName::EndpointSlice],
    ) else {
        return Ok(None);
    };
    let config = endpoints::EndpointsConfig {
        endpoints: on[0],
        slices: on[1],
    };
    Ok(running(endpoints::run(setup.informers, config)))
}

/// Starts `namespace`.
pub(crate) fn start_namespace(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    if enabled(setup, &[ControllerName::Namespace]).is_none() {
        return Ok(None);
    }
    Ok(running(namespace::run(setup.informers)))
}

/// Starts `garbage-collector`.
pub(crate) fn start_garbage_collector(
    setup: &mut Setup<'_>,
) -> Result<Option<Running>, ControllerError> {
    if enabled(setup, &[ControllerName::GarbageCollector]).is_none() {
        return Ok(None);
    }
    Ok(running(gc::run(setup.informers)))
}

/// Starts `node-ipam` when `allocate_node_cidrs` is set.
pub(crate) fn start_node_ipam(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    let Some((options, _)) = enabled(setup, &[ControllerName::NodeIpam]) else {
        return Ok(None);
    };
    if !options.allocate_node_cidrs {
        return Ok(None);
    }
    let allocator = ipam::MultiAllocator::new(
        &options.cluster_cidrs,
        options.node_cidr_mask_size_ipv4,
        options.node_cidr_mask_size_ipv6,
    )?;
    Ok(running(ipam::run(setup.informers, allocator)))
}

/// Starts `node-lifecycle`.
pub(crate) fn start_node_lifecycle(
    setup: &mut Setup<'_>,
) -> Result<Option<Running>, ControllerError> {
    let Some((options, _)) = enabled(setup, &[ControllerName::NodeLifecycle]) else {
        return Ok(None);
    };
    let config = node_lifecycle::LifecycleConfig {
        monitor_period: options.node_monitor_period,
        grace_period: options.node_monitor_grace_period,
        pod_eviction_timeout: options.pod_eviction_timeout,
    };
    Ok(running(node_lifecycle::run(setup.informers, config)))
}

/// Starts `pod-garbage-collector`.
pub(crate) fn start_pod_gc(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    let Some((options, _)) = enabled(setup, &[ControllerName::PodGarbageCollector]) else {
        return Ok(None);
    };
    Ok(running(podgc::run(setup.informers, options.pod_gc)))
}

/// Starts `csrapproving` and/or `csrsigning` (one loop serves both).
pub(crate) fn start_csr(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    let Some((options, on)) = enabled(
        setup,
        &[ControllerName::CsrApproving, ControllerName::CsrSigning],
    ) else {
        return Ok(None);
    };
    let (approving, signing) = (on[0], on[1]);
    let signer = if signing {
        Some(csr::Signer::load(
            &options.cluster_signing_cert_file,
            &options.cluster_signing_key_file,
            options.cluster_signing_duration,
        )?)
    } else {
        None
    };
    Ok(running(csr::run(setup.informers, approving, signer)))
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
