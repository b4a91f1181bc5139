//! Translation of a Pod spec into CRI sandbox and container configurations.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerMetadata, DnsConfig, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol,
};
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::config::{CgroupDriver, Settings};
use crate::runtime::{
    LABEL_CONTAINER_NAME, LABEL_NODE, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
};
use crate::volumes::HostVolume;
use crate::AgentError;
use kinit_rules::quantity;

/// Annotation carrying the restart count on containers.
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Annotation with the container's termination grace period.
pub const ANNOTATION_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";

/// Identity of a pod: namespace, name, uid.
pub fn pod_key(pod: &Pod) -> (String, String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

/// `/var/log/pods/<ns>_<name>_<uid>`.
pub fn log_directory(settings: &Settings, pod: &Pod) -> std::path::PathBuf {
    let (ns, name, uid) = pod_key(pod);
    settings
        .config
        .pod_logs_dir
        .join(format!("{ns}_{name}_{uid}"))
}

/// Whether the pod uses the host's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// Per-pod cgroup under the configured parent, so every pod (and every lab node sharing the
/// kernel) has its own path.
pub fn pod_cgroup(settings: &Settings, uid: &str) -> String {
    let parent = settings.config.cgroup_parent.as_str();
    match settings.config.cgroup_driver {
        CgroupDriver::Systemd => {
            let base = if parent.is_empty() {
                "kubepods"
            } else {
                parent.trim_end_matches(".slice")
            };
            format!("{base}-pod{}.slice", uid.replace('-', "_"))
        }
        CgroupDriver::Cgroupfs => {
            let base = if parent.is_empty() {
                "/kubepods"
            } else {
                parent
            };
            format!("{}/pod{uid}", base.trim_end_matches('/'))
        }
    }
}

/// Where systemd-resolved keeps the real upstreams when `/etc/resolv.conf` names its stub.
pub const SYSTEMD_RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

fn parse_resolv_conf(text: &str) -> DnsConfig {
    let mut dns = DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(String::from)),
            Some("search") | Some("domain") => dns.searches = words.map(String::from).collect(),
            Some("options") => dns.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    dns
}

/// The host's resolver configuration as the kubelet reads `--resolv-conf`: `path`, except that
/// when it names only loopback servers (systemd-resolved's stub 127.0.0.53, which a pod's own
/// network namespace cannot reach) and `resolved` exists, the upstreams listed there — what
/// kubeadm points the kubelet at on systemd-resolved hosts.
pub fn host_resolv_conf_from(path: &Path, resolved: &Path) -> DnsConfig {
    let dns = parse_resolv_conf(&std::fs::read_to_string(path).unwrap_or_default());
    let loopback_only = !dns.servers.is_empty()
        && dns.servers.iter().all(|s| {
            s.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        });
    if loopback_only {
        if let Ok(text) = std::fs::read_to_string(resolved) {
            let upstream = parse_resolv_conf(&text);
            if !upstream.servers.is_empty() {
                return upstream;
            }
        }
    }
    dns
}

fn host_resolv_conf(settings: &Settings) -> DnsConfig {
    host_resolv_conf_from(
        &settings.config.resolv_conf,
        Path::new(SYSTEMD_RESOLVED_UPSTREAMS),
    )
}

/// Appends `extra` to `list`, leaving out what is already there.
fn extend_unique(list: &mut Vec<String>, extra: impl IntoIterator<Item = String>) {
    for item in extra {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The pod's resolv.conf per dnsPolicy (ClusterFirst, ClusterFirstWithHostNet, Default, None)
/// plus `spec.dnsConfig`.
pub fn dns_config(settings: &Settings, pod: &Pod) -> DnsConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let (ns, _, _) = pod_key(pod);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = |_: ()| {
        let domain = &settings.config.cluster_domain;
        let mut searches = vec![
            format!("{ns}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ];
        // The kubelet appends the host's search domains to the cluster's.
        extend_unique(&mut searches, host_resolv_conf(settings).searches);
        DnsConfig {
            servers: settings.config.cluster_dns.clone(),
            searches,
            options: vec!["ndots:5".into()],
        }
    };
    let host_net = spec.host_network.unwrap_or(false);
    let mut dns = match policy {
        "None" => DnsConfig::default(),
        "Default" => host_resolv_conf(settings),
        "ClusterFirst" if host_net => host_resolv_conf(settings),
        _ if settings.config.cluster_dns.is_empty() => host_resolv_conf(settings),
        _ => cluster(()),
    };
    if let Some(extra) = spec.dns_config {
        extend_unique(&mut dns.servers, extra.nameservers.unwrap_or_default());
        extend_unique(&mut dns.searches, extra.searches.unwrap_or_default());
        for opt in extra.options.unwrap_or_default() {
            let name = opt.name.unwrap_or_default();
            dns.options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            dns.options.push(match opt.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    // The kubelet's limits (MaxDNSSearchPaths); resolvers ignore what lies beyond anyway.
    dns.searches.truncate(MAX_DNS_SEARCHES);
    dns
}

/// At most this many search domains reach a pod (the kubelet's `MaxDNSSearchPaths`).
pub const MAX_DNS_SEARCHES: usize = 32;

fn namespace_options(pod: &Pod) -> NamespaceOption {
    let spec = pod.spec.clone().unwrap_or_default();
    let mode = |host: Option<bool>, otherwise: NamespaceMode| {
        if host.unwrap_or(false) {
            NamespaceMode::Node as i32
        } else {
            otherwise as i32
        }
    };
    NamespaceOption {
        network: mode(spec.host_network, NamespaceMode::Pod),
        pid: mode(
            spec.host_pid,
            if spec.share_process_namespace.unwrap_or(false) {
                NamespaceMode::Pod
            } else {
                NamespaceMode::Container
            },
        ),
        ipc: mode(spec.host_ipc, NamespaceMode::Pod),
        ..Default::default()
    }
}

fn pod_labels(settings: &Settings, pod: &Pod) -> HashMap<String, String> {
    let (ns, name, uid) = pod_key(pod);
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(LABEL_POD_NAME.into(), name);
    labels.insert(LABEL_POD_NAMESPACE.into(), ns);
    labels.insert(LABEL_POD_UID.into(), uid);
    labels.insert(LABEL_NODE.into(), settings.node_name.clone());
    labels
}

/// The sandbox configuration for `pod`.
pub fn sandbox_config(settings: &Settings, pod: &Pod, attempt: u32) -> PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let (ns, name, uid) = pod_key(pod);
    let hostname = if spec.host_network.unwrap_or(false) {
        String::new()
    } else {
        crate::etc_hosts::pod_hostname(pod)
    };
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                _ => Protocol::Tcp,
            } as i32,
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let psc = spec.security_context.clone().unwrap_or_default();
    let privileged = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        });
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name,
            uid: uid.clone(),
            namespace: ns,
            attempt,
        }),
        hostname,
        log_directory: log_directory(settings, pod).to_string_lossy().into_owned(),
        dns_config: Some(dns_config(settings, pod)),
        port_mappings,
        labels: pod_labels(settings, pod),
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup(settings, &uid),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod)),
                run_as_user: psc.run_as_user.map(|value| Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| Int64Value { value }),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                privileged,
                ..Default::default()
            }),
            sysctls: psc
                .sysctls
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s.name, s.value))
                .collect(),
            ..Default::default()
        }),
        windows: None,
    }
}

/// CPU shares/quota/period and memory limit from the container's resources.
pub fn linux_resources(container: &Container) -> LinuxContainerResources {
    let r = container.resources.clone().unwrap_or_default();
    let get =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone());
    let cpu_limit = get(&r.limits, "cpu").and_then(|q| quantity::parse_milli_value(&q));
    // Requests default to limits, like the API server's defaulting.
    let cpu_request = get(&r.requests, "cpu")
        .and_then(|q| quantity::parse_milli_value(&q))
        .or(cpu_limit);
    let mem_limit = get(&r.limits, "memory").and_then(|q| quantity::parse_value(&q));
    const PERIOD: i64 = 100_000;
    LinuxContainerResources {
        cpu_period: if cpu_limit.is_some() { PERIOD } else { 0 },
        cpu_quota: cpu_limit
            .map(|m| (m * PERIOD / 1000).max(1000))
            .unwrap_or(0),
        cpu_shares: cpu_request.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2),
        memory_limit_in_bytes: mem_limit.unwrap_or(0),
        oom_score_adj: if cpu_limit.is_some() && mem_limit.is_some() {
            -997
        } else if cpu_request.is_some() {
            500
        } else {
            1000
        },
        ..Default::default()
    }
}

/// Mounts for `container` from its volumeMounts and the prepared volumes.
pub fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, HostVolume>,
) -> Result<Vec<Mount>, AgentError> {
    let mut out = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let vol = volumes.get(&vm.name).ok_or_else(|| {
            AgentError::Volume(format!(
                "container {:?} mounts volume {:?}, which the pod does not define",
                container.name, vm.name
            ))
        })?;
        let mut host = vol.path.clone();
        if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let sub_path = Path::new(sub);
            if sub_path.is_absolute() || sub_path.components().any(|c| c.as_os_str() == "..") {
                return Err(AgentError::Volume(format!(
                    "subPath {sub:?} must be relative without '..'"
                )));
            }
            host = host.join(sub_path);
            if !host.exists() && !vol.read_only {
                std::fs::create_dir_all(&host).map_err(|e| {
                    AgentError::Volume(format!("creating subPath {}: {e}", host.display()))
                })?;
            }
        }
        out.push(Mount {
            container_path: vm.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: vm.read_only.unwrap_or(false) || vol.read_only,
            propagation: match vm.mount_propagation.as_deref() {
                Some("HostToContainer") => 1,
                Some("Bidirectional") => 2,
                _ => 0,
            },
            ..Default::default()
        });
    }
    Ok(out)
}

/// The CRI configuration of one container attempt.
#[allow(clippy::too_many_arguments)]
pub fn container_config(
    settings: &Settings,
    pod: &Pod,
    container: &Container,
    attempt: u32,
    env: &[(String, String)],
    mounts: Vec<Mount>,
) -> ContainerConfig {
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let expand = |v: &Option<Vec<String>>| {
        v.iter()
            .flatten()
            .map(|s| crate::env::expand(s, &vars))
            .collect::<Vec<_>>()
    };
    let mut labels = pod_labels(settings, pod);
    labels.retain(|k, _| {
        k == LABEL_POD_NAME || k == LABEL_POD_NAMESPACE || k == LABEL_POD_UID || k == LABEL_NODE
    });
    labels.insert(LABEL_CONTAINER_NAME.into(), container.name.clone());
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    let sc = container.security_context.clone().unwrap_or_default();
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: container.name.clone(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: container.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand(&container.command),
        args: expand(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env
            .iter()
            .map(|(key, value)| KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts,
        labels,
        annotations: [
            (ANNOTATION_RESTART_COUNT.to_string(), attempt.to_string()),
            (ANNOTATION_GRACE.to_string(), grace.to_string()),
        ]
        .into(),
        log_path: format!("{}/{attempt}.log", container.name),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(LinuxContainerConfig {
            resources: Some(linux_resources(container)),
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: caps.add.unwrap_or_default(),
                    drop_capabilities: caps.drop.unwrap_or_default(),
                    ..Default::default()
                }),
                privileged: sc.privileged.unwrap_or(false),
                namespace_options: Some(namespace_options(pod)),
                run_as_user: sc
                    .run_as_user
                    .or(psc.run_as_user)
                    .map(|value| Int64Value { value }),
                run_as_group: sc
                    .run_as_group
                    .or(psc.run_as_group)
                    .map(|value| Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                supplemental_groups: psc.supplemental_groups.unwrap_or_default(),
                no_new_privs: sc.allow_privilege_escalation == Some(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfiguration;

    fn settings() -> Settings {
        let config = AgentConfiguration {
            cluster_dns: vec!["10.96.0.10".into()],
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_parent: "/kinit-n1".into(),
            ..Default::default()
        };
        Settings {
            node_name: "n1".into(),
            node_ip: None,
            kubeconfig: "/dev/null".into(),
            config,
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
                "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "echo $(GREETING)"],
                "ports": [{"containerPort": 80, "hostPort": 8080}],
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn sandbox() {
        let s = sandbox_config(&settings(), &pod(), 1);
        assert_eq!(s.hostname, "web");
        assert_eq!(s.log_directory, "/var/log/pods/prod_web_u-1");
        assert_eq!(s.linux.as_ref().unwrap().cgroup_parent, "/kinit-n1/podu-1");
        let dns = s.dns_config.unwrap();
        assert_eq!(dns.servers, vec!["10.96.0.10"]);
        assert_eq!(dns.searches[0], "prod.svc.cluster.local");
        assert_eq!(dns.options, vec!["ndots:2"]);
        assert_eq!(s.port_mappings[0].host_port, 8080);
        assert_eq!(s.labels[LABEL_POD_UID], "u-1");
        assert_eq!(s.labels["app"], "web");
        let mut systemd = settings();
        systemd.config.cgroup_driver = CgroupDriver::Systemd;
        systemd.config.cgroup_parent = "kinit-n1.slice".into();
        assert_eq!(pod_cgroup(&systemd, "a-b"), "kinit-n1-poda_b.slice");
    }

    #[test]
    fn container() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env = vec![("GREETING".to_string(), "hi".to_string())];
        let cfg = container_config(&settings(), &p, c, 2, &env, vec![]);
        assert_eq!(cfg.command, vec!["sh", "-c", "echo hi"]);
        assert_eq!(cfg.log_path, "c/2.log");
        assert_eq!(cfg.annotations[ANNOTATION_RESTART_COUNT], "2");
        let r = cfg.linux.as_ref().unwrap().resources.clone().unwrap();
        assert_eq!(r.cpu_quota, 50_000);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.cpu_shares, 512);
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        let sc = cfg.linux.unwrap().security_context.unwrap();
        assert_eq!(sc.capabilities.unwrap().add_capabilities, vec!["NET_ADMIN"]);
    }

    fn dns_pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop", "uid": "u"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn dns_policies_as_the_kubelet_applies_them() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("resolv.conf");
        std::fs::write(
            &host,
            "nameserver 10.0.0.2\nsearch corp.example\noptions timeout:1\n",
        )
        .unwrap();
        let mut s = settings();
        s.config.resolv_conf = host.clone();
        let c = |spec| dns_config(&s, &dns_pod(spec));

        let first = c(serde_json::json!({"containers": []}));
        assert_eq!(first.servers, ["10.96.0.10"]);
        assert_eq!(
            first.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ],
            "the host's search domains follow the cluster's"
        );
        assert_eq!(first.options, ["ndots:5"]);

        let default = c(serde_json::json!({"dnsPolicy": "Default", "containers": []}));
        assert_eq!(default.servers, ["10.0.0.2"]);
        assert_eq!(default.searches, ["corp.example"]);
        assert_eq!(default.options, ["timeout:1"]);

        let host_net = c(serde_json::json!({"hostNetwork": true, "containers": []}));
        assert_eq!(
            host_net.servers,
            ["10.0.0.2"],
            "ClusterFirst on the host network is Default"
        );
        let with_host_net = c(serde_json::json!({
            "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []
        }));
        assert_eq!(with_host_net.servers, ["10.96.0.10"]);

        let none = c(serde_json::json!({
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["1.2.3.4", "1.2.3.4"], "searches": ["a.example"],
                          "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]},
            "containers": []
        }));
        assert_eq!(none.servers, ["1.2.3.4"], "duplicates are dropped");
        assert_eq!(none.searches, ["a.example"]);
        assert_eq!(none.options, ["ndots:2", "edns0"]);

        let merged = c(serde_json::json!({
            "dnsConfig": {"searches": ["svc.cluster.local", "extra.example"],
                          "options": [{"name": "ndots", "value": "1"}]},
            "containers": []
        }));
        assert_eq!(merged.searches.last().unwrap(), "extra.example");
        assert_eq!(
            merged
                .searches
                .iter()
                .filter(|s| *s == "svc.cluster.local")
                .count(),
            1
        );
        assert_eq!(
            merged.options,
            ["ndots:1"],
            "a dnsConfig option replaces the default"
        );
    }

    #[test]
    fn the_systemd_resolved_stub_is_replaced_by_its_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("stub.conf");
        std::fs::write(
            &stub,
            "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n",
        )
        .unwrap();
        let upstreams = dir.path().join("upstreams.conf");
        std::fs::write(
            &upstreams,
            "nameserver 192.168.1.1\nnameserver 192.168.1.2\nsearch lan\n",
        )
        .unwrap();
        let dns = host_resolv_conf_from(&stub, &upstreams);
        assert_eq!(dns.servers, ["192.168.1.1", "192.168.1.2"]);
        assert_eq!(dns.searches, ["lan"]);
        // Without the upstreams file the stub is kept (nothing better is known).
        let kept = host_resolv_conf_from(&stub, &dir.path().join("missing"));
        assert_eq!(kept.servers, ["127.0.0.53"]);
        // A real server is never replaced.
        let real = dir.path().join("real.conf");
        std::fs::write(&real, "nameserver 10.0.0.2\n").unwrap();
        assert_eq!(
            host_resolv_conf_from(&real, &upstreams).servers,
            ["10.0.0.2"]
        );
    }
}
