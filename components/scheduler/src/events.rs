//! What the scheduler writes besides bindings: core/v1 Events (`Scheduled`, `FailedScheduling`)
//! and the pod's `PodScheduled` condition, so `kubectl describe pod` explains a Pending pod.

use kinit_rules::errors::is_not_found;
use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::cache::DEFAULT_SCHEDULER_NAME;

/// Reason of the event and condition for pods that fit no node.
pub const REASON_FAILED_SCHEDULING: &str = "FailedScheduling";
/// Reason of the event for a successful binding.
pub const REASON_SCHEDULED: &str = "Scheduled";
/// Field manager / component name of the scheduler's writes.
pub const COMPONENT: &str = DEFAULT_SCHEDULER_NAME;

/// At most this many (pod, reason, message) series are remembered for aggregation.
const MAX_SERIES: usize = 4096;

/// (pod UID, reason, message) of an event series.
type SeriesKey = (String, String, String);
/// Name of the Event recording a series, and its count.
type SeriesEntry = (String, i32);

/// Writes Events, aggregating repeats of the same (pod, reason, message) into one Event whose
/// `count` and `lastTimestamp` grow, as client-go's event correlator does.
pub struct Recorder {
    client: Client,
    instance: String,
    series: Mutex<HashMap<SeriesKey, SeriesEntry>>,
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

impl Recorder {
    /// A recorder reporting as `default-scheduler`, instance `instance`.
    pub fn new(client: Client, instance: String) -> Recorder {
        Recorder {
            client,
            instance,
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event of `type_` (`Normal`/`Warning`) about `pod`.
    pub async fn pod_event(
        &self,
        pod: &Pod,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let series_key = (uid.clone(), reason.to_string(), message.to_string());
        let existing = self.series.lock().unwrap().get(&series_key).cloned();
        if let Some((event_name, count)) = existing {
            let patch = json!({"count": count + 1, "lastTimestamp": now_time()});
            match api
                .patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.series
                        .lock()
                        .unwrap()
                        .insert(series_key, (event_name, count + 1));
                    return Ok(());
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let event_name = format!("{name}.{:x}", now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns),
                uid: Some(uid),
                resource_version: pod.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            action: Some(
                if reason == REASON_SCHEDULED {
                    "Binding"
                } else {
                    "Scheduling"
                }
                .into(),
            ),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        let mut series = self.series.lock().unwrap();
        if series.len() >= MAX_SERIES {
            series.clear();
        }
        series.insert(series_key, (event_name, 1));
        Ok(())
    }
}

/// The strategic-merge patch that sets `PodScheduled=False, reason Unschedulable` with
/// `message`, or `None` when the pod already shows exactly that. `lastTransitionTime` only moves
/// when the status changes.
pub fn unschedulable_condition_patch(pod: &Pod, message: &str) -> Option<serde_json::Value> {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    if let Some(c) = current {
        if c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
        {
            return None;
        }
    }
    let transition = current
        .filter(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now_time);
    Some(json!({"status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    }]}}))
}

/// Sets the pod's `PodScheduled` condition to False/Unschedulable through `pods/status`.
pub async fn mark_unschedulable(
    client: &Client,
    pod: &Pod,
    message: &str,
) -> Result<(), kube::Error> {
    let Some(patch) = unschedulable_condition_patch(pod, message) else {
        return Ok(());
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let name = pod.metadata.name.as_deref().unwrap_or("");
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Deleted in the meantime: nothing to explain any more.
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::pod;

    #[test]
    fn condition_patch_is_skipped_when_unchanged() {
        let mut p = pod("p").build();
        let patch =
            unschedulable_condition_patch(&p, "0/1 nodes are available: 1 Insufficient cpu.")
                .unwrap();
        let cond = &patch["status"]["conditions"][0];
        assert_eq!(cond["type"], "PodScheduled");
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "Unschedulable");
        p.status = Some(serde_json::from_value(json!({"conditions": [cond]})).unwrap());
        assert!(
            unschedulable_condition_patch(&p, "0/1 nodes are available: 1 Insufficient cpu.")
                .is_none()
        );
        let changed = unschedulable_condition_patch(&p, "other").unwrap();
        assert_eq!(
            changed["status"]["conditions"][0]["lastTransitionTime"], cond["lastTransitionTime"],
            "status stayed False: transition time kept"
        );
    }
}
