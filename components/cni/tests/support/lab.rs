//! A two-node cluster network built from private network namespaces, for the real-kernel
//! tests and the throughput bench. Nothing here touches the machine's own namespace: every
//! link, address, route and nft table lives in namespaces named `<prefix>-*`, and dropping
//! the [`Lab`] deletes them (also when a test panics).
//!
//! Layout:
//! - `<prefix>-u`: the underlay. One subnet: bridge `br0` joins both nodes on 10.89.0.0/24.
//!   Two subnets: bridges `br1` (10.89.1.254/24) and `br2` (10.89.2.254/24), forwarding
//!   between them, so the nodes are routed, not on one L2.
//! - `<prefix>-n1`, `<prefix>-n2`: the nodes, uplink `eth0`, pod ranges 10.244.1.0/24 and
//!   10.244.2.0/24 of cluster 10.244.0.0/16, each with its own IPAM directory and runtime
//!   file. Pods are namespaces `<prefix>-n<i>-<pod>` attached by the real plugin executable
//!   run inside the node's namespace, exactly as containerd runs it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kinit_cni::error::CniError;
use kinit_cni::network::{Backend, LocalFacts, NetworkConfig, NodeNetwork, Peer, SyncReport};
use serde_json::{json, Value};

/// The cluster's pod network in the lab.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The network name (conflist `name`) used by the lab's pods.
pub const NETWORK: &str = "kinit";

/// How the nodes are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// Both nodes on one bridge and one subnet (host-gw works).
    OneSubnet,
    /// Each node on its own subnet, routed by the underlay namespace (host-gw cannot work).
    TwoSubnets,
}

/// One lab node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node name (`node1`, `node2`).
    pub name: String,
    /// Its namespace name.
    pub ns: String,
    /// Its address on `eth0`.
    pub ip: IpAddr,
    /// Its pod range.
    pub pod_cidr: IpNet,
    /// Its state file.
    pub state_file: PathBuf,
    /// Its IPAM data directory.
    pub data_dir: PathBuf,
}

impl Node {
    /// The namespace's path.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.ns)
    }

    /// The network configuration its agent would use.
    pub fn config(&self) -> NetworkConfig {
        let mut c = NetworkConfig::new(
            self.name.clone(),
            self.ip,
            vec![self.pod_cidr],
            vec![CLUSTER_CIDR.parse().expect("literal")],
        );
        c.network_name = NETWORK.to_string();
        c.state_file = self.state_file.clone();
        c
    }

    /// The plugin configuration for a pod on this node (`runtimeConfig` may be added).
    pub fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "kinit-cni",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "clusterCIDR": CLUSTER_CIDR,
            "capabilities": {"portMappings": true},
            "networkStateFile": self.state_file,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.pod_cidr.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.data_dir,
            }
        })
    }
}

/// A pod attached by the plugin.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Container ID used for ADD/DEL.
    pub id: String,
    /// Its namespace name.
    pub ns: String,
    /// Its address.
    pub ip: IpAddr,
    /// The ADD result.
    pub result: Value,
}

impl Pod {
    /// The namespace's path.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.ns)
    }
}

/// Path of a named namespace.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{ns}"))
}

/// The lab: its namespaces, nodes and scratch directory.
pub struct Lab {
    /// Namespace name prefix.
    pub prefix: String,
    /// The plugin executable.
    pub plugin: PathBuf,
    /// Scratch directory (IPAM stores, state files).
    pub dir: PathBuf,
    /// The two nodes.
    pub nodes: Vec<Node>,
    namespaces: Vec<String>,
}

/// Why the lab cannot be built here (not root, no `ip` or `nft`), if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("these tests create network namespaces and must run as root".into());
    }
    for tool in [["ip", "-V"], ["nft", "--version"]] {
        let ok = Command::new(tool[0])
            .arg(tool[1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!(
                "`{}` is not installed (iproute2 / nftables)",
                tool[0]
            ));
        }
    }
    None
}

/// Runs a command; panics with its stderr when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `ip -j -n <ns> ARGS` parsed.
pub fn ip_json(ns: &str, args: &[&str]) -> Value {
    let mut full = vec!["ip", "-j", "-n", ns];
    full.extend_from_slice(args);
    let text = sh(&full);
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{full:?} is not JSON ({e}): {text}"))
}

/// Runs `f` on a thread inside the namespace `ns`; sockets it creates and processes it
/// spawns live there.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file =
        std::fs::File::open(netns_path(ns)).unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into the lab namespace");
            f()
        })
        .join()
        .expect("lab thread panicked")
    })
}

/// Runs an async block inside `ns` on a fresh current-thread runtime.
pub fn block_in<T: Send, F: std::future::Future<Output = T>>(
    ns: &str,
    f: impl FnOnce() -> F + Send,
) -> T {
    in_netns(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

impl Lab {
    /// Builds the lab; `uplink_mtu` is the MTU of both nodes' `eth0`.
    pub fn new(prefix: &str, plugin: &Path, underlay: Underlay, uplink_mtu: u32) -> Lab {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab scratch directory");
        let mut lab = Lab {
            prefix: prefix.to_string(),
            plugin: plugin.to_path_buf(),
            dir,
            nodes: Vec::new(),
            namespaces: Vec::new(),
        };
        lab.remove_leftovers();
        let u = lab.netns("u");
        sh(&["ip", "-n", &u, "link", "set", "lo", "up"]);
        let mtu = uplink_mtu.to_string();
        let bridges: Vec<&str> = match underlay {
            Underlay::OneSubnet => vec!["br0"],
            Underlay::TwoSubnets => vec!["br1", "br2"],
        };
        for (i, br) in bridges.iter().enumerate() {
            sh(&["ip", "-n", &u, "link", "add", br, "type", "bridge"]);
            sh(&["ip", "-n", &u, "link", "set", br, "mtu", &mtu, "up"]);
            if underlay == Underlay::TwoSubnets {
                let gw = format!("10.89.{}.254/24", i + 1);
                sh(&["ip", "-n", &u, "addr", "add", &gw, "dev", br]);
            }
        }
        if underlay == Underlay::TwoSubnets {
            sh(&[
                "ip",
                "netns",
                "exec",
                &u,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward",
            ]);
        }
        for i in 1..=2u8 {
            let ns = lab.netns(&format!("n{i}"));
            let port = format!("n{i}");
            sh(&[
                "ip", "-n", &u, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name",
                "eth0", "mtu", &mtu, "netns", &ns,
            ]);
            let br = match underlay {
                Underlay::OneSubnet => "br0".to_string(),
                Underlay::TwoSubnets => format!("br{i}"),
            };
            sh(&["ip", "-n", &u, "link", "set", &port, "master", &br, "up"]);
            let (ip, cidr) = match underlay {
                Underlay::OneSubnet => (format!("10.89.0.{i}"), format!("10.89.0.{i}/24")),
                Underlay::TwoSubnets => (format!("10.89.{i}.1{i}"), format!("10.89.{i}.1{i}/24")),
            };
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            if underlay == Underlay::TwoSubnets {
                let gw = format!("10.89.{i}.254");
                sh(&["ip", "-n", &ns, "route", "add", "default", "via", &gw]);
            }
            let node_dir = lab.dir.join(format!("node{i}"));
            lab.nodes.push(Node {
                name: format!("node{i}"),
                ns,
                ip: ip.parse().expect("lab address"),
                pod_cidr: format!("10.244.{i}.0/24").parse().expect("lab range"),
                state_file: node_dir.join("cni").join("network.json"),
                data_dir: node_dir.join("networks"),
            });
        }
        lab
    }

    /// Turns on strict reverse-path filtering (`rp_filter=1`) on both nodes (`all` and the
    /// uplink `eth0`) and in the underlay (`all` and its bridges), as cloud networks'
    /// anti-spoofing and hardened hosts do: a packet whose source would not be routed back
    /// out the interface it came in on is dropped.
    pub fn strict_rp_filter(&self) {
        let set = |ns: &str, dev: &str| {
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                &format!("echo 1 > /proc/sys/net/ipv4/conf/{dev}/rp_filter"),
            ]);
        };
        for node in &self.nodes {
            set(&node.ns, "all");
            set(&node.ns, "eth0");
        }
        let u = format!("{}-u", self.prefix);
        set(&u, "all");
        for link in ip_json(&u, &["link", "show", "type", "bridge"])
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(br) = link["ifname"].as_str() {
                set(&u, br);
            }
        }
    }

    fn netns(&mut self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.prefix);
        quiet(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        name
    }

    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
            return;
        };
        let mine = format!("{}-", self.prefix);
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&mine) {
                quiet(&["ip", "netns", "del", &name]);
            }
        }
    }

    /// Node `i` (1 or 2).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    /// Runs the plugin inside the node's namespace like a runtime does; returns the parsed
    /// stdout (or `Null`) and whether it exited 0.
    pub fn cni(
        &self,
        node: &Node,
        command: &str,
        id: &str,
        netns: Option<&Path>,
        conf: &Value,
    ) -> (Value, bool) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(&self.plugin)
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
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=lab",
            )
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the plugin");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(conf.to_string().as_bytes())
            .expect("write config");
        let out = child.wait_with_output().expect("wait for the plugin");
        let text = String::from_utf8_lossy(&out.stdout);
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
        };
        (value, out.status.success())
    }

    /// Creates a pod namespace on `node` and runs ADD for it (with `runtime_config`, if any).
    pub fn add_pod(&mut self, node: usize, name: &str, runtime_config: Option<Value>) -> Pod {
        let node = self.node(node).clone();
        let ns = self.netns(&format!("{}-{name}", &node.ns[self.prefix.len() + 1..]));
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let mut conf = node.conf();
        if let Some(rc) = runtime_config {
            conf["runtimeConfig"] = rc;
        }
        let id = format!("{}-{name}", node.name);
        let (result, ok) = self.cni(&node, "ADD", &id, Some(&netns_path(&ns)), &conf);
        assert!(ok, "ADD of {id} failed: {result}");
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("ADD result without an address: {result}"));
        Pod { id, ns, ip, result }
    }

    /// The node's facts, discovered inside its namespace.
    pub fn facts(&self, node: &Node) -> LocalFacts {
        let ip = node.ip;
        block_in(
            &node.ns,
            move || async move { LocalFacts::discover(ip).await },
        )
        .unwrap_or_else(|e| panic!("discover {}: {e}", node.name))
    }

    /// Every node as a peer, built the way the agent builds one: from the Node's name,
    /// address, pod range and the annotations the node published for `backend`.
    pub fn peers(&self, backend: Backend) -> Vec<Peer> {
        self.nodes
            .iter()
            .map(|n| {
                let annotations: BTreeMap<String, String> = self.facts(n).annotations(backend);
                Peer::from_node(n.name.clone(), n.ip, vec![n.pod_cidr], &annotations)
            })
            .collect()
    }

    /// One agent sync on `node` (a fresh [`NodeNetwork`], as after an agent restart).
    pub fn sync(
        &self,
        node: &Node,
        backend: Backend,
        peers: &[Peer],
    ) -> Result<SyncReport, CniError> {
        let config = node.config();
        block_in(&node.ns, move || async move {
            let mut network = NodeNetwork::new(config).await?;
            network.sync(backend, peers).await
        })
    }

    /// Syncs both nodes with all peers; panics on failure.
    pub fn sync_all(&self, backend: Backend) -> Vec<SyncReport> {
        let peers = self.peers(backend);
        self.nodes
            .iter()
            .map(|n| {
                self.sync(n, backend, &peers)
                    .unwrap_or_else(|e| panic!("sync {} ({backend}): {e}", n.name))
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            quiet(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP listener inside `ns` on `ip:port` (port 0 picks one).
pub fn listen(ns: &str, ip: IpAddr, port: u16) -> TcpListener {
    in_netns(ns, move || {
        TcpListener::bind(SocketAddr::new(ip, port))
            .unwrap_or_else(|e| panic!("bind {ip}:{port} in {ns}: {e}"))
    })
}

/// Accepts one connection within `timeout`, answers one request, returns the client address
/// the server saw.
pub fn serve_once(
    listener: TcpListener,
    timeout: Duration,
) -> std::thread::JoinHandle<Option<SocketAddr>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).ok()?;
        let deadline = Instant::now() + timeout;
        loop {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).ok()?;
                    s.set_read_timeout(Some(timeout)).ok()?;
                    let mut buf = [0u8; 4];
                    s.read_exact(&mut buf).ok()?;
                    s.write_all(b"pong").ok()?;
                    return Some(peer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return None,
            }
        }
    })
}

/// Connects from inside `ns` to `to`, sends a request and reads the reply.
pub fn request(ns: &str, to: SocketAddr) -> Result<(), String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"ping")
            .map_err(|e| format!("send to {to}: {e}"))?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)
            .map_err(|e| format!("read from {to}: {e}"))?;
        if &buf == b"pong" {
            Ok(())
        } else {
            Err(format!("{to} answered {buf:?}"))
        }
    })
}

/// A TCP exchange from `client_ns` to `server_ip` in `server_ns`; returns the client
/// address the server saw.
pub fn tcp_exchange(client_ns: &str, server_ns: &str, server_ip: IpAddr) -> Result<IpAddr, String> {
    let listener = listen(server_ns, server_ip, 0);
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let server = serve_once(listener, Duration::from_secs(5));
    let client = request(client_ns, SocketAddr::new(server_ip, port));
    let seen = server
        .join()
        .map_err(|_| "server thread panicked".to_string())?;
    client?;
    seen.map(|a| a.ip())
        .ok_or_else(|| "the server saw no connection".to_string())
}

/// Bulk TCP transfer from `client_ns` to `server_ip` in `server_ns` for `duration`; returns
/// the throughput the receiver measured, in Gbit/s.
pub fn throughput(client_ns: &str, server_ns: &str, server_ip: IpAddr, duration: Duration) -> f64 {
    let listener = listen(server_ns, server_ip, 0);
    let port = listener.local_addr().expect("bound").port();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept the bulk connection");
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut start = None;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    start.get_or_insert_with(Instant::now);
                    total += n as u64;
                }
                Err(e) => panic!("bulk receive: {e}"),
            }
        }
        let secs = start
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(1.0)
            .max(1e-6);
        total as f64 * 8.0 / secs / 1e9
    });
    let to = SocketAddr::new(server_ip, port);
    in_netns(client_ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .expect("connect for the bulk transfer");
        let buf = vec![0x5au8; 256 * 1024];
        let end = Instant::now() + duration;
        while Instant::now() < end {
            s.write_all(&buf).expect("bulk send");
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    });
    receiver.join().expect("receiver thread")
}
