//! The proxy's table in a real kernel, checked with real traffic between private network
//! namespaces (see `common`): the engine is driven directly with Service and EndpointSlice
//! objects and writes the table with the real `nft` inside the lab's node namespace.
//!
//! Every test uses its own lab number (namespaces `kpx<N>-*`), removed on drop.

mod common;

use std::io::ErrorKind;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use kinit_proxy::{Engine, SyncKind};
use serde_json::json;

const SHORT: Duration = Duration::from_secs(2);

fn web(extra: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
    let mut s = json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    });
    for (k, v) in extra.as_object().unwrap() {
        s["spec"][k] = v.clone();
    }
    service(s)
}

fn cluster_ip() -> IpAddr {
    "10.96.0.10".parse().unwrap()
}

fn engine(lab: &Lab) -> Engine {
    Engine::new(&lab.config()).unwrap()
}

#[test]
fn cluster_ip_spreads_over_endpoints_and_masquerades_only_outside_traffic() {
    if !prerequisites("cluster_ip_spreads_over_endpoints") {
        return;
    }
    let lab = Lab::new(1);
    let mut e = engine(&lab);
    e.upsert_service(web(json!({})));
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a"), (lab.ip4("pb"), "node-b")],
    ));
    assert_eq!(e.sync().unwrap().kind, SyncKind::Full);

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let a = tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT).unwrap();
        // The client is outside the pod network: masqueraded to the node's bridge address.
        assert_eq!(a.peer, lab.ip4("bridge"), "{a:?}");
        seen.insert(a.pod);
    }
    assert_eq!(seen.len(), 2, "40 connections all went to {seen:?}");

    // From a pod, the source is kept (unless it reaches itself: hairpin).
    for _ in 0..20 {
        let a = tcp_ask(&lab.ns("pb"), sa(cluster_ip(), 80), SHORT).unwrap();
        let expected = if a.pod == "pa" {
            lab.ip4("pb")
        } else {
            lab.ip4("bridge")
        };
        assert_eq!(a.peer, expected, "{a:?}");
    }
    // From the node itself (output hook).
    let a = tcp_ask(&lab.node(), sa(cluster_ip(), 80), SHORT).unwrap();
    assert!(a.pod == "pa" || a.pod == "pb");
    // The table matches the model.
    assert_eq!(e.check_table().unwrap(), None);
}

#[test]
fn hairpin_pod_reaches_itself_through_its_service() {
    if !prerequisites("hairpin_pod_reaches_itself") {
        return;
    }
    let lab = Lab::new(2);
    let mut e = engine(&lab);
    e.upsert_service(web(json!({})));
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a")],
    ));
    e.sync().unwrap();
    let a = tcp_ask(&lab.ns("pa"), sa(cluster_ip(), 80), SHORT).unwrap();
    assert_eq!(a.pod, "pa");
    // Without masquerade the pod would answer itself directly and the client would drop
    // the reply (wrong source); the answer came, through the node's address.
    assert_eq!(a.peer, lab.ip4("bridge"));
}

#[test]
fn node_port_on_node_address_with_cluster_and_local_policies() {
    if !prerequisites("node_port_on_node_address") {
        return;
    }
    let lab = Lab::new(3);
    let mut e = engine(&lab);
    let ports = json!([{"name": "http", "port": 80, "nodePort": 30080}]);
    e.upsert_service(web(json!({"type": "NodePort", "ports": ports})));
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a")],
    ));
    // Local policy, endpoint on this node.
    let mut local = web(
        json!({"type": "NodePort", "externalTrafficPolicy": "Local", "clusterIP": "10.96.0.11",
        "clusterIPs": ["10.96.0.11"], "ports": [{"name": "http", "port": 80, "nodePort": 30081}]}),
    );
    local.metadata.name = Some("local".into());
    e.upsert_service(local);
    e.upsert_slice(ready_slice(
        "local-1",
        "local",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pb"), "node-a")],
    ));
    // Local policy, endpoint only on another node.
    let mut remote = web(
        json!({"type": "NodePort", "externalTrafficPolicy": "Local", "clusterIP": "10.96.0.12",
        "clusterIPs": ["10.96.0.12"], "ports": [{"name": "http", "port": 80, "nodePort": 30082}]}),
    );
    remote.metadata.name = Some("remote".into());
    e.upsert_service(remote);
    e.upsert_slice(ready_slice(
        "remote-1",
        "remote",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-b")],
    ));
    e.sync().unwrap();

    let client = lab.ns("client");
    let a = tcp_ask(&client, sa(lab.ip4("node"), 30080), SHORT).unwrap();
    assert_eq!(
        (a.pod.as_str(), a.peer),
        ("pa", lab.ip4("bridge")),
        "Cluster policy masquerades"
    );
    // Also on the node's other address (the bridge), from a pod.
    let a = tcp_ask(&lab.ns("pb"), sa(lab.ip4("bridge"), 30080), SHORT).unwrap();
    assert_eq!(a.pod, "pa");

    let a = tcp_ask(&client, sa(lab.ip4("node"), 30081), SHORT).unwrap();
    assert_eq!(
        (a.pod.as_str(), a.peer),
        ("pb", lab.ip4("client")),
        "Local policy keeps the client IP"
    );

    // No local endpoint: outside traffic is dropped (times out, it is not refused)...
    let err = tcp_ask(&client, sa(lab.ip4("node"), 30082), Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{err:?}"
    );
    // ...but a pod reaching the external address is short-circuited to the cluster-wide
    // endpoints, and so is the node itself.
    let a = tcp_ask(&lab.ns("pb"), sa(lab.ip4("node"), 30082), SHORT).unwrap();
    assert_eq!(a.pod, "pa");
    let a = tcp_ask(&lab.node(), sa(lab.ip4("node"), 30082), SHORT).unwrap();
    assert_eq!(a.pod, "pa");
    // The cluster IP of that Service still works (internal policy is Cluster).
    let a = tcp_ask(&client, sa("10.96.0.12".parse().unwrap(), 80), SHORT).unwrap();
    assert_eq!(a.pod, "pa");
}

#[test]
fn internal_local_policy_uses_only_local_endpoints() {
    if !prerequisites("internal_local_policy") {
        return;
    }
    let lab = Lab::new(4);
    let mut e = engine(&lab);
    e.upsert_service(web(json!({"internalTrafficPolicy": "Local"})));
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a"), (lab.ip4("pb"), "node-b")],
    ));
    e.sync().unwrap();
    for _ in 0..10 {
        assert_eq!(
            tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT)
                .unwrap()
                .pod,
            "pa"
        );
    }
    // Only the remote endpoint left: cluster-IP traffic is dropped, as kube-proxy does.
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pb"), "node-b")],
    ));
    assert_eq!(e.sync().unwrap().kind, SyncKind::Incremental);
    let err = tcp_ask(
        &lab.ns("client"),
        sa(cluster_ip(), 80),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{err:?}"
    );
}

#[test]
fn service_without_endpoints_is_refused_fast() {
    if !prerequisites("service_without_endpoints_is_refused_fast") {
        return;
    }
    let lab = Lab::new(5);
    let mut e = engine(&lab);
    e.upsert_service(web(json!({"type": "NodePort", "ports": [
        {"name": "http", "port": 80, "nodePort": 30080},
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]})));
    e.sync().unwrap();
    let refused = |ns: String, addr| {
        let start = Instant::now();
        let err = tcp_ask(&ns, addr, Duration::from_secs(3)).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionRefused,
            "{ns} -> {addr}: {err:?}"
        );
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    };
    refused(lab.ns("client"), sa(cluster_ip(), 80)); // forwarded
    refused(lab.ns("pa"), sa(cluster_ip(), 80)); // forwarded from a pod
    refused(lab.node(), sa(cluster_ip(), 80)); // the node itself (output)
    refused(lab.ns("client"), sa(lab.ip4("node"), 30080)); // node port (input)
    refused(lab.node(), sa(lab.ip4("node"), 30080)); // the node's own node port
                                                     // A cluster IP on a port no Service uses is refused too (after DNAT found nothing).
    e.upsert_service({
        let mut other = web(json!({"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"]}));
        other.metadata.name = Some("other".into());
        other
    });
    e.upsert_slice(ready_slice(
        "other-1",
        "other",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a")],
    ));
    e.sync().unwrap();
    refused(lab.ns("client"), sa("10.96.0.30".parse().unwrap(), 81));
    refused(lab.node(), sa("10.96.0.30".parse().unwrap(), 81));
    // UDP gets an ICMP port unreachable: a connected socket reports it.
    let start = Instant::now();
    let err = udp_ask(
        &lab.ns("client"),
        sa(cluster_ip(), 53),
        0,
        Duration::from_secs(3),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err:?}");
    assert!(start.elapsed() < Duration::from_millis(500));

    // An endpoint appears: the same address now answers.
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pb"), "node-a")],
    ));
    assert_eq!(e.sync().unwrap().kind, SyncKind::Incremental);
    assert_eq!(
        tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT)
            .unwrap()
            .pod,
        "pb"
    );
}

#[test]
fn udp_service_and_stale_conntrack_entries() {
    if !prerequisites("udp_service_and_stale_conntrack_entries") {
        return;
    }
    let lab = Lab::new(6);
    let mut e = engine(&lab);
    let dns = service(json!({
        "metadata": {"name": "dns", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.53", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
    }));
    let vip = sa("10.96.0.53".parse().unwrap(), 53);
    e.upsert_service(dns);
    e.upsert_slice(ready_slice(
        "dns-1",
        "dns",
        "IPv4",
        &[("dns", UDP_PORT, "UDP")],
        &[(lab.ip4("pa"), "node-a")],
    ));
    e.sync().unwrap();
    // The same source port each time: one conntrack entry.
    assert_eq!(
        udp_ask(&lab.ns("client"), vip, 40053, SHORT).unwrap().pod,
        "pa"
    );
    assert_eq!(
        udp_ask(&lab.ns("client"), vip, 40053, SHORT).unwrap().pod,
        "pa"
    );

    e.upsert_slice(ready_slice(
        "dns-1",
        "dns",
        "IPv4",
        &[("dns", UDP_PORT, "UDP")],
        &[(lab.ip4("pb"), "node-a")],
    ));
    let report = e.sync().unwrap();
    assert_eq!(report.kind, SyncKind::Incremental);
    assert!(report.conntrack_deleted >= 1, "{report:?}");
    // pa still runs: without the cleanup the old entry would keep sending the flow there.
    assert_eq!(
        udp_ask(&lab.ns("client"), vip, 40053, SHORT).unwrap().pod,
        "pb"
    );
}

#[test]
fn session_affinity_pins_a_client_to_one_endpoint() {
    if !prerequisites("session_affinity_pins_a_client") {
        return;
    }
    let lab = Lab::new(7);
    let mut e = engine(&lab);
    e.upsert_service(web(json!({"sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 300}}})));
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a"), (lab.ip4("pb"), "node-a")],
    ));
    e.sync().unwrap();
    let first = tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT)
        .unwrap()
        .pod;
    for _ in 0..25 {
        assert_eq!(
            tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT)
                .unwrap()
                .pod,
            first
        );
    }
    // The affinity set holds the client, with a timeout.
    let sets = lab.nft(&["list", "sets", "inet"]);
    assert!(sets.contains("timeout 5m"), "{sets}");
    let chosen = if first == "pa" {
        lab.ip4("pa")
    } else {
        lab.ip4("pb")
    };
    let listing = lab.nft(&["list", "table", "inet", "kinit-proxy"]);
    assert!(
        listing.contains(&format!("{}", lab.ip4("client"))),
        "{listing}"
    );
    assert!(listing.contains(&format!("__{chosen}/8080")));
    // Affinity elements are written by packets: the tamper check does not count them.
    assert_eq!(e.check_table().unwrap(), None);
}

#[test]
fn ipv6_and_dual_stack_service() {
    if !prerequisites("ipv6_and_dual_stack_service") {
        return;
    }
    let lab = Lab::new(8);
    let mut e = engine(&lab);
    e.upsert_service(web(
        json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
        "ipFamilies": ["IPv4", "IPv6"], "type": "NodePort",
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    ));
    e.upsert_slice(ready_slice(
        "web-v4",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a")],
    ));
    e.upsert_slice(ready_slice(
        "web-v6",
        "web",
        "IPv6",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip6("pb"), "node-a")],
    ));
    e.sync().unwrap();
    let v6 = tcp_ask(
        &lab.ns("client"),
        sa("fd00:96::10".parse().unwrap(), 80),
        SHORT,
    )
    .unwrap();
    assert_eq!((v6.pod.as_str(), v6.peer), ("pb", lab.ip6("bridge")));
    let v4 = tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT).unwrap();
    assert_eq!(v4.pod, "pa");
    // NodePort on the node's IPv6 address reaches the IPv6 endpoint.
    let np = tcp_ask(&lab.ns("client"), sa(lab.ip6("node"), 30080), SHORT).unwrap();
    assert_eq!(np.pod, "pb");
    // IPv6 pod to IPv6 cluster IP keeps its source.
    let from_pod = tcp_ask(&lab.ns("pa"), sa("fd00:96::10".parse().unwrap(), 80), SHORT).unwrap();
    assert_eq!(
        (from_pod.pod.as_str(), from_pod.peer),
        ("pb", lab.ip6("pa"))
    );
}

#[test]
fn incremental_updates_and_stale_chain_deletion() {
    if !prerequisites("incremental_updates_and_stale_chain_deletion") {
        return;
    }
    let lab = Lab::new(9);
    let mut e = engine(&lab);
    e.upsert_service(web(json!({})));
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a")],
    ));
    e.sync().unwrap();
    assert_eq!(
        tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT)
            .unwrap()
            .pod,
        "pa"
    );

    // Swap the endpoint: one incremental transaction.
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pb"), "node-a")],
    ));
    let r = e.sync().unwrap();
    assert_eq!(r.kind, SyncKind::Incremental);
    assert!(r.script_lines < 12, "{r:?}");
    for _ in 0..5 {
        assert_eq!(
            tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT)
                .unwrap()
                .pod,
            "pb"
        );
    }
    let old_chain = format!("__{}/8080", lab.ip4("pa"));
    assert!(
        lab.nft(&["list", "chains", "inet"]).contains(&old_chain),
        "flushed, not yet deleted"
    );
    assert_eq!(
        e.check_table().unwrap(),
        None,
        "a flushed stale chain is expected"
    );
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(e.delete_stale_chains().unwrap(), 1);
    assert!(!lab.nft(&["list", "chains", "inet"]).contains(&old_chain));
    assert_eq!(e.check_table().unwrap(), None);

    // The Service goes away: its address is no longer caught.
    e.remove_service("default", "web");
    assert_eq!(e.sync().unwrap().kind, SyncKind::Incremental);
    assert!(!lab
        .nft(&["list", "map", "inet", "kinit-proxy", "service-ips-v4"])
        .contains("10.96.0.10"));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(e.delete_stale_chains().unwrap(), 2);
    assert_eq!(e.check_table().unwrap(), None);
}

#[test]
fn tampering_is_detected_and_repaired() {
    if !prerequisites("tampering_is_detected_and_repaired") {
        return;
    }
    let lab = Lab::new(10);
    let mut e = engine(&lab);
    e.upsert_service(web(json!({})));
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a")],
    ));
    e.sync().unwrap();
    let works = || tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT).map(|a| a.pod);
    assert_eq!(works().unwrap(), "pa");

    // Someone deletes the table.
    lab.nft(&["delete", "table", "inet", "kinit-proxy"]);
    assert!(works().is_err());
    let why = e.check_table().unwrap().expect("tamper detected");
    assert!(why.contains("missing"), "{why}");
    assert_eq!(e.sync().unwrap().kind, SyncKind::Full);
    assert_eq!(works().unwrap(), "pa");

    // Someone flushes the service chain.
    let chains = lab.nft(&["list", "chains", "inet"]);
    let chain = chains
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .map(|c| c.trim_end_matches('{').trim().to_string())
        .find(|c| c.starts_with("service-"))
        .expect("a service chain");
    lab.nft(&["flush", "chain", "inet", "kinit-proxy", &chain]);
    let why = e.check_table().unwrap().expect("tamper detected");
    assert!(why.contains(&chain), "{why}");
    assert_eq!(e.sync().unwrap().kind, SyncKind::Full);
    assert_eq!(works().unwrap(), "pa");

    // Someone deletes a map element.
    lab.nft(&[
        "delete",
        "element",
        "inet",
        "kinit-proxy",
        "service-ips-v4",
        "{ 10.96.0.10 . tcp . 80 }",
    ]);
    assert!(e
        .check_table()
        .unwrap()
        .expect("tamper detected")
        .contains("service-ips-v4"));
    e.sync().unwrap();
    assert_eq!(works().unwrap(), "pa");
    assert_eq!(e.check_table().unwrap(), None);
}

#[test]
fn every_feature_is_accepted_by_the_real_nft() {
    if !prerequisites("every_feature_is_accepted_by_the_real_nft") {
        return;
    }
    let lab = Lab::new(11);
    // Several pod CIDRs and source ranges: nft lists such sets merged and sorted (adjacent
    // 192.0.5.0/24 and 192.0.6.0/24 as one range), and the tamper check must still match.
    let mut config = lab.config();
    config.cluster_cidrs.push("10.250.0.0/16".parse().unwrap());
    let mut e = Engine::new(&config).unwrap();
    let mut lb = web(
        json!({"type": "LoadBalancer", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
        "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
        "sessionAffinity": "ClientIP", "externalIPs": ["192.0.2.10", "2001:db8::10"],
        "loadBalancerSourceRanges": ["192.0.6.0/24", "192.0.2.0/24", "192.0.5.0/24",
                                     "2001:db8::/32", "2001:db8:1::/48"],
        "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                  {"name": "sig", "port": 3868, "protocol": "SCTP", "nodePort": 30868},
                  {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}),
    );
    lb.status = serde_json::from_value(
        json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.10"}, {"ip": "2001:db8:1::10"}]}}),
    )
    .unwrap();
    e.upsert_service(lb);
    let ports = [
        ("http", TCP_PORT, "TCP"),
        ("sig", 3868, "SCTP"),
        ("dns", UDP_PORT, "UDP"),
    ];
    e.upsert_slice(ready_slice(
        "web-v4",
        "web",
        "IPv4",
        &ports,
        &[(lab.ip4("pa"), "node-a"), (lab.ip4("pb"), "node-b")],
    ));
    e.upsert_slice(ready_slice(
        "web-v6",
        "web",
        "IPv6",
        &ports,
        &[(lab.ip6("pa"), "node-a"), (lab.ip6("pb"), "node-b")],
    ));
    // A Service without endpoints, one with a terminating endpoint only.
    let mut empty = web(json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"]}));
    empty.metadata.name = Some("empty".into());
    e.upsert_service(empty);
    e.sync().unwrap();
    assert_eq!(e.check_table().unwrap(), None);
    // Incremental changes of every kind go through too.
    e.upsert_slice(ready_slice(
        "web-v4",
        "web",
        "IPv4",
        &ports,
        &[(lab.ip4("pb"), "node-b")],
    ));
    assert_eq!(e.sync().unwrap().kind, SyncKind::Incremental);
    assert_eq!(e.check_table().unwrap(), None);
    e.remove_slice("default", "web-v6");
    assert_eq!(e.sync().unwrap().kind, SyncKind::Incremental);
    assert_eq!(e.check_table().unwrap(), None);
    // The LB address from an allowed source range works from a pod... the pod (10.254.x)
    // is outside the allowed ranges, so the firewall drops it.
    let err = tcp_ask(
        &lab.ns("pa"),
        sa("198.51.100.10".parse().unwrap(), 80),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{err:?}"
    );
    assert!(kinit_proxy::delete_table(&lab.config().nft, "kinit-proxy").unwrap());
    assert!(!kinit_proxy::delete_table(&lab.config().nft, "kinit-proxy").unwrap());
}

/// The session-affinity sets of the table and the client addresses they hold.
fn affinity_members(lab: &Lab) -> std::collections::BTreeMap<String, Vec<String>> {
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nft(&["-j", "list", "table", "inet", "kinit-proxy"])).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for item in listing["nftables"].as_array().unwrap() {
        let Some(set) = item.get("set") else { continue };
        let name = set["name"].as_str().unwrap();
        if !name.starts_with("affinity-") {
            continue;
        }
        let members = set
            .get("elem")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
            .map(|e| {
                e.pointer("/elem/val")
                    .unwrap_or(e)
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        out.insert(name.to_string(), members);
    }
    out
}

/// The name of the first chain starting with `prefix` and containing `part`.
fn chain_named(lab: &Lab, prefix: &str, part: &str) -> String {
    lab.nft(&["list", "chains", "inet"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .map(|c| c.trim_end_matches('{').trim().to_string())
        .find(|c| c.starts_with(prefix) && c.contains(part))
        .unwrap_or_else(|| panic!("no chain {prefix}*{part}*"))
}

#[test]
fn session_affinity_survives_full_resyncs_and_tamper_repairs() {
    if !prerequisites("session_affinity_survives_full_resyncs_and_tamper_repairs") {
        return;
    }
    let lab = Lab::new(12);
    let mut e = engine(&lab);
    let sticky = web(json!({"sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 300}}}));
    e.upsert_service(sticky);
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a"), (lab.ip4("pb"), "node-a")],
    ));
    assert_eq!(e.sync().unwrap().kind, SyncKind::Full);
    let ask = || {
        tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT)
            .unwrap()
            .pod
    };
    let first = ask();
    let chosen_ip = lab.ip4(&first);
    let client = lab.ip4("client").to_string();
    let holds_client = |lab: &Lab| {
        let sets = affinity_members(lab);
        assert_eq!(sets.len(), 2, "{sets:?}");
        sets.iter().any(|(name, members)| {
            name.contains(&format!("__{chosen_ip}/")) && members.contains(&client)
        })
    };
    assert!(holds_client(&lab));

    // A full resync (hourly, or after a failed transaction) keeps the affinity state: the
    // sets still hold the client before it connects again.
    e.request_full_resync();
    let r = e.sync().unwrap();
    assert_eq!((r.kind, r.table_recreated), (SyncKind::Full, false));
    assert!(holds_client(&lab), "{:?}", affinity_members(&lab));
    for _ in 0..10 {
        assert_eq!(ask(), first);
    }
    assert_eq!(e.check_table().unwrap(), None);

    // The same for the full resync that repairs a tampered table.
    let service_chain = chain_named(&lab, "service-", "default/web/");
    lab.nft(&["flush", "chain", "inet", "kinit-proxy", &service_chain]);
    assert!(e.check_table().unwrap().is_some());
    assert_eq!(e.sync().unwrap().kind, SyncKind::Full);
    assert!(holds_client(&lab), "{:?}", affinity_members(&lab));
    for _ in 0..10 {
        assert_eq!(ask(), first);
    }
    assert_eq!(e.check_table().unwrap(), None);

    // Affinity switched off while a full resync is due: the sets go with it.
    e.upsert_service(web(json!({})));
    e.request_full_resync();
    assert_eq!(e.sync().unwrap().kind, SyncKind::Full);
    assert!(affinity_members(&lab).is_empty());
    assert_eq!(e.check_table().unwrap(), None);
    assert!(!ask().is_empty());
}

#[test]
fn rules_and_elements_changed_in_place_are_repaired() {
    if !prerequisites("rules_and_elements_changed_in_place_are_repaired") {
        return;
    }
    let lab = Lab::new(13);
    let mut e = engine(&lab);
    e.upsert_service(web(json!({})));
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a")],
    ));
    e.sync().unwrap();
    let ask = || tcp_ask(&lab.ns("client"), sa(cluster_ip(), 80), SHORT).map(|a| a.pod);
    assert_eq!(ask().unwrap(), "pa");

    // Someone rewrites the endpoint's DNAT rule to send traffic elsewhere: the chain keeps
    // its number of rules.
    let chain = chain_named(&lab, "endpoint-", &format!("__{}/8080", lab.ip4("pa")));
    let listing = lab.nft(&["-a", "list", "chain", "inet", "kinit-proxy", &chain]);
    let handle = listing
        .lines()
        .find(|l| l.contains("dnat ip to"))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_string())
        .expect("the DNAT rule's handle");
    let rogue = format!("meta l4proto tcp dnat ip to {}:8080", lab.ip4("pb"));
    let mut args = vec![
        "replace",
        "rule",
        "inet",
        "kinit-proxy",
        &chain,
        "handle",
        &handle,
    ];
    args.extend(rogue.split(' '));
    lab.nft(&args);
    assert_eq!(ask().unwrap(), "pb", "the edit took effect");
    let why = e.check_table().unwrap().expect("tamper detected");
    assert!(why.contains(&chain) && why.contains("rule 2"), "{why}");
    assert_eq!(e.sync().unwrap().kind, SyncKind::Full);
    assert_eq!(ask().unwrap(), "pa");
    assert_eq!(e.check_table().unwrap(), None);

    // Someone deletes a rule of a shared chain and adds a different one: same count.
    lab.nft(&[
        "flush",
        "chain",
        "inet",
        "kinit-proxy",
        "mark-for-masquerade",
    ]);
    lab.nft(&[
        "add",
        "rule",
        "inet",
        "kinit-proxy",
        "mark-for-masquerade",
        "meta",
        "mark",
        "set",
        "meta",
        "mark",
        "or",
        "0x8000",
    ]);
    let why = e.check_table().unwrap().expect("tamper detected");
    assert!(why.contains("mark-for-masquerade"), "{why}");
    e.sync().unwrap();
    assert_eq!(e.check_table().unwrap(), None);

    // Someone points the cluster IP at the reject chain: the map keeps its element count.
    lab.nft(&[
        "delete",
        "element",
        "inet",
        "kinit-proxy",
        "service-ips-v4",
        "{ 10.96.0.10 . tcp . 80 }",
    ]);
    lab.nft(&[
        "add",
        "element",
        "inet",
        "kinit-proxy",
        "service-ips-v4",
        "{ 10.96.0.10 . tcp . 80 : goto reject-chain }",
    ]);
    assert!(ask().is_err());
    let why = e.check_table().unwrap().expect("tamper detected");
    assert!(why.contains("service-ips-v4"), "{why}");
    e.sync().unwrap();
    assert_eq!(ask().unwrap(), "pa");
    assert_eq!(e.check_table().unwrap(), None);

    // Objects added and redeclared behind the proxy's back: a full resync rebuilds the
    // table in place without them.
    let t = "kinit-proxy";
    lab.nft(&["add", "chain", "inet", t, "intruder"]);
    lab.nft(&["add", "rule", "inet", t, "intruder", "drop"]);
    lab.nft(&["add", "rule", "inet", t, "services", "jump", "intruder"]);
    lab.nft(&[
        "add",
        "chain",
        "inet",
        t,
        "intruder-base",
        "{ type filter hook forward priority 0; policy drop; }",
    ]);
    lab.nft(&[
        "add",
        "set",
        "inet",
        t,
        "intruder-set",
        "{ type ipv4_addr; }",
    ]);
    lab.nft(&["chain", "inet", t, "filter-input", "{ policy drop; }"]);
    lab.nft(&["flush", "chain", "inet", t, "nat-postrouting"]);
    lab.nft(&["delete", "chain", "inet", t, "nat-postrouting"]);
    lab.nft(&[
        "add",
        "chain",
        "inet",
        t,
        "nat-postrouting",
        "{ type nat hook postrouting priority 50; policy accept; }",
    ]);
    assert!(ask().is_err());
    let why = e.check_table().unwrap().expect("tamper detected");
    assert!(why.contains("unexpected chain intruder"), "{why}");
    let r = e.sync().unwrap();
    assert_eq!((r.kind, r.table_recreated), (SyncKind::Full, false));
    assert_eq!(ask().unwrap(), "pa");
    assert_eq!(
        e.check_table().unwrap(),
        None,
        "the flushed intruder awaits deletion"
    );
    let listing = lab.nft(&["list", "table", "inet", t]);
    assert!(
        !listing.contains("intruder-base") && !listing.contains("intruder-set"),
        "{listing}"
    );
    assert!(
        listing.contains("type nat hook postrouting priority srcnat; policy accept;"),
        "{listing}"
    );
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(e.delete_stale_chains().unwrap(), 1);
    assert!(!lab.nft(&["list", "table", "inet", t]).contains("intruder"));
    assert_eq!(e.check_table().unwrap(), None);
}

#[test]
fn a_rule_difference_that_survives_its_repair_is_accepted() {
    if !prerequisites("a_rule_difference_that_survives_its_repair_is_accepted") {
        return;
    }
    let lab = Lab::new(14);
    let mut e = engine(&lab);
    e.upsert_service(web(json!({})));
    e.upsert_slice(ready_slice(
        "web-1",
        "web",
        "IPv4",
        &[("http", TCP_PORT, "TCP")],
        &[(lab.ip4("pa"), "node-a")],
    ));
    e.sync().unwrap();
    // Another program keeps putting a counter into the masquerade marking rule: the first
    // time it is repaired, when it is back right after the repair it is accepted (rewriting
    // again cannot remove it).
    let edit = |lab: &Lab| {
        lab.nft(&[
            "flush",
            "chain",
            "inet",
            "kinit-proxy",
            "mark-for-masquerade",
        ]);
        lab.nft(&[
            "add",
            "rule",
            "inet",
            "kinit-proxy",
            "mark-for-masquerade",
            "counter",
            "meta",
            "mark",
            "set",
            "meta",
            "mark",
            "or",
            "0x4000",
        ]);
    };
    edit(&lab);
    assert!(e.check_table().unwrap().is_some());
    assert_eq!(e.sync().unwrap().kind, SyncKind::Full);
    edit(&lab);
    assert_eq!(e.check_table().unwrap(), None);
    assert!(!e.needs_full_resync());
    assert_eq!(e.check_table().unwrap(), None);
    // Any other change is still repaired.
    lab.nft(&["flush", "chain", "inet", "kinit-proxy", "masquerading"]);
    assert!(e.check_table().unwrap().is_some());
    e.sync().unwrap();
    assert_eq!(e.check_table().unwrap(), None);
}
