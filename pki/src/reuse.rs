//! Whether a certificate already on disk is kept or replaced, and the serving certificates that
//! are kept across runs on that basis (so re-running an install changes nothing while the
//! certificates stay good).
//!
//! [`check_certificate`] is the one decision: a certificate is replaced when it cannot be
//! parsed, expires within the renewal window, was not signed by the expected CA, or lacks the
//! expected common name or subject alternative names. [`keep_or_issue_serving_certificate`]
//! (signed by the cluster CA) and [`keep_or_self_sign_serving_certificate`] (the agent's
//! fallback when no certificate is configured) apply it to a key pair in two files, which are
//! written with [`write_key_pair`].

use std::net::IpAddr;
use std::path::Path;

use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;

use crate::cert::{self, CertificateAuthority, SubjectAltName};
use crate::client::issue_serving_certificate;
use crate::error::PkiError;
use crate::files::{read_optional, write_atomic, MODE_PUBLIC, MODE_SECRET};
use crate::keys::{self, KeyAlgorithm};

/// Certificates kept across runs are replaced this long before they expire.
pub const RENEW_BEFORE: Duration = Duration::days(30);

/// What a certificate must satisfy to be kept.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    /// PEM of the CA that must have signed it (`None`: any issuer).
    pub issuer_pem: Option<&'a [u8]>,
    /// Its subject common name (`None`: any).
    pub common_name: Option<&'a str>,
    /// Subject alternative names it must carry (it may carry more).
    pub sans: &'a [SubjectAltName],
    /// It must stay valid at least this much longer.
    pub renew_before: Duration,
}

impl Default for Expectations<'_> {
    fn default() -> Self {
        Expectations {
            issuer_pem: None,
            common_name: None,
            sans: &[],
            renew_before: RENEW_BEFORE,
        }
    }
}

/// Why a certificate is replaced rather than kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplaceReason {
    /// The certificate or its key file does not exist.
    #[error("it does not exist yet")]
    Missing,
    /// The file holds no parsable PEM X.509 certificate.
    #[error("it is not a usable PEM certificate")]
    Unparsable,
    /// The private key next to it does not belong to it (or cannot be read).
    #[error("its private key is missing, unreadable or belongs to another certificate")]
    KeyMismatch,
    /// It expires within the renewal window.
    #[error("it expires at {not_after}, within the renewal window")]
    ExpiresSoon {
        /// When it expires.
        not_after: OffsetDateTime,
    },
    /// It was not signed by the expected CA (or the CA itself cannot be parsed).
    #[error("it was not signed by the expected CA")]
    WrongIssuer,
    /// Its common name is not the expected one.
    #[error("its common name is not {expected}")]
    WrongCommonName {
        /// The expected common name.
        expected: String,
    },
    /// It lacks an expected subject alternative name.
    #[error("it does not name {missing} among its subject alternative names")]
    MissingSan {
        /// The missing name.
        missing: SubjectAltName,
    },
}

fn parse_pem(pem: &[u8]) -> Option<Vec<u8>> {
    Some(x509_parser::pem::parse_x509_pem(pem).ok()?.1.contents)
}

fn check_parsed(
    cert: &X509Certificate<'_>,
    expect: &Expectations<'_>,
    now: OffsetDateTime,
) -> Result<(), ReplaceReason> {
    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= now + expect.renew_before {
        return Err(ReplaceReason::ExpiresSoon { not_after });
    }
    if let Some(issuer) = expect.issuer_pem {
        let signed = parse_pem(issuer).is_some_and(|der| {
            x509_parser::parse_x509_certificate(&der)
                .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
        });
        if !signed {
            return Err(ReplaceReason::WrongIssuer);
        }
    }
    if let Some(want) = expect.common_name {
        if !cert
            .subject()
            .iter_common_name()
            .any(|cn| cn.as_str() == Ok(want))
        {
            return Err(ReplaceReason::WrongCommonName {
                expected: want.to_string(),
            });
        }
    }
    let present = cert::subject_alt_names(cert);
    let wanted = expect.sans.iter().map(|s| match s {
        // DNS names compare case-insensitively; `subject_alt_names` lower-cases them.
        SubjectAltName::Dns(d) => SubjectAltName::Dns(d.to_ascii_lowercase()),
        ip => ip.clone(),
    });
    for want in wanted {
        if !present.contains(&want) {
            return Err(ReplaceReason::MissingSan { missing: want });
        }
    }
    Ok(())
}

/// Whether the PEM certificate `cert_pem` can be kept at `now`: `Ok(())`, or why it must be
/// replaced.
pub fn check_certificate(
    cert_pem: &[u8],
    expect: &Expectations<'_>,
    now: OffsetDateTime,
) -> Result<(), ReplaceReason> {
    let der = parse_pem(cert_pem).ok_or(ReplaceReason::Unparsable)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|_| ReplaceReason::Unparsable)?;
    check_parsed(&cert, expect, now)
}

/// Whether `cert_pem` stays valid for [`RENEW_BEFORE`] more and, for each requirement given,
/// was signed by `issuer_pem`, has common name `subject_cn` and names the IP `ip` among its
/// SANs. Used to keep (rather than re-issue) certificates on re-runs.
pub fn certificate_still_good(
    cert_pem: &[u8],
    issuer_pem: Option<&[u8]>,
    subject_cn: Option<&str>,
    ip: Option<IpAddr>,
) -> bool {
    let sans: Vec<SubjectAltName> = ip.into_iter().map(SubjectAltName::Ip).collect();
    let expect = Expectations {
        issuer_pem,
        common_name: subject_cn,
        sans: &sans,
        renew_before: RENEW_BEFORE,
    };
    check_certificate(cert_pem, &expect, OffsetDateTime::now_utc()).is_ok()
}

/// Whether the key pair in `cert_pem`/`key_pem` can be kept: the certificate passes
/// [`check_certificate`] and the key belongs to it.
pub fn check_key_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    expect: &Expectations<'_>,
    now: OffsetDateTime,
) -> Result<(), ReplaceReason> {
    let der = parse_pem(cert_pem).ok_or(ReplaceReason::Unparsable)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|_| ReplaceReason::Unparsable)?;
    check_parsed(&cert, expect, now)?;
    let key =
        keys::parse_key_pem(key_pem, Path::new("key")).map_err(|_| ReplaceReason::KeyMismatch)?;
    if !cert::key_matches(&cert, &key) {
        return Err(ReplaceReason::KeyMismatch);
    }
    Ok(())
}

/// Writes a private key (mode 0600) and its certificate (mode 0644), each atomically: a
/// temporary file in the same directory gets its mode, contents and an fsync before it is
/// renamed over the target, so no reader sees a partial file or a key readable by others. The
/// key goes first, so a certificate on disk never names a key that is not there yet.
pub fn write_key_pair(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<(), PkiError> {
    write_atomic(key_path, key_pem, MODE_SECRET)?;
    write_atomic(cert_path, cert_pem, MODE_PUBLIC)
}

/// A serving key pair as kept or written, with why it was (re)issued.
#[derive(Debug, Clone)]
pub struct ServingPair {
    /// The certificate (PEM).
    pub cert_pem: Vec<u8>,
    /// Its private key (PEM).
    pub key_pem: Vec<u8>,
    /// `None` when the pair on disk was kept; otherwise why a new one was written.
    pub replaced: Option<ReplaceReason>,
}

/// A certificate and its key (PEM), or why the pair on disk cannot be kept.
type KeptPair = Result<(Vec<u8>, Vec<u8>), ReplaceReason>;

/// The pair on disk when both files are there and `expect` holds for them; else why not.
fn existing_pair(
    cert_path: &Path,
    key_path: &Path,
    expect: &Expectations<'_>,
) -> Result<KeptPair, PkiError> {
    let cert = read_optional(cert_path)?;
    let key = read_optional(key_path)?;
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(Err(ReplaceReason::Missing));
    };
    Ok(check_key_pair(&cert, &key, expect, OffsetDateTime::now_utc()).map(|()| (cert, key)))
}

/// The serving certificate for `common_name` with `sans` in `cert_path`/`key_path`, kept while
/// it is signed by `ca`, names every SAN, and stays valid for [`RENEW_BEFORE`] more; otherwise
/// issued anew by `ca` (a fresh `algorithm` key, `validity` long) and written with
/// [`write_key_pair`].
pub fn keep_or_issue_serving_certificate(
    ca: &CertificateAuthority,
    cert_path: &Path,
    key_path: &Path,
    common_name: &str,
    sans: &[SubjectAltName],
    validity: Duration,
    algorithm: KeyAlgorithm,
) -> Result<ServingPair, PkiError> {
    let expect = Expectations {
        issuer_pem: Some(ca.cert_pem().as_bytes()),
        common_name: Some(common_name),
        sans,
        renew_before: RENEW_BEFORE,
    };
    let reason = match existing_pair(cert_path, key_path, &expect)? {
        Ok((cert_pem, key_pem)) => {
            return Ok(ServingPair {
                cert_pem,
                key_pem,
                replaced: None,
            })
        }
        Err(reason) => reason,
    };
    let issued = issue_serving_certificate(ca, common_name, sans, validity, algorithm)?;
    write_key_pair(
        cert_path,
        issued.cert_pem.as_bytes(),
        key_path,
        issued.key_pem.as_bytes(),
    )?;
    Ok(ServingPair {
        cert_pem: issued.cert_pem.into_bytes(),
        key_pem: issued.key_pem.into_bytes(),
        replaced: Some(reason),
    })
}

/// A self-signed serving certificate for `names` (DNS names or IP addresses) in
/// `cert_path`/`key_path`: kept while it names all of them, its key matches and it stays valid
/// for [`RENEW_BEFORE`] more; otherwise generated anew and written with [`write_key_pair`].
/// The node agent uses it when no certificate from the cluster CA is configured.
pub fn keep_or_self_sign_serving_certificate(
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
) -> Result<ServingPair, PkiError> {
    let sans: Vec<SubjectAltName> = names.iter().map(|n| SubjectAltName::classify(n)).collect();
    let expect = Expectations {
        sans: &sans,
        ..Expectations::default()
    };
    let reason = match existing_pair(cert_path, key_path, &expect)? {
        Ok((cert_pem, key_pem)) => {
            return Ok(ServingPair {
                cert_pem,
                key_pem,
                replaced: None,
            })
        }
        Err(reason) => reason,
    };
    let generated = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| {
        PkiError::spec(
            "names",
            format!(
                "cannot self-sign a serving certificate for {}: {e}",
                names.join(", ")
            ),
        )
    })?;
    let cert_pem = generated.cert.pem().into_bytes();
    let key_pem = generated.signing_key.serialize_pem().into_bytes();
    write_key_pair(cert_path, &cert_pem, key_path, &key_pem)?;
    Ok(ServingPair {
        cert_pem,
        key_pem,
        replaced: Some(reason),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::CaKind;
    use std::os::unix::fs::PermissionsExt;

    fn ca(dir: &Path) -> CertificateAuthority {
        CertificateAuthority::create(
            dir,
            CaKind::Kubernetes,
            KeyAlgorithm::EcdsaP256,
            Duration::days(3650),
        )
        .unwrap()
    }

    const IP: &str = "10.0.0.7";

    fn sans() -> Vec<SubjectAltName> {
        vec![
            SubjectAltName::classify(IP),
            SubjectAltName::classify("node1"),
        ]
    }

    fn issue(ca: &CertificateAuthority, days: i64) -> crate::ClientCertificate {
        issue_serving_certificate(
            ca,
            "system:node:node1",
            &sans(),
            Duration::days(days),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_good_certificate_is_kept_and_each_defect_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(&dir.path().join("a"));
        let other = self::ca(&dir.path().join("b"));
        let sans = sans();
        let expect = Expectations {
            issuer_pem: Some(ca.cert_pem().as_bytes()),
            common_name: Some("system:node:node1"),
            sans: &sans,
            renew_before: RENEW_BEFORE,
        };
        let now = OffsetDateTime::now_utc();
        let good = issue(&ca, 365);
        assert_eq!(
            check_certificate(good.cert_pem.as_bytes(), &expect, now),
            Ok(())
        );
        assert_eq!(
            check_key_pair(
                good.cert_pem.as_bytes(),
                good.key_pem.as_bytes(),
                &expect,
                now
            ),
            Ok(())
        );

        // Expiring within the window; and a good one seen 340 days later.
        let soon = issue(&ca, 10);
        assert!(matches!(
            check_certificate(soon.cert_pem.as_bytes(), &expect, now),
            Err(ReplaceReason::ExpiresSoon { .. })
        ));
        assert!(matches!(
            check_certificate(good.cert_pem.as_bytes(), &expect, now + Duration::days(340)),
            Err(ReplaceReason::ExpiresSoon { .. })
        ));
        // Signed by another CA; a CA that is not a certificate.
        let foreign = issue(&other, 365);
        assert_eq!(
            check_certificate(foreign.cert_pem.as_bytes(), &expect, now),
            Err(ReplaceReason::WrongIssuer)
        );
        let garbage_ca = Expectations {
            issuer_pem: Some(b"not a CA"),
            ..expect.clone()
        };
        assert_eq!(
            check_certificate(good.cert_pem.as_bytes(), &garbage_ca, now),
            Err(ReplaceReason::WrongIssuer)
        );
        // The node moved to another IP; another name.
        let moved = [SubjectAltName::classify("10.0.0.8")];
        assert_eq!(
            check_certificate(
                good.cert_pem.as_bytes(),
                &Expectations {
                    sans: &moved,
                    ..expect.clone()
                },
                now
            ),
            Err(ReplaceReason::MissingSan {
                missing: SubjectAltName::classify("10.0.0.8")
            })
        );
        let renamed = [SubjectAltName::classify("NODE2")];
        assert_eq!(
            check_certificate(
                good.cert_pem.as_bytes(),
                &Expectations {
                    sans: &renamed,
                    ..expect.clone()
                },
                now
            ),
            Err(ReplaceReason::MissingSan {
                missing: SubjectAltName::Dns("node2".into())
            })
        );
        // DNS names compare case-insensitively.
        let upper = [SubjectAltName::Dns("NODE1".into())];
        assert_eq!(
            check_certificate(
                good.cert_pem.as_bytes(),
                &Expectations {
                    sans: &upper,
                    ..expect.clone()
                },
                now
            ),
            Ok(())
        );
        assert!(matches!(
            check_certificate(
                good.cert_pem.as_bytes(),
                &Expectations {
                    common_name: Some("system:node:node2"),
                    ..expect.clone()
                },
                now
            ),
            Err(ReplaceReason::WrongCommonName { .. })
        ));
        // Unparsable: not PEM, PEM of something else, truncated.
        for junk in [
            b"garbage".as_slice(),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &good.cert_pem.as_bytes()[..good.cert_pem.len() / 2],
        ] {
            assert_eq!(
                check_certificate(junk, &expect, now),
                Err(ReplaceReason::Unparsable)
            );
        }
        // A key of another pair.
        assert_eq!(
            check_key_pair(
                good.cert_pem.as_bytes(),
                foreign.key_pem.as_bytes(),
                &expect,
                now
            ),
            Err(ReplaceReason::KeyMismatch)
        );
        // The boolean form keeps its old meaning.
        assert!(certificate_still_good(
            good.cert_pem.as_bytes(),
            Some(ca.cert_pem().as_bytes()),
            Some("system:node:node1"),
            Some(IP.parse().unwrap())
        ));
        assert!(!certificate_still_good(
            foreign.cert_pem.as_bytes(),
            Some(ca.cert_pem().as_bytes()),
            None,
            None
        ));
        assert!(!certificate_still_good(
            good.cert_pem.as_bytes(),
            None,
            None,
            Some("10.0.0.9".parse().unwrap())
        ));
    }

    #[test]
    fn serving_certificates_are_kept_while_good_and_reissued_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(&dir.path().join("pki"));
        let cert = dir.path().join("node/agent.crt");
        let key = dir.path().join("node/agent.key");
        let issue = |sans: &[SubjectAltName]| {
            keep_or_issue_serving_certificate(
                &ca,
                &cert,
                &key,
                "system:node:node1",
                sans,
                Duration::days(365),
                KeyAlgorithm::EcdsaP256,
            )
            .unwrap()
        };
        let first = issue(&sans());
        assert_eq!(first.replaced, Some(ReplaceReason::Missing));
        assert_eq!(std::fs::read(&cert).unwrap(), first.cert_pem);
        assert_eq!(std::fs::read(&key).unwrap(), first.key_pem);
        assert_eq!((mode(&cert), mode(&key)), (0o644, 0o600));
        let again = issue(&sans());
        assert_eq!(again.replaced, None);
        assert_eq!(again.cert_pem, first.cert_pem);
        // A new IP: re-issued.
        let moved = issue(&[SubjectAltName::classify("10.0.0.8")]);
        assert!(matches!(
            moved.replaced,
            Some(ReplaceReason::MissingSan { .. })
        ));
        assert_ne!(moved.cert_pem, first.cert_pem);
        // A key that is not the certificate's: re-issued.
        std::fs::write(&key, &first.key_pem).unwrap();
        let fixed = issue(&[SubjectAltName::classify("10.0.0.8")]);
        assert_eq!(fixed.replaced, Some(ReplaceReason::KeyMismatch));
    }

    #[test]
    fn self_signed_serving_certificates_follow_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("pki/agent.crt");
        let key = dir.path().join("pki/agent.key");
        let names = vec!["node1".to_string(), IP.to_string()];
        let first = keep_or_self_sign_serving_certificate(&cert, &key, &names).unwrap();
        assert_eq!(first.replaced, Some(ReplaceReason::Missing));
        assert_eq!((mode(&cert), mode(&key)), (0o644, 0o600));
        let kept = keep_or_self_sign_serving_certificate(&cert, &key, &names).unwrap();
        assert_eq!(kept.replaced, None);
        assert_eq!(kept.cert_pem, first.cert_pem);
        let moved = vec!["node1".to_string(), "10.0.0.8".to_string()];
        let renewed = keep_or_self_sign_serving_certificate(&cert, &key, &moved).unwrap();
        assert!(matches!(
            renewed.replaced,
            Some(ReplaceReason::MissingSan { .. })
        ));
        std::fs::write(&cert, "torn").unwrap();
        let repaired = keep_or_self_sign_serving_certificate(&cert, &key, &moved).unwrap();
        assert_eq!(repaired.replaced, Some(ReplaceReason::Unparsable));
    }

    #[test]
    fn key_pairs_are_written_with_their_modes_replacing_looser_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("a.crt");
        let key = dir.path().join("a.key");
        // A key left world-readable by something else is replaced by a 0600 file.
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_key_pair(&cert, b"CERT", &key, b"KEY").unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"KEY");
        assert_eq!((mode(&cert), mode(&key)), (0o644, 0o600));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a directory: the final rename fails.
        let target = dir.path().join("agent.key");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), "x").unwrap();
        let err = write_atomic(&target, b"KEY", 0o600).unwrap_err();
        assert!(err.to_string().contains("agent.key"), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("agent.key")]);
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"x");
    }

    #[test]
    fn readers_never_see_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.crt");
        let size = 256 * 1024;
        let contents = [vec![b'a'; size], vec![b'b'; size]];
        write_atomic(&path, &contents[0], 0o644).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let seen = std::fs::read(&path).unwrap();
                    assert_eq!(seen.len(), size, "a partial file was visible");
                    assert!(
                        seen.iter().all(|b| *b == seen[0]),
                        "a mix of two writes was visible"
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..200 {
            write_atomic(&path, &contents[i % 2], 0o644).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("the reader saw only whole files");
        assert!(reads > 0);
    }
}
