//! Latency of the service proxy at scale, in a private network namespace (run as root):
//! `kinit-proxy-bench [SERVICES] [ENDPOINTS] [CHANGES]` (default 1000 × 10, 200 changes).
//!
//! It programs SERVICES Services with ENDPOINTS ready endpoints each (initial full sync),
//! then makes CHANGES single-endpoint changes one at a time and measures, for each, the
//! time from handing the changed EndpointSlice to the engine to the committed nft
//! transaction. As a baseline in the same run it measures a full resync for one change (the
//! table rebuilt in place in one transaction), and it times the tamper check and the
//! deferred deletion of stale chains.
//!
//! The process enters its own network namespace `kpxbench-<pid>` first, so nft runs there
//! directly (as in the agent) and the machine's namespace is never touched.

use std::os::fd::AsFd;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kinit_proxy::{ConntrackCleanup, Engine, ProxyConfig, SyncKind};
use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let services = args.first().copied().unwrap_or(1000).max(1);
    let endpoints = args.get(1).copied().unwrap_or(10).clamp(1, 200);
    let changes = args.get(2).copied().unwrap_or(200).max(1);
    if services > 250 * 250 {
        eprintln!("at most 62500 services");
        return ExitCode::FAILURE;
    }
    let netns = format!("kpxbench-{}", std::process::id());
    let created = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .is_ok_and(|s| s.success());
    if !created {
        eprintln!("cannot create network namespace {netns}: run as root with iproute2 installed");
        return ExitCode::FAILURE;
    }
    let result = run(&netns, services, endpoints, changes);
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("valid Service")
}

fn slice(i: usize, hosts: &[usize]) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = hosts
        .iter()
        .map(|h| {
            json!({"addresses": [format!("10.{}.{}.{}", 100 + i / 250, i % 250, h)],
                        "nodeName": "bench", "conditions": {"ready": true}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-1"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .expect("valid EndpointSlice")
}

fn run(netns: &str, services: usize, endpoints: usize, changes: usize) -> Result<(), String> {
    let file = std::fs::File::open(format!("/var/run/netns/{netns}")).map_err(|e| e.to_string())?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| e.to_string())?;

    let config = ProxyConfig {
        node_name: "bench".into(),
        cluster_cidrs: vec!["10.100.0.0/14".parse().expect("CIDR")],
        conntrack: ConntrackCleanup::Netlink { netns: None },
        stale_chain_grace: Duration::ZERO,
        ..Default::default()
    };
    let mut engine = Engine::new(&config).map_err(|e| e.to_string())?;
    let mut hosts: Vec<Vec<usize>> = (0..services).map(|_| (1..=endpoints).collect()).collect();
    for (i, h) in hosts.iter().enumerate() {
        engine.upsert_service(service(i));
        engine.upsert_slice(slice(i, h));
    }
    let t = Instant::now();
    let initial = engine.sync().map_err(|e| e.to_string())?;
    let initial_time = t.elapsed();
    println!(
        "initial full sync: {services} services x {endpoints} endpoints, {} script lines, {:.0} ms",
        initial.script_lines,
        ms(initial_time)
    );

    let t = Instant::now();
    let check = engine.check_table().map_err(|e| e.to_string())?;
    let check_time = t.elapsed();
    if let Some(why) = check {
        return Err(format!("the fresh table does not match the model: {why}"));
    }
    let t = Instant::now();
    config
        .nft
        .list_table(&config.table)
        .map_err(|e| e.to_string())?;
    let listing_time = t.elapsed();
    println!(
        "tamper check (nft -j list table + compare by content): {:.0} ms (the listing alone: {:.0} ms)",
        ms(check_time),
        ms(listing_time)
    );

    let mut next_host = endpoints + 1;
    let mut change = |engine: &mut Engine, k: usize, hosts: &mut Vec<Vec<usize>>| {
        let i = (k * 7919) % services;
        let slot = k % endpoints;
        hosts[i][slot] = next_host;
        next_host = if next_host >= 250 {
            endpoints + 1
        } else {
            next_host + 1
        };
        engine.upsert_slice(slice(i, &hosts[i]));
    };

    let mut incremental = Vec::with_capacity(changes);
    let mut lines = Vec::with_capacity(changes);
    let mut stale = Vec::new();
    for k in 0..changes {
        let t = Instant::now();
        change(&mut engine, k, &mut hosts);
        let r = engine.sync().map_err(|e| e.to_string())?;
        incremental.push(t.elapsed());
        if r.kind != SyncKind::Incremental {
            return Err(format!("change {k} was applied as {:?}", r.kind));
        }
        lines.push(r.script_lines);
        if k % 10 == 9 {
            let t = Instant::now();
            let n = engine.delete_stale_chains().map_err(|e| e.to_string())?;
            stale.push((t.elapsed(), n));
        }
    }
    let baseline_runs = (changes / 20).clamp(3, 10);
    let mut full = Vec::with_capacity(baseline_runs);
    for k in 0..baseline_runs {
        let t = Instant::now();
        change(&mut engine, changes + k, &mut hosts);
        engine.request_full_resync();
        let r = engine.sync().map_err(|e| e.to_string())?;
        full.push(t.elapsed());
        if r.kind != SyncKind::Full {
            return Err("baseline did not rewrite the table".into());
        }
    }
    if let Some(why) = engine.check_table().map_err(|e| e.to_string())? {
        return Err(format!("the table drifted from the model: {why}"));
    }

    lines.sort();
    println!(
        "single-endpoint change -> committed transaction (incremental): {}; script lines p50 {}",
        summary(&mut incremental),
        lines[lines.len() / 2]
    );
    println!(
        "single-endpoint change as full-table rewrite (baseline): {}",
        summary(&mut full)
    );
    let p50_inc = percentile(&incremental, 0.50);
    let p50_full = percentile(&full, 0.50);
    println!(
        "full rewrite / incremental (p50): {:.1}x",
        p50_full.as_secs_f64() / p50_inc.as_secs_f64().max(1e-9)
    );
    if !stale.is_empty() {
        let mut times: Vec<Duration> = stale.iter().map(|(t, _)| *t).collect();
        let chains: usize = stale.iter().map(|(_, n)| n).sum();
        println!(
            "stale chain deletion ({chains} chains in {} batches): {}",
            stale.len(),
            summary(&mut times)
        );
    }
    let p99 = percentile(&incremental, 0.99);
    println!(
        "goal p99 <= 1000 ms for one endpoint change: {}",
        if p99 <= Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "n={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        samples.len(),
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.99)),
        ms(percentile(samples, 1.0))
    )
}
