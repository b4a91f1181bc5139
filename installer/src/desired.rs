//! The desired state of every host: the exact files (path, mode, bytes) kinit puts there,
//! computed on the admin box from the inventory and the cluster state directory.
//!
//! `kinit config render` writes them into a directory for review; the installer's phases
//! compare them with what a host has and upload only the difference.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::IpNet;
use kinit_inventory::{Datastore, Host, Inventory, Role};
use kinit_pki::{generate, write_node_kubeconfig, CaKind, GenerateReport, PkiSpec};

use crate::cluster::{self, ClusterDerived};

/// The cluster state directory for `inventory` on the admin box:
/// `$HOME/.kinit/clusters/<metadata.name>` (PKI, kubeconfigs, agent kubeconfigs).
pub fn default_state_dir(inventory: &Inventory) -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".kinit/clusters")
        .join(&inventory.metadata.name)
}

/// One file a host should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredFile {
    /// Absolute path on the host.
    pub path: PathBuf,
    /// Permission bits (0600 for keys and kubeconfigs).
    pub mode: u32,
    /// Exact contents.
    pub contents: Vec<u8>,
}

/// Files every control plane gets from the cluster PKI (relative to `/etc/kubernetes`).
const CONTROL_PLANE_PKI_FILES: &[&str] = &[
    "pki/ca.crt",
    "pki/ca.key",
    "pki/apiserver.crt",
    "pki/apiserver.key",
    "pki/apiserver-kubelet-client.crt",
    "pki/apiserver-kubelet-client.key",
    "pki/front-proxy-ca.crt",
    "pki/front-proxy-ca.key",
    "pki/front-proxy-client.crt",
    "pki/front-proxy-client.key",
    "pki/sa.key",
    "pki/sa.pub",
    "admin.conf",
    "super-admin.conf",
    "controller-manager.conf",
    "scheduler.conf",
];

/// Extra files for control planes when the datastore is etcd.
const ETCD_CLIENT_FILES: &[&str] = &[
    "pki/etcd/ca.crt",
    "pki/apiserver-etcd-client.crt",
    "pki/apiserver-etcd-client.key",
];

/// Extra files for etcd members.
const ETCD_MEMBER_FILES: &[&str] = &[
    "pki/etcd/ca.crt",
    "pki/etcd/ca.key",
    "pki/etcd/server.crt",
    "pki/etcd/server.key",
    "pki/etcd/peer.crt",
    "pki/etcd/peer.key",
    "pki/etcd/healthcheck-client.crt",
    "pki/etcd/healthcheck-client.key",
];

/// The files the templates render for one host's settings.
pub fn rendered_files(
    context: &kinit_templates::ClusterRenderContext,
) -> Result<Vec<DesiredFile>, kinit_templates::TemplateError> {
    Ok(kinit_templates::render_all(context)?
        .into_iter()
        .map(|f| DesiredFile {
            path: f.path,
            mode: f.mode,
            contents: f.contents.into_bytes(),
        })
        .collect())
}

/// File in the cluster state directory recording each node's pod range (host name → CIDR), so
/// ranges stay put across runs even while the API cannot be read.
pub const POD_CIDR_RECORD: &str = "pod-cidrs.yaml";

fn read_pod_cidr_record(path: &Path) -> anyhow::Result<BTreeMap<String, IpNet>> {
    match fs::read_to_string(path) {
        Ok(text) => serde_yaml::from_str(&text).with_context(|| {
            format!(
                "{} is not a map of host name to pod CIDR; fix or delete it (kinit rebuilds it \
                 from the API's Nodes)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_pod_cidr_record(path: &Path, record: &BTreeMap<String, IpNet>) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let text = format!(
        "# Pod range of every node, kept by kinit so that ranges never move between runs.\n{}",
        serde_yaml::to_string(record).context("cannot encode the pod range record")?
    );
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// The cluster state directory on the admin box: `pki/`, the kubeconfigs, and one agent
/// kubeconfig per node under `nodes/<name>/`. Later commands sign and renew from it.
pub struct ClusterState {
    dir: PathBuf,
    spec: PkiSpec,
    derived: ClusterDerived,
}

impl ClusterState {
    /// Generates (or reuses) the cluster PKI in `dir` for `inventory` and settles each host's
    /// pod range. `registered` holds the pod ranges of the Nodes in the API, when it could be
    /// read: they win over the record of earlier runs ([`POD_CIDR_RECORD`]), which is
    /// rewritten with what this run decided.
    pub fn prepare(
        inventory: &Inventory,
        dir: &Path,
        registered: Option<&BTreeMap<String, IpNet>>,
    ) -> anyhow::Result<(Self, GenerateReport)> {
        let pki_dir = dir.join("pki");
        let spec = cluster::pki_spec(inventory, &pki_dir, Some(dir.to_path_buf()))?;
        let report = generate(&spec)
            .with_context(|| format!("cannot generate the cluster PKI in {}", pki_dir.display()))?;
        let ca_key = fs::read(CaKind::Kubernetes.key_path(&pki_dir))
            .with_context(|| format!("cannot read the cluster CA key in {}", pki_dir.display()))?;
        let record_path = dir.join(POD_CIDR_RECORD);
        let recorded = read_pod_cidr_record(&record_path)?;
        let mut in_use = recorded.clone();
        if let Some(registered) = registered {
            // A recorded host that left the inventory and has no Node any more freed its range.
            in_use.retain(|name, _| {
                registered.contains_key(name)
                    || inventory.spec.hosts.iter().any(|h| &h.name == name)
            });
            in_use.extend(registered.iter().map(|(n, c)| (n.clone(), *c)));
        }
        let derived = ClusterDerived::new(inventory, &ca_key, &in_use)?;
        let mut record = in_use;
        record.extend(derived.pod_cidrs.iter().map(|(n, c)| (n.clone(), *c)));
        if record != recorded {
            write_pod_cidr_record(&record_path, &record)?;
        }
        Ok((
            ClusterState {
                dir: dir.to_path_buf(),
                spec,
                derived,
            },
            report,
        ))
    }

    /// The pod range settled for `host`.
    pub fn pod_cidr(&self, host: &str) -> Option<IpNet> {
        self.derived.pod_cidrs.get(host).copied()
    }

    /// Every file `host` should have: rendered templates, its share of the PKI and its agent
    /// kubeconfig, sorted by path.
    pub fn host_files(
        &self,
        inventory: &Inventory,
        host: &Host,
    ) -> anyhow::Result<Vec<DesiredFile>> {
        let context = cluster::render_context(inventory, host, &self.derived)
            .with_context(|| format!("cannot build the settings of host {}", host.name))?;
        let mut files = rendered_files(&context)
            .with_context(|| format!("cannot render the files of host {}", host.name))?;

        let etcd = inventory.datastore() == Datastore::Etcd;
        let mut copies: Vec<&str> = vec!["pki/ca.crt"];
        if host.has_role(Role::ControlPlane) {
            copies.extend(CONTROL_PLANE_PKI_FILES);
            if etcd {
                copies.extend(ETCD_CLIENT_FILES);
            }
        }
        if etcd && inventory.etcd_members().iter().any(|m| m.name == host.name) {
            copies.extend(ETCD_MEMBER_FILES);
        }
        copies.sort_unstable();
        copies.dedup();
        for rel in copies {
            let src = self.dir.join(rel);
            let contents = fs::read(&src).with_context(|| {
                format!(
                    "cannot read {} from the cluster state; re-run to regenerate it",
                    src.display()
                )
            })?;
            let secret = rel.ends_with(".key") || rel.ends_with(".conf");
            files.push(DesiredFile {
                path: Path::new("/etc/kubernetes").join(rel),
                mode: if secret { 0o600 } else { 0o644 },
                contents,
            });
        }

        // The agent's kubeconfig (CN system:node:<name>), kept in the state dir so re-runs
        // reuse the same valid certificate instead of changing the host on every run.
        let node_dir = self.dir.join("nodes").join(&host.name);
        fs::create_dir_all(&node_dir)
            .with_context(|| format!("cannot create {}", node_dir.display()))?;
        let report = write_node_kubeconfig(&self.spec, &host.name, &node_dir)
            .with_context(|| format!("cannot write the agent kubeconfig of host {}", host.name))?;
        files.push(DesiredFile {
            path: PathBuf::from("/etc/kubernetes/kubelet.conf"),
            mode: 0o600,
            contents: fs::read(&report.path)
                .with_context(|| format!("cannot read {}", report.path.display()))?,
        });
        // The agent's HTTPS serving certificate, from the cluster CA, so the API server can
        // verify the agent it proxies logs and exec to.
        let (cert, key) = agent_serving_certificate(&self.spec, host, &node_dir)?;
        files.push(DesiredFile {
            path: PathBuf::from(AGENT_SERVING_CERT),
            mode: 0o644,
            contents: cert,
        });
        files.push(DesiredFile {
            path: PathBuf::from(AGENT_SERVING_KEY),
            mode: 0o600,
            contents: key,
        });
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }
}

/// Where the agent's serving certificate lives on hosts (the agent config names it).
pub const AGENT_SERVING_CERT: &str = "/var/lib/kinit/agent/pki/agent.crt";
/// The key of [`AGENT_SERVING_CERT`].
pub const AGENT_SERVING_KEY: &str = "/var/lib/kinit/agent/pki/agent.key";

/// The agent serving certificate of `host` (SANs: node IP and node name, signed by the
/// cluster CA) kept in `node_dir`; the decision to keep or re-issue it is
/// [`kinit_pki::keep_or_issue_serving_certificate`]'s.
fn agent_serving_certificate(
    spec: &PkiSpec,
    host: &Host,
    node_dir: &Path,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let ca = kinit_pki::CertificateAuthority::load(&spec.pki_dir, CaKind::Kubernetes)
        .with_context(|| format!("cannot load the cluster CA from {}", spec.pki_dir.display()))?;
    let pair = kinit_pki::keep_or_issue_serving_certificate(
        &ca,
        &node_dir.join("agent.crt"),
        &node_dir.join("agent.key"),
        &format!("system:node:{}", host.name),
        &[
            kinit_pki::SubjectAltName::Ip(host.node_ip()),
            kinit_pki::SubjectAltName::classify(&host.name),
        ],
        time::Duration::days(spec.leaf_validity_days.into()),
        spec.key_algorithm,
    )
    .with_context(|| {
        format!(
            "cannot issue the agent serving certificate of {} in {}",
            host.name,
            node_dir.display()
        )
    })?;
    Ok((pair.cert_pem, pair.key_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(name: &str) -> Inventory {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../inventory/examples")
            .join(name);
        Inventory::from_path(&path).unwrap()
    }

    fn paths(files: &[DesiredFile]) -> Vec<String> {
        files.iter().map(|f| f.path.display().to_string()).collect()
    }

    #[test]
    fn pod_ranges_are_recorded_and_survive_removal_reordering_and_joined_nodes() {
        let inv = inventory("ha.yaml");
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = ClusterState::prepare(&inv, dir.path(), None).unwrap();
        let before: BTreeMap<String, IpNet> = inv
            .spec
            .hosts
            .iter()
            .map(|h| (h.name.clone(), first.pod_cidr(&h.name).unwrap()))
            .collect();
        let record_path = dir.path().join(POD_CIDR_RECORD);
        assert_eq!(read_pod_cidr_record(&record_path).unwrap(), before);

        // The API cannot be read; a host is removed and the rest reversed: nobody moves.
        let mut smaller = inv.clone();
        let removed = smaller.spec.hosts.remove(1);
        smaller.spec.hosts.reverse();
        let (state, _) = ClusterState::prepare(&smaller, dir.path(), None).unwrap();
        for h in &smaller.spec.hosts {
            assert_eq!(state.pod_cidr(&h.name), Some(before[&h.name]));
        }
        // Unknown to the API, the removed host's range stays reserved.
        assert!(read_pod_cidr_record(&record_path)
            .unwrap()
            .contains_key(&removed.name));

        // The API answers: the removed host has no Node any more, a node joined with
        // `kinit join` holds the range the removed host had. A newcomer gets neither.
        let mut registered: BTreeMap<String, IpNet> = smaller
            .spec
            .hosts
            .iter()
            .map(|h| (h.name.clone(), before[&h.name]))
            .collect();
        registered.insert("joined".into(), before[&removed.name]);
        let mut grown = smaller.clone();
        let mut newcomer = grown.spec.hosts[0].clone();
        newcomer.name = "newcomer".into();
        grown.spec.hosts.push(newcomer);
        let (state, _) = ClusterState::prepare(&grown, dir.path(), Some(&registered)).unwrap();
        let new_range = state.pod_cidr("newcomer").unwrap();
        assert!(!before.values().any(|c| *c == new_range), "{new_range}");
        let record = read_pod_cidr_record(&record_path).unwrap();
        assert!(!record.contains_key(&removed.name));
        assert_eq!(record["joined"], before[&removed.name]);
        assert_eq!(record["newcomer"], new_range);
    }

    #[test]
    fn roles_decide_which_files_a_host_gets_and_reruns_are_identical() {
        let inv = inventory("ha.yaml");
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = ClusterState::prepare(&inv, dir.path(), None).unwrap();
        let cp = &inv.spec.hosts[0];
        let files = state.host_files(&inv, cp).unwrap();
        let names = paths(&files);
        for expected in [
            "/etc/kubernetes/pki/ca.key",
            "/etc/kubernetes/pki/apiserver-etcd-client.key",
            "/etc/kubernetes/pki/etcd/peer.key",
            "/etc/kubernetes/admin.conf",
            "/etc/kubernetes/kubelet.conf",
            "/etc/kubernetes/manifests/kube-apiserver.yaml",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        for f in &files {
            let name = f.path.display().to_string();
            if name.ends_with(".key") || name.ends_with(".conf") {
                assert_eq!(f.mode, 0o600, "{name}");
            }
        }

        let agent_cert = files
            .iter()
            .find(|f| f.path == Path::new(AGENT_SERVING_CERT))
            .expect("agents get a serving certificate");
        let agent_config = files
            .iter()
            .find(|f| f.path == Path::new("/var/lib/kinit/agent/config.yaml"))
            .unwrap();
        let agent_config = String::from_utf8_lossy(&agent_config.contents);
        assert!(agent_config.contains(&format!("tlsCertFile: {AGENT_SERVING_CERT}")));
        assert!(agent_config.contains(&format!("tlsPrivateKeyFile: {AGENT_SERVING_KEY}")));
        let (_, pem) = x509_parser::pem::parse_x509_pem(&agent_cert.contents).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let ip = match cp.node_ip() {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        assert!(san.value.general_names.iter().any(|n| matches!(
            n,
            x509_parser::extensions::GeneralName::IPAddress(b) if *b == ip.as_slice()
        )));

        // A second run against the same state dir wants exactly the same bytes: applying twice
        // changes nothing on the hosts (certificates included).
        let (again, report) = ClusterState::prepare(&inv, dir.path(), None).unwrap();
        assert!(report
            .files
            .iter()
            .all(|f| f.action == kinit_pki::FileAction::Reused));
        assert_eq!(again.host_files(&inv, cp).unwrap(), files);
    }

    #[test]
    fn workers_get_no_cluster_secrets() {
        let inv = inventory("three-node.yaml");
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = ClusterState::prepare(&inv, dir.path(), None).unwrap();
        let worker = inv.workers()[0];
        let names = paths(&state.host_files(&inv, worker).unwrap());
        assert!(names.contains(&"/etc/kubernetes/pki/ca.crt".to_string()));
        assert!(names.contains(&"/etc/kubernetes/kubelet.conf".to_string()));
        for secret in ["ca.key", "sa.key", "admin.conf", "kube-apiserver.yaml"] {
            assert!(
                !names.iter().any(|n| n.ends_with(secret)),
                "{secret} in {names:?}"
            );
        }
    }
}
