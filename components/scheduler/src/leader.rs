//! Leader election through a `coordination.k8s.io/v1` Lease, with client-go's semantics.
//!
//! Hand-written rather than kube-lease-manager (which is kube 5 compatible): that crate has no
//! renew deadline or retry period and keeps reporting leadership while renewals fail, whereas
//! kube-scheduler must stop scheduling once it cannot renew within `--leader-elect-renew-deadline`.
//! This follows client-go's `leaderelection` package: resourceVersion-guarded updates, expiry
//! judged by the local time a record was last *observed* to change (immune to clock skew), and
//! release on shutdown.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaderElectionConfig {
    /// Lease namespace (`kube-system`).
    pub namespace: String,
    /// Lease name (`kube-scheduler`).
    pub name: String,
    /// This instance's identity (`holderIdentity`).
    pub identity: String,
    /// `--leader-elect-lease-duration`.
    pub lease_duration: Duration,
    /// `--leader-elect-renew-deadline`.
    pub renew_deadline: Duration,
    /// `--leader-elect-retry-period`.
    pub retry_period: Duration,
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
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
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
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
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
