//! The scheduler against kinit's real API server (in process), authenticated as
//! `system:kube-scheduler` so the default RBAC policy is exercised too.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kinit_apiserver::testing::TestServer;
use kinit_scheduler::leader::Attempt;
use kinit_scheduler::{LeaderElectionConfig, LeaderElector, SchedulerOptions};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

async fn client(path: &std::path::Path) -> Client {
    kinit_component_base::client(Some(path)).await.unwrap()
}

struct Env {
    ts: TestServer,
    admin: Client,
    scheduler: Client,
}

async fn env() -> Env {
    let ts = TestServer::start().await;
    let admin = client(&ts.admin_kubeconfig()).await;
    let scheduler = client(&ts.kubeconfig_for("system:kube-scheduler", &[])).await;
    Env {
        ts,
        admin,
        scheduler,
    }
}

/// Creates a Ready node with `cpu` allocatable and extra labels/taints, then sets its status.
async fn create_node(admin: &Client, name: &str, cpu: &str, labels: Value, taints: Value) {
    let api: Api<Node> = Api::all(admin.clone());
    let mut l = json!({"kubernetes.io/hostname": name});
    l.as_object_mut()
        .unwrap()
        .extend(labels.as_object().cloned().unwrap_or_default());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": l},
        "spec": {"taints": taints},
    }))
    .unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

async fn create_pod(admin: &Client, name: &str, extra_spec: Value, meta: Value) {
    let api: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    spec.as_object_mut()
        .unwrap()
        .extend(extra_spec.as_object().cloned().unwrap_or_default());
    let mut metadata = json!({"name": name});
    metadata
        .as_object_mut()
        .unwrap()
        .extend(meta.as_object().cloned().unwrap_or_default());
    let pod: Pod = serde_json::from_value(json!({"metadata": metadata, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
}

fn cpu_request(cpu: &str) -> Value {
    json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]})
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node_of(admin: &Client, pod: &str) -> String {
    let api: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let p = pod.to_string();
    wait_for(
        &format!("{pod} to be bound"),
        Duration::from_secs(20),
        || {
            let api = api.clone();
            let p = p.clone();
            async move {
                api.get(&p)
                    .await
                    .ok()
                    .and_then(|p| p.spec.and_then(|s| s.node_name))
            }
        },
    )
    .await
}

fn start(
    env: &Env,
    election: Option<LeaderElectionConfig>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let client = env.scheduler.clone();
    let handle = tokio::spawn(async move {
        kinit_scheduler::run_with_client(client, SchedulerOptions::default(), election, rx)
            .await
            .unwrap();
    });
    (tx, handle)
}

#[tokio::test]
async fn places_pods_by_selector_affinity_taints_and_resources_and_explains_failures() {
    let env = env().await;
    let a = &env.admin;
    create_node(a, "n1", "4", json!({"disk": "ssd"}), json!([])).await;
    create_node(
        a,
        "n2",
        "4",
        json!({}),
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    create_node(a, "n3", "1", json!({}), json!([])).await;
    let (stop, handle) = start(&env, None);

    create_pod(
        a,
        "ssd",
        json!({"nodeSelector": {"disk": "ssd"}}),
        json!({}),
    )
    .await;
    create_pod(
        a,
        "db",
        json!({
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}
            ]}}}
        }),
        json!({}),
    )
    .await;
    create_pod(a, "big", cpu_request("3500m"), json!({})).await;
    assert_eq!(node_of(a, "ssd").await, "n1");
    assert_eq!(node_of(a, "db").await, "n2");
    assert_eq!(node_of(a, "big").await, "n1");

    // Fits nowhere: event + condition with kube-scheduler's message.
    create_pod(a, "huge", cpu_request("8"), json!({})).await;
    let expected = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, 2 Insufficient cpu.";
    let events: Api<Event> = Api::namespaced(a.clone(), "default");
    let event = wait_for("FailedScheduling event", Duration::from_secs(20), || {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("FailedScheduling")
                        && e.involved_object.name.as_deref() == Some("huge")
                })
        }
    })
    .await;
    assert_eq!(event.message.as_deref(), Some(expected));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.involved_object.kind.as_deref(), Some("Pod"));
    let pods: Api<Pod> = Api::namespaced(a.clone(), "default");
    let cond = wait_for("PodScheduled=False", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("huge").await.ok()?;
            p.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        }
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(cond.message.as_deref(), Some(expected));
    // Successful bindings are reported too.
    let scheduled = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .count();
    assert!(scheduled >= 1, "Scheduled events recorded");

    // A big enough node appears: the parked pod is retried and bound there.
    create_node(a, "n4", "16", json!({}), json!([])).await;
    assert_eq!(node_of(a, "huge").await, "n4");

    // Pods for other schedulers are left alone.
    create_pod(
        a,
        "other",
        json!({"schedulerName": "my-scheduler"}),
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let other = pods.get("other").await.unwrap();
    assert_eq!(other.spec.unwrap().node_name, None);

    stop.send(true).unwrap();
    handle.await.unwrap();
}

#[tokio::test]
async fn spreads_replicas_of_one_owner_over_three_nodes() {
    let env = env().await;
    let a = &env.admin;
    for n in ["s1", "s2", "s3"] {
        create_node(a, n, "4", json!({}), json!([])).await;
    }
    // Make s1 busier than the others so least-allocated alone would prefer s2/s3.
    create_pod(a, "filler", cpu_request("500m"), json!({})).await;
    let (stop, handle) = start(&env, None);
    let filler_node = node_of(a, "filler").await;
    let owner = json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "web-5d9c", "uid": "5b3b0a8e-0000-4000-8000-000000000001", "controller": true}]});
    for i in 0..6 {
        create_pod(a, &format!("web-{i}"), cpu_request("100m"), owner.clone()).await;
    }
    let mut per_node = std::collections::BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(node_of(a, &format!("web-{i}")).await)
            .or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?} (filler on {filler_node})");
    assert!(per_node.values().all(|&n| n == 2), "{per_node:?}");
    stop.send(true).unwrap();
    handle.await.unwrap();
}

fn election(identity: &str) -> LeaderElectionConfig {
    LeaderElectionConfig {
        namespace: "kube-system".into(),
        name: "kube-scheduler".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn leader_election_excludes_a_second_instance_until_release() {
    let env = env().await;
    let mut first = LeaderElector::new(env.scheduler.clone(), election("a"));
    let mut second = LeaderElector::new(env.scheduler.clone(), election("b"));
    assert_eq!(first.try_acquire_or_renew().await.unwrap(), Attempt::Held);
    assert_eq!(
        second.try_acquire_or_renew().await.unwrap(),
        Attempt::HeldBy("a".into())
    );
    assert_eq!(
        first.try_acquire_or_renew().await.unwrap(),
        Attempt::Held,
        "renew"
    );
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "kube-system");
    let lease = leases.get("kube-scheduler").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("a"));
    assert_eq!(lease.lease_duration_seconds, Some(3));
    first.release().await.unwrap();
    assert_eq!(second.try_acquire_or_renew().await.unwrap(), Attempt::Held);
    let lease = leases.get("kube-scheduler").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));
}

#[tokio::test]
async fn a_standby_takes_over_after_the_leader_stops_renewing() {
    let env = env().await;
    let mut first = LeaderElector::new(env.scheduler.clone(), election("a"));
    assert_eq!(first.try_acquire_or_renew().await.unwrap(), Attempt::Held);
    // "a" dies without releasing; "b" must wait a lease duration from when it first saw it.
    let mut second = LeaderElector::new(env.scheduler.clone(), election("b"));
    let (_tx, mut rx) = watch::channel(false);
    let started = tokio::time::Instant::now();
    assert!(second.acquire(&mut rx).await);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The old leader notices on its next renewal attempts and gives up within the deadline.
    let (_tx2, mut rx2) = watch::channel(false);
    match first.hold(&mut rx2).await {
        kinit_scheduler::Leadership::Lost(detail) => assert!(detail.contains('b'), "{detail}"),
        other => panic!("expected Lost, got {other:?}"),
    }
}

#[tokio::test]
async fn schedules_only_while_leading_and_releases_on_stop() {
    let env = env().await;
    let a = &env.admin;
    create_node(a, "n1", "4", json!({}), json!([])).await;
    let (stop, handle) = start(&env, Some(election("leader-1")));
    create_pod(a, "p1", json!({}), json!({})).await;
    assert_eq!(node_of(a, "p1").await, "n1");
    let leases: Api<Lease> = Api::namespaced(a.clone(), "kube-system");
    let lease = leases.get("kube-scheduler").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("leader-1"));
    stop.send(true).unwrap();
    handle.await.unwrap();
    let lease = leases.get("kube-scheduler").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity, None, "released on stop");
}

#[tokio::test]
async fn run_serves_healthz_and_schedules_with_the_scheduler_kubeconfig() {
    let env = env().await;
    create_node(&env.admin, "n1", "4", json!({}), json!([])).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = env.ts.kubeconfig_for("system:kube-scheduler", &[]);
    let args = <ArgsCli as clap::Parser>::parse_from([
        "scheduler".to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        "--leader-elect=true".into(),
        "--leader-elect-lease-duration=3s".into(),
        "--leader-elect-renew-deadline=2s".into(),
        "--leader-elect-retry-period=500ms".into(),
    ])
    .args;
    let task = tokio::spawn(kinit_scheduler::run(args));
    create_pod(&env.admin, "p", json!({}), json!({})).await;
    assert_eq!(node_of(&env.admin, "p").await, "n1");
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let body = http
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.text().await.unwrap(), "ok");
    let missing = http
        .get(format!("https://127.0.0.1:{port}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(!task.is_finished());
    task.abort();
}

#[derive(clap::Parser)]
struct ArgsCli {
    #[command(flatten)]
    args: kinit_scheduler::SchedulerArgs,
}
