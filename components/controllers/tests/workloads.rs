//! ReplicaSets, Jobs and DaemonSets against a real API server.

mod common;

use std::time::Duration;

use common::{eventually, node_side, node_side_loop, Harness, NodeSide};
use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kinit_controllers::workloads::daemonset::pod_node;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn live(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_adopts_never_overshoots_and_scales_down_unready_first() {
    let h = Harness::start().await;
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(h.admin.clone(), "default");
    // An orphan that matches the selector is adopted instead of creating a pod for it.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "cache"}},
        "spec": {"containers": [{"name": "c", "image": "redis"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "cache"},
        "spec": {
            "replicas": 10,
            "selector": {"matchLabels": {"app": "cache"}},
            "template": {"metadata": {"labels": {"app": "cache"}},
                         "spec": {"containers": [{"name": "c", "image": "redis"}]}}
        }
    }))
    .unwrap();
    rss.create(&PostParams::default(), &rs).await.unwrap();
    // Sample while pods are being created: never more than 10.
    let mut max_seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = pods.list(&ListParams::default()).await.unwrap().items;
        max_seen = max_seen.max(live(&list).len());
        let rs = rss.get("cache").await.unwrap();
        if rs.status.as_ref().map(|s| s.replicas) == Some(10) && live(&list).len() == 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicaset did not reach 10 pods"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The manager leads through the kube-system/kube-controller-manager Lease.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(h.admin.clone(), "kube-system");
    let lease = leases.get("kube-controller-manager").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("test-cm")
    );
    // Give a late duplicate create a chance to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let list = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(live(&list).len(), 10);
    assert!(max_seen <= 10, "over-created: saw {max_seen} pods");
    let orphan = pods.get("orphan").await.unwrap();
    let owner = &orphan.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("ReplicaSet", "cache", Some(true))
    );
    for p in &list {
        let name = p.metadata.name.as_deref().unwrap();
        assert!(name == "orphan" || name.starts_with("cache-"), "{name}");
    }

    // Ready all but three; status reflects it.
    node_side(&h.admin, "default", NodeSide::Ready).await;
    let unready: Vec<String> = list
        .iter()
        .take(3)
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    for name in &unready {
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        )
        .await
        .unwrap();
    }
    let status = eventually(20, "status with 7 ready", || async {
        let s = rss.get("cache").await.ok()?.status?;
        (s.ready_replicas == Some(7) && s.available_replicas == Some(7)).then_some(s)
    })
    .await;
    assert_eq!(status.replicas, 10);
    assert_eq!(status.fully_labeled_replicas, Some(10));
    assert_eq!(status.observed_generation, Some(1));

    // Scale to 7: the three unready pods go.
    rss.patch(
        "cache",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 7}})),
    )
    .await
    .unwrap();
    eventually(20, "scale down to 7", || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        (live(&list).len() == 7).then_some(())
    })
    .await;
    for name in &unready {
        assert!(
            pods.get_opt(name).await.unwrap().is_none(),
            "unready pod {name} should be deleted first"
        );
    }

    // A pod whose labels stop matching is released and replaced.
    let victim = pods.list(&ListParams::default()).await.unwrap().items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    pods.patch(
        &victim,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "debug"}}})),
    )
    .await
    .unwrap();
    eventually(20, "release and replacement", || async {
        let p = pods.get(&victim).await.ok()?;
        let released = p
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty());
        let matching = pods
            .list(&ListParams::default().labels("app=cache"))
            .await
            .ok()?
            .items;
        (released && live(&matching).len() == 7).then_some(())
    })
    .await;
    h.shutdown().await;
}

fn job(name: &str, spec: serde_json::Value) -> Job {
    let mut spec = spec;
    spec["template"] = json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}});
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_on_backoff_limit_and_expire() {
    let h = Harness::start().await;
    let ns_ok = "default";
    let jobs: Api<Job> = Api::namespaced(h.admin.clone(), ns_ok);
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), ns_ok);

    // completions 3, parallelism 2: never more than 2 active, then Complete.
    jobs.create(
        &PostParams::default(),
        &job("batch", json!({"completions": 3, "parallelism": 2})),
    )
    .await
    .unwrap();
    let first = eventually(20, "2 job pods", || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        (list.len() == 2).then_some(list)
    })
    .await;
    for p in &first {
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Job", "batch"));
        assert_eq!(p.metadata.labels.as_ref().unwrap()["job-name"], "batch");
    }
    let j = eventually(10, "active=2", || async {
        let j = jobs.get("batch").await.ok()?;
        (j.status.as_ref()?.active == Some(2)).then_some(j)
    })
    .await;
    assert!(j.status.unwrap().start_time.is_some());
    let node = node_side_loop(h.admin.clone(), ns_ok, NodeSide::Succeed);
    let j = eventually(30, "job complete", || async {
        let j = jobs.get("batch").await.ok()?;
        let s = j.status.as_ref()?;
        s.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Complete" && c.status == "True")
            .then_some(j)
    })
    .await;
    let s = j.status.unwrap();
    assert_eq!(s.succeeded, Some(3));
    assert_eq!(s.active, Some(0));
    assert!(s.completion_time.is_some());
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        3,
        "no extra pods"
    );
    node.abort();

    // ttlSecondsAfterFinished: the finished Job is deleted.
    jobs.create(
        &PostParams::default(),
        &job("short", json!({"ttlSecondsAfterFinished": 1})),
    )
    .await
    .unwrap();
    let node = node_side_loop(h.admin.clone(), ns_ok, NodeSide::Succeed);
    eventually(30, "finished job with ttl deleted", || async {
        jobs.get_opt("short").await.ok()?.is_none().then_some(())
    })
    .await;
    node.abort();

    // backoffLimit 0: the first failed pod fails the Job.
    jobs.create(
        &PostParams::default(),
        &job("doomed", json!({"backoffLimit": 0})),
    )
    .await
    .unwrap();
    eventually(20, "doomed pod", || async {
        let list = pods
            .list(&ListParams::default().labels("job-name=doomed"))
            .await
            .ok()?
            .items;
        (!list.is_empty()).then_some(())
    })
    .await;
    node_side(&h.admin, ns_ok, NodeSide::Fail).await;
    let j = eventually(20, "job failed", || async {
        let j = jobs.get("doomed").await.ok()?;
        j.status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True")
            .then_some(j)
    })
    .await;
    let s = j.status.unwrap();
    let failed = s
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(s.failed, Some(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list = pods
        .list(&ListParams::default().labels("job-name=doomed"))
        .await
        .unwrap()
        .items;
    assert_eq!(list.len(), 1, "no retry after the backoff limit");

    // activeDeadlineSeconds: a Job running too long fails with DeadlineExceeded.
    jobs.create(
        &PostParams::default(),
        &job("slow", json!({"activeDeadlineSeconds": 1})),
    )
    .await
    .unwrap();
    let j = eventually(20, "deadline exceeded", || async {
        let j = jobs.get("slow").await.ok()?;
        j.status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.reason.as_deref() == Some("DeadlineExceeded"))
            .then_some(j)
    })
    .await;
    assert_eq!(j.status.unwrap().active, Some(0));
    h.shutdown().await;
}

fn node(name: &str, taint: Option<(&str, &str)>, unschedulable: bool) -> Node {
    let taints: Vec<_> = taint
        .map(|(k, e)| json!({"key": k, "effect": e}))
        .into_iter()
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints, "unschedulable": unschedulable}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_per_eligible_node_and_rolls() {
    let h = Harness::start().await;
    let nodes: Api<Node> = Api::all(h.admin.clone());
    for n in [
        node("n1", None, false),
        node("n2", None, false),
        node(
            "cp",
            Some(("node-role.kubernetes.io/control-plane", "NoSchedule")),
            false,
        ),
        node(
            "cordoned",
            Some(("node.kubernetes.io/unschedulable", "NoSchedule")),
            true,
        ),
    ] {
        nodes.create(&PostParams::default(), &n).await.unwrap();
    }
    let dss: Api<DaemonSet> = Api::namespaced(h.admin.clone(), "kube-system");
    let pods: Api<Pod> = Api::namespaced(h.admin.clone(), "kube-system");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "c", "image": "agent:1"}]}}
        }
    }))
    .unwrap();
    dss.create(&PostParams::default(), &ds).await.unwrap();
    let placed = eventually(20, "3 daemon pods", || async {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?
            .items;
        (list.len() == 3).then_some(list)
    })
    .await;
    let mut on: Vec<String> = placed.iter().map(|p| pod_node(p).unwrap()).collect();
    on.sort();
    assert_eq!(on, ["cordoned", "n1", "n2"]);
    for p in &placed {
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.node_name.is_none(), "the scheduler binds daemon pods");
        let tolerations = spec.tolerations.as_ref().unwrap();
        assert!(tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable")));
    }

    let node_loop = node_side_loop(h.admin.clone(), "kube-system", NodeSide::Ready);
    let s = eventually(20, "daemonset status ready", || async {
        let s = dss.get("agent").await.ok()?.status?;
        (s.number_ready == 3 && s.number_available == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(s.desired_number_scheduled, 3);
    assert_eq!(s.current_number_scheduled, 3);
    assert_eq!(s.updated_number_scheduled, Some(3));
    assert_eq!(s.number_misscheduled, 0);
    assert_eq!(s.observed_generation, Some(1));

    // Rolling update: at most one node without an available pod at a time.
    dss.patch("agent", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:2"}]}}}})))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut min_ready = usize::MAX;
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .unwrap()
            .items;
        let ready = live(&list)
            .iter()
            .filter(|p| kinit_controllers::workloads::pods::is_ready(p))
            .count();
        min_ready = min_ready.min(ready);
        let ds = dss.get("agent").await.unwrap();
        let s = ds.status.clone().unwrap();
        let done = s.observed_generation == ds.metadata.generation
            && s.updated_number_scheduled == Some(3)
            && s.number_available == Some(3);
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "daemonset rollout stuck: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        min_ready >= 2,
        "maxUnavailable 1 violated: {min_ready} ready"
    );
    let list = pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items;
    assert!(live(&list)
        .iter()
        .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("agent:2")));

    // A new node gets a pod; a removed node loses it.
    nodes
        .create(&PostParams::default(), &node("n3", None, false))
        .await
        .unwrap();
    nodes.delete("n1", &Default::default()).await.unwrap();
    eventually(20, "pods follow nodes", || async {
        let list = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .ok()?
            .items;
        let mut on: Vec<String> = live(&list).iter().filter_map(|p| pod_node(p)).collect();
        on.sort();
        (on == ["cordoned", "n2", "n3"]).then_some(())
    })
    .await;
    node_loop.abort();
    h.shutdown().await;
}
