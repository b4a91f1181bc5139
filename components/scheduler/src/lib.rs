//! kinit's pod scheduler (`kinit scheduler`), the cluster's kube-scheduler.
//!
//! It watches nodes and pods through kube-rs reflectors, keeps a cache of what bound pods use on
//! each node, and places every pod that has no node yet (`spec.schedulerName` empty or
//! `default-scheduler`): [`filter`] rejects nodes the pod cannot run on, [`score`] ranks the rest,
//! [`algorithm`] picks the best (round robin among equals), and the choice is written through the
//! `pods/binding` subresource. A pod that fits nowhere gets a `FailedScheduling` Event and
//! `PodScheduled=False` (reason `Unschedulable`) with kube-scheduler's message, and is retried
//! with back-off when nodes or pods change. With `--leader-elect` only the holder of the
//! `kube-system/kube-scheduler` Lease schedules.
//!
//! The filter and score functions are pure functions over k8s-openapi types, unit-tested next to
//! their code; `tests/` runs the whole scheduler against kinit's real API server.

pub mod algorithm;
pub mod args;
pub mod cache;
pub mod error;
pub mod events;
pub mod filter;
pub mod healthz;
pub mod leader;
pub mod node_info;
pub mod queue;
pub mod resources;
pub mod scheduler;
pub mod score;
#[cfg(test)]
mod testutil;

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::sync::watch;

pub use args::SchedulerArgs;
pub use error::SchedulerError;
pub use leader::{LeaderElectionConfig, LeaderElector, Leadership};
pub use scheduler::SchedulerOptions;

/// `<hostname>_<random>`, like kube-scheduler's leader election identity.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{host}_{random:016x}")
}

/// Builds an API client from `--kubeconfig`, or from the environment (in-cluster service account
/// or `$KUBECONFIG`/`~/.kube/config`) without it.
pub async fn client_from(args: &SchedulerArgs) -> Result<Client, SchedulerError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let err = |message: String| SchedulerError::Kubeconfig {
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
            .map_err(|e| SchedulerError::Kubeconfig {
                path: Default::default(),
                message: e.to_string(),
            })?,
    };
    Client::try_from(config).map_err(SchedulerError::Client)
}

/// Schedules with `client` until `stop` turns true. With `election`, waits to hold the Lease
/// first, stops with [`SchedulerError::LeaderElectionLost`] if it cannot be renewed in time, and
/// releases it on stop.
pub async fn run_with_client(
    client: Client,
    options: SchedulerOptions,
    election: Option<LeaderElectionConfig>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SchedulerError> {
    let Some(election) = election else {
        scheduler::run_loop(client, options, stop).await;
        return Ok(());
    };
    let mut elector = LeaderElector::new(client.clone(), election.clone());
    if !elector.acquire(&mut stop).await {
        return Ok(());
    }
    // The loop stops when either the caller stops us or leadership is lost.
    let (loop_stop_tx, loop_stop_rx) = watch::channel(false);
    let scheduling = tokio::spawn(scheduler::run_loop(client, options, loop_stop_rx));
    let outcome = elector.hold(&mut stop).await;
    let _ = loop_stop_tx.send(true);
    let _ = scheduling.await;
    match outcome {
        Leadership::Stopped => {
            if let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "cannot release the leader Lease; a standby takes over when it expires");
            }
            Ok(())
        }
        Leadership::Lost(detail) => Err(SchedulerError::LeaderElectionLost {
            namespace: election.namespace,
            name: election.name,
            detail,
        }),
    }
}

/// `kinit scheduler`: serves /healthz, elects a leader if asked, and schedules until SIGTERM or
/// SIGINT.
pub async fn run(args: SchedulerArgs) -> Result<(), SchedulerError> {
    args.validate()?;
    let client = client_from(&args).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(SchedulerError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
        }
        let _ = stop_tx.send(true);
    });
    if args.secure_port != 0 {
        let healthz =
            healthz::Healthz::bind(SocketAddr::new(args.bind_address, args.secure_port)).await?;
        tracing::info!(address = %SocketAddr::new(args.bind_address, args.secure_port), "serving /healthz over HTTPS");
        tokio::spawn(healthz.serve(stop_rx.clone()));
    }
    let options = SchedulerOptions::default();
    let election = args.leader_elect.then(|| LeaderElectionConfig {
        namespace: args.leader_elect_resource_namespace.clone(),
        name: args.leader_elect_resource_name.clone(),
        identity: options.identity.clone(),
        lease_duration: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry_period: args.leader_elect_retry_period,
    });
    run_with_client(client, options, election, stop_rx).await
}
