//! The certificates and kubeconfigs of a kubeadm-style control plane: names, files, subjects.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cert::{CaKind, SubjectAltName, Usage};
use crate::error::PkiError;
use crate::spec::PkiSpec;

/// Group bound to `cluster-admin` by kubeadm (used by `admin.conf` and the kubelet client).
pub const CLUSTER_ADMINS_GROUP: &str = "kubeadm:cluster-admins";
/// The superuser group that bypasses RBAC.
pub const SYSTEM_MASTERS_GROUP: &str = "system:masters";
/// Group of node (kubelet/agent) identities.
pub const NODES_GROUP: &str = "system:nodes";

/// A certificate or kubeconfig known to `check-expiration` and `renew`, by its kubeadm name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CertName {
    /// `admin.conf`
    #[serde(rename = "admin.conf")]
    AdminConf,
    /// `apiserver.crt`
    #[serde(rename = "apiserver")]
    Apiserver,
    /// `apiserver-etcd-client.crt`
    #[serde(rename = "apiserver-etcd-client")]
    ApiserverEtcdClient,
    /// `apiserver-kubelet-client.crt`
    #[serde(rename = "apiserver-kubelet-client")]
    ApiserverKubeletClient,
    /// `controller-manager.conf`
    #[serde(rename = "controller-manager.conf")]
    ControllerManagerConf,
    /// `etcd/healthcheck-client.crt`
    #[serde(rename = "etcd-healthcheck-client")]
    EtcdHealthcheckClient,
    /// `etcd/peer.crt`
    #[serde(rename = "etcd-peer")]
    EtcdPeer,
    /// `etcd/server.crt`
    #[serde(rename = "etcd-server")]
    EtcdServer,
    /// `front-proxy-client.crt`
    #[serde(rename = "front-proxy-client")]
    FrontProxyClient,
    /// `scheduler.conf`
    #[serde(rename = "scheduler.conf")]
    SchedulerConf,
    /// `super-admin.conf`
    #[serde(rename = "super-admin.conf")]
    SuperAdminConf,
}

/// Where a certificate lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertLocation {
    /// `<pki_dir>/<base>.crt` and `.key`.
    Pki(&'static str),
    /// `<kubeconfig_dir>/<file>` with embedded certificate and key.
    Kubeconfig(&'static str),
}

impl CertName {
    /// Every name, in the order `kubeadm certs check-expiration` prints them.
    pub const ALL: [CertName; 11] = [
        CertName::AdminConf,
        CertName::Apiserver,
        CertName::ApiserverEtcdClient,
        CertName::ApiserverKubeletClient,
        CertName::ControllerManagerConf,
        CertName::EtcdHealthcheckClient,
        CertName::EtcdPeer,
        CertName::EtcdServer,
        CertName::FrontProxyClient,
        CertName::SchedulerConf,
        CertName::SuperAdminConf,
    ];

    /// The kubeadm name (`apiserver`, `admin.conf`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CertName::AdminConf => "admin.conf",
            CertName::Apiserver => "apiserver",
            CertName::ApiserverEtcdClient => "apiserver-etcd-client",
            CertName::ApiserverKubeletClient => "apiserver-kubelet-client",
            CertName::ControllerManagerConf => "controller-manager.conf",
            CertName::EtcdHealthcheckClient => "etcd-healthcheck-client",
            CertName::EtcdPeer => "etcd-peer",
            CertName::EtcdServer => "etcd-server",
            CertName::FrontProxyClient => "front-proxy-client",
            CertName::SchedulerConf => "scheduler.conf",
            CertName::SuperAdminConf => "super-admin.conf",
        }
    }

    /// The CA that signs it.
    pub fn ca(self) -> CaKind {
        match self {
            CertName::ApiserverEtcdClient
            | CertName::EtcdHealthcheckClient
            | CertName::EtcdPeer
            | CertName::EtcdServer => CaKind::Etcd,
            CertName::FrontProxyClient => CaKind::FrontProxy,
            _ => CaKind::Kubernetes,
        }
    }

    /// Its file(s).
    pub fn location(self) -> CertLocation {
        match self {
            CertName::AdminConf => CertLocation::Kubeconfig("admin.conf"),
            CertName::ControllerManagerConf => CertLocation::Kubeconfig("controller-manager.conf"),
            CertName::SchedulerConf => CertLocation::Kubeconfig("scheduler.conf"),
            CertName::SuperAdminConf => CertLocation::Kubeconfig("super-admin.conf"),
            CertName::Apiserver => CertLocation::Pki("apiserver"),
            CertName::ApiserverEtcdClient => CertLocation::Pki("apiserver-etcd-client"),
            CertName::ApiserverKubeletClient => CertLocation::Pki("apiserver-kubelet-client"),
            CertName::EtcdHealthcheckClient => CertLocation::Pki("etcd/healthcheck-client"),
            CertName::EtcdPeer => CertLocation::Pki("etcd/peer"),
            CertName::EtcdServer => CertLocation::Pki("etcd/server"),
            CertName::FrontProxyClient => CertLocation::Pki("front-proxy-client"),
        }
    }

    /// The certificate file (PEM leaf) or kubeconfig file.
    pub fn path(self, pki_dir: &Path, kubeconfig_dir: &Path) -> PathBuf {
        match self.location() {
            CertLocation::Pki(base) => pki_dir.join(format!("{base}.crt")),
            CertLocation::Kubeconfig(file) => kubeconfig_dir.join(file),
        }
    }

    /// The key file of a PEM leaf (kubeconfigs embed their key).
    pub fn key_path(self, pki_dir: &Path) -> Option<PathBuf> {
        match self.location() {
            CertLocation::Pki(base) => Some(pki_dir.join(format!("{base}.key"))),
            CertLocation::Kubeconfig(_) => None,
        }
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CertName {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        CertName::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| PkiError::UnknownTarget {
                name: s.to_string(),
                expected: CertName::ALL.map(CertName::as_str).join(", "),
            })
    }
}

/// What a certificate issued by `generate` must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafProfile {
    pub name: String,
    pub ca: CaKind,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub sans: Vec<SubjectAltName>,
    pub usages: Vec<Usage>,
}

/// The PEM leaf certificates of the control plane, in generation order.
pub(crate) fn pki_leaves(spec: &PkiSpec) -> Result<Vec<(CertName, LeafProfile)>, PkiError> {
    let etcd_cn = spec.etcd_common_name().to_string();
    let etcd_sans = spec.etcd_sans();
    let leaf =
        |name: CertName, cn: &str, orgs: &[&str], sans: Vec<SubjectAltName>, usages: &[Usage]| {
            (
                name,
                LeafProfile {
                    name: name.as_str().to_string(),
                    ca: name.ca(),
                    common_name: cn.to_string(),
                    organizations: orgs.iter().map(|o| o.to_string()).collect(),
                    sans,
                    usages: usages.to_vec(),
                },
            )
        };
    use Usage::{ClientAuth, ServerAuth};
    Ok(vec![
        leaf(
            CertName::Apiserver,
            "kube-apiserver",
            &[],
            spec.apiserver_sans()?,
            &[ServerAuth],
        ),
        leaf(
            CertName::ApiserverKubeletClient,
            "kube-apiserver-kubelet-client",
            &[CLUSTER_ADMINS_GROUP],
            vec![],
            &[ClientAuth],
        ),
        leaf(
            CertName::FrontProxyClient,
            "front-proxy-client",
            &[],
            vec![],
            &[ClientAuth],
        ),
        leaf(
            CertName::EtcdServer,
            &etcd_cn,
            &[],
            etcd_sans.clone(),
            &[ServerAuth, ClientAuth],
        ),
        leaf(
            CertName::EtcdPeer,
            &etcd_cn,
            &[],
            etcd_sans,
            &[ServerAuth, ClientAuth],
        ),
        leaf(
            CertName::EtcdHealthcheckClient,
            "kube-etcd-healthcheck-client",
            &[],
            vec![],
            &[ClientAuth],
        ),
        leaf(
            CertName::ApiserverEtcdClient,
            "kube-apiserver-etcd-client",
            &[],
            vec![],
            &[ClientAuth],
        ),
    ])
}

/// The control-plane kubeconfigs, in generation order.
pub(crate) fn kubeconfigs() -> Vec<(CertName, LeafProfile)> {
    let kc = |name: CertName, cn: &str, orgs: &[&str]| {
        (
            name,
            client_profile(name.as_str(), CaKind::Kubernetes, cn, orgs),
        )
    };
    vec![
        kc(
            CertName::AdminConf,
            "kubernetes-admin",
            &[CLUSTER_ADMINS_GROUP],
        ),
        kc(
            CertName::SuperAdminConf,
            "kubernetes-super-admin",
            &[SYSTEM_MASTERS_GROUP],
        ),
        kc(
            CertName::ControllerManagerConf,
            "system:kube-controller-manager",
            &[],
        ),
        kc(CertName::SchedulerConf, "system:kube-scheduler", &[]),
    ]
}

/// A client-auth certificate profile for `(CN, groups)`.
pub(crate) fn client_profile(name: &str, ca: CaKind, cn: &str, orgs: &[&str]) -> LeafProfile {
    LeafProfile {
        name: name.to_string(),
        ca,
        common_name: cn.to_string(),
        organizations: orgs.iter().map(|o| o.to_string()).collect(),
        sans: vec![],
        usages: vec![Usage::ClientAuth],
    }
}

/// The identity of a node agent: `system:node:<name>` in `system:nodes`.
pub(crate) fn node_profile(node_name: &str) -> LeafProfile {
    client_profile(
        "kubelet.conf",
        CaKind::Kubernetes,
        &format!("system:node:{node_name}"),
        &[NODES_GROUP],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_map_to_files() {
        for n in CertName::ALL {
            assert_eq!(n.as_str().parse::<CertName>().unwrap(), n);
            assert_eq!(
                serde_yaml::to_string(&n).unwrap().trim(),
                n.as_str(),
                "serde name must equal the CLI name"
            );
        }
        let err = "apiserverx".parse::<CertName>().unwrap_err().to_string();
        assert!(
            err.contains("etcd-peer") && err.contains("apiserverx"),
            "{err}"
        );
        let p = Path::new("/etc/kubernetes/pki");
        let k = Path::new("/etc/kubernetes");
        assert_eq!(
            CertName::EtcdHealthcheckClient.path(p, k),
            PathBuf::from("/etc/kubernetes/pki/etcd/healthcheck-client.crt")
        );
        assert_eq!(
            CertName::SuperAdminConf.path(p, k),
            PathBuf::from("/etc/kubernetes/super-admin.conf")
        );
        assert_eq!(CertName::SchedulerConf.key_path(p), None);
        assert_eq!(CertName::ApiserverEtcdClient.ca(), CaKind::Etcd);
        assert_eq!(CertName::FrontProxyClient.ca(), CaKind::FrontProxy);
    }
}
