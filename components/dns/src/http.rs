//! HTTP endpoints: `/health` (liveness) and `/ready` (readiness) in plain HTTP like CoreDNS's
//! `health` and `ready` plugins, and `/metrics` over HTTPS with delegated authentication and
//! authorization: a bearer token is checked with a TokenReview and the user's right to
//! `get` the non-resource URL `/metrics` with a SubjectAccessReview (the kube-rbac-proxy /
//! controller-runtime secure-metrics pattern). Decisions are cached for a few seconds.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A response body.
pub type Body = Full<Bytes>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A running HTTP(S) listener.
pub struct HttpListener {
    /// The bound address.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for HttpListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves `handler` on `addr`, with TLS when `tls` is given.
pub async fn serve(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
) -> io::Result<HttpListener> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let handler = handler.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                                .await
                        else {
                            return;
                        };
                        let _ = conn.serve_connection(TokioIo::new(tls), svc).await;
                    }
                    None => {
                        let _ = conn.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Ok(HttpListener { addr, task })
}

/// A handler answering `path` with `f()` (status and body) and 404 elsewhere.
pub fn simple(
    path: &'static str,
    f: impl Fn() -> (StatusCode, String) + Send + Sync + 'static,
) -> Handler {
    let f = Arc::new(f);
    Arc::new(move |req: Request<Incoming>| {
        let f = f.clone();
        Box::pin(async move {
            if req.uri().path() != path {
                return text(StatusCode::NOT_FOUND, "404 page not found\n");
            }
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            }
            let (status, body) = f();
            text(status, body)
        })
    })
}

/// A self-signed certificate for the metrics endpoint, made at start.
pub fn self_signed_tls(names: Vec<String>) -> Result<Arc<rustls::ServerConfig>, String> {
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("generating the metrics certificate failed: {e}"))?;
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The outcome of checking a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No or an invalid token (401).
    Unauthenticated,
    /// A valid user without the right (403).
    Forbidden(String),
    /// Allowed.
    Allowed(String),
}

/// Delegated authentication and authorization against the API server.
pub struct DelegatedAuth {
    client: Client,
    path: String,
    cache_ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Decision, Instant)>>,
}

const AUTH_CACHE_MAX: usize = 1024;

impl DelegatedAuth {
    /// Checks tokens through `client` for `get` on `path`.
    pub fn new(client: Client, path: &str, cache_ttl: Duration) -> DelegatedAuth {
        DelegatedAuth {
            client,
            path: path.to_string(),
            cache_ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Decides on an `Authorization` header value.
    pub async fn check(&self, authorization: Option<&str>) -> Result<Decision, String> {
        let Some(token) = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Ok(Decision::Unauthenticated);
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Ok(cache) = self.cache.lock() {
            if let Some((d, at)) = cache.get(&digest) {
                if at.elapsed() < self.cache_ttl {
                    return Ok(d.clone());
                }
            }
        }
        let decision = self.review(token).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= AUTH_CACHE_MAX {
                let ttl = self.cache_ttl;
                cache.retain(|_, (_, at)| at.elapsed() < ttl);
                if cache.len() >= AUTH_CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(digest, (decision.clone(), Instant::now()));
        }
        Ok(decision)
    }

    async fn review(&self, token: &str) -> Result<Decision, String> {
        let tr = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let tr = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &tr)
            .await
            .map_err(|e| format!("TokenReview failed: {e}"))?;
        let Some(status) = tr.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(Decision::Unauthenticated);
        };
        let user = status.user.unwrap_or_default();
        let name = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(self.path.clone()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let sar = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|e| format!("SubjectAccessReview for {name} failed: {e}"))?;
        if sar.status.is_some_and(|s| s.allowed) {
            Ok(Decision::Allowed(name))
        } else {
            Ok(Decision::Forbidden(name))
        }
    }
}

/// The `/metrics` handler: delegated auth, then `render()`.
pub fn metrics_handler(
    auth: Option<Arc<DelegatedAuth>>,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> Handler {
    let render = Arc::new(render);
    Arc::new(move |req: Request<Incoming>| {
        let auth = auth.clone();
        let render = render.clone();
        Box::pin(async move {
            if req.uri().path() != "/metrics" {
                return text(StatusCode::NOT_FOUND, "404 page not found\n");
            }
            let Some(auth) = auth else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "metrics need an API server to authenticate requests, and none is configured\n",
                );
            };
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match auth.check(header).await {
                Ok(Decision::Allowed(_)) => {
                    let mut r = text(StatusCode::OK, render());
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    r
                }
                Ok(Decision::Forbidden(user)) => text(
                    StatusCode::FORBIDDEN,
                    format!("Forbidden (user={user}, verb=get, resource=, subresource=, path=/metrics)\n"),
                ),
                Ok(Decision::Unauthenticated) => {
                    let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                    r
                }
                Err(e) => {
                    tracing::warn!("metrics: {e}");
                    let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                    r
                }
            }
        })
    })
}
