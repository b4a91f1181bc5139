use std::sync::Arc;

use super::*;
use crate::testing::{pod_on, MemoryObjects};
use crate::{Attributes, Authorizer, NodeAuthorizer, UserInfo};
use k8s_openapi::api::core::v1::{LocalObjectReference, PodSpec};

fn chain() -> Authorizer {
    let objects = Arc::new(MemoryObjects::default());
    objects.put_pod(pod_on(
        "apps",
        "web",
        "web-uid",
        "w1",
        PodSpec {
            image_pull_secrets: Some(vec![LocalObjectReference {
                name: "regcred".into(),
            }]),
            ..PodSpec::default()
        },
    ));
    let rbac = Arc::new(RbacAuthorizer::with_objects(
        default_policy().into_objects(),
    ));
    Authorizer::new(Arc::new(NodeAuthorizer::new(objects)), rbac)
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo::new(name, groups.iter().copied()).with_authenticated_group()
}

fn user_subject(name: &str) -> k8s_openapi::api::rbac::v1::Subject {
    super::user(name)
}

async fn allowed(authorizer: &Authorizer, attrs: Attributes) -> bool {
    authorizer.authorize(&attrs).await.allowed
}

async fn can(
    a: &Authorizer,
    u: &UserInfo,
    verb: &str,
    ns: &str,
    group: &str,
    resource: &str,
    name: &str,
) -> bool {
    allowed(
        a,
        Attributes::resource(u.clone(), verb, ns, group, resource, name),
    )
    .await
}

async fn can_url(a: &Authorizer, u: &UserInfo, verb: &str, path: &str) -> bool {
    allowed(a, Attributes::non_resource(u.clone(), verb, path)).await
}

#[tokio::test]
async fn system_masters_can_do_anything() {
    let a = chain();
    let admin = user("kubernetes-admin", &["system:masters"]);
    assert!(can(&a, &admin, "delete", "kube-system", "", "secrets", "x").await);
    assert!(
        can(
            &a,
            &admin,
            "escalate",
            "",
            "rbac.authorization.k8s.io",
            "clusterroles",
            "x"
        )
        .await
    );
    assert!(
        can(
            &a,
            &admin,
            "create",
            "default",
            "example.com",
            "widgets/scale",
            "w"
        )
        .await
    );
    assert!(can_url(&a, &admin, "post", "/anything/at/all").await);
    let kubeadm_admin = user("kubernetes-admin", &["kubeadm:cluster-admins"]);
    assert!(can(&a, &kubeadm_admin, "deletecollection", "", "", "nodes", "").await);
}

#[tokio::test]
async fn authenticated_users_get_discovery_and_nothing_more() {
    let a = chain();
    let dev = user("dev-user", &[]);
    for path in [
        "/version",
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps/v1",
        "/healthz",
        "/readyz",
        "/openapi/v3",
    ] {
        assert!(can_url(&a, &dev, "get", path).await, "{path}");
    }
    assert!(!can_url(&a, &dev, "get", "/metrics").await);
    assert!(!can_url(&a, &dev, "post", "/version").await);
    assert!(!can(&a, &dev, "list", "default", "", "pods", "").await);
    assert!(
        can(
            &a,
            &dev,
            "create",
            "",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            ""
        )
        .await
    );
    assert!(
        can(
            &a,
            &dev,
            "create",
            "",
            "authentication.k8s.io",
            "selfsubjectreviews",
            ""
        )
        .await
    );
    let decision = a
        .authorize(&Attributes::resource(
            dev.clone(),
            "list",
            "default",
            "",
            "pods",
            "",
        ))
        .await;
    assert!(
        decision.reason.contains("system:basic-user"),
        "{}",
        decision.reason
    );
}

#[tokio::test]
async fn nodes_through_the_chain() {
    let a = chain();
    let w1 = user("system:node:w1", &["system:nodes"]);
    assert!(can(&a, &w1, "get", "apps", "", "secrets", "regcred").await);
    assert!(!can(&a, &w1, "get", "apps", "", "secrets", "db").await);
    assert!(can(&a, &w1, "update", "", "", "nodes/status", "w1").await);
    assert!(!can(&a, &w1, "update", "", "", "nodes/status", "w2").await);
    assert!(
        can(
            &a,
            &w1,
            "update",
            "kube-node-lease",
            "coordination.k8s.io",
            "leases",
            "w1"
        )
        .await
    );
    assert!(
        !can(
            &a,
            &w1,
            "update",
            "kube-node-lease",
            "coordination.k8s.io",
            "leases",
            "w2"
        )
        .await
    );
    // CSR rotation is auto-approved for nodes (selfnodeclient).
    assert!(
        can(
            &a,
            &w1,
            "create",
            "",
            "certificates.k8s.io",
            "certificatesigningrequests/selfnodeclient",
            ""
        )
        .await
    );
    let decision = a
        .authorize(&Attributes::resource(
            w1, "get", "apps", "", "secrets", "db",
        ))
        .await;
    assert!(
        decision.reason.starts_with("node authorizer:"),
        "{}",
        decision.reason
    );
    assert!(decision.reason.contains("RBAC:"), "{}", decision.reason);
}

#[tokio::test]
async fn bootstrappers_can_join() {
    let a = chain();
    let joiner = user(
        "system:bootstrap:abcdef",
        &["system:bootstrappers", DEFAULT_NODE_TOKEN_GROUP],
    );
    assert!(
        can(
            &a,
            &joiner,
            "create",
            "",
            "certificates.k8s.io",
            "certificatesigningrequests",
            ""
        )
        .await
    );
    assert!(
        can(
            &a,
            &joiner,
            "get",
            "",
            "certificates.k8s.io",
            "certificatesigningrequests",
            "csr-1"
        )
        .await
    );
    assert!(
        can(
            &a,
            &joiner,
            "create",
            "",
            "certificates.k8s.io",
            "certificatesigningrequests/nodeclient",
            ""
        )
        .await
    );
    assert!(can(&a, &joiner, "get", "", "", "nodes", "w3").await);
    assert!(
        can(
            &a,
            &joiner,
            "get",
            "kube-public",
            "",
            "configmaps",
            "cluster-info"
        )
        .await
    );
    assert!(!can(&a, &joiner, "get", "kube-public", "", "configmaps", "other").await);
    assert!(!can(&a, &joiner, "list", "kube-system", "", "secrets", "").await);
    // A token without kubeadm's extra group may still ask for certificates.
    let plain = user("system:bootstrap:zzzzzz", &["system:bootstrappers"]);
    assert!(
        can(
            &a,
            &plain,
            "create",
            "",
            "certificates.k8s.io",
            "certificatesigningrequests",
            ""
        )
        .await
    );
    assert!(
        !can(
            &a,
            &plain,
            "create",
            "",
            "certificates.k8s.io",
            "certificatesigningrequests/nodeclient",
            ""
        )
        .await
    );
}

#[tokio::test]
async fn control_plane_components() {
    let a = chain();
    let scheduler = user("system:kube-scheduler", &[]);
    assert!(can(&a, &scheduler, "create", "apps", "", "pods/binding", "web").await);
    assert!(
        can(
            &a,
            &scheduler,
            "update",
            "kube-system",
            "coordination.k8s.io",
            "leases",
            "kube-scheduler"
        )
        .await
    );
    assert!(
        !can(
            &a,
            &scheduler,
            "update",
            "kube-system",
            "coordination.k8s.io",
            "leases",
            "kube-controller-manager"
        )
        .await
    );
    assert!(!can(&a, &scheduler, "create", "apps", "", "pods", "").await);
    let cm = user("system:kube-controller-manager", &[]);
    assert!(can(&a, &cm, "create", "apps", "", "pods", "").await);
    assert!(
        can(
            &a,
            &cm,
            "update",
            "apps",
            "apps",
            "deployments/status",
            "web"
        )
        .await
    );
    assert!(can(&a, &cm, "delete", "apps", "apps", "replicasets", "web-1").await);
    assert!(
        can(
            &a,
            &cm,
            "approve",
            "",
            "certificates.k8s.io",
            "signers",
            "kubernetes.io/kube-apiserver-client-kubelet"
        )
        .await
    );
    assert!(
        !can(
            &a,
            &cm,
            "approve",
            "",
            "certificates.k8s.io",
            "signers",
            "example.com/other"
        )
        .await
    );
    assert!(
        !can(
            &a,
            &cm,
            "escalate",
            "",
            "rbac.authorization.k8s.io",
            "clusterroles",
            "x"
        )
        .await
    );
    let dns = user(
        "system:serviceaccount:kube-system:kube-dns",
        &["system:serviceaccounts"],
    );
    assert!(can(&a, &dns, "watch", "", "", "services", "").await);
    assert!(can_url(&a, &dns, "get", "/openid/v1/jwks").await);
}

#[tokio::test]
async fn admin_edit_view_aggregate() {
    let policy = default_policy();
    let rbac = Arc::new(RbacAuthorizer::with_objects(policy.into_objects()));
    for (name, role) in [("viewer", "view"), ("editor", "edit"), ("owner", "admin")] {
        rbac.upsert(crate::RbacObject::RoleBinding(
            k8s_openapi::api::rbac::v1::RoleBinding {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("team".into()),
                    ..ObjectMeta::default()
                },
                role_ref: role_ref("ClusterRole", role),
                subjects: Some(vec![user_subject(name)]),
            },
        ));
    }
    let a = Authorizer::new(
        Arc::new(NodeAuthorizer::new(Arc::new(MemoryObjects::default()))),
        rbac,
    );
    let (viewer, editor, owner) = (user("viewer", &[]), user("editor", &[]), user("owner", &[]));
    assert!(can(&a, &viewer, "list", "team", "", "pods", "").await);
    assert!(can(&a, &viewer, "get", "team", "apps", "deployments", "web").await);
    assert!(!can(&a, &viewer, "get", "team", "", "secrets", "s").await);
    assert!(!can(&a, &viewer, "list", "other", "", "pods", "").await);
    assert!(can(&a, &editor, "create", "team", "apps", "deployments", "").await);
    assert!(can(&a, &editor, "get", "team", "", "secrets", "s").await);
    assert!(can(&a, &editor, "list", "team", "", "pods", "").await);
    assert!(
        !can(
            &a,
            &editor,
            "create",
            "team",
            "rbac.authorization.k8s.io",
            "rolebindings",
            ""
        )
        .await
    );
    assert!(
        can(
            &a,
            &owner,
            "create",
            "team",
            "rbac.authorization.k8s.io",
            "rolebindings",
            ""
        )
        .await
    );
    assert!(
        can(
            &a,
            &owner,
            "patch",
            "team",
            "apps",
            "deployments/scale",
            "web"
        )
        .await
    );
    assert!(can(&a, &owner, "get", "team", "", "pods/log", "web").await);
}

#[test]
fn aggregated_rules_are_inlined_and_objects_labelled() {
    let admin = default_cluster_role_rules("admin");
    let edit = default_cluster_role_rules("edit");
    let view = default_cluster_role_rules("view");
    assert_eq!(view.len(), view_rules().len());
    assert_eq!(edit.len(), edit_rules().len() + view.len());
    assert_eq!(admin.len(), admin_rules().len() + edit.len());
    let policy = default_policy();
    let metas = policy
        .cluster_roles
        .iter()
        .map(|r| &r.metadata)
        .chain(policy.cluster_role_bindings.iter().map(|b| &b.metadata))
        .chain(policy.roles.iter().map(|r| &r.metadata))
        .chain(policy.role_bindings.iter().map(|b| &b.metadata));
    for m in metas {
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(
            labels[BOOTSTRAPPING_LABEL], BOOTSTRAPPING_VALUE,
            "{:?}",
            m.name
        );
        assert_eq!(
            m.annotations.as_ref().unwrap()[AUTOUPDATE_ANNOTATION],
            "true"
        );
    }
    // Every binding refers to a role of the policy.
    for b in &policy.cluster_role_bindings {
        assert!(
            policy
                .cluster_roles
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name)),
            "{:?}",
            b.metadata.name
        );
    }
    for b in &policy.role_bindings {
        assert!(
            policy
                .roles
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name)
                    && r.metadata.namespace == b.metadata.namespace),
            "{:?}",
            b.metadata.name
        );
    }
}
