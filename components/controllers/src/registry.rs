//! Every controller of `kinit controller-manager`, by the names kube-controller-manager's
//! `--controllers` flag uses, with what `*` enables and how each starts.
//!
//! Adding a controller is one [`Registration`] here plus its module under [`crate::workloads`]
//! or [`crate::cluster`]: its start function takes what it needs from the shared informers and
//! returns the future that runs it.

use std::collections::BTreeSet;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::cluster::{self, ClusterControllerOptions, ControllerName};
use crate::error::ControllerError;
use crate::informer::Informers;
use crate::workloads::{self, WorkloadOptions};

/// Which module a controller belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// [`crate::workloads`]: pods and their owners.
    Workloads,
    /// [`crate::cluster`]: endpoints, namespaces, garbage collection, nodes, certificates.
    Cluster,
    /// Accepted for kube-controller-manager compatibility; nothing runs (kinit's installer
    /// manages bootstrap tokens itself).
    Compatibility,
}

/// A running controller: ends on the stop signal (or with an error).
pub type Running = BoxFuture<'static, Result<(), ControllerError>>;

/// What a start function gets: the shared informers to take watches from, the settings, and
/// the stop signal.
pub struct Setup<'a> {
    /// The controller manager's shared informers.
    pub informers: &'a mut Informers,
    /// Settings and enabled set of the workload controllers.
    pub workloads: &'a WorkloadOptions,
    /// Settings and enabled set of the cluster controllers (`None`: none run).
    pub cluster: Option<&'a ClusterControllerOptions>,
    /// Turns true when the controller manager stops.
    pub stop: watch::Receiver<bool>,
}

/// Sets a controller up; `None` when the settings leave it off.
pub type StartFn = fn(&mut Setup<'_>) -> Result<Option<Running>, ControllerError>;

/// One entry of the registry.
pub struct Registration {
    /// The `--controllers` names this entry serves (several when one loop serves them, like
    /// `endpoint` and `endpointslice`).
    pub names: &'static [&'static str],
    /// Its module.
    pub group: Group,
    /// Whether `*` enables it (kube-controller-manager's disabled-by-default controllers are
    /// not).
    pub enabled_by_default: bool,
    /// How it starts; `None` for names accepted only for compatibility.
    pub start: Option<StartFn>,
}

const fn workload(names: &'static [&'static str], start: StartFn) -> Registration {
    Registration {
        names,
        group: Group::Workloads,
        enabled_by_default: true,
        start: Some(start),
    }
}

const fn cluster(names: &'static [&'static str], start: StartFn) -> Registration {
    Registration {
        names,
        group: Group::Cluster,
        enabled_by_default: true,
        start: Some(start),
    }
}

/// Every controller, in start order.
pub const CONTROLLERS: &[Registration] = &[
    workload(&["deployment"], workloads::start_deployment),
    workload(&["replicaset"], workloads::start_replicaset),
    workload(&["daemonset"], workloads::start_daemonset),
    workload(&["job", "ttl-after-finished"], workloads::start_job),
    workload(&["cronjob"], workloads::start_cronjob),
    workload(&["statefulset"], workloads::start_statefulset),
    cluster(
        &[
            ControllerName::Endpoints.as_str(),
            ControllerName::EndpointSlice.as_str(),
        ],
        cluster::start_endpoints,
    ),
    cluster(
        &[ControllerName::Namespace.as_str()],
        cluster::start_namespace,
    ),
    cluster(
        &[ControllerName::NodeIpam.as_str()],
        cluster::start_node_ipam,
    ),
    cluster(
        &[ControllerName::NodeLifecycle.as_str()],
        cluster::start_node_lifecycle,
    ),
    cluster(
        &[ControllerName::PodGarbageCollector.as_str()],
        cluster::start_pod_gc,
    ),
    cluster(
        &[
            ControllerName::CsrApproving.as_str(),
            ControllerName::CsrSigning.as_str(),
        ],
        cluster::start_csr,
    ),
    cluster(
        &[ControllerName::GarbageCollector.as_str()],
        cluster::start_garbage_collector,
    ),
    Registration {
        names: &["bootstrapsigner", "tokencleaner"],
        group: Group::Compatibility,
        enabled_by_default: false,
        start: None,
    },
];

/// Every known controller name.
pub fn names() -> impl Iterator<Item = &'static str> {
    CONTROLLERS.iter().flat_map(|r| r.names.iter().copied())
}

/// The names of one group.
pub fn names_of(group: Group) -> impl Iterator<Item = &'static str> {
    CONTROLLERS
        .iter()
        .filter(move |r| r.group == group)
        .flat_map(|r| r.names.iter().copied())
}

/// Resolves a `--controllers` list like kube-controller-manager: `*` enables every
/// on-by-default controller, `name` enables one, `-name` disables one (an explicit setting
/// beats `*`).
pub fn resolve(list: &[String]) -> Result<BTreeSet<String>, ControllerError> {
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
        if !names().any(|n| n == name) {
            return Err(ControllerError::UnknownController(
                name.to_string(),
                names().collect::<Vec<_>>().join(", "),
            ));
        }
        if negated {
            off.insert(name.to_string());
        } else {
            on.insert(name.to_string());
        }
    }
    if star {
        for r in CONTROLLERS.iter().filter(|r| r.enabled_by_default) {
            for name in r.names {
                if !off.contains(*name) {
                    on.insert(name.to_string());
                }
            }
        }
    }
    Ok(on.difference(&off).cloned().collect())
}

/// Sets up every registered controller the settings enable, in registry order, returning
/// them by their first name, with their group.
pub(crate) fn start_all(
    setup: &mut Setup<'_>,
) -> Result<Vec<(&'static str, Group, Running)>, ControllerError> {
    let mut started = Vec::new();
    for registration in CONTROLLERS {
        let Some(start) = registration.start else {
            continue;
        };
        if let Some(running) = start(setup)? {
            started.push((registration.names[0], registration.group, running));
        }
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_cover_the_cluster_controllers() {
        let all: Vec<&str> = names().collect();
        let unique: BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len(), "{all:?}");
        let cluster: BTreeSet<&str> = names_of(Group::Cluster).collect();
        let typed: BTreeSet<&str> = ControllerName::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(cluster, typed);
    }

    #[test]
    fn star_leaves_compatibility_names_off() {
        let on = resolve(&["*".to_string()]).unwrap();
        assert!(on.contains("deployment") && on.contains("garbage-collector"));
        assert!(!on.contains("bootstrapsigner") && !on.contains("tokencleaner"));
        assert_eq!(on.len(), names().count() - 2);
    }
}
