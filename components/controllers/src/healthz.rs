//! The `/healthz` (and `/livez`, `/readyz`) endpoint the static pod's probes call, over HTTPS
//! with a self-signed certificate generated at start (kube-controller-manager does the same when given no
//! serving certificate; kubelet probes do not verify it).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::error::ControllerError;

/// A bound healthz listener.
pub struct Healthz {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

impl Healthz {
    /// Binds `address` and prepares a self-signed certificate for `localhost`/`127.0.0.1`.
    pub async fn bind(address: SocketAddr) -> Result<Healthz, ControllerError> {
        let listener =
            TcpListener::bind(address)
                .await
                .map_err(|source| ControllerError::Healthz {
                    address: address.to_string(),
                    source,
                })?;
        let tls = |e: &dyn std::fmt::Display| ControllerError::HealthzTls(e.to_string());
        let key = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            address.ip().to_string(),
        ])
        .map_err(|e| tls(&e))?;
        let cert = CertificateDer::from(key.cert.der().to_vec());
        let private =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], private)
            .map_err(|e| tls(&e))?;
        Ok(Healthz {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` fires.
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stop.changed() => return,
            };
            let Ok((tcp, _)) = accepted else { continue };
            let acceptor = self.acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(respond(req.uri().path()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }
}

fn respond(path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" | "/livez" | "/readyz" => (StatusCode::OK, "ok"),
        _ => (StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
    response
}
