//! Pod logs and exec through the API server's agent proxy, against a stand-in agent that
//! speaks HTTPS with client-certificate authentication like the real one.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kinit_apiserver::agent_proxy::AgentProxy;
use kinit_apiserver::testing::TestServer;
use kinit_pki::{CaKind, CertificateAuthority, KeyAlgorithm, SubjectAltName};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts the stand-in agent on 127.0.0.1 and returns its port. It serves a serving
/// certificate from the cluster CA, requires a client certificate from the same CA, answers
/// `containerLogs` with two lines naming the caller, and upgrades `exec` to an echo stream
/// that upper-cases what it receives.
async fn start_agent(pki: &std::path::Path) -> u16 {
    let ca = CertificateAuthority::load(pki, CaKind::Kubernetes).unwrap();
    let serving = kinit_pki::issue_serving_certificate(
        &ca,
        "node-1",
        &[SubjectAltName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))],
        time::Duration::days(1),
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(serving.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|mut req: hyper::Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let query = req.uri().query().unwrap_or("").to_string();
                    if path.starts_with("/exec/") {
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut io = TokioIo::new(upgrade.await.unwrap());
                            let mut buf = [0u8; 64];
                            let n = io.read(&mut buf).await.unwrap();
                            io.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
                            io.shutdown().await.unwrap();
                        });
                        return Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(101)
                                .header("connection", "Upgrade")
                                .header("upgrade", "test-echo")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        );
                    }
                    let body = format!("{path}?{query}\nline 2\n");
                    Ok(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

fn proxy_from(pki: &std::path::Path, ca_file: &str) -> AgentProxy {
    let read = |name: &str| std::fs::read(pki.join(name)).unwrap();
    AgentProxy::new(
        &read("apiserver-kubelet-client.crt"),
        &read("apiserver-kubelet-client.key"),
        &read(ca_file),
    )
    .unwrap()
}

async fn node_and_pod(ts: &TestServer, agent_port: u16) {
    let admin = ts.client_as("admin", &["system:masters"]);
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}});
    let r = admin
        .post(ts.url("/api/v1/nodes"))
        .json(&node)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": agent_port}}}});
    let r = admin
        .patch(ts.url("/api/v1/nodes/node-1/status"))
        .header("content-type", "application/merge-patch+json")
        .body(status.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "demo"}]}});
    let r = admin
        .post(ts.url("/api/v1/namespaces/default/pods"))
        .json(&pod)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_and_exec_upgrades_through_the_agent_proxy() {
    let ts = TestServer::start_with(|config, pki| {
        config.node_proxy = Some(Arc::new(proxy_from(pki, "ca.crt")));
    })
    .await;
    let port = start_agent(&ts.dir.path().join("pki")).await;
    node_and_pod(&ts, port).await;
    let admin = ts.client_as("admin", &["system:masters"]);

    let logs = admin
        .get(ts.url("/api/v1/namespaces/default/pods/web/log?tailLines=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(logs.status(), 200);
    assert_eq!(
        logs.text().await.unwrap(),
        "/containerLogs/default/web/app?tailLines=2\nline 2\n"
    );

    let exec = admin
        .post(ts.url("/api/v1/namespaces/default/pods/web/exec?command=hostname&stdout=true"))
        .header("connection", "Upgrade")
        .header("upgrade", "test-echo")
        .send()
        .await
        .unwrap();
    assert_eq!(exec.status(), 101);
    let mut stream = exec.upgrade().await.unwrap();
    stream.write_all(b"hello agent").await.unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"HELLO AGENT");

    // Only callers allowed pods/log get through: a user without RBAC is stopped at the API.
    let nobody = ts.client_as("nobody", &[]);
    let denied = nobody
        .get(ts.url("/api/v1/namespaces/default/pods/web/log"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_an_untrusted_certificate_is_refused() {
    // The proxy trusts only the front-proxy CA, which did not sign the agent's certificate.
    let ts = TestServer::start_with(|config, pki| {
        config.node_proxy = Some(Arc::new(proxy_from(pki, "front-proxy-ca.crt")));
    })
    .await;
    let port = start_agent(&ts.dir.path().join("pki")).await;
    node_and_pod(&ts, port).await;
    let admin = ts.client_as("admin", &["system:masters"]);
    let logs = admin
        .get(ts.url("/api/v1/namespaces/default/pods/web/log"))
        .send()
        .await
        .unwrap();
    assert_eq!(logs.status(), 503);
    let body = logs.text().await.unwrap();
    assert!(
        body.contains("cannot reach the agent of node node-1"),
        "{body}"
    );
    assert!(body.contains("TLS"), "{body}");
}
