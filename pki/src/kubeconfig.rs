//! A small typed model of the kubeconfig file format (`apiVersion: v1, kind: Config`).
//!
//! kube-rs has a complete model, but it lives in `kube-client`, which would pull an HTTP, TLS
//! and async stack into a crate that only reads and writes files. Unknown fields are kept in
//! `extra` maps so kubeconfigs written by other tools survive a renewal unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::PkiError;

type Extra = BTreeMap<String, serde_yaml::Value>;

/// A kubeconfig file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kubeconfig {
    /// Always `v1`.
    #[serde(rename = "apiVersion", default = "api_version_v1")]
    pub api_version: String,
    /// Clusters (API servers and their CA).
    #[serde(default)]
    pub clusters: Vec<NamedCluster>,
    /// Contexts (cluster + user pairs).
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
    /// Name of the context used by default.
    #[serde(rename = "current-context", default)]
    pub current_context: String,
    /// Always `Config`.
    #[serde(default = "kind_config")]
    pub kind: String,
    /// Client preferences (kept as written).
    #[serde(default)]
    pub preferences: Extra,
    /// Users (credentials).
    #[serde(default)]
    pub users: Vec<NamedUser>,
    /// Fields this model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

fn api_version_v1() -> String {
    "v1".into()
}

fn kind_config() -> String {
    "Config".into()
}

/// A named cluster entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedCluster {
    /// Cluster name.
    pub name: String,
    /// Connection details.
    pub cluster: ClusterEntry,
}

/// How to reach and trust an API server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEntry {
    /// Base64 of the CA certificate PEM.
    #[serde(
        rename = "certificate-authority-data",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub certificate_authority_data: Option<String>,
    /// `https://host:port`.
    #[serde(default)]
    pub server: String,
    /// Fields this model does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A named context entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedContext {
    /// Context name (`<user>@<cluster>`).
    pub name: String,
    /// Cluster and user it combines.
    pub context: ContextEntry,
}

/// A cluster/user pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextEntry {
    /// Cluster name.
    pub cluster: String,
    /// User name.
    pub user: String,
    /// Fields this model does not know (e.g. `namespace`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A named user entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedUser {
    /// User name.
    pub name: String,
    /// Credentials.
    pub user: UserEntry,
}

/// Client credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UserEntry {
    /// Base64 of the client certificate PEM.
    #[serde(
        rename = "client-certificate-data",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub client_certificate_data: Option<String>,
    /// Base64 of the client private key PEM.
    #[serde(
        rename = "client-key-data",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub client_key_data: Option<String>,
    /// Fields this model does not know (tokens, exec plugins, file references, ...).
    #[serde(flatten)]
    pub extra: Extra,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl Kubeconfig {
    /// A kubeconfig with one cluster, one user and the context `<user>@<cluster>` selected,
    /// embedding the CA and the client certificate and key (all PEM, base64-encoded).
    pub fn with_client_certificate(
        cluster_name: &str,
        server: &str,
        ca_pem: &str,
        user_name: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Kubeconfig {
        let context = format!("{user_name}@{cluster_name}");
        Kubeconfig {
            api_version: api_version_v1(),
            clusters: vec![NamedCluster {
                name: cluster_name.to_string(),
                cluster: ClusterEntry {
                    certificate_authority_data: Some(b64(ca_pem.as_bytes())),
                    server: server.to_string(),
                    extra: Extra::new(),
                },
            }],
            contexts: vec![NamedContext {
                name: context.clone(),
                context: ContextEntry {
                    cluster: cluster_name.to_string(),
                    user: user_name.to_string(),
                    extra: Extra::new(),
                },
            }],
            current_context: context,
            kind: kind_config(),
            preferences: Extra::new(),
            users: vec![NamedUser {
                name: user_name.to_string(),
                user: UserEntry {
                    client_certificate_data: Some(b64(cert_pem.as_bytes())),
                    client_key_data: Some(b64(key_pem.as_bytes())),
                    extra: Extra::new(),
                },
            }],
            extra: Extra::new(),
        }
    }

    /// Parses kubeconfig YAML; `path` is only used in error messages.
    pub fn from_yaml(yaml: &[u8], path: &Path) -> Result<Kubeconfig, PkiError> {
        serde_yaml::from_slice(yaml).map_err(|e| PkiError::InvalidKubeconfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Reads and parses a kubeconfig file.
    pub fn load(path: &Path) -> Result<Kubeconfig, PkiError> {
        let bytes = std::fs::read(path).map_err(|e| PkiError::io("read", path, e))?;
        Self::from_yaml(&bytes, path)
    }

    /// Serializes to YAML.
    pub fn to_yaml(&self) -> Result<String, PkiError> {
        serde_yaml::to_string(self).map_err(|e| PkiError::crypto("serialize kubeconfig", e))
    }

    /// The context named by `current-context`, or the only context.
    pub fn current(&self) -> Option<&NamedContext> {
        self.contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .or(match self.contexts.as_slice() {
                [only] => Some(only),
                _ => None,
            })
    }

    /// The cluster of the current context.
    pub fn current_cluster(&self) -> Option<&NamedCluster> {
        let name = &self.current()?.context.cluster;
        self.clusters.iter().find(|c| &c.name == name)
    }

    /// Index in `users` of the current context's user.
    pub(crate) fn current_user_index(&self) -> Option<usize> {
        let name = &self.current()?.context.user;
        self.users.iter().position(|u| &u.name == name)
    }

    /// Decoded (PEM) client certificate and key of the current user.
    pub(crate) fn client_credentials(&self, path: &Path) -> Result<(Vec<u8>, Vec<u8>), PkiError> {
        let invalid = |reason: &str| PkiError::InvalidKubeconfig {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let user = self
            .current_user_index()
            .map(|i| &self.users[i].user)
            .ok_or_else(|| invalid("no user for the current context"))?;
        let decode = |field: &Option<String>, name: &str| -> Result<Vec<u8>, PkiError> {
            let data = field
                .as_ref()
                .ok_or_else(|| invalid(&format!("the current user has no embedded {name}")))?;
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| invalid(&format!("{name} is not base64: {e}")))
        };
        Ok((
            decode(&user.client_certificate_data, "client-certificate-data")?,
            decode(&user.client_key_data, "client-key-data")?,
        ))
    }

    /// Decoded (PEM) CA certificate of the current cluster, if embedded.
    pub(crate) fn ca_data(&self) -> Option<Vec<u8>> {
        let data = self
            .current_cluster()?
            .cluster
            .certificate_authority_data
            .as_ref()?;
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()
    }

    /// Replaces the current user's embedded certificate and key.
    pub(crate) fn set_client_credentials(&mut self, cert_pem: &str, key_pem: &str) -> bool {
        match self.current_user_index() {
            Some(i) => {
                let user = &mut self.users[i].user;
                user.client_certificate_data = Some(b64(cert_pem.as_bytes()));
                user.client_key_data = Some(b64(key_pem.as_bytes()));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_kubeadm_shaped_yaml() {
        let kc = Kubeconfig::with_client_certificate(
            "kubernetes",
            "https://10.0.0.1:6443",
            "CA",
            "kubernetes-admin",
            "CERT",
            "KEY",
        );
        let yaml = kc.to_yaml().unwrap();
        for needle in [
            "apiVersion: v1",
            "kind: Config",
            "current-context: kubernetes-admin@kubernetes",
            "certificate-authority-data: Q0E=",
            "server: https://10.0.0.1:6443",
            "client-certificate-data: Q0VSVA==",
            "client-key-data: S0VZ",
        ] {
            assert!(yaml.contains(needle), "missing {needle} in\n{yaml}");
        }
        let back = Kubeconfig::from_yaml(yaml.as_bytes(), Path::new("k")).unwrap();
        assert_eq!(back, kc);
        let (cert, key) = back.client_credentials(Path::new("k")).unwrap();
        assert_eq!(
            (cert.as_slice(), key.as_slice()),
            (&b"CERT"[..], &b"KEY"[..])
        );
        assert_eq!(back.ca_data().unwrap(), b"CA");
    }

    #[test]
    fn unknown_fields_survive_and_credentials_can_be_replaced() {
        let yaml = r#"
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://x:6443
    certificate-authority-data: Q0E=
    tls-server-name: x
contexts:
- name: ctx
  context: {cluster: c, user: u, namespace: dev}
current-context: ctx
users:
- name: other
  user: {token: abc}
- name: u
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
extensions: []
"#;
        let mut kc = Kubeconfig::from_yaml(yaml.as_bytes(), Path::new("k")).unwrap();
        assert!(kc.set_client_credentials("NEW", "NEWKEY"));
        let out = kc.to_yaml().unwrap();
        assert!(out.contains("tls-server-name: x"));
        assert!(out.contains("namespace: dev"));
        assert!(out.contains("token: abc"));
        assert!(out.contains("extensions: []"));
        let again = Kubeconfig::from_yaml(out.as_bytes(), Path::new("k")).unwrap();
        let (cert, _) = again.client_credentials(Path::new("k")).unwrap();
        assert_eq!(cert, b"NEW");
    }

    #[test]
    fn missing_embedded_cert_is_a_clear_error() {
        let yaml = "apiVersion: v1\nkind: Config\ncontexts: [{name: a, context: {cluster: c, user: u}}]\ncurrent-context: a\nusers: [{name: u, user: {client-certificate: /var/lib/kubelet/pki/x.pem}}]\n";
        let kc = Kubeconfig::from_yaml(yaml.as_bytes(), Path::new("/etc/kubernetes/kubelet.conf"))
            .unwrap();
        let msg = kc
            .client_credentials(Path::new("/etc/kubernetes/kubelet.conf"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("kubelet.conf") && msg.contains("client-certificate-data"),
            "{msg}"
        );
        assert!(Kubeconfig::from_yaml(b"users: 5", Path::new("bad")).is_err());
    }
}
