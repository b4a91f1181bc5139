//! The cross-node pod network and hostPort on the real kernel, in private network namespaces
//! only (see `support/lab.rs`): two nodes, pods attached by the real plugin executable, the
//! node side synced by `NodeNetwork` inside each node's namespace, and real TCP/UDP traffic
//! as the proof.
//!
//! Needs root, iproute2 and nftables. Without them each test prints a SKIPPED line, unless
//! `KINIT_E2E=1`, where it fails.

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use kinit_cni::error::CniError;
use kinit_cni::network::{
    decide, Backend, CniMode, NetworkState, Peer, POLICY_ROUTE_TABLE, POLICY_RULE_PRIORITY,
    ROUTE_PROTOCOL, VXLAN_DEVICE,
};
use serde_json::{json, Value};
use support::lab::{
    in_netns, ip_json, listen, missing_prerequisite, request, serve_once, sh, tcp_exchange, Lab,
    Pod, Underlay,
};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kinit-cni");

/// `true` when the test may run; prints SKIPPED (or fails under KINIT_E2E=1) otherwise.
fn prerequisites(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) if std::env::var("KINIT_E2E").as_deref() == Ok("1") => {
            panic!("{test}: {why} (KINIT_E2E=1 requires it)")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn routes_proto(ns: &str) -> Vec<Value> {
    ip_json(ns, &["route", "show", "proto", &ROUTE_PROTOCOL.to_string()])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The IPv4 policy rules at kinit's priority.
fn policy_rules(ns: &str) -> Vec<Value> {
    ip_json(
        ns,
        &["rule", "show", "pref", &POLICY_RULE_PRIORITY.to_string()],
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
}

/// The IPv4 routes of kinit's policy table (none when the table does not exist).
fn policy_routes(ns: &str) -> Vec<Value> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-n", ns, "route", "show", "table"])
        .arg(POLICY_ROUTE_TABLE.to_string())
        .output()
        .expect("run ip");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("table does not exist") {
        return Vec::new();
    }
    assert!(out.status.success(), "ip route show table: {stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A UDP exchange from `from_ip` (bound to it, as a node service bound to the node address
/// is) in `from_ns` to port `port` of `to_ip` in `to_ns`; returns the source the receiver
/// saw once the reply came back.
fn udp_exchange_from(
    from_ns: &str,
    from_ip: IpAddr,
    to_ns: &str,
    to_ip: IpAddr,
    port: u16,
) -> Result<IpAddr, String> {
    let echo = udp_echo(to_ns, port);
    let reply = in_netns(from_ns, move || {
        let s = UdpSocket::bind(SocketAddr::new(from_ip, 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.send_to(b"hello", SocketAddr::new(to_ip, port))
            .map_err(|e| format!("send to {to_ip}: {e}"))?;
        let mut buf = [0u8; 16];
        s.recv_from(&mut buf)
            .map(|(n, _)| buf[..n].to_vec())
            .map_err(|e| format!("no reply from {to_ip}: {e}"))
    });
    let seen = echo
        .join()
        .map_err(|_| "echo thread panicked".to_string())?;
    let reply = reply?;
    if reply != b"hello" {
        return Err(format!("{to_ip} answered {reply:?}"));
    }
    seen.map(|a| a.ip())
        .ok_or_else(|| format!("{to_ip} received nothing"))
}

fn mtu_of(ns: &str, dev: &str) -> u64 {
    ip_json(ns, &["link", "show", "dev", dev])[0]["mtu"]
        .as_u64()
        .unwrap_or_else(|| panic!("no mtu for {dev} in {ns}"))
}

fn node_set(ns: &str) -> Vec<String> {
    let text = sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "-j",
        "list",
        "set",
        "inet",
        "kinit_cni_kinit",
        "node_ips",
    ]);
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut out: Vec<String> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("set"))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

fn state(lab: &Lab, i: usize) -> NetworkState {
    NetworkState::read(&lab.node(i).state_file)
        .unwrap()
        .expect("the state file exists after a sync")
}

fn assert_no_nat(from: &Pod, to_ns: &str, to_ip: IpAddr) {
    let seen = tcp_exchange(&from.ns, to_ns, to_ip)
        .unwrap_or_else(|e| panic!("{} -> {to_ip}: {e}", from.ip));
    assert_eq!(
        seen, from.ip,
        "{} -> {to_ip} must keep the pod's address",
        from.ip
    );
}

#[test]
fn host_gw_routes_pods_across_nodes_without_nat() {
    if !prerequisites("host_gw_routes_pods_across_nodes_without_nat") {
        return;
    }
    let mut lab = Lab::new("kcnn1", PLUGIN.as_ref(), Underlay::OneSubnet, 1500);
    let peers = lab.peers(Backend::HostGw);
    for i in 1..=2 {
        assert_eq!(
            decide(CniMode::Auto, &lab.facts(lab.node(i)), &peers),
            Backend::HostGw,
            "nodes on one subnet pick host-gw"
        );
    }
    let reports = lab.sync_all(Backend::HostGw);
    assert_eq!(
        reports[0].routes_added,
        ["10.244.2.0/24 via 10.89.0.2 dev eth0"]
    );
    assert_eq!(
        reports[1].routes_added,
        ["10.244.1.0/24 via 10.89.0.1 dev eth0"]
    );
    let routes = routes_proto(&lab.node(1).ns);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["dst"], "10.244.2.0/24");
    assert_eq!(routes[0]["gateway"], "10.89.0.2");
    assert_eq!(routes[0]["dev"], "eth0");
    assert_eq!(
        state(&lab, 1),
        NetworkState {
            backend: Backend::HostGw,
            mtu: 1500
        }
    );
    assert!(ip_json(&lab.node(1).ns, &["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] != VXLAN_DEVICE));

    let p1 = lab.add_pod(1, "a", None);
    let p2 = lab.add_pod(2, "b", None);
    assert_no_nat(&p1, &p2.ns, p2.ip);
    assert_no_nat(&p2, &p1.ns, p1.ip);
    // Pod -> other node keeps the pod address: the node addresses are excluded from
    // masquerading, unlike the rest of the world.
    assert_eq!(node_set(&lab.node(1).ns), ["10.89.0.1", "10.89.0.2"]);
    let n2 = lab.node(2).clone();
    assert_no_nat(&p1, &n2.ns, n2.ip);
    // A later ADD re-checks the masquerade table but keeps the set's elements.
    let p3 = lab.add_pod(1, "c", None);
    assert_eq!(node_set(&lab.node(1).ns), ["10.89.0.1", "10.89.0.2"]);
    assert_no_nat(&p3, &n2.ns, n2.ip);

    // A second sync finds nothing to do.
    for r in lab.sync_all(Backend::HostGw) {
        assert!(!r.changed(), "second sync changed something: {r:?}");
    }

    // node2 leaves: node1 drops its route and its address from the set.
    let only_node1: Vec<Peer> = lab.peers(Backend::HostGw)[..1].to_vec();
    let r = lab.sync(lab.node(1), Backend::HostGw, &only_node1).unwrap();
    assert_eq!(r.routes_removed, ["10.244.2.0/24 via 10.89.0.2 dev eth0"]);
    assert!(r.node_addresses_changed);
    assert!(routes_proto(&lab.node(1).ns).is_empty());
    assert_eq!(node_set(&lab.node(1).ns), ["10.89.0.1"]);
    assert!(
        tcp_exchange(&p1.ns, &p2.ns, p2.ip).is_err(),
        "no route, no traffic"
    );
}

#[test]
fn vxlan_routes_pods_across_routed_subnets() {
    if !prerequisites("vxlan_routes_pods_across_routed_subnets") {
        return;
    }
    let mut lab = Lab::new("kcnn2", PLUGIN.as_ref(), Underlay::TwoSubnets, 1480);
    // Strict reverse-path filtering on the nodes' uplinks and in the underlay: a packet with
    // a pod's source address arriving over the underlay is dropped, as cloud networks do.
    lab.strict_rp_filter();
    let peers = lab.peers(Backend::Vxlan);
    for i in 1..=2 {
        assert_eq!(
            decide(CniMode::Auto, &lab.facts(lab.node(i)), &peers),
            Backend::Vxlan,
            "nodes on different subnets pick vxlan"
        );
    }
    // host-gw cannot work here: the peer is refused by name.
    match lab.sync(lab.node(1), Backend::HostGw, &peers) {
        Err(e @ CniError::NotOnLink { .. }) => {
            let text = e.to_string();
            assert!(text.contains("node2 (10.89.2.12)"), "{text}");
        }
        other => panic!("host-gw across subnets must be refused, got {other:?}"),
    }
    assert!(routes_proto(&lab.node(1).ns).is_empty());

    let reports = lab.sync_all(Backend::Vxlan);
    let mac = |i: usize| {
        lab.facts(lab.node(i)).annotations(Backend::Vxlan)["network.kinit.io/vtep-mac"].clone()
    };
    let (mac1, mac2) = (mac(1), mac(2));
    assert!(
        reports[0]
            .device
            .iter()
            .any(|d| d.starts_with("created kinit.1")),
        "{:?}",
        reports[0]
    );
    assert_eq!(
        reports[0].routes_added,
        [
            format!("10.89.2.12/32 via 10.244.2.0 dev kinit.1 onlink table {POLICY_ROUTE_TABLE}"),
            "10.244.2.0/24 via 10.244.2.0 dev kinit.1 onlink".to_string()
        ]
    );
    assert_eq!(
        reports[0].rules_added,
        [format!(
            "from 10.244.1.0/24 lookup {POLICY_ROUTE_TABLE} pref {POLICY_RULE_PRIORITY}"
        )]
    );
    assert_eq!(
        reports[0].neighbours_added,
        [format!("10.244.2.0 lladdr {mac2} dev kinit.1")]
    );
    assert_eq!(
        reports[0].fdb_added,
        [format!("{mac2} dst 10.89.2.12 dev kinit.1")]
    );
    assert_eq!(reports[0].pod_mtu, 1430);
    assert_eq!(
        state(&lab, 1),
        NetworkState {
            backend: Backend::Vxlan,
            mtu: 1430
        }
    );

    // The device, as the kernel has it.
    let n1 = lab.node(1).ns.clone();
    let dev = &ip_json(&n1, &["-d", "link", "show", "dev", VXLAN_DEVICE])[0];
    assert_eq!(dev["mtu"], 1430);
    assert_eq!(dev["address"], mac1);
    let info = &dev["linkinfo"]["info_data"];
    assert_eq!(info["id"], 1);
    assert_eq!(info["port"], 8472);
    assert_eq!(info["local"], "10.89.1.11");
    assert_eq!(info["learning"], false);
    assert_eq!(dev["linkinfo"]["info_kind"], "vxlan");
    let addrs = &ip_json(&n1, &["addr", "show", "dev", VXLAN_DEVICE])[0]["addr_info"];
    assert!(addrs
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == "10.244.1.0" && a["prefixlen"] == 32));
    let neigh = ip_json(&n1, &["neigh", "show", "dev", VXLAN_DEVICE]);
    assert_eq!(neigh[0]["dst"], "10.244.2.0");
    assert_eq!(neigh[0]["lladdr"], mac2);
    assert!(neigh[0]["state"]
        .as_array()
        .unwrap()
        .contains(&json!("PERMANENT")));
    let fdb: Value = serde_json::from_str(&sh(&[
        "bridge",
        "-j",
        "-n",
        &n1,
        "fdb",
        "show",
        "dev",
        VXLAN_DEVICE,
    ]))
    .unwrap();
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|f| f["mac"] == mac2 && f["dst"] == "10.89.2.12" && f["state"] == "permanent"),
        "{fdb}"
    );
    let route = &routes_proto(&n1)[0];
    assert_eq!(route["dev"], VXLAN_DEVICE);
    assert!(route["flags"]
        .as_array()
        .unwrap()
        .contains(&json!("onlink")));
    // Policy routing: traffic from the own pod range to the peer's node address takes the
    // overlay.
    let rules = policy_rules(&n1);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["src"], "10.244.1.0");
    assert_eq!(rules[0]["srclen"], 24);
    assert_eq!(rules[0]["table"], POLICY_ROUTE_TABLE.to_string());
    let table = policy_routes(&n1);
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(table[0]["dst"], "10.89.2.12");
    assert_eq!(table[0]["gateway"], "10.244.2.0");
    assert_eq!(table[0]["dev"], VXLAN_DEVICE);
    assert_eq!(table[0]["protocol"], ROUTE_PROTOCOL.to_string());

    // New pods take the overlay's MTU: pod end, host end, bridge.
    let p1 = lab.add_pod(1, "a", None);
    let p2 = lab.add_pod(2, "b", None);
    assert_eq!(mtu_of(&p1.ns, "eth0"), 1430);
    let host_veth = p1.result["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(mtu_of(&n1, &host_veth), 1430);
    assert_eq!(mtu_of(&n1, "cni0"), 1430);

    assert_no_nat(&p1, &p2.ns, p2.ip);
    assert_no_nat(&p2, &p1.ns, p1.ip);
    // Pod -> other node keeps the pod address and, despite strict rp_filter, gets through:
    // it takes the overlay, as the node's reply does.
    let n2 = lab.node(2).clone();
    let node1 = lab.node(1).clone();
    assert_no_nat(&p1, &n2.ns, n2.ip);
    assert_no_nat(&p2, &node1.ns, node1.ip);
    // The node itself reaches a remote pod through the overlay (from kinit.1's address).
    let seen = tcp_exchange(&n1, &p2.ns, p2.ip).unwrap();
    assert_eq!(seen, "10.244.1.0".parse::<IpAddr>().unwrap());
    // A remote node's service bound to its node address reaches a pod, and the pod's reply
    // (to the node address, from the pod address) goes back through the overlay.
    let seen = udp_exchange_from(&n2.ns, n2.ip, &p1.ns, p1.ip, 5454).unwrap();
    assert_eq!(seen, n2.ip, "the pod sees the remote node's address");
    // The tunnel itself still runs over the underlay from the node address (not through
    // the policy table): it is what carried all of the above.
    // A full-size segment crosses the overlay (the pod MTU leaves room for the header).
    let listener = listen(&p2.ns, p2.ip, 0);
    let port = listener.local_addr().unwrap().port();
    let big = std::thread::spawn(move || {
        use std::io::Read;
        let (mut s, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all.len()
    });
    in_netns(&p1.ns, move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect_timeout(
            &SocketAddr::new(p2.ip, port),
            Duration::from_secs(3),
        )
        .unwrap();
        s.write_all(&vec![7u8; 1 << 20]).unwrap();
    });
    assert_eq!(big.join().unwrap(), 1 << 20);

    for r in lab.sync_all(Backend::Vxlan) {
        assert!(!r.changed(), "second sync changed something: {r:?}");
    }
    // Foreign rules at kinit's priority and table (one without a source, one with another
    // selector) are removed; kinit's own rule stays.
    let pref = POLICY_RULE_PRIORITY.to_string();
    let table = POLICY_ROUTE_TABLE.to_string();
    sh(&[
        "ip", "-n", &n1, "rule", "add", "pref", &pref, "table", &table,
    ]);
    sh(&[
        "ip",
        "-n",
        &n1,
        "rule",
        "add",
        "from",
        "10.244.1.0/24",
        "iif",
        "eth0",
        "pref",
        &pref,
        "table",
        &table,
    ]);
    assert_eq!(policy_rules(&n1).len(), 3);
    let r = lab.sync(lab.node(1), Backend::Vxlan, &peers).unwrap();
    assert_eq!(r.rules_removed.len(), 3, "all three go: {r:?}");
    assert_eq!(r.rules_added.len(), 1, "kinit's own comes back: {r:?}");
    let rules = policy_rules(&n1);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["src"], "10.244.1.0");
    assert!(rules[0].get("iif").is_none(), "{rules:?}");

    // node2 leaves: its route, neighbour and FDB entry go; the device stays.
    let only_node1: Vec<Peer> = peers[..1].to_vec();
    let r = lab.sync(lab.node(1), Backend::Vxlan, &only_node1).unwrap();
    assert_eq!(
        r.routes_removed.len(),
        2,
        "pod range and node address: {r:?}"
    );
    assert_eq!(r.neighbours_removed.len(), 1, "{r:?}");
    assert_eq!(r.fdb_removed.len(), 1, "{r:?}");
    assert!(
        r.rules_removed.is_empty(),
        "the rule does not depend on peers: {r:?}"
    );
    assert!(routes_proto(&n1).is_empty());
    assert!(policy_routes(&n1).is_empty());
    assert!(ip_json(&n1, &["neigh", "show", "dev", VXLAN_DEVICE])
        .as_array()
        .unwrap()
        .is_empty());
    let fdb: Value = serde_json::from_str(&sh(&[
        "bridge",
        "-j",
        "-n",
        &n1,
        "fdb",
        "show",
        "dev",
        VXLAN_DEVICE,
    ]))
    .unwrap();
    assert!(
        fdb.as_array().unwrap().iter().all(|f| f["mac"] != mac2),
        "{fdb}"
    );
    // And comes back.
    let r = lab.sync(lab.node(1), Backend::Vxlan, &peers).unwrap();
    assert_eq!(r.routes_added.len(), 2, "{r:?}");
    assert!(r.device.is_empty(), "{r:?}");
    assert_eq!(policy_routes(&n1).len(), 1);
    assert_no_nat(&p1, &n2.ns, n2.ip);
}

#[test]
fn backend_switch_and_restart_after_reboot() {
    if !prerequisites("backend_switch_and_restart_after_reboot") {
        return;
    }
    let mut lab = Lab::new("kcnn3", PLUGIN.as_ref(), Underlay::OneSubnet, 1500);
    lab.sync_all(Backend::HostGw);
    let p1 = lab.add_pod(1, "a", None);
    let p2 = lab.add_pod(2, "b", None);
    assert_no_nat(&p1, &p2.ns, p2.ip);
    let n1 = lab.node(1).ns.clone();

    // host-gw -> vxlan: the uplink route is replaced by the overlay route.
    let r = lab.sync_all(Backend::Vxlan);
    assert_eq!(
        r[0].routes_added,
        [
            format!("10.89.0.2/32 via 10.244.2.0 dev kinit.1 onlink table {POLICY_ROUTE_TABLE}"),
            "10.244.2.0/24 via 10.244.2.0 dev kinit.1 onlink".to_string()
        ]
    );
    assert_eq!(r[0].rules_added.len(), 1, "{:?}", r[0]);
    assert_eq!(
        r[0].routes_removed,
        ["10.244.2.0/24 via 10.89.0.2 dev eth0"]
    );
    let routes = routes_proto(&n1);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["dev"], VXLAN_DEVICE);
    assert_eq!(state(&lab, 1).mtu, 1450);
    assert_no_nat(&p1, &p2.ns, p2.ip);
    // A pod started now gets the overlay MTU, and the bridge follows.
    let p3 = lab.add_pod(1, "c", None);
    assert_eq!(mtu_of(&p3.ns, "eth0"), 1450);
    assert_eq!(mtu_of(&n1, "cni0"), 1450);

    // Reboot of node1: its device, routes and rules are gone; the agent's first sync
    // restores them with the same MAC, so node2 needs no update at all.
    sh(&["ip", "-n", &n1, "link", "del", VXLAN_DEVICE]);
    sh(&[
        "ip",
        "-n",
        &n1,
        "route",
        "flush",
        "proto",
        &ROUTE_PROTOCOL.to_string(),
    ]);
    let pref = POLICY_RULE_PRIORITY.to_string();
    let table = POLICY_ROUTE_TABLE.to_string();
    sh(&[
        "ip", "-n", &n1, "rule", "del", "pref", &pref, "table", &table,
    ]);
    assert!(policy_rules(&n1).is_empty() && policy_routes(&n1).is_empty());
    assert!(tcp_exchange(&p1.ns, &p2.ns, p2.ip).is_err());
    let peers = lab.peers(Backend::Vxlan);
    let r = lab.sync(lab.node(1), Backend::Vxlan, &peers).unwrap();
    assert!(r.device.iter().any(|d| d.starts_with("created")), "{r:?}");
    assert_eq!(r.routes_added.len(), 2, "{r:?}");
    assert_eq!(r.rules_added.len(), 1, "{r:?}");
    assert_no_nat(&p1, &p2.ns, p2.ip);
    assert_no_nat(&p2, &p1.ns, p1.ip);

    // vxlan -> host-gw: the device, its routes and the policy rule go, the uplink route is
    // back.
    let r = lab.sync_all(Backend::HostGw);
    assert_eq!(r[0].device, ["deleted kinit.1"]);
    assert_eq!(r[0].routes_added, ["10.244.2.0/24 via 10.89.0.2 dev eth0"]);
    assert_eq!(
        r[0].rules_removed,
        [format!(
            "from 10.244.1.0/24 lookup {POLICY_ROUTE_TABLE} pref {POLICY_RULE_PRIORITY}"
        )]
    );
    assert!(policy_rules(&n1).is_empty());
    assert!(policy_routes(&n1).is_empty());
    assert!(ip_json(&n1, &["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] != VXLAN_DEVICE));
    assert_eq!(routes_proto(&n1)[0]["dev"], "eth0");
    assert_eq!(state(&lab, 1).mtu, 1500);
    assert_no_nat(&p1, &p2.ns, p2.ip);
    for r in lab.sync_all(Backend::HostGw) {
        assert!(!r.changed(), "{r:?}");
    }
}

#[test]
fn add_waits_for_the_state_file_the_configuration_names() {
    if !prerequisites("add_waits_for_the_state_file_the_configuration_names") {
        return;
    }
    // A node's first boot: the plugin runs before the agent's first sync wrote the state
    // file. ADD waits for it instead of taking the uplink's MTU.
    let mut lab = Lab::new("kcnn5", PLUGIN.as_ref(), Underlay::OneSubnet, 1500);
    let state_file = lab.node(1).state_file.clone();
    assert!(!state_file.exists());
    let agent = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        NetworkState {
            backend: Backend::Vxlan,
            mtu: 1450,
        }
        .write(&state_file)
        .unwrap();
    });
    let started = std::time::Instant::now();
    let pod = lab.add_pod(1, "early", None);
    let took = started.elapsed();
    agent.join().unwrap();
    assert_eq!(mtu_of(&pod.ns, "eth0"), 1450, "the MTU from the state file");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(9),
        "ADD took {took:?}"
    );
    // Once the file is there, ADD does not wait.
    let started = std::time::Instant::now();
    let second = lab.add_pod(1, "second", None);
    assert_eq!(mtu_of(&second.ns, "eth0"), 1450);
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn hostport_table(ns: &str) -> String {
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "list",
        "table",
        "inet",
        "kinit-hostports",
    ])
}

/// A UDP echo inside `ns` on `port`; answers one datagram.
fn udp_echo(ns: &str, port: u16) -> std::thread::JoinHandle<Option<SocketAddr>> {
    let sock = in_netns(ns, move || UdpSocket::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut buf = [0u8; 16];
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        sock.send_to(&buf[..n], from).ok()?;
        Some(from)
    })
}

#[test]
fn host_ports_forward_from_everywhere_and_go_with_the_pod() {
    if !prerequisites("host_ports_forward_from_everywhere_and_go_with_the_pod") {
        return;
    }
    let mut lab = Lab::new("kcnn4", PLUGIN.as_ref(), Underlay::OneSubnet, 1500);
    lab.sync_all(Backend::HostGw);
    let node1 = lab.node(1).clone();
    let node2 = lab.node(2).clone();
    let mappings = json!({"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "10.89.0.1"},
    ]});
    let web = lab.add_pod(1, "web", Some(mappings.clone()));
    let gateway: IpAddr = "10.244.1.1".parse().unwrap();
    let to = |port: u16| SocketAddr::new(node1.ip, port);
    // One listener for all cases: re-binding the port right after a connection closed
    // races with the kernel's cleanup of that connection.
    let web80 = listen(&web.ns, "0.0.0.0".parse().unwrap(), 80);

    // From another host: the client's address is kept.
    let server = serve_once(web80.try_clone().unwrap(), Duration::from_secs(5));
    request(&node2.ns, to(8080)).unwrap();
    assert_eq!(server.join().unwrap().unwrap().ip(), node2.ip);
    // A pod on another node.
    let remote = lab.add_pod(2, "remote", None);
    let server = serve_once(web80.try_clone().unwrap(), Duration::from_secs(5));
    request(&remote.ns, to(8080)).unwrap();
    assert_eq!(server.join().unwrap().unwrap().ip(), remote.ip);
    // Hairpin: the pod reaches its own hostPort via the node address (masqueraded to the
    // bridge address, or it would see its own address as the source and drop the reply).
    let server = serve_once(web80.try_clone().unwrap(), Duration::from_secs(5));
    request(&web.ns, to(8080)).unwrap();
    assert_eq!(server.join().unwrap().unwrap().ip(), gateway);
    // Another pod of the same node.
    let neighbour = lab.add_pod(1, "neighbour", None);
    let server = serve_once(web80.try_clone().unwrap(), Duration::from_secs(5));
    request(&neighbour.ns, to(8080)).unwrap();
    assert_eq!(server.join().unwrap().unwrap().ip(), neighbour.ip);
    // The node itself, via its address and via localhost.
    let server = serve_once(web80.try_clone().unwrap(), Duration::from_secs(5));
    request(&node1.ns, to(8080)).unwrap();
    assert!(server.join().unwrap().is_some());
    let server = serve_once(web80.try_clone().unwrap(), Duration::from_secs(5));
    request(&node1.ns, "127.0.0.1:8080".parse().unwrap()).unwrap();
    assert_eq!(server.join().unwrap().unwrap().ip(), gateway);
    // A pod cannot use the bridge's route_localnet to reach the node's loopback services,
    // even when it routes 127.0.0.0/8 to the node itself.
    let lo_service = listen(&node1.ns, "127.0.0.1".parse().unwrap(), 0);
    let lo_port = lo_service.local_addr().unwrap().port();
    let intruder = lab.add_pod(1, "intruder", None);
    let ins = intruder.ns.clone();
    sh(&["ip", "-n", &ins, "addr", "del", "127.0.0.1/8", "dev", "lo"]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &ins,
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet",
    ]);
    sh(&[
        "ip",
        "-n",
        &ins,
        "route",
        "add",
        "127.0.0.0/8",
        "via",
        "10.244.1.1",
        "dev",
        "eth0",
    ]);
    let server = serve_once(lo_service, Duration::from_secs(2));
    let reached = request(&ins, SocketAddr::new("127.0.0.1".parse().unwrap(), lo_port));
    assert!(
        server.join().unwrap().is_none() && reached.is_err(),
        "a pod reached the node's loopback"
    );
    // UDP, and a mapping bound to one host address.
    let echo = udp_echo(&web.ns, 53);
    let reply = in_netns(&node2.ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(b"hello", to(5353)).unwrap();
        let mut buf = [0u8; 16];
        s.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec())
    });
    assert_eq!(reply.unwrap(), b"hello");
    assert_eq!(echo.join().unwrap().unwrap().ip(), node2.ip);
    let server = serve_once(
        listen(&web.ns, "0.0.0.0".parse().unwrap(), 443),
        Duration::from_secs(5),
    );
    request(&node2.ns, to(8443)).unwrap();
    assert!(server.join().unwrap().is_some());

    // CHECK passes as added, and notices tampering.
    let mut check = node1.conf();
    check["runtimeConfig"] = mappings.clone();
    check["prevResult"] = web.result.clone();
    let (out, ok) = lab.cni(&node1, "CHECK", &web.id, Some(&web.path()), &check);
    assert!(ok, "CHECK failed: {out}");
    let table = hostport_table(&node1.ns);
    let dnat_chain = table
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("chain ")
                .filter(|c| c.contains("-dnat"))
        })
        .map(|c| c.trim_end_matches(" {").to_string())
        .expect("a container dnat chain");
    sh(&[
        "ip",
        "netns",
        "exec",
        &node1.ns,
        "nft",
        "flush",
        "chain",
        "inet",
        "kinit-hostports",
        &dnat_chain,
    ]);
    let (out, ok) = lab.cni(&node1, "CHECK", &web.id, Some(&web.path()), &check);
    assert!(!ok);
    assert_eq!(out["code"], 101, "{out}");
    // A repeated ADD repairs it (and recreates the veth pair, so CHECK takes its result).
    let (again, ok) = lab.cni(&node1, "ADD", &web.id, Some(&web.path()), &{
        let mut c = node1.conf();
        c["runtimeConfig"] = mappings.clone();
        c
    });
    assert!(ok, "repeated ADD failed: {again}");
    assert_eq!(again["ips"], web.result["ips"]);
    check["prevResult"] = again;
    let (out, ok) = lab.cni(&node1, "CHECK", &web.id, Some(&web.path()), &check);
    assert!(ok, "CHECK after the repair failed: {out}");

    // DEL removes exactly this pod's mappings.
    let other = lab.add_pod(
        1,
        "other",
        Some(json!({"portMappings": [{"hostPort": 9090, "containerPort": 90}]})),
    );
    let mut del = node1.conf();
    del["runtimeConfig"] = mappings.clone();
    let (out, ok) = lab.cni(&node1, "DEL", &web.id, Some(&web.path()), &del);
    assert!(ok, "DEL failed: {out}");
    let err = request(&node2.ns, to(8080)).unwrap_err();
    assert!(err.contains("refused"), "{err}");
    let table = hostport_table(&node1.ns);
    assert!(!table.contains(&dnat_chain), "{table}");
    assert_eq!(table.matches("-dnat {").count(), 1, "{table}");
    let server = serve_once(
        listen(&other.ns, "0.0.0.0".parse().unwrap(), 90),
        Duration::from_secs(5),
    );
    request(&node2.ns, to(9090)).unwrap();
    assert!(server.join().unwrap().is_some());

    // GC keeps the listed attachments' mappings and drops the rest.
    let third = lab.add_pod(
        1,
        "third",
        Some(json!({"portMappings": [{"hostPort": 9191, "containerPort": 91}]})),
    );
    let mut gc = node1.conf();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": third.id, "ifname": "eth0"}]);
    let (out, ok) = lab.cni(&node1, "GC", "", None, &gc);
    assert!(ok, "GC failed: {out}");
    assert!(
        request(&node2.ns, to(9090)).is_err(),
        "GC left the unlisted pod's mapping"
    );
    let server = serve_once(
        listen(&third.ns, "0.0.0.0".parse().unwrap(), 91),
        Duration::from_secs(5),
    );
    request(&node2.ns, to(9191)).unwrap();
    assert!(server.join().unwrap().is_some());
}
