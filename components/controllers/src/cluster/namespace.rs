//! Namespace controller: a namespace in phase Terminating (the API server sets it on delete and
//! keeps `spec.finalizers: [kubernetes]`) is emptied of every namespaced object of every
//! discovered resource; once nothing is left, the `kubernetes` finalizer is removed through the
//! `namespaces/{name}/finalize` subresource and the API server deletes the namespace.
//! Progress and failures are reported as namespace conditions, like Kubernetes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{verbs, ApiCapabilities, ApiResource, Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::util::{is_conflict, is_not_found, now};
use super::{ClusterControllerError, ReconcileError};
use crate::informer::Informers;

/// The finalizer the namespace controller owns.
pub const KUBERNETES_FINALIZER: &str = "kubernetes";

struct Ctx {
    client: Client,
}

/// Namespaced resources the controller empties: listable and deletable, preferred version.
pub fn deletable_namespaced(discovery: &Discovery) -> Vec<(ApiResource, ApiCapabilities)> {
    discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(_, caps)| {
            caps.scope == Scope::Namespaced
                && caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::DELETE)
        })
        .collect()
}

/// What one cleanup pass found.
#[derive(Debug, Default)]
struct Pass {
    /// `(resource, count)` still present.
    remaining: Vec<(String, usize)>,
    /// Finalizers on remaining objects.
    finalizers: Vec<String>,
    /// Deletion errors.
    failures: Vec<String>,
}

async fn empty_namespace(client: &Client, ns: &str) -> Result<Pass, ReconcileError> {
    let discovery =
        Discovery::new(client.clone())
            .run()
            .await
            .map_err(|e| ReconcileError::Kube {
                action: "discovering API resources".into(),
                source: e,
            })?;
    let mut pass = Pass::default();
    for (ar, caps) in deletable_namespaced(&discovery) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let what = if ar.group.is_empty() {
            ar.plural.clone()
        } else {
            format!("{}.{}", ar.plural, ar.group)
        };
        if caps.supports_operation(verbs::DELETE_COLLECTION) {
            if let Err(e) = api
                .delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
            {
                if !is_not_found(&e) {
                    pass.failures.push(format!("{what}: {e}"));
                }
            }
        }
        let items = match api.list_metadata(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => {
                pass.failures.push(format!("{what}: listing: {e}"));
                continue;
            }
        };
        let mut left = 0;
        for item in &items {
            if item.metadata.deletion_timestamp.is_none() {
                match api
                    .delete(&item.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(either) => {
                        if either.is_right() {
                            continue;
                        }
                    }
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => pass
                        .failures
                        .push(format!("{what} {}: {e}", item.name_any())),
                }
            }
            left += 1;
            for f in item.finalizers() {
                if !pass.finalizers.contains(f) {
                    pass.finalizers.push(f.clone());
                }
            }
        }
        if left > 0 {
            pass.remaining.push((what, left));
        }
    }
    Ok(pass)
}

fn condition(type_: &str, on: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if on { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(now()),
    }
}

/// The namespace conditions describing a cleanup pass (Kubernetes' names and reasons).
fn pass_conditions(pass: &Pass) -> Vec<NamespaceCondition> {
    let mut out = Vec::new();
    if pass.failures.is_empty() {
        out.push(condition(
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into(),
        ));
    } else {
        out.push(condition(
            "NamespaceDeletionContentFailure",
            true,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                pass.failures.len(),
                pass.failures.join(", ")
            ),
        ));
    }
    if pass.remaining.is_empty() {
        out.push(condition(
            "NamespaceContentRemaining",
            false,
            "ContentRemoved",
            "All content successfully removed".into(),
        ));
    } else {
        let list: Vec<String> = pass
            .remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        out.push(condition(
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", list.join(", ")),
        ));
    }
    if pass.finalizers.is_empty() {
        out.push(condition(
            "NamespaceFinalizersRemaining",
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".into(),
        ));
    } else {
        out.push(condition(
            "NamespaceFinalizersRemaining",
            true,
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                pass.finalizers.join(", ")
            ),
        ));
    }
    out
}

async fn write_conditions(
    api: &Api<Namespace>,
    ns: &Namespace,
    conditions: Vec<NamespaceCondition>,
) {
    let old = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut merged: Vec<NamespaceCondition> = Vec::new();
    for mut c in conditions {
        if let Some(prev) = old.iter().find(|o| o.type_ == c.type_) {
            if prev.status == c.status && prev.reason == c.reason && prev.message == c.message {
                merged.push(prev.clone());
                continue;
            }
            if prev.status == c.status {
                c.last_transition_time = prev.last_transition_time.clone();
            }
        }
        merged.push(c);
    }
    if merged == old {
        return;
    }
    let patch = json!({"status": {"conditions": merged}});
    if let Err(e) = api
        .patch_status(
            &ns.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!(namespace = %ns.name_any(), error = %e, "could not write namespace conditions");
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let terminating = ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
        || ns.metadata.deletion_timestamp.is_some();
    let has_finalizer = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == KUBERNETES_FINALIZER));
    if !terminating || !has_finalizer {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let pass = match empty_namespace(&ctx.client, &name).await {
        Ok(p) => p,
        Err(e) => {
            write_conditions(
                &api,
                &ns,
                vec![condition(
                    "NamespaceDeletionDiscoveryFailure",
                    true,
                    "DiscoveryFailed",
                    e.to_string(),
                )],
            )
            .await;
            return Err(e);
        }
    };
    write_conditions(&api, &ns, pass_conditions(&pass)).await;
    if !pass.remaining.is_empty() || !pass.failures.is_empty() {
        tracing::info!(namespace = %name, remaining = ?pass.remaining, failures = pass.failures.len(), "namespace content remains; checking again");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    // Nothing left: release our finalizer through the finalize subresource.
    let mut latest = match api
        .get_opt(&name)
        .await
        .map_err(ReconcileError::kube(format!("reading namespace {name}")))?
    {
        Some(n) => n,
        None => return Ok(Action::await_change()),
    };
    if let Some(spec) = latest.spec.as_mut() {
        if let Some(f) = spec.finalizers.as_mut() {
            f.retain(|f| f != KUBERNETES_FINALIZER);
        }
    }
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &latest)
        .await
    {
        Ok(_) => {
            tracing::info!(namespace = %name, "namespace emptied; finalizer removed");
            Ok(Action::await_change())
        }
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) if is_conflict(&e) => Ok(Action::requeue(Duration::from_millis(200))),
        Err(e) => Err(ReconcileError::Kube {
            action: format!("finalizing namespace {name}"),
            source: e,
        }),
    }
}

fn error_policy(ns: Arc<Namespace>, error: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), %error, "namespace deletion failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Sets the namespace controller up on the shared Namespace informer and returns the future
/// that runs it until dropped.
pub fn run(
    informers: &mut Informers,
) -> impl Future<Output = Result<(), ClusterControllerError>> + Send + 'static {
    let ctx = Arc::new(Ctx {
        client: informers.client().clone(),
    });
    let namespaces = informers.get::<Namespace>();
    let controller = Controller::for_stream(namespaces.objects(), namespaces.store());
    async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "namespace controller event");
                }
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_describe_remaining_content() {
        let pass = Pass {
            remaining: vec![("pods".into(), 2)],
            finalizers: vec!["example.com/x".into()],
            failures: vec![],
        };
        let c = pass_conditions(&pass);
        let remaining = c
            .iter()
            .find(|c| c.type_ == "NamespaceContentRemaining")
            .unwrap();
        assert_eq!(remaining.status, "True");
        assert!(remaining
            .message
            .as_ref()
            .unwrap()
            .contains("pods has 2 resource instances"));
        let fin = c
            .iter()
            .find(|c| c.type_ == "NamespaceFinalizersRemaining")
            .unwrap();
        assert_eq!(fin.status, "True");
        let failure = c
            .iter()
            .find(|c| c.type_ == "NamespaceDeletionContentFailure")
            .unwrap();
        assert_eq!(failure.status, "False");
    }
}
