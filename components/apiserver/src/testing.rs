//! Test harness (feature `testing`): an in-process API server on 127.0.0.1 with a generated PKI
//! and an embedded store in a temp dir, for this crate's tests and for components (scheduler,
//! controllers, agent) that test against a real API server.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::access::AuthorizationMode;
use crate::probes::ComponentStatusConfig;
use crate::server::{ApiServer, ApiServerConfig, TlsMaterial};
use kinit_pki::{CaKind, CertificateAuthority, ControlPlaneNode, KeyAlgorithm, PkiSpec};
use kinit_store::{EmbeddedStore, Store};

/// A running server and its files.
pub struct TestServer {
    /// Temp dir with `pki/`, `admin.conf`, the store.
    pub dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Cluster CA (PEM).
    pub ca_pem: Vec<u8>,
    /// The store behind the server.
    pub store: Arc<dyn Store>,
}

impl TestServer {
    /// Generates a PKI, opens an embedded store and serves on a free port.
    pub async fn start() -> TestServer {
        Self::start_with(|_, _| {}).await
    }

    /// Like [`TestServer::start`], letting `configure` adjust the configuration first (it
    /// gets the PKI directory, e.g. to build a node proxy from its files).
    pub async fn start_with(
        configure: impl FnOnce(&mut ApiServerConfig, &std::path::Path),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pki_dir = dir.path().join("pki");
        let spec = PkiSpec {
            pki_dir: pki_dir.clone(),
            kubeconfig_dir: Some(dir.path().to_path_buf()),
            control_plane_endpoint: Some(format!("127.0.0.1:{port}")),
            nodes: vec![ControlPlaneNode {
                name: "cp1".into(),
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            }],
            ..PkiSpec::default()
        };
        tokio::task::spawn_blocking(move || kinit_pki::generate(&spec))
            .await
            .unwrap()
            .unwrap();
        let read = |name: &str| std::fs::read(pki_dir.join(name)).unwrap();
        let mut config = ApiServerConfig {
            tls: TlsMaterial {
                cert_chain_pem: read("apiserver.crt"),
                private_key_pem: read("apiserver.key"),
                client_ca_pem: Some(read("ca.crt")),
            },
            advertise_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            advertise_port: 6443,
            service_cluster_ip_range: "10.96.0.0/12".parse().unwrap(),
            service_node_port_range: (30000, 32767),
            authentication: kinit_auth::AuthenticatorConfig {
                service_account_public_keys: vec![read("sa.pub")],
                service_account_issuer: "https://kubernetes.default.svc.cluster.local".into(),
                api_audiences: vec![],
                enable_bootstrap_tokens: true,
            },
            service_account_signing_key_pem: Some(read("sa.key")),
            authorization_modes: vec![AuthorizationMode::Node, AuthorizationMode::Rbac],
            anonymous_auth: false,
            node_proxy: None,
            component_status: ComponentStatusConfig::default(),
        };
        configure(&mut config, &pki_dir);
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(dir.path().join("data/store.redb"))
                .await
                .unwrap(),
        );
        let server = ApiServer::new(config, store.clone()).await.unwrap();
        tokio::spawn(server.serve(listener));
        TestServer {
            server: format!("https://127.0.0.1:{port}"),
            ca_pem: read("ca.crt"),
            store,
            dir,
        }
    }

    /// An HTTPS client trusting the cluster CA, without a client certificate.
    pub fn anonymous_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem).unwrap())
            .build()
            .unwrap()
    }

    /// An HTTPS client authenticated as `user` in `groups` by a fresh client certificate.
    pub fn client_as(&self, user: &str, groups: &[&str]) -> reqwest::Client {
        let ca =
            CertificateAuthority::load(&self.dir.path().join("pki"), CaKind::Kubernetes).unwrap();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let cert = kinit_pki::issue_client_certificate(
            &ca,
            user,
            &groups,
            time::Duration::days(1),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        let identity =
            reqwest::Identity::from_pem(format!("{}{}", cert.cert_pem, cert.key_pem).as_bytes())
                .unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem).unwrap())
            .identity(identity)
            .build()
            .unwrap()
    }

    /// Writes a kubeconfig for `user` in `groups` (fresh client certificate, cluster CA, this
    /// server) and returns its path; e.g. `kube::Config::from_custom_kubeconfig` reads it.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> std::path::PathBuf {
        let ca =
            CertificateAuthority::load(&self.dir.path().join("pki"), CaKind::Kubernetes).unwrap();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let kubeconfig = kinit_pki::client_kubeconfig(
            &ca,
            "kinit",
            &self.server,
            user,
            &groups,
            time::Duration::days(1),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.path().join(format!("{safe}.conf"));
        kinit_pki::write_kubeconfig(&path, &kubeconfig).unwrap();
        path
    }

    /// The admin kubeconfig (`system:masters`-equivalent `kubeadm:cluster-admins`).
    pub fn admin_kubeconfig(&self) -> std::path::PathBuf {
        self.dir.path().join("admin.conf")
    }

    /// `server` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }
}
