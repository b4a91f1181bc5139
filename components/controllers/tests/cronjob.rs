//! The CronJob controller against a real API server with the whole controller manager: after
//! an "outage" (lastScheduleTime ten minutes back) the missed time runs once, its Job completes
//! through the Job controller, status follows, and history is trimmed.

mod common;

use chrono::{Duration as Minutes, SecondsFormat, Timelike, Utc};
use common::{eventually, node_side_loop, Harness, NodeSide};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kinit_controllers::workloads::cronjob::{job_name, SCHEDULED_TIMESTAMP_ANNOTATION};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn owned_by<'a>(jobs: &'a [Job], uid: &str) -> Vec<&'a Job> {
    jobs.iter()
        .filter(|j| {
            j.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_runs_the_latest_missed_time_then_trims_history() {
    let h = Harness::start().await;
    let cronjobs: Api<CronJob> = Api::namespaced(h.admin.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(h.admin.clone(), "default");
    // Hourly, at the minute two minutes ago: one time falls in the "outage" below and the
    // next is almost an hour away, so no other Job appears while the test runs.
    let minute = (Utc::now() - Minutes::minutes(2)).minute();
    let cronjob: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "tick"},
        "spec": {
            "schedule": format!("{minute} * * * *"),
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 1,
            "jobTemplate": {
                "metadata": {"labels": {"app": "tick"}},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox"}]}}}
            }
        }
    }))
    .unwrap();
    let created = cronjobs
        .create(&PostParams::default(), &cronjob)
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    // The controller "was down" for ten minutes.
    let before = Utc::now();
    let ten_ago = (before - Minutes::minutes(10)).to_rfc3339_opts(SecondsFormat::Secs, true);
    cronjobs
        .patch_status(
            "tick",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastScheduleTime": ten_ago}})),
        )
        .await
        .unwrap();
    let first = eventually(20, "a job for the latest missed minute", || async {
        let list = jobs.list(&ListParams::default()).await.ok()?.items;
        owned_by(&list, &uid).first().map(|j| (*j).clone())
    })
    .await;
    let after = Utc::now();
    let name = first.metadata.name.clone().unwrap();
    let scheduled =
        first.metadata.annotations.as_ref().unwrap()[SCHEDULED_TIMESTAMP_ANNOTATION].clone();
    let scheduled_at = chrono::DateTime::parse_from_rfc3339(&scheduled)
        .unwrap()
        .with_timezone(&Utc);
    // Exactly one Job, for the missed time.
    assert_eq!(name, job_name("tick", scheduled_at));
    assert_eq!(scheduled_at.minute(), minute, "{scheduled}");
    assert!(
        scheduled_at <= after && after - scheduled_at < Minutes::minutes(4),
        "{scheduled}"
    );
    assert_eq!(first.metadata.labels.as_ref().unwrap()["app"], "tick");
    let cj = eventually(10, "status.active and lastScheduleTime", || async {
        let cj = cronjobs.get("tick").await.ok()?;
        let status = cj.status.clone()?;
        let active = status.active?;
        (active.len() == 1 && active[0].name.as_deref() == Some(name.as_str())).then_some(cj)
    })
    .await;
    let last = cj.status.unwrap().last_schedule_time.unwrap();
    assert_eq!(last.0.as_second(), scheduled_at.timestamp());
    let list = jobs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        owned_by(&list, &uid).len(),
        1,
        "only the latest missed time runs"
    );

    // The Job completes (pods succeed): nothing active, lastSuccessfulTime set.
    let node = node_side_loop(h.admin.clone(), "default", NodeSide::Succeed);
    eventually(30, "lastSuccessfulTime and no active job", || async {
        let status = cronjobs.get("tick").await.ok()?.status?;
        (status.active.is_none() && status.last_successful_time.is_some()).then_some(())
    })
    .await;

    // A second finished Job of this CronJob: with successfulJobsHistoryLimit 1 the older goes
    // (created a second later: creation times have whole seconds).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut second = first.clone();
    second.metadata = kube::api::ObjectMeta {
        name: Some("tick-manual".into()),
        owner_references: first.metadata.owner_references.clone(),
        ..Default::default()
    };
    second.spec.as_mut().unwrap().selector = None;
    if let Some(t) = second.spec.as_mut().unwrap().template.metadata.as_mut() {
        t.labels = None;
    }
    second.status = None;
    jobs.create(&PostParams::default(), &second).await.unwrap();
    eventually(40, "the older finished job deleted", || async {
        let list = jobs.list(&ListParams::default()).await.ok()?.items;
        let names: Vec<String> = owned_by(&list, &uid)
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter_map(|j| j.metadata.name.clone())
            .collect();
        (names == ["tick-manual"]).then_some(())
    })
    .await;
    node.abort();
    h.shutdown().await;
}
