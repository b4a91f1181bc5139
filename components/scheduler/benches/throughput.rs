//! Scheduling throughput of the pure path (filter + score + pick + account), no API calls:
//! 1000 pods of 10 ReplicaSets with mixed requests over 100 nodes (10 of them tainted, labels
//! for node selectors), each pod assumed onto its node before the next decision.
//! `cargo bench -p kinit-scheduler` prints the rate as elements (pods) per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use k8s_openapi::api::core::v1::{Node, Pod};
use kinit_scheduler::algorithm::Algorithm;
use kinit_scheduler::node_info::{NodeInfo, PodInfo};
use serde_json::json;

const NODES: usize = 100;
const PODS: usize = 1000;

fn nodes() -> Vec<NodeInfo> {
    (0..NODES)
        .map(|i| {
            let mut n = json!({
                "metadata": {"name": format!("node-{i}"), "labels": {
                    "kubernetes.io/hostname": format!("node-{i}"),
                    "zone": format!("zone-{}", i % 3),
                }},
                "spec": {},
                "status": {
                    "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}]
                }
            });
            if i % 10 == 0 {
                n["spec"]["taints"] =
                    json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
            }
            NodeInfo::new(serde_json::from_value::<Node>(n).unwrap())
        })
        .collect()
}

fn pods() -> Vec<Pod> {
    (0..PODS)
        .map(|i| {
            let mut p = json!({
                "metadata": {"name": format!("pod-{i}"), "namespace": "default", "uid": format!("u{i}"),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": format!("rs-{}", i % 10), "uid": format!("rs-{}", i % 10), "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "app", "resources": {"requests": {
                    "cpu": format!("{}m", 100 + (i % 5) * 50), "memory": format!("{}Mi", 64 + (i % 7) * 32)
                }}}]}
            });
            if i % 4 == 0 {
                p["spec"]["nodeSelector"] = json!({"zone": format!("zone-{}", i % 3)});
            }
            if i % 5 == 0 {
                p["spec"]["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["zone-1"]}]}}
                ]}});
            }
            serde_json::from_value(p).unwrap()
        })
        .collect()
}

fn schedule_all(pods: &[Pod], mut cluster: Vec<NodeInfo>) -> usize {
    let mut alg = Algorithm::new();
    let mut placed = 0;
    for pod in pods {
        let info = PodInfo::new(pod);
        if let Ok(i) = alg.schedule(&info, &cluster) {
            cluster[i].add_pod(&info);
            placed += 1;
        }
    }
    placed
}

fn bench(c: &mut Criterion) {
    let pods = pods();
    let cluster = nodes();
    assert_eq!(schedule_all(&pods, cluster.clone()), PODS);
    let mut group = c.benchmark_group("scheduling");
    group.throughput(Throughput::Elements(PODS as u64));
    group.sample_size(10);
    group.bench_function("1000 pods over 100 nodes", |b| {
        b.iter_batched(
            || cluster.clone(),
            |cl| schedule_all(&pods, cl),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
