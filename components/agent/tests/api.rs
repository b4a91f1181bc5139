//! The agent against a real in-process API server (kinit-apiserver's TestServer), with the
//! in-memory runtime: registration, lease, API pods, deletion, static and mirror pods, token
//! volumes and the HTTPS server's authentication.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kinit_agent::config::{AgentConfiguration, CgroupDriver};
use kinit_agent::fake::FakeRuntime;
use kinit_agent::{client_from_kubeconfig, Agent, Settings};
use kinit_apiserver::testing::TestServer;
use kube::api::{Api, DeleteParams, PostParams};

struct Env {
    ts: TestServer,
    dir: tempfile::TempDir,
    admin: kube::Client,
}

async fn env() -> Env {
    let ts = TestServer::start().await;
    let (admin, _) = client_from_kubeconfig(&ts.admin_kubeconfig())
        .await
        .unwrap();
    Env {
        ts,
        dir: tempfile::tempdir().unwrap(),
        admin,
    }
}

fn settings(dir: &Path, node: &str) -> Settings {
    let mut config = AgentConfiguration {
        node_name: Some(node.into()),
        cgroup_driver: CgroupDriver::Cgroupfs,
        cgroup_parent: format!("/kinit-test-{node}"),
        root_dir: dir.join("root"),
        pod_logs_dir: dir.join("logs"),
        pod_manifest_path: dir.join("manifests"),
        node_status_update_frequency_seconds: 1,
        static_pod_rescan_seconds: 1,
        // These tests run in the machine's own network namespace: no service proxy table
        // there (the proxy has its own tests in private namespaces).
        service_proxy: false,
        ..Default::default()
    };
    config
        .node_labels
        .insert("node-role.kubernetes.io/worker".into(), String::new());
    config.register_with_taints = vec![k8s_openapi::api::core::v1::Taint {
        key: "example.com/dedicated".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    }];
    Settings {
        node_name: node.into(),
        node_ip: Some("127.0.0.1".parse().unwrap()),
        kubeconfig: dir.join("unused"),
        config,
    }
}

async fn start_agent(e: &Env, node: &str, rt: Arc<FakeRuntime>) -> Agent {
    let kubeconfig =
        e.ts.kubeconfig_for(&format!("system:node:{node}"), &["system:nodes"]);
    let (client, ca) = client_from_kubeconfig(&kubeconfig).await.unwrap();
    std::fs::create_dir_all(e.dir.path().join("manifests")).unwrap();
    Agent::start(settings(e.dir.path(), node), rt, client, ca, None)
}

async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod(name: &str, node: &str, extra: serde_json::Value) -> Pod {
    let mut spec = serde_json::json!({
        "nodeName": node,
        "terminationGracePeriodSeconds": 5,
        "containers": [{"name": "c", "image": "busybox:1"}]
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec
    }))
    .unwrap()
}

#[tokio::test]
async fn registers_node_with_status_and_renews_lease() {
    let e = env().await;
    let _agent = start_agent(&e, "n1", Arc::new(FakeRuntime::new())).await;
    let nodes: Api<Node> = Api::all(e.admin.clone());
    let node = eventually("a Ready node", 20, || async {
        let n = nodes.get_opt("n1").await.unwrap()?;
        let ready = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(n)
    })
    .await;
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "n1");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert!(labels.contains_key("node-role.kubernetes.io/worker"));
    let taints = node.spec.as_ref().unwrap().taints.clone().unwrap();
    assert_eq!(taints[0].key, "example.com/dedicated");
    let status = node.status.unwrap();
    let cap = status.capacity.unwrap();
    for k in ["cpu", "memory", "pods", "ephemeral-storage"] {
        assert!(cap.contains_key(k), "capacity {k}");
    }
    assert!(status.allocatable.unwrap().contains_key("memory"));
    let types: Vec<String> = status
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(types.contains(&t.to_string()), "{t}");
    }
    let addresses = status.addresses.unwrap();
    assert!(addresses
        .iter()
        .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1"));
    assert!(addresses.iter().any(|a| a.type_ == "Hostname"));
    let info = status.node_info.unwrap();
    assert_eq!(info.container_runtime_version, "fake://1.0");
    assert_eq!(info.operating_system, "linux");

    let leases: Api<Lease> = Api::namespaced(e.admin.clone(), "kube-node-lease");
    let first = eventually("the lease", 10, || async {
        leases.get_opt("n1").await.unwrap()?.spec?.renew_time
    })
    .await;
    let lease = leases.get("n1").await.unwrap();
    assert_eq!(
        lease.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("n1")
    );
    assert_eq!(lease.metadata.owner_references.unwrap()[0].kind, "Node");
    eventually("a renewal", 10, || {
        let leases = leases.clone();
        let first = first.clone();
        async move {
            let t = leases.get("n1").await.unwrap().spec?.renew_time?;
            (t != first).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn runs_bound_pods_reports_status_and_finishes_deletion() {
    let e = env().await;
    let rt = Arc::new(FakeRuntime::new());
    let _agent = start_agent(&e, "n1", rt.clone()).await;
    let pods: Api<Pod> = Api::namespaced(e.admin.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod("web", "n1", serde_json::json!({})),
    )
    .await
    .unwrap();
    // A pod for another node is not this agent's business.
    pods.create(
        &PostParams::default(),
        &pod("elsewhere", "n2", serde_json::json!({})),
    )
    .await
    .unwrap();
    let running = eventually("web Running", 20, || async {
        let p = pods.get("web").await.unwrap();
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    let status = running.status.unwrap();
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.pod_ip.as_deref().unwrap().starts_with("10.244.0."));
    let cs = &status.container_statuses.unwrap()[0];
    assert!(cs.ready);
    assert!(cs.state.as_ref().unwrap().running.is_some());
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(rt.sandbox_count(), 1, "only the pod bound to n1 runs");

    pods.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("web gone", 20, || async {
        pods.get_opt("web").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        rt.calls().iter().any(|c| c == "StopContainer c 5"),
        "{:?}",
        rt.calls()
    );
    eventually("sandbox removed", 10, || async {
        (rt.sandbox_count() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn static_pods_get_mirror_pods() {
    let e = env().await;
    let rt = Arc::new(FakeRuntime::new());
    let manifests = e.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let manifest = |image: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n  namespace: kube-system\n  labels:\n    component: etcd\nspec:\n  hostNetwork: true\n  containers:\n  - name: etcd\n    image: {image}\n")
    };
    std::fs::write(manifests.join("etcd.yaml"), manifest("etcd:1")).unwrap();
    let _agent = start_agent(&e, "cp1", rt.clone()).await;
    let pods: Api<Pod> = Api::namespaced(e.admin.clone(), "kube-system");
    let mirror = eventually("mirror pod Running", 20, || async {
        let p = pods.get_opt("etcd-cp1").await.unwrap()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    let annotations = mirror.metadata.annotations.clone().unwrap();
    let hash = annotations["kubernetes.io/config.mirror"].clone();
    assert_eq!(mirror.metadata.owner_references.unwrap()[0].name, "cp1");
    assert_eq!(
        mirror.status.unwrap().pod_ip.as_deref(),
        Some("127.0.0.1"),
        "hostNetwork pods have the node's IP"
    );
    // A changed manifest restarts the pod and replaces the mirror.
    std::fs::write(manifests.join("etcd.yaml"), manifest("etcd:2")).unwrap();
    eventually("new mirror", 20, || async {
        let p = pods.get_opt("etcd-cp1").await.unwrap()?;
        let h = p
            .metadata
            .annotations?
            .get("kubernetes.io/config.mirror")?
            .clone();
        (h != hash && p.spec?.containers[0].image.as_deref() == Some("etcd:2")).then_some(())
    })
    .await;
    eventually("old sandbox gone", 20, || async {
        (rt.sandbox_count() == 1).then_some(())
    })
    .await;
    // A deleted mirror pod comes back.
    pods.delete(
        "etcd-cp1",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("recreated mirror", 30, || async {
        pods.get_opt("etcd-cp1").await.unwrap().map(|_| ())
    })
    .await;
    // Removing the manifest stops the pod and deletes the mirror.
    std::fs::remove_file(manifests.join("etcd.yaml")).unwrap();
    eventually("mirror deleted", 30, || async {
        pods.get_opt("etcd-cp1")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    eventually("static pod removed", 20, || async {
        (rt.sandbox_count() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn projected_service_account_token_is_requested() {
    let e = env().await;
    let rt = Arc::new(FakeRuntime::new());
    let _agent = start_agent(&e, "n1", rt.clone()).await;
    let pods: Api<Pod> = Api::namespaced(e.admin.clone(), "default");
    let p = pod(
        "tok",
        "n1",
        serde_json::json!({
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607, "audience": "vault"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
            ]}}],
            "containers": [{"name": "c", "image": "busybox:1",
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}]
        }),
    );
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    let uid = created.metadata.uid.unwrap();
    let dir = e
        .dir
        .path()
        .join("root/pods")
        .join(&uid)
        .join("volumes/kubernetes.io~projected/kube-api-access");
    let token = eventually("token file", 20, || {
        let dir = dir.clone();
        async move { std::fs::read_to_string(dir.join("token")).ok() }
    })
    .await;
    assert_eq!(token.split('.').count(), 3, "a JWT");
    use base64::Engine;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1).unwrap())
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["vault"]));
    assert_eq!(claims["kubernetes.io"]["pod"]["uid"], uid.as_str());
    assert!(std::fs::read_to_string(dir.join("ca.crt"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(
        std::fs::read_to_string(dir.join("namespace")).unwrap(),
        "default"
    );
    let mount = rt.container_configs().pop().unwrap().mounts[0].clone();
    assert!(mount.readonly);
    assert_eq!(
        mount.container_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
}

#[tokio::test]
async fn server_authenticates_and_serves_logs() {
    let e = env().await;
    let rt = Arc::new(FakeRuntime::new());
    let node = "n1";
    let kubeconfig =
        e.ts.kubeconfig_for(&format!("system:node:{node}"), &["system:nodes"]);
    let (client, ca) = client_from_kubeconfig(&kubeconfig).await.unwrap();
    let mut s = settings(e.dir.path(), node);
    let pki = e.ts.dir.path().join("pki");
    s.config.client_ca_file = pki.join("ca.crt");
    std::fs::create_dir_all(e.dir.path().join("manifests")).unwrap();
    let tls = kinit_agent::server::serving_tls(&s).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent_cert = std::fs::read(e.dir.path().join("root/pki/agent.crt")).unwrap();
    let _agent = Agent::start(s, rt.clone(), client, ca, Some((listener, tls)));

    let pods: Api<Pod> = Api::namespaced(e.admin.clone(), "default");
    let created = pods
        .create(
            &PostParams::default(),
            &pod("logger", node, serde_json::json!({})),
        )
        .await
        .unwrap();
    let uid = created.metadata.uid.unwrap();
    eventually("running", 20, || async {
        let p = pods.get("logger").await.unwrap();
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let log_dir = e.dir.path().join(format!("logs/default_logger_{uid}/c"));
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(
        log_dir.join("0.log"),
        "2026-01-01T00:00:00.000000001Z stdout F one\n2026-01-01T00:00:01.000000001Z stderr F two\n",
    )
    .unwrap();

    let root = reqwest::Certificate::from_pem(&agent_cert).unwrap();
    let identity = |crt: &str, key: &str| {
        let mut pem = std::fs::read(pki.join(crt)).unwrap();
        pem.extend(std::fs::read(pki.join(key)).unwrap());
        reqwest::Identity::from_pem(&pem).unwrap()
    };
    let build = |id: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder().add_root_certificate(root.clone());
        if let Some(id) = id {
            b = b.identity(id);
        }
        b.build().unwrap()
    };
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    let anonymous = build(None);
    let r = anonymous.get(url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = anonymous
        .get(url("/containerLogs/default/logger/c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let apiserver = build(Some(identity(
        "apiserver-kubelet-client.crt",
        "apiserver-kubelet-client.key",
    )));
    let r = apiserver
        .get(url("/containerLogs/default/logger/c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "one\ntwo\n");
    let r = apiserver
        .get(url(
            "/containerLogs/default/logger/c?tailLines=1&timestamps=true",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "2026-01-01T00:00:01.000000001Z two\n"
    );
    let r = apiserver
        .get(url("/containerLogs/default/nope/c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Follow: the stream ends when the container exits.
    let follow = apiserver
        .get(url(
            "/containerLogs/default/logger/c?follow=true&tailLines=0",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let body = tokio::spawn(async move { follow.text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(log_dir.join("0.log"))
        .unwrap();
    use std::io::Write;
    f.write_all(b"2026-01-01T00:00:02.000000001Z stdout F three\n")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    rt.exit("c", 0);
    let text = tokio::time::timeout(Duration::from_secs(10), body)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "three\n");
}
