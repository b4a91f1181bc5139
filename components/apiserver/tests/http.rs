//! API semantics over HTTPS without kubectl: optimistic concurrency, paging, dry run,
//! finalizers, selector-aware watches, bookmarks and 410 Expired.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

mod common;

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (code, body)
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

/// Reads watch events (one JSON object per line) until `until` returns true or 10 s pass.
async fn read_events(
    resp: reqwest::Response,
    mut until: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !until(&events) {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("watch events in time");
        let Some(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            events.push(serde_json::from_slice(&line).unwrap());
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_semantics() {
    let s = common::TestServer::start().await;
    let admin = s.client_as("test-admin", &["system:masters"]);
    let cms = s.url("/api/v1/namespaces/default/configmaps");

    // create, stale update -> 409, dry run leaves no trace
    let (code, created) = send(admin.post(&cms).json(&cm("a", json!({"app": "x"})))).await;
    assert_eq!(code, 201);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut changed = created.clone();
    changed["data"]["k"] = json!("v2");
    assert_eq!(
        send(admin.put(format!("{cms}/a")).json(&changed)).await.0,
        200
    );
    let (code, body) = send(admin.put(format!("{cms}/a")).json(&changed)).await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("Conflict")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("the object has been modified"));
    let (code, _) = send(
        admin
            .post(format!("{cms}?dryRun=All"))
            .json(&cm("dry", json!({}))),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(send(admin.get(format!("{cms}/dry"))).await.0, 404);
    assert_ne!(rv, "");

    // paging: limit + continue visits every object exactly once
    for i in 0..5 {
        assert_eq!(
            send(
                admin
                    .post(&cms)
                    .json(&cm(&format!("page-{i}"), json!({"paged": "yes"})))
            )
            .await
            .0,
            201
        );
    }
    let mut names = Vec::new();
    let mut url = format!("{cms}?labelSelector=paged%3Dyes&limit=2");
    loop {
        let (code, list) = send(admin.get(&url)).await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(list["kind"], "ConfigMapList");
        let items = list["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        names.extend(
            items
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match list["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => {
                url = format!("{cms}?labelSelector=paged%3Dyes&limit=2&continue={c}")
            }
            _ => break,
        }
    }
    assert_eq!(names, ["page-0", "page-1", "page-2", "page-3", "page-4"]);

    // finalizers keep a deleted object until they are removed
    let mut fin = cm("fin", json!({}));
    fin["metadata"]["finalizers"] = json!(["example.com/hold"]);
    assert_eq!(send(admin.post(&cms).json(&fin)).await.0, 201);
    let (code, body) = send(admin.delete(format!("{cms}/fin"))).await;
    assert_eq!(code, 200);
    assert!(body["metadata"]["deletionTimestamp"].is_string(), "{body}");
    assert_eq!(send(admin.get(format!("{cms}/fin"))).await.0, 200);
    let patch = admin
        .patch(format!("{cms}/fin"))
        .header("Content-Type", "application/merge-patch+json")
        .body(r#"{"metadata":{"finalizers":null}}"#);
    assert_eq!(send(patch).await.0, 200);
    assert_eq!(send(admin.get(format!("{cms}/fin"))).await.0, 404);

    // Foreground deletion records the foregroundDeletion finalizer
    assert_eq!(
        send(admin.post(&cms).json(&cm("fg", json!({})))).await.0,
        201
    );
    let (_, body) = send(
        admin
            .delete(format!("{cms}/fg"))
            .json(&json!({"propagationPolicy": "Foreground"})),
    )
    .await;
    assert_eq!(
        body["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );

    // namespaced objects need an existing namespace
    let (code, body) = send(
        admin
            .post(s.url("/api/v1/namespaces/nope/configmaps"))
            .json(&cm("x", json!({}))),
    )
    .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (404, Some("namespaces \"nope\" not found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_semantics() {
    let s = common::TestServer::start().await;
    let admin = s.client_as("test-admin", &["system:masters"]);
    let cms = s.url("/api/v1/namespaces/default/configmaps");
    let (_, created) = send(admin.post(&cms).json(&cm("w", json!({"sel": "in"})))).await;
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // A label-filtered watch: the object leaving the selection is DELETED for this watcher.
    let resp = admin
        .get(format!(
            "{cms}?watch=true&labelSelector=sel%3Din&resourceVersion={rv}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let writer = {
        let admin = admin.clone();
        let cms = cms.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let p = |body: &'static str| {
                admin
                    .patch(format!("{cms}/w"))
                    .header("Content-Type", "application/merge-patch+json")
                    .body(body)
            };
            assert_eq!(send(p(r#"{"data":{"k":"v2"}}"#)).await.0, 200);
            assert_eq!(
                send(p(r#"{"metadata":{"labels":{"sel":"out"}}}"#)).await.0,
                200
            );
            assert_eq!(send(p(r#"{"data":{"k":"v3"}}"#)).await.0, 200);
            assert_eq!(
                send(p(r#"{"metadata":{"labels":{"sel":"in"}}}"#)).await.0,
                200
            );
        })
    };
    let events = read_events(resp, |e| e.len() >= 3).await;
    writer.await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["MODIFIED", "DELETED", "ADDED"], "{events:?}");
    assert_eq!(events[1]["object"]["metadata"]["labels"]["sel"], "in");
    assert_eq!(events[2]["object"]["data"]["k"], "v3");

    // Without resourceVersion, a watch starts with the current objects as ADDED; a
    // metadata.name field selector pins it to one object.
    let resp = admin
        .get(format!(
            "{cms}?watch=1&fieldSelector=metadata.name%3Dw&timeoutSeconds=1"
        ))
        .send()
        .await
        .unwrap();
    let events = read_events(resp, |_| false).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "w");

    // Compacted history: 410 Expired as an ERROR event.
    let current = s.store.current_revision().await.unwrap();
    s.store.compact(current).await.unwrap();
    let resp = admin
        .get(format!("{cms}?watch=true&resourceVersion=2"))
        .send()
        .await
        .unwrap();
    let events = read_events(resp, |_| false).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");

    // Table watch: the first event carries the column definitions.
    let resp = admin
        .get(format!("{cms}?watch=true&timeoutSeconds=1"))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .send()
        .await
        .unwrap();
    let events = read_events(resp, |_| false).await;
    assert_eq!(events[0]["object"]["kind"], "Table");
    assert_eq!(events[0]["object"]["columnDefinitions"][1]["name"], "Data");
}

fn deployment(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
}

/// Kinds with a status struct always come back with `status` (`{}` when none was written),
/// as Kubernetes' typed objects do: from create, get, list, watch, update and patch. Kinds
/// without one (ConfigMap) get none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_carry_an_empty_status() {
    let s = common::TestServer::start().await;
    let admin = s.client_as("test-admin", &["system:masters"]);
    let deploys = s.url("/apis/apps/v1/namespaces/default/deployments");
    let watch = admin
        .get(format!("{deploys}?watch=true&resourceVersion=0"))
        .send()
        .await
        .unwrap();
    let (code, created) = send(admin.post(&deploys).json(&deployment("web"))).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["status"], json!({}), "create: {created}");
    let (_, got) = send(admin.get(format!("{deploys}/web"))).await;
    assert_eq!(got["status"], json!({}), "get: {got}");
    let (_, list) = send(admin.get(&deploys)).await;
    assert_eq!(list["items"][0]["status"], json!({}), "list: {list}");
    let events = read_events(watch, |e| !e.is_empty()).await;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(
        events[0]["object"]["status"],
        json!({}),
        "watch: {}",
        events[0]
    );
    let (code, patched) = send(
        admin
            .patch(format!("{deploys}/web"))
            .header("Content-Type", "application/merge-patch+json")
            .body(r#"{"metadata": {"labels": {"x": "y"}}}"#),
    )
    .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["status"], json!({}), "patch: {patched}");
    // A written status is kept as it is.
    let mut with_status = patched.clone();
    with_status["status"] = json!({"replicas": 3});
    let (code, updated) = send(
        admin
            .put(format!("{deploys}/web/status"))
            .json(&with_status),
    )
    .await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["status"]["replicas"], 3);
    // No status struct, no status.
    let cms = s.url("/api/v1/namespaces/default/configmaps");
    let (_, cm_created) = send(admin.post(&cms).json(&cm("plain", json!({})))).await;
    assert!(cm_created.get("status").is_none(), "{cm_created}");
}

/// `componentstatuses` probes the scheduler's and controller manager's healthz (here one
/// healthy endpoint and one closed port) and the embedded store, like Kubernetes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_statuses_are_probed_live() {
    let healthy = common::TestServer::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let scheduler = healthy.url("/healthz");
    let controller_manager = format!("https://127.0.0.1:{closed_port}/healthz");
    let cm_url = controller_manager.clone();
    let s = common::TestServer::start_with(move |c, _| {
        c.component_status.scheduler = scheduler;
        c.component_status.controller_manager = cm_url;
    })
    .await;
    let admin = s.client_as("test-admin", &["system:masters"]);
    let (code, list) = send(admin.get(s.url("/api/v1/componentstatuses"))).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["kind"], "ComponentStatusList");
    let by_name = |name: &str| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .clone()
    };
    assert_eq!(
        by_name("scheduler")["conditions"],
        json!([{"type": "Healthy", "status": "True", "message": "ok"}])
    );
    let cm = by_name("controller-manager")["conditions"][0].clone();
    assert_eq!(cm["status"], "False", "{cm}");
    assert!(
        cm["error"].as_str().unwrap().starts_with(&format!(
            "Get \"{controller_manager}\": dial tcp 127.0.0.1:{closed_port}"
        )),
        "{cm}"
    );
    assert_eq!(by_name("embedded-store")["conditions"][0]["status"], "True");
    // One component, and an unknown one.
    let (code, one) = send(admin.get(s.url("/api/v1/componentstatuses/scheduler"))).await;
    assert_eq!((code, one["kind"].as_str()), (200, Some("ComponentStatus")));
    let (code, _) = send(admin.get(s.url("/api/v1/componentstatuses/nope"))).await;
    assert_eq!(code, 404);
    // Read-only.
    let (code, _) = send(
        admin
            .post(s.url("/api/v1/componentstatuses"))
            .json(&json!({"metadata": {"name": "x"}})),
    )
    .await;
    assert_eq!(code, 405);
}
