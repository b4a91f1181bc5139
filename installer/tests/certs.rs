//! `kinit certs` end to end on a local directory, checked with openssl as an independent verifier.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn kinit(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kinit"))
        .args(args)
        .output()
        .expect("run kinit");
    assert!(
        out.status.success(),
        "kinit {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn openssl(args: &[&str]) -> Option<String> {
    let out = Command::new("openssl").args(args).output().ok()?;
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn generate(dir: &Path) {
    let pki = dir.join("pki");
    kinit(&[
        "certs",
        "generate",
        "--cert-dir",
        pki.to_str().unwrap(),
        "--node-name",
        "cp-1",
        "--node-ip",
        "10.88.0.11",
        "--control-plane-endpoint",
        "10.88.0.100:8443",
        "--apiserver-cert-extra-sans",
        "api.example.test,192.0.2.7",
    ]);
}

#[test]
fn generated_chains_verify_with_openssl_and_keys_are_private() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let pki = dir.path().join("pki");
    let p = |rel: &str| pki.join(rel).to_str().unwrap().to_string();

    let chains = [
        ("ca.crt", "apiserver.crt"),
        ("ca.crt", "apiserver-kubelet-client.crt"),
        ("front-proxy-ca.crt", "front-proxy-client.crt"),
        ("etcd/ca.crt", "etcd/server.crt"),
        ("etcd/ca.crt", "etcd/peer.crt"),
        ("etcd/ca.crt", "etcd/healthcheck-client.crt"),
        ("etcd/ca.crt", "apiserver-etcd-client.crt"),
    ];
    for (ca, leaf) in chains {
        let Some(out) = openssl(&["verify", "-CAfile", &p(ca), &p(leaf)]) else {
            eprintln!("SKIPPED openssl checks: openssl is not installed");
            return;
        };
        assert!(out.contains(": OK"), "{leaf}: {out}");
    }

    let text = openssl(&["x509", "-noout", "-text", "-in", &p("apiserver.crt")]).unwrap();
    for san in [
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "DNS:cp-1",
        "DNS:api.example.test",
        "IP Address:10.96.0.1",
        "IP Address:10.88.0.11",
        "IP Address:10.88.0.100",
        "IP Address:192.0.2.7",
    ] {
        assert!(text.contains(san), "apiserver.crt lacks {san}:\n{text}");
    }

    for entry in walk(&pki).into_iter().chain(walk(dir.path())) {
        let name = entry.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".key") || name.ends_with(".conf") {
            let mode = std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", entry.display());
        }
    }
    assert!(dir.path().join("admin.conf").is_file());
    assert!(dir.path().join("super-admin.conf").is_file());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn check_expiration_then_renew_all_moves_expiry_and_keeps_backups() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let pki = dir.path().join("pki");
    let pki_arg = pki.to_str().unwrap();

    let table = kinit(&["certs", "check-expiration", "--cert-dir", pki_arg]);
    let table = String::from_utf8(table.stdout).unwrap();
    for header in [
        "CERTIFICATE",
        "EXPIRES",
        "RESIDUAL TIME",
        "EXTERNALLY MANAGED",
    ] {
        assert!(table.contains(header), "{table}");
    }
    for name in [
        "admin.conf",
        "apiserver",
        "etcd-server",
        "front-proxy-client",
    ] {
        assert!(table.contains(name), "{name} missing:\n{table}");
    }

    let json = kinit(&[
        "certs",
        "check-expiration",
        "--cert-dir",
        pki_arg,
        "-o",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let certs = report["certificates"].as_array().unwrap();
    assert!(certs.len() >= 10, "{report}");
    for cert in certs {
        let residual = cert["residual_time"].as_str().unwrap_or_default();
        assert!(
            residual == "364d" || residual == "365d",
            "{}: residual {residual}",
            cert["name"]
        );
    }
    let before: Vec<String> = certs
        .iter()
        .map(|c| c["expires"].as_str().unwrap().to_string())
        .collect();

    // Renew with a different validity so the new expiry is observably different.
    let renewed = kinit(&[
        "certs",
        "renew",
        "all",
        "--cert-dir",
        pki_arg,
        "--cert-validity-days",
        "200",
        "-o",
        "json",
    ]);
    let renewed: serde_json::Value = serde_json::from_slice(&renewed.stdout).unwrap();
    let backup = renewed["backup_dir"].as_str().expect("a backup dir");
    assert!(Path::new(backup).join("pki/apiserver.crt").is_file());
    assert!(Path::new(backup).join("admin.conf").is_file());

    let json = kinit(&[
        "certs",
        "check-expiration",
        "--cert-dir",
        pki_arg,
        "-o",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    for (cert, old) in report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .zip(before)
    {
        assert_ne!(cert["expires"].as_str().unwrap(), old, "{}", cert["name"]);
        let residual = cert["residual_time"].as_str().unwrap();
        assert!(residual == "199d" || residual == "200d", "{residual}");
    }
    // The apiserver certificate still verifies against the unchanged CA.
    if let Some(out) = openssl(&[
        "verify",
        "-CAfile",
        pki.join("ca.crt").to_str().unwrap(),
        pki.join("apiserver.crt").to_str().unwrap(),
    ]) {
        assert!(out.contains(": OK"));
    }
}

#[test]
fn renew_of_unknown_name_fails_without_changes() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_kinit"))
        .args(["certs", "renew", "apiserver-typo", "--cert-dir"])
        .arg(dir.path().join("pki"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apiserver-typo"), "{err}");
    assert!(!dir.path().join("kinit-backup").exists());
}
