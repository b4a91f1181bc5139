//! The pod's `/etc/hosts`, managed like the kubelet's: localhost entries and the pod's own
//! name (fully qualified when it has a hostname and subdomain, as StatefulSet pods do), or for
//! hostNetwork pods a copy of the node's file, then the pod's `hostAliases`. It is written per
//! pod under the agent's root and mounted into every container that does not mount its own.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use crate::volumes::pod_dir;
use crate::AgentError;

/// Where a container sees the file.
pub const CONTAINER_PATH: &str = "/etc/hosts";

const MANAGED_HEADER: &str = "# Kubernetes-managed hosts file.\n";
const ALIASES_HEADER: &str = "\n# Entries added by HostAliases.\n";

/// The pod's host name as the sandbox gets it: `spec.hostname` or the pod name, at most 63
/// characters, without trailing `-` or `.`.
pub fn pod_hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let mut h = spec
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    h.truncate(63);
    h.trim_end_matches(['-', '.']).to_string()
}

/// The file's content. `pod_ip` may be empty (no line for the pod then); `node_hosts` is the
/// node's own file, used for hostNetwork pods.
pub fn content(pod: &Pod, pod_ip: &str, cluster_domain: &str, node_hosts: &str) -> String {
    let spec = pod.spec.as_ref();
    let mut out = String::new();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        out.push_str(MANAGED_HEADER);
        out.push_str("# Entries added by the node's /etc/hosts.\n");
        out.push_str(node_hosts);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    } else {
        out.push_str(MANAGED_HEADER);
        out.push_str(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
        );
        if !pod_ip.is_empty() {
            let hostname = pod_hostname(pod);
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            match spec
                .and_then(|s| s.subdomain.as_deref())
                .filter(|s| !s.is_empty())
            {
                Some(sub) => out.push_str(&format!(
                    "{pod_ip}\t{hostname}.{sub}.{ns}.svc.{cluster_domain}\t{hostname}\n"
                )),
                None => out.push_str(&format!("{pod_ip}\t{hostname}\n")),
            }
        }
    }
    let aliases = spec
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str(ALIASES_HEADER);
        for alias in aliases {
            let names = alias.hostnames.as_deref().unwrap_or_default();
            if alias.ip.is_empty() || names.is_empty() {
                continue;
            }
            out.push_str(&format!("{}\t{}\n", alias.ip, names.join("\t")));
        }
    }
    out
}

/// Whether the kubelet would give this container the managed file: not when it mounts
/// something at `/etc/hosts` itself.
pub fn wanted(container_mounts: &[k8s_cri::v1::Mount]) -> bool {
    !container_mounts
        .iter()
        .any(|m| Path::new(&m.container_path) == Path::new(CONTAINER_PATH))
}

/// Writes the pod's file (atomically) and returns its path on the host.
pub fn write(
    root: &Path,
    pod: &Pod,
    pod_ip: &str,
    cluster_domain: &str,
) -> Result<PathBuf, AgentError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let dir = pod_dir(root, uid);
    let path = dir.join("etc-hosts");
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let node_hosts = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        String::new()
    };
    let text = content(pod, pod_ip, cluster_domain, &node_hosts);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(path);
    }
    let fail = |e: std::io::Error| {
        AgentError::Volume(format!(
            "writing the pod's hosts file {}: {e}",
            path.display()
        ))
    };
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let tmp = dir.join(".etc-hosts.tmp");
    std::fs::write(&tmp, text.as_bytes()).map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn pod_entries_fqdn_and_aliases() {
        let p = pod(serde_json::json!({
            "hostname": "web-0", "subdomain": "web",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}],
            "containers": [{"name": "c"}]
        }));
        let text = content(&p, "10.244.1.5", "cluster.local", "");
        assert!(text.starts_with(MANAGED_HEADER), "{text}");
        assert!(text.contains("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(
            text.contains("10.244.1.5\tweb-0.web.shop.svc.cluster.local\tweb-0\n"),
            "{text}"
        );
        assert!(
            text.ends_with("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"),
            "{text}"
        );

        let plain = pod(serde_json::json!({"containers": [{"name": "c"}]}));
        let text = content(&plain, "10.244.1.6", "cluster.local", "");
        assert!(text.contains("10.244.1.6\tweb-0\n"), "{text}");
        assert!(!text.contains("HostAliases"), "{text}");
    }

    #[test]
    fn host_network_pods_copy_the_node_file() {
        let p = pod(serde_json::json!({
            "hostNetwork": true,
            "hostAliases": [{"ip": "10.9.9.9", "hostnames": ["db"]}],
            "containers": [{"name": "c"}]
        }));
        let text = content(&p, "10.88.0.12", "cluster.local", "10.88.0.11 node1\n");
        assert!(text.contains("10.88.0.11 node1\n"), "{text}");
        assert!(!text.contains("web-0"), "{text}");
        assert!(text.ends_with("10.9.9.9\tdb\n"), "{text}");
    }

    #[test]
    fn written_atomically_and_not_for_own_mounts() {
        let root = tempfile::tempdir().unwrap();
        let p = pod(serde_json::json!({"containers": [{"name": "c"}]}));
        let path = write(root.path(), &p, "10.244.1.7", "cluster.local").unwrap();
        assert_eq!(path, root.path().join("pods/u1/etc-hosts"));
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("10.244.1.7\tweb-0"));
        let own = k8s_cri::v1::Mount {
            container_path: "/etc/hosts".into(),
            ..Default::default()
        };
        assert!(!wanted(&[own]));
        assert!(wanted(&[]));
    }
}
