//! Leader election through a `coordination.k8s.io/v1` Lease, with client-go's semantics, and
//! [`lead`], which runs a component's work only while it holds the Lease.
//!
//! Hand-written rather than kube-lease-manager (which is kube 5 compatible): that crate has no
//! renew deadline or retry period and keeps reporting leadership while renewals fail, whereas
//! kube-scheduler and kube-controller-manager must stop acting once they cannot renew within
//! `--leader-elect-renew-deadline`, before a standby's lease-duration wait can end. This follows
//! client-go's `leaderelection` package: resourceVersion-guarded updates, expiry judged by the
//! local time a record was last *observed* to change (immune to clock skew between hosts), and
//! release on shutdown.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ComponentError;

/// client-go's `JitterFactor`: the renew deadline must exceed 1.2 retry periods.
const JITTER_FACTOR: f64 = 1.2;

/// Leader election settings (the `--leader-elect-*` flags).
#[derive(Debug, Clone)]
pub struct LeaderElectionConfig {
    /// Lease namespace (`kube-system`).
    pub namespace: String,
    /// Lease name (`kube-scheduler`, `kube-controller-manager`).
    pub name: String,
    /// This instance's identity (`holderIdentity`), see [`crate::leader_identity`].
    pub identity: String,
    /// `--leader-elect-lease-duration`: how long non-leaders wait after the last observed
    /// renewal before taking the Lease.
    pub lease_duration: Duration,
    /// `--leader-elect-renew-deadline`: how long the leader keeps retrying a renewal before it
    /// gives up leadership.
    pub renew_deadline: Duration,
    /// `--leader-elect-retry-period`: time between acquire and renew attempts.
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// Checks the timings like client-go's `NewLeaderElector`: the lease duration must exceed
    /// the renew deadline, which must exceed 1.2 retry periods, which must be positive; and a
    /// lease lasts at least one second (a Lease counts whole seconds).
    pub fn validate(&self) -> Result<(), ComponentError> {
        let (lease, renew, retry) = (self.lease_duration, self.renew_deadline, self.retry_period);
        let bad = |m: String| Err(ComponentError::LeaderElectionFlags(m));
        if retry.is_zero() {
            return bad("--leader-elect-retry-period must be greater than zero".into());
        }
        if lease <= renew {
            return bad(format!(
                "--leader-elect-lease-duration ({lease:?}) must be greater than --leader-elect-renew-deadline ({renew:?})"
            ));
        }
        if renew.as_secs_f64() <= JITTER_FACTOR * retry.as_secs_f64() {
            return bad(format!(
                "--leader-elect-renew-deadline ({renew:?}) must be greater than 1.2 × --leader-elect-retry-period ({retry:?})"
            ));
        }
        if lease.as_secs() == 0 {
            return bad(
                "--leader-elect-lease-duration must be at least 1s (a Lease counts whole seconds)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// How holding the lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// Asked to stop.
    Stopped,
    /// Renewal failed for the whole renew deadline; the detail says why.
    Lost(String),
}

/// Outcome of one acquire/renew attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This instance holds the lease now.
    Held,
    /// Another instance holds a lease that has not expired.
    HeldBy(String),
    /// Someone else wrote the lease concurrently; try again.
    Conflict,
}

/// Acquires, renews and releases one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    observed: Option<(LeaseSpec, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn duration_seconds(d: Duration) -> i32 {
    d.as_secs().clamp(1, i32::MAX as u64) as i32
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// An elector for `config` using `client`.
    pub fn new(client: Client, config: LeaderElectionConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaderElectionConfig {
        &self.config
    }

    /// One attempt to take or renew the lease (client-go's `tryAcquireOrRenew`).
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let me = self.config.identity.clone();
        let mut spec = LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(duration_seconds(self.config.lease_duration)),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            lease_transitions: Some(0),
            ..Default::default()
        };
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec.clone()),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.observed = Some((spec, Instant::now()));
                    Ok(Attempt::Held)
                }
                Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let old = current.spec.clone().unwrap_or_default();
        let holder = old.holder_identity.clone().unwrap_or_default();
        // Track when the record last changed, by our clock.
        let changed = self.observed.as_ref().is_none_or(|(spec, _)| *spec != old);
        if changed {
            self.observed = Some((old.clone(), Instant::now()));
        }
        let observed_at = self
            .observed
            .as_ref()
            .map(|(_, t)| *t)
            .unwrap_or_else(Instant::now);
        let held_for = Duration::from_secs(old.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        if !holder.is_empty() && holder != me && observed_at + held_for > Instant::now() {
            return Ok(Attempt::HeldBy(holder));
        }
        if holder == me {
            spec.acquire_time = old.acquire_time.clone();
            spec.lease_transitions = old.lease_transitions;
        } else {
            spec.lease_transitions = Some(old.lease_transitions.unwrap_or(0) + 1);
        }
        let mut lease = current;
        lease.spec = Some(spec.clone());
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observed = Some((spec, Instant::now()));
                Ok(Attempt::Held)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Retries every retry period until the lease is held (`true`) or `stop` fires (`false`).
    pub async fn acquire(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let mut last_holder = String::new();
        loop {
            if *stop.borrow() {
                return false;
            }
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %self.lease_ref(), identity = %self.config.identity, "acquired leadership");
                    return true;
                }
                Ok(Attempt::HeldBy(h)) => {
                    if h != last_holder {
                        tracing::info!(lease = %self.lease_ref(), holder = %h, "lease held by another instance; waiting");
                        last_holder = h;
                    }
                }
                Ok(Attempt::Conflict) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.lease_ref(), error = %e, "cannot acquire lease; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Renews every retry period while leading. Returns [`Leadership::Lost`] when no renewal
    /// succeeded within the renew deadline, [`Leadership::Stopped`] when `stop` fires.
    pub async fn hold(&mut self, stop: &mut watch::Receiver<bool>) -> Leadership {
        let mut last_renew = Instant::now();
        let mut last_problem: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return Leadership::Stopped;
            }
            let deadline = last_renew + self.config.renew_deadline;
            let left = deadline.saturating_duration_since(Instant::now());
            let detail = match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => {
                    last_renew = Instant::now();
                    last_problem = None;
                    continue;
                }
                Ok(Ok(Attempt::HeldBy(h))) => format!("now held by {h}"),
                Ok(Ok(Attempt::Conflict)) => "conflicting update".to_string(),
                Ok(Err(e)) => e.to_string(),
                // Keep the earlier, more telling problem when the last try merely ran out of time.
                Err(_) => last_problem
                    .clone()
                    .unwrap_or_else(|| "renewal timed out".to_string()),
            };
            last_problem = Some(detail.clone());
            if Instant::now() >= deadline {
                return Leadership::Lost(detail);
            }
            tracing::warn!(lease = %self.lease_ref(), %detail, "failed to renew lease; retrying until the renew deadline");
        }
    }

    /// Gives the lease up if this instance holds it, so a standby takes over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        spec.acquire_time = Some(now());
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }
}

/// Runs `work` until `stop` turns true — with `election`, only while holding the Lease.
///
/// With `election`: waits to acquire the Lease (returning `Ok` if stopped first), then runs
/// `work` with a stop signal of its own, which turns true when `stop` does or when leadership
/// is lost. `work` is awaited to the end in either case, then the Lease is released. Lost
/// leadership yields [`ComponentError::LeaderElectionLost`]; an error `work` returns on its own
/// is passed on. Without `election`, `work` runs with `stop` directly.
pub async fn lead<E, W, Fut>(
    client: Client,
    election: Option<LeaderElectionConfig>,
    mut stop: watch::Receiver<bool>,
    work: W,
) -> Result<(), E>
where
    E: From<ComponentError> + Send + 'static,
    W: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
{
    let Some(election) = election else {
        return work(stop).await;
    };
    let mut elector = LeaderElector::new(client, election.clone());
    if !elector.acquire(&mut stop).await {
        return Ok(());
    }
    let (work_stop_tx, work_stop_rx) = watch::channel(false);
    let mut running = AbortOnDrop(tokio::spawn(work(work_stop_rx)));
    let (ended_early, result) = tokio::select! {
        outcome = elector.hold(&mut stop) => (None, match outcome {
            Leadership::Stopped => Ok(()),
            Leadership::Lost(detail) => Err(ComponentError::LeaderElectionLost {
                namespace: election.namespace.clone(),
                name: election.name.clone(),
                detail,
            }),
        }),
        ended = &mut running.0 => (Some(ended), Ok(())),
    };
    let ended = match ended_early {
        Some(ended) => ended,
        None => {
            let _ = work_stop_tx.send(true);
            (&mut running.0).await
        }
    };
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "cannot release the leader Lease; a standby takes over when it expires");
    }
    result.map_err(E::from)?;
    match ended {
        Ok(r) => r,
        Err(join) => Err(E::from(ComponentError::WorkFailed(format!(
            "panicked or was cancelled: {join}"
        )))),
    }
}

/// Aborts the task when dropped, so dropping [`lead`]'s future stops the work too.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(lease: u64, renew: u64, retry_ms: u64) -> LeaderElectionConfig {
        LeaderElectionConfig {
            namespace: "kube-system".into(),
            name: "x".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn timings_follow_client_go() {
        config(15, 10, 2000).validate().unwrap();
        assert!(config(10, 10, 2000).validate().is_err(), "lease > renew");
        assert!(
            config(15, 10, 9000).validate().is_err(),
            "renew > 1.2 retry"
        );
        assert!(config(15, 10, 0).validate().is_err(), "retry > 0");
        let mut short = config(1, 0, 100);
        short.lease_duration = Duration::from_millis(900);
        short.renew_deadline = Duration::from_millis(500);
        assert!(short.validate().is_err(), "lease >= 1s");
    }
}
