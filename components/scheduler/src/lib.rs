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
pub mod node_info;
pub mod queue;
pub mod resources;
pub mod scheduler;
pub mod score;
#[cfg(test)]
mod testutil;

use kinit_component_base::Healthz;
use kube::Client;
use tokio::sync::watch;

pub use args::SchedulerArgs;
pub use error::SchedulerError;
/// Lease leader election (shared by every component), as [`run_with_client`] takes it.
pub use kinit_component_base::leader;
pub use kinit_component_base::{LeaderElectionConfig, LeaderElector, Leadership};
pub use scheduler::SchedulerOptions;

/// Schedules with `client` until `stop` turns true. With `election`, waits to hold the Lease
/// first, stops with the component error `LeaderElectionLost` if it cannot be renewed in time,
/// and releases it on stop.
pub async fn run_with_client(
    client: Client,
    options: SchedulerOptions,
    election: Option<LeaderElectionConfig>,
    stop: watch::Receiver<bool>,
) -> Result<(), SchedulerError> {
    kinit_component_base::lead(client.clone(), election, stop, move |stop| async move {
        scheduler::run_loop(client, options, stop).await;
        Ok(())
    })
    .await
}

/// `kinit scheduler`: serves /healthz, elects a leader if asked, and schedules until SIGTERM or
/// SIGINT.
pub async fn run(args: SchedulerArgs) -> Result<(), SchedulerError> {
    args.validate()?;
    let stop = kinit_component_base::stop_on_signals()?;
    let client = kinit_component_base::client(args.kubeconfig.as_deref()).await?;
    Healthz::spawn(args.bind_address, args.secure_port, stop.clone()).await?;
    let options = SchedulerOptions::default();
    let election = args
        .leader_elect
        .then(|| args.election_config(options.identity.clone()));
    run_with_client(client, options, election, stop).await
}
