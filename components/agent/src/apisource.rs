//! The API side of pods: a watch on the pods bound to this node (`spec.nodeName=<node>`), the
//! status sink that patches `pods/<name>/status`, and the final delete after graceful stop.

use kinit_rules::errors::{is_conflict, is_not_found};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

use crate::manager::{PodManager, PodSource, StatusSink};
use crate::static_pods::is_mirror;
use crate::AgentError;

/// Patches pod status in the API; static pods report through their mirror pod (same name).
pub struct ApiStatusSink {
    client: kube::Client,
}

impl ApiStatusSink {
    /// A sink using `client`.
    pub fn new(client: kube::Client) -> ApiStatusSink {
        ApiStatusSink { client }
    }
}

#[async_trait]
impl StatusSink for ApiStatusSink {
    async fn report(&self, pod: &Pod, source: PodSource, status: &PodStatus) {
        let (ns, name, _) = crate::spec::pod_key(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let patch = status_patch(status);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // The mirror pod may not exist yet; its creation carries no status and the next
            // change reports again.
            Err(e) if is_not_found(&e) => {
                tracing::debug!(pod = %name, ?source, "no API pod to report status to yet");
            }
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), "patching the pod status failed: {e}")
            }
        }
    }

    async fn terminated(&self, pod: &Pod, source: PodSource) {
        if source != PodSource::Api {
            return;
        }
        let (ns, name, uid) = crate::spec::pod_key(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "pod terminated and deleted"),
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), "final delete failed: {e}"),
        }
    }
}

/// Feeds the API's pods for this node into `manager` until the watch stream ends. `synced` is
/// set once the first full list has been applied (garbage collection waits for it).
pub async fn watch_pods(
    client: kube::Client,
    node_name: String,
    manager: PodManager,
    synced: Arc<AtomicBool>,
) -> Result<(), AgentError> {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut initial: Vec<Pod> = Vec::new();
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = stream
        .try_next()
        .await
        .map_err(|e| AgentError::Internal(format!("pod watch failed: {e}")))?
    {
        match event {
            watcher::Event::Init => initial.clear(),
            watcher::Event::InitApply(pod) => {
                if !is_mirror(&pod) {
                    initial.push(pod);
                }
            }
            watcher::Event::InitDone => {
                manager.set_all(PodSource::Api, std::mem::take(&mut initial));
                synced.store(true, Ordering::SeqCst);
            }
            watcher::Event::Apply(pod) => {
                if !is_mirror(&pod) {
                    manager.update(pod, PodSource::Api);
                }
            }
            watcher::Event::Delete(pod) => {
                if !is_mirror(&pod) {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        manager.remove(uid);
                    }
                }
            }
        }
    }
    Ok(())
}
/// The merge patch that makes the API's pod status `status`: lists are replaced whole by a
/// merge patch, but a field the new status no longer has (a cleared `reason` or `message`, e.g.
/// `FailedCreatePodSandBox` once the sandbox exists) must be sent as `null` to be removed.
/// (`nominatedNodeName` is the scheduler's and left alone.)
pub fn status_patch(status: &PodStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(map) = value.as_object_mut() {
        for field in ["reason", "message"] {
            map.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    json!({ "status": value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleared_reason_and_message_are_removed_by_the_patch() {
        let recovered = PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        };
        let patch = status_patch(&recovered);
        assert_eq!(patch["status"]["phase"], "Running");
        assert!(patch["status"]["reason"].is_null());
        assert!(patch["status"].as_object().unwrap().contains_key("reason"));
        assert!(patch["status"].as_object().unwrap().contains_key("message"));
        let failing = PodStatus {
            reason: Some("FailedCreatePodSandBox".into()),
            ..Default::default()
        };
        assert_eq!(
            status_patch(&failing)["status"]["reason"],
            "FailedCreatePodSandBox"
        );
    }
}
