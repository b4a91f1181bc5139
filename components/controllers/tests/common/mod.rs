//! Shared harness: a real API server, the controller manager running as
//! `system:kube-controller-manager`, and a fake "node side" that marks pods ready.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kinit_apiserver::testing::TestServer;
use kinit_component_base::LeaderElectionConfig;
use kinit_controllers::{run_with_client, WorkloadOptions};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;

pub struct Harness {
    pub ts: TestServer,
    pub admin: Client,
    stop: watch::Sender<bool>,
    manager: tokio::task::JoinHandle<Result<(), kinit_controllers::ControllerError>>,
}

pub async fn client_for(path: &std::path::Path) -> Client {
    kinit_component_base::client(Some(path)).await.unwrap()
}

impl Harness {
    /// Starts a server and the controller manager (with leader election, short timings).
    pub async fn start() -> Harness {
        let ts = TestServer::start().await;
        let admin = client_for(&ts.admin_kubeconfig()).await;
        let cm = client_for(&ts.kubeconfig_for("system:kube-controller-manager", &[])).await;
        let (stop, stop_rx) = watch::channel(false);
        let election = LeaderElectionConfig {
            namespace: "kube-system".into(),
            name: "kube-controller-manager".into(),
            identity: "test-cm".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        let manager = tokio::spawn(run_with_client(
            cm,
            WorkloadOptions::default(),
            None,
            Some(election),
            stop_rx,
        ));
        Harness {
            ts,
            admin,
            stop,
            manager,
        }
    }

    /// Stops the manager and checks it ended cleanly.
    pub async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.manager)
            .await
            .expect("controller manager stops within 20s")
            .unwrap()
            .unwrap();
    }
}

/// Polls `f` every 100 ms until it returns Some, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the fake node side does with pods.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NodeSide {
    /// Running and Ready.
    Ready,
    /// Succeeded.
    Succeed,
    /// Failed.
    Fail,
}

/// Marks every pod of `namespace` that the node side has not handled yet (pods without a phase
/// or Pending) as `what`; returns how many it changed.
pub async fn node_side(admin: &Client, namespace: &str, what: NodeSide) -> usize {
    let api: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let pods = api.list(&ListParams::default()).await.unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut n = 0;
    for p in pods.items {
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if p.metadata.deletion_timestamp.is_some() || (phase != "Pending" && !phase.is_empty()) {
            continue;
        }
        let status = match what {
            NodeSide::Ready => json!({"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}),
            NodeSide::Succeed => json!({"phase": "Succeeded"}),
            NodeSide::Fail => json!({"phase": "Failed"}),
        };
        let name = p.metadata.name.clone().unwrap();
        if api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Runs [`node_side`] every 300 ms in the background until dropped.
pub fn node_side_loop(
    admin: Client,
    namespace: &str,
    what: NodeSide,
) -> tokio::task::JoinHandle<()> {
    let ns = namespace.to_string();
    tokio::spawn(async move {
        loop {
            node_side(&admin, &ns, what).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}
