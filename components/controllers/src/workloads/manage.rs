//! Pod creation and deletion with expectations, shared by the workload controllers.

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use super::expectations::Expectations;
use crate::error::{is_not_found, ReconcileError};

/// Most pods one sync creates or deletes (Kubernetes' `burstReplicas`).
pub const BURST: usize = 500;

/// Creates `pods` in `namespace` in slow-start batches of 1, 2, 4, … (Kubernetes'
/// `slowStartBatch`), stopping at the first failed batch so a broken template (quota, admission)
/// does not produce a storm of errors. Creations are expected under `key` beforehand; failed
/// and skipped ones are un-expected. Returns how many were created, or the first error.
pub async fn create_pods(
    client: &Client,
    namespace: &str,
    pods: Vec<Pod>,
    expectations: &Expectations,
    key: &str,
) -> Result<usize, ReconcileError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    expectations.expect_creations(key, pods.len());
    let mut remaining = pods.into_iter();
    let mut batch = 1usize;
    let mut created = 0usize;
    loop {
        let chunk: Vec<Pod> = remaining.by_ref().take(batch).collect();
        if chunk.is_empty() {
            return Ok(created);
        }
        let results = join_all(
            chunk
                .iter()
                .map(|p| async { api.create(&PostParams::default(), p).await }),
        )
        .await;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(_) => created += 1,
                Err(e) => {
                    expectations.creation_observed(key);
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            for _ in remaining {
                expectations.creation_observed(key);
            }
            return Err(ReconcileError::Api {
                action: format!("create pod for {key}"),
                source: e,
            });
        }
        batch *= 2;
    }
}

/// Deletes `pods` (expected under `key` by name first). A pod already gone is fine.
pub async fn delete_pods(
    client: &Client,
    namespace: &str,
    pods: &[Pod],
    expectations: &Expectations,
    key: &str,
) -> Result<(), ReconcileError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    expectations.expect_deletions(key, names.clone());
    let results = join_all(names.iter().map(|n| {
        let api = api.clone();
        async move { (n, api.delete(n, &DeleteParams::background()).await) }
    }))
    .await;
    let mut first_error = None;
    for (name, r) in results {
        match r {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => expectations.deletion_observed(key, name),
            Err(e) => {
                expectations.deletion_observed(key, name);
                first_error.get_or_insert(ReconcileError::Api {
                    action: format!("delete pod {namespace}/{name} of {key}"),
                    source: e,
                });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Sets the controller owner reference of `pod` to `owner` (adoption) or removes the one with
/// `owner.uid` (release), guarded by the pod's resourceVersion.
pub async fn patch_pod_owner(
    client: &Client,
    pod: &Pod,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    adopt: bool,
) -> Result<(), ReconcileError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let mut refs: Vec<_> = pod
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != owner.uid)
        .collect();
    if adopt {
        refs.push(owner.clone());
    }
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": pod.metadata.resource_version,
    }});
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(ReconcileError::Api {
            action: format!(
                "{} pod {ns}/{name} for {} {}",
                if adopt { "adopt" } else { "release" },
                owner.kind,
                owner.name
            ),
            source: e,
        }),
    }
}
