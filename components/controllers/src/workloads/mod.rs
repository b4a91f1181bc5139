//! Workload controllers: pods and the objects that own them.
//!
//! - [`replicaset`]: pods from a template, adoption/release, deletion ranking, expectations;
//! - [`deployment`]: ReplicaSets per template hash, RollingUpdate/Recreate, revisions,
//!   rollback, history limit, the status `kubectl rollout status` reads;
//! - [`daemonset`]: one pod per eligible node, pinned by node affinity, rolling updates;
//! - [`job`]: parallelism/completions, backoff limit, deadline, TTL after finished;
//! - [`cronjob`]: Jobs on a cron schedule (time zones, deadlines, concurrency policy, history);
//! - [`statefulset`]: ordinal pods with stable names and claims, ordered or parallel, revisions
//!   and partitioned rolling updates.
//!
//! Each is a kube-rs `Controller` running an idempotent `reconcile(object, ctx)`, fed by the
//! controller manager's shared informers ([`crate::informer`]).

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod expectations;
pub mod job;
pub mod manage;
pub mod pods;
pub mod replicaset;
pub mod rollout;
pub mod statefulset;

use std::collections::BTreeSet;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::sync::watch;

use crate::args::ControllerManagerArgs;
use crate::error::ControllerError;
use crate::registry::{self, Group, Running, Setup};

/// What the workload controllers run with.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Enabled controller names (`deployment`, `replicaset`, `daemonset`, `job`,
    /// `ttl-after-finished`, `cronjob`, `statefulset`); other names are ignored.
    pub enabled: BTreeSet<String>,
    /// `--concurrent-deployment-syncs`.
    pub deployment_syncs: u16,
    /// `--concurrent-replicaset-syncs`.
    pub replicaset_syncs: u16,
    /// `--concurrent-daemonset-syncs`.
    pub daemonset_syncs: u16,
    /// `--concurrent-job-syncs`.
    pub job_syncs: u16,
    /// `--concurrent-cron-job-syncs`.
    pub cron_job_syncs: u16,
    /// `--concurrent-statefulset-syncs`.
    pub statefulset_syncs: u16,
}

impl WorkloadOptions {
    /// Options from the flags.
    pub fn from_args(args: &ControllerManagerArgs) -> Result<WorkloadOptions, ControllerError> {
        Ok(WorkloadOptions {
            enabled: args.enabled_controllers()?,
            deployment_syncs: args.concurrent_deployment_syncs.max(1),
            replicaset_syncs: args.concurrent_replicaset_syncs.max(1),
            daemonset_syncs: args.concurrent_daemonset_syncs.max(1),
            job_syncs: args.concurrent_job_syncs.max(1),
            cron_job_syncs: args.concurrent_cron_job_syncs.max(1),
            statefulset_syncs: args.concurrent_statefulset_syncs.max(1),
        })
    }

    /// The options with no workload controller enabled (for running cluster controllers
    /// alone).
    pub fn none() -> WorkloadOptions {
        WorkloadOptions {
            enabled: BTreeSet::new(),
            ..WorkloadOptions::default()
        }
    }

    fn on(&self, name: &str) -> bool {
        self.enabled.contains(name)
    }
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            enabled: registry::names_of(Group::Workloads)
                .map(str::to_string)
                .collect(),
            deployment_syncs: 5,
            replicaset_syncs: 5,
            daemonset_syncs: 2,
            job_syncs: 5,
            cron_job_syncs: 5,
            statefulset_syncs: 5,
        }
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Wraps a workload controller (which ends on stop, after its running reconciles) as
/// [`Running`].
fn running(controller: futures::future::BoxFuture<'static, ()>) -> Option<Running> {
    Some(controller.map(|()| Ok(())).boxed())
}

/// Starts `replicaset`.
pub(crate) fn start_replicaset(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    if !setup.workloads.on("replicaset") {
        return Ok(None);
    }
    let mut replica_sets = setup.informers.take::<ReplicaSet>();
    let mut pods = setup.informers.take::<Pod>();
    let controller = replicaset::controller(
        setup.informers.client().clone(),
        &mut replica_sets,
        &mut pods,
        setup.workloads.replicaset_syncs,
        stopped(setup.stop.clone()),
    );
    setup.informers.put(replica_sets);
    setup.informers.put(pods);
    Ok(running(controller))
}

/// Starts `deployment`.
pub(crate) fn start_deployment(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    if !setup.workloads.on("deployment") {
        return Ok(None);
    }
    let mut deployments = setup.informers.take::<Deployment>();
    let mut replica_sets = setup.informers.take::<ReplicaSet>();
    let mut pods = setup.informers.take::<Pod>();
    let controller = deployment::controller(
        setup.informers.client().clone(),
        &mut deployments,
        &mut replica_sets,
        &mut pods,
        setup.workloads.deployment_syncs,
        stopped(setup.stop.clone()),
    );
    setup.informers.put(deployments);
    setup.informers.put(replica_sets);
    setup.informers.put(pods);
    Ok(running(controller))
}

/// Starts `daemonset`.
pub(crate) fn start_daemonset(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    if !setup.workloads.on("daemonset") {
        return Ok(None);
    }
    let mut daemon_sets = setup.informers.take::<DaemonSet>();
    let mut nodes = setup.informers.take::<Node>();
    let mut pods = setup.informers.take::<Pod>();
    let controller = daemonset::controller(
        setup.informers.client().clone(),
        &mut daemon_sets,
        &mut nodes,
        &mut pods,
        setup.workloads.daemonset_syncs,
        stopped(setup.stop.clone()),
    );
    setup.informers.put(daemon_sets);
    setup.informers.put(nodes);
    setup.informers.put(pods);
    Ok(running(controller))
}

/// Starts `job` and/or `ttl-after-finished` (one loop serves both).
pub(crate) fn start_job(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    let settings = job::Settings {
        sync_pods: setup.workloads.on("job"),
        ttl_after_finished: setup.workloads.on("ttl-after-finished"),
    };
    if !settings.sync_pods && !settings.ttl_after_finished {
        return Ok(None);
    }
    let mut jobs = setup.informers.take::<Job>();
    let mut pods = setup.informers.take::<Pod>();
    let controller = job::controller(
        setup.informers.client().clone(),
        &mut jobs,
        &mut pods,
        setup.workloads.job_syncs,
        settings,
        stopped(setup.stop.clone()),
    );
    setup.informers.put(jobs);
    setup.informers.put(pods);
    Ok(running(controller))
}

/// Starts `cronjob`.
pub(crate) fn start_cronjob(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    if !setup.workloads.on("cronjob") {
        return Ok(None);
    }
    let mut cron_jobs = setup.informers.take::<CronJob>();
    let mut jobs = setup.informers.take::<Job>();
    let controller = cronjob::controller(
        setup.informers.client().clone(),
        &mut cron_jobs,
        &mut jobs,
        setup.workloads.cron_job_syncs,
        stopped(setup.stop.clone()),
    );
    setup.informers.put(cron_jobs);
    setup.informers.put(jobs);
    Ok(running(controller))
}

/// Starts `statefulset`.
pub(crate) fn start_statefulset(setup: &mut Setup<'_>) -> Result<Option<Running>, ControllerError> {
    if !setup.workloads.on("statefulset") {
        return Ok(None);
    }
    let mut sets = setup.informers.take::<StatefulSet>();
    let mut pods = setup.informers.take::<Pod>();
    let mut revisions = setup.informers.take::<ControllerRevision>();
    let controller = statefulset::controller(
        setup.informers.client().clone(),
        &mut sets,
        &mut pods,
        &mut revisions,
        setup.workloads.statefulset_syncs,
        stopped(setup.stop.clone()),
    );
    setup.informers.put(sets);
    setup.informers.put(pods);
    setup.informers.put(revisions);
    Ok(running(controller))
}
