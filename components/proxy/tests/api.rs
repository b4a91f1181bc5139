//! End to end through the API: the proxy runs with a node's credentials against an
//! in-process API server (kinit-apiserver's TestServer) and programs the table of a lab
//! node namespace (see `common`); Services and EndpointSlices created through the API
//! change the table and real traffic follows; tampering is repaired by the periodic check.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kinit_apiserver::testing::TestServer;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

async fn client(path: &std::path::Path) -> kube::Client {
    kinit_component_base::client(Some(path)).await.unwrap()
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ask(ns: String, ip: IpAddr) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        tcp_ask(&ns, sa(ip, 80), Duration::from_secs(1))
            .ok()
            .map(|a| a.pod)
    })
    .await
    .unwrap()
}

fn slice_for(name: &str, ip: IpAddr) -> EndpointSlice {
    ready_slice(
        name,
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(ip, "node-a")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_from_the_api_drive_the_table() {
    if !prerequisites("services_and_slices_from_the_api_drive_the_table") {
        return;
    }
    let lab = Lab::new(30);
    let ts = TestServer::start().await;
    let admin = client(&ts.admin_kubeconfig()).await;
    let node = client(&ts.kubeconfig_for("system:node:node-a", &["system:nodes"])).await;
    let mut config = lab.config();
    config.tamper_check_period = Duration::from_millis(500);
    let proxy = kinit_proxy::start(node, config).await.unwrap();
    wait_for("the first sync", 20, || proxy.synced().then_some(())).await;
    assert_eq!(proxy.status().full_syncs, 1);
    // The API server's own `kubernetes` Service is programmed from the initial list.
    let listing = lab.nft(&["list", "map", "inet", "kinit-proxy", "service-ips-v4"]);
    assert!(listing.contains("10.96.0.1 . tcp . 443"), "{listing}");

    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    let created = services.create(&PostParams::default(), &svc).await.unwrap();
    let vip: IpAddr = created
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .expect("cluster IP allocated")
        .parse()
        .unwrap();
    // No endpoints yet: refused.
    let ns = lab.ns("client");
    wait_for("the new Service to be rejected", 10, || {
        let listing = lab.nft(&[
            "list",
            "map",
            "inet",
            "kinit-proxy",
            "no-endpoint-services-v4",
        ]);
        listing.contains(&format!("{vip} . tcp . 80")).then_some(())
    })
    .await;
    slices
        .create(&PostParams::default(), &slice_for("web-1", lab.ip4("pa")))
        .await
        .unwrap();
    let mut seen = None;
    for _ in 0..100 {
        seen = ask(ns.clone(), vip).await;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.as_deref(), Some("pa"));
    let incremental = proxy.status().incremental_syncs;
    assert!(incremental >= 2, "{:?}", proxy.status());
    assert_eq!(proxy.status().full_syncs, 1, "changes are incremental");

    // The endpoint moves: traffic follows.
    let mut moved = slice_for("web-1", lab.ip4("pb"));
    moved.metadata.resource_version = slices.get("web-1").await.unwrap().metadata.resource_version;
    slices
        .replace("web-1", &PostParams::default(), &moved)
        .await
        .unwrap();
    let mut now = None;
    for _ in 0..100 {
        now = ask(ns.clone(), vip).await;
        if now.as_deref() == Some("pb") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(now.as_deref(), Some("pb"));

    // The agent can use the proxy's Service cache.
    assert!(proxy
        .services()
        .get(&ObjectRef::new("web").within("default"))
        .is_some());

    // Tampering: the table is deleted by hand and comes back on its own. (Let the deferred
    // deletion of the replaced endpoint's chain happen first: failing on a vanished table,
    // it would trigger the rewrite itself and the tamper check would have nothing to find.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.nft(&["delete", "table", "inet", "kinit-proxy"]);
    wait_for("the tamper check to repair the table", 15, || {
        (proxy.status().tamper_repairs >= 1 && proxy.status().full_syncs >= 2).then_some(())
    })
    .await;
    assert_eq!(ask(ns.clone(), vip).await.as_deref(), Some("pb"));

    // The Service goes away: its address is released.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the Service's element to go", 10, || {
        let listing = lab.nft(&["list", "map", "inet", "kinit-proxy", "service-ips-v4"]);
        (!listing.contains(&format!("{vip} . tcp . 80"))).then_some(())
    })
    .await;
    assert!(proxy.status().last_error.is_none(), "{:?}", proxy.status());
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_the_proxy_and_keeps_the_table() {
    if !prerequisites("dropping_the_handle_stops_the_proxy_and_keeps_the_table") {
        return;
    }
    let lab = Lab::new(31);
    let dir = std::env::temp_dir().join(format!("kpx31-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (slow, log) = (dir.join("slow"), dir.join("log"));
    let ts = TestServer::start().await;
    let admin = client(&ts.admin_kubeconfig()).await;
    let node = client(&ts.kubeconfig_for("system:node:node-a", &["system:nodes"])).await;
    let mut config = lab.config();
    config.tamper_check_period = Duration::from_millis(200);
    // nft in the lab's node namespace; the first listing after `slow` appears takes 2 s, so
    // the handle can be dropped while the proxy waits for it.
    config.nft = kinit_proxy::NftCommand {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!(
                "if [ \"$1\" = -j ] && rm {slow} 2>/dev/null; then echo listing >> {log}; sleep 2; fi; \
                 exec ip netns exec {ns} nft \"$@\"",
                slow = slow.display(),
                log = log.display(),
                ns = lab.node()
            ),
            "nft".into(),
        ],
    };
    let proxy = kinit_proxy::start(node, config).await.unwrap();
    wait_for("the first sync", 20, || proxy.synced().then_some(())).await;

    let services: Api<Service> = Api::namespaced(admin.clone(), "default");
    let create = |name: &str| {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        let services = services.clone();
        async move {
            let created = services.create(&PostParams::default(), &svc).await.unwrap();
            created
                .spec
                .and_then(|s| s.cluster_ip)
                .expect("cluster IP allocated")
        }
    };
    let rejected = |vip: &str| {
        lab.nft(&[
            "list",
            "map",
            "inet",
            "kinit-proxy",
            "no-endpoint-services-v4",
        ])
        .contains(&format!("{vip} . tcp . 80"))
    };
    let masquerades = || {
        lab.nft(&["list", "chain", "inet", "kinit-proxy", "masquerading"])
            .contains("masquerade")
    };
    // Running: a new Service gets its element.
    let before = create("before").await;
    wait_for("the first Service to be programmed", 10, || {
        rejected(&before).then_some(())
    })
    .await;

    // The table is tampered with, and the handle dropped while the tamper check reads it.
    std::fs::write(&slow, "").unwrap();
    lab.nft(&["flush", "chain", "inet", "kinit-proxy", "masquerading"]);
    wait_for("the tamper check to list the table", 10, || {
        log.exists().then_some(())
    })
    .await;
    drop(proxy);
    // Stopped: neither the tampering nor a new Service changes the table any more...
    let after = create("after").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!masquerades(), "a stopped proxy repaired the table");
    assert!(!rejected(&after), "a stopped proxy programmed {after}");
    // ...and the table stays, with what was programmed.
    assert!(rejected(&before));
    let _ = std::fs::remove_dir_all(&dir);
}
