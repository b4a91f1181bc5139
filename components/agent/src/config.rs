//! Command-line flags and the `AgentConfiguration` file the installer renders
//! (`templates/files/kinit-agent-config.yaml.j2`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;
use serde::Deserialize;

use crate::AgentError;

/// API version of the configuration file.
pub const CONFIG_API_VERSION: &str = "agent.kinit.io/v1alpha1";
/// Kind of the configuration file.
pub const CONFIG_KIND: &str = "AgentConfiguration";

/// `kinit agent` flags, named like the kubelet's where one exists. Flags override the file.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Agent configuration file (`AgentConfiguration` YAML).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kubeconfig with the node's credentials (`system:node:<name>`).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/kubernetes/kubelet.conf"
    )]
    pub kubeconfig: PathBuf,
    /// Bootstrap kubeconfig; accepted for kubelet compatibility. The agent needs `--kubeconfig`
    /// to exist already (the installer writes it); it is used only to say so clearly.
    #[arg(long, value_name = "FILE")]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Node name; overrides `nodeName` in the file and the host name.
    #[arg(long, visible_alias = "hostname-override", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Node address reported as InternalIP; overrides `nodeIP`.
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<IpAddr>,
    /// Static pod manifest directory; overrides `podManifestPath`.
    #[arg(long, value_name = "DIR")]
    pub pod_manifest_path: Option<PathBuf>,
    /// CRI endpoint (`unix:///run/containerd/containerd.sock`); overrides the file.
    #[arg(long, value_name = "URL")]
    pub container_runtime_endpoint: Option<String>,
    /// Agent state directory (pod volumes, serving certificate).
    #[arg(long, value_name = "DIR")]
    pub root_dir: Option<PathBuf>,
    /// HTTPS port of the agent's server (logs, exec, healthz).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
}

/// Cgroup driver; must match containerd's `SystemdCgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// systemd slices (`kubepods.slice`).
    #[default]
    Systemd,
    /// Plain cgroupfs paths (`/kubepods`).
    Cgroupfs,
}

/// How pod traffic crosses nodes (the inventory's `cluster.cni.mode`): `auto`, `host-gw` or
/// `vxlan`.
pub use kinit_cni::network::CniMode;

/// Resources held back from pods (`systemReserved` + `kubeReserved` in the kubelet).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Reserved {
    /// CPU quantity, e.g. `100m`.
    pub cpu: Option<String>,
    /// Memory quantity, e.g. `256Mi`.
    pub memory: Option<String>,
    /// Ephemeral storage quantity, e.g. `1Gi`.
    #[serde(rename = "ephemeral-storage")]
    pub ephemeral_storage: Option<String>,
}

/// The configuration file (camelCase keys like the kubelet's `KubeletConfiguration`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfiguration {
    /// Must be [`CONFIG_API_VERSION`].
    pub api_version: String,
    /// Must be [`CONFIG_KIND`].
    pub kind: String,
    /// Node name.
    pub node_name: Option<String>,
    /// InternalIP of the node.
    #[serde(rename = "nodeIP")]
    pub node_ip: Option<IpAddr>,
    /// The node's pod range (reported as `spec.podCIDR`).
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// Static pod manifest directory.
    #[serde(default = "default_manifest_path")]
    pub pod_manifest_path: PathBuf,
    /// Cluster DNS servers written into pods' resolv.conf.
    #[serde(rename = "clusterDNS", default)]
    pub cluster_dns: Vec<String>,
    /// Cluster domain (search path `<ns>.svc.<domain>`).
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// The host resolver file pods with `dnsPolicy: Default` get (the kubelet's
    /// `--resolv-conf`). When it names only systemd-resolved's stub, the upstreams in
    /// `/run/systemd/resolve/resolv.conf` are used instead.
    #[serde(default = "default_resolv_conf")]
    pub resolv_conf: PathBuf,
    /// The whole cluster's pod network: routes to other nodes' ranges are kept inside it, and
    /// traffic from outside it to a ClusterIP is masqueraded (kube-proxy's `clusterCIDR`).
    /// Without it the agent keeps no pod routes and runs no service proxy.
    #[serde(rename = "clusterCIDR", default)]
    pub cluster_cidr: Option<ipnet::IpNet>,
    /// How pod traffic crosses nodes.
    #[serde(default = "default_cni_mode")]
    pub cni_mode: CniMode,
    /// Whether the agent runs the service proxy (nftables); off when another proxy serves
    /// Services on this node.
    #[serde(default = "default_true")]
    pub service_proxy: bool,
    /// Cgroup driver.
    #[serde(default)]
    pub cgroup_driver: CgroupDriver,
    /// Parent cgroup of all pod sandboxes.
    #[serde(default)]
    pub cgroup_parent: String,
    /// CRI endpoint.
    #[serde(default = "default_runtime_endpoint")]
    pub container_runtime_endpoint: String,
    /// Labels the node registers with.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// Taints the node registers with (only at creation).
    #[serde(default)]
    pub register_with_taints: Vec<Taint>,
    /// Maximum pods on this node (capacity `pods`).
    #[serde(default = "default_max_pods")]
    pub max_pods: u32,
    /// Resources reserved for the system.
    #[serde(default)]
    pub system_reserved: Reserved,
    /// Agent state directory.
    #[serde(default = "default_root_dir")]
    pub root_dir: PathBuf,
    /// Pod log directory.
    #[serde(default = "default_pod_logs_dir")]
    pub pod_logs_dir: PathBuf,
    /// HTTPS port of the agent server.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Serving certificate (PEM); a self-signed one is made under `rootDir` when absent.
    pub tls_cert_file: Option<PathBuf>,
    /// Serving key (PEM).
    pub tls_private_key_file: Option<PathBuf>,
    /// CA that signs the clients allowed to call the agent server (the API server).
    #[serde(rename = "clientCAFile", default = "default_client_ca")]
    pub client_ca_file: PathBuf,
    /// How often the Lease is renewed and node status checked, in seconds.
    #[serde(default = "default_heartbeat")]
    pub node_status_update_frequency_seconds: u64,
    /// How often the static pod directory is rescanned besides file notifications, in seconds.
    #[serde(default = "default_rescan")]
    pub static_pod_rescan_seconds: u64,
}

fn default_cni_mode() -> CniMode {
    CniMode::Auto
}
fn default_resolv_conf() -> PathBuf {
    "/etc/resolv.conf".into()
}
fn default_true() -> bool {
    true
}
fn default_manifest_path() -> PathBuf {
    "/etc/kubernetes/manifests".into()
}
fn default_cluster_domain() -> String {
    "cluster.local".into()
}
fn default_runtime_endpoint() -> String {
    "unix:///run/containerd/containerd.sock".into()
}
fn default_max_pods() -> u32 {
    110
}
fn default_root_dir() -> PathBuf {
    "/var/lib/kinit/agent".into()
}
fn default_pod_logs_dir() -> PathBuf {
    "/var/log/pods".into()
}
fn default_port() -> u16 {
    10250
}
fn default_client_ca() -> PathBuf {
    "/etc/kubernetes/pki/ca.crt".into()
}
fn default_heartbeat() -> u64 {
    10
}
fn default_rescan() -> u64 {
    20
}

impl Default for AgentConfiguration {
    fn default() -> Self {
        serde_yaml::from_str(&format!(
            "apiVersion: {CONFIG_API_VERSION}\nkind: {CONFIG_KIND}\n"
        ))
        .expect("defaults parse")
    }
}

/// The effective settings: file + flags + host defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Node name.
    pub node_name: String,
    /// InternalIP, when known.
    pub node_ip: Option<IpAddr>,
    /// Kubeconfig path.
    pub kubeconfig: PathBuf,
    /// The parsed file (with flag overrides applied).
    pub config: AgentConfiguration,
}

impl Settings {
    /// Reads the file (if any), applies flags and fills the node name from the host name.
    pub fn load(args: &AgentArgs) -> Result<Settings, AgentError> {
        let mut config = match &args.config {
            Some(path) => AgentConfiguration::read(path)?,
            None => AgentConfiguration::default(),
        };
        if let Some(ip) = args.node_ip {
            config.node_ip = Some(ip);
        }
        if let Some(p) = &args.pod_manifest_path {
            config.pod_manifest_path = p.clone();
        }
        if let Some(e) = &args.container_runtime_endpoint {
            config.container_runtime_endpoint = e.clone();
        }
        if let Some(d) = &args.root_dir {
            config.root_dir = d.clone();
        }
        if let Some(p) = args.port {
            config.port = p;
        }
        let node_name = match args.node_name.clone().or_else(|| config.node_name.clone()) {
            Some(n) => n,
            None => hostname()?,
        }
        .to_lowercase();
        if node_name.is_empty() {
            return Err(AgentError::Config(
                "the node name is empty: set nodeName in the config file or --node-name".into(),
            ));
        }
        Ok(Settings {
            node_name,
            node_ip: config.node_ip,
            kubeconfig: args.kubeconfig.clone(),
            config,
        })
    }

    /// Lease renewal / status check period.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.config.node_status_update_frequency_seconds.max(1))
    }
}

impl AgentConfiguration {
    /// Parses and checks a configuration file.
    pub fn read(path: &Path) -> Result<AgentConfiguration, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AgentError::Config(format!(
                "cannot read the agent config {}: {e}; pass an existing file with --config",
                path.display()
            ))
        })?;
        Self::parse(&text).map_err(|e| match e {
            AgentError::Config(m) => AgentError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<AgentConfiguration, AgentError> {
        let config: AgentConfiguration = serde_yaml::from_str(text)
            .map_err(|e| AgentError::Config(format!("invalid agent configuration: {e}")))?;
        if config.api_version != CONFIG_API_VERSION || config.kind != CONFIG_KIND {
            return Err(AgentError::Config(format!(
                "expected apiVersion {CONFIG_API_VERSION} kind {CONFIG_KIND}, found {} {}",
                config.api_version, config.kind
            )));
        }
        if config.cgroup_driver == CgroupDriver::Systemd
            && !config.cgroup_parent.is_empty()
            && !config.cgroup_parent.ends_with(".slice")
        {
            return Err(AgentError::Config(format!(
                "cgroupParent {:?} must be a systemd slice (name.slice) with cgroupDriver systemd",
                config.cgroup_parent
            )));
        }
        Ok(config)
    }
}

fn hostname() -> Result<String, AgentError> {
    kinit_component_base::hostname()
        .map_err(|e| AgentError::Config(format!("cannot read the host name ({e}); set nodeName")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        Agent(AgentArgs),
    }

    #[test]
    fn rendered_config_parses() {
        let context = kinit_templates::ClusterRenderContext::default();
        let text =
            kinit_templates::render_template("kinit-agent-config.yaml.j2", &context).unwrap();
        let config = AgentConfiguration::parse(&text).unwrap();
        assert_eq!(
            config.node_name.as_deref(),
            Some(context.node.name.as_str())
        );
        assert_eq!(config.node_ip, Some(context.node.ip));
        assert_eq!(config.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(config.cgroup_parent, "kubepods.slice");
        assert_eq!(config.cluster_dns, vec!["10.96.0.10".to_string()]);
        assert_eq!(config.cluster_cidr, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(config.cni_mode, CniMode::Auto);
        assert!(config.service_proxy);
        assert_eq!(
            config
                .node_labels
                .get("node-role.kubernetes.io/control-plane"),
            Some(&String::new())
        );
        assert_eq!(config.register_with_taints[0].effect, "NoSchedule");
        assert_eq!(
            config.pod_manifest_path,
            PathBuf::from("/etc/kubernetes/manifests")
        );
    }

    #[test]
    fn rendered_unit_flags_parse() {
        let context = kinit_templates::ClusterRenderContext::default();
        let unit = kinit_templates::render_template("kinit-agent.service.j2", &context).unwrap();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let argv: Vec<&str> = exec.split_whitespace().collect();
        let Cmd::Agent(args) = Cli::try_parse_from(&argv[..]).unwrap().cmd;
        assert_eq!(
            args.kubeconfig,
            PathBuf::from("/etc/kubernetes/kubelet.conf")
        );
        assert_eq!(
            args.config.as_deref(),
            Some(Path::new("/var/lib/kinit/agent/config.yaml"))
        );
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "apiVersion: agent.kinit.io/v1alpha1\nkind: AgentConfiguration\nnodeName: Fromfile\ncgroupDriver: cgroupfs\ncgroupParent: /kinit-x\n",
        )
        .unwrap();
        let Cmd::Agent(args) =
            Cli::try_parse_from(["kinit", "agent", "--config", path.to_str().unwrap()])
                .unwrap()
                .cmd;
        assert_eq!(Settings::load(&args).unwrap().node_name, "fromfile");
        let Cmd::Agent(args) = Cli::try_parse_from([
            "kinit",
            "agent",
            "--config",
            path.to_str().unwrap(),
            "--node-name",
            "n9",
            "--port",
            "1",
        ])
        .unwrap()
        .cmd;
        let s = Settings::load(&args).unwrap();
        assert_eq!(s.node_name, "n9");
        assert_eq!(s.config.port, 1);
    }

    #[test]
    fn bad_files_are_explained() {
        let e = AgentConfiguration::parse("apiVersion: v1\nkind: Pod\n").unwrap_err();
        assert!(e.to_string().contains("expected apiVersion"), "{e}");
        let e = AgentConfiguration::parse(
            "apiVersion: agent.kinit.io/v1alpha1\nkind: AgentConfiguration\nbogus: 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = AgentConfiguration::parse(
            "apiVersion: agent.kinit.io/v1alpha1\nkind: AgentConfiguration\ncgroupParent: /x\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("slice"), "{e}");
    }
}
