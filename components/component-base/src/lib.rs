//! What every kinit component (`kinit scheduler`, `kinit controller-manager`, `kinit agent`,
//! `kinit dns`, the proxy inside the agent) does at start, in one place — the role of
//! Kubernetes' `component-base`:
//!
//! - [`client`]: an API client from `--kubeconfig`, or from the environment (in-cluster service
//!   account, `$KUBECONFIG`, `~/.kube/config`) without it;
//! - [`identity`]: the host name, and the `<hostname>_<uuid>` leader election identity;
//! - [`leader`]: client-go style leader election on a `coordination.k8s.io/v1` Lease, and
//!   [`leader::lead`], which runs work only while leading;
//! - [`healthz`]: the HTTPS `/healthz`, `/livez`, `/readyz` endpoint of the control-plane
//!   components;
//! - [`signals`]: SIGTERM/SIGINT as a stop signal for graceful shutdown;
//! - [`logging`]: the `tracing` subscriber every component logs through;
//! - [`duration`]: Go-syntax duration flag values (`15s`, `1m30s`).

#![warn(missing_docs)]

pub mod client;
pub mod duration;
pub mod error;
pub mod healthz;
pub mod identity;
pub mod leader;
pub mod logging;
pub mod signals;

pub use client::{client, kube_config};
pub use duration::{parse_duration, DurationError};
pub use error::ComponentError;
pub use healthz::Healthz;
pub use identity::{hostname, leader_identity};
pub use leader::{lead, Attempt, LeaderElectionConfig, LeaderElector, Leadership};
pub use logging::init_logging;
pub use signals::{stop_on_signals, ShutdownSignals};
