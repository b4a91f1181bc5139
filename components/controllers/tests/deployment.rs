//! Deployments against a real API server: creation, availability, rolling update bounds,
//! revisions, rollback reusing the old ReplicaSet, scaling, and kubectl's rollout commands.

mod common;

use std::time::Duration;

use common::{eventually, node_side_loop, Harness, NodeSide};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kinit_controllers::workloads::deployment::REVISION;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn deployment(name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        }
    }))
    .unwrap()
}

fn rev(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    meta.annotations.as_ref()?.get(REVISION).cloned()
}

async fn replica_sets(api: &Api<ReplicaSet>) -> Vec<ReplicaSet> {
    api.list(&ListParams::default()).await.unwrap().items
}

fn image_of(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

/// Waits until the deployment's rollout is complete the way `kubectl rollout status` judges it.
async fn rolled_out(deploys: &Api<Deployment>, name: &str, replicas: i32) -> Deployment {
    eventually(60, "rollout to complete", || async {
        let d = deploys.get(name).await.ok()?;
        let s = d.status.clone()?;
        let done = s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(replicas)
            && s.replicas == Some(replicas)
            && s.available_replicas == Some(replicas)
            && s.conditions.iter().flatten().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
            });
        done.then_some(d)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_rolls_back_and_scales() {
    let h = Harness::start().await;
    let ns = "default";
    let deploys: Api<Deployment> = Api::namespaced(h.admin.clone(), ns);
    let rss: Api<ReplicaSet> = Api::namespaced(h.admin.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), ns);
    deploys
        .create(&PostParams::default(), &deployment("web", "nginx:1.0"))
        .await
        .unwrap();

    // One ReplicaSet named <deploy>-<hash> with 3 pods, owned and labelled.
    let rs1 = eventually(20, "first replicaset with 3 pods", || async {
        let list = replica_sets(&rss).await;
        let pods = pods.list(&ListParams::default()).await.ok()?.items;
        (list.len() == 1 && pods.len() == 3).then(|| list[0].clone())
    })
    .await;
    let hash = rs1.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        rs1.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(rev(&rs1.metadata).as_deref(), Some("1"));
    let owner = &rs1.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Deployment", Some(true))
    );
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        assert!(p
            .metadata
            .name
            .unwrap()
            .starts_with(&format!("web-{hash}-")));
        assert_eq!(p.metadata.labels.unwrap()["pod-template-hash"], hash);
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", rs1.metadata.name.as_deref().unwrap())
        );
    }
    // Not ready yet: not available.
    let d = deploys.get("web").await.unwrap();
    assert_ne!(
        d.status.as_ref().and_then(|s| s.available_replicas),
        Some(3)
    );

    // The node side marks pods ready: Available, rollout complete, revision 1.
    let node = node_side_loop(h.admin.clone(), ns, NodeSide::Ready);
    let d = rolled_out(&deploys, "web", 3).await;
    let available = d
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Available")
        .unwrap()
        .clone();
    assert_eq!(
        (available.status.as_str(), available.reason.as_deref()),
        ("True", Some("MinimumReplicasAvailable"))
    );
    assert_eq!(rev(&d.metadata).as_deref(), Some("1"));
    assert_eq!(d.status.as_ref().unwrap().ready_replicas, Some(3));
    assert_eq!(d.status.as_ref().unwrap().unavailable_replicas, Some(0));

    // New image: roll over to a second ReplicaSet within maxSurge 1 / maxUnavailable 0.
    deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2.0"}]}}}})))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut max_total = 0;
    let mut min_ready = i32::MAX;
    loop {
        let list = replica_sets(&rss).await;
        let total: i32 = list
            .iter()
            .map(|r| r.spec.as_ref().unwrap().replicas.unwrap())
            .sum();
        max_total = max_total.max(total);
        let ready = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| {
                kinit_controllers::workloads::pods::is_ready(p)
                    && p.metadata.deletion_timestamp.is_none()
            })
            .count() as i32;
        min_ready = min_ready.min(ready);
        let d = deploys.get("web").await.unwrap();
        let s = d.status.clone().unwrap_or_default();
        if s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(3)
            && s.replicas == Some(3)
            && s.available_replicas == Some(3)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rolling update did not finish: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        max_total <= 4,
        "maxSurge 1 exceeded: {max_total} replicas at once"
    );
    assert!(
        min_ready >= 3,
        "maxUnavailable 0 violated: only {min_ready} ready pods at one point"
    );
    let d = rolled_out(&deploys, "web", 3).await;
    assert_eq!(rev(&d.metadata).as_deref(), Some("2"));
    let list = replica_sets(&rss).await;
    assert_eq!(list.len(), 2);
    let rs2 = list
        .iter()
        .find(|r| image_of(r) == "nginx:2.0")
        .unwrap()
        .clone();
    assert_eq!(rev(&rs2.metadata).as_deref(), Some("2"));
    assert_eq!(rs2.spec.as_ref().unwrap().replicas, Some(3));
    let old = list
        .iter()
        .find(|r| r.metadata.uid == rs1.metadata.uid)
        .unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));

    // Rollback as `kubectl rollout undo --to-revision=1` does: copy the old template (without
    // its hash label) into the deployment. The old ReplicaSet is reused as revision 3.
    let mut template =
        serde_json::to_value(rs1.spec.as_ref().unwrap().template.as_ref().unwrap()).unwrap();
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("pod-template-hash");
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([
                    {"op": "replace", "path": "/spec/template", "value": template}
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    eventually(60, "rollback to finish", || async {
        let d = deploys.get("web").await.ok()?;
        (rev(&d.metadata).as_deref() == Some("3")).then_some(())?;
        let list = replica_sets(&rss).await;
        let rs = list.iter().find(|r| r.metadata.uid == rs1.metadata.uid)?;
        (rs.spec.as_ref()?.replicas == Some(3) && rev(&rs.metadata).as_deref() == Some("3"))
            .then_some(d)
    })
    .await;
    assert_eq!(
        replica_sets(&rss).await.len(),
        2,
        "rollback must not create a third replicaset"
    );
    rolled_out(&deploys, "web", 3).await;

    // Scale up and down: the current ReplicaSet follows.
    for n in [5, 2] {
        deploys
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": n}})),
            )
            .await
            .unwrap();
        rolled_out(&deploys, "web", n).await;
        let rs = rss
            .get(rs1.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(n));
        eventually(20, "pod count to follow the scale", || async {
            let live = pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count();
            (live == n as usize).then_some(())
        })
        .await;
    }

    kubectl_rollout(&h, &deploys, &rss).await;
    node.abort();
    h.shutdown().await;
}

fn kubectl_path() -> Option<std::path::PathBuf> {
    let pinned = std::path::PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    if pinned.exists() {
        return Some(pinned);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubectl"))
            .find(|p| p.exists())
    })
}

/// `kubectl rollout status/history/undo` against the server.
async fn kubectl_rollout(h: &Harness, deploys: &Api<Deployment>, rss: &Api<ReplicaSet>) {
    let Some(kubectl) = kubectl_path() else {
        if std::env::var("KINIT_E2E").as_deref() == Ok("1") {
            panic!("KINIT_E2E=1 but kubectl was not found (/usr/lib/google-cloud-sdk/bin/kubectl.1.32 or PATH)");
        }
        eprintln!("\n*** SKIPPING the kubectl rollout part: no kubectl found (set KINIT_E2E=1 to make this fatal) ***\n");
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let kubeconfig = h.ts.admin_kubeconfig();
    let run = |args: Vec<String>| {
        let kubectl = kubectl.clone();
        let kubeconfig = kubeconfig.clone();
        let cache = cache.path().to_path_buf();
        async move {
            let out = tokio::process::Command::new(&kubectl)
                .args(&args)
                .env("KUBECONFIG", &kubeconfig)
                .env("KUBECACHEDIR", &cache)
                .env("HOME", &cache)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(
                out.status.success(),
                "kubectl {args:?} failed: {stdout}\n{stderr}"
            );
            stdout
        }
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let status = run(s(&["rollout", "status", "deployment/web", "--timeout=60s"])).await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let history = run(s(&["rollout", "history", "deployment/web"])).await;
    assert!(
        history.contains('2') && history.contains('3'),
        "history lists revisions 2 and 3: {history}"
    );
    // Undo goes back to revision 2 (nginx:2.0): that ReplicaSet is reused as revision 4.
    run(s(&["rollout", "undo", "deployment/web"])).await;
    let status = run(s(&["rollout", "status", "deployment/web", "--timeout=60s"])).await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let d = deploys.get("web").await.unwrap();
    assert_eq!(rev(&d.metadata).as_deref(), Some("4"));
    let list = replica_sets(rss).await;
    assert_eq!(list.len(), 2);
    let current = list
        .iter()
        .find(|r| rev(&r.metadata).as_deref() == Some("4"))
        .unwrap();
    assert_eq!(image_of(current), "nginx:2.0");
    let history = run(s(&["rollout", "history", "deployment/web"])).await;
    assert!(history.contains('4'), "{history}");
}
