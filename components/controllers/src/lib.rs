//! `kinit controller-manager`: kinit's kube-controller-manager.
//!
//! - [`workloads`]: Deployment, ReplicaSet, DaemonSet, Job (and TTL after finished), CronJob,
//!   StatefulSet;
//! - [`cluster`]: Endpoints/EndpointSlices, namespace deletion, garbage collection, node IPAM,
//!   node lifecycle, pod garbage collection, CSR approval and signing;
//! - [`registry`]: every controller by its `--controllers` name, and how it starts;
//! - [`informer`]: the shared informers that feed all of them — one watch per kind for the
//!   whole process;
//! - [`args`]: kube-controller-manager's flags.
//!
//! [`run`] adds what every component does at start (kinit-component-base): the API client,
//! /healthz, SIGTERM handling and Lease leader election.

pub mod args;
pub mod cluster;
pub mod error;
pub mod informer;
pub mod registry;
pub mod workloads;

use futures::stream::{FuturesUnordered, StreamExt};
use kinit_component_base::{Healthz, LeaderElectionConfig};
use kube::Client;
use tokio::sync::watch;

pub use args::{cluster_options, ClusterControllerFlags, ControllerManagerArgs};
pub use cluster::ClusterControllerOptions;
pub use error::{ControllerError, ReconcileError};
pub use workloads::WorkloadOptions;

/// Runs the enabled controllers with `client` until `stop` turns true. With `election`, waits
/// for the Lease first, fails with the component error `LeaderElectionLost` when it cannot be
/// renewed in time, and releases it on stop. Fails with [`ControllerError::ControllerStopped`]
/// when a controller ends on its own. `cluster: None` runs no cluster controller.
pub async fn run_with_client(
    client: Client,
    workloads: WorkloadOptions,
    cluster: Option<ClusterControllerOptions>,
    election: Option<LeaderElectionConfig>,
    stop: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    kinit_component_base::lead(client.clone(), election, stop, move |stop| {
        run_controllers(client, workloads, cluster, stop)
    })
    .await
}

/// Sets every enabled controller up on one set of shared informers, starts the informers,
/// and runs the controllers once every cache holds its first list (client-go's
/// `WaitForCacheSync`), until `stop` turns true.
pub(crate) async fn run_controllers(
    client: Client,
    workloads: WorkloadOptions,
    cluster: Option<ClusterControllerOptions>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    let mut informers = informer::Informers::new(client);
    let started = registry::start_all(&mut registry::Setup {
        informers: &mut informers,
        workloads: &workloads,
        cluster: cluster.as_ref(),
        stop: stop.clone(),
    })?;
    if started.is_empty() {
        let _ = stop.wait_for(|s| *s).await;
        return Ok(());
    }
    let names: Vec<&str> = started.iter().map(|(n, _, _)| *n).collect();
    tracing::info!(controllers = ?names, watches = informers.len(), "starting controllers");
    let running = informers.run();
    let watches = running.watches;
    let mut watches = std::pin::pin!(watches);
    tokio::select! {
        _ = running.synced => {}
        _ = &mut watches => return Err(stopped("informers", "every watch ended".into())),
        _ = stop.wait_for(|s| *s) => return Ok(()),
    }
    let mut controllers: FuturesUnordered<_> = started
        .into_iter()
        .map(|(name, group, run)| {
            let mut stop = stop.clone();
            async move {
                let result = if group == registry::Group::Workloads {
                    // Ends on stop by itself, after its running reconciles.
                    run.await
                } else {
                    tokio::select! {
                        r = run => r,
                        _ = stop.wait_for(|s| *s) => Ok(()),
                    }
                };
                (name, result)
            }
        })
        .collect();
    let mut stop_wait = stop.clone();
    let stopping = stop_wait.wait_for(|s| *s);
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            ended = controllers.next() => match ended {
                None => return Ok(()),
                Some((name, result)) if !*stop.borrow() => {
                    return Err(match result {
                        Err(e) => stopped(name, e.to_string()),
                        Ok(()) => stopped(name, "ended unexpectedly".into()),
                    });
                }
                Some(_) => {}
            },
            _ = &mut stopping => break,
            _ = &mut watches => return Err(stopped("informers", "every watch ended".into())),
        }
    }
    // Stopping: the workload controllers finish their running reconciles, the others end at
    // once.
    while let Some((name, result)) = controllers.next().await {
        if let Err(e) = result {
            tracing::warn!(controller = name, error = %e, "controller failed while stopping");
        }
    }
    Ok(())
}

fn stopped(name: &str, message: String) -> ControllerError {
    ControllerError::ControllerStopped {
        name: name.to_string(),
        message,
    }
}

/// `kinit controller-manager`: serves /healthz, elects a leader if asked, and runs the
/// enabled controllers until SIGTERM/SIGINT.
pub async fn run(args: ControllerManagerArgs) -> Result<(), ControllerError> {
    args.validate()?;
    let workloads = WorkloadOptions::from_args(&args)?;
    let cluster = cluster_options(&args.cluster, &args.controllers)?;
    let stop = kinit_component_base::stop_on_signals()?;
    let client = kinit_component_base::client(args.kubeconfig.as_deref()).await?;
    Healthz::spawn(args.bind_address, args.secure_port, stop.clone()).await?;
    let election = args.leader_elect.then(|| args.election_config());
    run_with_client(client, workloads, Some(cluster), election, stop).await
}
