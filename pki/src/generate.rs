//! `generate`: create (or reuse) every CA, leaf certificate, service-account key and kubeconfig
//! of a control plane, in kubeadm's layout. Safe to re-run: valid files are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;

use crate::catalog::{self, LeafProfile};
use crate::cert::{self, CaKind, CertificateAuthority, LeafRequest};
use crate::error::PkiError;
use crate::files::{self, Backup, MODE_PUBLIC, MODE_SECRET};
use crate::keys::{self, KeyAlgorithm, ServiceAccountKey};
use crate::kubeconfig::Kubeconfig;
use crate::spec::PkiSpec;

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    /// The file did not exist and was written.
    Created,
    /// The file existed, was valid, and was left untouched.
    Reused,
    /// The file existed but was unusable; it was backed up and replaced.
    Regenerated,
}

/// One file touched (or deliberately not touched) by [`generate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// What was done.
    pub action: FileAction,
    /// Why a file was regenerated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// Result of [`generate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateReport {
    /// Every file of the PKI, in generation order.
    pub files: Vec<FileReport>,
    /// Where replaced files were copied, if any were replaced.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backup_dir: Option<PathBuf>,
}

impl GenerateReport {
    /// The entry for `path`, if the report lists it.
    pub fn file(&self, path: &Path) -> Option<&FileReport> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// What to do with an existing (or missing) certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Reuse,
    Create,
    Regenerate(String),
}

impl Decision {
    fn action(&self) -> (FileAction, Option<String>) {
        match self {
            Decision::Reuse => (FileAction::Reused, None),
            Decision::Create => (FileAction::Created, None),
            Decision::Regenerate(r) => (FileAction::Regenerated, Some(r.clone())),
        }
    }
}

/// Why an existing leaf certificate cannot be kept, or `None` when it is still good.
fn leaf_problem(
    x: &X509Certificate<'_>,
    key: &KeyPair,
    ca: &CertificateAuthority,
    profile: &LeafProfile,
    now: OffsetDateTime,
) -> Option<String> {
    if !cert::key_matches(x, key) {
        return Some("the private key does not match the certificate".into());
    }
    let not_after = x.validity().not_after.to_datetime();
    if not_after <= now {
        return Some(format!("expired on {not_after}"));
    }
    if !ca.signed(x) {
        return Some(format!("not signed by the current {}", ca.name()));
    }
    let cn = cert::common_name(x).unwrap_or_default();
    if cn != profile.common_name {
        return Some(format!(
            "subject CN is `{cn}`, expected `{}`",
            profile.common_name
        ));
    }
    let mut have = cert::organizations(x);
    let mut want = profile.organizations.clone();
    have.sort();
    want.sort();
    if have != want {
        return Some(format!("subject O is {have:?}, expected {want:?}"));
    }
    let sans = cert::subject_alt_names(x);
    let missing: Vec<String> = profile
        .sans
        .iter()
        .filter(|s| !sans.contains(s))
        .map(|s| s.to_string())
        .collect();
    if !missing.is_empty() {
        return Some(format!("missing SANs: {}", missing.join(", ")));
    }
    if !cert::has_usages(x, &profile.usages) {
        return Some(format!("extended key usage lacks {:?}", profile.usages));
    }
    None
}

/// Decides about a PEM leaf `<base>.crt`/`<base>.key`.
fn decide_pem_leaf(
    cert_path: &Path,
    key_path: &Path,
    profile: &LeafProfile,
    ca: Option<&CertificateAuthority>,
    now: OffsetDateTime,
) -> Result<Decision, PkiError> {
    let cert_pem = files::read_optional(cert_path)?;
    let key_pem = files::read_optional(key_path)?;
    let (cert_pem, key_pem) = match (cert_pem, key_pem) {
        (None, None) => return Ok(Decision::Create),
        (Some(_), None) => {
            return Ok(Decision::Regenerate(format!(
                "{} is missing",
                key_path.display()
            )))
        }
        (None, Some(_)) => {
            return Ok(Decision::Regenerate(format!(
                "{} is missing",
                cert_path.display()
            )))
        }
        (Some(c), Some(k)) => (c, k),
    };
    let Some(ca) = ca else {
        return Ok(Decision::Regenerate(format!(
            "its CA {} is new",
            profile.ca
        )));
    };
    let der = match cert::pem_to_der(&cert_pem, cert_path) {
        Ok(d) => d,
        Err(e) => return Ok(Decision::Regenerate(e.to_string())),
    };
    let x = match cert::parse_der(&der, cert_path) {
        Ok(x) => x,
        Err(e) => return Ok(Decision::Regenerate(e.to_string())),
    };
    let key = match keys::parse_key_pem(&key_pem, key_path) {
        Ok(k) => k,
        Err(e) => return Ok(Decision::Regenerate(e.to_string())),
    };
    Ok(match leaf_problem(&x, &key, ca, profile, now) {
        None => Decision::Reuse,
        Some(reason) => Decision::Regenerate(reason),
    })
}

/// Decides about a kubeconfig with an embedded client certificate.
fn decide_kubeconfig(
    path: &Path,
    profile: &LeafProfile,
    ca: Option<&CertificateAuthority>,
    cluster_name: &str,
    server: &str,
    now: OffsetDateTime,
) -> Result<Decision, PkiError> {
    let Some(bytes) = files::read_optional(path)? else {
        return Ok(Decision::Create);
    };
    let Some(ca) = ca else {
        return Ok(Decision::Regenerate(format!(
            "its CA {} is new",
            profile.ca
        )));
    };
    let regen = |reason: String| Ok(Decision::Regenerate(reason));
    let kc = match Kubeconfig::from_yaml(&bytes, path) {
        Ok(k) => k,
        Err(e) => return regen(e.to_string()),
    };
    let Some(cluster) = kc.current_cluster() else {
        return regen("no cluster for the current context".into());
    };
    if cluster.name != cluster_name {
        return regen(format!(
            "cluster is named `{}`, expected `{cluster_name}`",
            cluster.name
        ));
    }
    if cluster.cluster.server != server {
        return regen(format!(
            "server is {}, expected {server}",
            cluster.cluster.server
        ));
    }
    let embedded_ca = kc
        .ca_data()
        .and_then(|pem| cert::pem_to_der(&pem, path).ok());
    if embedded_ca.as_deref() != Some(ca.cert_der()) {
        return regen(format!(
            "embedded CA differs from {}",
            ca.cert_path().display()
        ));
    }
    let (cert_pem, key_pem) = match kc.client_credentials(path) {
        Ok(c) => c,
        Err(e) => return regen(e.to_string()),
    };
    let der = match cert::pem_to_der(&cert_pem, path) {
        Ok(d) => d,
        Err(e) => return regen(e.to_string()),
    };
    let x = match cert::parse_der(&der, path) {
        Ok(x) => x,
        Err(e) => return regen(e.to_string()),
    };
    let key = match keys::parse_key_pem(&key_pem, path) {
        Ok(k) => k,
        Err(e) => return regen(e.to_string()),
    };
    Ok(match leaf_problem(&x, &key, ca, profile, now) {
        None => Decision::Reuse,
        Some(reason) => Decision::Regenerate(reason),
    })
}

/// Refuses early when a certificate must be (re)issued by a CA without key.
fn ensure_signable(
    decision: &Decision,
    ca: Option<&CertificateAuthority>,
    target: &Path,
) -> Result<(), PkiError> {
    if let Some(ca) = ca {
        let reason = match decision {
            Decision::Reuse => return Ok(()),
            Decision::Create => "it does not exist".to_string(),
            Decision::Regenerate(r) => format!("the existing file is unusable: {r}"),
        };
        ca.require_key(&target.display().to_string(), &reason)?;
    }
    Ok(())
}

/// A fresh key and a certificate for `profile`, signed by `ca`; returns (cert PEM, key PEM).
fn issue(
    ca: &CertificateAuthority,
    profile: &LeafProfile,
    alg: KeyAlgorithm,
    validity: Duration,
    target: &str,
) -> Result<(String, String), PkiError> {
    let key = keys::generate_key(alg, target)?;
    let request = LeafRequest::new(
        &profile.common_name,
        &profile.organizations,
        &profile.sans,
        &profile.usages,
        cert::is_rsa(&key),
        validity,
    )?;
    let der = ca.sign(&request, &key, target)?;
    Ok((cert::der_to_pem(&der), keys::key_pem(&key)))
}

/// Loads an existing CA, refusing orphan keys and expired CAs; `None` when it does not exist.
fn inspect_ca(
    pki_dir: &Path,
    kind: CaKind,
    now: OffsetDateTime,
) -> Result<Option<CertificateAuthority>, PkiError> {
    let cert_path = kind.cert_path(pki_dir);
    let key_path = kind.key_path(pki_dir);
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => Ok(None),
        (false, true) => Err(PkiError::OrphanKey {
            key: key_path,
            missing: cert_path,
        }),
        _ => {
            let ca = CertificateAuthority::load(pki_dir, kind)?;
            if ca.not_after() <= now {
                return Err(PkiError::CaExpired {
                    path: cert_path,
                    expired: ca.not_after().to_string(),
                });
            }
            Ok(Some(ca))
        }
    }
}

/// Creates or reuses the whole control-plane PKI described by `spec`:
/// the three CAs, the API server / kubelet-client / front-proxy / etcd leaf certificates,
/// `sa.key`/`sa.pub`, and `admin.conf`, `super-admin.conf`, `controller-manager.conf`,
/// `scheduler.conf`.
///
/// Everything is checked before the first write. Existing valid CAs are never replaced; leaves
/// and kubeconfigs are reused while they are valid, signed by the current CA, carry the expected
/// subject and cover the required SANs, and are otherwise backed up and regenerated.
/// Certificates signed by a CA without key (externally managed) must already be valid.
pub fn generate(spec: &PkiSpec) -> Result<GenerateReport, PkiError> {
    spec.validate()?;
    let pki_dir = spec.pki_dir.as_path();
    let kubeconfig_dir = spec.kubeconfig_dir();
    let server = spec.endpoint()?.url();
    let leaves = catalog::pki_leaves(spec)?;
    for (_, profile) in &leaves {
        for san in &profile.sans {
            san.to_rcgen()?;
        }
    }
    let kubeconfigs = catalog::kubeconfigs();
    let ca_validity = Duration::days(spec.ca_validity_days.into());
    let leaf_validity = Duration::days(spec.leaf_validity_days.into());
    let now = OffsetDateTime::now_utc();

    // Phase 1: inspect everything and decide; nothing is written yet.
    let mut cas: HashMap<CaKind, CertificateAuthority> = HashMap::new();
    for kind in CaKind::ALL {
        if let Some(ca) = inspect_ca(pki_dir, kind, now)? {
            cas.insert(kind, ca);
        }
    }
    let mut leaf_plan = Vec::new();
    for (name, profile) in &leaves {
        let cert_path = name.path(pki_dir, &kubeconfig_dir);
        let key_path = name.key_path(pki_dir).unwrap_or_default();
        let ca = cas.get(&profile.ca);
        let decision = decide_pem_leaf(&cert_path, &key_path, profile, ca, now)?;
        ensure_signable(&decision, ca, &cert_path)?;
        leaf_plan.push((profile, cert_path, key_path, decision));
    }
    let mut kubeconfig_plan = Vec::new();
    for (name, profile) in &kubeconfigs {
        let path = name.path(pki_dir, &kubeconfig_dir);
        let ca = cas.get(&profile.ca);
        let decision = decide_kubeconfig(&path, profile, ca, &spec.cluster_name, &server, now)?;
        ensure_signable(&decision, ca, &path)?;
        kubeconfig_plan.push((profile, path, decision));
    }
    let sa_key_path = pki_dir.join("sa.key");
    let sa_pub_path = pki_dir.join("sa.pub");
    let existing_sa = match files::read_optional(&sa_key_path)? {
        Some(pem) => Some(ServiceAccountKey::parse(&pem, &sa_key_path)?),
        None if sa_pub_path.exists() => {
            return Err(PkiError::OrphanKey {
                key: sa_pub_path,
                missing: sa_key_path,
            })
        }
        None => None,
    };

    // Phase 2: write.
    let mut report = Vec::new();
    let mut backup = Backup::new(pki_dir, "pki");
    for kind in CaKind::ALL {
        let (action, ca) = match cas.remove(&kind) {
            Some(ca) => (FileAction::Reused, ca),
            None => (
                FileAction::Created,
                CertificateAuthority::create(pki_dir, kind, spec.key_algorithm, ca_validity)?,
            ),
        };
        for path in [ca.cert_path(), ca.key_path()] {
            if action == FileAction::Reused && !path.exists() {
                continue; // externally managed CA: no key file to report
            }
            report.push(FileReport {
                path: path.to_path_buf(),
                action,
                reason: None,
            });
        }
        cas.insert(kind, ca);
    }

    for (profile, cert_path, key_path, decision) in leaf_plan {
        if decision != Decision::Reuse {
            let ca = &cas[&profile.ca];
            let target = cert_path.display().to_string();
            let (cert_pem, key_pem) =
                issue(ca, profile, spec.key_algorithm, leaf_validity, &target)?;
            backup.save(&cert_path, &files::backup_name(&cert_path, pki_dir))?;
            backup.save(&key_path, &files::backup_name(&key_path, pki_dir))?;
            files::write_atomic(&key_path, key_pem.as_bytes(), MODE_SECRET)?;
            files::write_atomic(&cert_path, cert_pem.as_bytes(), MODE_PUBLIC)?;
        }
        let (action, reason) = decision.action();
        for path in [cert_path, key_path] {
            report.push(FileReport {
                path,
                action,
                reason: reason.clone(),
            });
        }
    }

    report.extend(write_service_account_key(
        existing_sa,
        &sa_key_path,
        &sa_pub_path,
        &mut backup,
        pki_dir,
    )?);

    for (profile, path, decision) in kubeconfig_plan {
        if decision != Decision::Reuse {
            let ca = &cas[&profile.ca];
            write_kubeconfig_for(
                ca,
                profile,
                &spec.cluster_name,
                &server,
                spec.key_algorithm,
                leaf_validity,
                &path,
                &mut backup,
                pki_dir,
            )?;
        }
        let (action, reason) = decision.action();
        report.push(FileReport {
            path,
            action,
            reason,
        });
    }

    Ok(GenerateReport {
        files: report,
        backup_dir: backup.dir().map(Path::to_path_buf),
    })
}

/// Writes `sa.key` (PKCS#1 PEM, 0600) and `sa.pub` (PKIX PEM, 0644), keeping an existing key.
fn write_service_account_key(
    existing: Option<ServiceAccountKey>,
    key_path: &Path,
    pub_path: &Path,
    backup: &mut Backup,
    pki_dir: &Path,
) -> Result<Vec<FileReport>, PkiError> {
    let report = |path: &Path, action, reason: Option<String>| FileReport {
        path: path.to_path_buf(),
        action,
        reason,
    };
    let Some(key) = existing else {
        let key = ServiceAccountKey::generate()?;
        files::write_atomic(key_path, key.private_pem()?.as_bytes(), MODE_SECRET)?;
        files::write_atomic(pub_path, key.public_pem()?.as_bytes(), MODE_PUBLIC)?;
        return Ok(vec![
            report(key_path, FileAction::Created, None),
            report(pub_path, FileAction::Created, None),
        ]);
    };
    let public_pem = key.public_pem()?;
    let pem_der = |pem: &[u8]| {
        x509_parser::pem::parse_x509_pem(pem)
            .ok()
            .map(|(_, p)| p.contents)
    };
    let pub_report = match files::read_optional(pub_path)? {
        None => {
            files::write_atomic(pub_path, public_pem.as_bytes(), MODE_PUBLIC)?;
            report(pub_path, FileAction::Created, None)
        }
        Some(existing) if pem_der(&existing) == pem_der(public_pem.as_bytes()) => {
            report(pub_path, FileAction::Reused, None)
        }
        Some(_) => {
            backup.save(pub_path, &files::backup_name(pub_path, pki_dir))?;
            files::write_atomic(pub_path, public_pem.as_bytes(), MODE_PUBLIC)?;
            report(
                pub_path,
                FileAction::Regenerated,
                Some("did not match sa.key".into()),
            )
        }
    };
    Ok(vec![report(key_path, FileAction::Reused, None), pub_report])
}

/// Issues a client certificate for `profile` and writes a kubeconfig embedding it (0600).
#[allow(clippy::too_many_arguments)]
fn write_kubeconfig_for(
    ca: &CertificateAuthority,
    profile: &LeafProfile,
    cluster_name: &str,
    server: &str,
    alg: KeyAlgorithm,
    validity: Duration,
    path: &Path,
    backup: &mut Backup,
    pki_dir: &Path,
) -> Result<(), PkiError> {
    let target = path.display().to_string();
    let (cert_pem, key_pem) = issue(ca, profile, alg, validity, &target)?;
    let kc = Kubeconfig::with_client_certificate(
        cluster_name,
        server,
        ca.cert_pem(),
        &profile.common_name,
        &cert_pem,
        &key_pem,
    );
    let yaml = kc.to_yaml()?;
    backup.save(path, &files::backup_name(path, pki_dir))?;
    files::write_atomic(path, yaml.as_bytes(), MODE_SECRET)
}

/// Writes `<dest_dir>/kubelet.conf` for a node agent: client certificate
/// `CN=system:node:<node_name>, O=system:nodes` signed by the cluster CA in `spec.pki_dir`,
/// server = the control-plane endpoint. An existing valid file for the same node is reused;
/// a replaced one is backed up next to the PKI directory.
pub fn write_node_kubeconfig(
    spec: &PkiSpec,
    node_name: &str,
    dest_dir: &Path,
) -> Result<FileReport, PkiError> {
    spec.validate()?;
    if !crate::spec::is_node_name(node_name) {
        return Err(PkiError::spec(
            "node_name",
            format!(
                "`{node_name}` is not a valid node name; use a lower-case DNS name like worker-1"
            ),
        ));
    }
    let server = spec.endpoint()?.url();
    let now = OffsetDateTime::now_utc();
    let ca =
        inspect_ca(&spec.pki_dir, CaKind::Kubernetes, now)?.ok_or_else(|| PkiError::Missing {
            name: "ca".into(),
            path: CaKind::Kubernetes.cert_path(&spec.pki_dir),
        })?;
    let profile = catalog::node_profile(node_name);
    let path = dest_dir.join("kubelet.conf");
    let decision = decide_kubeconfig(&path, &profile, Some(&ca), &spec.cluster_name, &server, now)?;
    ensure_signable(&decision, Some(&ca), &path)?;
    if decision != Decision::Reuse {
        let mut backup = Backup::new(&spec.pki_dir, "pki");
        write_kubeconfig_for(
            &ca,
            &profile,
            &spec.cluster_name,
            &server,
            spec.key_algorithm,
            Duration::days(spec.leaf_validity_days.into()),
            &path,
            &mut backup,
            &spec.pki_dir,
        )?;
    }
    let (action, reason) = decision.action();
    Ok(FileReport {
        path,
        action,
        reason,
    })
}
