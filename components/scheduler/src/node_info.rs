//! What the scheduler knows about a pod to place ([`PodInfo`]) and about a node with the pods
//! already on it ([`NodeInfo`]).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, NodeAffinity, Pod, Toleration};

use crate::resources::{pod_requests, value, Resources, PODS};

/// A host port a pod uses: protocol, host IP (`0.0.0.0` for any) and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Host IP; `0.0.0.0` means every address.
    pub ip: String,
    /// Port number.
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports cannot be used at the same time on one node.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || is_any(&self.ip) || is_any(&other.ip))
    }
}

fn is_any(ip: &str) -> bool {
    ip.is_empty() || ip == "0.0.0.0" || ip == "::"
}

/// The parts of a pod that scheduling looks at, computed once per pod.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    /// `metadata.uid`.
    pub uid: String,
    /// Resource requests (Kubernetes' `PodRequests` rule).
    pub requests: Resources,
    /// CPU (milli) and memory (bytes) requests with scoring defaults for absent requests.
    pub nonzero_cpu: i64,
    /// See `nonzero_cpu`.
    pub nonzero_memory: i64,
    /// Host ports of all containers.
    pub ports: Vec<HostPort>,
    /// UID of the controlling owner (ReplicaSet, StatefulSet, …) for spreading.
    pub owner_uid: Option<String>,
    /// `spec.nodeName` when the pod names its node.
    pub node_name: Option<String>,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// `spec.affinity.nodeAffinity`.
    pub node_affinity: Option<NodeAffinity>,
    /// `spec.tolerations`.
    pub tolerations: Vec<Toleration>,
}

impl PodInfo {
    /// Extracts the scheduling-relevant parts of `pod`.
    pub fn new(pod: &Pod) -> PodInfo {
        let meta = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        let nonzero = pod_requests(pod, true);
        let ports = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .map(|p| HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip: p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                port: p.host_port.unwrap_or(0),
            })
            .collect();
        PodInfo {
            key: format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or("")
            ),
            uid: meta.uid.clone().unwrap_or_default(),
            requests: pod_requests(pod, false),
            nonzero_cpu: nonzero.milli_cpu,
            nonzero_memory: nonzero.memory,
            ports,
            owner_uid: kinit_rules::owners::controller_ref(meta).map(|o| o.uid.clone()),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            node_affinity: spec.affinity.and_then(|a| a.node_affinity),
            tolerations: spec.tolerations.unwrap_or_default(),
        }
    }
}

/// A node and the sum of what the pods bound to it use.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node object.
    pub node: Node,
    /// `metadata.name`.
    pub name: String,
    /// `status.allocatable` (or `capacity` when allocatable is absent).
    pub allocatable: Resources,
    /// How many pods the node accepts (`pods` in allocatable).
    pub allowed_pods: i64,
    /// Sum of the requests of the pods on the node.
    pub requested: Resources,
    /// Sum of the pods' CPU requests with scoring defaults.
    pub nonzero_cpu: i64,
    /// Sum of the pods' memory requests with scoring defaults.
    pub nonzero_memory: i64,
    /// Number of pods on the node.
    pub pod_count: i64,
    /// Host ports in use (one entry per pod port).
    pub used_ports: Vec<HostPort>,
    /// Pods on the node per controlling owner UID.
    pub owner_counts: HashMap<String, u32>,
}

impl NodeInfo {
    /// A node without pods.
    pub fn new(node: Node) -> NodeInfo {
        let mut info = NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            node: Node::default(),
            allocatable: Resources::default(),
            allowed_pods: 0,
            requested: Resources::default(),
            nonzero_cpu: 0,
            nonzero_memory: 0,
            pod_count: 0,
            used_ports: Vec::new(),
            owner_counts: HashMap::new(),
        };
        info.set_node(node);
        info
    }

    /// Replaces the node object (labels, taints, allocatable, …), keeping the pod accounting.
    pub fn set_node(&mut self, node: Node) {
        let status = node.status.clone().unwrap_or_default();
        let list = status
            .allocatable
            .filter(|a| !a.is_empty())
            .or(status.capacity)
            .unwrap_or_default();
        self.allocatable = Resources::from_list(&list);
        self.allowed_pods = list.get(PODS).map(value).unwrap_or(0);
        self.node = node;
    }

    /// Accounts a pod bound to this node.
    pub fn add_pod(&mut self, pod: &PodInfo) {
        self.requested.add(&pod.requests);
        self.nonzero_cpu += pod.nonzero_cpu;
        self.nonzero_memory += pod.nonzero_memory;
        self.pod_count += 1;
        self.used_ports.extend(pod.ports.iter().cloned());
        if let Some(owner) = &pod.owner_uid {
            *self.owner_counts.entry(owner.clone()).or_default() += 1;
        }
    }

    /// Reverses [`NodeInfo::add_pod`].
    pub fn remove_pod(&mut self, pod: &PodInfo) {
        self.requested.sub(&pod.requests);
        self.nonzero_cpu -= pod.nonzero_cpu;
        self.nonzero_memory -= pod.nonzero_memory;
        self.pod_count -= 1;
        for port in &pod.ports {
            if let Some(i) = self.used_ports.iter().position(|p| p == port) {
                self.used_ports.swap_remove(i);
            }
        }
        if let Some(owner) = &pod.owner_uid {
            if let Some(n) = self.owner_counts.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    self.owner_counts.remove(owner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{node, pod};

    #[test]
    fn host_port_conflicts() {
        let p = |ip: &str, port, proto: &str| HostPort {
            protocol: proto.into(),
            ip: ip.into(),
            port,
        };
        assert!(p("0.0.0.0", 80, "TCP").conflicts(&p("10.0.0.1", 80, "TCP")));
        assert!(p("10.0.0.1", 80, "TCP").conflicts(&p("10.0.0.1", 80, "TCP")));
        assert!(!p("10.0.0.1", 80, "TCP").conflicts(&p("10.0.0.2", 80, "TCP")));
        assert!(!p("0.0.0.0", 80, "TCP").conflicts(&p("0.0.0.0", 80, "UDP")));
        assert!(!p("0.0.0.0", 80, "TCP").conflicts(&p("0.0.0.0", 81, "TCP")));
    }

    #[test]
    fn add_and_remove_pods_is_symmetric() {
        let mut n = NodeInfo::new(node("n1").cpu("4").memory("8Gi").pods(110).build());
        assert_eq!(n.allocatable.milli_cpu, 4000);
        assert_eq!(n.allowed_pods, 110);
        let p = PodInfo::new(&pod("p").cpu("500m").host_port(8080).owner("rs-uid").build());
        n.add_pod(&p);
        n.add_pod(&p);
        assert_eq!(n.requested.milli_cpu, 1000);
        assert_eq!(n.pod_count, 2);
        assert_eq!(n.owner_counts["rs-uid"], 2);
        assert_eq!(
            n.nonzero_memory,
            2 * crate::resources::DEFAULT_MEMORY_REQUEST
        );
        n.remove_pod(&p);
        n.remove_pod(&p);
        assert_eq!(n.requested, Resources::default());
        assert_eq!(n.pod_count, 0);
        assert!(n.used_ports.is_empty());
        assert!(n.owner_counts.is_empty());
    }
}
