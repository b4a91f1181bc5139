//! `renew`: re-issue existing certificates with the same key, subject, SANs and usages.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::catalog::{CertLocation, CertName};
use crate::cert::{self, CaKind, CertificateAuthority, LeafRequest};
use crate::error::PkiError;
use crate::files::{self, Backup, MODE_PUBLIC, MODE_SECRET};
use crate::keys;
use crate::kubeconfig::Kubeconfig;

/// What to renew: one certificate by kubeadm name, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewTarget {
    /// Every certificate and kubeconfig that exists (missing ones are skipped).
    All,
    /// One certificate; it must exist.
    One(CertName),
}

impl FromStr for RenewTarget {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        if s == "all" {
            Ok(RenewTarget::All)
        } else {
            s.parse().map(RenewTarget::One)
        }
    }
}

impl fmt::Display for RenewTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenewTarget::All => f.write_str("all"),
            RenewTarget::One(n) => f.write_str(n.as_str()),
        }
    }
}

/// One renewed certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewedCertificate {
    /// kubeadm name.
    pub name: CertName,
    /// The rewritten certificate or kubeconfig file.
    pub path: PathBuf,
    /// notAfter before renewal.
    #[serde(with = "time::serde::rfc3339")]
    pub old_expires: OffsetDateTime,
    /// notAfter after renewal.
    #[serde(with = "time::serde::rfc3339")]
    pub new_expires: OffsetDateTime,
}

/// A certificate `renew all` left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedCertificate {
    /// kubeadm name.
    pub name: CertName,
    /// The expected file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// Result of [`renew`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewReport {
    /// What was renewed.
    pub renewed: Vec<RenewedCertificate>,
    /// What `all` skipped because the file does not exist.
    pub skipped: Vec<SkippedCertificate>,
    /// Copies of the files as they were before renewal.
    pub backup_dir: Option<PathBuf>,
}

/// A renewal prepared in memory, written only when every target is ready.
struct PreparedRenewal {
    name: CertName,
    path: PathBuf,
    key_path: Option<PathBuf>,
    contents: Vec<u8>,
    mode: u32,
    old_expires: OffsetDateTime,
    new_expires: OffsetDateTime,
}

/// Re-issues `target` under `pki_dir` / `kubeconfig_dir`, valid for `leaf_validity` from now
/// (capped at the CA's expiry), keeping each certificate's key, subject, SANs and usages
/// (kubeconfigs: the embedded client certificate).
///
/// Everything is checked and signed in memory first; nothing is written if any target fails
/// (unreadable, key mismatch, not signed by its CA, or its CA key absent). Then the old files
/// are copied to `<parent of pki_dir>/kinit-backup/certs-<YYYYmmddHHMMSS>/` (PKI files under
/// `pki/`, kubeconfigs at the top) and replaced atomically.
pub fn renew(
    pki_dir: &Path,
    kubeconfig_dir: &Path,
    target: RenewTarget,
    leaf_validity: Duration,
) -> Result<RenewReport, PkiError> {
    if leaf_validity <= Duration::ZERO {
        return Err(PkiError::spec(
            "leaf_validity",
            "must be positive (e.g. 365 days)",
        ));
    }
    let names: Vec<CertName> = match target {
        RenewTarget::All => CertName::ALL.to_vec(),
        RenewTarget::One(n) => vec![n],
    };
    let mut skipped = Vec::new();
    let mut present = Vec::new();
    for name in names {
        let path = name.path(pki_dir, kubeconfig_dir);
        if path.exists() {
            present.push((name, path));
        } else if target == RenewTarget::All {
            skipped.push(SkippedCertificate {
                name,
                path,
                reason: "file does not exist".into(),
            });
        } else {
            return Err(PkiError::Missing {
                name: name.as_str().into(),
                path,
            });
        }
    }

    // Load the CAs needed and refuse up front if any of them has no key.
    let mut cas: HashMap<CaKind, CertificateAuthority> = HashMap::new();
    for (name, _) in &present {
        let kind = name.ca();
        if let std::collections::hash_map::Entry::Vacant(slot) = cas.entry(kind) {
            slot.insert(CertificateAuthority::load(pki_dir, kind)?);
        }
    }
    let external: Vec<String> = present
        .iter()
        .filter(|(name, _)| cas[&name.ca()].is_externally_managed())
        .map(|(name, _)| format!("{name}: {} missing", cas[&name.ca()].key_path().display()))
        .collect();
    if !external.is_empty() {
        let targets: Vec<&str> = present
            .iter()
            .filter(|(name, _)| cas[&name.ca()].is_externally_managed())
            .map(|(name, _)| name.as_str())
            .collect();
        return Err(PkiError::RenewExternalCa {
            targets: targets.join(", "),
            details: external.join("; "),
        });
    }

    let mut prepared = Vec::new();
    for (name, path) in present {
        let ca = &cas[&name.ca()];
        prepared.push(match name.location() {
            CertLocation::Pki(_) => prepare_pem(name, path, pki_dir, ca, leaf_validity)?,
            CertLocation::Kubeconfig(_) => prepare_kubeconfig(name, path, ca, leaf_validity)?,
        });
    }

    let mut backup = Backup::new(pki_dir, "certs");
    for p in &prepared {
        backup.save(&p.path, &files::backup_name(&p.path, pki_dir))?;
        if let Some(k) = &p.key_path {
            backup.save(k, &files::backup_name(k, pki_dir))?;
        }
    }
    let mut renewed = Vec::new();
    for p in prepared {
        files::write_atomic(&p.path, &p.contents, p.mode)?;
        renewed.push(RenewedCertificate {
            name: p.name,
            path: p.path,
            old_expires: p.old_expires,
            new_expires: p.new_expires,
        });
    }
    Ok(RenewReport {
        renewed,
        skipped,
        backup_dir: backup.dir().map(Path::to_path_buf),
    })
}

/// Re-signs `cert_pem` (whose key is `key_pem`) with `ca`; returns the new DER and both expiries.
fn resign(
    cert_pem: &[u8],
    key_pem: &[u8],
    path: &Path,
    key_path: &Path,
    ca: &CertificateAuthority,
    validity: Duration,
) -> Result<(Vec<u8>, OffsetDateTime, OffsetDateTime), PkiError> {
    let der = cert::pem_to_der(cert_pem, path)?;
    let x = cert::parse_der(&der, path)?;
    let key = keys::parse_key_pem(key_pem, key_path)?;
    if !cert::key_matches(&x, &key) {
        return Err(PkiError::KeyMismatch {
            cert: path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    if !ca.signed(&x) {
        return Err(PkiError::NotSignedByCa {
            path: path.to_path_buf(),
            ca: ca.cert_path().to_path_buf(),
        });
    }
    let request = LeafRequest::from_existing(&x, validity, path)?;
    let public_key = cert::certificate_public_key(&x, path)?;
    let new_der = ca.sign(&request, &public_key, &path.display().to_string())?;
    let new_expires = cert::parse_der(&new_der, path)?
        .validity()
        .not_after
        .to_datetime();
    Ok((new_der, x.validity().not_after.to_datetime(), new_expires))
}

fn prepare_pem(
    name: CertName,
    path: PathBuf,
    pki_dir: &Path,
    ca: &CertificateAuthority,
    validity: Duration,
) -> Result<PreparedRenewal, PkiError> {
    let key_path = name.key_path(pki_dir).unwrap_or_default();
    let cert_pem = std::fs::read(&path).map_err(|e| PkiError::io("read", &path, e))?;
    let key_pem = files::read_optional(&key_path)?.ok_or_else(|| PkiError::OrphanKey {
        key: path.clone(),
        missing: key_path.clone(),
    })?;
    let (der, old_expires, new_expires) =
        resign(&cert_pem, &key_pem, &path, &key_path, ca, validity)?;
    Ok(PreparedRenewal {
        name,
        path,
        key_path: Some(key_path),
        contents: cert::der_to_pem(&der).into_bytes(),
        mode: MODE_PUBLIC,
        old_expires,
        new_expires,
    })
}

fn prepare_kubeconfig(
    name: CertName,
    path: PathBuf,
    ca: &CertificateAuthority,
    validity: Duration,
) -> Result<PreparedRenewal, PkiError> {
    let mut kc = Kubeconfig::load(&path)?;
    let (cert_pem, key_pem) = kc.client_credentials(&path)?;
    let (der, old_expires, new_expires) = resign(&cert_pem, &key_pem, &path, &path, ca, validity)?;
    let key_text = String::from_utf8(key_pem).map_err(|_| PkiError::InvalidKubeconfig {
        path: path.clone(),
        reason: "client-key-data is not PEM text".into(),
    })?;
    kc.set_client_credentials(&cert::der_to_pem(&der), &key_text);
    Ok(PreparedRenewal {
        name,
        contents: kc.to_yaml()?.into_bytes(),
        path,
        key_path: None,
        mode: MODE_SECRET,
        old_expires,
        new_expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("all".parse::<RenewTarget>().unwrap(), RenewTarget::All);
        assert_eq!(
            "etcd-peer".parse::<RenewTarget>().unwrap(),
            RenewTarget::One(CertName::EtcdPeer)
        );
        assert!("ca".parse::<RenewTarget>().is_err());
        assert_eq!(
            RenewTarget::One(CertName::AdminConf).to_string(),
            "admin.conf"
        );
    }

    #[test]
    fn renewing_a_missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let err = renew(
            &pki,
            dir.path(),
            RenewTarget::One(CertName::Apiserver),
            Duration::days(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("apiserver.crt"), "{err}");
        // `all` on an empty directory skips everything and writes nothing.
        let report = renew(&pki, dir.path(), RenewTarget::All, Duration::days(1)).unwrap();
        assert!(report.renewed.is_empty());
        assert_eq!(report.skipped.len(), 11);
        assert!(report.backup_dir.is_none());
    }
}
