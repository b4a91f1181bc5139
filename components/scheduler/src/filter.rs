//! Filters: whether a pod may run on a node at all. Each returns the reasons it failed, worded
//! like kube-scheduler's plugins so `kubectl describe pod` reads the same.

use k8s_openapi::api::core::v1::{Node, Taint};
pub use kinit_rules::tolerations::{tolerated, tolerates};

use crate::node_info::{NodeInfo, PodInfo};

/// Reason of the NodeUnschedulable filter.
pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
/// Reason of the NodeName filter.
pub const REASON_NODE_NAME: &str = "node(s) didn't match the requested node name";
/// Reason of the node readiness filter.
pub const REASON_NOT_READY: &str = "node(s) were not ready";
/// Reason of the NodeAffinity filter (node selector and required node affinity).
pub const REASON_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
/// Reason of the NodePorts filter.
pub const REASON_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
/// Reason of the resource fit filter when the node's pod count is exhausted.
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// Taint the node lifecycle controller puts on nodes that are not Ready.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint kube-scheduler treats `spec.unschedulable` as.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Runs every filter in kube-scheduler's order and stops at the first that fails, returning its
/// reasons (resource fit can report several, e.g. `Insufficient cpu` and `Insufficient memory`).
pub fn filter(pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
    let single = |r: Option<String>| r.map(|r| vec![r]);
    let failure = single(node_unschedulable(pod, &node.node))
        .or_else(|| single(node_name(pod, &node.name)))
        .or_else(|| single(node_ready(pod, &node.node)))
        .or_else(|| single(taint_toleration(pod, &node.node)))
        .or_else(|| single(node_affinity(pod, &node.node)))
        .or_else(|| single(node_ports(pod, node)))
        .or_else(|| {
            let r = resources_fit(pod, node);
            (!r.is_empty()).then_some(r)
        });
    match failure {
        Some(reasons) => Err(reasons),
        None => Ok(()),
    }
}

/// `spec.unschedulable` (cordoned) nodes only take pods tolerating
/// `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn node_unschedulable(pod: &PodInfo, node: &Node) -> Option<String> {
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let taint = Taint {
        key: TAINT_UNSCHEDULABLE.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    (cordoned && !tolerated(&pod.tolerations, &taint)).then(|| REASON_UNSCHEDULABLE.into())
}

/// A pod naming its node fits only there.
pub fn node_name(pod: &PodInfo, node_name: &str) -> Option<String> {
    match &pod.node_name {
        Some(n) if n != node_name => Some(REASON_NODE_NAME.into()),
        _ => None,
    }
}

/// Whether the node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Nodes whose Ready condition is not True only take pods that tolerate the
/// `node.kubernetes.io/not-ready:NoSchedule` taint (DaemonSet pods such as the CNI daemon, which
/// must land on a node before the node can become Ready).
pub fn node_ready(pod: &PodInfo, node: &Node) -> Option<String> {
    let taint = Taint {
        key: TAINT_NOT_READY.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    (!is_ready(node) && !tolerated(&pod.tolerations, &taint)).then(|| REASON_NOT_READY.into())
}

/// The node's taints.
pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

/// The first `NoSchedule`/`NoExecute` taint the pod does not tolerate, as
/// `node(s) had untolerated taint {key: value}`.
pub fn taint_toleration(pod: &PodInfo, node: &Node) -> Option<String> {
    kinit_rules::tolerations::first_untolerated(
        &pod.tolerations,
        taints(node),
        kinit_rules::tolerations::is_hard,
    )
    .map(|t| {
        format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or("")
        )
    })
}

/// `spec.nodeSelector` labels and the required node affinity terms must match the node.
pub fn node_affinity(pod: &PodInfo, node: &Node) -> Option<String> {
    (!matches_selector_and_required_affinity(pod, node)).then(|| REASON_AFFINITY.into())
}

/// Whether the node satisfies the pod's `nodeSelector` and
/// `requiredDuringSchedulingIgnoredDuringExecution` node affinity.
pub fn matches_selector_and_required_affinity(pod: &PodInfo, node: &Node) -> bool {
    kinit_rules::node_affinity::matches_selector_and_required_affinity(
        Some(&pod.node_selector),
        pod.node_affinity.as_ref(),
        node,
    )
}

/// Host ports the pod wants must be free on the node.
pub fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Option<String> {
    pod.ports
        .iter()
        .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)))
        .then(|| REASON_PORTS.into())
}

/// The pod's requests must fit into what is left of the node's allocatable resources: pod count,
/// CPU, memory, and ephemeral storage and extended resources when requested. Returns one
/// `Insufficient <resource>` (or `Too many pods`) per resource that does not fit.
pub fn resources_fit(pod: &PodInfo, node: &NodeInfo) -> Vec<String> {
    let mut reasons = Vec::new();
    if node.pod_count + 1 > node.allowed_pods {
        reasons.push(REASON_TOO_MANY_PODS.to_string());
    }
    let req = &pod.requests;
    let alloc = &node.allocatable;
    let used = &node.requested;
    let mut check = |name: &str, want: i64, alloc: i64, used: i64| {
        if want > 0 && want > alloc - used {
            reasons.push(format!("Insufficient {name}"));
        }
    };
    check("cpu", req.milli_cpu, alloc.milli_cpu, used.milli_cpu);
    check("memory", req.memory, alloc.memory, used.memory);
    check(
        "ephemeral-storage",
        req.ephemeral_storage,
        alloc.ephemeral_storage,
        used.ephemeral_storage,
    );
    for (name, want) in &req.scalar {
        check(
            name,
            *want,
            alloc.scalar.get(name).copied().unwrap_or(0),
            used.scalar.get(name).copied().unwrap_or(0),
        );
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{node, pod};
    use serde_json::json;

    fn info(p: &k8s_openapi::api::core::v1::Pod) -> PodInfo {
        PodInfo::new(p)
    }

    #[test]
    fn cordoned_nodes_reject_unless_tolerated() {
        let n = node("n").unschedulable().build();
        assert_eq!(
            node_unschedulable(&info(&pod("p").build()), &n).as_deref(),
            Some(REASON_UNSCHEDULABLE)
        );
        let tolerant = pod("p")
            .toleration(
                json!({"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}),
            )
            .build();
        assert_eq!(node_unschedulable(&info(&tolerant), &n), None);
        assert_eq!(
            node_unschedulable(&info(&pod("p").build()), &node("m").build()),
            None
        );
    }

    #[test]
    fn node_name_must_match() {
        let p = info(&pod("p").node_name("a").build());
        assert_eq!(node_name(&p, "a"), None);
        assert_eq!(node_name(&p, "b").as_deref(), Some(REASON_NODE_NAME));
        assert_eq!(node_name(&info(&pod("q").build()), "b"), None);
    }

    #[test]
    fn not_ready_nodes_take_only_pods_tolerating_not_ready() {
        let n = node("n").not_ready().build();
        assert_eq!(
            node_ready(&info(&pod("p").build()), &n).as_deref(),
            Some(REASON_NOT_READY)
        );
        let ds = pod("p").toleration(json!({"operator": "Exists"})).build();
        assert_eq!(node_ready(&info(&ds), &n), None);
        let ds2 = pod("p")
            .toleration(
                json!({"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute"}),
            )
            .build();
        assert_eq!(
            node_ready(&info(&ds2), &n).as_deref(),
            Some(REASON_NOT_READY),
            "a NoExecute-only toleration does not cover NoSchedule"
        );
        assert_eq!(
            node_ready(&info(&pod("p").build()), &node("m").build()),
            None
        );
    }

    #[test]
    fn untolerated_taints_are_reported_like_kubernetes() {
        let n = node("cp")
            .taint("node-role.kubernetes.io/control-plane", "", "NoSchedule")
            .build();
        assert_eq!(
            taint_toleration(&info(&pod("p").build()), &n).as_deref(),
            Some("node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }")
        );
        let soft = node("s").taint("a", "b", "PreferNoSchedule").build();
        assert_eq!(taint_toleration(&info(&pod("p").build()), &soft), None);
        let exec = node("e").taint("a", "b", "NoExecute").build();
        assert_eq!(
            taint_toleration(&info(&pod("p").build()), &exec).as_deref(),
            Some("node(s) had untolerated taint {a: b}")
        );
        let ok = pod("p")
            .toleration(json!({"key": "a", "value": "b", "effect": "NoExecute"}))
            .build();
        assert_eq!(taint_toleration(&info(&ok), &exec), None);
    }

    #[test]
    fn node_selector_must_match_all_labels() {
        let n = node("n").label("disk", "ssd").label("zone", "a").build();
        let ok = pod("p")
            .node_selector("disk", "ssd")
            .node_selector("zone", "a")
            .build();
        assert_eq!(node_affinity(&info(&ok), &n), None);
        let bad = pod("p").node_selector("disk", "hdd").build();
        assert_eq!(
            node_affinity(&info(&bad), &n).as_deref(),
            Some(REASON_AFFINITY)
        );
        let missing = pod("p").node_selector("gpu", "yes").build();
        assert!(node_affinity(&info(&missing), &n).is_some());
    }

    fn required(terms: serde_json::Value) -> PodInfo {
        info(&pod("p")
            .node_affinity(json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}))
            .build())
    }

    #[test]
    fn required_affinity_operators() {
        let n = node("n1").label("zone", "a").label("cores", "8").build();
        let expr = |op: &str, values: serde_json::Value, key: &str| {
            required(
                json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]),
            )
        };
        let fits = |p: PodInfo| node_affinity(&p, &n).is_none();
        assert!(fits(expr("In", json!(["a", "b"]), "zone")));
        assert!(!fits(expr("In", json!(["b"]), "zone")));
        assert!(!fits(expr("In", json!(["a"]), "absent")));
        assert!(fits(expr("NotIn", json!(["b"]), "zone")));
        assert!(!fits(expr("NotIn", json!(["a"]), "zone")));
        assert!(fits(expr("NotIn", json!(["a"]), "absent")));
        assert!(fits(expr("Exists", json!(null), "zone")));
        assert!(!fits(expr("Exists", json!(null), "absent")));
        assert!(fits(expr("DoesNotExist", json!(null), "absent")));
        assert!(!fits(expr("DoesNotExist", json!(null), "zone")));
        assert!(fits(expr("Gt", json!(["4"]), "cores")));
        assert!(!fits(expr("Gt", json!(["8"]), "cores")));
        assert!(fits(expr("Lt", json!(["9"]), "cores")));
        assert!(!fits(expr("Lt", json!(["8"]), "cores")));
        assert!(
            !fits(expr("Gt", json!(["x"]), "cores")),
            "non-numeric bound"
        );
        assert!(!fits(expr("Gt", json!(["1"]), "zone")), "non-numeric label");
        assert!(!fits(expr("Gt", json!(["1"]), "absent")));
        assert!(!fits(expr("Bogus", json!(["a"]), "zone")));
    }

    #[test]
    fn required_affinity_terms_are_ored_and_fields_match_the_name() {
        let n = node("n1").label("zone", "a").build();
        let p = required(json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
        ]));
        assert_eq!(node_affinity(&p, &n), None);
        let p = required(json!([
            {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}
        ]));
        assert!(node_affinity(&p, &n).is_some());
        // both parts of one term must hold
        let p = required(json!([{
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]
        }]));
        assert!(node_affinity(&p, &n).is_some());
        assert!(
            node_affinity(&required(json!([{}])), &n).is_some(),
            "empty term matches nothing"
        );
        assert!(
            node_affinity(&required(json!([])), &n).is_some(),
            "no terms match nothing"
        );
    }

    #[test]
    fn host_ports_must_be_free() {
        let mut n = NodeInfo::new(node("n").build());
        let p = info(&pod("p").host_port(80).build());
        assert_eq!(node_ports(&p, &n), None);
        n.add_pod(&p);
        assert_eq!(node_ports(&p, &n).as_deref(), Some(REASON_PORTS));
        assert_eq!(node_ports(&info(&pod("q").host_port(81).build()), &n), None);
    }

    #[test]
    fn resources_fit_reports_each_insufficient_resource() {
        let mut n = NodeInfo::new(node("n").cpu("1").memory("1Gi").pods(2).build());
        let small = info(&pod("a").cpu("600m").memory("600Mi").build());
        assert!(resources_fit(&small, &n).is_empty());
        n.add_pod(&small);
        assert_eq!(
            resources_fit(&small, &n),
            vec![
                "Insufficient cpu".to_string(),
                "Insufficient memory".to_string()
            ]
        );
        n.add_pod(&info(&pod("b").build()));
        assert_eq!(
            resources_fit(&info(&pod("c").build()), &n),
            vec![REASON_TOO_MANY_PODS.to_string()]
        );
    }

    #[test]
    fn ephemeral_storage_and_extended_resources_only_when_requested() {
        let n = NodeInfo::new(node("n").allocatable("ephemeral-storage", "10Gi").build());
        assert!(resources_fit(&info(&pod("a").build()), &n).is_empty());
        let big = info(&pod("a").request("ephemeral-storage", "20Gi").build());
        assert_eq!(
            resources_fit(&big, &n),
            vec!["Insufficient ephemeral-storage"]
        );
        let gpu = info(&pod("a").request("nvidia.com/gpu", "1").build());
        assert_eq!(resources_fit(&gpu, &n), vec!["Insufficient nvidia.com/gpu"]);
        let gpu_node = NodeInfo::new(node("g").allocatable("nvidia.com/gpu", "2").build());
        assert!(resources_fit(&gpu, &gpu_node).is_empty());
    }

    #[test]
    fn filter_stops_at_the_first_failing_plugin() {
        let n = NodeInfo::new(
            node("n")
                .cpu("100m")
                .taint("dedicated", "db", "NoSchedule")
                .build(),
        );
        let p = info(&pod("p").cpu("1").build());
        assert_eq!(
            filter(&p, &n).unwrap_err(),
            vec!["node(s) had untolerated taint {dedicated: db}".to_string()]
        );
        let ok = NodeInfo::new(node("m").build());
        assert!(filter(&p, &ok).is_ok());
    }
}
