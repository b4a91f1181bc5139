//! Resource quantities and the requests a pod adds to a node, with Kubernetes' rules.
//!
//! Quantities are parsed exactly by `kinit_rules::quantity` (shared with the agent), rounding up
//! like `Quantity.MilliValue()` / `Value()`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Resource name for CPU.
pub const CPU: &str = "cpu";
/// Resource name for memory.
pub const MEMORY: &str = "memory";
/// Resource name for ephemeral storage.
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
/// Resource name for the pod count on a node.
pub const PODS: &str = "pods";

/// CPU assumed for a container without a CPU request when scoring (kube-scheduler's 100m).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory assumed for a container without a memory request when scoring (200Mi).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

pub use kinit_rules::quantity::{milli_value, parse_milli, value};

/// An amount of each resource: CPU in millicores, everything else in whole units (bytes, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Extended and other scalar resources (e.g. `nvidia.com/gpu`, `hugepages-2Mi`).
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a resource list (requests, allocatable, overhead). `pods` is not part of it.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list {
            r.set(name, q);
        }
        r
    }

    fn set(&mut self, name: &str, q: &Quantity) {
        match name {
            CPU => self.milli_cpu = milli_value(q),
            MEMORY => self.memory = value(q),
            EPHEMERAL_STORAGE => self.ephemeral_storage = value(q),
            PODS => {}
            other => {
                self.scalar.insert(other.to_string(), value(q));
            }
        }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    /// Subtracts `other` from `self`, dropping scalar entries that reach zero.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e -= v;
            if *e == 0 {
                self.scalar.remove(k);
            }
        }
    }

    /// Per-resource maximum of `self` and `other`.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// A container's effective requests: `requests`, or `limits` where a request is missing (the API
/// server's defaulting does the same). With `nonzero`, absent CPU/memory requests count as the
/// scoring defaults.
fn container_requests(c: &Container, nonzero: bool) -> Resources {
    let mut merged: BTreeMap<String, Quantity> = BTreeMap::new();
    if let Some(res) = &c.resources {
        if let Some(limits) = &res.limits {
            merged.extend(limits.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let Some(requests) = &res.requests {
            merged.extend(requests.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let mut r = Resources::from_list(&merged);
    if nonzero {
        if !merged.contains_key(CPU) {
            r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if !merged.contains_key(MEMORY) {
            r.memory = DEFAULT_MEMORY_REQUEST;
        }
    }
    r
}

/// What a pod asks of a node, computed like Kubernetes' `PodRequests`: the sum of the app
/// containers and restartable init containers (sidecars), or the largest init container step if
/// larger (each plain init container runs next to the sidecars started before it), plus the pod
/// overhead. With `nonzero`, containers without CPU/memory requests count the scoring defaults.
pub fn pod_requests(pod: &Pod, nonzero: bool) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c, nonzero));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let mut step = container_requests(c, nonzero);
        if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&step);
            sidecars.add(&step);
            step = sidecars.clone();
        } else {
            step.add(&sidecars);
        }
        init_max.max_with(&step);
    }
    reqs.max_with(&init_max);
    if let Some(overhead) = &spec.overhead {
        reqs.add(&Resources::from_list(overhead));
    }
    reqs
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    fn container(name: &str, cpu: Option<&str>, mem: Option<&str>, always: bool) -> Container {
        let mut req = BTreeMap::new();
        if let Some(c) = cpu {
            req.insert(CPU.to_string(), q(c));
        }
        if let Some(m) = mem {
            req.insert(MEMORY.to_string(), q(m));
        }
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements {
                requests: Some(req),
                ..Default::default()
            }),
            restart_policy: always.then(|| "Always".to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn init_containers_use_the_max_rule() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![
                    container("a", Some("100m"), Some("100Mi"), false),
                    container("b", Some("200m"), Some("100Mi"), false),
                ],
                init_containers: Some(vec![
                    container("i1", Some("1"), Some("10Mi"), false),
                    container("i2", Some("100m"), Some("500Mi"), false),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = pod_requests(&pod, false);
        assert_eq!(r.milli_cpu, 1000);
        assert_eq!(r.memory, 500 * 1024 * 1024);
    }

    #[test]
    fn sidecars_add_to_the_total_and_to_later_init_steps() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container("app", Some("100m"), None, false)],
                init_containers: Some(vec![
                    container("sidecar", Some("200m"), None, true),
                    container("init", Some("250m"), None, false),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        // app + sidecar = 300m; init step = 250m + sidecar 200m = 450m
        assert_eq!(pod_requests(&pod, false).milli_cpu, 450);
    }

    #[test]
    fn limits_default_requests_and_overhead_is_added() {
        let mut c = container("a", None, None, false);
        c.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(CPU.to_string(), q("500m"))])),
            ..Default::default()
        });
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![c],
                overhead: Some(BTreeMap::from([(CPU.to_string(), q("50m"))])),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_requests(&pod, false).milli_cpu, 550);
        let nz = pod_requests(&pod, true);
        assert_eq!(nz.milli_cpu, 550);
        assert_eq!(nz.memory, DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn scalar_resources_add_and_subtract() {
        let mut a = Resources::from_list(&BTreeMap::from([
            ("nvidia.com/gpu".to_string(), q("2")),
            (PODS.to_string(), q("110")),
        ]));
        assert_eq!(a.scalar.get("nvidia.com/gpu"), Some(&2));
        assert!(!a.scalar.contains_key(PODS));
        let b = a.clone();
        a.add(&b);
        assert_eq!(a.scalar["nvidia.com/gpu"], 4);
        a.sub(&b);
        a.sub(&b);
        assert!(a.scalar.is_empty());
    }
}
