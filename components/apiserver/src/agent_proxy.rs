//! The API server's side of `kubectl logs/exec/attach/port-forward`: forward the request to the
//! node agent over mutual TLS and relay the answer — streamed, or as an upgraded connection
//! copied both ways (exec and attach switch protocols).
//!
//! hyper's client connection is used directly rather than a higher-level HTTP client: the
//! proxy needs the raw upgraded stream of both sides, which hyper exposes and reqwest hides.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderName};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::error::{ApiError, ApiServerError};
use crate::subresources::{NodeProxy, NodeRequest};

/// Hop-by-hop headers that never cross the proxy (the upgrade pair is re-added for upgrades).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
    // The client's credentials are for the API server, not for the agent.
    header::AUTHORIZATION,
];

/// Forwards pod subresource requests to agents, authenticating as the API server's agent
/// client (`apiserver-kubelet-client`) and verifying the agent's serving certificate.
pub struct AgentProxy {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl AgentProxy {
    /// A proxy that presents `client_cert_pem`/`client_key_pem` and trusts agents whose serving
    /// certificates chain to `agent_ca_pem`.
    pub fn new(
        client_cert_pem: &[u8],
        client_key_pem: &[u8],
        agent_ca_pem: &[u8],
    ) -> Result<AgentProxy, ApiServerError> {
        let tls_err = |what: &str, e: &dyn std::fmt::Display| {
            ApiServerError::Tls(format!("agent client {what}: {e}"))
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(client_cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| tls_err("certificate", &e))?;
        if certs.is_empty() {
            return Err(ApiServerError::Tls(
                "--kubelet-client-certificate holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(client_key_pem).map_err(|e| tls_err("key", &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(agent_ca_pem) {
            roots
                .add(cert.map_err(|e| tls_err("CA", &e))?)
                .map_err(|e| tls_err("CA", &e))?;
        }
        if roots.is_empty() {
            return Err(ApiServerError::Tls(
                "--kubelet-certificate-authority holds no certificate".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("TLS versions", &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls_err("certificate/key pair", &e))?;
        Ok(AgentProxy {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connect_timeout: Duration::from_secs(10),
        })
    }
}

fn unavailable(node: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::service_unavailable(format!("cannot reach the agent of node {node}: {what}"))
}

#[async_trait]
impl NodeProxy for AgentProxy {
    async fn forward(&self, request: NodeRequest) -> Result<Response, ApiError> {
        let NodeRequest {
            endpoint,
            path_and_query,
            mut request,
        } = request;
        let node = endpoint.node.as_str();
        let target = format!("{}:{}", endpoint.address, endpoint.port);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&target))
            .await
            .map_err(|_| unavailable(node, format!("connecting to {target} timed out")))?
            .map_err(|e| unavailable(node, format!("{target}: {e}")))?;
        let server_name = ServerName::try_from(endpoint.address.clone())
            .map_err(|e| unavailable(node, format!("{}: {e}", endpoint.address)))?;
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| unavailable(node, format!("TLS with {target}: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unavailable(node, format!("HTTP with {target}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!("agent connection ended: {e}");
            }
        });

        let upgrade_protocol = request.headers().get(header::UPGRADE).cloned();
        let client_upgrade = upgrade_protocol
            .is_some()
            .then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let mut outgoing = http::Request::builder()
            .method(parts.method)
            .uri(&path_and_query)
            .header(header::HOST, &target);
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(name) {
                outgoing = outgoing.header(name, value);
            }
        }
        if let Some(protocol) = &upgrade_protocol {
            outgoing = outgoing
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, protocol);
        }
        let outgoing = outgoing
            .body(body)
            .map_err(|e| ApiError::internal(format!("building the agent request: {e}")))?;
        let mut response = sender
            .send_request(outgoing)
            .await
            .map_err(|e| unavailable(node, format!("request to {target}: {e}")))?;

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(unavailable(node, "the agent switched protocols unasked"));
            };
            let agent_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::try_join!(agent_upgrade, client_upgrade) {
                    Ok((agent, client)) => {
                        let (mut agent, mut client) = (TokioIo::new(agent), TokioIo::new(client));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await
                        {
                            tracing::debug!("upgraded stream ended: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("upgrading the proxied stream failed: {e}"),
                }
            });
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = response.into_parts();
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}
