//! Runs the store conformance suite against a real etcd started on loopback.
//!
//! Needs the `etcd` binary (Debian: `apt-get install etcd-server`). Without it the tests print
//! a loud SKIPPED line and pass, so a machine without etcd can still run `cargo test`; with
//! `KINIT_E2E=1` (the full suite) they fail instead.
#![cfg(feature = "etcd")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kinit_store::conformance::{self, SuiteOptions};
use kinit_store::{EtcdConfig, EtcdStore, Store, StoreError};

fn etcd_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    from_path.or_else(|| {
        let fallback = PathBuf::from("/usr/bin/etcd");
        fallback.is_file().then_some(fallback)
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// TLS material for a server on 127.0.0.1 and one client.
struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn write_tls_files(dir: &Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "etcd-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, cn: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) =
        leaf(vec!["127.0.0.1".into(), "localhost".into()], "etcd-server");
    let (client_cert, client_key) = leaf(Vec::new(), "kube-apiserver-etcd-client");
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    TlsFiles {
        ca: write("ca.crt", &ca_cert.pem()),
        server_cert: write("server.crt", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.crt", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

/// An etcd process on loopback with a temporary data dir; killed on drop.
struct EtcdServer {
    child: Child,
    client_url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    fn start(binary: &Path, tls: Option<&TlsFiles>, dir: tempfile::TempDir) -> Self {
        let (client_port, peer_port) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = dir.path().join("etcd.log");
        let mut cmd = Command::new(binary);
        cmd.arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(tls) = tls {
            cmd.arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth=true");
        }
        let child = cmd.spawn().expect("starting etcd");
        Self {
            child,
            client_url,
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().rev().take(30).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Connects until etcd answers (it needs a moment to elect itself leader).
    async fn connect(&mut self, config: EtcdConfig) -> EtcdStore {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("etcd exited with {status}:\n{}", self.log_tail());
            }
            match EtcdStore::connect(config.clone()).await {
                Ok(store) => return store,
                Err(e) if Instant::now() > deadline => {
                    panic!("etcd did not become healthy: {e}\n{}", self.log_tail())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.client_url.clone()],
            prefix: "/kinit-test".into(),
            progress_interval: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd_or_skip(test: &str) -> Option<PathBuf> {
    let found = etcd_binary();
    // The project's full suite (tests/run.sh sets KINIT_E2E=1) installs etcd; there a missing
    // binary is a failure, not a skip.
    if found.is_none() && std::env::var_os("KINIT_E2E").is_some_and(|v| v == "1") {
        panic!("{test}: etcd is not installed but KINIT_E2E=1 requires it (apt-get install etcd-server)");
    }
    if found.is_none() {
        eprintln!(
            "\n==============================================================\n\
             SKIPPED: etcd not installed (apt-get install etcd-server) [{test}]\n\
             ==============================================================\n"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_against_real_etcd() {
    let Some(binary) = etcd_or_skip("conformance_suite_against_real_etcd") else {
        return;
    };
    let mut server = EtcdServer::start(&binary, None, tempfile::tempdir().unwrap());
    let store = server.connect(server.config()).await;
    let started = Instant::now();
    conformance::run_all(
        Arc::new(store.clone()),
        &SuiteOptions {
            namespace: "/registry/".into(),
            ordering_writes: 10_000,
            ordering_tasks: 8,
            progress_within: Some(Duration::from_secs(5)),
        },
    )
    .await;
    eprintln!("etcd conformance suite passed in {:?}", started.elapsed());

    // Keys live under the configured prefix and nowhere else.
    let raw = EtcdStore::connect(EtcdConfig {
        prefix: String::new(),
        ..server.config()
    })
    .await
    .unwrap();
    let outside = raw.list("/registry/", &Default::default()).await.unwrap();
    assert!(outside.items.is_empty(), "keys leaked outside the prefix");
    let inside = raw
        .list("/kinit-test/registry/", &Default::default())
        .await
        .unwrap();
    assert!(!inside.items.is_empty());
}

#[tokio::test]
async fn mutual_tls_with_client_certificate() {
    let Some(binary) = etcd_or_skip("mutual_tls_with_client_certificate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tls = write_tls_files(dir.path());
    let mut server = EtcdServer::start(&binary, Some(&tls), dir);
    let config = EtcdConfig {
        ca_file: Some(tls.ca.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
        ..server.config()
    };
    let store = server.connect(config.clone()).await;
    conformance::crud_round_trip(&store, "/tls/").await;
    conformance::watch_delete_carries_prev(&store, "/tls/watch/").await;

    // Without the client certificate etcd refuses the connection.
    let anonymous = EtcdStore::connect(EtcdConfig {
        cert_file: None,
        key_file: None,
        ..config
    })
    .await;
    match anonymous {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("unreachable"), "{msg}"),
        Ok(_) => panic!("etcd accepted a client without a certificate"),
        Err(other) => panic!("unexpected error {other}"),
    }
}
