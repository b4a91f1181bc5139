//! `check_expiration`: the rows of `kubeadm certs check-expiration`, as data.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::catalog::{CertLocation, CertName};
use crate::cert::{self, CaKind};
use crate::error::PkiError;
use crate::files;
use crate::kubeconfig::Kubeconfig;

/// State of one certificate on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertState {
    /// Present and not expired.
    Valid,
    /// Present but past its notAfter.
    Expired,
    /// The file does not exist.
    Missing,
    /// The file exists but cannot be read as a certificate (see `error`).
    Invalid,
}

/// One row of the expiration report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// kubeadm name (`apiserver`, `admin.conf`, `etcd-ca`, ...).
    pub name: String,
    /// The certificate or kubeconfig file.
    pub path: PathBuf,
    /// Whether it is there and usable.
    pub state: CertState,
    /// End of validity (RFC 3339 when serialized).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires: Option<OffsetDateTime>,
    /// Time left, kubeadm style: `364d`, `9y`, `23h`, or `<invalid>` once expired.
    pub residual_time: Option<String>,
    /// The CA that signs it; `None` on CA rows.
    pub certificate_authority: Option<CaKind>,
    /// `true` when the signing CA's key (or, on CA rows, the CA's own key) is absent.
    pub externally_managed: bool,
    /// Why the file could not be read, for `invalid` rows.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// All certificates and CAs with their expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpirationReport {
    /// Leaf certificates and kubeconfigs, in kubeadm's order.
    pub certificates: Vec<CertificateStatus>,
    /// `ca`, `etcd-ca`, `front-proxy-ca`.
    pub certificate_authorities: Vec<CertificateStatus>,
}

/// Time left until `expires`, formatted like Kubernetes' short human durations.
/// Hand-written: it is a few comparisons and must match kubeadm's output exactly.
pub fn residual_time(expires: OffsetDateTime, now: OffsetDateTime) -> String {
    let left: Duration = expires - now;
    let seconds = left.whole_seconds();
    if seconds < -1 {
        "<invalid>".into()
    } else if seconds < 0 {
        "0s".into()
    } else if seconds < 60 {
        format!("{seconds}s")
    } else if left.whole_minutes() < 60 {
        format!("{}m", left.whole_minutes())
    } else if left.whole_hours() < 24 {
        format!("{}h", left.whole_hours())
    } else if left.whole_days() < 365 {
        format!("{}d", left.whole_days())
    } else {
        format!("{}y", left.whole_days() / 365)
    }
}

/// Reads the first certificate of `path` (a PEM file or a kubeconfig) and returns its notAfter.
fn read_not_after(path: &Path, kubeconfig: bool) -> Result<Option<OffsetDateTime>, PkiError> {
    let Some(bytes) = files::read_optional(path)? else {
        return Ok(None);
    };
    let pem = if kubeconfig {
        Kubeconfig::from_yaml(&bytes, path)?
            .client_credentials(path)?
            .0
    } else {
        bytes
    };
    let der = cert::pem_to_der(&pem, path)?;
    let x = cert::parse_der(&der, path)?;
    Ok(Some(x.validity().not_after.to_datetime()))
}

fn status(
    name: &str,
    path: PathBuf,
    kubeconfig: bool,
    ca: Option<CaKind>,
    externally_managed: bool,
    now: OffsetDateTime,
) -> CertificateStatus {
    let mut row = CertificateStatus {
        name: name.to_string(),
        path,
        state: CertState::Missing,
        expires: None,
        residual_time: None,
        certificate_authority: ca,
        externally_managed,
        error: None,
    };
    match read_not_after(&row.path, kubeconfig) {
        Ok(None) => {}
        Ok(Some(expires)) => {
            row.state = if expires <= now {
                CertState::Expired
            } else {
                CertState::Valid
            };
            row.expires = Some(expires);
            row.residual_time = Some(residual_time(expires, now));
        }
        Err(e) => {
            row.state = CertState::Invalid;
            row.error = Some(e.to_string());
        }
    }
    row
}

/// Lists every kubeadm certificate and kubeconfig under `pki_dir` / `kubeconfig_dir` with its
/// expiry, residual time, signing CA and whether that CA is externally managed, plus the CAs.
/// Missing or unreadable files become rows with state `missing` / `invalid`; this never fails.
pub fn check_expiration(pki_dir: &Path, kubeconfig_dir: &Path) -> ExpirationReport {
    check_expiration_at(pki_dir, kubeconfig_dir, OffsetDateTime::now_utc())
}

pub(crate) fn check_expiration_at(
    pki_dir: &Path,
    kubeconfig_dir: &Path,
    now: OffsetDateTime,
) -> ExpirationReport {
    // A CA is externally managed when its certificate is there but its key is not.
    let external =
        |kind: CaKind| kind.cert_path(pki_dir).exists() && !kind.key_path(pki_dir).exists();
    let certificates = CertName::ALL
        .into_iter()
        .map(|name| {
            status(
                name.as_str(),
                name.path(pki_dir, kubeconfig_dir),
                matches!(name.location(), CertLocation::Kubeconfig(_)),
                Some(name.ca()),
                external(name.ca()),
                now,
            )
        })
        .collect();
    let certificate_authorities = CaKind::ALL
        .into_iter()
        .map(|kind| {
            status(
                kind.name(),
                kind.cert_path(pki_dir),
                false,
                None,
                external(kind),
                now,
            )
        })
        .collect();
    ExpirationReport {
        certificates,
        certificate_authorities,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn residual_time_matches_kubeadm_style() {
        let now = datetime!(2025-01-01 00:00:00 UTC);
        let cases = [
            (Duration::days(365) - Duration::minutes(5), "364d"),
            (Duration::days(3650), "10y"),
            (Duration::days(3649), "9y"),
            (Duration::hours(23), "23h"),
            (Duration::minutes(59), "59m"),
            (Duration::seconds(30), "30s"),
            (Duration::milliseconds(-500), "0s"),
            (Duration::days(-3), "<invalid>"),
        ];
        for (left, want) in cases {
            assert_eq!(residual_time(now + left, now), want, "{left}");
        }
    }

    #[test]
    fn empty_dirs_report_everything_missing() {
        let dir = tempfile::tempdir().unwrap();
        let report = check_expiration(&dir.path().join("pki"), dir.path());
        assert_eq!(report.certificates.len(), 11);
        assert_eq!(report.certificate_authorities.len(), 3);
        assert!(report
            .certificates
            .iter()
            .chain(&report.certificate_authorities)
            .all(|r| r.state == CertState::Missing
                && r.expires.is_none()
                && !r.externally_managed));
        let json = serde_yaml::to_string(&report).unwrap();
        assert!(json.contains("state: missing"));
    }

    #[test]
    fn garbage_file_is_reported_invalid_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::write(pki.join("apiserver.crt"), "garbage").unwrap();
        std::fs::write(dir.path().join("admin.conf"), "users: [").unwrap();
        let report = check_expiration(&pki, dir.path());
        let row = |n: &str| report.certificates.iter().find(|r| r.name == n).unwrap();
        assert_eq!(row("apiserver").state, CertState::Invalid);
        assert!(row("apiserver")
            .error
            .as_ref()
            .unwrap()
            .contains("apiserver.crt"));
        assert_eq!(row("admin.conf").state, CertState::Invalid);
    }
}
