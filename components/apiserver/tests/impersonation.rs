//! Impersonation headers: every impersonated part needs its own `impersonate` permission.

use std::time::Duration;

use serde_json::{json, Value};

mod common;

async fn whoami(req: reqwest::RequestBuilder) -> (u16, Value) {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let resp = req.json(&body).send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_impersonated_part_needs_its_permission() {
    let s = common::TestServer::start().await;
    let admin = s.client_as("test-admin", &["system:masters"]);
    let review = s.url("/apis/authentication.k8s.io/v1/selfsubjectreviews");
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
    "metadata": {"name": "impersonate-alice-qa"},
    "rules": [
        {"apiGroups": [""], "resources": ["users"], "resourceNames": ["alice"], "verbs": ["impersonate"]},
        {"apiGroups": [""], "resources": ["groups"], "resourceNames": ["qa"], "verbs": ["impersonate"]}
    ]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "bob-impersonates"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "impersonate-alice-qa"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]});
    for (path, body) in [
        (format!("{rbac}/clusterroles"), role),
        (format!("{rbac}/clusterrolebindings"), binding),
    ] {
        let resp = admin.post(s.url(&path)).json(&body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    let bob = s.client_as("bob", &[]);

    // Groups without a user are a malformed request.
    let (code, _) = whoami(bob.post(&review).header("Impersonate-Group", "qa")).await;
    assert_eq!(code, 400);

    // alice in qa: both allowed (the RBAC index follows the store a moment later).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (code, body) = whoami(
            bob.post(&review)
                .header("Impersonate-User", "alice")
                .header("Impersonate-Group", "qa"),
        )
        .await;
        if code == 201 || code == 200 {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{code} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let info = &body["status"]["userInfo"];
    assert_eq!(info["username"], "alice");
    assert_eq!(info["groups"], json!(["qa", "system:authenticated"]));

    // Another group, a uid or another user: each refused, naming what was not allowed.
    for (header, value, resource) in [
        ("Impersonate-Group", "system:masters", "groups"),
        ("Impersonate-Uid", "1234", "uids"),
    ] {
        let (code, body) = whoami(
            bob.post(&review)
                .header("Impersonate-User", "alice")
                .header(header, value),
        )
        .await;
        assert_eq!(code, 403, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("cannot impersonate resource \"{resource}\"")),
            "{message}"
        );
    }
    let (code, _) = whoami(bob.post(&review).header("Impersonate-User", "carol")).await;
    assert_eq!(code, 403);
}
