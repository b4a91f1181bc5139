//! End-to-end tests of generate / check_expiration / renew on a temporary directory, checked
//! with x509-parser and the `openssl` command.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;

use crate::*;

fn spec_in(dir: &Path) -> PkiSpec {
    PkiSpec {
        pki_dir: dir.join("pki"),
        control_plane_endpoint: Some("lb.example.com:8443".into()),
        nodes: vec![
            ControlPlaneNode {
                name: "cp-1".into(),
                ips: vec!["192.168.10.11".parse().unwrap()],
            },
            ControlPlaneNode {
                name: "cp-2".into(),
                ips: vec![
                    "192.168.10.12".parse().unwrap(),
                    "fd00::12".parse().unwrap(),
                ],
            },
        ],
        extra_sans: vec!["10.0.0.100".into(), "API.Example.org".into()],
        ..PkiSpec::default()
    }
}

fn der_of(path: &Path) -> Vec<u8> {
    crate::cert::pem_to_der(&fs::read(path).unwrap(), path).unwrap()
}

fn kubeconfig_cert_der(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let kc = Kubeconfig::load(path).unwrap();
    let (cert, key) = kc.client_credentials(path).unwrap();
    (crate::cert::pem_to_der(&cert, path).unwrap(), key)
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn sans(x: &X509Certificate<'_>) -> Vec<String> {
    crate::cert::subject_alt_names(x)
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Leaf issuer equals CA subject and the signature verifies with the CA's public key.
fn assert_chain(leaf_der: &[u8], ca_path: &Path) {
    let ca_der = der_of(ca_path);
    let (ca, leaf) = (parse(&ca_der), parse(leaf_der));
    assert_eq!(
        leaf.issuer().as_raw(),
        ca.subject().as_raw(),
        "issuer != CA subject"
    );
    leaf.verify_signature(Some(ca.public_key()))
        .expect("signature must verify against the CA key");
    ca.verify_signature(None).expect("CA must be self-signed");
}

fn days_left(x: &X509Certificate<'_>) -> i64 {
    (x.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o777
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.ends_with("kinit-backup") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

const PKI_FILES: [&str; 22] = [
    "ca.crt",
    "ca.key",
    "apiserver.crt",
    "apiserver.key",
    "apiserver-kubelet-client.crt",
    "apiserver-kubelet-client.key",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "front-proxy-client.crt",
    "front-proxy-client.key",
    "etcd/ca.crt",
    "etcd/ca.key",
    "etcd/server.crt",
    "etcd/server.key",
    "etcd/peer.crt",
    "etcd/peer.key",
    "etcd/healthcheck-client.crt",
    "etcd/healthcheck-client.key",
    "apiserver-etcd-client.crt",
    "apiserver-etcd-client.key",
    "sa.key",
    "sa.pub",
];
const KUBECONFIGS: [&str; 4] = [
    "admin.conf",
    "super-admin.conf",
    "controller-manager.conf",
    "scheduler.conf",
];

#[test]
fn generate_writes_kubeadm_layout_with_valid_chains_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let pki = spec.pki_dir.clone();
    let report = generate(&spec).unwrap();

    // Layout, report and modes.
    for f in PKI_FILES {
        let p = pki.join(f);
        assert!(p.is_file(), "{f} missing");
        assert_eq!(
            report.file(&p).map(|r| r.action),
            Some(FileAction::Created),
            "{f}"
        );
        let want = if f.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode(&p), want, "mode of {f}");
    }
    for f in KUBECONFIGS {
        let p = dir.path().join(f);
        assert_eq!(
            report.file(&p).map(|r| r.action),
            Some(FileAction::Created),
            "{f}"
        );
        assert_eq!(mode(&p), 0o600, "mode of {f}");
    }
    assert_eq!(report.files.len(), PKI_FILES.len() + KUBECONFIGS.len());
    assert!(report.backup_dir.is_none());
    assert_eq!(mode(&pki), 0o755);
    assert_eq!(mode(&pki.join("etcd")), 0o755);

    // CAs.
    for (ca, cn) in [
        ("ca.crt", "kubernetes"),
        ("etcd/ca.crt", "etcd-ca"),
        ("front-proxy-ca.crt", "front-proxy-ca"),
    ] {
        let der = der_of(&pki.join(ca));
        let x = parse(&der);
        assert_eq!(crate::cert::common_name(&x).as_deref(), Some(cn));
        assert!(x.basic_constraints().unwrap().unwrap().value.ca);
        assert!(x.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert!(
            (3648..=3650).contains(&days_left(&x)),
            "{ca}: {}",
            days_left(&x)
        );
    }

    // Leaves: chain, CN/O, SANs, usages, validity.
    struct Want {
        file: &'static str,
        ca: &'static str,
        cn: &'static str,
        o: &'static [&'static str],
        server: bool,
        client: bool,
    }
    let wants = [
        Want {
            file: "apiserver.crt",
            ca: "ca.crt",
            cn: "kube-apiserver",
            o: &[],
            server: true,
            client: false,
        },
        Want {
            file: "apiserver-kubelet-client.crt",
            ca: "ca.crt",
            cn: "kube-apiserver-kubelet-client",
            o: &["kubeadm:cluster-admins"],
            server: false,
            client: true,
        },
        Want {
            file: "front-proxy-client.crt",
            ca: "front-proxy-ca.crt",
            cn: "front-proxy-client",
            o: &[],
            server: false,
            client: true,
        },
        Want {
            file: "etcd/server.crt",
            ca: "etcd/ca.crt",
            cn: "cp-1",
            o: &[],
            server: true,
            client: true,
        },
        Want {
            file: "etcd/peer.crt",
            ca: "etcd/ca.crt",
            cn: "cp-1",
            o: &[],
            server: true,
            client: true,
        },
        Want {
            file: "etcd/healthcheck-client.crt",
            ca: "etcd/ca.crt",
            cn: "kube-etcd-healthcheck-client",
            o: &[],
            server: false,
            client: true,
        },
        Want {
            file: "apiserver-etcd-client.crt",
            ca: "etcd/ca.crt",
            cn: "kube-apiserver-etcd-client",
            o: &[],
            server: false,
            client: true,
        },
    ];
    for w in &wants {
        let der = der_of(&pki.join(w.file));
        assert_chain(&der, &pki.join(w.ca));
        let x = parse(&der);
        assert_eq!(
            crate::cert::common_name(&x).as_deref(),
            Some(w.cn),
            "{}",
            w.file
        );
        assert_eq!(crate::cert::organizations(&x), w.o, "{}", w.file);
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert_eq!(
            (eku.server_auth, eku.client_auth),
            (w.server, w.client),
            "{}",
            w.file
        );
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign(), "{}", w.file);
        assert!(!x.basic_constraints().unwrap().unwrap().value.ca);
        assert!(
            (363..=365).contains(&days_left(&x)),
            "{}: {}",
            w.file,
            days_left(&x)
        );
        let key = crate::keys::load_key(&pki.join(w.file.replace(".crt", ".key"))).unwrap();
        assert!(crate::cert::key_matches(&x, &key), "{} key", w.file);
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }
    let api_der = der_of(&pki.join("apiserver.crt"));
    assert_eq!(
        sans(&parse(&api_der)),
        [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
            "cp-1",
            "192.168.10.11",
            "cp-2",
            "192.168.10.12",
            "fd00::12",
            "lb.example.com",
            "10.0.0.100",
            "api.example.org",
        ]
    );
    let etcd_sans = [
        "localhost",
        "127.0.0.1",
        "::1",
        "cp-1",
        "192.168.10.11",
        "cp-2",
        "192.168.10.12",
        "fd00::12",
    ];
    for f in ["etcd/server.crt", "etcd/peer.crt"] {
        assert_eq!(sans(&parse(&der_of(&pki.join(f)))), etcd_sans, "{f}");
    }

    // Service-account key pair.
    let sa_key = fs::read_to_string(pki.join("sa.key")).unwrap();
    assert!(sa_key.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let sa_pub = fs::read_to_string(pki.join("sa.pub")).unwrap();
    assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"));
    {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::from_pkcs1_pem(&sa_key).unwrap();
        let public = rsa::RsaPublicKey::from_public_key_pem(&sa_pub).unwrap();
        assert_eq!(private.n_bits_precision(), 2048);
        assert_eq!(rsa::RsaPublicKey::from(&private), public);
        assert_eq!(public.n_bits_precision(), 2048);
    }

    // Kubeconfigs.
    let ca_pem = fs::read(pki.join("ca.crt")).unwrap();
    for (file, cn, o) in [
        (
            "admin.conf",
            "kubernetes-admin",
            vec!["kubeadm:cluster-admins"],
        ),
        (
            "super-admin.conf",
            "kubernetes-super-admin",
            vec!["system:masters"],
        ),
        (
            "controller-manager.conf",
            "system:kube-controller-manager",
            vec![],
        ),
        ("scheduler.conf", "system:kube-scheduler", vec![]),
    ] {
        let path = dir.path().join(file);
        let kc = Kubeconfig::load(&path).unwrap();
        assert_eq!(kc.clusters[0].name, "kubernetes");
        assert_eq!(kc.clusters[0].cluster.server, "https://lb.example.com:8443");
        assert_eq!(kc.current_context, format!("{cn}@kubernetes"));
        assert_eq!(kc.users[0].name, cn);
        assert_eq!(kc.ca_data().unwrap(), ca_pem);
        let (der, key_pem) = kubeconfig_cert_der(&path);
        assert_chain(&der, &pki.join("ca.crt"));
        let x = parse(&der);
        assert_eq!(crate::cert::common_name(&x).as_deref(), Some(cn));
        assert_eq!(crate::cert::organizations(&x), o);
        assert!(x.extended_key_usage().unwrap().unwrap().value.client_auth);
        let key = crate::keys::parse_key_pem(&key_pem, &path).unwrap();
        assert!(crate::cert::key_matches(&x, &key));
    }

    // check_expiration sees every certificate with about a year left.
    let exp = check_expiration(&pki, dir.path());
    assert_eq!(exp.certificates.len(), 11);
    for row in &exp.certificates {
        assert_eq!(row.state, CertState::Valid, "{}", row.name);
        assert_eq!(row.residual_time.as_deref(), Some("364d"), "{}", row.name);
        assert!(!row.externally_managed);
        let want_ca = CertName::ALL
            .iter()
            .find(|n| n.as_str() == row.name)
            .unwrap()
            .ca();
        assert_eq!(row.certificate_authority, Some(want_ca));
    }
    for row in &exp.certificate_authorities {
        assert_eq!(row.residual_time.as_deref(), Some("9y"), "{}", row.name);
    }

    // Re-running changes nothing.
    let before = snapshot(dir.path());
    let again = generate(&spec).unwrap();
    assert!(
        again.files.iter().all(|f| f.action == FileAction::Reused),
        "{again:#?}"
    );
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a re-run must not rewrite any file"
    );
}

/// The `openssl` binary, if installed.
fn find_openssl() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("openssl"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/bin/openssl")).filter(|p| p.is_file()))
}

fn run_openssl(openssl: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(openssl)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed: {text}");
    text
}

#[test]
fn openssl_verifies_the_chains() {
    let Some(openssl) = find_openssl() else {
        println!("SKIPPED openssl_verifies_the_chains: `openssl` is not on PATH");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    generate(&spec).unwrap();
    let pki = &spec.pki_dir;
    // The admin.conf client certificate, extracted, must chain too.
    let (admin_der, _) = kubeconfig_cert_der(&dir.path().join("admin.conf"));
    let admin_pem = dir.path().join("admin.crt");
    fs::write(&admin_pem, crate::cert::der_to_pem(&admin_der)).unwrap();
    let cases = [
        ("ca.crt", pki.join("apiserver.crt"), "sslserver"),
        (
            "ca.crt",
            pki.join("apiserver-kubelet-client.crt"),
            "sslclient",
        ),
        ("ca.crt", admin_pem, "sslclient"),
        ("etcd/ca.crt", pki.join("etcd/server.crt"), "sslserver"),
        ("etcd/ca.crt", pki.join("etcd/peer.crt"), "sslclient"),
        (
            "etcd/ca.crt",
            pki.join("apiserver-etcd-client.crt"),
            "sslclient",
        ),
        (
            "front-proxy-ca.crt",
            pki.join("front-proxy-client.crt"),
            "sslclient",
        ),
    ];
    for (ca, leaf, purpose) in cases {
        let out = std::process::Command::new(&openssl)
            .arg("verify")
            .arg("-purpose")
            .arg(purpose)
            .arg("-CAfile")
            .arg(pki.join(ca))
            .arg(&leaf)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "openssl verify {} failed: {stdout}{}",
            leaf.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A certificate from another CA must fail, proving the check is real.
    let out = std::process::Command::new(&openssl)
        .arg("verify")
        .arg("-CAfile")
        .arg(pki.join("etcd/ca.crt"))
        .arg(pki.join("apiserver.crt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn rerun_regenerates_only_what_is_missing_or_insufficient() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec_in(dir.path());
    let pki = spec.pki_dir.clone();
    generate(&spec).unwrap();
    let ca_before = fs::read(pki.join("ca.crt")).unwrap();
    let apiserver_before = fs::read(pki.join("apiserver.crt")).unwrap();

    // A deleted leaf is recreated alone.
    fs::remove_file(pki.join("apiserver-kubelet-client.crt")).unwrap();
    let before = snapshot(dir.path());
    let report = generate(&spec).unwrap();
    let changed: Vec<_> = report
        .files
        .iter()
        .filter(|f| f.action != FileAction::Reused)
        .map(|f| f.path.strip_prefix(dir.path()).unwrap().to_path_buf())
        .collect();
    assert_eq!(
        changed,
        [
            PathBuf::from("pki/apiserver-kubelet-client.crt"),
            PathBuf::from("pki/apiserver-kubelet-client.key")
        ]
    );
    let after = snapshot(dir.path());
    for (path, bytes) in &before {
        if !path.ends_with("apiserver-kubelet-client.key") {
            assert_eq!(after.get(path), Some(bytes), "{} changed", path.display());
        }
    }
    assert_chain(
        &der_of(&pki.join("apiserver-kubelet-client.crt")),
        &pki.join("ca.crt"),
    );

    // A new SAN regenerates the API server certificate only, and keeps a backup of the old one.
    spec.extra_sans.push("new.example.org".into());
    let report = generate(&spec).unwrap();
    let regenerated: Vec<_> = report
        .files
        .iter()
        .filter(|f| f.action != FileAction::Reused)
        .collect();
    assert_eq!(regenerated.len(), 2, "{regenerated:#?}");
    assert!(regenerated
        .iter()
        .all(|f| f.action == FileAction::Regenerated
            && f.path.starts_with(&pki)
            && f.path.file_stem().unwrap() == "apiserver"
            && f.reason.as_deref().unwrap().contains("new.example.org")));
    assert!(
        sans(&parse(&der_of(&pki.join("apiserver.crt")))).contains(&"new.example.org".to_string())
    );
    let backup = report.backup_dir.expect("backup dir");
    assert!(backup.starts_with(dir.path().join("kinit-backup")));
    assert_eq!(
        fs::read(backup.join("pki/apiserver.crt")).unwrap(),
        apiserver_before
    );
    assert!(backup.join("pki/apiserver.key").is_file());
    assert_eq!(
        fs::read(pki.join("ca.crt")).unwrap(),
        ca_before,
        "CA must never change"
    );

    // A moved endpoint regenerates the kubeconfigs (server URL) but no certificate.
    spec.control_plane_endpoint = Some("vip.example.com".into());
    let report = generate(&spec).unwrap();
    let kinds: Vec<_> = report
        .files
        .iter()
        .filter(|f| f.action != FileAction::Reused)
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        kinds
            .iter()
            .all(|k| k.ends_with(".conf") || k.starts_with("apiserver.")),
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| k.ends_with(".conf")).count(), 4);
    let kc = Kubeconfig::load(&dir.path().join("admin.conf")).unwrap();
    assert_eq!(
        kc.clusters[0].cluster.server,
        "https://vip.example.com:6443"
    );

    // A CA key in kubeadm's SEC1 encoding is read and reused as is.
    let key = crate::keys::load_key(&pki.join("ca.key")).unwrap();
    let secret = {
        use p256::pkcs8::DecodePrivateKey;
        p256::SecretKey::from_pkcs8_der(key.serialized_der()).unwrap()
    };
    let sec1 = secret.to_sec1_pem(p256::pkcs8::LineEnding::LF).unwrap();
    fs::write(pki.join("ca.key"), sec1.as_bytes()).unwrap();
    let report = generate(&spec).unwrap();
    assert!(
        report.files.iter().all(|f| f.action == FileAction::Reused),
        "{report:#?}"
    );
}

#[test]
fn renew_all_extends_expiry_and_keeps_keys_subjects_and_sans() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PkiSpec {
        leaf_validity_days: 1,
        ..spec_in(dir.path())
    };
    let pki = spec.pki_dir.clone();
    let kc_dir = spec.kubeconfig_dir();
    generate(&spec).unwrap();
    for row in check_expiration(&pki, &kc_dir).certificates {
        assert!(
            matches!(row.residual_time.as_deref(), Some("23h") | Some("1d")),
            "{row:?}"
        );
    }
    let before = snapshot(dir.path());

    let report = renew(&pki, &kc_dir, RenewTarget::All, Duration::days(365)).unwrap();
    assert_eq!(report.renewed.len(), 11);
    assert!(report.skipped.is_empty());
    let now = OffsetDateTime::now_utc();
    for r in &report.renewed {
        assert!((r.old_expires - now).whole_hours() <= 24, "{r:?}");
        assert!(
            (364..=365).contains(&(r.new_expires - now).whole_days()),
            "{r:?}"
        );
    }

    // Same key, subject, SANs and usages; new expiry; still chained.
    for name in CertName::ALL {
        let path = name.path(&pki, &kc_dir);
        let old_bytes = &before[&path];
        let (old_der, new_der, ca) = match name.location() {
            CertLocation::Pki(_) => {
                let key_path = name.key_path(&pki).unwrap();
                assert_eq!(
                    fs::read(&key_path).unwrap(),
                    before[&key_path],
                    "{name} key changed"
                );
                let old = crate::cert::pem_to_der(old_bytes, &path).unwrap();
                (old, der_of(&path), name.ca().cert_path(&pki))
            }
            CertLocation::Kubeconfig(_) => {
                let old_kc = Kubeconfig::from_yaml(old_bytes, &path).unwrap();
                let (old_cert, old_key) = old_kc.client_credentials(&path).unwrap();
                let (new_der, new_key) = kubeconfig_cert_der(&path);
                assert_eq!(new_key, old_key, "{name}: embedded key changed");
                let old = crate::cert::pem_to_der(&old_cert, &path).unwrap();
                assert_ne!(old, new_der, "{name}: embedded certificate not updated");
                (old, new_der, pki.join("ca.crt"))
            }
        };
        let (old, new) = (parse(&old_der), parse(&new_der));
        assert_eq!(
            old.subject().as_raw(),
            new.subject().as_raw(),
            "{name} subject"
        );
        assert_eq!(sans(&old), sans(&new), "{name} SANs");
        assert_eq!(old.public_key().raw, new.public_key().raw, "{name} key");
        assert_eq!(
            old.extended_key_usage().unwrap().unwrap().value,
            new.extended_key_usage().unwrap().unwrap().value,
            "{name} EKU"
        );
        assert_ne!(
            old.raw_serial(),
            new.raw_serial(),
            "{name} serial must change"
        );
        assert!(days_left(&new) >= 364, "{name}");
        assert_chain(&new_der, &ca);
    }

    // Old files are in the backup directory.
    let backup = report.backup_dir.clone().expect("backup dir");
    assert!(backup
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("certs-"));
    assert_eq!(
        fs::read(backup.join("pki/apiserver.crt")).unwrap(),
        before[&pki.join("apiserver.crt")]
    );
    assert_eq!(
        fs::read(backup.join("pki/etcd/peer.crt")).unwrap(),
        before[&pki.join("etcd/peer.crt")]
    );
    assert_eq!(
        fs::read(backup.join("admin.conf")).unwrap(),
        before[&kc_dir.join("admin.conf")]
    );
    assert_eq!(mode(&pki.join("apiserver.crt")), 0o644);
    assert_eq!(mode(&kc_dir.join("admin.conf")), 0o600);

    for row in check_expiration(&pki, &kc_dir).certificates {
        assert_eq!(row.residual_time.as_deref(), Some("364d"), "{row:?}");
    }

    // Renewing one certificate touches only that file.
    let before_one = snapshot(dir.path());
    let one = renew(
        &pki,
        &kc_dir,
        RenewTarget::One(CertName::EtcdPeer),
        Duration::days(30),
    )
    .unwrap();
    assert_eq!(one.renewed.len(), 1);
    assert_ne!(one.backup_dir, report.backup_dir);
    let after_one = snapshot(dir.path());
    for (path, bytes) in &before_one {
        if path != &pki.join("etcd/peer.crt") {
            assert_eq!(
                after_one.get(path),
                Some(bytes),
                "{} changed",
                path.display()
            );
        }
    }
    assert!((29..=30).contains(&days_left(&parse(&der_of(&pki.join("etcd/peer.crt"))))));

    // A generate after renewal reuses the renewed certificates.
    let regen = generate(&PkiSpec {
        leaf_validity_days: 365,
        ..spec
    })
    .unwrap();
    assert!(
        regen.files.iter().all(|f| f.action == FileAction::Reused),
        "{regen:#?}"
    );
}

#[test]
fn externally_managed_ca_is_respected_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());
    let pki = spec.pki_dir.clone();
    let kc_dir = spec.kubeconfig_dir();
    generate(&spec).unwrap();
    fs::remove_file(pki.join("ca.key")).unwrap();

    // Existing leaves are reused; the missing CA key is not invented.
    let report = generate(&spec).unwrap();
    assert!(report.files.iter().all(|f| f.action == FileAction::Reused));
    assert!(report.file(&pki.join("ca.key")).is_none());
    assert!(!pki.join("ca.key").exists());

    let exp = check_expiration(&pki, &kc_dir);
    for row in &exp.certificates {
        assert_eq!(
            row.externally_managed,
            row.certificate_authority == Some(CaKind::Kubernetes),
            "{row:?}"
        );
    }
    let ca_row = exp
        .certificate_authorities
        .iter()
        .find(|r| r.name == "ca")
        .unwrap();
    assert!(ca_row.externally_managed);
    assert!(
        !exp.certificate_authorities
            .iter()
            .find(|r| r.name == "etcd-ca")
            .unwrap()
            .externally_managed
    );

    // A missing leaf cannot be signed: clear error, nothing written.
    fs::remove_file(pki.join("apiserver.crt")).unwrap();
    let before = snapshot(dir.path());
    let err = generate(&spec).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PkiError::ExternalCa { .. }), "{msg}");
    assert!(
        msg.contains("apiserver.crt")
            && msg.contains("ca.key")
            && msg.contains("externally managed"),
        "{msg}"
    );
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused generate must not write"
    );

    // Renewal refuses certificates of that CA, single or all, but renews others.
    let err = renew(
        &pki,
        &kc_dir,
        RenewTarget::One(CertName::AdminConf),
        Duration::days(1),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::RenewExternalCa { .. }), "{err}");
    assert!(err.to_string().contains("admin.conf"), "{err}");
    let err = renew(&pki, &kc_dir, RenewTarget::All, Duration::days(1)).unwrap_err();
    assert!(err.to_string().contains("ca.key"), "{err}");
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused renew must not write"
    );
    let ok = renew(
        &pki,
        &kc_dir,
        RenewTarget::One(CertName::EtcdServer),
        Duration::days(1),
    )
    .unwrap();
    assert_eq!(ok.renewed[0].name, CertName::EtcdServer);
}

#[test]
fn node_kubeconfig_and_refusals_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_in(dir.path());

    // Invalid settings write nothing at all.
    let bad = PkiSpec {
        service_cidr: "not-a-cidr".into(),
        ..spec.clone()
    };
    assert!(generate(&bad).is_err());
    assert!(!spec.pki_dir.exists());

    // A CA key without its certificate is never overwritten.
    fs::create_dir_all(spec.pki_dir.join("etcd")).unwrap();
    fs::write(spec.pki_dir.join("etcd/ca.key"), "precious").unwrap();
    let err = generate(&spec).unwrap_err();
    assert!(matches!(err, PkiError::OrphanKey { .. }), "{err}");
    assert_eq!(
        fs::read(spec.pki_dir.join("etcd/ca.key")).unwrap(),
        b"precious"
    );
    assert!(
        !spec.pki_dir.join("ca.crt").exists(),
        "nothing may be written before the check"
    );
    fs::remove_file(spec.pki_dir.join("etcd/ca.key")).unwrap();
    generate(&spec).unwrap();

    // Node agent kubeconfig.
    let node_dir = dir.path().join("nodes/worker-1");
    let first = write_node_kubeconfig(&spec, "worker-1", &node_dir).unwrap();
    assert_eq!(first.action, FileAction::Created);
    assert_eq!(first.path, node_dir.join("kubelet.conf"));
    assert_eq!(mode(&first.path), 0o600);
    let kc = Kubeconfig::load(&first.path).unwrap();
    assert_eq!(kc.current_context, "system:node:worker-1@kubernetes");
    assert_eq!(kc.clusters[0].cluster.server, "https://lb.example.com:8443");
    let (der, _) = kubeconfig_cert_der(&first.path);
    let x = parse(&der);
    assert_eq!(
        crate::cert::common_name(&x).as_deref(),
        Some("system:node:worker-1")
    );
    assert_eq!(crate::cert::organizations(&x), ["system:nodes"]);
    assert_chain(&der, &spec.pki_dir.join("ca.crt"));
    let again = write_node_kubeconfig(&spec, "worker-1", &node_dir).unwrap();
    assert_eq!(again.action, FileAction::Reused);
    // The same file asked for another node is replaced.
    let other = write_node_kubeconfig(&spec, "worker-2", &node_dir).unwrap();
    assert_eq!(other.action, FileAction::Regenerated);
    assert!(other.reason.unwrap().contains("system:node:worker-2"));
    assert!(write_node_kubeconfig(&spec, "Worker_3", &node_dir).is_err());

    // Helpers for the installer: CA loading and the discovery hash.
    let ca = CertificateAuthority::load(&spec.pki_dir, CaKind::Kubernetes).unwrap();
    assert!(!ca.is_externally_managed());
    let hash = ca_cert_hash(&fs::read(spec.pki_dir.join("ca.crt")).unwrap()).unwrap();
    assert_eq!(hash, ca.cert_hash());
    assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64);
}

#[test]
fn renew_keeps_certificates_made_by_other_tools_intact() {
    let Some(openssl) = find_openssl() else {
        println!(
            "SKIPPED renew_keeps_certificates_made_by_other_tools_intact: `openssl` is not on PATH"
        );
        return;
    };
    // An etcd CA with a SEC1 EC key, and a peer certificate with a PKCS#1 RSA key and two O
    // values, all made by openssl (standing in for a PKI made by kubeadm or by hand).
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    fs::create_dir_all(pki.join("etcd")).unwrap();
    let etcd = pki.join("etcd");
    run_openssl(
        &openssl,
        &etcd,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ],
    );
    run_openssl(
        &openssl,
        &etcd,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=etcd-ca",
            "-days",
            "30",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,digitalSignature",
        ],
    );
    run_openssl(
        &openssl,
        &etcd,
        &["genrsa", "-traditional", "-out", "peer.key", "2048"],
    );
    run_openssl(
        &openssl,
        &etcd,
        &[
            "req",
            "-new",
            "-key",
            "peer.key",
            "-subj",
            "/O=team-a/O=team-b/CN=cp-1",
            "-out",
            "peer.csr",
        ],
    );
    fs::write(
        etcd.join("ext.cnf"),
        "subjectAltName=DNS:localhost,DNS:cp-1,IP:127.0.0.1,IP:10.1.2.3\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
    )
    .unwrap();
    run_openssl(
        &openssl,
        &etcd,
        &[
            "x509",
            "-req",
            "-in",
            "peer.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "peer.crt",
        ],
    );
    assert!(fs::read_to_string(etcd.join("ca.key"))
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));
    assert!(fs::read_to_string(etcd.join("peer.key"))
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    let old_der = der_of(&etcd.join("peer.crt"));

    let report = renew(
        &pki,
        dir.path(),
        RenewTarget::One(CertName::EtcdPeer),
        Duration::days(20),
    )
    .unwrap();
    assert_eq!(report.renewed.len(), 1);
    let new_der = der_of(&etcd.join("peer.crt"));
    let (old, new) = (parse(&old_der), parse(&new_der));
    assert_eq!(old.subject().as_raw(), new.subject().as_raw());
    assert_eq!(crate::cert::organizations(&new), ["team-a", "team-b"]);
    assert_eq!(sans(&new), ["localhost", "cp-1", "127.0.0.1", "10.1.2.3"]);
    assert_eq!(old.public_key().raw, new.public_key().raw);
    let ku = new.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!((19..=20).contains(&days_left(&new)));
    assert_chain(&new_der, &etcd.join("ca.crt"));
    let verified = run_openssl(
        &openssl,
        &etcd,
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "ca.crt",
            "peer.crt",
        ],
    );
    assert!(verified.contains("peer.crt: OK"), "{verified}");
    // The renewed certificate still pairs with the untouched RSA key in a TLS sense.
    let modulus_cert = run_openssl(
        &openssl,
        &etcd,
        &["x509", "-noout", "-modulus", "-in", "peer.crt"],
    );
    let modulus_key = run_openssl(
        &openssl,
        &etcd,
        &["rsa", "-noout", "-modulus", "-in", "peer.key"],
    );
    assert_eq!(modulus_cert, modulus_key);
}

#[test]
fn generate_with_rsa_2048_keys() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PkiSpec {
        key_algorithm: KeyAlgorithm::Rsa2048,
        ..spec_in(dir.path())
    };
    let pki = spec.pki_dir.clone();
    generate(&spec).unwrap();
    for (leaf, ca) in [
        ("apiserver", "ca"),
        ("etcd/peer", "etcd/ca"),
        ("front-proxy-client", "front-proxy-ca"),
    ] {
        let key = crate::keys::load_key(&pki.join(format!("{leaf}.key"))).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_RSA_SHA256, "{leaf}");
        let der = der_of(&pki.join(format!("{leaf}.crt")));
        assert_chain(&der, &pki.join(format!("{ca}.crt")));
        let x = parse(&der);
        assert!(
            x.key_usage().unwrap().unwrap().value.key_encipherment(),
            "{leaf}"
        );
    }
    let (admin, _) = kubeconfig_cert_der(&dir.path().join("admin.conf"));
    assert_chain(&admin, &pki.join("ca.crt"));
    let again = generate(&spec).unwrap();
    assert!(again.files.iter().all(|f| f.action == FileAction::Reused));
}
