//! ADD/DEL latency of the plugin, measured the way containerd sees it: each command executes
//! the `kinit-cni` binary (built next to this one) with the CNI environment and config on
//! stdin. Run as root: `kinit-cni-bench [CYCLES]` (default 50).
//!
//! It uses its own bridge `kcnibench`, pod range 10.250.200.0/24 and namespace
//! `kcnibench-0`, and removes them at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "kcnibench";

fn main() -> ExitCode {
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
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    let ok = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("cannot create netns {netns}: run as root");
        return ExitCode::FAILURE;
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
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    let _ = Command::new("ip").args(["link", "del", NAME]).status();
    let _ = kinit_cni::masq::remove(NAME);
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
