use super::*;
use crate::rules::Rule;
use k8s_openapi::api::rbac::v1::AggregationRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Rule>) -> RbacObject {
    RbacObject::ClusterRole(ClusterRole {
        metadata: meta(None, name, labels),
        rules: Some(rules.into_iter().map(Rule::build).collect()),
        aggregation_rule: None,
    })
}

fn subject(kind: &str, name: &str, namespace: Option<&str>) -> Subject {
    Subject {
        kind: kind.into(),
        name: name.into(),
        namespace: namespace.map(str::to_string),
        api_group: None,
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
    }
}

fn crb(name: &str, role: &str, subjects: Vec<Subject>) -> RbacObject {
    RbacObject::ClusterRoleBinding(ClusterRoleBinding {
        metadata: meta(None, name, &[]),
        role_ref: role_ref("ClusterRole", role),
        subjects: Some(subjects),
    })
}

fn rb(namespace: &str, name: &str, kind: &str, role: &str, subjects: Vec<Subject>) -> RbacObject {
    RbacObject::RoleBinding(RoleBinding {
        metadata: meta(Some(namespace), name, &[]),
        role_ref: role_ref(kind, role),
        subjects: Some(subjects),
    })
}

const MONITORING_LABEL: &str = "example.com/aggregate-to-monitoring";

fn fixture() -> RbacAuthorizer {
    RbacAuthorizer::with_objects([
        cluster_role(
            "pod-reader",
            &[],
            vec![
                Rule::new(&["get", "list", "watch"], &[""], &["pods"]),
                Rule::new(&["get"], &[""], &["pods/log"]),
            ],
        ),
        cluster_role(
            "status-writer",
            &[],
            vec![Rule::new(&["update", "patch"], &["*"], &["*/status"])],
        ),
        cluster_role("health", &[], vec![Rule::urls(&["get"], &["/healthz/*"])]),
        RbacObject::Role(Role {
            metadata: meta(Some("dev"), "cm-one", &[]),
            rules: Some(vec![Rule::new(&["get"], &[""], &["configmaps"])
                .names(&["app-config"])
                .build()]),
        }),
        RbacObject::ClusterRole(ClusterRole {
            metadata: meta(None, "monitoring-all", &[]),
            rules: None,
            aggregation_rule: Some(AggregationRule {
                cluster_role_selectors: Some(vec![LabelSelector {
                    match_labels: Some([(MONITORING_LABEL.to_string(), "true".to_string())].into()),
                    ..LabelSelector::default()
                }]),
            }),
        }),
        cluster_role(
            "metrics-reader",
            &[(MONITORING_LABEL, "true")],
            vec![Rule::new(&["get"], &[""], &["nodes/metrics"])],
        ),
        crb(
            "readers",
            "pod-reader",
            vec![subject("Group", "readers", None)],
        ),
        crb("health", "health", vec![subject("User", "monitor", None)]),
        crb(
            "monitoring",
            "monitoring-all",
            vec![subject("Group", "mon", None)],
        ),
        rb(
            "dev",
            "alice-pods",
            "ClusterRole",
            "pod-reader",
            vec![subject("User", "alice", None)],
        ),
        rb(
            "dev",
            "cm",
            "Role",
            "cm-one",
            vec![subject("ServiceAccount", "builder", None)],
        ),
        rb(
            "dev",
            "ci",
            "ClusterRole",
            "status-writer",
            vec![subject("ServiceAccount", "deployer", Some("ci"))],
        ),
        rb(
            "dev",
            "broken",
            "Role",
            "does-not-exist",
            vec![subject("User", "alice", None)],
        ),
    ])
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo::new(name, groups.iter().copied())
}

fn sa(namespace: &str, name: &str) -> UserInfo {
    user(
        &service_account_user_name(namespace, name),
        &["system:serviceaccounts"],
    )
}

fn res(u: &UserInfo, verb: &str, ns: &str, group: &str, resource: &str, name: &str) -> Attributes {
    Attributes::resource(u.clone(), verb, ns, group, resource, name)
}

#[test]
fn rbac_decision_table() {
    let rbac = fixture();
    let readers = user("bob", &["readers"]);
    let alice = user("alice", &[]);
    let builder = sa("dev", "builder");
    let deployer = sa("ci", "deployer");
    let monitor = user("monitor", &[]);
    let url =
        |u: &UserInfo, verb: &str, path: &str| Attributes::non_resource(u.clone(), verb, path);
    let cases = [
        (
            res(&readers, "list", "prod", "", "pods", ""),
            true,
            "group bound cluster-wide",
        ),
        (
            res(&readers, "list", "", "", "pods", ""),
            true,
            "cluster-wide list across namespaces",
        ),
        (
            res(&readers, "get", "prod", "", "pods/log", "web"),
            true,
            "explicit subresource",
        ),
        (
            res(&readers, "get", "prod", "", "pods/exec", "web"),
            false,
            "other subresource",
        ),
        (
            res(&readers, "delete", "prod", "", "pods", "web"),
            false,
            "verb not granted",
        ),
        (
            res(&alice, "list", "dev", "", "pods", ""),
            true,
            "RoleBinding to ClusterRole in its namespace",
        ),
        (
            res(&alice, "list", "prod", "", "pods", ""),
            false,
            "RoleBinding does not reach other namespaces",
        ),
        (
            res(&alice, "list", "", "", "pods", ""),
            false,
            "RoleBinding does not grant cluster-wide",
        ),
        (
            res(&builder, "get", "dev", "", "configmaps", "app-config"),
            true,
            "SA subject defaults to binding namespace",
        ),
        (
            res(&builder, "get", "dev", "", "configmaps", "other"),
            false,
            "resourceNames restrict",
        ),
        (
            res(&builder, "list", "dev", "", "configmaps", ""),
            false,
            "resourceNames never allow list",
        ),
        (
            res(
                &sa("prod", "builder"),
                "get",
                "dev",
                "",
                "configmaps",
                "app-config",
            ),
            false,
            "SA of another namespace",
        ),
        (
            res(
                &deployer,
                "update",
                "dev",
                "apps",
                "deployments/status",
                "web",
            ),
            true,
            "SA subject with namespace, */status",
        ),
        (
            res(&deployer, "update", "dev", "apps", "deployments", "web"),
            false,
            "*/status is not the parent",
        ),
        (
            res(
                &deployer,
                "update",
                "ci",
                "apps",
                "deployments/status",
                "web",
            ),
            false,
            "binding only in dev",
        ),
        (
            url(&monitor, "get", "/healthz/etcd"),
            true,
            "nonResourceURL prefix",
        ),
        (
            url(&monitor, "get", "/healthz"),
            false,
            "prefix/* does not cover the bare path",
        ),
        (
            url(&monitor, "post", "/healthz/etcd"),
            false,
            "nonResourceURL verb",
        ),
        (
            res(
                &user("carol", &["mon"]),
                "get",
                "",
                "",
                "nodes/metrics",
                "n1",
            ),
            true,
            "aggregated cluster role",
        ),
        (
            res(&user("carol", &["mon"]), "list", "", "", "nodes", ""),
            false,
            "aggregation adds only matched rules",
        ),
        (
            res(&user("nobody", &[]), "get", "dev", "", "pods", "x"),
            false,
            "no binding",
        ),
    ];
    for (attrs, expected, what) in cases {
        let decision = rbac.authorize(&attrs);
        assert_eq!(decision.allowed, expected, "{what}: {}", decision.reason);
    }
}

#[test]
fn reasons_name_the_binding_or_the_failed_check() {
    let rbac = fixture();
    let allowed = rbac.authorize(&res(&user("alice", &[]), "get", "dev", "", "pods", "web"));
    assert_eq!(
        allowed.reason,
        "RBAC: allowed by RoleBinding \"dev/alice-pods\" of ClusterRole \"pod-reader\" to User \"alice\""
    );
    let denied = rbac.authorize(&res(
        &user("alice", &[]),
        "delete",
        "dev",
        "",
        "pods",
        "web",
    ));
    assert!(
        denied.reason.contains("cannot delete resource \"pods\""),
        "{}",
        denied.reason
    );
    assert!(
        denied.reason.contains("RoleBinding \"dev/alice-pods\""),
        "{}",
        denied.reason
    );
    assert!(
        denied.reason.contains("role dev/does-not-exist not found"),
        "{}",
        denied.reason
    );
    let nobody = rbac.authorize(&res(&user("nobody", &[]), "get", "", "", "nodes", ""));
    assert!(
        nobody.reason.contains("no binding names this user"),
        "{}",
        nobody.reason
    );
}

#[test]
fn aggregation_is_recomputed_on_change() {
    let rbac = fixture();
    let carol = user("carol", &["mon"]);
    let list_nodes = res(&carol, "list", "", "", "nodes", "");
    assert!(!rbac.authorize(&list_nodes).allowed);
    rbac.upsert(cluster_role(
        "node-lister",
        &[(MONITORING_LABEL, "true")],
        vec![Rule::new(&["list"], &[""], &["nodes"])],
    ));
    assert!(rbac.authorize(&list_nodes).allowed);
    assert_eq!(
        rbac.effective_cluster_role_rules("monitoring-all")
            .unwrap()
            .len(),
        2
    );
    // Relabelled: no longer aggregated.
    rbac.upsert(cluster_role(
        "node-lister",
        &[],
        vec![Rule::new(&["list"], &[""], &["nodes"])],
    ));
    assert!(!rbac.authorize(&list_nodes).allowed);
    rbac.remove(RbacKind::ClusterRole, "", "metrics-reader");
    assert_eq!(
        rbac.effective_cluster_role_rules("monitoring-all"),
        Some(vec![])
    );
}

#[test]
fn aggregation_is_transitive_and_survives_cycles() {
    let select = |label: &str| AggregationRule {
        cluster_role_selectors: Some(vec![LabelSelector {
            match_labels: Some([(label.to_string(), "true".to_string())].into()),
            ..LabelSelector::default()
        }]),
    };
    let aggregated = |name: &str, labels: &[(&str, &str)], selects: &str| {
        RbacObject::ClusterRole(ClusterRole {
            metadata: meta(None, name, labels),
            rules: None,
            aggregation_rule: Some(select(selects)),
        })
    };
    let rbac = RbacAuthorizer::with_objects([
        aggregated("outer", &[], "to-outer"),
        aggregated(
            "inner",
            &[("to-outer", "true"), ("to-inner", "true")],
            "to-inner",
        ),
        cluster_role(
            "leaf",
            &[("to-inner", "true")],
            vec![Rule::new(&["get"], &[""], &["secrets"])],
        ),
    ]);
    assert_eq!(rbac.effective_cluster_role_rules("outer").unwrap().len(), 1);
    assert_eq!(rbac.effective_cluster_role_rules("inner").unwrap().len(), 1);
}

#[test]
fn removing_bindings_revokes_access() {
    let rbac = fixture();
    let attrs = res(&user("alice", &[]), "list", "dev", "", "pods", "");
    assert!(rbac.authorize(&attrs).allowed);
    rbac.remove(RbacKind::RoleBinding, "dev", "alice-pods");
    assert!(!rbac.authorize(&attrs).allowed);

    let attrs = res(
        &sa("dev", "builder"),
        "get",
        "dev",
        "",
        "configmaps",
        "app-config",
    );
    assert!(rbac.authorize(&attrs).allowed);
    rbac.remove(RbacKind::Role, "dev", "cm-one");
    assert!(!rbac.authorize(&attrs).allowed);

    let attrs = res(&user("bob", &["readers"]), "list", "", "", "pods", "");
    rbac.remove(RbacKind::ClusterRoleBinding, "", "readers");
    assert!(!rbac.authorize(&attrs).allowed);
}

#[test]
fn cluster_role_binding_to_role_is_ignored() {
    let rbac = RbacAuthorizer::with_objects([RbacObject::ClusterRoleBinding(ClusterRoleBinding {
        metadata: meta(None, "wrong", &[]),
        role_ref: role_ref("Role", "x"),
        subjects: Some(vec![subject("User", "u", None)]),
    })]);
    let decision = rbac.authorize(&res(&user("u", &[]), "get", "", "", "nodes", "n"));
    assert!(!decision.allowed);
    assert!(
        decision.reason.contains("must be ClusterRole"),
        "{}",
        decision.reason
    );
}

#[test]
fn rules_for_lists_cluster_and_namespace_rules() {
    let rbac = fixture();
    let (resources, urls) = rbac.rules_for(&user("alice", &["readers"]), "dev");
    // pod-reader via both bindings, deduplicated.
    assert_eq!(resources.len(), 2);
    assert!(urls.is_empty());
    let (resources, urls) = rbac.rules_for(&user("monitor", &[]), "dev");
    assert!(resources.is_empty());
    assert_eq!(
        urls[0].non_resource_urls,
        Some(vec!["/healthz/*".to_string()])
    );
    let (resources, _) = rbac.rules_for(&sa("dev", "builder"), "dev");
    assert_eq!(
        resources[0].resource_names,
        Some(vec!["app-config".to_string()])
    );
    let (resources, _) = rbac.rules_for(&sa("dev", "builder"), "prod");
    assert!(resources.is_empty());
}
