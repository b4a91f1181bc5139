//! ClusterIP and NodePort allocation for Services, persisted in the store: each allocated
//! address or port is a key (`/registry/kinit/serviceips/<ip>`, `/registry/kinit/servicenodeports/<port>`)
//! created atomically, so two API servers on one store never hand out the same one.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use kinit_store::{Store, StoreError};
use rand::Rng;
use serde_json::{json, Value};

use crate::error::{ApiError, Cause};
use crate::objects::Objects;

const IP_PREFIX: &str = "/registry/kinit/serviceips/";
const PORT_PREFIX: &str = "/registry/kinit/servicenodeports/";

/// Allocates service ClusterIPs and NodePorts.
#[derive(Clone)]
pub struct ServiceAllocator {
    objects: Objects,
    range: IpNet,
    node_ports: (u16, u16),
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::internal(format!("service allocation storage error: {e}"))
}

impl ServiceAllocator {
    /// An allocator over `range` (IPv4 or IPv6) and the NodePort range `node_ports` (inclusive).
    pub fn new(store: Arc<dyn Store>, range: IpNet, node_ports: (u16, u16)) -> Self {
        ServiceAllocator {
            objects: Objects { store },
            range: range.trunc(),
            node_ports,
        }
    }

    /// The first usable address (the `kubernetes` service's ClusterIP).
    pub fn first_ip(&self) -> IpAddr {
        self.nth(1)
    }

    fn size(&self) -> u128 {
        let bits = match self.range {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        } - u32::from(self.range.prefix_len());
        if bits >= 127 {
            u128::MAX / 2
        } else {
            1u128 << bits
        }
    }

    fn nth(&self, n: u128) -> IpAddr {
        match self.range {
            IpNet::V4(net) => IpAddr::V4((u32::from(net.network()).wrapping_add(n as u32)).into()),
            IpNet::V6(net) => IpAddr::V6((u128::from(net.network()).wrapping_add(n)).into()),
        }
    }

    async fn used(&self, prefix: &str) -> Result<HashSet<String>, ApiError> {
        let keys = self.objects.keys(prefix).await.map_err(store_err)?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(prefix).map(String::from))
            .collect())
    }

    async fn claim(&self, key: String, owner: &str) -> Result<bool, ApiError> {
        self.objects
            .claim(
                &key,
                serde_json::to_vec(&json!({"owner": owner})).unwrap_or_default(),
            )
            .await
            .map_err(store_err)
    }

    async fn release_key(&self, key: &str) -> Result<(), ApiError> {
        self.objects.release(key).await.map_err(store_err)
    }

    /// Reserves `ip` for `owner` (`namespace/name`); 422 when outside the range or taken.
    pub async fn reserve_ip(&self, ip: &str, owner: &str) -> Result<(), ApiError> {
        if !self.claim_ip(ip, owner).await? {
            return Err(invalid_ip(owner, ip, "provided IP is already allocated"));
        }
        Ok(())
    }

    /// Claims `ip` for `owner` when free: false when it is taken already, 422 when it is
    /// outside the range.
    pub async fn claim_ip(&self, ip: &str, owner: &str) -> Result<bool, ApiError> {
        let parsed: IpAddr = ip
            .parse()
            .map_err(|_| invalid_ip(owner, ip, "must be a valid IP address"))?;
        if !self.range.contains(&parsed)
            || parsed == self.range.network()
            || parsed == self.range.broadcast() && matches!(self.range, IpNet::V4(_))
        {
            return Err(invalid_ip(
                owner,
                ip,
                &format!(
                    "provided IP is not in the valid range. The range of valid IPs is {}",
                    self.range
                ),
            ));
        }
        self.claim(format!("{IP_PREFIX}{parsed}"), owner).await
    }

    /// Allocates a free ClusterIP for `owner`.
    pub async fn allocate_ip(&self, owner: &str) -> Result<String, ApiError> {
        let used = self.used(IP_PREFIX).await?;
        let size = self.size();
        let usable = size.saturating_sub(2).max(1);
        let start: u128 = rand::rng().random_range(0..usable.min(u128::from(u64::MAX)));
        let limit = usable.min(1 << 20);
        for i in 0..limit {
            let n = 2 + (start + i) % usable; // skip the network address and the kubernetes IP
            if n >= size - 1 && matches!(self.range, IpNet::V4(_)) {
                continue;
            }
            let ip = self.nth(n).to_string();
            if used.contains(&ip) {
                continue;
            }
            if self.claim(format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!(
            "failed to allocate a serviceIP: range {} is full; delete services or use a larger --service-cluster-ip-range",
            self.range
        )))
    }

    /// Releases a ClusterIP.
    pub async fn release_ip(&self, ip: &str) -> Result<(), ApiError> {
        self.release_key(&format!("{IP_PREFIX}{ip}")).await
    }

    /// Reserves a specific NodePort.
    pub async fn reserve_port(&self, port: u16, owner: &str, field: &str) -> Result<(), ApiError> {
        if port < self.node_ports.0 || port > self.node_ports.1 {
            let name = owner.rsplit('/').next().unwrap_or(owner);
            return Err(ApiError::invalid("", "Service", name, vec![Cause::invalid(field, port, &format!("provided port is not in the valid range. The range of valid ports is {}-{}", self.node_ports.0, self.node_ports.1))]));
        }
        if !self.claim(format!("{PORT_PREFIX}{port}"), owner).await? {
            let name = owner.rsplit('/').next().unwrap_or(owner);
            return Err(ApiError::invalid(
                "",
                "Service",
                name,
                vec![Cause::invalid(
                    field,
                    port,
                    "provided port is already allocated",
                )],
            ));
        }
        Ok(())
    }

    /// Allocates a free NodePort.
    pub async fn allocate_port(&self, owner: &str) -> Result<u16, ApiError> {
        let used = self.used(PORT_PREFIX).await?;
        let span = u32::from(self.node_ports.1 - self.node_ports.0) + 1;
        let start = rand::rng().random_range(0..span);
        for i in 0..span {
            let port = self.node_ports.0 + ((start + i) % span) as u16;
            if used.contains(&port.to_string()) {
                continue;
            }
            if self.claim(format!("{PORT_PREFIX}{port}"), owner).await? {
                return Ok(port);
            }
        }
        Err(ApiError::internal(
            "failed to allocate a nodePort: the range is full",
        ))
    }

    /// Releases a NodePort.
    pub async fn release_port(&self, port: u16) -> Result<(), ApiError> {
        self.release_key(&format!("{PORT_PREFIX}{port}")).await
    }

    /// Fills in ClusterIP and NodePorts of a new service (`svc` is defaulted and valid).
    /// Returns what was allocated so a failed create can release it.
    pub async fn allocate_for(&self, svc: &mut Value, owner: &str) -> Result<Allocated, ApiError> {
        let mut allocated = Allocated::default();
        let result = self.allocate_inner(svc, owner, &mut allocated, None).await;
        if let Err(e) = result {
            self.release(&allocated).await;
            return Err(e);
        }
        Ok(allocated)
    }

    /// Carries allocations from `old` into `new` on update and allocates NodePorts the new spec
    /// needs; returns (newly allocated, no longer used).
    pub async fn reconcile_update(
        &self,
        new: &mut Value,
        old: &Value,
        owner: &str,
    ) -> Result<(Allocated, Allocated), ApiError> {
        let mut allocated = Allocated::default();
        if let Err(e) = self
            .allocate_inner(new, owner, &mut allocated, Some(old))
            .await
        {
            self.release(&allocated).await;
            return Err(e);
        }
        let now = service_allocations(new);
        let before = service_allocations(old);
        let freed = Allocated {
            ips: before
                .ips
                .into_iter()
                .filter(|i| !now.ips.contains(i))
                .collect(),
            ports: before
                .ports
                .into_iter()
                .filter(|p| !now.ports.contains(p))
                .collect(),
        };
        Ok((allocated, freed))
    }

    async fn allocate_inner(
        &self,
        svc: &mut Value,
        owner: &str,
        allocated: &mut Allocated,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let spec_type = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if spec_type == "ExternalName" {
            return Ok(());
        }
        let requested = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ip = if requested == "None" {
            "None".to_string()
        } else if !old_ip.is_empty() && (requested.is_empty() || requested == old_ip) {
            old_ip
        } else if requested.is_empty() {
            let ip = self.allocate_ip(owner).await?;
            allocated.ips.push(ip.clone());
            ip
        } else {
            self.reserve_ip(&requested, owner).await?;
            allocated.ips.push(requested.clone());
            requested
        };
        let spec = svc
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("service has no spec"))?;
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        if ip != "None" {
            let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
            spec.insert("ipFamilies".into(), json!([family]));
            spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        } else {
            spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
            spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        }
        let needs_node_ports = spec_type == "NodePort" || spec_type == "LoadBalancer";
        let old_ports: Vec<Value> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            // Explicit and kept node ports first, so an automatic pick never takes a port that
            // a later entry of the same service asks for.
            let mut automatic = Vec::new();
            for (i, p) in ports.iter_mut().enumerate() {
                let requested = p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) as u16;
                if !needs_node_ports {
                    if let Some(m) = p.as_object_mut() {
                        m.remove("nodePort");
                    }
                    continue;
                }
                let previous = old_ports
                    .iter()
                    .find(|o| {
                        o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol")
                    })
                    .and_then(|o| o.get("nodePort"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u16;
                let port = if requested != 0 && requested == previous {
                    requested
                } else if requested == 0 && previous != 0 {
                    previous
                } else if requested != 0 {
                    self.reserve_port(requested, owner, &format!("spec.ports[{i}].nodePort"))
                        .await?;
                    allocated.ports.push(requested);
                    requested
                } else {
                    automatic.push(i);
                    continue;
                };
                p["nodePort"] = json!(port);
            }
            for i in automatic {
                let port = self.allocate_port(owner).await?;
                allocated.ports.push(port);
                ports[i]["nodePort"] = json!(port);
            }
        }
        Ok(())
    }

    /// Releases allocations (best effort; failures are logged).
    pub async fn release(&self, allocated: &Allocated) {
        for ip in &allocated.ips {
            if let Err(e) = self.release_ip(ip).await {
                tracing::warn!("releasing service IP {ip}: {}", e.message);
            }
        }
        for port in &allocated.ports {
            if let Err(e) = self.release_port(*port).await {
                tracing::warn!("releasing node port {port}: {}", e.message);
            }
        }
    }
}

/// Addresses and ports held by one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocated {
    /// ClusterIPs.
    pub ips: Vec<String>,
    /// NodePorts.
    pub ports: Vec<u16>,
}

/// What a stored service holds.
pub fn service_allocations(svc: &Value) -> Allocated {
    let ip = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("");
    let ips = if ip.is_empty() || ip == "None" {
        Vec::new()
    } else {
        vec![ip.to_string()]
    };
    let ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                .map(|p| p as u16)
                .collect()
        })
        .unwrap_or_default();
    Allocated { ips, ports }
}

fn invalid_ip(owner: &str, ip: &str, why: &str) -> ApiError {
    let name = owner.rsplit('/').next().unwrap_or(owner);
    ApiError::invalid(
        "",
        "Service",
        name,
        vec![Cause::invalid("spec.clusterIPs", ip, why)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn allocator(range: &str) -> (tempfile::TempDir, ServiceAllocator) {
        let dir = tempfile::tempdir().unwrap();
        let store = kinit_store::EmbeddedStore::open(dir.path().join("s.redb"))
            .await
            .unwrap();
        (
            dir,
            ServiceAllocator::new(Arc::new(store), range.parse().unwrap(), (30000, 30002)),
        )
    }

    #[tokio::test]
    async fn cluster_ips_are_unique_and_released() {
        let (_dir, a) = allocator("10.96.0.0/29").await;
        assert_eq!(a.first_ip().to_string(), "10.96.0.1");
        a.reserve_ip("10.96.0.1", "default/kubernetes")
            .await
            .unwrap();
        let err = a
            .reserve_ip("10.96.0.1", "default/other")
            .await
            .unwrap_err();
        assert!(
            err.message.contains("provided IP is already allocated"),
            "{}",
            err.message
        );
        assert!(a
            .reserve_ip("10.97.0.1", "default/x")
            .await
            .unwrap_err()
            .message
            .contains("not in the valid range"));
        // .2 ..= .6 are allocatable in a /29 (network, .1 taken, broadcast excluded)
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(a.allocate_ip(&format!("default/s{i}")).await.unwrap());
        }
        got.sort();
        assert_eq!(
            got,
            [
                "10.96.0.2",
                "10.96.0.3",
                "10.96.0.4",
                "10.96.0.5",
                "10.96.0.6"
            ]
        );
        assert!(a.allocate_ip("default/full").await.is_err());
        a.release_ip("10.96.0.4").await.unwrap();
        assert_eq!(a.allocate_ip("default/again").await.unwrap(), "10.96.0.4");
    }

    #[tokio::test]
    async fn node_ports_for_nodeport_services() {
        let (_dir, a) = allocator("10.96.0.0/24").await;
        let mut svc = serde_json::json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP", "nodePort": 30002}]}});
        let allocated = a.allocate_for(&mut svc, "default/web").await.unwrap();
        assert_eq!(allocated.ips.len(), 1);
        assert_eq!(svc["spec"]["ports"][1]["nodePort"], 30002);
        let p0 = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=30001).contains(&p0));
        // switching to ClusterIP frees the node ports and keeps the IP
        let mut updated = svc.clone();
        updated["spec"]["type"] = serde_json::json!("ClusterIP");
        let (new, freed) = a
            .reconcile_update(&mut updated, &svc, "default/web")
            .await
            .unwrap();
        assert_eq!(new, Allocated::default());
        assert_eq!(freed.ports.len(), 2);
        assert_eq!(updated["spec"]["clusterIP"], svc["spec"]["clusterIP"]);
        assert!(updated["spec"]["ports"][0].get("nodePort").is_none());
    }
}
