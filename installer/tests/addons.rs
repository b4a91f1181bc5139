//! The add-ons phase against a real (in-process) API server: the DNS add-on's objects are
//! created, a second run writes nothing, an edited Corefile is kept while a changed manifest
//! is applied, and a failure part-way reports what was done before it.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kinit::addons::{apply_objects, ObjectAction};
use kinit_addons::DnsSettings;
use kinit_apiserver::testing::TestServer;
use kube::api::{Api, Patch, PatchParams};

fn settings() -> DnsSettings {
    DnsSettings {
        cluster_domain: "cluster.local".into(),
        service_ip: "10.96.0.10".parse().unwrap(),
        image: "kinit.local/kinit:v0.1.0".into(),
        command: "/usr/local/bin/kinit".into(),
        binary_sha256: "ab".repeat(32),
        upstreams: vec![],
        replicas: 2,
    }
}

fn actions(report: &kinit::addons::AddonReport) -> Vec<ObjectAction> {
    report.objects.iter().map(|o| o.action).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_addon_is_applied_once_and_keeps_an_edited_corefile() {
    let ts = TestServer::start().await;
    let client = kinit::client::from_kubeconfig(&ts.admin_kubeconfig())
        .await
        .unwrap();
    let objects = kinit_addons::dns(&settings()).unwrap();

    let (first, failed) = apply_objects(&client, "dns", &objects).await;
    assert!(failed.is_none(), "{failed:?}");
    assert!(first.changed());
    assert!(actions(&first).iter().all(|a| *a == ObjectAction::Created));
    let service: Service = Api::namespaced(client.clone(), "kube-system")
        .get("kube-dns")
        .await
        .unwrap();
    assert_eq!(
        service.spec.unwrap().cluster_ip.as_deref(),
        Some("10.96.0.10")
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    assert_eq!(
        deployments
            .get("coredns")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(2)
    );

    // Nothing changed: nothing is written.
    let (second, failed) = apply_objects(&client, "dns", &objects).await;
    assert!(failed.is_none(), "{failed:?}");
    assert!(!second.changed());
    assert!(actions(&second)
        .iter()
        .all(|a| *a == ObjectAction::Unchanged));

    // The user edits the Corefile; a new kinit build changes the Deployment and the Corefile.
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let edit = serde_json::json!({"data": {"Corefile": ".:53 {\n    forward . 10.0.0.2\n}\n"}});
    configs
        .patch("coredns", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let mut newer = settings();
    newer.binary_sha256 = "cd".repeat(32);
    newer.upstreams = vec!["10.0.0.9:53".into()];
    let objects = kinit_addons::dns(&newer).unwrap();
    let (third, failed) = apply_objects(&client, "dns", &objects).await;
    assert!(failed.is_none(), "{failed:?}");
    let by_object: std::collections::BTreeMap<String, ObjectAction> = third
        .objects
        .iter()
        .map(|o| (o.object.clone(), o.action))
        .collect();
    assert_eq!(
        by_object["ConfigMap kube-system/coredns"],
        ObjectAction::KeptUserEdit
    );
    assert_eq!(
        by_object["Deployment kube-system/coredns"],
        ObjectAction::Updated
    );
    let corefile = configs.get("coredns").await.unwrap().data.unwrap()["Corefile"].clone();
    assert!(corefile.contains("forward . 10.0.0.2"), "{corefile}");
    let template = deployments
        .get("coredns")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(template["kinit.io/binary-sha256"], "cd".repeat(32));

    // Tearing the cluster down removes them (what kinit reset does for a whole cluster).
    let listed = kinit::addons::delete_objects(&client, &objects, true).await;
    assert!(
        listed.iter().all(|l| l.starts_with("would delete")),
        "{listed:?}"
    );
    assert!(deployments.get_opt("coredns").await.unwrap().is_some());
    let removed = kinit::addons::delete_objects(&client, &objects, false).await;
    assert_eq!(
        removed.first().map(String::as_str),
        Some("deleted Deployment kube-system/coredns")
    );
    assert!(
        removed.iter().all(|l| l.starts_with("deleted")),
        "{removed:?}"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    assert!(services.get_opt("kube-dns").await.unwrap().is_none());
    assert!(configs.get_opt("coredns").await.unwrap().is_none());
    let again = kinit::addons::delete_objects(&client, &objects, false).await;
    assert!(again.iter().all(|l| l.ends_with("was gone")), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_part_way_reports_what_was_done() {
    let ts = TestServer::start().await;
    // A user who may create ServiceAccounts in kube-system but nothing else.
    let admin = kinit::client::from_kubeconfig(&ts.admin_kubeconfig())
        .await
        .unwrap();
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "sa-writer", "namespace": "kube-system"},
        "rules": [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "create"]}]
    });
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "sa-writer", "namespace": "kube-system"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sa-writer"},
        "subjects": [{"kind": "User", "name": "limited"}]
    });
    let roles: Api<k8s_openapi::api::rbac::v1::Role> =
        Api::namespaced(admin.clone(), "kube-system");
    roles
        .create(&Default::default(), &serde_json::from_value(role).unwrap())
        .await
        .unwrap();
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(admin.clone(), "kube-system");
    bindings
        .create(
            &Default::default(),
            &serde_json::from_value(binding).unwrap(),
        )
        .await
        .unwrap();
    let limited = kinit::client::from_kubeconfig(&ts.kubeconfig_for("limited", &[]))
        .await
        .unwrap();
    let objects = kinit_addons::dns(&settings()).unwrap();
    let (report, failed) = apply_objects(&limited, "dns", &objects).await;
    assert_eq!(actions(&report), [ObjectAction::Created]);
    assert!(report.changed());
    let error = failed.expect("the ClusterRole is forbidden").to_string();
    assert!(error.contains("ClusterRole system:coredns"), "{error}");
}
