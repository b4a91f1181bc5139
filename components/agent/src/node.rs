//! Node registration, node status (capacity, conditions, addresses, nodeInfo) and the
//! `kube-node-lease` heartbeat.

use kinit_rules::errors::is_conflict;
use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::config::Settings;
use crate::AgentError;
use kinit_rules::quantity;

/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration the agent claims (the node lifecycle controller's grace is 40 s).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Memory below which MemoryPressure is reported (kubelet's `memory.available<100Mi`).
pub const MEMORY_EVICTION_BYTES: i64 = 100 << 20;
/// Fraction of the root filesystem below which DiskPressure is reported.
pub const DISK_EVICTION_FRACTION: f64 = 0.10;

/// What the host offers, read from /proc and statvfs.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    /// Online CPUs.
    pub cpus: i64,
    /// MemTotal in bytes.
    pub memory_bytes: i64,
    /// MemAvailable in bytes.
    pub memory_available_bytes: i64,
    /// Size of the filesystem holding the agent's root dir.
    pub fs_bytes: i64,
    /// Free bytes on it (for unprivileged users).
    pub fs_available_bytes: i64,
    /// Running processes (for PIDPressure).
    pub pids: i64,
    /// `kernel.pid_max`.
    pub pid_max: i64,
    /// `uname -r`.
    pub kernel_version: String,
    /// `/etc/os-release` PRETTY_NAME.
    pub os_image: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// Boot id.
    pub boot_id: String,
    /// Host name.
    pub hostname: String,
}

impl HostInfo {
    /// Reads the host's resources; `fs_path` selects the filesystem for ephemeral storage.
    pub fn probe(fs_path: &Path) -> HostInfo {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let mem = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<i64>()
                        .ok()
                })
                .map(|kib| kib * 1024)
                .unwrap_or(0)
        };
        let (fs_bytes, fs_available_bytes) = statvfs(fs_path).unwrap_or((0, 0));
        let pids = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count() as i64
            })
            .unwrap_or(0);
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        HostInfo {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1),
            memory_bytes: mem("MemTotal:"),
            memory_available_bytes: mem("MemAvailable:"),
            fs_bytes,
            fs_available_bytes,
            pids,
            pid_max: read("/proc/sys/kernel/pid_max")
                .trim()
                .parse()
                .unwrap_or(32768),
            kernel_version: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os_image,
            machine_id: read("/etc/machine-id").trim().to_string(),
            boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_string(),
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        }
    }
}

fn statvfs(path: &Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = path;
    // The root dir may not exist yet: measure its closest existing ancestor.
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as i64;
    Some((st.f_blocks as i64 * frsize, st.f_bavail as i64 * frsize))
}

/// Runtime facts reported in `nodeInfo`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeFacts {
    /// `containerd://1.6.20`.
    pub version: String,
    /// Whether the runtime answered its last status call.
    pub ready: bool,
    /// Why not, when it is not.
    pub message: String,
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, now: &Time) -> NodeCondition {
    NodeCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Capacity and allocatable (capacity minus reserved minus eviction thresholds).
pub fn resources(
    settings: &Settings,
    host: &HostInfo,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let reserved = &settings.config.system_reserved;
    let r_cpu = reserved
        .cpu
        .as_deref()
        .and_then(quantity::parse_milli_value)
        .unwrap_or(0);
    let r_mem = reserved
        .memory
        .as_deref()
        .and_then(quantity::parse_value)
        .unwrap_or(0);
    let r_fs = reserved
        .ephemeral_storage
        .as_deref()
        .and_then(quantity::parse_value)
        .unwrap_or(0);
    let pods = settings.config.max_pods.to_string();
    let capacity = BTreeMap::from([
        ("cpu".to_string(), Quantity(host.cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", host.memory_bytes / 1024)),
        ),
        (
            "ephemeral-storage".to_string(),
            Quantity(host.fs_bytes.to_string()),
        ),
        ("pods".to_string(), Quantity(pods.clone())),
    ]);
    let cpu_alloc = (host.cpus * 1000 - r_cpu).max(0);
    let mem_alloc = (host.memory_bytes - r_mem - MEMORY_EVICTION_BYTES).max(0);
    let fs_alloc =
        (host.fs_bytes - r_fs - (host.fs_bytes as f64 * DISK_EVICTION_FRACTION) as i64).max(0);
    let allocatable = BTreeMap::from([
        ("cpu".to_string(), Quantity(format!("{cpu_alloc}m"))),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", mem_alloc / 1024)),
        ),
        (
            "ephemeral-storage".to_string(),
            Quantity(fs_alloc.to_string()),
        ),
        ("pods".to_string(), Quantity(pods)),
    ]);
    (capacity, allocatable)
}

/// The node's status as the agent sees it now.
pub fn node_status(settings: &Settings, host: &HostInfo, runtime: &RuntimeFacts) -> NodeStatus {
    let now = Time(jiff::Timestamp::now());
    let (capacity, allocatable) = resources(settings, host);
    let mem_pressure =
        host.memory_available_bytes > 0 && host.memory_available_bytes < MEMORY_EVICTION_BYTES;
    let disk_pressure = host.fs_bytes > 0
        && (host.fs_available_bytes as f64) < host.fs_bytes as f64 * DISK_EVICTION_FRACTION;
    let pid_pressure = host.pids as f64 > host.pid_max as f64 * 0.9;
    let mut addresses = Vec::new();
    if let Some(ip) = settings.node_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: settings.node_name.clone(),
    });
    NodeStatus {
        addresses: Some(addresses),
        allocatable: Some(allocatable),
        capacity: Some(capacity),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                mem_pressure,
                if mem_pressure {
                    "KubeletHasInsufficientMemory"
                } else {
                    "KubeletHasSufficientMemory"
                },
                if mem_pressure {
                    "agent has insufficient memory available"
                } else {
                    "agent has sufficient memory available"
                },
                &now,
            ),
            condition(
                "DiskPressure",
                disk_pressure,
                if disk_pressure {
                    "KubeletHasDiskPressure"
                } else {
                    "KubeletHasNoDiskPressure"
                },
                if disk_pressure {
                    "agent has disk pressure"
                } else {
                    "agent has no disk pressure"
                },
                &now,
            ),
            condition(
                "PIDPressure",
                pid_pressure,
                if pid_pressure {
                    "KubeletHasInsufficientPID"
                } else {
                    "KubeletHasSufficientPID"
                },
                if pid_pressure {
                    "agent has insufficient PID available"
                } else {
                    "agent has sufficient PID available"
                },
                &now,
            ),
            condition(
                "Ready",
                runtime.ready,
                if runtime.ready {
                    "KubeletReady"
                } else {
                    "KubeletNotReady"
                },
                if runtime.ready {
                    "agent is posting ready status"
                } else {
                    &runtime.message
                },
                &now,
            ),
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: settings.config.port as i32,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch().into(),
            boot_id: host.boot_id.clone(),
            container_runtime_version: runtime.version.clone(),
            kernel_version: host.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: format!("v1.33.0-kinit.{}", env!("CARGO_PKG_VERSION")),
            machine_id: host.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: host.os_image.clone(),
            system_uuid: host.machine_id.clone(),
            swap: None,
        }),
        ..Default::default()
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Labels the node carries: well-known ones plus the configured ones.
pub fn node_labels(settings: &Settings) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            "kubernetes.io/hostname".to_string(),
            settings.node_name.clone(),
        ),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), go_arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), go_arch().to_string()),
    ]);
    labels.extend(settings.config.node_labels.clone());
    labels
}

/// The Node object the agent registers.
pub fn node_object(settings: &Settings) -> Node {
    let taints = &settings.config.register_with_taints;
    Node {
        metadata: ObjectMeta {
            name: Some(settings.node_name.clone()),
            labels: Some(node_labels(settings)),
            annotations: Some(BTreeMap::from([(
                "node.alpha.kubernetes.io/ttl".to_string(),
                "0".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: settings.config.pod_cidr.clone(),
            pod_cidrs: settings.config.pod_cidr.clone().map(|c| vec![c]),
            taints: (!taints.is_empty()).then(|| taints.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

/// Creates the Node (with its taints) or, when it exists, merges our labels into it. Returns
/// the Node's uid (for the Lease's and mirror pods' owner references).
pub async fn register(client: &kube::Client, settings: &Settings) -> Result<String, AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let desired = node_object(settings);
    let node = match nodes.create(&PostParams::default(), &desired).await {
        Ok(node) => {
            tracing::info!(node = %settings.node_name, "registered the node");
            node
        }
        Err(e) if is_conflict(&e) => {
            let patch = json!({"metadata": {"labels": desired.metadata.labels}});
            nodes
                .patch(
                    &settings.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(|e| AgentError::api("updating the existing Node's labels", e))?
        }
        Err(e) => return Err(AgentError::api("registering the Node", e)),
    };
    Ok(node.metadata.uid.unwrap_or_default())
}

/// Patches the Node's status subresource.
pub async fn update_status(
    client: &kube::Client,
    name: &str,
    status: &NodeStatus,
) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .map_err(|e| AgentError::api("updating the node status", e))?;
    Ok(())
}

/// Creates or renews the node's Lease in `kube-node-lease`.
pub async fn renew_lease(
    client: &kube::Client,
    node_name: &str,
    node_uid: &str,
) -> Result<(), AgentError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = MicroTime(jiff::Timestamp::now());
    match leases
        .get_opt(node_name)
        .await
        .map_err(|e| AgentError::api("reading the node lease", e))?
    {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(node_name.to_string());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            leases
                .replace(node_name, &PostParams::default(), &lease)
                .await
                .map_err(|e| AgentError::api("renewing the node lease", e))?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node_name.to_string()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: (!node_uid.is_empty()).then(|| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: node_name.to_string(),
                            uid: node_uid.to_string(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node_name.to_string()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now.clone()),
                    acquire_time: Some(now),
                    ..Default::default()
                }),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map_err(|e| AgentError::api("creating the node lease", e))?;
        }
    }
    Ok(())
}

/// Whether two statuses differ in anything but heartbeat times (to skip needless writes).
pub fn status_changed(old: &NodeStatus, new: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
            c.last_transition_time = None;
        }
        s
    };
    strip(old) != strip(new)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::config::{AgentConfiguration, Reserved, Settings};

    pub(crate) fn settings() -> Settings {
        let mut config = AgentConfiguration::default();
        config
            .node_labels
            .insert("node-role.kubernetes.io/worker".into(), String::new());
        config.system_reserved = Reserved {
            cpu: Some("500m".into()),
            memory: Some("100Mi".into()),
            ephemeral_storage: None,
        };
        Settings {
            node_name: "n1".into(),
            node_ip: Some("10.0.0.5".parse().unwrap()),
            kubeconfig: "/dev/null".into(),
            config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::settings;
    use super::*;

    #[test]
    fn host_is_probed() {
        let host = HostInfo::probe(Path::new("/tmp/does/not/exist"));
        assert!(host.cpus >= 1);
        assert!(host.memory_bytes > 0);
        assert!(host.fs_bytes > 0);
        assert!(!host.kernel_version.is_empty());
    }

    #[test]
    fn allocatable_subtracts_reserved() {
        let host = HostInfo {
            cpus: 2,
            memory_bytes: 1 << 30,
            memory_available_bytes: 1 << 29,
            fs_bytes: 1000,
            fs_available_bytes: 500,
            pids: 10,
            pid_max: 100,
            kernel_version: "6".into(),
            os_image: "Debian".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            hostname: "h".into(),
        };
        let (cap, alloc) = resources(&settings(), &host);
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(alloc["cpu"].0, "1500m");
        assert_eq!(
            alloc["memory"].0,
            format!("{}Ki", ((1 << 30) - (200 << 20)) / 1024)
        );
        assert_eq!(alloc["ephemeral-storage"].0, "900");
        assert_eq!(cap["pods"].0, "110");
        let status = node_status(&settings(), &host, &RuntimeFacts::default());
        let conds = status.conditions.unwrap();
        assert_eq!(conds.len(), 4);
        assert_eq!(conds[3].type_, "Ready");
        assert_eq!(conds[3].status, "False");
        assert!(conds.iter().take(3).all(|c| c.status == "False"));
        assert_eq!(status.addresses.unwrap()[0].type_, "InternalIP");
    }
}
