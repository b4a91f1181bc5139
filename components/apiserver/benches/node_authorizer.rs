//! Node authorizer throughput: `cargo bench -p kinit-apiserver --bench node_authorizer`.
//!
//! An agent reads each secret and configmap its pods mount; the node authorizer allows it when
//! a pod bound to that node references the object. This measures those decisions per second
//! with the pods of a whole cluster in the embedded store. A plain timing harness (like the
//! store bench): one figure per cluster size is what operators compare.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kinit_apiserver::access::StoreLookup;
use kinit_apiserver::objects::Objects;
use kinit_apiserver::registry;
use kinit_auth::{Attributes, NodeAuthorizer, UserInfo, GROUP_NODES};
use kinit_store::{EmbeddedStore, Store};
use serde_json::json;

const PODS_PER_NODE: usize = 50;

async fn cluster(dir: &tempfile::TempDir, nodes: usize) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(dir.path().join(format!("{nodes}.redb")))
            .await
            .unwrap(),
    );
    let objects = Objects {
        store: store.clone(),
    };
    let def = registry::find("", "v1", "pods").unwrap();
    for n in 0..nodes {
        for p in 0..PODS_PER_NODE {
            let name = format!("pod-{n}-{p}");
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "nodeName": format!("node-{n}"),
                    "containers": [{"name": "app", "image": "demo",
                        "envFrom": [{"configMapRef": {"name": format!("config-{n}-{p}")}}]}],
                    "volumes": [{"name": "s", "secret": {"secretName": format!("secret-{n}-{p}")}}]
                }
            });
            objects.create(def, "default", &name, &pod).await.unwrap();
        }
    }
    store
}

/// Decisions per second for node 0 reading the secret of its last pod.
async fn decisions(authorizer: &NodeAuthorizer, rounds: u32) -> (f64, Duration) {
    let user = UserInfo::new("system:node:node-0", [GROUP_NODES]);
    let last = PODS_PER_NODE - 1;
    let attrs = Attributes::resource(
        user,
        "get",
        "default",
        "",
        "secrets",
        &format!("secret-0-{last}"),
    );
    let started = Instant::now();
    for _ in 0..rounds {
        let decision = authorizer.authorize(&attrs).await.unwrap();
        assert!(decision.allowed, "{}", decision.reason);
    }
    let took = started.elapsed();
    (f64::from(rounds) / took.as_secs_f64(), took / rounds)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("node authorizer: get secret referenced by a pod on the node ({PODS_PER_NODE} pods per node)");
    for nodes in [10, 100] {
        let store = cluster(&dir, nodes).await;
        let lookup = StoreLookup::new(store).await.unwrap();
        let authorizer = NodeAuthorizer::new(Arc::new(lookup));
        // Warm-up, then measure.
        decisions(&authorizer, 20).await;
        let (rate, each) = decisions(&authorizer, 200).await;
        println!(
            "  {:>5} pods on {nodes:>3} nodes: {rate:>9.0} decisions/s ({:.3} ms each)",
            nodes * PODS_PER_NODE,
            each.as_secs_f64() * 1000.0
        );
    }
}
