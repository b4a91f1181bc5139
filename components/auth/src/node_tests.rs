use super::*;
use crate::testing::{meta, pod_on, MemoryObjects};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EnvVar, EnvVarSource, LocalObjectReference, NodeSpec,
    PersistentVolumeClaimVolumeSource, ProjectedVolumeSource, SecretKeySelector, SecretProjection,
    Taint, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

fn web_spec() -> PodSpec {
    PodSpec {
        service_account_name: Some("web-sa".into()),
        containers: vec![Container {
            name: "web".into(),
            env: Some(vec![EnvVar {
                name: "DB_PASSWORD".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "db-pass".into(),
                        key: "pw".into(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
                value: None,
            }]),
            ..Container::default()
        }],
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "web-config".into(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: "data".into(),
                    read_only: None,
                }),
                ..Volume::default()
            },
            Volume {
                name: "projected".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        secret: Some(SecretProjection {
                            name: "proj-secret".into(),
                            ..SecretProjection::default()
                        }),
                        ..VolumeProjection::default()
                    }]),
                    default_mode: None,
                }),
                ..Volume::default()
            },
        ]),
        image_pull_secrets: Some(vec![LocalObjectReference {
            name: "regcred".into(),
        }]),
        ..PodSpec::default()
    }
}

fn mirror_pod(node: &str) -> Pod {
    let mut pod = pod_on(
        "kube-system",
        &format!("kube-apiserver-{node}"),
        "mirror-uid",
        node,
        PodSpec::default(),
    );
    pod.metadata.annotations =
        Some([(MIRROR_POD_ANNOTATION.to_string(), "hash".to_string())].into());
    pod
}

fn fixture() -> (Arc<MemoryObjects>, NodeAuthorizer) {
    let objects = Arc::new(MemoryObjects::default());
    objects.put_pod(pod_on("apps", "web", "web-uid", "w1", web_spec()));
    objects.put_pod(mirror_pod("w1"));
    let mut other = web_spec();
    other.image_pull_secrets = Some(vec![LocalObjectReference {
        name: "other-secret".into(),
    }]);
    other.containers.clear();
    other.volumes = None;
    objects.put_pod(pod_on("apps", "other", "other-uid", "w2", other));
    let authorizer = NodeAuthorizer::new(objects.clone());
    (objects, authorizer)
}

fn node_user(node: &str) -> UserInfo {
    UserInfo::new(
        format!("system:node:{node}"),
        ["system:nodes", "system:authenticated"],
    )
}

fn req(verb: &str, ns: &str, group: &str, resource: &str, name: &str) -> Attributes {
    Attributes::resource(node_user("w1"), verb, ns, group, resource, name)
}

#[tokio::test]
async fn node_authorizer_table() {
    let (_, authorizer) = fixture();
    let cases: Vec<(Attributes, Option<bool>, &str)> = vec![
        (
            req("get", "apps", "", "secrets", "db-pass"),
            Some(true),
            "secret from env of a pod on the node",
        ),
        (
            req("get", "apps", "", "secrets", "regcred"),
            Some(true),
            "image pull secret",
        ),
        (
            req("get", "apps", "", "secrets", "proj-secret"),
            Some(true),
            "projected secret",
        ),
        (
            req("get", "apps", "", "secrets", "other-secret"),
            Some(false),
            "secret of a pod on another node",
        ),
        (
            req("get", "default", "", "secrets", "db-pass"),
            Some(false),
            "same name, other namespace",
        ),
        (
            req("list", "apps", "", "secrets", ""),
            Some(false),
            "list secrets",
        ),
        (
            req("get", "apps", "", "configmaps", "web-config"),
            Some(true),
            "configmap volume",
        ),
        (
            req("get", "apps", "", "configmaps", "unrelated"),
            Some(false),
            "unreferenced configmap",
        ),
        (
            req("get", "apps", "", "persistentvolumeclaims", "data"),
            Some(true),
            "pvc volume",
        ),
        (
            req("create", "apps", "", "serviceaccounts/token", "web-sa"),
            Some(true),
            "token for a pod's SA",
        ),
        (
            req("create", "apps", "", "serviceaccounts/token", "default"),
            Some(false),
            "token for an unused SA",
        ),
        (
            req(
                "create",
                "kube-system",
                "",
                "serviceaccounts/token",
                "default",
            ),
            Some(true),
            "default SA of the mirror pod",
        ),
        (
            req("get", "", "", "nodes", "w2"),
            Some(true),
            "read other nodes",
        ),
        (req("list", "", "", "nodes", ""), Some(true), "list nodes"),
        (
            req("create", "", "", "nodes", "w1"),
            Some(true),
            "register itself",
        ),
        (
            req("create", "", "", "nodes", ""),
            Some(false),
            "unnamed create is refused",
        ),
        (
            req("update", "", "", "nodes", "w1"),
            Some(true),
            "update own node",
        ),
        (
            req("update", "", "", "nodes", "w2"),
            Some(false),
            "update another node",
        ),
        (
            req("patch", "", "", "nodes/status", "w1"),
            Some(true),
            "own status",
        ),
        (
            req("patch", "", "", "nodes/status", "w2"),
            Some(false),
            "other node's status",
        ),
        (
            req("delete", "", "", "nodes", "w1"),
            Some(false),
            "nodes cannot delete nodes",
        ),
        (
            req(
                "update",
                "kube-node-lease",
                "coordination.k8s.io",
                "leases",
                "w1",
            ),
            Some(true),
            "own lease",
        ),
        (
            req(
                "update",
                "kube-node-lease",
                "coordination.k8s.io",
                "leases",
                "w2",
            ),
            Some(false),
            "other lease",
        ),
        (
            req("update", "default", "coordination.k8s.io", "leases", "w1"),
            Some(false),
            "lease in other namespace",
        ),
        (req("list", "", "", "pods", ""), Some(true), "list pods"),
        (
            req("create", "kube-system", "", "pods", ""),
            Some(true),
            "create (body checked by admit)",
        ),
        (
            req("delete", "apps", "", "pods", "web"),
            Some(true),
            "delete pod bound to node",
        ),
        (
            req("delete", "apps", "", "pods", "other"),
            Some(false),
            "delete pod of other node",
        ),
        (
            req("update", "kube-system", "", "pods", "kube-apiserver-w1"),
            Some(true),
            "update own mirror pod",
        ),
        (
            req("update", "apps", "", "pods", "web"),
            Some(false),
            "update spec of a regular pod",
        ),
        (
            req("patch", "apps", "", "pods/status", "web"),
            Some(true),
            "status of own pod",
        ),
        (
            req("patch", "apps", "", "pods/status", "other"),
            Some(false),
            "status of other node's pod",
        ),
        (
            req("patch", "apps", "", "pods/status", "gone"),
            Some(false),
            "status of missing pod",
        ),
        (
            req("get", "apps", "", "pods/log", "web"),
            Some(false),
            "logs are not a node permission",
        ),
        (
            req(
                "create",
                "",
                "certificates.k8s.io",
                "certificatesigningrequests",
                "",
            ),
            Some(true),
            "CSR create",
        ),
        (
            req(
                "get",
                "",
                "certificates.k8s.io",
                "certificatesigningrequests",
                "csr-1",
            ),
            Some(true),
            "CSR get",
        ),
        (
            req("create", "apps", "", "events", ""),
            Some(true),
            "core events",
        ),
        (
            req("create", "apps", "events.k8s.io", "events", ""),
            Some(true),
            "events.k8s.io events",
        ),
        (req("watch", "", "", "services", ""), Some(true), "services"),
        (
            req("list", "", "discovery.k8s.io", "endpointslices", ""),
            Some(true),
            "endpointslices for the proxy",
        ),
        (
            req("list", "apps", "apps", "deployments", ""),
            None,
            "no opinion on other resources",
        ),
    ];
    for (attrs, expected, what) in cases {
        let decision = authorizer.authorize(&attrs).await;
        assert_eq!(
            decision.as_ref().map(|d| d.allowed),
            expected,
            "{what}: {decision:?}"
        );
    }
}

#[tokio::test]
async fn only_node_identities_get_an_opinion() {
    let (_, authorizer) = fixture();
    let alice = Attributes::resource(
        UserInfo::new("alice", ["system:authenticated"]),
        "get",
        "apps",
        "",
        "secrets",
        "db-pass",
    );
    assert_eq!(authorizer.authorize(&alice).await, None);
    let impostor = Attributes::resource(
        UserInfo::new("system:node:w1", ["dev"]),
        "get",
        "apps",
        "",
        "secrets",
        "db-pass",
    );
    assert_eq!(authorizer.authorize(&impostor).await, None);
    let url = Attributes::non_resource(node_user("w1"), "get", "/healthz");
    assert_eq!(authorizer.authorize(&url).await, None);
}

#[tokio::test]
async fn refusals_explain_and_lookup_failures_refuse() {
    let (objects, authorizer) = fixture();
    let decision = authorizer
        .authorize(&req("get", "apps", "", "secrets", "other-secret"))
        .await
        .unwrap();
    assert!(
        decision
            .reason
            .contains("no pod bound to this node references secret apps/other-secret"),
        "{}",
        decision.reason
    );
    *objects.fail.lock().unwrap() = true;
    let decision = authorizer
        .authorize(&req("get", "apps", "", "secrets", "db-pass"))
        .await
        .unwrap();
    assert!(!decision.allowed);
    assert!(
        decision.reason.contains("store unavailable"),
        "{}",
        decision.reason
    );
}

#[tokio::test]
async fn new_pods_change_what_a_node_may_read() {
    let (objects, authorizer) = fixture();
    let attrs = req("get", "apps", "", "secrets", "other-secret");
    assert_eq!(
        authorizer.authorize(&attrs).await.map(|d| d.allowed),
        Some(false)
    );
    objects.delete_pod("apps", "other");
    let mut moved = web_spec();
    moved.image_pull_secrets = Some(vec![LocalObjectReference {
        name: "other-secret".into(),
    }]);
    objects.put_pod(pod_on("apps", "other", "other-uid", "w1", moved));
    assert_eq!(
        authorizer.authorize(&attrs).await.map(|d| d.allowed),
        Some(true)
    );
}

#[test]
fn pod_references_cover_init_containers_and_ephemeral_volumes() {
    let spec = PodSpec {
        init_containers: Some(vec![Container {
            name: "init".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(k8s_openapi::api::core::v1::ConfigMapEnvSource {
                    name: "init-cm".into(),
                    optional: None,
                }),
                ..EnvFromSource::default()
            }]),
            ..Container::default()
        }]),
        volumes: Some(vec![Volume {
            name: "scratch".into(),
            ephemeral: Some(k8s_openapi::api::core::v1::EphemeralVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    let refs = pod_references(&pod_on("ns", "job-1", "u", "w1", spec));
    assert!(refs.config_maps.contains("init-cm"));
    assert!(refs.claims.contains("job-1-scratch"));
    assert_eq!(refs.service_account, "default");
}

#[tokio::test]
async fn admit_mirror_pods() {
    let (_, authorizer) = fixture();
    let w1 = node_user("w1");
    assert!(authorizer
        .admit(&w1, NodeWrite::CreatePod(&mirror_pod("w1")))
        .await
        .is_ok());

    let err = authorizer
        .admit(&w1, NodeWrite::CreatePod(&mirror_pod("w2")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.nodeName"), "{err}");

    let regular = pod_on("apps", "x", "u", "w1", PodSpec::default());
    let err = authorizer
        .admit(&w1, NodeWrite::CreatePod(&regular))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mirror"), "{err}");
    assert_eq!(err.http_status(), 403);

    let mut with_secret = mirror_pod("w1");
    with_secret.spec = Some(PodSpec {
        node_name: Some("w1".into()),
        ..web_spec()
    });
    let err = authorizer
        .admit(&w1, NodeWrite::CreatePod(&with_secret))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("service account") || err.to_string().contains("secrets"),
        "{err}"
    );

    let mut owned = mirror_pod("w1");
    owned.metadata.owner_references = Some(vec![OwnerReference {
        kind: "ReplicaSet".into(),
        name: "rs".into(),
        ..OwnerReference::default()
    }]);
    assert!(authorizer
        .admit(&w1, NodeWrite::CreatePod(&owned))
        .await
        .is_err());

    // Other users are not restricted here.
    let admin = UserInfo::new("admin", ["system:masters"]);
    assert!(authorizer
        .admit(&admin, NodeWrite::CreatePod(&regular))
        .await
        .is_ok());
}

fn node_object(name: &str, labels: &[(&str, &str)], taints: &[&str]) -> Node {
    let mut m = meta("", name, "n-uid");
    m.namespace = None;
    m.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    Node {
        metadata: m,
        spec: Some(NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|k| Taint {
                        key: k.to_string(),
                        effect: "NoSchedule".into(),
                        ..Taint::default()
                    })
                    .collect(),
            ),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

#[tokio::test]
async fn admit_node_objects() {
    let (_, authorizer) = fixture();
    let w1 = node_user("w1");
    let mine = node_object("w1", &[("kubernetes.io/hostname", "w1")], &["dedicated"]);
    assert!(authorizer
        .admit(
            &w1,
            NodeWrite::Node {
                new: &mine,
                old: None
            }
        )
        .await
        .is_ok());

    let other = node_object("w2", &[], &[]);
    let err = authorizer
        .admit(
            &w1,
            NodeWrite::Node {
                new: &other,
                old: None,
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only its own"), "{err}");

    let restricted = node_object(
        "w1",
        &[("node-restriction.kubernetes.io/pool", "gpu")],
        &["dedicated"],
    );
    let err = authorizer
        .admit(
            &w1,
            NodeWrite::Node {
                new: &restricted,
                old: Some(&mine),
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(NODE_RESTRICTION_LABEL_PREFIX),
        "{err}"
    );
    // Keeping a restricted label an admin set is fine.
    assert!(authorizer
        .admit(
            &w1,
            NodeWrite::Node {
                new: &restricted,
                old: Some(&restricted)
            }
        )
        .await
        .is_ok());

    let untainted = node_object("w1", &[("kubernetes.io/hostname", "w1")], &[]);
    let err = authorizer
        .admit(
            &w1,
            NodeWrite::Node {
                new: &untainted,
                old: Some(&mine),
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("taints"), "{err}");
}

#[tokio::test]
async fn admit_token_requests() {
    let (_, authorizer) = fixture();
    let w1 = node_user("w1");
    let request = |sa, pod| NodeWrite::TokenRequest {
        namespace: "apps",
        service_account: sa,
        bound_pod: pod,
    };
    assert!(authorizer
        .admit(&w1, request("web-sa", Some(("web", "web-uid"))))
        .await
        .is_ok());
    let err = authorizer
        .admit(&w1, request("web-sa", None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bound to a pod"), "{err}");
    let err = authorizer
        .admit(&w1, request("web-sa", Some(("other", "other-uid"))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not bound to this node"), "{err}");
    let err = authorizer
        .admit(&w1, request("web-sa", Some(("web", "stale-uid"))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("uid"), "{err}");
    let err = authorizer
        .admit(&w1, request("default", Some(("web", "web-uid"))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("runs as service account"), "{err}");
}
