//! Host files: which template renders each, where it goes, its mode, and which hosts get it.

use std::path::PathBuf;

use crate::context::ClusterRenderContext;
use crate::engine::render_template;
use crate::error::TemplateError;

/// Directory the agent watches for static pod manifests.
pub const STATIC_POD_MANIFEST_DIR: &str = "/etc/kubernetes/manifests";
/// Directory holding the cluster PKI on every host.
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
/// Path of the node agent's configuration file.
pub const AGENT_CONFIG_PATH: &str = "/var/lib/kinit/agent/config.yaml";
/// Path of the node agent's systemd unit.
pub const AGENT_UNIT_PATH: &str = "/etc/systemd/system/kinit-agent.service";

/// A rendered file ready to be written to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute path on the host, e.g. `/etc/kubernetes/manifests/kube-apiserver.yaml`.
    pub path: PathBuf,
    /// Unix permission bits, e.g. `0o600`.
    pub mode: u32,
    /// File contents.
    pub contents: String,
}

/// The role a host file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Every node.
    Node,
    /// `control_plane` is set.
    ControlPlane,
    /// `etcd_member` is set.
    EtcdMember,
    /// `load_balancer` is set.
    LoadBalancer,
}

impl Role {
    fn is_assigned(self, context: &ClusterRenderContext) -> bool {
        match self {
            Role::Node => true,
            Role::ControlPlane => context.control_plane.is_some(),
            Role::EtcdMember => context.etcd_member.is_some(),
            Role::LoadBalancer => context.load_balancer.is_some(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::ControlPlane => "control-plane",
            Role::EtcdMember => "etcd",
            Role::LoadBalancer => "lb",
        }
    }

    fn section(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::ControlPlane => "control_plane",
            Role::EtcdMember => "etcd_member",
            Role::LoadBalancer => "load_balancer",
        }
    }
}

/// Every file kinit renders onto hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostFile {
    /// Static pod for the API server (control-plane hosts).
    KubeApiserver,
    /// Static pod for the controller manager (control-plane hosts).
    KubeControllerManager,
    /// Static pod for the scheduler (control-plane hosts).
    KubeScheduler,
    /// Static pod for etcd (etcd members of a replicated control plane).
    Etcd,
    /// systemd unit of the node agent (every host).
    AgentUnit,
    /// Configuration of the node agent (every host).
    AgentConfig,
    /// containerd configuration (every host).
    ContainerdConfig,
    /// CNI network configuration (every host).
    CniConflist,
    /// haproxy configuration (load-balancer hosts).
    HaproxyConfig,
    /// keepalived configuration (load-balancer hosts).
    KeepalivedConfig,
    /// Health check keepalived runs (load-balancer hosts).
    KeepalivedCheckScript,
}

impl HostFile {
    /// All host files, in the order [`render_all`] emits them.
    pub const ALL: [HostFile; 11] = [
        HostFile::KubeApiserver,
        HostFile::KubeControllerManager,
        HostFile::KubeScheduler,
        HostFile::Etcd,
        HostFile::AgentUnit,
        HostFile::AgentConfig,
        HostFile::ContainerdConfig,
        HostFile::CniConflist,
        HostFile::HaproxyConfig,
        HostFile::KeepalivedConfig,
        HostFile::KeepalivedCheckScript,
    ];

    /// Name of the embedded template that renders this file.
    pub fn template_name(self) -> &'static str {
        match self {
            HostFile::KubeApiserver => "kube-apiserver.yaml.j2",
            HostFile::KubeControllerManager => "kube-controller-manager.yaml.j2",
            HostFile::KubeScheduler => "kube-scheduler.yaml.j2",
            HostFile::Etcd => "etcd.yaml.j2",
            HostFile::AgentUnit => "kinit-agent.service.j2",
            HostFile::AgentConfig => "kinit-agent-config.yaml.j2",
            HostFile::ContainerdConfig => "containerd-config.toml.j2",
            HostFile::CniConflist => "10-kinit.conflist.j2",
            HostFile::HaproxyConfig => "haproxy.cfg.j2",
            HostFile::KeepalivedConfig => "keepalived.conf.j2",
            HostFile::KeepalivedCheckScript => "check_apiserver.sh.j2",
        }
    }

    /// Absolute path of the file on the host.
    pub fn path(self) -> &'static str {
        match self {
            HostFile::KubeApiserver => "/etc/kubernetes/manifests/kube-apiserver.yaml",
            HostFile::KubeControllerManager => {
                "/etc/kubernetes/manifests/kube-controller-manager.yaml"
            }
            HostFile::KubeScheduler => "/etc/kubernetes/manifests/kube-scheduler.yaml",
            HostFile::Etcd => "/etc/kubernetes/manifests/etcd.yaml",
            HostFile::AgentUnit => AGENT_UNIT_PATH,
            HostFile::AgentConfig => AGENT_CONFIG_PATH,
            HostFile::ContainerdConfig => "/etc/containerd/config.toml",
            HostFile::CniConflist => "/etc/cni/net.d/10-kinit.conflist",
            HostFile::HaproxyConfig => "/etc/haproxy/haproxy.cfg",
            HostFile::KeepalivedConfig => "/etc/keepalived/keepalived.conf",
            HostFile::KeepalivedCheckScript => "/etc/keepalived/check_apiserver.sh",
        }
    }

    /// Unix permission bits: manifests 0600 as kubeadm writes them, keepalived.conf 0600
    /// (it holds the VRRP password), the check script 0755, everything else 0644.
    pub fn mode(self) -> u32 {
        match self {
            HostFile::KubeApiserver
            | HostFile::KubeControllerManager
            | HostFile::KubeScheduler
            | HostFile::Etcd
            | HostFile::KeepalivedConfig => 0o600,
            HostFile::KeepalivedCheckScript => 0o755,
            HostFile::AgentUnit
            | HostFile::AgentConfig
            | HostFile::ContainerdConfig
            | HostFile::CniConflist
            | HostFile::HaproxyConfig => 0o644,
        }
    }

    fn role(self) -> Role {
        match self {
            HostFile::KubeApiserver | HostFile::KubeControllerManager | HostFile::KubeScheduler => {
                Role::ControlPlane
            }
            HostFile::Etcd => Role::EtcdMember,
            HostFile::AgentUnit
            | HostFile::AgentConfig
            | HostFile::ContainerdConfig
            | HostFile::CniConflist => Role::Node,
            HostFile::HaproxyConfig
            | HostFile::KeepalivedConfig
            | HostFile::KeepalivedCheckScript => Role::LoadBalancer,
        }
    }

    /// Whether the host described by `context` gets this file (decided by its roles).
    pub fn applies_to(self, context: &ClusterRenderContext) -> bool {
        self.role().is_assigned(context)
    }

    /// Validates `context` and renders this file for its host.
    ///
    /// Fails with [`TemplateError::RoleNotAssigned`] when the host lacks the file's role.
    pub fn render(self, context: &ClusterRenderContext) -> Result<RenderedFile, TemplateError> {
        context.validate()?;
        self.render_validated(context)
    }

    fn render_validated(
        self,
        context: &ClusterRenderContext,
    ) -> Result<RenderedFile, TemplateError> {
        let role = self.role();
        if !role.is_assigned(context) {
            return Err(TemplateError::RoleNotAssigned {
                host: context.node.name.clone(),
                file: self.path(),
                role: role.name(),
                section: role.section(),
            });
        }
        let contents = render_template(self.template_name(), context)?;
        if self == HostFile::CniConflist {
            // Container runtimes reject the whole network on a parse error; catch it here.
            serde_json::from_str::<serde_json::Value>(&contents).map_err(|err| {
                TemplateError::InvalidOutput {
                    template: self.template_name().to_string(),
                    format: "JSON",
                    message: err.to_string(),
                }
            })?;
        }
        Ok(RenderedFile {
            path: PathBuf::from(self.path()),
            mode: self.mode(),
            contents,
        })
    }
}

/// Validates the context once and renders every file that applies to the host, in
/// [`HostFile::ALL`] order: control-plane static pods, the etcd pod, the agent unit and
/// config, containerd, CNI, then haproxy/keepalived.
pub fn render_all(context: &ClusterRenderContext) -> Result<Vec<RenderedFile>, TemplateError> {
    context.validate()?;
    HostFile::ALL
        .into_iter()
        .filter(|file| file.applies_to(context))
        .map(|file| file.render_validated(context))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::api::core::v1::{Container, Pod, Probe};

    use super::*;
    use crate::context::{ApiHealthCheck, CgroupDriver, ClusterRenderContext};

    fn render(file: HostFile, context: &ClusterRenderContext) -> String {
        file.render(context)
            .unwrap_or_else(|err| panic!("{file:?}: {err}"))
            .contents
    }

    fn pod(file: HostFile, context: &ClusterRenderContext) -> Pod {
        let text = render(file, context);
        serde_yaml::from_str(&text)
            .unwrap_or_else(|err| panic!("{file:?} is not a Pod: {err}\n{text}"))
    }

    fn only_container(pod: &Pod) -> &Container {
        let containers = &pod.spec.as_ref().unwrap().containers;
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    fn command(pod: &Pod) -> Vec<String> {
        only_container(pod).command.clone().unwrap()
    }

    fn flag<'a>(command: &'a [String], name: &str) -> Option<&'a str> {
        let prefix = format!("--{name}=");
        let mut values = command.iter().filter_map(|arg| arg.strip_prefix(&prefix));
        let value = values.next();
        assert!(values.next().is_none(), "--{name} given twice");
        value
    }

    fn https_probe_port(probe: &Probe, path: &str) -> i32 {
        let get = probe.http_get.as_ref().expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port) => *port,
            other => panic!("probe port must be numeric, got {other:?}"),
        }
    }

    /// Checks what every kubeadm-style static pod must have.
    fn assert_static_pod_shape(pod: &Pod, name: &str) {
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some(name));
        assert_eq!(meta.namespace.as_deref(), Some("kube-system"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels.get("component").map(String::as_str), Some(name));
        assert_eq!(
            labels.get("tier").map(String::as_str),
            Some("control-plane")
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(
            spec.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        let container = only_container(pod);
        assert!(container.liveness_probe.is_some(), "{name}: liveness probe");
        assert!(
            container.readiness_probe.is_some(),
            "{name}: readiness probe"
        );
        assert!(container.startup_probe.is_some(), "{name}: startup probe");

        let volumes: BTreeSet<&str> = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| {
                let host_path = v.host_path.as_ref().expect("only hostPath volumes");
                assert!(host_path.path.starts_with('/'));
                v.name.as_str()
            })
            .collect();
        let mounts = container.volume_mounts.as_ref().unwrap();
        for mount in mounts {
            assert!(
                volumes.contains(mount.name.as_str()),
                "{name}: mount {} has no volume",
                mount.name
            );
        }
        let mounted: BTreeSet<&str> = mounts.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(mounted, volumes, "{name}: every volume is mounted");
    }

    fn mount_is_read_only(pod: &Pod, path: &str) -> Option<bool> {
        only_container(pod)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == path)
            .map(|m| m.read_only == Some(true))
    }

    #[test]
    fn apiserver_pod_with_embedded_store() {
        let context = ClusterRenderContext::default();
        let pod = pod(HostFile::KubeApiserver, &context);
        assert_static_pod_shape(&pod, "kube-apiserver");
        let container = only_container(&pod);
        assert_eq!(
            container.image.as_deref(),
            Some(context.images.control_plane.as_str())
        );
        let cmd = command(&pod);
        assert_eq!(&cmd[..2], ["kinit", "apiserver"]);
        for (name, value) in [
            ("advertise-address", "10.0.0.11"),
            ("bind-address", "0.0.0.0"),
            ("secure-port", "6443"),
            ("service-cluster-ip-range", "10.96.0.0/12"),
            ("tls-cert-file", "/etc/kubernetes/pki/apiserver.crt"),
            ("tls-private-key-file", "/etc/kubernetes/pki/apiserver.key"),
            ("client-ca-file", "/etc/kubernetes/pki/ca.crt"),
            (
                "kubelet-client-certificate",
                "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
            ),
            (
                "kubelet-client-key",
                "/etc/kubernetes/pki/apiserver-kubelet-client.key",
            ),
            (
                "kubelet-certificate-authority",
                "/etc/kubernetes/pki/ca.crt",
            ),
            ("service-account-key-file", "/etc/kubernetes/pki/sa.pub"),
            (
                "service-account-signing-key-file",
                "/etc/kubernetes/pki/sa.key",
            ),
            (
                "service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
            ),
            ("authorization-mode", "Node,RBAC"),
            ("anonymous-auth", "false"),
            ("enable-bootstrap-token-auth", "true"),
            ("data-dir", "/var/lib/kinit/apiserver"),
        ] {
            assert_eq!(flag(&cmd, name), Some(value), "--{name}");
        }
        assert_eq!(flag(&cmd, "etcd-servers"), None);
        assert_eq!(flag(&cmd, "etcd-cafile"), None);
        assert_eq!(mount_is_read_only(&pod, "/etc/kubernetes/pki"), Some(true));
        assert_eq!(
            mount_is_read_only(&pod, "/var/lib/kinit/apiserver"),
            Some(false)
        );

        let liveness = container.liveness_probe.as_ref().unwrap();
        assert_eq!(https_probe_port(liveness, "/livez"), 6443);
        let get = liveness.http_get.as_ref().unwrap();
        assert_eq!(get.host.as_deref(), Some("10.0.0.11"));
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert_eq!(https_probe_port(readiness, "/readyz"), 6443);
        let startup = container.startup_probe.as_ref().unwrap();
        assert_eq!(https_probe_port(startup, "/livez"), 6443);
    }

    #[test]
    fn apiserver_pod_with_etcd() {
        let context = ClusterRenderContext::example_ha();
        let pod = pod(HostFile::KubeApiserver, &context);
        assert_static_pod_shape(&pod, "kube-apiserver");
        let cmd = command(&pod);
        assert_eq!(
            flag(&cmd, "etcd-servers"),
            Some("https://10.0.0.11:2379,https://10.0.0.12:2379,https://10.0.0.13:2379")
        );
        assert_eq!(
            flag(&cmd, "etcd-cafile"),
            Some("/etc/kubernetes/pki/etcd/ca.crt")
        );
        assert_eq!(
            flag(&cmd, "etcd-certfile"),
            Some("/etc/kubernetes/pki/apiserver-etcd-client.crt")
        );
        assert_eq!(
            flag(&cmd, "etcd-keyfile"),
            Some("/etc/kubernetes/pki/apiserver-etcd-client.key")
        );
        assert_eq!(flag(&cmd, "data-dir"), None);
        assert_eq!(mount_is_read_only(&pod, "/var/lib/kinit/apiserver"), None);
    }

    #[test]
    fn controller_manager_pod() {
        let context = ClusterRenderContext::default();
        let pod = pod(HostFile::KubeControllerManager, &context);
        assert_static_pod_shape(&pod, "kube-controller-manager");
        let cmd = command(&pod);
        assert_eq!(&cmd[..2], ["kinit", "controller-manager"]);
        for (name, value) in [
            ("kubeconfig", "/etc/kubernetes/controller-manager.conf"),
            ("cluster-cidr", "10.244.0.0/16"),
            ("allocate-node-cidrs", "true"),
            ("node-cidr-mask-size", "24"),
            ("service-cluster-ip-range", "10.96.0.0/12"),
            ("cluster-signing-cert-file", "/etc/kubernetes/pki/ca.crt"),
            ("cluster-signing-key-file", "/etc/kubernetes/pki/ca.key"),
            ("leader-elect", "true"),
            ("cluster-name", "kubernetes"),
            ("bind-address", "127.0.0.1"),
            ("secure-port", "10257"),
        ] {
            assert_eq!(flag(&cmd, name), Some(value), "--{name}");
        }
        let container = only_container(&pod);
        assert_eq!(
            https_probe_port(container.liveness_probe.as_ref().unwrap(), "/healthz"),
            10257
        );
        assert_eq!(
            mount_is_read_only(&pod, "/etc/kubernetes/controller-manager.conf"),
            Some(true)
        );
        assert_eq!(mount_is_read_only(&pod, "/etc/kubernetes/pki"), Some(true));
    }

    #[test]
    fn scheduler_pod() {
        let mut context = ClusterRenderContext::default();
        context.control_plane.as_mut().unwrap().scheduler_port = 11259;
        let pod = pod(HostFile::KubeScheduler, &context);
        assert_static_pod_shape(&pod, "kube-scheduler");
        let cmd = command(&pod);
        assert_eq!(&cmd[..2], ["kinit", "scheduler"]);
        assert_eq!(
            flag(&cmd, "kubeconfig"),
            Some("/etc/kubernetes/scheduler.conf")
        );
        assert_eq!(flag(&cmd, "leader-elect"), Some("true"));
        assert_eq!(flag(&cmd, "bind-address"), Some("127.0.0.1"));
        assert_eq!(flag(&cmd, "secure-port"), Some("11259"));
        let container = only_container(&pod);
        assert_eq!(
            https_probe_port(container.startup_probe.as_ref().unwrap(), "/healthz"),
            11259
        );
    }

    #[test]
    fn etcd_pod() {
        let context = ClusterRenderContext::example_ha();
        let pod = pod(HostFile::Etcd, &context);
        assert_static_pod_shape(&pod, "etcd");
        let container = only_container(&pod);
        assert_eq!(
            container.image.as_deref(),
            Some("registry.k8s.io/etcd:3.5.21-0")
        );
        let cmd = command(&pod);
        assert_eq!(cmd[0], "etcd");
        for (name, value) in [
            ("name", "cp-1"),
            ("data-dir", "/var/lib/etcd"),
            (
                "listen-client-urls",
                "https://127.0.0.1:2379,https://10.0.0.11:2379",
            ),
            ("advertise-client-urls", "https://10.0.0.11:2379"),
            ("listen-peer-urls", "https://10.0.0.11:2380"),
            ("initial-advertise-peer-urls", "https://10.0.0.11:2380"),
            (
                "initial-cluster",
                "cp-1=https://10.0.0.11:2380,cp-2=https://10.0.0.12:2380,cp-3=https://10.0.0.13:2380",
            ),
            ("initial-cluster-state", "new"),
            ("cert-file", "/etc/kubernetes/pki/etcd/server.crt"),
            ("key-file", "/etc/kubernetes/pki/etcd/server.key"),
            ("trusted-ca-file", "/etc/kubernetes/pki/etcd/ca.crt"),
            ("peer-cert-file", "/etc/kubernetes/pki/etcd/peer.crt"),
            ("peer-key-file", "/etc/kubernetes/pki/etcd/peer.key"),
            ("peer-trusted-ca-file", "/etc/kubernetes/pki/etcd/ca.crt"),
            ("client-cert-auth", "true"),
            ("peer-client-cert-auth", "true"),
        ] {
            assert_eq!(flag(&cmd, name), Some(value), "--{name}");
        }
        assert_eq!(mount_is_read_only(&pod, "/var/lib/etcd"), Some(false));
        assert_eq!(
            mount_is_read_only(&pod, "/etc/kubernetes/pki/etcd"),
            Some(true)
        );
    }

    #[test]
    fn etcd_pod_brackets_ipv6_urls() {
        let mut context = ClusterRenderContext::example_ha();
        context.cluster.pod_cidr = "fd10::/56".parse().unwrap();
        context.cluster.service_cidr = "fd20::/112".parse().unwrap();
        context.cluster.cluster_dns_ip = "fd20::a".parse().unwrap();
        context.cluster.node_cidr_mask_size = 64;
        context.node.pod_cidr = "fd10::/64".parse().unwrap();
        context.node.ip = "fd00::11".parse().unwrap();
        context.load_balancer = None;
        let members = &mut context.cluster.etcd.as_mut().unwrap().members;
        for (index, member) in members.iter_mut().enumerate() {
            member.ip = format!("fd00::{}", 11 + index).parse().unwrap();
        }
        let cmd = command(&pod(HostFile::Etcd, &context));
        assert_eq!(
            flag(&cmd, "listen-client-urls"),
            Some("https://[::1]:2379,https://[fd00::11]:2379")
        );
        assert_eq!(
            flag(&cmd, "initial-cluster"),
            Some("cp-1=https://[fd00::11]:2380,cp-2=https://[fd00::12]:2380,cp-3=https://[fd00::13]:2380")
        );
        let conflist: serde_json::Value =
            serde_json::from_str(&render(HostFile::CniConflist, &context)).unwrap();
        assert_eq!(conflist["plugins"][0]["ipam"]["routes"][0]["dst"], "::/0");
    }

    #[test]
    fn agent_unit() {
        let unit = render(HostFile::AgentUnit, &ClusterRenderContext::default());
        let exec = unit
            .lines()
            .find_map(|line| line.strip_prefix("ExecStart="))
            .expect("ExecStart line");
        assert!(exec
            .starts_with("/usr/local/bin/kinit agent --kubeconfig /etc/kubernetes/kubelet.conf"));
        assert!(exec.contains("--config /var/lib/kinit/agent/config.yaml"));
        for line in [
            "Restart=always",
            "KillMode=process",
            "Delegate=yes",
            "After=network-online.target containerd.service",
            "Wants=network-online.target containerd.service",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}");
        }
    }

    #[test]
    fn agent_config() {
        let mut context = ClusterRenderContext::default();
        context
            .node
            .labels
            .insert("kinit.io/rack".into(), "row: \"A\" # not a comment".into());
        let text = render(HostFile::AgentConfig, &context);
        let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(config["nodeName"], "cp-1");
        assert_eq!(config["nodeIP"], "10.0.0.11");
        assert_eq!(config["podManifestPath"], STATIC_POD_MANIFEST_DIR);
        assert_eq!(config["clusterDNS"][0], "10.96.0.10");
        assert_eq!(config["clusterDomain"], "cluster.local");
        assert_eq!(config["cgroupDriver"], "systemd");
        assert_eq!(config["cgroupParent"], "kubepods.slice");
        assert_eq!(
            config["containerRuntimeEndpoint"],
            "unix:///run/containerd/containerd.sock"
        );
        assert_eq!(
            config["nodeLabels"]["kinit.io/rack"],
            "row: \"A\" # not a comment"
        );
        assert_eq!(
            config["nodeLabels"]["node-role.kubernetes.io/control-plane"],
            ""
        );
        let taint = &config["registerWithTaints"][0];
        assert_eq!(taint["key"], "node-role.kubernetes.io/control-plane");
        assert_eq!(taint["effect"], "NoSchedule");
        assert!(taint.get("value").is_none());
    }

    #[test]
    fn yaml_breaking_values_stay_inside_their_strings() {
        let mut context = ClusterRenderContext::default();
        let image = "kinit.local/kinit:v1\"#evil:[1]";
        let issuer = "https://issuer.example/a:b'\"c\"#{x}";
        context.images.control_plane = image.into();
        context.images.pause = image.into();
        context.cluster.service_account_issuer = issuer.into();
        context.node.cgroup_parent = "kube: \"pods\" # x.slice".into();
        let pod = pod(HostFile::KubeApiserver, &context);
        assert_eq!(only_container(&pod).image.as_deref(), Some(image));
        assert_eq!(flag(&command(&pod), "service-account-issuer"), Some(issuer));
        let config: serde_yaml::Value =
            serde_yaml::from_str(&render(HostFile::AgentConfig, &context)).unwrap();
        assert_eq!(config["cgroupParent"], "kube: \"pods\" # x.slice");
        let containerd: toml::Table =
            toml::from_str(&render(HostFile::ContainerdConfig, &context)).unwrap();
        assert_eq!(
            containerd["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"].as_str(),
            Some(image)
        );
    }

    #[test]
    fn newlines_cannot_inject_yaml_or_json_keys() {
        // Bypasses validation on purpose: quoting alone must keep the documents intact.
        let mut context = serde_json::to_value(ClusterRenderContext::default()).unwrap();
        let injected = "a\"\nspec: {hostPID: true}\n# '<&>";
        context["images"]["control_plane"] = injected.into();
        context["node"]["name"] = injected.into();
        context["node"]["labels"] = serde_json::json!({ "k: \"x\"": injected });
        let pod: Pod = serde_yaml::from_str(
            &crate::render_template("kube-apiserver.yaml.j2", &context).unwrap(),
        )
        .unwrap();
        assert_eq!(only_container(&pod).image.as_deref(), Some(injected));
        assert_eq!(pod.spec.as_ref().unwrap().host_pid, None);
        let config: serde_yaml::Value = serde_yaml::from_str(
            &crate::render_template("kinit-agent-config.yaml.j2", &context).unwrap(),
        )
        .unwrap();
        assert_eq!(config["nodeName"], injected);
        assert_eq!(config["nodeLabels"]["k: \"x\""], injected);
        assert!(config.get("spec").is_none());
        context["node"]["pod_cidr"] = injected.into();
        let conflist: serde_json::Value = serde_json::from_str(
            &crate::render_template("10-kinit.conflist.j2", &context).unwrap(),
        )
        .unwrap();
        assert_eq!(
            conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            injected
        );
    }

    #[test]
    fn containerd_config() {
        let mut context = ClusterRenderContext::default();
        let text = render(HostFile::ContainerdConfig, &context);
        assert!(text.contains(&format!("sandbox_image = \"{}\"", context.images.pause)));
        let config: toml::Table = toml::from_str(&text).unwrap();
        let cri = &config["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some(context.images.pause.as_str())
        );
        assert_eq!(cri["containerd"]["snapshotter"].as_str(), Some("overlayfs"));
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        let runc = &cri["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/opt/cni/bin"));
        assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/etc/cni/net.d"));

        context.node.cgroup_driver = CgroupDriver::Cgroupfs;
        context.node.cgroup_parent = "/kubepods".into();
        let config: toml::Table =
            toml::from_str(&render(HostFile::ContainerdConfig, &context)).unwrap();
        let options = &config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
            ["runc"]["options"];
        assert_eq!(options["SystemdCgroup"].as_bool(), Some(false));
    }

    #[test]
    fn cni_conflist() {
        let mut context = ClusterRenderContext::default();
        context.node.pod_cidr = "10.244.7.0/24".parse().unwrap();
        let file = HostFile::CniConflist.render(&context).unwrap();
        assert_eq!(file.path, PathBuf::from("/etc/cni/net.d/10-kinit.conflist"));
        let conflist: serde_json::Value = serde_json::from_str(&file.contents).unwrap();
        assert_eq!(conflist["cniVersion"], "1.0.0");
        assert_eq!(conflist["name"], "kinit");
        let main = &conflist["plugins"][0];
        assert_eq!(main["type"], "kinit-cni");
        assert_eq!(main["bridge"], "cni0");
        assert_eq!(main["isGateway"], true);
        assert_eq!(main["ipMasq"], true);
        assert_eq!(main["ipam"]["ranges"][0][0]["subnet"], "10.244.7.0/24");
        assert_eq!(main["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(main["clusterCIDR"], "10.244.0.0/16");
        // containerd passes runtimeConfig.portMappings (hostPort) only to plugins declaring it.
        assert_eq!(main["capabilities"]["portMappings"], true);
        // The pods' MTU comes from the node network's runtime file, not from the conflist.
        assert!(main.get("mtu").is_none());
        // Every plugin of the list must exist in /opt/cni/bin: kinit ships only kinit-cni.
        assert_eq!(conflist["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn haproxy_config_lists_every_backend() {
        let context = ClusterRenderContext::example_ha();
        let text = render(HostFile::HaproxyConfig, &context);
        assert!(text.contains("bind *:8443"), "{text}");
        assert!(text.contains("mode tcp"));
        assert!(text.contains("balance roundrobin"));
        assert!(text.contains("option httpchk GET /healthz"));
        for backend in &context.load_balancer.as_ref().unwrap().backends {
            let line = format!(
                "server {} {}:{} check check-ssl verify none",
                backend.name, backend.address, backend.port
            );
            assert!(
                text.lines().any(|l| l.trim() == line),
                "missing {line}\n{text}"
            );
        }

        let mut context = context;
        context.load_balancer.as_mut().unwrap().health_check = ApiHealthCheck::Tcp;
        let text = render(HostFile::HaproxyConfig, &context);
        assert!(!text.contains("httpchk"));
        assert!(text
            .lines()
            .any(|l| l.trim() == "server cp-2 10.0.0.12:6443 check"));
    }

    #[test]
    fn keepalived_config_holds_vip_and_peers() {
        let context = ClusterRenderContext::example_ha();
        let text = render(HostFile::KeepalivedConfig, &context);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for expected in [
            "state MASTER",
            "interface eth0",
            "virtual_router_id 51",
            "priority 101",
            "auth_type PASS",
            "auth_pass kinit-ha",
            "unicast_src_ip 10.0.0.11",
            "10.0.0.12",
            "10.0.0.13",
            "10.0.0.100/24 dev eth0",
            "script \"/etc/keepalived/check_apiserver.sh\"",
            "check_apiserver",
        ] {
            assert!(lines.contains(&expected), "missing {expected}\n{text}");
        }

        let mut context = context;
        context
            .load_balancer
            .as_mut()
            .unwrap()
            .unicast_peers
            .clear();
        let text = render(HostFile::KeepalivedConfig, &context);
        assert!(!text.contains("unicast"), "{text}");
    }

    #[test]
    fn keepalived_check_script() {
        let context = ClusterRenderContext::example_ha();
        let file = HostFile::KeepalivedCheckScript.render(&context).unwrap();
        assert_eq!(file.mode, 0o755);
        assert!(file.contents.starts_with("#!/bin/sh\n"));
        assert!(file.contents.contains("pidof haproxy"));
        assert!(file.contents.contains("\"https://127.0.0.1:8443/healthz\""));

        let mut context = context;
        context.load_balancer.as_mut().unwrap().health_check = ApiHealthCheck::Tcp;
        let text = render(HostFile::KeepalivedCheckScript, &context);
        assert!(text.contains("pidof haproxy") && !text.contains("curl"));
    }

    #[test]
    fn invalid_keepalived_priority_is_rejected_before_rendering() {
        let mut context = ClusterRenderContext::example_ha();
        context.load_balancer.as_mut().unwrap().priority = 255;
        let err = render_all(&context).unwrap_err();
        match &err {
            TemplateError::InvalidContext { host, problems } => {
                assert_eq!(host, "cp-1");
                assert_eq!(problems.len(), 1);
                assert_eq!(problems[0].field, "load_balancer.priority");
            }
            other => panic!("expected InvalidContext, got {other}"),
        }
        let err = HostFile::KeepalivedConfig.render(&context).unwrap_err();
        assert!(err.to_string().contains("load_balancer.priority"), "{err}");
    }

    #[test]
    fn render_all_picks_files_by_role() {
        let paths = |context: &ClusterRenderContext| -> Vec<String> {
            render_all(context)
                .unwrap()
                .into_iter()
                .map(|f| f.path.display().to_string())
                .collect()
        };
        let node_files = [
            "/etc/systemd/system/kinit-agent.service",
            "/var/lib/kinit/agent/config.yaml",
            "/etc/containerd/config.toml",
            "/etc/cni/net.d/10-kinit.conflist",
        ];

        let single = ClusterRenderContext::default();
        let mut expected = vec![
            "/etc/kubernetes/manifests/kube-apiserver.yaml",
            "/etc/kubernetes/manifests/kube-controller-manager.yaml",
            "/etc/kubernetes/manifests/kube-scheduler.yaml",
        ];
        expected.extend(node_files);
        assert_eq!(paths(&single), expected);

        let ha = ClusterRenderContext::example_ha();
        let all: Vec<&str> = HostFile::ALL.iter().map(|f| f.path()).collect();
        assert_eq!(paths(&ha), all);

        let mut worker = ClusterRenderContext::example_ha();
        worker.control_plane = None;
        worker.etcd_member = None;
        worker.load_balancer = None;
        worker.node.name = "worker-1".into();
        worker.node.ip = "10.0.0.21".parse().unwrap();
        worker.node.pod_cidr = "10.244.5.0/24".parse().unwrap();
        assert_eq!(paths(&worker), node_files);

        let mut lb_only = worker.clone();
        lb_only.load_balancer = ClusterRenderContext::example_ha().load_balancer;
        lb_only.load_balancer.as_mut().unwrap().frontend_port = 6443;
        let mut expected = node_files.to_vec();
        expected.extend([
            "/etc/haproxy/haproxy.cfg",
            "/etc/keepalived/keepalived.conf",
            "/etc/keepalived/check_apiserver.sh",
        ]);
        assert_eq!(paths(&lb_only), expected);
    }

    #[test]
    fn rendered_files_carry_modes() {
        for file in render_all(&ClusterRenderContext::example_ha()).unwrap() {
            let expected = match file.path.to_str().unwrap() {
                p if p.starts_with(STATIC_POD_MANIFEST_DIR) => 0o600,
                "/etc/keepalived/keepalived.conf" => 0o600,
                "/etc/keepalived/check_apiserver.sh" => 0o755,
                _ => 0o644,
            };
            assert_eq!(file.mode, expected, "{}", file.path.display());
            assert!(file.path.is_absolute());
        }
    }

    #[test]
    fn file_for_missing_role_is_refused() {
        let context = ClusterRenderContext::default();
        let err = HostFile::Etcd.render(&context).unwrap_err();
        assert!(
            matches!(
                err,
                TemplateError::RoleNotAssigned {
                    role: "etcd",
                    section: "etcd_member",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("/etc/kubernetes/manifests/etcd.yaml"));
    }

    #[test]
    fn rendering_is_deterministic() {
        let mut context = ClusterRenderContext::example_ha();
        for (key, value) in [("zone", "b"), ("alpha", "1"), ("middle", "x")] {
            context.node.labels.insert(key.into(), value.into());
        }
        let first = render_all(&context).unwrap();
        let second = render_all(&context.clone()).unwrap();
        assert_eq!(first, second);
        let config = &first
            .iter()
            .find(|f| f.path.ends_with("config.yaml") && f.path.starts_with("/var/lib"))
            .unwrap()
            .contents;
        let alpha = config.find("\"alpha\"").unwrap();
        let zone = config.find("\"zone\"").unwrap();
        assert!(alpha < zone, "labels are emitted in sorted order");
    }
}
