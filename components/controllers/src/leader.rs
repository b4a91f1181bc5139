//! Leader election through the `coordination.k8s.io/v1` Lease `kube-system/kube-controller-manager`,
//! with client-go's semantics.
//!
//! Hand-written rather than kube-lease-manager (kube 5 compatible): that crate has no renew
//! deadline, and a controller manager must stop acting as soon as it cannot renew within
//! `--leader-elect-renew-deadline`, before a standby's lease-duration wait can end. Updates are
//! guarded by resourceVersion; expiry is judged by the local time the record was last seen to
//! change (immune to clock skew between hosts); the lease is released on shutdown.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::is_conflict;

/// Election settings (`--leader-elect-*`).
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This instance's `holderIdentity`.
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before giving up.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

/// Result of one acquire/renew attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease.
    Held,
    /// Someone else holds an unexpired lease.
    HeldBy(String),
    /// A concurrent write won; try again.
    Conflict,
}

/// How leading ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// We were asked to stop.
    Stopped,
    /// No renewal succeeded within the renew deadline.
    Lost(String),
}

/// Acquires, renews and releases one Lease.
pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    observed: Option<(LeaseSpec, Instant)>,
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    /// An elector using `client`.
    pub fn new(client: Client, config: ElectionConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// One attempt (client-go `tryAcquireOrRenew`).
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let me = self.config.identity.clone();
        let mut spec = LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(
                self.config
                    .lease_duration
                    .as_secs()
                    .clamp(1, i32::MAX as u64) as i32,
            ),
            acquire_time: Some(micro_now()),
            renew_time: Some(micro_now()),
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
        if self.observed.as_ref().is_none_or(|(s, _)| *s != old) {
            self.observed = Some((old.clone(), Instant::now()));
        }
        let seen_at = self
            .observed
            .as_ref()
            .map(|(_, t)| *t)
            .unwrap_or_else(Instant::now);
        let holder = old.holder_identity.clone().unwrap_or_default();
        let valid_for = Duration::from_secs(old.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        if !holder.is_empty() && holder != me && seen_at + valid_for > Instant::now() {
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

    /// Retries every retry period until leading (`true`) or `stop` fires (`false`).
    pub async fn acquire(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let mut last = String::new();
        loop {
            if *stop.borrow() {
                return false;
            }
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %self.lease(), identity = %self.config.identity, "acquired leadership");
                    return true;
                }
                Ok(Attempt::HeldBy(h)) if h != last => {
                    tracing::info!(lease = %self.lease(), holder = %h, "lease held by another instance; waiting");
                    last = h;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.lease(), error = %e, "cannot acquire lease; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Renews every retry period; returns when `stop` fires or renewal failed for the whole
    /// renew deadline.
    pub async fn hold(&mut self, stop: &mut watch::Receiver<bool>) -> Outcome {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return Outcome::Stopped;
            }
            let deadline = renewed + self.config.renew_deadline;
            let left = deadline.saturating_duration_since(Instant::now());
            let problem = match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => {
                    renewed = Instant::now();
                    continue;
                }
                Ok(Ok(Attempt::HeldBy(h))) => format!("now held by {h}"),
                Ok(Ok(Attempt::Conflict)) => "conflicting update".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "renewal timed out".to_string(),
            };
            if Instant::now() >= deadline {
                return Outcome::Lost(problem);
            }
            tracing::warn!(lease = %self.lease(), %problem, "failed to renew lease; retrying until the renew deadline");
        }
    }

    /// Gives the lease up if held, so a standby takes over at once.
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
        spec.renew_time = Some(micro_now());
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }
}
