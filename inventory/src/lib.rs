//! The kinit inventory: a typed, validated description of a cluster (hosts with roles, networks,
//! API endpoint, PKI settings), read from YAML before anything touches a host.
//!
//! [`Inventory::from_path`] parses and validates in one go and reports every problem at once,
//! each with its field path, line and a hint. [`kubeasz::import`] converts a kubeasz `hosts` file.

mod error;
pub mod kubeasz;
mod model;
mod names;
mod source;
mod validate;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

pub use error::{InventoryError, Problem};
pub use model::{
    Addons, ApiEndpoint, ClusterConfig, CniConfig, CniMode, Datastore, DnsConfig, Host, Inventory,
    InventorySpec, Metadata, PkiConfig, Role, SshConfig, Taint, TaintEffect, Vip, API_SERVER_PORT,
    API_VERSION, DEFAULT_VERSION, KEY_ALGORITHMS, KIND,
};

use source::{FieldPath, Issue, SourceTree};

impl Inventory {
    /// Reads, parses and validates the inventory file at `path`.
    pub fn from_path(path: &Path) -> Result<Inventory, InventoryError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            InventoryError::single(
                &source_name,
                "",
                None,
                format!("cannot read the inventory: {e}"),
                "check the path and its permissions (`kinit config print init-defaults` prints a starting point)",
            )
        })?;
        Inventory::from_str(&text, &source_name)
    }

    /// Parses and validates inventory YAML; `source_name` names it in error messages.
    pub fn from_str(text: &str, source_name: &str) -> Result<Inventory, InventoryError> {
        let tree = SourceTree::parse(text).map_err(|e| {
            InventoryError::single(
                source_name,
                "",
                Some(e.line),
                format!("YAML syntax error at column {}: {}", e.column, e.message),
                "fix the YAML at this line (indentation, quotes, brackets, `key: value`)",
            )
        })?;
        if tree.documents > 1 {
            return Err(InventoryError::single(
                source_name,
                "",
                None,
                format!("the file holds {} YAML documents", tree.documents),
                "keep one inventory per file (remove the extra `---` sections)",
            ));
        }
        let Some(root) = &tree.root else {
            return Err(InventoryError::single(
                source_name,
                "",
                Some(1),
                "the file is empty",
                "start from `kinit config print init-defaults`",
            ));
        };
        let mut issues = Vec::new();
        source::check_shape(
            root,
            &source::inventory_shape(),
            &FieldPath::root(),
            &mut issues,
        );
        if !issues.is_empty() {
            return Err(with_lines(source_name, &tree, issues));
        }
        let inventory: Inventory =
            serde_yaml::from_str(text).map_err(|e| serde_problem(source_name, &e))?;
        let issues = validate::check(&inventory);
        if !issues.is_empty() {
            return Err(with_lines(source_name, &tree, issues));
        }
        Ok(inventory)
    }

    /// Runs the semantic checks on an inventory built in code (problems carry no line).
    pub fn validate(&self) -> Result<(), InventoryError> {
        let issues = validate::check(self);
        if issues.is_empty() {
            return Ok(());
        }
        Err(InventoryError {
            source_name: format!("inventory {}", self.metadata.name),
            problems: issues
                .into_iter()
                .map(|i| Problem {
                    path: i.path.to_string(),
                    line: None,
                    message: i.message,
                    hint: i.hint,
                })
                .collect(),
        })
    }

    /// The inventory as YAML; [`Inventory::from_str`] reads it back unchanged.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self)
            .expect("inventory types only hold strings, numbers and booleans under string keys")
    }

    /// One control plane and two workers on 10.0.0.0/24, with the cluster defaults spelled out.
    pub fn example() -> Inventory {
        let host = |name: &str, address: &str, role: Role| {
            let mut h = Host::new(name, address, &[role]);
            h.ssh.key_path = Some(PathBuf::from("~/.ssh/id_ed25519"));
            h
        };
        let cluster = ClusterConfig {
            api_endpoint: Some(ApiEndpoint {
                host: "10.0.0.11".into(),
                port: API_SERVER_PORT,
            }),
            datastore: Some(Datastore::Embedded),
            ..ClusterConfig::default()
        };
        Inventory {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: "example".into(),
            },
            spec: InventorySpec {
                hosts: vec![
                    host("node1", "10.0.0.11", Role::ControlPlane),
                    host("node2", "10.0.0.12", Role::Worker),
                    host("node3", "10.0.0.13", Role::Worker),
                ],
                cluster,
            },
        }
    }

    fn with_role(&self, role: Role) -> Vec<&Host> {
        self.spec
            .hosts
            .iter()
            .filter(|h| h.has_role(role))
            .collect()
    }

    /// Hosts with the control-plane role, in file order.
    pub fn control_planes(&self) -> Vec<&Host> {
        self.with_role(Role::ControlPlane)
    }

    /// Hosts with the worker role. A control plane without the worker role is not a worker
    /// (it keeps the control-plane taint); neither is an etcd- or lb-only host.
    pub fn workers(&self) -> Vec<&Host> {
        self.with_role(Role::Worker)
    }

    /// The etcd members: hosts with the etcd role; when none has it and the datastore is etcd,
    /// the control planes (stacked etcd). Empty with the embedded datastore.
    pub fn etcd_members(&self) -> Vec<&Host> {
        let explicit = self.with_role(Role::Etcd);
        if !explicit.is_empty() {
            return explicit;
        }
        match self.datastore() {
            Datastore::Etcd => self.control_planes(),
            Datastore::Embedded => Vec::new(),
        }
    }

    /// Hosts with the lb role.
    pub fn lb_hosts(&self) -> Vec<&Host> {
        self.with_role(Role::Lb)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.spec.hosts.iter().find(|h| h.name == name)
    }

    /// The first host with the control-plane role: where `init` runs.
    ///
    /// # Panics
    /// When no host has the role; validation rejects such inventories.
    pub fn first_control_plane(&self) -> &Host {
        self.spec
            .hosts
            .iter()
            .find(|h| h.has_role(Role::ControlPlane))
            .expect("a validated inventory has a control-plane host")
    }

    /// Where clients reach the API: `apiEndpoint` if set, else the VIP on `vip.port`, else the
    /// first control plane's node IP on 6443.
    pub fn api_endpoint(&self) -> ApiEndpoint {
        let c = &self.spec.cluster;
        if let Some(ep) = &c.api_endpoint {
            return ep.clone();
        }
        if let Some(vip) = &c.vip {
            return ApiEndpoint {
                host: vip.address.to_string(),
                port: vip.port,
            };
        }
        ApiEndpoint {
            host: self.first_control_plane().node_ip().to_string(),
            port: API_SERVER_PORT,
        }
    }

    /// `datastore` if set, else etcd with more than one control plane, else embedded.
    pub fn datastore(&self) -> Datastore {
        match self.spec.cluster.datastore {
            Some(d) => d,
            None if self.control_planes().len() > 1 => Datastore::Etcd,
            None => Datastore::Embedded,
        }
    }

    /// The `kubernetes` service IP: the first address of the service CIDR (10.96.0.1).
    pub fn kubernetes_service_ip(&self) -> IpAddr {
        nth_address(&self.spec.cluster.service_cidr, 1)
    }

    /// The cluster DNS service IP: the 10th address of the service CIDR (10.96.0.10), as kubeadm.
    pub fn cluster_dns_ip(&self) -> IpAddr {
        nth_address(&self.spec.cluster.service_cidr, 10)
    }
}

/// The address `n` after the network address of `net`.
fn nth_address(net: &IpNet, n: u32) -> IpAddr {
    match net {
        IpNet::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4.network()).wrapping_add(n))),
        IpNet::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6.network()).wrapping_add(u128::from(n)),
        )),
    }
}

/// Attaches lines to issues and orders them as they appear in the file.
fn with_lines(source_name: &str, tree: &SourceTree, issues: Vec<Issue>) -> InventoryError {
    let mut problems: Vec<Problem> = issues
        .into_iter()
        .map(|i| Problem {
            line: tree.line_of(&i.path),
            path: i.path.to_string(),
            message: i.message,
            hint: i.hint,
        })
        .collect();
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    InventoryError {
        source_name: source_name.to_string(),
        problems,
    }
}

/// Converts a serde_yaml error (`path: message at line L column C`) into a problem.
fn serde_problem(source_name: &str, e: &serde_yaml::Error) -> InventoryError {
    let line = e.location().map(|l| l.line());
    let mut text = e.to_string();
    if let Some(at) = text.rfind(" at line ") {
        text.truncate(at);
    }
    let (path, message) = match text.split_once(": ") {
        Some((path, msg)) if !path.contains(' ') => (path.to_string(), msg.to_string()),
        _ => (String::new(), text),
    };
    let hint = if let Some(field) = message.strip_prefix("missing field ") {
        format!("add {field} here; the field reference is in the inventory README")
    } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
        "write a value of the expected type; the field reference is in the inventory README".into()
    } else {
        "see the field reference in the inventory README".to_string()
    };
    InventoryError::single(source_name, path, line, message, hint)
}

#[cfg(test)]
mod tests;
