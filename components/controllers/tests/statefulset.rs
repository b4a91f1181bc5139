//! The StatefulSet controller against a real API server with the whole controller manager:
//! ordered creation, claims, a rolling update from the highest ordinal, ordered scale-down.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{eventually, node_side_loop, Harness, NodeSide};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kinit_controllers::workloads::statefulset::{POD_INDEX_LABEL, POD_NAME_LABEL};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn names<K>(api: &Api<K>) -> BTreeSet<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .filter_map(|o| o.meta().name.clone())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_orders_pods_keeps_claims_and_rolls_from_the_top() {
    let h = Harness::start().await;
    let sets: Api<StatefulSet> = Api::namespaced(h.admin.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(h.admin.clone(), "default");
    let revisions: Api<ControllerRevision> = Api::namespaced(h.admin.clone(), "default");
    let web: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "demo"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}}]
        }
    }))
    .unwrap();
    sets.create(&PostParams::default(), &web).await.unwrap();

    // OrderedReady: web-0 alone until it is Ready.
    eventually(20, "web-0", || async {
        (names(&pods).await == set(&["web-0"])).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(names(&pods).await, set(&["web-0"]), "web-1 waits for web-0");
    let pod = pods.get("web-0").await.unwrap();
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels[POD_NAME_LABEL], "web-0");
    assert_eq!(labels[POD_INDEX_LABEL], "0");
    let spec = pod.spec.unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-0"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    assert_eq!(
        spec.volumes.unwrap()[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "data-web-0"
    );

    let node = node_side_loop(h.admin.clone(), "default", NodeSide::Ready);
    eventually(30, "3 ready replicas", || async {
        let status = sets.get("web").await.ok()?.status?;
        (status.ready_replicas == Some(3)
            && status.current_revision.is_some()
            && status.current_revision == status.update_revision)
            .then_some(())
    })
    .await;
    assert_eq!(names(&pods).await, set(&["web-0", "web-1", "web-2"]));
    assert_eq!(
        names(&claims).await,
        set(&["data-web-0", "data-web-1", "data-web-2"])
    );

    // A template change rolls from web-2 down; every pod ends on the new revision.
    let generation = sets
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}})),
        )
        .await
        .unwrap()
        .metadata
        .generation;
    let status = eventually(60, "rolled out", || async {
        let status = sets.get("web").await.ok()?.status?;
        let done = status.observed_generation == generation
            && status.updated_replicas == Some(3)
            && status.ready_replicas == Some(3)
            && status.current_revision == status.update_revision;
        let first = status.update_revision.clone()?;
        (done && names(&revisions).await.len() == 2).then_some((status, first))
    })
    .await;
    let (_, update_revision) = status;
    for name in ["web-0", "web-1", "web-2"] {
        let pod = pods.get(name).await.unwrap();
        let hash = &pod.metadata.labels.as_ref().unwrap()["controller-revision-hash"];
        assert_eq!(format!("web-{hash}"), update_revision, "{name}");
        assert_eq!(pod.metadata.annotations.unwrap()["v"], "2");
    }

    // Scale down to 1: web-2 and web-1 go; their claims stay.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually(30, "one replica", || async {
        (names(&pods).await == set(&["web-0"])).then_some(())
    })
    .await;
    assert_eq!(names(&claims).await.len(), 3, "claims are retained");
    node.abort();
    h.shutdown().await;
}
