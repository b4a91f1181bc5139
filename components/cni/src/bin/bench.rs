//! Benchmarks of the plugin, run as root:
//!
//! - `kinit-cni-bench [CYCLES]` (default 50): ADD/DEL latency, measured the way containerd
//!   sees it: each command executes the `kinit-cni` binary (built next to this one) with the
//!   CNI environment and config on stdin. The plugin runs inside a private "node" namespace
//!   `kcnibench-n` (its own bridge `kcnibench`, pod range 10.250.200.0/24) for a pod
//!   namespace `kcnibench-0`; both are removed at the end.
//! - `kinit-cni-bench network [SECONDS]` (default 3): TCP bulk throughput pod-to-pod across
//!   two nodes against node-to-node, for host-gw and for vxlan, each direction for SECONDS.
//!   Everything runs in private network namespaces `kcnbn-*` (see `tests/support/lab.rs`),
//!   removed at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/support/lab.rs"]
mod lab;

const NAME: &str = "kcnibench";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("network") {
        return network_bench();
    }
    let cycles: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 50,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: kinit-cni-bench [CYCLES]");
            return ExitCode::FAILURE;
        }
    };
    let plugin = std::env::current_exe()
        .expect("own path")
        .with_file_name("kinit-cni");
    if !plugin.exists() {
        eprintln!(
            "{} not found: build it first (cargo build -p kinit-cni --release --bins)",
            plugin.display()
        );
        return ExitCode::FAILURE;
    }
    let data = std::env::temp_dir().join(format!("kinit-cni-bench-{}", std::process::id()));
    let netns = format!("{NAME}-0");
    let node = format!("{NAME}-n");
    for ns in [&netns, &node] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot create netns {ns}: run as root");
            return ExitCode::FAILURE;
        }
    }
    let netns_path = PathBuf::from(format!("/var/run/netns/{netns}"));
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": NAME, "type": "kinit-cni", "bridge": NAME,
        "isGateway": true, "ipMasq": true, "hairpinMode": true, "clusterCIDR": "10.250.0.0/16",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.200.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data}
    })
    .to_string();

    let mut adds = Vec::with_capacity(cycles);
    let mut dels = Vec::with_capacity(cycles);
    let mut failure = None;
    // Plugin processes started from this thread run in the node namespace.
    lab::in_netns(&node, || {
        for i in 0..cycles {
            let id = format!("bench-{i}");
            match timed(&plugin, "ADD", &id, &netns_path, &conf) {
                Ok(d) => adds.push(d),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            match timed(&plugin, "DEL", &id, &netns_path, &conf) {
                Ok(d) => dels.push(d),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
    });
    // The bridge and the nft table die with the node namespace.
    for ns in [&netns, &node] {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    let _ = std::fs::remove_dir_all(&data);
    if let Some(e) = failure {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    report("ADD", &mut adds);
    report("DEL", &mut dels);
    ExitCode::SUCCESS
}

fn timed(
    plugin: &Path,
    command: &str,
    id: &str,
    netns: &Path,
    conf: &str,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", plugin.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{command} {id} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(took)
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    println!(
        "{what}: n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}

/// Pod-to-pod throughput across the two lab nodes as a share of node-to-node, per backend.
fn network_bench() -> ExitCode {
    use kinit_cni::network::Backend;
    let secs: u64 = match std::env::args().nth(2).map(|a| a.parse()) {
        None => 3,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: kinit-cni-bench network [SECONDS]");
            return ExitCode::FAILURE;
        }
    };
    if let Some(why) = lab::missing_prerequisite() {
        eprintln!("{why}");
        return ExitCode::FAILURE;
    }
    let plugin = std::env::current_exe()
        .expect("own path")
        .with_file_name("kinit-cni");
    if !plugin.exists() {
        eprintln!(
            "{} not found: build it first (cargo build -p kinit-cni --release --bins)",
            plugin.display()
        );
        return ExitCode::FAILURE;
    }
    let d = Duration::from_secs(secs);
    let mut lab = lab::Lab::new("kcnbn", &plugin, lab::Underlay::OneSubnet, 1500);
    let (n1, n2) = (lab.node(1).clone(), lab.node(2).clone());
    let both = |a: &str, b: &str, ip_a, ip_b| -> (f64, f64) {
        (
            lab::throughput(a, b, ip_b, d),
            lab::throughput(b, a, ip_a, d),
        )
    };
    let node = both(&n1.ns, &n2.ns, n1.ip, n2.ip);
    println!(
        "node -> node          {:6.2} / {:6.2} Gbit/s (1->2 / 2->1)",
        node.0, node.1
    );
    for backend in [Backend::HostGw, Backend::Vxlan] {
        lab.sync_all(backend);
        // New pods, so they get the backend's MTU.
        let a = lab.add_pod(1, &format!("{backend}-a"), None);
        let b = lab.add_pod(2, &format!("{backend}-b"), None);
        let pod = both(&a.ns, &b.ns, a.ip, b.ip);
        println!(
            "pod -> pod {:<8}   {:6.2} / {:6.2} Gbit/s   = {:.0}% / {:.0}% of node -> node (pod MTU {})",
            backend.to_string(),
            pod.0,
            pod.1,
            100.0 * pod.0 / node.0,
            100.0 * pod.1 / node.1,
            lab::ip_json(&a.ns, &["link", "show", "dev", "eth0"])[0]["mtu"]
        );
    }
    ExitCode::SUCCESS
}
