//! The cluster controllers against a real in-process API server (kinit-apiserver's TestServer),
//! running as `system:kube-controller-manager` like in a cluster.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kinit_apiserver::testing::TestServer;
use kinit_controllers::cluster::{run, ClusterControllerOptions, ControllerName};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn client_from(path: &std::path::Path) -> Client {
    kinit_component_base::client(Some(path)).await.unwrap()
}

/// A test server, an admin client, and the controllers running as the controller manager.
struct Cluster {
    ts: TestServer,
    admin: Client,
    controllers: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.controllers.abort();
    }
}

async fn cluster(
    enabled: &[ControllerName],
    tweak: impl FnOnce(&mut ClusterControllerOptions),
    before: impl AsyncFnOnce(&Client),
) -> Cluster {
    let ts = TestServer::start().await;
    let admin = client_from(&ts.admin_kubeconfig()).await;
    before(&admin).await;
    let manager = client_from(&ts.kubeconfig_for("system:kube-controller-manager", &[])).await;
    let pki = ts.dir.path().join("pki");
    let mut options = ClusterControllerOptions {
        cluster_signing_cert_file: pki.join("ca.crt"),
        cluster_signing_key_file: pki.join("ca.key"),
        controllers: enabled.iter().copied().collect(),
        ..ClusterControllerOptions::default()
    };
    tweak(&mut options);
    let controllers = tokio::spawn(async move {
        if let Err(e) = run(manager, options).await {
            panic!("controllers stopped: {e}");
        }
    });
    Cluster {
        ts,
        admin,
        controllers,
    }
}

/// Polls `f` until it returns `Some`, failing after [`WAIT`] with `what`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cm(name: &str, owners: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owners},
        "data": {"k": "v"}
    }))
    .unwrap()
}

async fn set_pod_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test]
async fn service_endpoints_follow_pod_readiness() {
    let c = cluster(
        &[ControllerName::Endpoints, ControllerName::EndpointSlice],
        |_| {},
        async |_| {},
    )
    .await;
    let services: Api<Service> = Api::namespaced(c.admin.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.admin.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"tier": "front"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "demo", "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    set_pod_status(&pods, "web-1", "10.244.1.7", false).await;

    let endpoints: Api<Endpoints> = Api::namespaced(c.admin.clone(), "default");
    let not_ready = eventually("a not-ready address", || async {
        let ep = endpoints.get_opt("web").await.unwrap()?;
        let s = ep.subsets?.into_iter().next()?;
        let a = s.not_ready_addresses?.into_iter().next()?;
        (s.ports?[0].port == 8080).then_some(a)
    })
    .await;
    assert_eq!(not_ready.ip, "10.244.1.7");
    assert_eq!(not_ready.target_ref.unwrap().name.as_deref(), Some("web-1"));

    set_pod_status(&pods, "web-1", "10.244.1.7", true).await;
    eventually("a ready address", || async {
        let ep = endpoints.get_opt("web").await.unwrap()?;
        let s = ep.subsets?.into_iter().next()?;
        (s.addresses?.first()?.ip == "10.244.1.7" && s.not_ready_addresses.is_none()).then_some(())
    })
    .await;

    let slices: Api<EndpointSlice> = Api::namespaced(c.admin.clone(), "default");
    let slice = eventually("a ready endpoint slice", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .unwrap();
        let s = list.items.into_iter().next()?;
        let ready = s.endpoints.first()?.conditions.as_ref()?.ready == Some(true);
        ready.then_some(s)
    })
    .await;
    let labels = slice.metadata.labels.clone().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice.metadata.owner_references.unwrap()[0].name, "web");
    assert_eq!(slice.ports.unwrap()[0].port, Some(8080));

    // Pod gone: addresses gone.
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually("empty endpoints", || async {
        let ep = endpoints.get_opt("web").await.unwrap()?;
        ep.subsets.is_none().then_some(())
    })
    .await;

    // The API server's own `kubernetes` service keeps its endpoints.
    let k = endpoints.get("kubernetes").await.unwrap();
    assert_eq!(
        k.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
        "192.0.2.10"
    );
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_content_and_the_namespace() {
    let c = cluster(&[ControllerName::Namespace], |_| {}, async |_| {}).await;
    let namespaces: Api<Namespace> = Api::all(c.admin.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), "doomed");
    cms.create(&PostParams::default(), &cm("one", json!([])))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), "doomed");
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"a": "b"}}))
            .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.admin.clone(), "doomed");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "demo"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the namespace to go away", || async {
        namespaces
            .get_opt("doomed")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    // Other namespaces are untouched.
    assert!(namespaces.get_opt("default").await.unwrap().is_some());
}

#[tokio::test]
async fn garbage_collector_background_foreground_orphan_and_uid_mismatch() {
    let c = cluster(&[ControllerName::GarbageCollector], |_| {}, async |_| {}).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), "default");
    let owner_ref = |owner: &ConfigMap, block: bool| {
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name,
                "uid": owner.metadata.uid, "blockOwnerDeletion": block}])
    };
    let gone = |name: &'static str| {
        let cms = cms.clone();
        async move { cms.get_opt(name).await.unwrap().is_none().then_some(()) }
    };

    // Background: owner goes at once, the dependent follows.
    let owner = cms
        .create(&PostParams::default(), &cm("owner-bg", json!([])))
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &cm("dep-bg", owner_ref(&owner, false)),
    )
    .await
    .unwrap();
    cms.delete("owner-bg", &DeleteParams::background())
        .await
        .unwrap();
    eventually("background dependent deleted", || gone("dep-bg")).await;

    // Foreground: the dependent goes first, then the owner.
    let owner = cms
        .create(&PostParams::default(), &cm("owner-fg", json!([])))
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &cm("dep-fg", owner_ref(&owner, true)),
    )
    .await
    .unwrap();
    cms.delete("owner-fg", &DeleteParams::foreground())
        .await
        .unwrap();
    let waiting = cms.get("owner-fg").await;
    if let Ok(w) = waiting {
        assert!(w.metadata.deletion_timestamp.is_some());
    }
    eventually("foreground dependent deleted", || gone("dep-fg")).await;
    eventually("foreground owner deleted", || gone("owner-fg")).await;

    // Orphan: the owner goes, the dependent stays without the reference.
    let owner = cms
        .create(&PostParams::default(), &cm("owner-or", json!([])))
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &cm("dep-or", owner_ref(&owner, true)),
    )
    .await
    .unwrap();
    cms.delete("owner-or", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually("orphaning owner deleted", || gone("owner-or")).await;
    let dep = cms.get("dep-or").await.unwrap();
    assert!(dep.metadata.owner_references.unwrap_or_default().is_empty());

    // An owner with the right name but another uid counts as missing; a live owner keeps its
    // dependent.
    let live = cms
        .create(&PostParams::default(), &cm("live", json!([])))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("kept", owner_ref(&live, false)))
        .await
        .unwrap();
    let mut impostor = live.clone();
    impostor.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    cms.create(
        &PostParams::default(),
        &cm("stale-uid", owner_ref(&impostor, false)),
    )
    .await
    .unwrap();
    eventually("dependent of a uid-mismatched owner deleted", || {
        gone("stale-uid")
    })
    .await;
    assert!(cms.get_opt("kept").await.unwrap().is_some());
}

fn node(name: &str, pod_cidr: Option<&str>) -> Node {
    let mut spec = json!({});
    if let Some(c) = pod_cidr {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

#[tokio::test]
async fn nodes_get_distinct_pod_cidrs_and_released_ones_are_reused() {
    let c = cluster(
        &[ControllerName::NodeIpam],
        |o| {
            o.allocate_node_cidrs = true;
            o.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        },
        async |admin| {
            // An allocation from before a restart.
            let nodes: Api<Node> = Api::all(admin.clone());
            nodes
                .create(&PostParams::default(), &node("old", Some("10.244.0.0/24")))
                .await
                .unwrap();
        },
    )
    .await;
    let nodes: Api<Node> = Api::all(c.admin.clone());
    for n in ["n1", "n2", "n3"] {
        nodes
            .create(&PostParams::default(), &node(n, None))
            .await
            .unwrap();
    }
    let cidr_of = |name: &'static str| {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get(name).await.unwrap();
            let spec = n.spec?;
            let list = spec.pod_cidrs?;
            (list.len() == 1 && spec.pod_cidr.as_ref() == Some(&list[0])).then(|| list[0].clone())
        }
    };
    let mut got = BTreeSet::new();
    for n in ["n1", "n2", "n3"] {
        got.insert(eventually("a pod CIDR", || cidr_of(n)).await);
    }
    let want: BTreeSet<String> = ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);

    let freed = cidr_of("n2").await.unwrap();
    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    // Give the controller's node cache time to see the deletion.
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes
        .create(&PostParams::default(), &node("n4", None))
        .await
        .unwrap();
    assert_eq!(
        eventually("a pod CIDR for n4", || cidr_of("n4")).await,
        freed
    );
}

#[tokio::test]
async fn node_with_stale_lease_is_tainted_and_untainted_on_recovery() {
    let c = cluster(
        &[ControllerName::NodeLifecycle],
        |o| {
            o.node_monitor_grace_period = Duration::from_secs(1);
            o.node_monitor_period = Duration::from_millis(200);
        },
        async |_| {},
    )
    .await;
    let nodes: Api<Node> = Api::all(c.admin.clone());
    nodes
        .create(&PostParams::default(), &node("w1", None))
        .await
        .unwrap();
    let old = "2020-01-01T00:00:00Z";
    let status = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": old, "lastTransitionTime": old}
    ]}});
    nodes
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(c.admin.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "w1"},
        "spec": {"holderIdentity": "w1", "leaseDurationSeconds": 40, "renewTime": "2020-01-01T00:00:00.000000Z"}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.admin.clone(), "default");
    let pod = |name: &str, seconds: Option<i64>| -> Pod {
        let mut toleration = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"});
        if let Some(s) = seconds {
            toleration["tolerationSeconds"] = json!(s);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "w1", "tolerations": [toleration],
                     "containers": [{"name": "c", "image": "demo"}]}
        }))
        .unwrap()
    };
    pods.create(&PostParams::default(), &pod("short", Some(1)))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("forever", None))
        .await
        .unwrap();

    let taints = eventually("the unreachable taints", || async {
        let n = nodes.get("w1").await.unwrap();
        let taints = n.spec?.taints?;
        (taints.len() == 2).then_some(taints)
    })
    .await;
    assert!(taints
        .iter()
        .all(|t| t.key == "node.kubernetes.io/unreachable"));
    assert!(taints
        .iter()
        .any(|t| t.effect == "NoExecute" && t.time_added.is_some()));
    let n = nodes.get("w1").await.unwrap();
    let ready = n
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "Unknown");

    // The pod tolerating for 1 s is evicted (it is bound, so it terminates gracefully); the one
    // tolerating forever stays.
    eventually("eviction of the pod tolerating 1s", || async {
        let p = pods.get("short").await.ok();
        p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    assert!(pods
        .get("forever")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_none());

    // The kubelet comes back: fresh lease and Ready heartbeat.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    leases
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"renewTime": now}})),
        )
        .await
        .unwrap();
    let status = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}
    ]}});
    nodes
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    eventually("taints removed", || async {
        let n = nodes.get("w1").await.unwrap();
        n.spec?.taints.unwrap_or_default().is_empty().then_some(())
    })
    .await;
}

fn csr_pem(cn: &str, org: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, org);
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn csr_object(name: &str, pem: &str) -> CertificateSigningRequest {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn bootstrap_csr_is_approved_and_signed_by_the_cluster_ca() {
    let c = cluster(
        &[ControllerName::CsrApproving, ControllerName::CsrSigning],
        |_| {},
        async |_| {},
    )
    .await;
    // A kubeadm-style bootstrap token.
    let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), "kube-system");
    let token: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bootstrap-token-abcdef"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "token-id": "abcdef",
            "token-secret": "0123456789abcdef",
            "usage-bootstrap-authentication": "true",
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
        }
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &token)
        .await
        .unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: b\n  user:\n    token: abcdef.0123456789abcdef\ncontexts:\n- name: x\n  context: {{cluster: c, user: b}}\ncurrent-context: x\n",
        c.ts.server,
        base64::engine::general_purpose::STANDARD.encode(&c.ts.ca_pem)
    );
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let bootstrap = Client::try_from(config).unwrap();
    let csrs: Api<CertificateSigningRequest> = Api::all(bootstrap);
    csrs.create(
        &PostParams::default(),
        &csr_object(
            "node-csr-w1",
            &csr_pem("system:node:worker1", "system:nodes"),
        ),
    )
    .await
    .unwrap();
    csrs.create(
        &PostParams::default(),
        &csr_object(
            "node-csr-bad",
            &csr_pem("system:node:worker2", "system:masters"),
        ),
    )
    .await
    .unwrap();

    let admin_csrs: Api<CertificateSigningRequest> = Api::all(c.admin.clone());
    let issued = eventually("a signed certificate", || async {
        let csr = admin_csrs.get("node-csr-w1").await.unwrap();
        let cert = csr.status?.certificate?;
        (!cert.0.is_empty()).then_some(cert.0)
    })
    .await;
    let csr = admin_csrs.get("node-csr-w1").await.unwrap();
    assert_eq!(
        csr.spec.username.as_deref(),
        Some("system:bootstrap:abcdef")
    );
    let approved = csr.status.unwrap().conditions.unwrap();
    assert!(approved
        .iter()
        .any(|c| c.type_ == "Approved" && c.reason.as_deref() == Some("AutoApproved")));

    let (_, pem) = x509_parser::pem::parse_x509_pem(&issued).unwrap();
    let cert = pem.parse_x509().unwrap();
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(&c.ts.ca_pem).unwrap();
    let ca = ca_pem.parse_x509().unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    let o: Vec<&str> = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["system:node:worker1"]);
    assert_eq!(o, ["system:nodes"]);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);

    let failed = eventually("the malformed CSR to fail", || async {
        let csr = admin_csrs.get("node-csr-bad").await.unwrap();
        csr.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Failed")
    })
    .await;
    assert!(failed.message.unwrap().contains("organization"));
    let bad = admin_csrs.get("node-csr-bad").await.unwrap();
    assert!(bad.status.unwrap().certificate.is_none());
}

#[tokio::test]
async fn pods_of_a_deleted_node_are_marked_failed_and_force_deleted() {
    let c = cluster(
        &[ControllerName::PodGarbageCollector],
        |o| {
            o.pod_gc.period = Duration::from_millis(200);
            o.pod_gc.quarantine = Duration::from_secs(1);
        },
        async |_| {},
    )
    .await;
    let nodes: Api<Node> = Api::all(c.admin.clone());
    for n in ["stays", "goes"] {
        nodes
            .create(&PostParams::default(), &node(n, None))
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(c.admin.clone(), "default");
    let pod = |name: &str, node: &str, finalizer: bool| -> Pod {
        let mut p = json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "demo"}]}
        });
        if finalizer {
            // Keeps the object visible after the forced deletion so its status can be read.
            p["metadata"]["finalizers"] = json!(["e2e.kinit.io/hold"]);
        }
        serde_json::from_value(p).unwrap()
    };
    for (name, node, finalizer) in [
        ("kept", "stays", false),
        ("held", "goes", true),
        ("plain", "goes", false),
    ] {
        pods.create(&PostParams::default(), &pod(name, node, finalizer))
            .await
            .unwrap();
        set_pod_status(&pods, name, "10.244.9.9", true).await;
    }
    nodes
        .delete("goes", &DeleteParams::default())
        .await
        .unwrap();

    let held = eventually("the orphaned pod marked and deleting", || async {
        let p = pods.get("held").await.unwrap();
        p.metadata.deletion_timestamp.is_some().then_some(p)
    })
    .await;
    let status = held.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let condition = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("a DisruptionTarget condition");
    assert_eq!(condition.status, "True");
    assert_eq!(condition.reason.as_deref(), Some("DeletionByPodGC"));
    eventually("the plain orphan gone", || async {
        pods.get_opt("plain").await.unwrap().is_none().then_some(())
    })
    .await;
    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("the held orphan gone", || async {
        pods.get_opt("held").await.unwrap().is_none().then_some(())
    })
    .await;
    // A pod whose node exists is never touched.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let kept = pods.get("kept").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());
    assert_eq!(kept.status.unwrap().phase.as_deref(), Some("Running"));
}
