//! Workload controllers of `kinit controller-manager`, and the controller manager itself.
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
//! Each is a kube-rs `Controller` running an idempotent `reconcile(object, ctx)`. One watch per
//! kind ([`informer`]) feeds all of them. [`run`] adds the flags, /healthz, SIGTERM handling and
//! Lease leader election; [`run_with`] also runs other controller sets (the cluster controllers)
//! under the same leadership.

pub mod args;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod error;
pub mod expectations;
pub mod healthz;
pub mod informer;
pub mod job;
pub mod leader;
pub mod manage;
pub mod pods;
pub mod replicaset;
pub mod rollout;
pub mod statefulset;

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::watch;

pub use args::{ClusterControllerFlags, ControllerManagerArgs};
pub use error::{ControllerError, ReconcileError};
pub use leader::{ElectionConfig, Elector, Outcome};

/// Error type of an extra controller set.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Another set of controllers to run under the same leadership: given the API client, returns a
/// future that runs them until it is dropped (e.g. `kinit_cluster_controllers::run`).
pub type ExtraControllers =
    Box<dyn FnOnce(Client) -> BoxFuture<'static, Result<(), BoxError>> + Send>;

/// What the workload controllers run with.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Enabled controller names (`deployment`, `replicaset`, `daemonset`, `job`,
    /// `ttl-after-finished`); other names are ignored.
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

    fn on(&self, name: &str) -> bool {
        self.enabled.contains(name)
    }
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            enabled: args::WORKLOAD_CONTROLLERS
                .iter()
                .map(|s| s.to_string())
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

/// Runs the enabled workload controllers with `client` until `stop` turns true.
pub async fn run_workloads(client: Client, options: WorkloadOptions, stop: watch::Receiver<bool>) {
    let mut pods =
        informer::Informer::new(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let mut replica_sets = informer::Informer::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut nodes =
        informer::Informer::new(Api::<Node>::all(client.clone()), watcher::Config::default());
    let mut jobs =
        informer::Informer::new(Api::<Job>::all(client.clone()), watcher::Config::default());
    let mut revisions = informer::Informer::new(
        Api::<ControllerRevision>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut controllers: Vec<BoxFuture<'static, ()>> = Vec::new();
    let (mut need_rs, mut need_nodes, mut need_jobs, mut need_revisions) =
        (false, false, false, false);
    if options.on("replicaset") {
        need_rs = true;
        controllers.push(replicaset::controller(
            client.clone(),
            &mut replica_sets,
            &mut pods,
            options.replicaset_syncs,
            stopped(stop.clone()),
        ));
    }
    if options.on("deployment") {
        need_rs = true;
        controllers.push(deployment::controller(
            client.clone(),
            &mut replica_sets,
            &mut pods,
            options.deployment_syncs,
            stopped(stop.clone()),
        ));
    }
    if options.on("daemonset") {
        need_nodes = true;
        controllers.push(daemonset::controller(
            client.clone(),
            &mut nodes,
            &mut pods,
            options.daemonset_syncs,
            stopped(stop.clone()),
        ));
    }
    if options.on("job") || options.on("ttl-after-finished") {
        controllers.push(job::controller(
            client.clone(),
            &mut pods,
            options.job_syncs,
            job::Settings {
                sync_pods: options.on("job"),
                ttl_after_finished: options.on("ttl-after-finished"),
            },
            stopped(stop.clone()),
        ));
    }
    if options.on("statefulset") {
        need_revisions = true;
        controllers.push(statefulset::controller(
            client.clone(),
            &mut pods,
            &mut revisions,
            options.statefulset_syncs,
            stopped(stop.clone()),
        ));
    }
    if options.on("cronjob") {
        need_jobs = true;
        controllers.push(cronjob::controller(
            client.clone(),
            &mut jobs,
            options.cron_job_syncs,
            stopped(stop.clone()),
        ));
    }
    if controllers.is_empty() {
        stopped(stop).await;
        return;
    }
    tracing::info!(controllers = ?options.enabled.iter().filter(|c| args::WORKLOAD_CONTROLLERS.contains(&c.as_str())).collect::<Vec<_>>(), "starting workload controllers");
    // Like client-go's WaitForCacheSync: no controller syncs before the shared caches hold the
    // first full list (a ReplicaSet synced against an empty pod cache creates pods for ones
    // that already exist).
    let mut synced: Vec<BoxFuture<'static, ()>> = vec![cache_synced(pods.store())];
    let mut informers: Vec<BoxFuture<'static, ()>> = vec![Box::pin(pods.run())];
    if need_rs {
        synced.push(cache_synced(replica_sets.store()));
        informers.push(Box::pin(replica_sets.run()));
    }
    if need_nodes {
        synced.push(cache_synced(nodes.store()));
        informers.push(Box::pin(nodes.run()));
    }
    if need_jobs {
        synced.push(cache_synced(jobs.store()));
        informers.push(Box::pin(jobs.run()));
    }
    if need_revisions {
        synced.push(cache_synced(revisions.store()));
        informers.push(Box::pin(revisions.run()));
    }
    let informers = futures::future::join_all(informers);
    let controllers = async move {
        futures::future::join_all(synced).await;
        futures::future::join_all(controllers).await;
    };
    tokio::select! {
        _ = controllers => {}
        _ = informers => {}
    }
}

/// Resolves once `store` has been filled by its first list.
fn cache_synced<K>(store: kube::runtime::reflector::Store<K>) -> BoxFuture<'static, ()>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
{
    Box::pin(async move {
        // Err only when the writer is gone, i.e. the informer stopped; the select ends then.
        let _ = store.wait_until_ready().await;
    })
}

/// `<hostname>_<random>`, like kube-controller-manager's leader election identity.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{host}_{random:016x}")
}

/// Builds a client from `--kubeconfig`, or from the environment without it.
pub async fn client_from(args: &ControllerManagerArgs) -> Result<Client, ControllerError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let err = |message: String| ControllerError::Kubeconfig {
                path: path.clone(),
                message,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ControllerError::Kubeconfig {
                path: Default::default(),
                message: e.to_string(),
            })?,
    };
    Client::try_from(config).map_err(ControllerError::Client)
}

/// Runs the workload controllers and `extra` with `client` until `stop` turns true. With
/// `election`, waits for the Lease first, fails with [`ControllerError::LeaderElectionLost`]
/// when it cannot be renewed in time, and releases it on stop. Fails with
/// [`ControllerError::ControllerStopped`] when an extra set ends on its own.
pub async fn run_with_client(
    client: Client,
    options: WorkloadOptions,
    extra: Vec<(String, ExtraControllers)>,
    election: Option<ElectionConfig>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    let mut elector = election.clone().map(|e| Elector::new(client.clone(), e));
    if let Some(elector) = elector.as_mut() {
        if !elector.acquire(&mut stop).await {
            return Ok(());
        }
    }
    let (inner_tx, inner_rx) = watch::channel(false);
    let workloads = tokio::spawn(run_workloads(client.clone(), options, inner_rx));
    let mut extras: FuturesUnordered<_> = extra
        .into_iter()
        .map(|(name, start)| {
            tracing::info!(controllers = %name, "starting controller set");
            let handle = tokio::spawn(start(client.clone()));
            async move { (name, handle.await) }
        })
        .collect();
    let extras_running = !extras.is_empty();
    let result = tokio::select! {
        outcome = async {
            match elector.as_mut() {
                Some(e) => e.hold(&mut stop).await,
                None => {
                    let _ = stop.wait_for(|s| *s).await;
                    Outcome::Stopped
                }
            }
        } => match (outcome, &election) {
            (Outcome::Stopped, _) => Ok(()),
            (Outcome::Lost(detail), Some(e)) => Err(ControllerError::LeaderElectionLost {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                detail,
            }),
            (Outcome::Lost(detail), None) => Err(ControllerError::ControllerStopped { name: "leader election".into(), message: detail }),
        },
        Some((name, ended)) = extras.next(), if extras_running => Err(ControllerError::ControllerStopped {
            name,
            message: match ended {
                Ok(Ok(())) => "ended unexpectedly".into(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("panicked or was cancelled: {e}"),
            },
        }),
    };
    let _ = inner_tx.send(true);
    drop(extras); // JoinHandles do not abort on drop; the runtime shutting down ends them.
    let _ = workloads.await;
    if let Some(e) = elector.as_mut() {
        if let Err(err) = e.release().await {
            tracing::warn!(error = %err, "cannot release the leader Lease; a standby takes over when it expires");
        }
    }
    result
}

/// `kinit controller-manager`: the workload controllers only. See [`run_with`].
pub async fn run(args: ControllerManagerArgs) -> Result<(), ControllerError> {
    run_with(args, Vec::new()).await
}

/// `kinit controller-manager` with additional controller sets (named, for logs) started under
/// the same leadership: serves /healthz, elects a leader if asked, runs until SIGTERM/SIGINT.
pub async fn run_with(
    args: ControllerManagerArgs,
    extra: Vec<(String, ExtraControllers)>,
) -> Result<(), ControllerError> {
    args.validate()?;
    let client = client_from(&args).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ControllerError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
        }
        let _ = stop_tx.send(true);
    });
    if args.secure_port != 0 {
        let address = SocketAddr::new(args.bind_address, args.secure_port);
        let healthz = healthz::Healthz::bind(address).await?;
        tracing::info!(%address, "serving /healthz over HTTPS");
        tokio::spawn(healthz.serve(stop_rx.clone()));
    }
    let election = args.leader_elect.then(|| ElectionConfig {
        namespace: args.leader_elect_resource_namespace.clone(),
        name: args.leader_elect_resource_name.clone(),
        identity: default_identity(),
        lease_duration: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry_period: args.leader_elect_retry_period,
    });
    let options = WorkloadOptions::from_args(&args)?;
    run_with_client(client, options, extra, election, stop_rx).await
}
