//! The CronJob controller: creates a Job from `jobTemplate` at each time of `schedule` (standard
//! five-field cron, `@hourly`-style macros, in `timeZone` or UTC), like kube-controller-manager's
//! cronjob controller v2:
//!
//! - only the most recent missed time runs (a controller that was down does not replay every
//!   missed minute); more than 100 missed times raise a `TooManyMissedTimes` warning;
//! - `startingDeadlineSeconds`: a time missed by longer is skipped (`MissSchedule`);
//! - `concurrencyPolicy`: `Allow`, `Forbid` (skip while a Job runs) or `Replace` (delete the
//!   running Jobs first);
//! - `suspend` stops new Jobs; status keeps `active`, `lastScheduleTime`, `lastSuccessfulTime`;
//! - finished Jobs beyond `successfulJobsHistoryLimit` (3) / `failedJobsHistoryLimit` (1) are
//!   deleted, oldest first.
//!
//! Job names are `<cronjob>-<scheduled time in minutes since the epoch>`, so a retried create of
//! the same time finds the Job already there instead of running it twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;

use super::pods::{self, key};
use crate::error::{is_conflict, is_not_found, ReconcileError};
use crate::informer::Informer;

/// Annotation with the time a Job was scheduled for (Kubernetes' name).
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Missed times beyond which the controller warns (and still runs only the latest).
const MAX_MISSED: usize = 100;
const COMPONENT: &str = "cronjob-controller";

/// A parsed `schedule` with its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: chrono_tz::Tz,
}

/// Parses `schedule` and `time_zone` as Kubernetes accepts them; the error says what is wrong.
pub fn parse_schedule(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
    let trimmed = schedule.trim();
    if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
        return Err("TZ= and CRON_TZ= in the schedule are not supported; set spec.timeZone".into());
    }
    // robfig/cron (Kubernetes' parser) knows @midnight; croner calls it @daily.
    let pattern = if trimmed.eq_ignore_ascii_case("@midnight") {
        "@daily"
    } else {
        trimmed
    };
    if !pattern.starts_with('@') && pattern.split_whitespace().count() != 5 {
        return Err(format!(
            "{schedule:?} has {} fields; a schedule has five (minute hour day-of-month month day-of-week)",
            pattern.split_whitespace().count()
        ));
    }
    let cron = Cron::new(pattern)
        .parse()
        .map_err(|e| format!("{schedule:?} is not a valid schedule: {e}"))?;
    let zone = match time_zone {
        None | Some("") => chrono_tz::UTC,
        Some(name) => name.parse::<chrono_tz::Tz>().map_err(|_| {
            format!("unknown time zone {name:?}; use an IANA name such as Europe/Berlin")
        })?,
    };
    Ok(Schedule { cron, zone })
}

/// When to run, seen from `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The most recent scheduled time after `earliest` and not after `now`, if any.
    pub latest: Option<DateTime<Utc>>,
    /// How many scheduled times were missed (capped a little above [`MAX_MISSED`]).
    pub missed: usize,
    /// The next scheduled time after `now`.
    pub next: Option<DateTime<Utc>>,
}

impl Schedule {
    fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The scheduled times in (`earliest`, `now`]: the latest, how many, and the next one.
    pub fn due(&self, earliest: DateTime<Utc>, now: DateTime<Utc>) -> Due {
        let mut latest = None;
        let mut missed = 0;
        let mut cursor = earliest;
        while let Some(t) = self.after(cursor).filter(|t| *t <= now) {
            latest = Some(t);
            missed += 1;
            cursor = t;
            if missed > MAX_MISSED {
                // Long outage or an old CronJob: find the latest time within the last day
                // (and only if there is none, keep walking from where the count stopped).
                let recent = (now - chrono::Duration::days(1)).max(cursor);
                let mut c = recent;
                while let Some(t) = self.after(c).filter(|t| *t <= now) {
                    latest = Some(t);
                    c = t;
                }
                cursor = c;
                break;
            }
        }
        Due {
            latest,
            missed,
            next: self.after(cursor.max(now)),
        }
    }
}

fn to_chrono(t: &Time) -> DateTime<Utc> {
    Utc.timestamp_nanos(i64::try_from(t.0.as_nanosecond()).unwrap_or(i64::MAX))
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Name of the Job for `scheduled`.
pub fn job_name(cronjob: &str, scheduled: DateTime<Utc>) -> String {
    format!("{cronjob}-{}", scheduled.timestamp() / 60)
}

/// `Complete` or `Failed` when the Job has finished.
fn finished(job: &Job) -> Option<&str> {
    super::job::finished_condition(job.status.as_ref()?).map(|c| c.type_.as_str())
}

/// Shared state of the CronJob controller.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of all Jobs.
    pub jobs: Store<Job>,
}

/// Builds the controller; the future runs until `stop` resolves.
pub fn controller(
    client: Client,
    cron_jobs_informer: &mut Informer<CronJob>,
    jobs_informer: &mut Informer<Job>,
    concurrency: u16,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> futures::future::BoxFuture<'static, ()> {
    let job_triggers = jobs_informer.triggers(|job: &Job, _, _| {
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        pods::controller_ref(&job.metadata)
            .filter(|r| r.kind == "CronJob")
            .map(|owner| vec![ObjectRef::<CronJob>::new(&owner.name).within(&ns)])
            .unwrap_or_default()
    });
    let ctx = Arc::new(Context {
        client,
        jobs: jobs_informer.store(),
    });
    Controller::for_stream(cron_jobs_informer.objects(), cron_jobs_informer.store())
        .reconcile_on(job_triggers)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .boxed()
}

fn error_policy(cronjob: Arc<CronJob>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(cronjob = %key(&cronjob.metadata), %error, "sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn event(ctx: &Context, cronjob: &CronJob, type_: &str, reason: &str, message: String) {
    let ns = cronjob.metadata.namespace.clone().unwrap_or_default();
    let name = cronjob.metadata.name.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("CronJob".into()),
            name: Some(name),
            namespace: Some(ns.clone()),
            uid: cronjob.metadata.uid.clone(),
            ..ObjectReference::default()
        },
        type_: Some(type_.into()),
        reason: Some(reason.into()),
        message: Some(message),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    };
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ns);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::debug!(error = %e, reason, "cannot record a CronJob event");
    }
}

fn job_for(cronjob: &CronJob, scheduled: DateTime<Utc>) -> Option<Job> {
    let spec = cronjob.spec.as_ref()?;
    let template = &spec.job_template;
    let name = cronjob.metadata.name.clone()?;
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(job_name(&name, scheduled));
    meta.namespace = cronjob.metadata.namespace.clone();
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(
            SCHEDULED_TIMESTAMP_ANNOTATION.into(),
            scheduled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "CronJob".into(),
        name,
        uid: cronjob.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    Some(Job {
        metadata: meta,
        spec: Some(template.spec.clone().unwrap_or_else(JobSpec::default)),
        status: None,
    })
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// Deletes `job` with its pods.
async fn delete_job(ctx: &Context, job: &Job) -> Result<(), ReconcileError> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(ReconcileError::api(format!("deleting job {ns}/{name}"))(e)),
    }
}

async fn reconcile(cronjob: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let Some(spec) = cronjob.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if cronjob.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cronjob.metadata.namespace.clone().unwrap_or_default();
    let name = cronjob.metadata.name.clone().unwrap_or_default();
    let uid = cronjob.metadata.uid.clone().unwrap_or_default();
    let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);

    let mut owned: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.metadata.namespace.as_deref() == Some(ns.as_str())
                && pods::controller_ref(&j.metadata).is_some_and(|r| r.uid == uid)
        })
        .collect();
    // Oldest first; creation times have whole seconds, so the name breaks ties.
    owned.sort_by_key(|j| {
        (
            j.metadata.creation_timestamp.clone().map(|t| t.0),
            j.metadata.name.clone(),
        )
    });
    let mut active: Vec<Arc<Job>> = owned
        .iter()
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();

    // History limits: the oldest finished Jobs beyond each limit go.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Arc<Job>> = owned
            .iter()
            .filter(|j| finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for job in done.into_iter().take(excess) {
            delete_job(&ctx, job).await?;
        }
    }

    let status = cronjob.status.clone().unwrap_or_default();
    let last_successful = owned
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .max_by_key(|t| t.0)
        .or(status.last_successful_time.clone());
    let mut last_schedule = status.last_schedule_time.clone();

    let schedule = match parse_schedule(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(why) => {
            event(&ctx, &cronjob, "Warning", "InvalidSchedule", why).await;
            write_status(&api, &cronjob, &active, last_schedule, last_successful).await?;
            return Ok(Action::await_change());
        }
    };
    let now = Utc::now();
    let mut earliest = last_schedule
        .as_ref()
        .or(cronjob.metadata.creation_timestamp.as_ref())
        .map(to_chrono)
        .unwrap_or(now);
    if let Some(deadline) = spec.starting_deadline_seconds {
        earliest = earliest.max(now - chrono::Duration::seconds(deadline.max(0)));
    }
    let due = schedule.due(earliest, now);
    let next_wake = |due: &Due| {
        due.next
            .and_then(|n| (n - now).to_std().ok())
            .map(|d| Action::requeue(d + Duration::from_millis(100)))
            .unwrap_or_else(Action::await_change)
    };

    if spec.suspend == Some(true) {
        write_status(&api, &cronjob, &active, last_schedule, last_successful).await?;
        return Ok(Action::await_change());
    }
    let Some(scheduled) = due.latest else {
        write_status(&api, &cronjob, &active, last_schedule, last_successful).await?;
        return Ok(next_wake(&due));
    };
    if due.missed > MAX_MISSED {
        event(
            &ctx,
            &cronjob,
            "Warning",
            "TooManyMissedTimes",
            format!("too many missed start times (> {MAX_MISSED}); only the latest, {scheduled}, runs; set startingDeadlineSeconds or check the clock"),
        )
        .await;
    }
    let too_late = spec
        .starting_deadline_seconds
        .is_some_and(|d| scheduled + chrono::Duration::seconds(d.max(0)) < now);
    let job_name = job_name(&name, scheduled);
    let exists = owned
        .iter()
        .any(|j| j.metadata.name.as_deref() == Some(job_name.as_str()));
    if too_late {
        event(
            &ctx,
            &cronjob,
            "Warning",
            "MissSchedule",
            format!("missed the scheduled time {scheduled} by more than startingDeadlineSeconds"),
        )
        .await;
    } else if exists {
        // Already handled (by an earlier sync whose status write this one did not see yet).
        last_schedule = Some(to_time(scheduled));
    } else {
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        if policy == "Forbid" && !active.is_empty() {
            // Wait for the running Job; its end triggers the next sync.
            write_status(&api, &cronjob, &active, last_schedule, last_successful).await?;
            return Ok(next_wake(&due));
        }
        if policy == "Replace" {
            for job in active.drain(..) {
                delete_job(&ctx, &job).await?;
                event(
                    &ctx,
                    &cronjob,
                    "Normal",
                    "SuccessfulDelete",
                    format!(
                        "Deleted job {}",
                        job.metadata.name.as_deref().unwrap_or_default()
                    ),
                )
                .await;
            }
        }
        let Some(job) = job_for(&cronjob, scheduled) else {
            return Ok(Action::await_change());
        };
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        match jobs.create(&PostParams::default(), &job).await {
            Ok(created) => {
                event(
                    &ctx,
                    &cronjob,
                    "Normal",
                    "SuccessfulCreate",
                    format!("Created job {job_name}"),
                )
                .await;
                active.push(Arc::new(created));
            }
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(ReconcileError::api(format!("creating job {ns}/{job_name}"))(e)),
        }
        last_schedule = Some(to_time(scheduled));
    }
    write_status(&api, &cronjob, &active, last_schedule, last_successful).await?;
    Ok(next_wake(&due))
}

/// Writes the status when it differs from what `cronjob` has (a write of unchanged fields
/// could undo a concurrent change made after this sync read the object).
async fn write_status(
    api: &Api<CronJob>,
    cronjob: &CronJob,
    active: &[Arc<Job>],
    last_schedule: Option<Time>,
    last_successful: Option<Time>,
) -> Result<(), ReconcileError> {
    let name = cronjob.metadata.name.as_deref().unwrap_or_default();
    let active: Vec<ObjectReference> = active.iter().map(|j| reference(j)).collect();
    let current = cronjob.status.clone().unwrap_or_default();
    let active_names = |refs: &[ObjectReference]| -> Vec<Option<String>> {
        refs.iter().map(|r| r.name.clone()).collect()
    };
    if active_names(current.active.as_deref().unwrap_or_default()) == active_names(&active)
        && current.last_schedule_time == last_schedule
        && current.last_successful_time == last_successful
    {
        return Ok(());
    }
    // A full status update at the resourceVersion this sync read: if the CronJob changed
    // meanwhile the write is refused (409) and the change's own event syncs it again.
    let mut updated = cronjob.clone();
    updated.metadata.managed_fields = None;
    let status = updated.status.get_or_insert_with(Default::default);
    status.active = (!active.is_empty()).then_some(active);
    status.last_schedule_time = last_schedule;
    status.last_successful_time = last_successful;
    match api
        .replace_status(name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
        Err(e) => Err(ReconcileError::api(format!(
            "updating the status of cronjob {name}"
        ))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn schedules_parse_like_kubernetes() {
        for ok in [
            "*/5 * * * *",
            "0 3 * * 1-5",
            "@hourly",
            "@midnight",
            "@weekly",
            "15 2 1 1 *",
        ] {
            parse_schedule(ok, None).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "* * * *",
            "0 0 0 * * *",
            "61 * * * *",
            "TZ=UTC * * * * *",
            "@sometimes",
        ] {
            assert!(parse_schedule(bad, None).is_err(), "{bad}");
        }
        assert!(parse_schedule("0 9 * * *", Some("Europe/Berlin")).is_ok());
        let err = parse_schedule("0 9 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn only_the_latest_missed_time_runs() {
        let s = parse_schedule("*/10 * * * *", None).unwrap();
        let due = s.due(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:35:00Z"));
        assert_eq!(due.latest, Some(at("2026-01-01T00:30:00Z")));
        assert_eq!(due.missed, 3);
        assert_eq!(due.next, Some(at("2026-01-01T00:40:00Z")));
        // Nothing due between two times.
        let due = s.due(at("2026-01-01T00:30:00Z"), at("2026-01-01T00:35:00Z"));
        assert_eq!(due.latest, None);
        assert_eq!(due.next, Some(at("2026-01-01T00:40:00Z")));
    }

    #[test]
    fn a_long_outage_counts_as_too_many_and_still_finds_the_latest() {
        let s = parse_schedule("* * * * *", None).unwrap();
        let due = s.due(at("2026-01-01T00:00:00Z"), at("2026-01-03T12:00:30Z"));
        assert!(due.missed > MAX_MISSED);
        assert_eq!(due.latest, Some(at("2026-01-03T12:00:00Z")));
        assert_eq!(due.next, Some(at("2026-01-03T12:01:00Z")));
    }

    #[test]
    fn time_zones_and_day_of_month_or_week() {
        // 09:00 in Berlin is 08:00 UTC in winter.
        let s = parse_schedule("0 9 * * *", Some("Europe/Berlin")).unwrap();
        let due = s.due(at("2026-01-10T00:00:00Z"), at("2026-01-10T12:00:00Z"));
        assert_eq!(due.latest, Some(at("2026-01-10T08:00:00Z")));
        // Day-of-month OR day-of-week, as cron: the 1st, or any Monday.
        let s = parse_schedule("0 0 1 * 1", None).unwrap();
        let due = s.due(at("2026-01-01T00:30:00Z"), at("2026-01-06T00:00:00Z"));
        assert_eq!(
            due.latest,
            Some(at("2026-01-05T00:00:00Z")),
            "Monday 5 January"
        );
    }

    #[test]
    fn jobs_are_named_and_owned() {
        let cronjob: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backup", "namespace": "ops", "uid": "u-1"},
            "spec": {"schedule": "@hourly", "jobTemplate": {
                "metadata": {"labels": {"app": "backup"}},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "demo"}]}}}}}
        }))
        .unwrap();
        let t = at("2026-01-01T01:00:00Z");
        let job = job_for(&cronjob, t).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("backup-29453820"));
        assert_eq!(job_name("backup", t), "backup-29453820");
        assert_eq!(job.metadata.namespace.as_deref(), Some("ops"));
        assert_eq!(job.metadata.labels.unwrap()["app"], "backup");
        assert_eq!(
            job.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP_ANNOTATION],
            "2026-01-01T01:00:00Z"
        );
        let owner = &job.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("CronJob", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
    }
}
