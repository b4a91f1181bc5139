//! The Job controller: runs pods until `completions` succeed (or, without completions, until one
//! succeeds and the rest finish), at most `parallelism` at a time; fails the Job with
//! `BackoffLimitExceeded` after more than `backoffLimit` pod failures (re-creating failed pods
//! with Kubernetes' 10 s·2ⁿ back-off, capped at 6 min) or `DeadlineExceeded` after
//! `activeDeadlineSeconds`; sets `Complete`/`Failed` (with `SuccessCriteriaMet`/
//! `FailureTarget`), counts and times; deletes finished Jobs after `ttlSecondsAfterFinished`
//! (the ttl-after-finished controller's job).
//!
//! Counts are taken from the pods that exist and never decrease, so pods removed after
//! finishing (garbage collection) do not undo progress; Kubernetes additionally tracks them
//! with a finalizer, which kinit does not.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use serde_json::json;

use super::expectations::Expectations;
use super::manage::{create_pods, delete_pods, BURST};
use super::pods::{self, key};
use crate::error::{is_not_found, ReconcileError};
use crate::informer::{Change, Informer};

/// Which parts of the Job controller run (`--controllers` `job` and `ttl-after-finished`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Run pods and keep status (the `job` controller).
    pub sync_pods: bool,
    /// Delete finished Jobs after `ttlSecondsAfterFinished` (`ttl-after-finished`).
    pub ttl_after_finished: bool,
}

/// Shared state of the Job controller.
pub struct Context {
    /// Enabled parts.
    pub settings: Settings,
    /// API client.
    pub client: Client,
    /// Cache of all pods.
    pub pods: Store<Pod>,
    /// Outstanding creates/deletes per Job.
    pub expectations: Expectations,
}

/// Builds the controller; the future runs until `stop` resolves.
pub fn controller(
    client: Client,
    jobs_informer: &mut Informer<Job>,
    pods_informer: &mut Informer<Pod>,
    concurrency: u16,
    settings: Settings,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let expectations = Expectations::new();
    let exp = expectations.clone();
    let pod_triggers = pods_informer.triggers(move |pod: &Pod, _, change| {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let Some(owner) = pods::controller_ref(&pod.metadata).filter(|r| r.kind == "Job") else {
            return Vec::new();
        };
        let k = format!("{ns}/{}", owner.name);
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        match change {
            Change::Added if pod.metadata.deletion_timestamp.is_none() => exp.creation_observed(&k),
            Change::Updated if pod.metadata.deletion_timestamp.is_none() => {}
            _ => exp.deletion_observed(&k, name),
        }
        vec![ObjectRef::<Job>::new(&owner.name).within(&ns)]
    });
    let ctx = Arc::new(Context {
        settings,
        client,
        pods: pods_informer.store(),
        expectations,
    });
    Controller::for_stream(jobs_informer.objects(), jobs_informer.store())
        .reconcile_on(pod_triggers)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .boxed()
}

fn error_policy(job: Arc<Job>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(job = %key(&job.metadata), %error, "sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The `Complete` or `Failed` condition of a finished Job (status `True`).
pub(crate) fn finished_condition(status: &JobStatus) -> Option<&JobCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn condition(
    type_: &str,
    reason: Option<&str>,
    message: Option<String>,
    now: &Time,
) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.map(String::from),
        message,
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// When a pod finished: latest container termination, else its creation time.
fn finish_time(pod: &Pod) -> Option<Timestamp> {
    let s = pod.status.as_ref()?;
    s.container_statuses
        .iter()
        .flatten()
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max()
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Kubernetes' pod-failure back-off: 10 s doubled per earlier failure, at most 6 minutes.
pub fn failure_backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let secs = 10u64.saturating_mul(1u64 << (failures - 1).min(10) as u32);
    Duration::from_secs(secs.min(360))
}

/// What a sync decides from the counts (pure, for tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep `want` pods active.
    Run {
        /// Wanted active pods.
        want: i32,
    },
    /// Every wanted completion succeeded.
    Complete,
    /// More than backoffLimit failures.
    BackoffLimitExceeded,
}

/// Decides from (succeeded, failed, active) and the spec.
pub fn verdict(job: &Job, succeeded: i32, failed: i32, active: i32) -> Verdict {
    let spec = job.spec.clone().unwrap_or_default();
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    if failed > backoff_limit {
        return Verdict::BackoffLimitExceeded;
    }
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    match spec.completions {
        Some(c) => {
            if succeeded >= c {
                Verdict::Complete
            } else {
                Verdict::Run {
                    want: parallelism.min(c - succeeded),
                }
            }
        }
        None => {
            if succeeded > 0 && active == 0 {
                Verdict::Complete
            } else if succeeded > 0 {
                Verdict::Run { want: active }
            } else {
                Verdict::Run { want: parallelism }
            }
        }
    }
}

/// One sync of a Job.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let job_key = key(&job.metadata);
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let now = pods::now_time();

    if let Some(done) = finished_condition(&old) {
        // ttlSecondsAfterFinished.
        let Some(ttl) = spec
            .ttl_seconds_after_finished
            .filter(|_| ctx.settings.ttl_after_finished)
        else {
            return Ok(Action::await_change());
        };
        let finished = old
            .completion_time
            .as_ref()
            .or(done.last_transition_time.as_ref())
            .map(|t| t.0)
            .unwrap_or(now.0);
        let expires = finished.as_second() + i64::from(ttl);
        if now.0.as_second() >= expires {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(job = %job_key, "deleted finished job after ttlSecondsAfterFinished")
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(ReconcileError::api(format!(
                        "delete finished job {job_key}"
                    ))(e))
                }
            }
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::from_secs(
            (expires - now.0.as_second()) as u64 + 1,
        )));
    }

    if !ctx.settings.sync_pods {
        return Ok(Action::await_change());
    }
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && pods::is_controlled_by(&p.metadata, &uid)
        })
        .collect();
    let active: Vec<&Pod> = owned
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| pods::is_active(p))
        .collect();
    let count = |phase: &str| owned.iter().filter(|p| pods::phase(p) == phase).count() as i32;
    let succeeded = count("Succeeded").max(old.succeeded.unwrap_or(0));
    let on_failure_restarts: i32 = if spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure")
    {
        active
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };
    let failed_pods = count("Failed").max(old.failed.unwrap_or(0));
    let failures = failed_pods + on_failure_restarts;
    let ready = active.iter().filter(|p| pods::is_ready(p)).count() as i32;

    let mut status = old.clone();
    if status.start_time.is_none() && spec.suspend != Some(true) {
        status.start_time = Some(now.clone());
    }
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let mut requeue: Option<Duration> = None;
    let mut error = None;
    let satisfied = ctx.expectations.satisfied(&job_key);

    let deadline_exceeded = match (spec.active_deadline_seconds, status.start_time.as_ref()) {
        (Some(d), Some(start)) => {
            let at = start.0.as_second() + d;
            if now.0.as_second() >= at {
                true
            } else {
                requeue = Some(Duration::from_secs((at - now.0.as_second()) as u64 + 1));
                false
            }
        }
        _ => false,
    };
    let mut active_count = active.len() as i32;
    let fail = |reason: &str, message: &str, conditions: &mut Vec<JobCondition>| {
        conditions.push(condition(
            "FailureTarget",
            Some(reason),
            Some(message.into()),
            &now,
        ));
        conditions.push(condition(
            "Failed",
            Some(reason),
            Some(message.into()),
            &now,
        ));
    };
    let v = verdict(&job, succeeded, failures, active_count);
    if deadline_exceeded || v == Verdict::BackoffLimitExceeded {
        let (reason, message) = if deadline_exceeded {
            (
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )
        } else {
            (
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        };
        let victims: Vec<Pod> = active.iter().map(|p| (*p).clone()).collect();
        delete_pods(&ctx.client, &ns, &victims, &ctx.expectations, &job_key).await?;
        active_count = 0;
        fail(reason, message, &mut conditions);
        tracing::info!(job = %job_key, reason, "job failed");
    } else if spec.suspend == Some(true) {
        if satisfied && !active.is_empty() {
            let victims: Vec<Pod> = active.iter().map(|p| (*p).clone()).collect();
            delete_pods(&ctx.client, &ns, &victims, &ctx.expectations, &job_key).await?;
            active_count = 0;
        }
        if !conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
        {
            conditions.retain(|c| c.type_ != "Suspended");
            conditions.push(condition(
                "Suspended",
                Some("JobSuspended"),
                Some("Job suspended".into()),
                &now,
            ));
        }
    } else {
        conditions.retain(|c| c.type_ != "Suspended");
        match v {
            Verdict::Complete => {
                if satisfied && !active.is_empty() {
                    let victims: Vec<Pod> = active.iter().map(|p| (*p).clone()).collect();
                    delete_pods(&ctx.client, &ns, &victims, &ctx.expectations, &job_key).await?;
                    active_count = 0;
                }
                conditions.push(condition(
                    "SuccessCriteriaMet",
                    Some("CompletionsReached"),
                    Some("Reached expected number of succeeded pods".into()),
                    &now,
                ));
                conditions.push(condition(
                    "Complete",
                    Some("CompletionsReached"),
                    Some("Reached expected number of succeeded pods".into()),
                    &now,
                ));
                status.completion_time = Some(now.clone());
                tracing::info!(job = %job_key, succeeded, "job complete");
            }
            Verdict::Run { want } if satisfied => {
                if active_count < want {
                    // Back off after failures, counted from the latest failure.
                    let last_failure = owned
                        .iter()
                        .filter(|p| pods::phase(p) == "Failed")
                        .filter_map(|p| finish_time(p))
                        .max();
                    let wait = match last_failure {
                        Some(t) => {
                            let ready_at =
                                t.as_second() + failure_backoff(failures).as_secs() as i64;
                            (ready_at - now.0.as_second()).max(0) as u64
                        }
                        None => 0,
                    };
                    if wait > 0 {
                        requeue = Some(requeue.map_or(Duration::from_secs(wait), |r| {
                            r.min(Duration::from_secs(wait))
                        }));
                    } else {
                        let n = ((want - active_count) as usize).min(BURST);
                        let owner = pods::owner_ref_to(job.as_ref());
                        let new_pods = (0..n)
                            .map(|_| {
                                pods::pod_from_template(
                                    &spec.template,
                                    &ns,
                                    &format!("{name}-"),
                                    owner.clone(),
                                )
                            })
                            .collect();
                        match create_pods(&ctx.client, &ns, new_pods, &ctx.expectations, &job_key)
                            .await
                        {
                            Ok(c) => active_count += c as i32,
                            Err(e) => error = Some(e),
                        }
                    }
                } else if active_count > want {
                    let n = (active_count - want) as usize;
                    let victims = pods::pods_to_delete(&active, n);
                    delete_pods(&ctx.client, &ns, &victims, &ctx.expectations, &job_key).await?;
                    active_count = want;
                }
            }
            _ => {}
        }
    }
    status.active = Some(active_count);
    status.succeeded = Some(succeeded);
    status.failed = Some(failed_pods);
    status.ready = Some(ready);
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    if status != old {
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => {
                return Err(ReconcileError::api(format!(
                    "update status of job {job_key}"
                ))(e))
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    Ok(Action::requeue(requeue.unwrap_or(Duration::from_secs(300))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;

    fn job(completions: Option<i32>, parallelism: i32, backoff: i32) -> Job {
        Job {
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                backoff_limit: Some(backoff),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn completions_and_parallelism() {
        let j = job(Some(5), 2, 6);
        assert_eq!(verdict(&j, 0, 0, 0), Verdict::Run { want: 2 });
        assert_eq!(verdict(&j, 4, 0, 2), Verdict::Run { want: 1 });
        assert_eq!(verdict(&j, 5, 0, 0), Verdict::Complete);
    }

    #[test]
    fn work_queue_jobs_finish_when_one_succeeds_and_others_stop() {
        let j = job(None, 3, 6);
        assert_eq!(verdict(&j, 0, 0, 0), Verdict::Run { want: 3 });
        assert_eq!(verdict(&j, 1, 0, 2), Verdict::Run { want: 2 });
        assert_eq!(verdict(&j, 1, 0, 0), Verdict::Complete);
    }

    #[test]
    fn backoff_limit_and_delay() {
        let j = job(Some(1), 1, 2);
        assert_eq!(verdict(&j, 0, 2, 0), Verdict::Run { want: 1 });
        assert_eq!(verdict(&j, 0, 3, 0), Verdict::BackoffLimitExceeded);
        assert_eq!(failure_backoff(0), Duration::ZERO);
        assert_eq!(failure_backoff(1), Duration::from_secs(10));
        assert_eq!(failure_backoff(3), Duration::from_secs(40));
        assert_eq!(failure_backoff(30), Duration::from_secs(360));
    }
}
