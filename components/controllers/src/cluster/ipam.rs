//! Node IPAM (`--allocate-node-cidrs`): gives every Node a `spec.podCIDR`/`spec.podCIDRs` carved
//! from the cluster CIDR(s). Allocations live on the Node objects themselves, so they survive
//! restarts: the controller only allocates after it has seen every existing node, and a node's
//! range becomes free again when the node is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{ClusterControllerError, ReconcileError};
use crate::informer::Informers;

/// Hands out fixed-size subnets of one cluster CIDR.
#[derive(Debug, Clone)]
pub struct CidrAllocator {
    cluster: IpNet,
    mask: u8,
    used: BTreeSet<IpNet>,
}

impl CidrAllocator {
    /// An allocator of `/mask` subnets of `cluster`; the mask must be longer than the cluster
    /// prefix and fit the family.
    pub fn new(cluster: IpNet, mask: u8) -> Result<CidrAllocator, ClusterControllerError> {
        let max = match cluster {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        };
        if mask <= cluster.prefix_len() || mask > max {
            return Err(ClusterControllerError::InvalidNodeMask {
                cidr: cluster,
                mask,
                max,
            });
        }
        Ok(CidrAllocator {
            cluster: cluster.trunc(),
            mask,
            used: BTreeSet::new(),
        })
    }

    /// The cluster CIDR.
    pub fn cluster(&self) -> IpNet {
        self.cluster
    }

    /// Whether `cidr` is one of this allocator's subnets.
    pub fn owns(&self, cidr: &IpNet) -> bool {
        cidr.prefix_len() == self.mask && self.cluster.contains(cidr)
    }

    /// Marks `cidr` used (an existing node's range); ranges of other networks are ignored.
    pub fn occupy(&mut self, cidr: IpNet) -> bool {
        self.owns(&cidr) && self.used.insert(cidr.trunc())
    }

    /// Frees `cidr`.
    pub fn release(&mut self, cidr: &IpNet) {
        self.used.remove(&cidr.trunc());
    }

    /// The first free subnet, now marked used; `None` when the range is exhausted.
    pub fn allocate(&mut self) -> Option<IpNet> {
        let free = self
            .cluster
            .subnets(self.mask)
            .ok()?
            .find(|s| !self.used.contains(s))?;
        self.used.insert(free);
        Some(free)
    }

    /// Number of used subnets.
    pub fn used(&self) -> usize {
        self.used.len()
    }
}

/// One allocator per IP family (dual stack gets one range of each).
#[derive(Debug, Clone)]
pub struct MultiAllocator {
    allocators: Vec<CidrAllocator>,
}

impl MultiAllocator {
    /// Allocators for `cidrs` (at most one per family) with the family's mask size.
    pub fn new(
        cidrs: &[IpNet],
        mask_v4: u8,
        mask_v6: u8,
    ) -> Result<MultiAllocator, ClusterControllerError> {
        if cidrs.is_empty() {
            return Err(ClusterControllerError::MissingClusterCidr);
        }
        let mut allocators: Vec<CidrAllocator> = Vec::new();
        for cidr in cidrs {
            if let Some(other) = allocators.iter().find(|a| {
                matches!(
                    (a.cluster, cidr),
                    (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
                )
            }) {
                return Err(ClusterControllerError::DuplicateFamily {
                    family: if matches!(cidr, IpNet::V4(_)) {
                        "IPv4"
                    } else {
                        "IPv6"
                    },
                    first: other.cluster,
                    second: *cidr,
                });
            }
            let mask = if matches!(cidr, IpNet::V4(_)) {
                mask_v4
            } else {
                mask_v6
            };
            allocators.push(CidrAllocator::new(*cidr, mask)?);
        }
        Ok(MultiAllocator { allocators })
    }

    /// Recomputes the used set from the nodes' current `podCIDRs` plus `reserved` ranges.
    fn rebuild<'a>(&mut self, in_use: impl Iterator<Item = &'a IpNet>) {
        for a in &mut self.allocators {
            a.used.clear();
        }
        for cidr in in_use {
            for a in &mut self.allocators {
                a.occupy(*cidr);
            }
        }
    }

    /// One range per family, in the order the cluster CIDRs were given; releases what it took
    /// when one family is exhausted.
    pub fn allocate(&mut self) -> Option<Vec<IpNet>> {
        let mut out = Vec::new();
        for i in 0..self.allocators.len() {
            match self.allocators[i].allocate() {
                Some(c) => out.push(c),
                None => {
                    for (j, c) in out.iter().enumerate() {
                        self.allocators[j].release(c);
                    }
                    return None;
                }
            }
        }
        Some(out)
    }
}

fn node_cidrs(node: &Node) -> Vec<IpNet> {
    let spec = node.spec.as_ref();
    let mut list: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if list.is_empty() {
        if let Some(c) = spec.and_then(|s| s.pod_cidr.clone()) {
            list.push(c);
        }
    }
    list.iter().filter_map(|c| c.parse().ok()).collect()
}

struct Ctx {
    client: Client,
    nodes: Store<Node>,
    state: Mutex<IpamState>,
}

struct IpamState {
    allocator: MultiAllocator,
    /// Ranges given to nodes whose update the store has not shown yet.
    reserved: BTreeMap<String, Vec<IpNet>>,
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if !node_cidrs(&node).is_empty() || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = node.name_any();
    let cidrs = {
        let mut state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        let nodes = ctx.nodes.state();
        // Reservations end once the store shows the node with ranges, or without the node.
        state.reserved.retain(|n, _| {
            nodes
                .iter()
                .find(|x| x.name_any() == *n)
                .is_some_and(|x| node_cidrs(x).is_empty())
        });
        if let Some(r) = state.reserved.get(&name) {
            r.clone()
        } else {
            let used: Vec<IpNet> = nodes
                .iter()
                .flat_map(|n| node_cidrs(n))
                .chain(state.reserved.values().flatten().copied())
                .collect();
            state.allocator.rebuild(used.iter());
            let Some(cidrs) = state.allocator.allocate() else {
                return Err(ReconcileError::Invalid(format!(
                    "no free pod CIDR left for node {name}; widen --cluster-cidr or lengthen --node-cidr-mask-size"
                )));
            };
            state.reserved.insert(name.clone(), cidrs.clone());
            cidrs
        }
    };
    let strings: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    let patch = json!({
        "metadata": {"resourceVersion": node.resource_version()},
        "spec": {"podCIDR": strings[0], "podCIDRs": strings},
    });
    let api: Api<Node> = Api::all(ctx.client.clone());
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(node = %name, pod_cidrs = ?strings, "allocated pod CIDR");
            Ok(Action::await_change())
        }
        Err(e) => {
            // The node changed or went away: forget the reservation and look again.
            ctx.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reserved
                .remove(&name);
            Err(ReconcileError::Kube {
                action: format!("setting spec.podCIDRs of node {name}"),
                source: e,
            })
        }
    }
}

fn error_policy(node: Arc<Node>, error: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(node = %node.name_any(), %error, "pod CIDR allocation failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Sets node IPAM up on the shared Node informer and returns the future that runs it until
/// dropped.
pub fn run(
    informers: &mut Informers,
    allocator: MultiAllocator,
) -> impl Future<Output = Result<(), ClusterControllerError>> + Send + 'static {
    let client = informers.client().clone();
    let nodes = informers.get::<Node>();
    let controller = Controller::for_stream(nodes.objects(), nodes.store());
    let ctx = Arc::new(Ctx {
        client,
        nodes: nodes.store(),
        state: Mutex::new(IpamState {
            allocator,
            reserved: BTreeMap::new(),
        }),
    });
    // The applier waits for the initial node list before the first reconcile, so existing
    // allocations are known before anything new is handed out.
    async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "node ipam controller event");
                }
            })
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_distinct_subnets_in_order_and_reuses_released() {
        let mut a = CidrAllocator::new(net("10.244.0.0/16"), 24).unwrap();
        assert_eq!(a.allocate(), Some(net("10.244.0.0/24")));
        assert_eq!(a.allocate(), Some(net("10.244.1.0/24")));
        a.release(&net("10.244.0.0/24"));
        assert_eq!(a.allocate(), Some(net("10.244.0.0/24")));
        assert_eq!(a.allocate(), Some(net("10.244.2.0/24")));
        assert_eq!(a.used(), 3);
    }

    #[test]
    fn existing_allocations_are_skipped() {
        let mut a = CidrAllocator::new(net("10.244.0.0/16"), 24).unwrap();
        assert!(a.occupy(net("10.244.0.0/24")));
        assert!(!a.occupy(net("10.245.0.0/24")), "outside the cluster CIDR");
        assert!(!a.occupy(net("10.244.3.0/25")), "other mask size");
        assert_eq!(a.allocate(), Some(net("10.244.1.0/24")));
    }

    #[test]
    fn exhaustion_and_bad_masks() {
        let mut a = CidrAllocator::new(net("10.0.0.0/30"), 31).unwrap();
        assert!(a.allocate().is_some());
        assert!(a.allocate().is_some());
        assert_eq!(a.allocate(), None);
        assert!(CidrAllocator::new(net("10.0.0.0/24"), 24).is_err());
        assert!(CidrAllocator::new(net("10.0.0.0/24"), 33).is_err());
    }

    #[test]
    fn dual_stack_gets_one_range_per_family() {
        let mut m =
            MultiAllocator::new(&[net("10.244.0.0/16"), net("fd00:10::/56")], 24, 64).unwrap();
        let got = m.allocate().unwrap();
        assert_eq!(got, vec![net("10.244.0.0/24"), net("fd00:10::/64")]);
        m.rebuild([net("10.244.0.0/24"), net("10.244.1.0/24")].iter());
        assert_eq!(m.allocate().unwrap()[0], net("10.244.2.0/24"));
        assert!(MultiAllocator::new(&[net("10.0.0.0/8"), net("10.1.0.0/16")], 24, 64).is_err());
        assert!(MultiAllocator::new(&[], 24, 64).is_err());
    }
}
