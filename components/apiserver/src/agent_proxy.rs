//! The API server's side of `kubectl logs/exec/attach/port-forward`: forward the request to the
//! node agent over mutual TLS and relay the answer — streamed, or as an upgraded connection
//! copied both ways (exec, attach and port-forward switch protocols).
//!
//! Agents speak what kubelets speak: SPDY/3.1 and the legacy WebSocket channel protocols
//! (`v4.channel.k8s.io`, ..., what the official Python client uses), which pass through
//! unchanged. Like the kube-apiserver (KEP-4006), this proxy translates the two WebSocket
//! protocols kubectl 1.30+ tries first, so kubectl needs no fallback:
//! - port-forward, `SPDY/3.1+portforward.k8s.io` ("SPDY tunnelled in WebSocket"): the proxy
//!   accepts the WebSocket, asks the agent for a plain SPDY/3.1 upgrade and carries the SPDY
//!   bytes in binary WebSocket messages; the SPDY framing stays end to end between kubectl and
//!   the runtime's streaming server ([`relay_tunnel`]);
//! - exec/attach, `v5.channel.k8s.io`: the proxy ends the WebSocket and speaks SPDY/3.1
//!   `v4.channel.k8s.io` to the agent, one SPDY stream per channel, stdin half-close included
//!   (`remotecommand`, over the SPDY framing in `spdy`).
//!
//! When the agent refuses the SPDY upgrade, its answer goes to the client as a failed
//! WebSocket handshake, on which kubectl falls back to SPDY (and gets the same answer).
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
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::error::{ApiError, ApiServerError};
use crate::node_proxy::{NodeProxy, NodeRequest};

mod remotecommand;
mod spdy;

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

impl AgentProxy {
    /// An HTTP/1.1 connection to the agent at `endpoint` (mutual TLS), ready for one request.
    async fn connect(
        &self,
        endpoint: &crate::node_proxy::NodeEndpoint,
    ) -> Result<(SendRequest<Body>, String), ApiError> {
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
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unavailable(node, format!("HTTP with {target}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!("agent connection ended: {e}");
            }
        });
        Ok((sender, target))
    }

    /// Asks the agent to switch the request at `path_and_query` to SPDY/3.1 with one of
    /// `protocols` — the client's request turned into an upstream SPDY upgrade (POST,
    /// `Upgrade: SPDY/3.1`, the protocols as X-Stream-Protocol-Version), as the kube-apiserver
    /// does for its WebSocket clients.
    async fn spdy_upgrade(
        &self,
        endpoint: &crate::node_proxy::NodeEndpoint,
        path_and_query: &str,
        headers: &http::HeaderMap,
        protocols: &[String],
    ) -> Result<SpdyUpgrade, ApiError> {
        let node = endpoint.node.as_str();
        let (mut sender, target) = self.connect(endpoint).await?;
        let mut outgoing = http::Request::builder()
            .method(http::Method::POST)
            .uri(path_and_query)
            .header(header::HOST, &target);
        for (name, value) in headers {
            let websocket_header = name.as_str().starts_with("sec-websocket-");
            if !HOP_BY_HOP.contains(name) && !websocket_header {
                outgoing = outgoing.header(name, value);
            }
        }
        outgoing = outgoing
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, SPDY_31);
        for protocol in protocols {
            outgoing = outgoing.header(STREAM_PROTOCOL_VERSION, protocol);
        }
        let outgoing = outgoing
            .body(Body::empty())
            .map_err(|e| ApiError::internal(format!("building the agent request: {e}")))?;
        let mut response = sender
            .send_request(outgoing)
            .await
            .map_err(|e| unavailable(node, format!("request to {target}: {e}")))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Not upgraded: the agent's answer goes back as is, so the client sees a failed
            // WebSocket handshake (kubectl then falls back to plain SPDY, which gets the same
            // answer).
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            return Ok(SpdyUpgrade::Refused(Response::from_parts(
                parts,
                Body::new(body),
            )));
        }
        let protocol = response
            .headers()
            .get(STREAM_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        Ok(SpdyUpgrade::Switched {
            agent: hyper::upgrade::on(&mut response),
            protocol,
        })
    }

    /// Serves a WebSocket request offering `SPDY/3.1+<protocol>` subprotocols: a SPDY/3.1
    /// upgrade to the agent, then the SPDY bytes carried in binary WebSocket messages.
    async fn tunnel_spdy(
        &self,
        endpoint: &crate::node_proxy::NodeEndpoint,
        path_and_query: &str,
        mut request: http::Request<Body>,
        protocols: Vec<String>,
    ) -> Result<Response, ApiError> {
        let key = websocket_key(request.headers())?;
        let client_upgrade = hyper::upgrade::on(&mut request);
        let upgrade = self
            .spdy_upgrade(endpoint, path_and_query, request.headers(), &protocols)
            .await?;
        let (agent_upgrade, protocol) = match upgrade {
            SpdyUpgrade::Refused(response) => return Ok(response),
            SpdyUpgrade::Switched { agent, protocol } => (agent, protocol),
        };
        let negotiated = protocol
            .filter(|p| protocols.contains(p))
            .unwrap_or_else(|| protocols[0].clone());
        tokio::spawn(async move {
            match tokio::try_join!(agent_upgrade, client_upgrade) {
                Ok((agent, client)) => {
                    let websocket =
                        WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None)
                            .await;
                    if let Err(e) = relay_tunnel(websocket, TokioIo::new(agent)).await {
                        tracing::debug!("tunnelled SPDY stream ended: {e}");
                    }
                }
                Err(e) => tracing::warn!("upgrading the tunnelled stream failed: {e}"),
            }
        });
        websocket_accept(&key, &format!("{TUNNELING_PREFIX}{negotiated}"))
    }

    /// Serves exec/attach over WebSocket `v5.channel.k8s.io` by speaking SPDY/3.1
    /// `v4.channel.k8s.io` to the agent (see [`remotecommand`]).
    async fn translate_remote_command(
        &self,
        endpoint: &crate::node_proxy::NodeEndpoint,
        path_and_query: &str,
        mut request: http::Request<Body>,
    ) -> Result<Response, ApiError> {
        let key = websocket_key(request.headers())?;
        let client_upgrade = hyper::upgrade::on(&mut request);
        let protocols = [remotecommand::PROTOCOL_V4.to_string()];
        let upgrade = self
            .spdy_upgrade(endpoint, path_and_query, request.headers(), &protocols)
            .await?;
        let (agent_upgrade, protocol) = match upgrade {
            SpdyUpgrade::Refused(response) => return Ok(response),
            SpdyUpgrade::Switched { agent, protocol } => (agent, protocol),
        };
        let streams = remotecommand::Streams::from_agent_query(path_and_query);
        tokio::spawn(async move {
            let (agent, client) = match tokio::try_join!(agent_upgrade, client_upgrade) {
                Ok(both) => both,
                Err(e) => return tracing::warn!("upgrading the exec/attach stream failed: {e}"),
            };
            let mut websocket =
                WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
            if protocol.as_deref() != Some(remotecommand::PROTOCOL_V4) {
                use futures::SinkExt;
                let message = format!(
                    "the agent chose the streaming protocol {protocol:?}; {} is needed",
                    remotecommand::PROTOCOL_V4
                );
                let mut frame = vec![3u8];
                frame.extend(remotecommand::failure_status(&message));
                let _ = websocket.send(Message::binary(frame)).await;
                let _ = websocket.close(None).await;
                return;
            }
            if let Err(e) = remotecommand::relay(websocket, TokioIo::new(agent), streams).await {
                tracing::debug!("exec/attach stream ended: {e}");
            }
        });
        websocket_accept(&key, remotecommand::PROTOCOL_V5)
    }
}

/// The agent's answer to a SPDY upgrade request.
enum SpdyUpgrade {
    /// Switched protocols: the agent's side of the connection and the protocol it chose.
    Switched {
        agent: hyper::upgrade::OnUpgrade,
        protocol: Option<String>,
    },
    /// Refused: the agent's answer, relayed to the client.
    Refused(Response),
}

/// The 101 answer accepting a WebSocket handshake with `protocol`.
fn websocket_accept(key: &str, protocol: &str) -> Result<Response, ApiError> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(format!("building the upgrade response: {e}")))
}

/// `Upgrade` token of SPDY/3.1 streaming.
const SPDY_31: &str = "SPDY/3.1";
/// Header naming the streaming protocol(s) a client offers and the one a server chose.
const STREAM_PROTOCOL_VERSION: &str = "x-stream-protocol-version";
/// WebSocket subprotocol prefix of SPDY tunnelled in WebSocket.
pub const TUNNELING_PREFIX: &str = "SPDY/3.1+";

/// The SPDY protocols a WebSocket upgrade request asks to tunnel (`SPDY/3.1+portforward.k8s.io`
/// → `portforward.k8s.io`), in the client's order; empty for any other request.
pub fn tunneled_protocols(headers: &http::HeaderMap) -> Vec<String> {
    if !is_websocket(headers) {
        return Vec::new();
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter_map(|p| p.strip_prefix(TUNNELING_PREFIX))
        .filter(|p| p.ends_with(".k8s.io"))
        .map(String::from)
        .collect()
}

fn is_websocket(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn websocket_key(headers: &http::HeaderMap) -> Result<String, ApiError> {
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    match key {
        Some(key) if version_ok => Ok(key.to_string()),
        _ => Err(ApiError::bad_request(
            "unable to upgrade: a WebSocket upgrade needs Sec-WebSocket-Key and \
             Sec-WebSocket-Version: 13",
        )),
    }
}

/// Carries a byte stream (`agent`) in binary WebSocket messages both ways until either side
/// ends: client messages are written to the agent, agent bytes become messages. Pings are
/// answered by the WebSocket layer.
pub async fn relay_tunnel<C, A>(websocket: WebSocketStream<C>, agent: A) -> Result<(), String>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (mut ws_tx, mut ws_rx) = websocket.split();
    let (mut agent_rx, mut agent_tx) = tokio::io::split(agent);
    let to_agent = async {
        while let Some(message) = ws_rx.next().await {
            match message.map_err(|e| format!("reading from the client: {e}"))? {
                Message::Binary(data) => agent_tx
                    .write_all(&data)
                    .await
                    .map_err(|e| format!("writing to the agent: {e}"))?,
                Message::Close(_) => break,
                Message::Text(_) => {
                    return Err("the client sent a text message into a binary tunnel".into())
                }
                // Pings are answered by the WebSocket layer; pongs need nothing.
                _ => {}
            }
        }
        let _ = agent_tx.shutdown().await;
        Ok::<(), String>(())
    };
    let from_agent = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = agent_rx
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading from the agent: {e}"))?;
            if n == 0 {
                break;
            }
            ws_tx
                .send(Message::binary(buf[..n].to_vec()))
                .await
                .map_err(|e| format!("writing to the client: {e}"))?;
        }
        let _ = ws_tx.close().await;
        Ok::<(), String>(())
    };
    // Whichever side ends first ends the tunnel: a closed client or agent cannot resume.
    tokio::select! {
        r = to_agent => r,
        r = from_agent => r,
    }
}

#[async_trait]
impl NodeProxy for AgentProxy {
    async fn forward(&self, request: NodeRequest) -> Result<Response, ApiError> {
        let NodeRequest {
            endpoint,
            path_and_query,
            mut request,
        } = request;
        let tunneled = tunneled_protocols(request.headers());
        if !tunneled.is_empty() {
            return self
                .tunnel_spdy(&endpoint, &path_and_query, request, tunneled)
                .await;
        }
        let remote_command =
            path_and_query.starts_with("/exec/") || path_and_query.starts_with("/attach/");
        if remote_command
            && is_websocket(request.headers())
            && remotecommand::offers_protocol(request.headers(), remotecommand::PROTOCOL_V5)
        {
            return self
                .translate_remote_command(&endpoint, &path_and_query, request)
                .await;
        }
        let node = endpoint.node.as_str();
        let (mut sender, target) = self.connect(&endpoint).await?;

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
