//! The controller manager opens one watch per resource for the whole process: every controller
//! is fed by the shared informers (and the garbage collector by them too where they exist).
//! Counted at the client: every request with `watch=true`, by resource path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinit_apiserver::testing::TestServer;
use kinit_controllers::cluster::{ClusterControllerOptions, ControllerName};
use kinit_controllers::{run_with_client, WorkloadOptions};
use kube::client::{Body, ClientBuilder};
use tokio::sync::watch;

type Watches = Arc<Mutex<Vec<String>>>;

/// A client as the controller manager that records the path of every watch request.
async fn counting_client(ts: &TestServer) -> (kube::Client, Watches) {
    let path = ts.kubeconfig_for("system:kube-controller-manager", &[]);
    let config = kinit_component_base::kube_config(Some(&path))
        .await
        .unwrap();
    let watches = Watches::default();
    let log = watches.clone();
    let layer = tower::util::MapRequestLayer::new(move |request: http::Request<Body>| {
        let is_watch = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        if is_watch {
            log.lock().unwrap().push(request.uri().path().to_string());
        }
        request
    });
    let client = ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&layer)
        .build();
    (client, watches)
}

/// Runs the controllers until the number of watches has been steady for 3 s (at most 30 s),
/// then returns the watch requests by path.
async fn watches_of(
    workloads: WorkloadOptions,
    cluster: ClusterControllerOptions,
    ts: &TestServer,
) -> BTreeMap<String, usize> {
    let (client, watches) = counting_client(ts).await;
    let (stop, stop_rx) = watch::channel(false);
    let manager = tokio::spawn(run_with_client(
        client,
        workloads,
        Some(cluster),
        None,
        stop_rx,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut last, mut steady_since) = (usize::MAX, tokio::time::Instant::now());
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = watches.lock().unwrap().len();
        if n != last {
            (last, steady_since) = (n, tokio::time::Instant::now());
        } else if n > 0 && steady_since.elapsed() >= Duration::from_secs(3) {
            break;
        }
    }
    assert!(
        !manager.is_finished(),
        "the controller manager keeps running"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), manager)
        .await
        .expect("the controller manager stops within 20 s")
        .unwrap()
        .unwrap();
    let mut by_path = BTreeMap::new();
    for path in watches.lock().unwrap().iter() {
        *by_path.entry(path.clone()).or_insert(0) += 1;
    }
    by_path
}

fn cluster_options(ts: &TestServer, controllers: &[ControllerName]) -> ClusterControllerOptions {
    let pki = ts.dir.path().join("pki");
    ClusterControllerOptions {
        cluster_signing_cert_file: pki.join("ca.crt"),
        cluster_signing_key_file: pki.join("ca.key"),
        allocate_node_cidrs: true,
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        controllers: controllers.iter().copied().collect(),
        ..ClusterControllerOptions::default()
    }
}

#[tokio::test]
async fn every_resource_is_watched_once_by_the_whole_controller_manager() {
    let ts = TestServer::start().await;
    let all = watches_of(
        WorkloadOptions::default(),
        cluster_options(&ts, &ControllerName::ALL),
        &ts,
    )
    .await;
    let total: usize = all.values().sum();
    eprintln!("controller manager with every controller: {total} watches");
    for (path, n) in &all {
        eprintln!("  {n} × {path}");
    }
    // What the garbage collector watches on its own when no informer is shared with it: the
    // metadata of every listable resource.
    let gc_alone = watches_of(
        WorkloadOptions::none(),
        cluster_options(&ts, &[ControllerName::GarbageCollector]),
        &ts,
    )
    .await;
    eprintln!(
        "garbage collector alone: {} watches",
        gc_alone.values().sum::<usize>()
    );
    for path in ["/api/v1/pods", "/api/v1/nodes", "/apis/apps/v1/replicasets"] {
        assert_eq!(all.get(path), Some(&1), "{path} watched once: {all:?}");
    }
    let repeated: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "watched more than once: {repeated:?}");
    // Every resource the collector watches alone is watched (once) with everything on, too.
    for path in gc_alone.keys() {
        assert!(
            all.contains_key(path),
            "{path} unwatched with every controller on"
        );
    }
}
