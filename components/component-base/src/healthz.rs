//! The `/healthz` (and `/livez`, `/readyz`) endpoint the static pods' probes call, over HTTPS
//! with a self-signed certificate generated at start (kube-scheduler and kube-controller-manager
//! do the same when given no serving certificate; kubelet probes do not verify it). Like theirs
//! with the kubeadm defaults, the health paths need no client credentials.

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

use crate::error::ComponentError;

/// A bound healthz listener.
pub struct Healthz {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

impl Healthz {
    /// Binds `address` and prepares a self-signed certificate for `localhost`/`127.0.0.1`.
    pub async fn bind(address: SocketAddr) -> Result<Healthz, ComponentError> {
        let listener =
            TcpListener::bind(address)
                .await
                .map_err(|source| ComponentError::Healthz {
                    address: address.to_string(),
                    source,
                })?;
        let tls = |e: &dyn std::fmt::Display| ComponentError::HealthzTls(e.to_string());
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

    /// Binds `address:port` and serves until `stop` fires, in a task of its own; port 0
    /// (`--secure-port=0`) disables it. Returns the bound address when serving.
    pub async fn spawn(
        address: std::net::IpAddr,
        port: u16,
        stop: watch::Receiver<bool>,
    ) -> Result<Option<SocketAddr>, ComponentError> {
        if port == 0 {
            return Ok(None);
        }
        let healthz = Healthz::bind(SocketAddr::new(address, port)).await?;
        let bound = healthz
            .local_addr()
            .unwrap_or(SocketAddr::new(address, port));
        tracing::info!(address = %bound, "serving /healthz over HTTPS");
        tokio::spawn(healthz.serve(stop));
        Ok(Some(bound))
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
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_health_paths_over_https_and_stops() {
        let healthz = Healthz::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = healthz.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(healthz.serve(stop_rx));
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        for path in ["/healthz", "/livez", "/readyz"] {
            let r = http
                .get(format!("https://{address}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.text().await.unwrap(), "ok");
        }
        let missing = http
            .get(format!("https://{address}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        let plain = reqwest::get(format!("http://{address}/healthz")).await;
        assert!(
            plain.map(|r| r.status() != 200).unwrap_or(true),
            "HTTPS only"
        );
        stop.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "closed after stop"
        );
    }

    #[tokio::test]
    async fn port_zero_disables_it() {
        let (_stop, rx) = watch::channel(false);
        assert_eq!(
            Healthz::spawn("127.0.0.1".parse().unwrap(), 0, rx)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_busy_port_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let (_stop, rx) = watch::channel(false);
        let err = Healthz::spawn("127.0.0.1".parse().unwrap(), port, rx)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
