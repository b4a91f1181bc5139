//! A small lab of private network namespaces for the proxy's kernel tests:
//!
//! ```text
//!  client (10.253.N.2, fd53:N::2) --veth-- node (10.253.N.1 / fd53:N::1) --veth-- up
//!                                           |  bridge br0 10.254.N.1/24, fd54:N::1/64
//!                                  pa 10.254.N.10, fd54:N::10    pb 10.254.N.11, fd54:N::11
//! ```
//!
//! `up` (10.252.N.2) is the node's default gateway, as a real node has one; it forwards
//! nothing, so traffic the proxy does not catch goes nowhere.
//!
//! The node namespace carries the proxy's table (nft runs there through `ip netns exec`).
//! Each pod runs a TCP server on port 8080 and a UDP server on port 5353 that answer with
//! the pod's name and the source address they saw. Everything is created inside the
//! namespaces (veth pairs are created in the node namespace with their peer moved out), so
//! the machine's own network namespace is never changed; all of it goes away on drop.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kinit_proxy::{ConntrackCleanup, NftCommand, ProxyConfig};

pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

/// Whether the kernel prerequisites are there; without them the test is skipped, or fails
/// under `KINIT_E2E=1`.
pub fn prerequisites(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let nft = std::path::Path::new("/usr/sbin/nft").exists() || which("nft");
    let ip = which("ip") || std::path::Path::new("/usr/sbin/ip").exists();
    let missing: Vec<&str> = [(!root, "root"), (!nft, "nft"), (!ip, "ip (iproute2)")]
        .into_iter()
        .filter_map(|(m, what)| m.then_some(what))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("KINIT_E2E").as_deref() == Ok("1") {
        panic!("{test}: KINIT_E2E=1 but {} missing", missing.join(", "));
    }
    eprintln!("SKIPPED {test}: needs {}", missing.join(", "));
    false
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `f` on a thread inside network namespace `name`; sockets it creates live there.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

pub struct Lab {
    pub n: u8,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Lab {
    /// Builds lab number `n` (unique per test), removing leftovers of an aborted run first.
    pub fn new(n: u8) -> Lab {
        let mut lab = Lab {
            n,
            namespaces: ["node", "client", "pa", "pb", "up"]
                .iter()
                .map(|s| format!("kpx{n}-{s}"))
                .collect(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        lab.cleanup();
        for ns in lab.namespaces.clone() {
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let node = lab.node();
        let client = lab.ns("client");
        sh(&[
            "ip", "-n", &node, "link", "add", "cl0", "type", "veth", "peer", "name", "eth0",
            "netns", &client,
        ]);
        sh(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("10.253.{n}.1/24"),
            "dev",
            "cl0",
        ]);
        sh(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("fd53:{n}::1/64"),
            "dev",
            "cl0",
            "nodad",
        ]);
        sh(&["ip", "-n", &node, "link", "set", "cl0", "up"]);
        sh(&[
            "ip",
            "-n",
            &client,
            "addr",
            "add",
            &format!("10.253.{n}.2/24"),
            "dev",
            "eth0",
        ]);
        sh(&[
            "ip",
            "-n",
            &client,
            "addr",
            "add",
            &format!("fd53:{n}::2/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        sh(&["ip", "-n", &client, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            &client,
            "route",
            "add",
            "default",
            "via",
            &format!("10.253.{n}.1"),
        ]);
        sh(&[
            "ip",
            "-n",
            &client,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd53:{n}::1"),
        ]);

        sh(&["ip", "-n", &node, "link", "add", "br0", "type", "bridge"]);
        sh(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("10.254.{n}.1/24"),
            "dev",
            "br0",
        ]);
        sh(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("fd54:{n}::1/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        sh(&["ip", "-n", &node, "link", "set", "br0", "up"]);
        for (pod, host) in [("pa", 10u8), ("pb", 11u8)] {
            let pns = lab.ns(pod);
            let port = format!("v-{pod}");
            sh(&[
                "ip", "-n", &node, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &pns,
            ]);
            sh(&["ip", "-n", &node, "link", "set", &port, "master", "br0"]);
            sh(&[
                "ip",
                "-n",
                &node,
                "link",
                "set",
                &port,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ]);
            sh(&["ip", "-n", &node, "link", "set", &port, "up"]);
            sh(&[
                "ip",
                "-n",
                &pns,
                "addr",
                "add",
                &format!("10.254.{n}.{host}/24"),
                "dev",
                "eth0",
            ]);
            sh(&[
                "ip",
                "-n",
                &pns,
                "addr",
                "add",
                &format!("fd54:{n}::{host}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            sh(&["ip", "-n", &pns, "link", "set", "eth0", "up"]);
            sh(&[
                "ip",
                "-n",
                &pns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.254.{n}.1"),
            ]);
            sh(&[
                "ip",
                "-n",
                &pns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd54:{n}::1"),
            ]);
        }
        // The node routes between client and pods; its own traffic to service addresses
        // needs a route too (as a real node has a default route).
        sh(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        let up = lab.ns("up");
        sh(&[
            "ip", "-n", &node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
            "netns", &up,
        ]);
        sh(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("10.252.{n}.1/24"),
            "dev",
            "up0",
        ]);
        sh(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("fd52:{n}::1/64"),
            "dev",
            "up0",
            "nodad",
        ]);
        sh(&["ip", "-n", &node, "link", "set", "up0", "up"]);
        sh(&[
            "ip",
            "-n",
            &up,
            "addr",
            "add",
            &format!("10.252.{n}.2/24"),
            "dev",
            "eth0",
        ]);
        sh(&[
            "ip",
            "-n",
            &up,
            "addr",
            "add",
            &format!("fd52:{n}::2/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        sh(&["ip", "-n", &up, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            &node,
            "route",
            "add",
            "default",
            "via",
            &format!("10.252.{n}.2"),
        ]);
        sh(&[
            "ip",
            "-n",
            &node,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd52:{n}::2"),
        ]);

        for pod in ["pa", "pb"] {
            lab.serve(pod);
        }
        lab
    }

    pub fn ns(&self, what: &str) -> String {
        format!("kpx{}-{what}", self.n)
    }

    pub fn node(&self) -> String {
        self.ns("node")
    }

    /// The address of `what`: `node` (client side), `bridge`, `client`, `pa`, `pb`.
    pub fn ip4(&self, what: &str) -> IpAddr {
        let n = self.n;
        match what {
            "node" => format!("10.253.{n}.1"),
            "client" => format!("10.253.{n}.2"),
            "bridge" => format!("10.254.{n}.1"),
            "pa" => format!("10.254.{n}.10"),
            "pb" => format!("10.254.{n}.11"),
            other => panic!("unknown host {other}"),
        }
        .parse()
        .unwrap()
    }

    pub fn ip6(&self, what: &str) -> IpAddr {
        let n = self.n;
        match what {
            "node" => format!("fd53:{n}::1"),
            "client" => format!("fd53:{n}::2"),
            "bridge" => format!("fd54:{n}::1"),
            "pa" => format!("fd54:{n}::10"),
            "pb" => format!("fd54:{n}::11"),
            other => panic!("unknown host {other}"),
        }
        .parse()
        .unwrap()
    }

    /// A proxy configuration acting in the node namespace.
    pub fn config(&self) -> ProxyConfig {
        ProxyConfig {
            node_name: "node-a".into(),
            cluster_cidrs: vec![
                format!("10.254.{}.0/24", self.n).parse().unwrap(),
                format!("fd54:{}::/64", self.n).parse().unwrap(),
            ],
            nft: NftCommand::in_netns(&self.node()),
            conntrack: ConntrackCleanup::Netlink {
                netns: Some(PathBuf::from(format!("/var/run/netns/{}", self.node()))),
            },
            stale_chain_grace: Duration::from_millis(100),
            ..Default::default()
        }
    }

    /// Runs `nft args...` in the node namespace and returns stdout.
    pub fn nft(&self, args: &[&str]) -> String {
        let node = self.node();
        let mut full = vec!["ip", "netns", "exec", &node, "nft"];
        full.extend_from_slice(args);
        let out = Command::new(full[0]).args(&full[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn serve(&mut self, pod: &str) {
        let name = pod.to_string();
        let stop = self.stop.clone();
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.ns(pod))).unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.servers.push(std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // [::] takes IPv4 too (as v4-mapped addresses).
            let tcp = TcpListener::bind(("::", TCP_PORT)).unwrap();
            tcp.set_nonblocking(true).unwrap();
            let udp = UdpSocket::bind(("::", UDP_PORT)).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((mut conn, peer)) = tcp.accept() {
                    let _ = conn.set_nonblocking(false);
                    let _ = writeln!(conn, "{name} {}", peer.ip().to_canonical());
                }
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(
                        format!("{name} {}", peer.ip().to_canonical()).as_bytes(),
                        peer,
                    );
                }
            }
        }));
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    fn cleanup(&self) {
        for ns in &self.namespaces {
            quiet(&["ip", "netns", "del", ns]);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
        self.cleanup();
    }
}

/// The outcome of one TCP request: the answering pod and the source it saw, or the error.
#[derive(Debug)]
pub struct Answer {
    pub pod: String,
    pub peer: IpAddr,
}

/// Connects from namespace `ns` to `addr` and reads the pod's answer.
pub fn tcp_ask(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<Answer, std::io::Error> {
    in_netns(ns, move || {
        let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
        conn.set_read_timeout(Some(timeout))?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        parse_answer(&text)
    })
}

fn parse_answer(text: &str) -> Result<Answer, std::io::Error> {
    let mut parts = text.split_whitespace();
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer {text:?}"),
        )
    };
    let pod = parts.next().ok_or_else(bad)?.to_string();
    let peer = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    Ok(Answer { pod, peer })
}

/// Sends one UDP datagram from `ns` (from `local_port`, 0 for any) to `addr` and waits for
/// the answer.
pub fn udp_ask(
    ns: &str,
    addr: SocketAddr,
    local_port: u16,
    timeout: Duration,
) -> Result<Answer, std::io::Error> {
    in_netns(ns, move || {
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], local_port).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, local_port).into()
        };
        let sock = UdpSocket::bind(bind)?;
        sock.connect(addr)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.send(b"hello")?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf)?;
        parse_answer(&String::from_utf8_lossy(&buf[..n]))
    })
}

/// Retries `f` until it returns `Some` or `secs` pass.
pub fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn service(value: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(value).unwrap()
}

pub fn slice(value: serde_json::Value) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(value).unwrap()
}

/// An EndpointSlice for Service `svc` with ready endpoints `(ip, node)` on port `port_name`.
pub fn ready_slice(
    name: &str,
    svc: &str,
    family: &str,
    ports: &[(&str, u16, &str)],
    endpoints: &[(IpAddr, &str)],
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(n, p, proto)| serde_json::json!({"name": n, "port": p, "protocol": proto}))
        .collect();
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, node)| serde_json::json!({"addresses": [ip.to_string()], "nodeName": node,
                                             "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect();
    slice(serde_json::json!({
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family,
        "ports": ports,
        "endpoints": eps
    }))
}

pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}
