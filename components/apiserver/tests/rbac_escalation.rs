//! RBAC privilege-escalation prevention: a user allowed to write roles and bindings can grant
//! only what it holds, unless it is allowed `escalate` (roles) or `bind` (bindings).

use std::time::Duration;

use serde_json::{json, Value};

mod common;

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (code, body)
}

fn role(name: &str, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
           "metadata": {"name": name}, "rules": rules})
}

fn binding(name: &str, kind: &str, role: &str, user: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
           "metadata": {"name": name},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
           "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
}

/// Sends `make()` until it answers `want` (the RBAC index follows the store a moment later).
async fn until_status(want: u16, mut make: impl FnMut() -> reqwest::RequestBuilder) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = send(make()).await;
        if code == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wanted {want}, still {code}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_bindings_cannot_grant_more_than_the_writer_holds() {
    let s = common::TestServer::start().await;
    let admin = s.client_as("test-admin", &["system:masters"]);
    let bob = s.client_as("bob", &["team-leads"]);
    let roles = s.url(&format!("{RBAC}/namespaces/team/roles"));
    let bindings = s.url(&format!("{RBAC}/namespaces/team/rolebindings"));

    let (code, _) = send(
        admin
            .post(s.url("/api/v1/namespaces"))
            .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})),
    )
    .await;
    assert_eq!(code, 201);
    let manager = role(
        "manager",
        json!([
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
             "verbs": ["get", "create", "update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
        ]),
    );
    assert_eq!(send(admin.post(&roles).json(&manager)).await.0, 201);
    let bob_manager = binding("bob-manager", "Role", "manager", "bob");
    assert_eq!(send(admin.post(&bindings).json(&bob_manager)).await.0, 201);
    until_status(200, || bob.get(s.url("/api/v1/namespaces/team/pods"))).await;

    // A role within what bob holds is fine; one with more is refused, naming what is missing.
    let pod_reader = role(
        "pod-reader",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
    );
    assert_eq!(send(bob.post(&roles).json(&pod_reader)).await.0, 201);
    let secret_reader = role(
        "secret-reader",
        json!([{"apiGroups": [""], "resources": ["secrets", "pods"], "verbs": ["get"]}]),
    );
    let (code, status) = send(bob.post(&roles).json(&secret_reader)).await;
    assert_eq!(code, 403, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "roles.rbac.authorization.k8s.io \"secret-reader\" is forbidden: user \"bob\" (groups=[\"team-leads\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n"
        ),
        "{message}"
    );
    assert!(
        message.ends_with("\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"),
        "{message}"
    );

    // Updates: the same rules (a label added) pass, wider rules do not.
    let path = format!("{roles}/pod-reader");
    let (_, mut current) = send(bob.get(&path)).await;
    current["metadata"]["labels"] = json!({"tier": "read"});
    let (code, updated) = send(bob.put(&path).json(&current)).await;
    assert_eq!(code, 200, "{updated}");
    let mut wider = updated.clone();
    wider["rules"][0]["verbs"] = json!(["get", "list", "delete"]);
    let (code, status) = send(bob.put(&path).json(&wider)).await;
    assert_eq!(code, 403, "{status}");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("Verbs:[\"delete\"]"));

    // Bindings: to a role bob holds entirely, yes; to admin or cluster-admin, no.
    let alice_reads = binding("alice-reads", "Role", "pod-reader", "alice");
    assert_eq!(send(bob.post(&bindings).json(&alice_reads)).await.0, 201);
    for cluster_role in ["admin", "cluster-admin", "view"] {
        let grab = binding(
            &format!("bob-{cluster_role}"),
            "ClusterRole",
            cluster_role,
            "bob",
        );
        let (code, status) = send(bob.post(&bindings).json(&grab)).await;
        assert_eq!(code, 403, "{cluster_role}: {status}");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("is attempting to grant RBAC permissions not currently held"),
            "{status}"
        );
    }
    let (code, _) = send(
        bob.post(&bindings)
            .json(&binding("ghost", "Role", "missing", "bob")),
    )
    .await;
    assert_eq!(code, 404);

    // `bind` on the view ClusterRole (by name) lets bob bind it, and only it.
    let binder = role(
        "view-binder",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                "resourceNames": ["view"], "verbs": ["bind"]}]),
    );
    assert_eq!(send(admin.post(&roles).json(&binder)).await.0, 201);
    let bob_binder = binding("bob-view-binder", "Role", "view-binder", "bob");
    assert_eq!(send(admin.post(&bindings).json(&bob_binder)).await.0, 201);
    let alice_views = binding("alice-views", "ClusterRole", "view", "alice");
    until_status(201, || bob.post(&bindings).json(&alice_views)).await;
    let alice_edits = binding("alice-edits", "ClusterRole", "edit", "alice");
    assert_eq!(send(bob.post(&bindings).json(&alice_edits)).await.0, 403);

    // `escalate` on roles lets bob write any role in the namespace.
    let escalator = role(
        "escalator",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"],
                "verbs": ["escalate"]}]),
    );
    assert_eq!(send(admin.post(&roles).json(&escalator)).await.0, 201);
    let bob_escalator = binding("bob-escalator", "Role", "escalator", "bob");
    assert_eq!(
        send(admin.post(&bindings).json(&bob_escalator)).await.0,
        201
    );
    until_status(201, || bob.post(&roles).json(&secret_reader)).await;

    // Aggregated ClusterRoles need full authority, even for a user who may create them.
    let creator = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "clusterrole-writer"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                   "verbs": ["create"]}]});
    let cluster_roles = s.url(&format!("{RBAC}/clusterroles"));
    assert_eq!(send(admin.post(&cluster_roles).json(&creator)).await.0, 201);
    let carol_creates = json!({"apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding", "metadata": {"name": "carol-creates"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "clusterrole-writer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol"}]});
    assert_eq!(
        send(
            admin
                .post(s.url(&format!("{RBAC}/clusterrolebindings")))
                .json(&carol_creates)
        )
        .await
        .0,
        201
    );
    let carol = s.client_as("carol", &[]);
    // An empty role is within anyone's permissions: once it is created, carol may create.
    let empty = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "empty"}, "rules": []});
    until_status(201, || carol.post(&cluster_roles).json(&empty)).await;
    let aggregated = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "gatherer"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]},
        "rules": []});
    let (code, status) = send(carol.post(&cluster_roles).json(&aggregated)).await;
    assert_eq!(code, 403, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("must have cluster-admin privileges to use the aggregationRule"),
        "{status}"
    );
    assert_eq!(
        send(admin.post(&cluster_roles).json(&aggregated)).await.0,
        201
    );
}
