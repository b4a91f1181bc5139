//! The pod network across nodes, the agent's side: it watches the Node objects and keeps this
//! node's routes (host-gw) or VXLAN entries in step with them through `kinit_cni::network`,
//! and publishes this node's facts (uplink subnet, VTEP MAC, backend) as annotations on its
//! own Node, so every agent decides the `auto` mode alike.
//!
//! A sync is a reconcile of everything: it runs at start (which restores the entries after a
//! reboot), after every Node change (debounced) and every minute (which repairs entries removed
//! by hand).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kinit_cni::network::{decide, Backend, CniMode, NetworkConfig, NodeNetwork, Peer};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};

use crate::config::Settings;

/// How often the whole network is reconciled besides Node events.
const RESYNC: Duration = Duration::from_secs(60);
/// Quiet time after a Node event before syncing (a burst becomes one sync).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The node's InternalIP (first), as peers reach it.
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

/// `spec.podCIDRs`, or `spec.podCIDR` for nodes written by older clients.
pub fn pod_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<IpNet> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .filter_map(|c| c.parse().ok())
        .collect();
    if out.is_empty() {
        out.extend(
            spec.pod_cidr
                .as_deref()
                .and_then(|c| c.parse::<IpNet>().ok()),
        );
    }
    out
}

/// The peers the Node objects describe (nodes without an InternalIP are left out: nothing
/// can be routed to them yet).
pub fn peers(nodes: &[Arc<Node>]) -> Vec<Peer> {
    let mut out: Vec<Peer> = nodes
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let ip = internal_ip(n)?;
            let annotations: BTreeMap<String, String> =
                n.metadata.annotations.clone().unwrap_or_default();
            Some(Peer::from_node(name, ip, pod_cidrs(n), &annotations))
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The pod network's own thread; dropping it stops the thread (routes and VXLAN entries stay,
/// so pod traffic keeps flowing while the agent restarts).
pub struct NetworkHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for NetworkHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the pod network on a thread of its own: a sync runs `nft` and writes sysctls
/// synchronously, which must not stall the agent's async workers.
pub fn spawn(client: kube::Client, settings: Arc<Settings>) -> std::io::Result<NetworkHandle> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("kinit-network".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("the pod network cannot start its runtime: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                tokio::select! {
                    _ = run(client, settings) => {}
                    _ = stopped => {}
                }
            });
        })?;
    Ok(NetworkHandle { stop: Some(stop) })
}

/// Runs the pod network of this node until the future is dropped. Without `clusterCIDR` in
/// the configuration there is nothing to route and it ends at once.
pub async fn run(client: kube::Client, settings: Arc<Settings>) {
    let Some(cluster_cidr) = settings.config.cluster_cidr else {
        tracing::info!("no clusterCIDR configured: pod routes to other nodes are not managed");
        return;
    };
    let Some(node_ip) = settings.node_ip else {
        tracing::warn!("no nodeIP configured: pod routes to other nodes are not managed");
        return;
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let (store, writer) = reflector::store::<Node>();
    let changed = Arc::new(tokio::sync::Notify::new());
    let watch = {
        let changed = changed.clone();
        tokio::spawn(async move {
            let mut stream = watcher::watcher(nodes, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .touched_objects()
                .boxed();
            loop {
                match stream.next().await {
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(e)) => {
                        tracing::warn!("watching Nodes for the pod network: {e}");
                        changed.notify_one();
                    }
                    None => break,
                }
            }
        })
    };
    let _watch = crate::AbortOnDrop(vec![watch]);
    if store.wait_until_ready().await.is_err() {
        return;
    }

    // The own pod range: the configuration's, else the Node's (joined nodes get it from the
    // node IPAM controller).
    let own_cidrs = loop {
        let mut cidrs: Vec<IpNet> = settings
            .config
            .pod_cidr
            .as_deref()
            .and_then(|c| c.parse().ok())
            .into_iter()
            .collect();
        if cidrs.is_empty() {
            if let Some(node) = store
                .state()
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(settings.node_name.as_str()))
            {
                cidrs = pod_cidrs(node);
            }
        }
        if !cidrs.is_empty() {
            break cidrs;
        }
        tracing::info!("waiting for this node's pod CIDR before routing to other nodes");
        changed.notified().await;
    };
    let config = NetworkConfig::new(
        settings.node_name.clone(),
        node_ip,
        own_cidrs,
        vec![cluster_cidr],
    );
    let mut network = loop {
        match NodeNetwork::new(config.clone()).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!("the pod network cannot start (retrying in 10 s): {e}");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    let mode = settings.config.cni_mode;
    let mut backend = None;
    loop {
        sync_once(&client, &settings, &store, mode, &mut network, &mut backend).await;
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

async fn sync_once(
    client: &kube::Client,
    settings: &Settings,
    store: &Store<Node>,
    mode: CniMode,
    network: &mut NodeNetwork,
    last_backend: &mut Option<Backend>,
) {
    let nodes = store.state();
    let peers = peers(&nodes);
    let backend = decide(mode, network.facts(), &peers);
    if let Some(previous) = last_backend.filter(|b| *b != backend) {
        tracing::warn!(
            "the pod network switched from {} to {}: pods started before keep their interface MTU (pods need {} now); restart them (kubectl rollout restart) if large transfers stall",
            previous.as_str(),
            backend.as_str(),
            network.facts().pod_mtu(backend)
        );
    }
    *last_backend = Some(backend);
    match network.sync(backend, &peers).await {
        Ok(report) => {
            if report.changed() {
                tracing::info!(
                    backend = backend.as_str(),
                    pod_mtu = report.pod_mtu,
                    device = ?report.device,
                    routes_added = ?report.routes_added,
                    routes_removed = ?report.routes_removed,
                    neighbours_added = ?report.neighbours_added,
                    neighbours_removed = ?report.neighbours_removed,
                    fdb_added = ?report.fdb_added,
                    fdb_removed = ?report.fdb_removed,
                    rules_added = ?report.rules_added,
                    rules_removed = ?report.rules_removed,
                    "pod network synced"
                );
            }
            for skipped in &report.skipped {
                tracing::warn!(
                    "pod network: no route to node {}: {}",
                    skipped.name,
                    skipped.reason
                );
            }
        }
        Err(e) => tracing::warn!(
            "syncing the pod network failed (retried on the next Node change, at the latest in a minute): {e}"
        ),
    }
    // Compared with the Node as the API has it, so annotations that were removed, or a Node
    // that was recreated, get them again.
    let wanted = network.facts().annotations(backend);
    let current: BTreeMap<String, String> = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(settings.node_name.as_str()))
        .and_then(|n| n.metadata.annotations.clone())
        .unwrap_or_default();
    if wanted.iter().any(|(k, v)| current.get(k) != Some(v)) {
        let patch = serde_json::json!({"metadata": {"annotations": wanted}});
        if let Err(e) = Api::<Node>::all(client.clone())
            .patch(
                &settings.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            tracing::warn!(
                "publishing this node's network facts on Node {} failed (retried): {e}",
                settings.node_name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: Option<&str>, annotations: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "annotations": annotations},
                "spec": {"podCIDR": cidr, "podCIDRs": cidr.map(|c| vec![c])},
                "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn peers_come_from_node_objects() {
        let nodes = vec![
            node(
                "node3",
                "10.88.0.13",
                Some("10.244.2.0/24"),
                serde_json::json!({
                    kinit_cni::network::ANNOTATION_UPLINK_SUBNET: "10.88.0.0/24"
                }),
            ),
            node(
                "node2",
                "10.88.0.12",
                Some("10.244.1.0/24"),
                serde_json::json!({}),
            ),
            node("joining", "10.88.0.14", None, serde_json::json!({})),
        ];
        let peers = peers(&nodes);
        assert_eq!(
            peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["joining", "node2", "node3"]
        );
        assert_eq!(peers[1].node_ip, "10.88.0.12".parse::<IpAddr>().unwrap());
        assert_eq!(
            peers[1].pod_cidrs,
            vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(peers[0].pod_cidrs.is_empty());
        assert_eq!(
            peers[2].uplink_subnet,
            Some("10.88.0.0/24".parse().unwrap())
        );
        assert_eq!(peers[1].uplink_subnet, None);
    }
}
