//! The kinit inventory written for a lab, built with the inventory crate's own types so the
//! file `kinit lab up` writes is one every other command accepts.

use std::path::Path;

use kinit_inventory::{
    ApiEndpoint, ClusterConfig, Host, Inventory, InventorySpec, Metadata, Role, API_SERVER_PORT,
    API_VERSION, KIND,
};

/// Builds the inventory for hosts `(name, address)`; the first host is the control plane and
/// the API endpoint, the others are workers. Everyone logs in as root with the lab's key.
pub fn lab_inventory(lab_name: &str, hosts: &[(String, String)], key_path: &Path) -> Inventory {
    let inventory_hosts = hosts
        .iter()
        .enumerate()
        .map(|(i, (name, address))| {
            let role = if i == 0 {
                Role::ControlPlane
            } else {
                Role::Worker
            };
            let mut host = Host::new(name, address, &[role]);
            host.ssh.key_path = Some(key_path.to_path_buf());
            host
        })
        .collect();
    Inventory {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: Metadata {
            name: lab_name.to_string(),
        },
        spec: InventorySpec {
            hosts: inventory_hosts,
            cluster: ClusterConfig {
                api_endpoint: hosts.first().map(|(_, address)| ApiEndpoint {
                    host: address.clone(),
                    port: API_SERVER_PORT,
                }),
                ..ClusterConfig::default()
            },
        },
    }
}

/// The inventory as YAML, with a header saying where it came from.
pub fn render(inventory: &Inventory) -> String {
    format!(
        "# Written by `kinit lab up` for lab {:?}; removed by `kinit lab down`.\n{}",
        inventory.metadata.name,
        inventory.to_yaml()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_inventory_validates_and_reads_back() {
        let hosts = vec![
            ("node1".to_string(), "10.88.0.11".to_string()),
            ("node2".to_string(), "10.88.0.12".to_string()),
        ];
        let key = Path::new("/var/lib/kinit-lab/lab/id_ed25519");
        let yaml = render(&lab_inventory("lab", &hosts, key));
        let read = Inventory::from_str(&yaml, "lab.yaml").unwrap();
        assert_eq!(read.metadata.name, "lab");
        let names: Vec<&str> = read
            .control_planes()
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["node1"]);
        let names: Vec<&str> = read.workers().iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["node2"]);
        assert_eq!(read.spec.hosts[1].address, "10.88.0.12");
        assert_eq!(read.spec.hosts[0].ssh.user, "root");
        assert!(!read.spec.hosts[0].ssh.sudo);
        assert_eq!(read.spec.hosts[0].ssh.key_path.as_deref(), Some(key));
        let endpoint = read.api_endpoint();
        assert_eq!(
            (endpoint.host.as_str(), endpoint.port),
            ("10.88.0.11", 6443)
        );
    }
}
