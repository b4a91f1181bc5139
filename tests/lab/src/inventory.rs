//! The kinit inventory written for a lab (apiVersion kinit.dev/v1alpha1, kind Cluster).

use std::path::Path;

use serde::Serialize;

/// Top level of the inventory file.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryFile {
    /// `kinit.dev/v1alpha1`.
    pub api_version: &'static str,
    /// `Cluster`.
    pub kind: &'static str,
    /// Cluster name.
    pub metadata: Metadata,
    /// Hosts and cluster settings.
    pub spec: Spec,
}

/// `metadata`.
#[derive(Debug, Serialize)]
pub struct Metadata {
    /// The lab's name.
    pub name: String,
}

/// `spec`.
#[derive(Debug, Serialize)]
pub struct Spec {
    /// The hosts.
    pub hosts: Vec<InventoryHost>,
    /// Cluster settings the lab decides (the rest take kinit's defaults).
    pub cluster: ClusterSettings,
}

/// One `spec.hosts[]` entry.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryHost {
    /// Host name.
    pub name: String,
    /// Address on the lab bridge.
    pub address: String,
    /// How to log in.
    pub ssh: SshSettings,
    /// `control-plane` for the first host, `worker` for the others.
    pub roles: Vec<&'static str>,
}

/// `ssh` of a host.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SshSettings {
    /// Login user.
    pub user: String,
    /// Port.
    pub port: u16,
    /// Private key.
    pub key_path: String,
}

/// `spec.cluster`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSettings {
    /// The API endpoint: the first host's address.
    pub api_endpoint: ApiEndpoint,
}

/// `spec.cluster.apiEndpoint`.
#[derive(Debug, Serialize)]
pub struct ApiEndpoint {
    /// Address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// Builds the inventory for hosts `(name, address)`; the first host is the control plane.
pub fn lab_inventory(lab_name: &str, hosts: &[(String, String)], key_path: &Path) -> InventoryFile {
    let inventory_hosts = hosts
        .iter()
        .enumerate()
        .map(|(i, (name, address))| InventoryHost {
            name: name.clone(),
            address: address.clone(),
            ssh: SshSettings {
                user: "root".into(),
                port: 22,
                key_path: key_path.display().to_string(),
            },
            roles: if i == 0 {
                vec!["control-plane"]
            } else {
                vec!["worker"]
            },
        })
        .collect();
    InventoryFile {
        api_version: "kinit.dev/v1alpha1",
        kind: "Cluster",
        metadata: Metadata {
            name: lab_name.to_string(),
        },
        spec: Spec {
            hosts: inventory_hosts,
            cluster: ClusterSettings {
                api_endpoint: ApiEndpoint {
                    host: hosts.first().map(|h| h.1.clone()).unwrap_or_default(),
                    port: 6443,
                },
            },
        },
    }
}

/// The inventory as YAML, with a header saying where it came from.
pub fn render(inventory: &InventoryFile) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Written by `kinit lab up` for lab {:?}; removed by `kinit lab down`.\n{}",
        inventory.metadata.name,
        serde_yaml::to_string(inventory)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_is_control_plane_and_endpoint() {
        let hosts = vec![
            ("node1".to_string(), "10.88.0.11".to_string()),
            ("node2".to_string(), "10.88.0.12".to_string()),
        ];
        let inventory = lab_inventory(
            "lab",
            &hosts,
            Path::new("/var/lib/kinit-lab/lab/id_ed25519"),
        );
        let yaml = render(&inventory).unwrap();
        let value: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(value["apiVersion"], "kinit.dev/v1alpha1");
        assert_eq!(value["kind"], "Cluster");
        assert_eq!(value["metadata"]["name"], "lab");
        assert_eq!(value["spec"]["hosts"][0]["roles"][0], "control-plane");
        assert_eq!(value["spec"]["hosts"][1]["roles"][0], "worker");
        assert_eq!(value["spec"]["hosts"][1]["address"], "10.88.0.12");
        assert_eq!(value["spec"]["hosts"][0]["ssh"]["user"], "root");
        assert_eq!(value["spec"]["hosts"][0]["ssh"]["port"], 22);
        assert_eq!(
            value["spec"]["hosts"][0]["ssh"]["keyPath"],
            "/var/lib/kinit-lab/lab/id_ed25519"
        );
        assert_eq!(
            value["spec"]["cluster"]["apiEndpoint"]["host"],
            "10.88.0.11"
        );
        assert_eq!(value["spec"]["cluster"]["apiEndpoint"]["port"], 6443);
    }
}
