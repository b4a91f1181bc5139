//! Health probes behind `componentstatuses`: an HTTP(S) GET of the scheduler's and the
//! controller manager's `/healthz` (their self-signed serving certificates are not verified,
//! as Kubernetes does not verify them either) and of each etcd server's `/health` (verified
//! against the etcd CA, with the etcd client certificate).
//!
//! hyper's client connection is used directly (as for the agent proxy): one GET with a
//! timeout needs no connection pool, and reqwest is not a dependency of the server.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use crate::error::ApiServerError;

/// Where `componentstatuses` looks.
#[derive(Clone)]
pub struct ComponentStatusConfig {
    /// The scheduler's healthz URL (kube-scheduler: `https://127.0.0.1:10259/healthz`).
    pub scheduler: String,
    /// The controller manager's healthz URL (`https://127.0.0.1:10257/healthz`).
    pub controller_manager: String,
    /// etcd client URLs (`/health` is probed on each); empty when the store is embedded.
    pub etcd_servers: Vec<String>,
    /// TLS for the etcd probes (CA and client certificate), when the servers use TLS.
    pub etcd_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ComponentStatusConfig {
    fn default() -> Self {
        ComponentStatusConfig {
            scheduler: "https://127.0.0.1:10259/healthz".into(),
            controller_manager: "https://127.0.0.1:10257/healthz".into(),
            etcd_servers: Vec::new(),
            etcd_tls: None,
        }
    }
}

impl std::fmt::Debug for ComponentStatusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentStatusConfig")
            .field("scheduler", &self.scheduler)
            .field("controller_manager", &self.controller_manager)
            .field("etcd_servers", &self.etcd_servers)
            .field("etcd_tls", &self.etcd_tls.is_some())
            .finish()
    }
}

/// The TLS client configuration for etcd probes from PEM files' contents.
pub fn etcd_tls(
    ca_pem: Option<&[u8]>,
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, ApiServerError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        ApiServerError::Tls(format!("etcd health probe {what}: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots
                .add(cert.map_err(|e| err("CA", &e))?)
                .map_err(|e| err("CA", &e))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err("TLS versions", &e))?
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| err("client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| err("client key", &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| err("client certificate/key pair", &e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any server certificate (still checking the handshake signatures): Kubernetes
/// probes the scheduler and the controller manager with InsecureSkipVerify, their serving
/// certificates being self-signed.
#[derive(Debug)]
struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration of the unverified (scheduler, controller manager) probes.
pub fn insecure_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
                .with_no_client_auth()
        })
        .expect("the ring provider supports the default protocol versions");
    Arc::new(config)
}

/// What one probe found: the body on a 2xx answer, else the error Kubernetes would show.
pub type ProbeResult = Result<String, String>;

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `url` (http or https, `tls` for the latter) and returns the body of a 2xx answer;
/// errors read like Go's (`Get "<url>": <reason>`).
pub async fn http_get(url: &str, tls: &Arc<rustls::ClientConfig>) -> ProbeResult {
    let fail = |why: String| format!("Get \"{url}\": {why}");
    match tokio::time::timeout(PROBE_TIMEOUT, get(url, tls)).await {
        Ok(Ok((status, body))) if status.is_success() => Ok(body),
        Ok(Ok((status, body))) => Err(format!(
            "unhealthy: {url} answered {}: {}",
            status.as_u16(),
            body.trim()
        )),
        Ok(Err(why)) => Err(fail(why)),
        Err(_) => Err(fail(format!(
            "no answer within {}s",
            PROBE_TIMEOUT.as_secs()
        ))),
    }
}

async fn get(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(http::StatusCode, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let host = uri.host().ok_or("the URL names no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let request = http::Request::get(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    if https {
        let name = ServerName::try_from(bare_host.clone())
            .map_err(|e| format!("invalid server name {bare_host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        send(TokioIo::new(stream), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
}

async fn send<IO>(
    io: IO,
    request: http::Request<Empty<bytes::Bytes>>,
) -> Result<(http::StatusCode, String), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_reads_like_go() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("https://127.0.0.1:{port}/healthz");
        let err = http_get(&url, &insecure_tls()).await.unwrap_err();
        assert!(
            err.starts_with(&format!("Get \"{url}\": dial tcp 127.0.0.1:{port}")),
            "{err}"
        );
        assert!(http_get("ftp://x/", &insecure_tls()).await.is_err());
    }
}
