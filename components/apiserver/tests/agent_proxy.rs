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
                    let spdy = req
                        .headers()
                        .get("upgrade")
                        .is_some_and(|u| u.as_bytes() == b"SPDY/3.1");
                    if path.starts_with("/portForward/") && query == "port=1%2C2" {
                        return Ok(hyper::Response::builder()
                            .status(400)
                            .body(Full::new(Bytes::from("nothing listens on port 1")))
                            .unwrap());
                    }
                    if path.starts_with("/portForward/") && spdy {
                        // Describes the request it got, then echoes upper-cased until EOF.
                        let versions: Vec<String> = req
                            .headers()
                            .get_all("x-stream-protocol-version")
                            .iter()
                            .map(|v| v.to_str().unwrap().to_string())
                            .collect();
                        let seen = format!(
                            "{} {path}?{query} websocket-headers={} protocols={}\n",
                            req.method(),
                            req.headers().contains_key("sec-websocket-key"),
                            versions.join(",")
                        );
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut io = TokioIo::new(upgrade.await.unwrap());
                            io.write_all(seen.as_bytes()).await.unwrap();
                            let mut buf = [0u8; 1024];
                            loop {
                                let n = io.read(&mut buf).await.unwrap();
                                if n == 0 {
                                    break;
                                }
                                io.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
                            }
                            io.shutdown().await.unwrap();
                        });
                        return Ok(hyper::Response::builder()
                            .status(101)
                            .header("connection", "Upgrade")
                            .header("upgrade", "SPDY/3.1")
                            .header("x-stream-protocol-version", "portforward.k8s.io")
                            .body(Full::new(Bytes::new()))
                            .unwrap());
                    }
                    if path.starts_with("/exec/") {
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut io = TokioIo::new(upgrade.await.unwrap());
                            let mut buf = [0u8; 64];
                            let n = io.read(&mut buf).await.unwrap();
                            io.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
                            io.shutdown().await.unwrap();
                        });
                        return Ok(hyper::Response::builder()
                            .status(101)
                            .header("connection", "Upgrade")
                            .header("upgrade", "test-echo")
                            .body(Full::new(Bytes::new()))
                            .unwrap());
                    }
                    let body = format!("{path}?{query}\nline 2\n");
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
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

/// A WebSocket client of the test server authenticated as `user` (fresh client certificate),
/// offering `protocol`; the handshake's result.
async fn websocket_as(
    ts: &TestServer,
    user: &str,
    groups: &[&str],
    path: &str,
    protocol: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        http::HeaderMap,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let pki = ts.dir.path().join("pki");
    let ca = CertificateAuthority::load(&pki, CaKind::Kubernetes).unwrap();
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let cert = kinit_pki::issue_client_certificate(
        &ca,
        user,
        &groups,
        time::Duration::days(1),
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&ts.ca_pem).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let address = ts.server.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut request = format!("wss://{address}{path}")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let (ws, response) = tokio_tungstenite::client_async(request, tls).await?;
    Ok((ws, response.headers().clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_tunnelled_in_websocket_reaches_the_agent_as_spdy() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let ts = TestServer::start_with(|config, pki| {
        config.node_proxy = Some(Arc::new(proxy_from(pki, "ca.crt")));
    })
    .await;
    let port = start_agent(&ts.dir.path().join("pki")).await;
    node_and_pod(&ts, port).await;

    // kubectl 1.30+'s port-forward handshake: SPDY/3.1 tunnelled in WebSocket.
    let (mut ws, headers) = websocket_as(
        &ts,
        "admin",
        &["system:masters"],
        "/api/v1/namespaces/default/pods/web/portforward?ports=8080",
        "SPDY/3.1+portforward.k8s.io",
    )
    .await
    .expect("the tunnelled upgrade is accepted");
    assert_eq!(
        headers["sec-websocket-protocol"],
        "SPDY/3.1+portforward.k8s.io"
    );
    // The agent got a plain SPDY upgrade (POST, no WebSocket headers, the tunnelled protocol)
    // with the kubelet's `port` parameter.
    let mut seen = Vec::new();
    while !seen.ends_with(b"\n") {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => seen.extend_from_slice(&b),
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert_eq!(
        String::from_utf8(seen).unwrap(),
        "POST /portForward/default/web?port=8080 websocket-headers=false protocols=portforward.k8s.io\n"
    );
    // Bytes flow both ways in binary messages; a close ends the agent's stream.
    ws.send(Message::binary(b"spdy frames".to_vec()))
        .await
        .unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 11 {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => echoed.extend_from_slice(&b),
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert_eq!(echoed, b"SPDY FRAMES");
    ws.close(None).await.unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel ends after the client's close");

    // An agent refusing the upgrade: its answer reaches the client as a failed handshake
    // (kubectl then falls back to plain SPDY).
    let refused = websocket_as(
        &ts,
        "admin",
        &["system:masters"],
        "/api/v1/namespaces/default/pods/web/portforward?ports=1&ports=2",
        "SPDY/3.1+portforward.k8s.io",
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("expected the agent's 400, got {:?}", other.map(|_| ())),
    }

    // RBAC guards pods/portforward before anything reaches the agent: nothing granted, or only
    // `get` (a WebSocket upgrade is a GET, but opening a tunnel also needs `create`).
    let admin = ts.client_as("admin", &["system:masters"]);
    for (kind, path, body) in [
        (
            "roles",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "forward-get"},
                "rules": [{"apiGroups": [""], "resources": ["pods", "pods/portforward"], "verbs": ["get"]}]}),
        ),
        (
            "rolebindings",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "forward-get"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "forward-get"},
                "subjects": [{"kind": "User", "name": "getter", "apiGroup": "rbac.authorization.k8s.io"}]}),
        ),
    ] {
        let r = admin.post(ts.url(path)).json(&body).send().await.unwrap();
        assert!(
            r.status().is_success(),
            "{kind}: {}",
            r.text().await.unwrap()
        );
    }
    for user in ["nobody", "getter"] {
        let denied = websocket_as(
            &ts,
            user,
            &[],
            "/api/v1/namespaces/default/pods/web/portforward?ports=8080",
            "SPDY/3.1+portforward.k8s.io",
        )
        .await;
        match denied {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 403, "{user}");
                let body =
                    String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).to_string();
                assert!(
                    body.contains("cannot") && body.contains("pods/portforward"),
                    "{user}: {body}"
                );
            }
            other => panic!("expected 403 for {user}, got {:?}", other.map(|_| ())),
        }
    }
    // With `create` too, the same user gets through.
    let r = admin
        .patch(ts.url(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/forward-get",
        ))
        .header("content-type", "application/merge-patch+json")
        .body(
            json!({"rules": [{"apiGroups": [""], "resources": ["pods", "pods/portforward"], "verbs": ["get", "create"]}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let allowed = websocket_as(
            &ts,
            "getter",
            &[],
            "/api/v1/namespaces/default/pods/web/portforward?ports=8080",
            "SPDY/3.1+portforward.k8s.io",
        )
        .await;
        match allowed {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("get+create on pods/portforward is not enough: {e}"),
        }
    }
}
