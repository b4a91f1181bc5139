//! Real ADD/CHECK/DEL runs as root: the `kinit-cni` executable is run the way containerd runs
//! it (CNI_* environment, config on stdin) against real network namespaces, and the result is
//! checked in the kernel (links, addresses, routes, bridge ports, nftables) and by TCP traffic
//! between two pods across the bridge.
//!
//! Every test uses its own bridge `kcnit<N>`, pod range `10.250.<N>.0/24`, namespaces
//! `kcnit<N>-*` and nft table `kinit_cni_kcnit<N>`; the fixture removes them all on drop,
//! also when the test fails.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_kinit-cni");

struct Net {
    n: u8,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    ip_masq: bool,
}

/// ADD with `isGateway` turns on IPv4 forwarding; the value from before the first fixture is
/// put back when the last live fixture drops (tests run in parallel).
static FORWARDING: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));
const FORWARDING_PATH: &str = "/proc/sys/net/ipv4/ip_forward";

impl Net {
    fn new(n: u8, ip_masq: bool) -> Net {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests create network namespaces and must run as root"
        );
        {
            let mut fwd = FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
            if fwd.0 == 0 {
                fwd.1 = std::fs::read_to_string(FORWARDING_PATH).ok();
            }
            fwd.0 += 1;
        }
        let net = Net {
            n,
            dir: tempfile::tempdir().unwrap(),
            namespaces: Vec::new(),
            ip_masq,
        };
        // Leftovers of an aborted earlier run.
        net.cleanup();
        net
    }

    fn name(&self) -> String {
        format!("kcnit{}", self.n)
    }

    fn subnet(&self) -> String {
        format!("10.250.{}.0/24", self.n)
    }

    fn ip(&self, host: u8) -> IpAddr {
        format!("10.250.{}.{host}", self.n).parse().unwrap()
    }

    fn netns(&mut self, suffix: &str) -> PathBuf {
        let name = format!("{}-{suffix}", self.name());
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        PathBuf::from(format!("/var/run/netns/{name}"))
    }

    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.name(),
            "type": "kinit-cni",
            "bridge": self.name(),
            "isGateway": true,
            "ipMasq": self.ip_masq,
            "hairpinMode": true,
            "clusterCIDR": "10.250.0.0/16",
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.dir.path(),
            }
        })
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join(self.name())
    }

    fn cleanup(&self) {
        for ns in &self.namespaces {
            quiet(&["ip", "netns", "del", ns]);
        }
        quiet(&["ip", "link", "del", &self.name()]);
        if self.ip_masq {
            let _ = kinit_cni::masq::remove(&self.name());
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup();
        let mut fwd = FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
        fwd.0 -= 1;
        if fwd.0 == 0 {
            if let Some(before) = fwd.1.take() {
                let _ = std::fs::write(FORWARDING_PATH, before.trim());
            }
        }
    }
}

/// Runs the plugin executable like a runtime; returns (stdout JSON or Null, success).
fn cni(command: &str, id: &str, netns: Option<&Path>, conf: &Value) -> (Value, bool) {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env(
            "CNI_NETNS",
            netns.map(|p| p.display().to_string()).unwrap_or_default(),
        )
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test",
        )
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    (value, out.status.success())
}

fn add(conf: &Value, id: &str, netns: &Path) -> Value {
    let (v, ok) = cni("ADD", id, Some(netns), conf);
    assert!(ok, "ADD failed: {v}");
    v
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn ip_json(args: &[&str]) -> Value {
    let mut full = vec!["ip", "-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&sh(&full)).unwrap()
}

/// Runs `f` on a thread inside the namespace at `path`; sockets it creates live there.
fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn add_check_del_configure_the_kernel_as_reported() {
    let mut net = Net::new(1, false);
    let ns = net.netns("a");
    let conf = net.conf();
    let result = add(&conf, "ctr-a", &ns);

    // The result, as the spec describes it.
    assert_eq!(result["cniVersion"], "1.0.0");
    let ifaces = result["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 3);
    assert_eq!(ifaces[0]["name"], net.name());
    let veth = ifaces[1]["name"].as_str().unwrap().to_string();
    assert!(veth.starts_with("veth"));
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], ns.display().to_string());
    assert_eq!(
        result["ips"][0]["address"],
        format!("10.250.{}.2/24", net.n)
    );
    assert_eq!(result["ips"][0]["gateway"], net.ip(1).to_string());
    assert_eq!(result["ips"][0]["interface"], 2);
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");

    // The container side.
    let nsname = format!("{}-a", net.name());
    let addrs = ip_json(&["-n", &nsname, "addr", "show", "dev", "eth0"]);
    let eth0 = &addrs[0];
    assert!(eth0["flags"].as_array().unwrap().contains(&json!("UP")));
    assert_eq!(eth0["address"], ifaces[2]["mac"]);
    let inet: Vec<String> = eth0["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(inet, [format!("10.250.{}.2/24", net.n)]);
    let routes = ip_json(&["-n", &nsname, "route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], net.ip(1).to_string());
    assert_eq!(routes[0]["dev"], "eth0");

    // The host side: bridge with the gateway address, veth attached, up, hairpin on.
    let br = &ip_json(&["addr", "show", "dev", &net.name()])[0];
    assert!(br["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == net.ip(1).to_string() && a["prefixlen"] == 24));
    let link = &ip_json(&["-d", "link", "show", "dev", &veth])[0];
    assert_eq!(link["master"], net.name());
    assert!(link["flags"].as_array().unwrap().contains(&json!("UP")));
    let hairpin =
        std::fs::read_to_string(format!("/sys/class/net/{veth}/brport/hairpin_mode")).unwrap();
    assert_eq!(hairpin.trim(), "1");
    // IPAM: one file naming the container and interface.
    let file = net.store().join(format!("10.250.{}.2", net.n));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "ctr-a\r\neth0");

    // CHECK with the ADD result passes.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let (out, ok) = cni("CHECK", "ctr-a", Some(&ns), &check_conf);
    assert!(ok, "CHECK failed: {out}");
    assert_eq!(out, Value::Null);

    // CHECK notices a removed address.
    sh(&[
        "ip",
        "-n",
        &nsname,
        "addr",
        "del",
        &format!("10.250.{}.2/24", net.n),
        "dev",
        "eth0",
    ]);
    let (out, ok) = cni("CHECK", "ctr-a", Some(&ns), &check_conf);
    assert!(!ok);
    assert_eq!(out["code"], 101, "{out}");

    // DEL removes the veth pair and the allocation; a second DEL is still a success.
    let mut del_conf = conf.clone();
    del_conf["prevResult"] = result;
    let (out, ok) = cni("DEL", "ctr-a", Some(&ns), &del_conf);
    assert!(ok, "DEL failed: {out}");
    assert!(!Path::new(&format!("/sys/class/net/{veth}")).exists());
    assert!(ip_json(&["-n", &nsname, "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] != "eth0"));
    assert!(!file.exists());
    assert!(cni("DEL", "ctr-a", Some(&ns), &del_conf).1);
    // DEL of a container never seen, and DEL without a netns, succeed too.
    assert!(cni("DEL", "never-added", Some(&ns), &conf).1);
    assert!(cni("DEL", "never-added", None, &conf).1);
    // CHECK after DEL: the interface is unknown (code 3).
    let (out, ok) = cni("CHECK", "ctr-a", Some(&ns), &check_conf);
    assert!(!ok);
    assert_eq!(out["code"], 3, "{out}");
}

#[test]
fn two_pods_talk_tcp_across_the_bridge_and_reach_the_gateway() {
    let mut net = Net::new(2, false);
    let ns_a = net.netns("a");
    let ns_b = net.netns("b");
    let conf = net.conf();
    let ra = add(&conf, "ctr-a", &ns_a);
    let rb = add(&conf, "ctr-b", &ns_b);
    let ip_a: IpAddr = ra["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ip_b = rb["ips"][0]["address"].as_str().unwrap().to_string();
    let ip_b: IpAddr = ip_b.split('/').next().unwrap().parse().unwrap();
    assert_ne!(ip_a, ip_b);

    // B listens inside its namespace; A connects from inside its own.
    let listener = in_netns(&ns_b, move || {
        TcpListener::bind(SocketAddr::new(ip_b, 0)).unwrap()
    });
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong!").unwrap();
        (peer.ip(), buf)
    });
    let reply = in_netns(&ns_a, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(ip_b, port), Duration::from_secs(5))
                .unwrap();
        s.write_all(b"ping!").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&reply, b"pong!");
    let (peer, got) = server.join().unwrap();
    assert_eq!(&got, b"ping!");
    assert_eq!(
        peer, ip_a,
        "pod-to-pod traffic keeps the pod's source address"
    );

    // The gateway (the host's bridge address) answers from a pod: the host listens on it.
    let gw = net.ip(1);
    let host_listener = TcpListener::bind(SocketAddr::new(gw, 0)).unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || host_listener.accept().unwrap().1.ip());
    in_netns(&ns_a, move || {
        TcpStream::connect_timeout(&SocketAddr::new(gw, host_port), Duration::from_secs(5))
            .unwrap();
    });
    assert_eq!(accept.join().unwrap(), ip_a);

    for (id, ns) in [("ctr-a", &ns_a), ("ctr-b", &ns_b)] {
        assert!(cni("DEL", id, Some(ns), &conf).1);
    }
    assert_eq!(
        std::fs::read_dir(net.store())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("10."))
            .count(),
        0
    );
}

#[test]
fn add_is_idempotent_and_del_tolerates_a_deleted_netns() {
    let mut net = Net::new(3, false);
    let ns = net.netns("a");
    let conf = net.conf();
    let first = add(&conf, "ctr-a", &ns);
    let second = add(&conf, "ctr-a", &ns);
    assert_eq!(
        first["ips"], second["ips"],
        "a repeated ADD keeps the address"
    );
    assert_eq!(
        first["interfaces"][1]["name"],
        second["interfaces"][1]["name"]
    );
    let nsname = format!("{}-a", net.name());
    let links = ip_json(&["-n", &nsname, "link", "show"]);
    assert_eq!(
        links
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["ifname"] == "eth0")
            .count(),
        1
    );

    // The runtime deleted the namespace before DEL (allowed by the spec).
    sh(&["ip", "netns", "del", &nsname]);
    net.namespaces.clear();
    let (out, ok) = cni("DEL", "ctr-a", Some(&ns), &conf);
    assert!(ok, "DEL with a missing netns failed: {out}");
    assert!(!net.store().join(format!("10.250.{}.2", net.n)).exists());
}

#[test]
fn concurrent_adds_share_one_bridge_and_get_distinct_addresses() {
    let mut net = Net::new(4, false);
    let namespaces: Vec<PathBuf> = (0..8).map(|i| net.netns(&format!("p{i}"))).collect();
    let conf = net.conf();
    let handles: Vec<_> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let conf = conf.clone();
            let ns = ns.clone();
            std::thread::spawn(move || add(&conf, &format!("ctr-{i}"), &ns))
        })
        .collect();
    let mut ips: Vec<String> = handles
        .into_iter()
        .map(|h| {
            h.join().unwrap()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 8);
    let ports = ip_json(&["link", "show", "master", &net.name()]);
    assert_eq!(ports.as_array().unwrap().len(), 8);
}

#[test]
fn ip_masq_installs_one_idempotent_nft_table() {
    let mut net = Net::new(5, true);
    let a = net.netns("a");
    let b = net.netns("b");
    let conf = net.conf();
    add(&conf, "ctr-a", &a);
    add(&conf, "ctr-b", &b);
    let table = format!("kinit_cni_{}", net.name());
    let listing = sh(&["nft", "list", "table", "inet", &table]);
    let rule = format!(
        "ip saddr 10.250.{}.0/24 ip daddr != 10.250.0.0/16 ip daddr != @node_ips ip daddr != 224.0.0.0/4 masquerade",
        net.n
    );
    assert_eq!(listing.matches(&rule).count(), 1, "{listing}");
    assert!(listing.contains("hook postrouting"), "{listing}");
}

#[test]
fn loopback_type_brings_lo_up() {
    let mut net = Net::new(6, false);
    let ns = net.netns("a");
    let conf = json!({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"});
    let result = add(&conf, "ctr-a", &ns);
    assert_eq!(result["interfaces"][0]["name"], "lo");
    assert_eq!(result["ips"][0]["address"], "127.0.0.1/8");
    let nsname = format!("{}-a", net.name());
    let lo = &ip_json(&["-n", &nsname, "link", "show", "lo"])[0];
    assert!(lo["flags"].as_array().unwrap().contains(&json!("UP")));
    assert!(cni("CHECK", "ctr-a", Some(&ns), &conf).1);
    assert!(cni("DEL", "ctr-a", Some(&ns), &conf).1);
}
