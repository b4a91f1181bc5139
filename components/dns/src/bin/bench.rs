//! Throughput benchmark of cluster names: starts the DNS server in-process with N Services
//! (fed directly, no API server), pins it to one core, and runs a UDP load generator pinned to
//! another core that keeps many A queries for random Service names in flight on 127.0.0.1.
//! Prints queries per second, latency percentiles and the server's idle RSS.
//!
//! Run: `cargo run --release -p kinit-dns --bin kinit-dns-bench -- --services 1000 --seconds 10`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kinit_dns::{ClusterSnapshot, ClusterSource, DnsServer, ServerOptions};

#[derive(Parser, Debug)]
#[command(about = "Benchmark kinit dns on cluster names")]
struct Args {
    /// Services to create.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Client sockets.
    #[arg(long, default_value_t = 32)]
    sockets: usize,
    /// Queries in flight per socket.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Core for the server.
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core for the load generator.
    #[arg(long, default_value_t = 1)]
    client_core: usize,
}

fn snapshot(services: usize, namespaces: usize) -> ClusterSnapshot {
    let ns: Vec<Arc<Namespace>> = (0..namespaces)
        .map(|i| {
            Arc::new(Namespace {
                metadata: ObjectMeta {
                    name: Some(format!("ns-{i}")),
                    ..Default::default()
                },
                ..Default::default()
            })
        })
        .collect();
    let svcs = (0..services)
        .map(|i| {
            Arc::new(Service {
                metadata: ObjectMeta {
                    name: Some(format!("svc-{i}")),
                    namespace: Some(format!("ns-{}", i % namespaces)),
                    ..Default::default()
                },
                spec: Some(ServiceSpec {
                    cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250 + 1)),
                    cluster_ips: Some(vec![format!("10.96.{}.{}", i / 250, i % 250 + 1)]),
                    ports: Some(vec![ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect();
    ClusterSnapshot {
        services: svcs,
        namespaces: ns,
        ..Default::default()
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time (ns) a thread of this process has used, from `/proc/self/task/<tid>/schedstat`.
fn thread_cpu_ns(tid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn pin(core: usize) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    match cores.iter().find(|c| c.id == core) {
        Some(c) => {
            if !core_affinity::set_for_current(*c) {
                eprintln!("warning: could not pin to core {core}");
            }
        }
        None => eprintln!("warning: core {core} does not exist; not pinned"),
    }
}

struct Totals {
    answered: AtomicU64,
    bad: AtomicU64,
    lost: AtomicU64,
}

fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("kinit-dns-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    let corefile = dir.join("Corefile");
    std::fs::write(
        &corefile,
        ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n    }\n    cache 30\n    loadbalance\n}\n",
    )
    .expect("Corefile is writable");
    let rss_before = rss_kib();

    // Server: one core, one thread, one UDP socket.
    let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, String)>();
    let snap = Arc::new(snapshot(args.services, args.namespaces));
    let server_core = args.server_core;
    let cf = corefile.clone();
    std::thread::spawn(move || {
        pin(server_core);
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut opts = ServerOptions::loopback(cf, ClusterSource::Static(snap));
            opts.udp_workers = 1;
            opts.metrics_addr = None;
            let server = DnsServer::start(opts).await.expect("server starts");
            server.wait_ready(Duration::from_secs(10)).await;
            tx.send((server.dns_addr().expect("bound"), tid))
                .expect("main thread waits");
            std::future::pending::<()>().await;
        });
    });
    let (addr, server_tid) = rx.recv().expect("server started");
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = rss_kib();

    // Queries for random Services, pre-encoded.
    let queries: Vec<Vec<u8>> = (0..args.services)
        .map(|i| {
            let mut m = Message::query();
            m.metadata.recursion_desired = true;
            let name = format!("svc-{i}.ns-{}.svc.cluster.local.", i % args.namespaces);
            m.add_query(Query::query(
                Name::from_ascii(&name).expect("name"),
                RecordType::A,
            ));
            m.to_vec().expect("encodes")
        })
        .collect();
    let queries = Arc::new(queries);

    pin(args.client_core);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let totals = Arc::new(Totals {
        answered: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        lost: AtomicU64::new(0),
    });
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (lat_tx, lat_rx) = std::sync::mpsc::channel::<Vec<u32>>();
    let started = rt.block_on(async {
        let mut tasks = Vec::new();
        for s in 0..args.sockets {
            let queries = queries.clone();
            let totals = totals.clone();
            let measuring = measuring.clone();
            let stop = stop.clone();
            let lat_tx = lat_tx.clone();
            let window = args.window;
            tasks.push(tokio::spawn(async move {
                let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                sock.connect(addr).await.expect("connect");
                let mut rng_state: u64 = 0x9E3779B97F4A7C15 ^ (s as u64 + 1);
                let mut next = || {
                    rng_state ^= rng_state << 13;
                    rng_state ^= rng_state >> 7;
                    rng_state ^= rng_state << 17;
                    rng_state
                };
                let mut sent_at: Vec<Instant> = vec![Instant::now(); window];
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 20);
                let mut buf = [0u8; 1500];
                let send = |slot: usize, sent_at: &mut Vec<Instant>, r: u64| {
                    let mut q = queries[(r as usize) % queries.len()].clone();
                    let id = ((s * window + slot) & 0xffff) as u16;
                    q[0..2].copy_from_slice(&id.to_be_bytes());
                    sent_at[slot] = Instant::now();
                    q
                };
                for slot in 0..window {
                    let q = send(slot, &mut sent_at, next());
                    let _ = sock.send(&q).await;
                }
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf))
                        .await
                    {
                        Ok(Ok(n)) if n >= 12 => {
                            let id = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                            let slot = id % window;
                            let ok =
                                buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) == 1;
                            if measuring.load(Ordering::Relaxed) {
                                if ok {
                                    totals.answered.fetch_add(1, Ordering::Relaxed);
                                    lat.push(sent_at[slot].elapsed().as_micros() as u32);
                                } else {
                                    totals.bad.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            let q = send(slot, &mut sent_at, next());
                            let _ = sock.send(&q).await;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            // Lost answers: refill the whole window.
                            totals.lost.fetch_add(window as u64, Ordering::Relaxed);
                            for slot in 0..window {
                                let q = send(slot, &mut sent_at, next());
                                let _ = sock.send(&q).await;
                            }
                        }
                    }
                }
                let _ = lat_tx.send(lat);
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let cpu0 = thread_cpu_ns(&server_tid);
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        measuring.store(false, Ordering::Relaxed);
        let cpu1 = thread_cpu_ns(&server_tid);
        let elapsed = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let cpu = match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(Duration::from_nanos(b.saturating_sub(a))),
            _ => None,
        };
        (elapsed, cpu)
    });
    let (started, server_cpu) = started;
    drop(lat_tx);
    let mut lat: Vec<u32> = lat_rx.iter().flatten().collect();
    lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 - 1.0) * p) as usize]
        }
    };
    let answered = totals.answered.load(Ordering::Relaxed);
    let mut report = BTreeMap::new();
    report.insert("services", args.services.to_string());
    report.insert("in_flight", (args.sockets * args.window).to_string());
    report.insert("seconds", format!("{:.2}", started.as_secs_f64()));
    report.insert("answered", answered.to_string());
    report.insert(
        "qps",
        format!("{:.0}", answered as f64 / started.as_secs_f64()),
    );
    report.insert("p50_us", pct(0.50).to_string());
    report.insert("p99_us", pct(0.99).to_string());
    report.insert("p999_us", pct(0.999).to_string());
    report.insert(
        "bad_answers",
        totals.bad.load(Ordering::Relaxed).to_string(),
    );
    report.insert("lost", totals.lost.load(Ordering::Relaxed).to_string());
    if let Some(cpu) = server_cpu {
        report.insert("server_cpu_seconds", format!("{:.2}", cpu.as_secs_f64()));
        report.insert(
            "server_core_utilisation",
            format!("{:.0}%", 100.0 * cpu.as_secs_f64() / started.as_secs_f64()),
        );
        report.insert(
            "qps_per_server_cpu_second",
            format!("{:.0}", answered as f64 / cpu.as_secs_f64().max(1e-9)),
        );
    }
    report.insert("rss_before_server_kib", rss_before.to_string());
    report.insert("rss_idle_with_server_kib", rss_idle.to_string());
    for (k, v) in &report {
        println!("{k}: {v}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
