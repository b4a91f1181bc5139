//! The HTTPS server: TLS with optional client certificates, routing, authentication and
//! authorization of every request, and dispatch to the handlers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::IpNet;
use kinit_auth::{Attributes, Authenticator, AuthenticatorConfig, TokenIssuer, UserInfo};
use kinit_store::Store;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::access::{self, Access, AuthorizationMode, StoreLookup};
use crate::componentstatus;
use crate::discovery;
use crate::error::{qualified, ApiError, ApiServerError};
use crate::handlers::{self, Part};
use crate::node_proxy::NodeProxy;
use crate::objects::{meta_str, Objects};
use crate::paging::ListParams;
use crate::probes::ComponentStatusConfig;
use crate::registry::Persistence;
use crate::request::{self, PathKind, Query, Target};
use crate::response::json_response;
use crate::reviews;
use crate::services::ServiceAllocator;
use crate::state::{Ctx, State};
use crate::subresources;

/// PEM material for the serving side.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Serving certificate chain (leaf first), PEM.
    pub cert_chain_pem: Vec<u8>,
    /// Serving key, PEM.
    pub private_key_pem: Vec<u8>,
    /// CA bundle that signs client certificates, PEM; `None` disables client certificates.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything [`ApiServer::new`] needs besides the store.
#[derive(Clone)]
pub struct ApiServerConfig {
    /// Serving certificate, key and client CA.
    pub tls: TlsMaterial,
    /// Address other cluster members reach this server on (the `kubernetes` endpoints).
    pub advertise_address: IpAddr,
    /// Port advertised in the `kubernetes` endpoints.
    pub advertise_port: u16,
    /// Range service ClusterIPs come from.
    pub service_cluster_ip_range: IpNet,
    /// NodePort range (inclusive).
    pub service_node_port_range: (u16, u16),
    /// Service-account token verification and bootstrap tokens.
    pub authentication: AuthenticatorConfig,
    /// `sa.key` PEM for issuing tokens (TokenRequest); `None` disables issuing.
    pub service_account_signing_key_pem: Option<Vec<u8>>,
    /// Authorizers, in order.
    pub authorization_modes: Vec<AuthorizationMode>,
    /// Whether unauthenticated requests proceed as `system:anonymous`.
    pub anonymous_auth: bool,
    /// Forwarder of pod log/exec requests to node agents.
    pub node_proxy: Option<Arc<dyn NodeProxy>>,
    /// What `componentstatuses` probes (scheduler, controller manager, etcd).
    pub component_status: ComponentStatusConfig,
}

impl std::fmt::Debug for ApiServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerConfig")
            .field("advertise_address", &self.advertise_address)
            .field("advertise_port", &self.advertise_port)
            .field("service_cluster_ip_range", &self.service_cluster_ip_range)
            .field("authorization_modes", &self.authorization_modes)
            .field("anonymous_auth", &self.anonymous_auth)
            .field("node_proxy", &self.node_proxy.is_some())
            .field("component_status", &self.component_status)
            .finish_non_exhaustive()
    }
}

/// The verified client certificate of a connection (leaf, DER).
#[derive(Clone, Default)]
struct ClientCertificate(Option<Arc<Vec<u8>>>);

/// A configured API server, ready to serve.
pub struct ApiServer {
    state: Arc<State>,
    tls: Arc<rustls::ServerConfig>,
}

/// The certificate in `ca_pem` that signed a lone serving certificate, so the server sends the
/// whole chain. Joining nodes pin the CA by its public-key hash (kubeadm's
/// `--discovery-token-ca-cert-hash`): with the CA in the handshake they can check the pin and
/// the server's certificate before sending any credential.
fn issuing_ca(chain: &[CertificateDer<'static>], ca_pem: &[u8]) -> Option<CertificateDer<'static>> {
    let [leaf] = chain else {
        return None;
    };
    let (_, leaf_cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    CertificateDer::pem_slice_iter(ca_pem)
        .filter_map(Result::ok)
        .find(|ca| {
            x509_parser::parse_x509_certificate(ca).is_ok_and(|(_, ca_cert)| {
                ca_cert.subject() == leaf_cert.issuer()
                    && leaf_cert
                        .verify_signature(Some(ca_cert.public_key()))
                        .is_ok()
            })
        })
}

fn tls_config(material: &TlsMaterial) -> Result<rustls::ServerConfig, ApiServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&material.cert_chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ApiServerError::Tls(format!("serving certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ApiServerError::Tls(
            "the serving certificate file holds no certificate".into(),
        ));
    }
    let mut certs = certs;
    if let Some(ca) = material
        .client_ca_pem
        .as_deref()
        .and_then(|ca| issuing_ca(&certs, ca))
    {
        certs.push(ca);
    }
    let key = PrivateKeyDer::from_pem_slice(&material.private_key_pem)
        .map_err(|e| ApiServerError::Tls(format!("serving key: {e}")))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiServerError::Tls(e.to_string()))?;
    let builder = match &material.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| ApiServerError::Tls(format!("client CA: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ApiServerError::Tls(format!("client CA: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ApiServerError::Tls(
                    "the client CA file holds no certificate".into(),
                ));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| ApiServerError::Tls(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ApiServerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl ApiServer {
    /// Validates the configuration, creates the built-in objects (namespaces, `kubernetes`
    /// service, default RBAC policy) and starts keeping RBAC in sync with the store.
    pub async fn new(
        config: ApiServerConfig,
        store: Arc<dyn Store>,
    ) -> Result<ApiServer, ApiServerError> {
        let tls = Arc::new(tls_config(&config.tls)?);
        let lookup: Arc<dyn kinit_auth::ObjectLookup> =
            Arc::new(StoreLookup::new(store.clone()).await.map_err(|e| {
                ApiServerError::Bootstrap {
                    what: "pods-by-node index".into(),
                    reason: e.message,
                }
            })?);
        let api_audiences = if config.authentication.api_audiences.is_empty() {
            vec![config.authentication.service_account_issuer.clone()]
        } else {
            config.authentication.api_audiences.clone()
        };
        let authenticator = Authenticator::new(config.authentication.clone(), lookup.clone())
            .map_err(|e| ApiServerError::Auth(e.to_string()))?;
        let token_issuer = match &config.service_account_signing_key_pem {
            Some(pem) => Some(
                TokenIssuer::new(pem, config.authentication.service_account_issuer.clone())
                    .map_err(|e| {
                        ApiServerError::Auth(format!("--service-account-signing-key-file: {e}"))
                    })?,
            ),
            None => None,
        };
        let access = Access::new(
            authenticator,
            lookup,
            config.authorization_modes.clone(),
            config.anonymous_auth,
        );
        let server_address = match config.advertise_address {
            IpAddr::V6(ip) => format!("[{ip}]:{}", config.advertise_port),
            IpAddr::V4(ip) => format!("{ip}:{}", config.advertise_port),
        };
        let state = Arc::new(State {
            objects: Objects {
                store: store.clone(),
            },
            services: ServiceAllocator::new(
                store.clone(),
                config.service_cluster_ip_range,
                config.service_node_port_range,
            ),
            access,
            token_issuer,
            api_audiences,
            node_proxy: config.node_proxy.clone(),
            server_address,
            component_status: config.component_status.clone(),
        });
        crate::bootstrap::run(&state, config.advertise_address, config.advertise_port).await?;
        access::start_rbac_sync(store, state.access.rbac.clone())
            .await
            .map_err(|e| ApiServerError::Bootstrap {
                what: "RBAC cache".into(),
                reason: e.message,
            })?;
        Ok(ApiServer { state, tls })
    }

    /// The HTTP routes (without TLS).
    fn router(&self) -> Router {
        let ok = || async {
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "ok",
            )
        };
        Router::new()
            .route("/healthz", get(ok))
            .route("/livez", get(ok))
            .route("/readyz", get(ok))
            .fallback(dispatch)
            .layer(DefaultBodyLimit::max(3 * 1024 * 1024))
            .with_state(self.state.clone())
    }

    /// Serves HTTPS on `listener` until the listener fails.
    pub async fn serve(self, listener: TcpListener) -> Result<(), ApiServerError> {
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let router = self.router();
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!("serving the Kubernetes API on https://{local}");
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and similar: wait and keep serving.
                    tracing::warn!("accepting a connection on {local}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                serve_connection(acceptor, router, tcp, peer).await;
            });
        }
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    router: Router,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake with {peer} timed out");
            return;
        }
    };
    let cert = ClientCertificate(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Arc::new(c.as_ref().to_vec())),
    );
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(cert.clone());
            router.clone().oneshot(req.map(Body::new))
        });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!("connection from {peer} ended: {e}");
    }
}

async fn dispatch(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
) -> Response {
    match handle(state, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: Arc<State>, request: Request) -> Result<Response, ApiError> {
    let cert = request
        .extensions()
        .get::<ClientCertificate>()
        .cloned()
        .unwrap_or_default();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let user = state
        .access
        .authenticate(
            cert.0.as_deref().map(Vec::as_slice),
            authorization.as_deref(),
        )
        .await?;
    let user = crate::impersonation::effective_user(&state.access, user, request.headers()).await?;
    let path = request.uri().path().to_string();
    let query = Query::parse(request.uri().query())?;
    match request::parse_path(&path)? {
        PathKind::NonResource => non_resource(&state, &user, request, &path).await,
        PathKind::Resource(target) => resource(state, user, request, target, query).await,
    }
}

async fn non_resource(
    state: &Arc<State>,
    user: &UserInfo,
    request: Request,
    path: &str,
) -> Result<Response, ApiError> {
    let verb = request.method().as_str().to_ascii_lowercase();
    let attrs = Attributes::non_resource(user.clone(), &verb, path);
    let decision = state.access.authorize(&attrs).await;
    if !decision.allowed {
        return Err(access::forbidden(&attrs, &decision.reason));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Err(ApiError::method_not_allowed(format!(
            "{} is not supported on {path}",
            request.method()
        )));
    }
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let aggregated = |legacy: bool| {
        let body = serde_json::to_vec(&discovery::aggregated(legacy)).unwrap_or_default();
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE),
                (header::VARY, "Accept"),
            ],
            body,
        )
            .into_response()
    };
    let found = |v: Option<serde_json::Value>| {
        v.map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(|| ApiError::path_not_found(path))
    };
    match segs.as_slice() {
        ["version"] => Ok(json_response(StatusCode::OK, &discovery::version())),
        ["api"] if discovery::wants_aggregated(&accept) => Ok(aggregated(true)),
        ["api"] => Ok(json_response(
            StatusCode::OK,
            &discovery::api_versions(&state.server_address),
        )),
        ["api", v] => found(discovery::api_resource_list("", v)),
        ["apis"] if discovery::wants_aggregated(&accept) => Ok(aggregated(false)),
        ["apis"] => Ok(json_response(StatusCode::OK, &discovery::api_group_list())),
        ["apis", g] => found(discovery::api_group(g)),
        ["apis", g, v] => found(discovery::api_resource_list(g, v)),
        ["openapi", rest @ ..] => {
            discovery::openapi_response(path, rest, request.headers(), request.uri().query())
        }
        _ => Err(ApiError::path_not_found(path)),
    }
}

async fn resource(
    state: Arc<State>,
    user: UserInfo,
    request: Request,
    target: Target,
    query: Query,
) -> Result<Response, ApiError> {
    let def = target.def;
    let method = request.method().clone();
    let verb = request::verb(&method, &target, &query)?;
    if !target.subresource.is_empty() && def.subresource(&target.subresource).is_none() {
        return Err(ApiError::path_not_found(request.uri().path()));
    }
    let allowed_verbs = match def.subresource(&target.subresource) {
        Some(s) => s.verbs,
        None => def.verbs,
    };
    let verb_ok = allowed_verbs.contains(&verb)
        || (target.subresource.is_empty() && verb == "watch" && def.verbs.contains(&"watch"))
        // exec/attach/portforward are upgraded GETs or POSTs.
        || matches!(target.subresource.as_str(), "exec" | "attach" | "portforward");
    if !verb_ok {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({verb} {})",
            qualified(def.group, def.resource)
        )));
    }
    let (parts, body) = request.into_parts();
    let is_proxy = matches!(
        target.subresource.as_str(),
        "log" | "exec" | "attach" | "portforward"
    );
    let (body_bytes, proxy_request) = if is_proxy {
        (
            bytes::Bytes::new(),
            Some(http::Request::from_parts(parts.clone(), body)),
        )
    } else {
        let b = axum::body::to_bytes(body, 3 * 1024 * 1024)
            .await
            .map_err(|e| ApiError::new_request_too_large(e.to_string()))?;
        (b, None)
    };
    // Authorization attributes (namespace of a namespace object is its own name, like Kubernetes).
    let mut namespace = target.namespace.clone();
    if def.hooks.authorized_in_own_namespace() && !target.name.is_empty() {
        namespace = target.name.clone();
    }
    let mut name = target.name.clone();
    if verb == "create"
        && name.is_empty()
        && def.persistence == Persistence::Stored
        && !body_bytes.is_empty()
    {
        if let Ok(v) = request::decode_body(&parts.headers, &body_bytes) {
            name = meta_str(&v, "name").to_string();
        }
    }
    if (verb == "list" || verb == "watch") && name.is_empty() {
        if let Some(n) = ListParams::parse(def, &query)
            .ok()
            .and_then(|p| p.fields.pinned_name().map(String::from))
        {
            name = n;
        }
    }
    let mut attrs = Attributes::resource(
        user.clone(),
        verb,
        &namespace,
        def.group,
        def.resource,
        &name,
    );
    attrs.subresource = target.subresource.clone();
    attrs.api_version = def.version.to_string();
    attrs.path = parts.uri.path().to_string();
    let decision = state.access.authorize(&attrs).await;
    if !decision.allowed {
        return Err(access::forbidden(&attrs, &decision.reason));
    }

    let ctx = Ctx {
        state: &state,
        target: &target,
        query: &query,
        headers: &parts.headers,
        user: &user,
        warnings: Mutex::new(Vec::new()),
    };
    match (def.persistence, verb) {
        (Persistence::Virtual, _) => return reviews::create(&ctx, &body_bytes).await,
        (Persistence::Computed, "get") => return componentstatus::get(&ctx).await,
        (Persistence::Computed, _) => return componentstatus::list(&ctx).await,
        (Persistence::Stored, _) => {}
    }
    let sub = target.subresource.as_str();
    match (sub, verb) {
        ("", "get") => handlers::get(&ctx).await,
        ("", "list") => handlers::list(&ctx).await,
        ("", "watch") => handlers::watch(&ctx).await,
        ("", "create") => {
            if !target.name.is_empty() {
                return Err(ApiError::method_not_allowed(
                    "POST is not allowed on a named object; use PUT or PATCH",
                ));
            }
            handlers::create(&ctx, &body_bytes).await
        }
        ("", "delete") => handlers::delete(&ctx, &body_bytes).await,
        ("", "deletecollection") => handlers::delete_collection(&ctx, &body_bytes).await,
        ("scale", _) => subresources::scale(&ctx, &method, &body_bytes).await,
        ("binding", "create") => subresources::binding(&ctx, &body_bytes).await,
        ("eviction", "create") => subresources::eviction(&ctx, &body_bytes).await,
        ("token", "create") => subresources::token(&ctx, &body_bytes).await,
        ("log" | "exec" | "attach" | "portforward", _) => {
            subresources::pod_proxy(&ctx, proxy_request.expect("proxy request kept")).await
        }
        (s, v) => {
            let part = Part::of(s).ok_or_else(|| ApiError::path_not_found(parts.uri.path()))?;
            match v {
                "get" => handlers::get(&ctx).await,
                "update" => handlers::update(&ctx, part, &body_bytes).await,
                "patch" => handlers::patch(&ctx, part, &body_bytes).await,
                _ => Err(ApiError::method_not_allowed(format!(
                    "{v} is not supported on {}/{s}",
                    def.resource
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuing_ca_is_appended_to_a_lone_serving_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let spec = kinit_pki::PkiSpec {
            pki_dir: dir.path().to_path_buf(),
            nodes: vec![kinit_pki::ControlPlaneNode {
                name: "cp1".into(),
                ips: vec!["192.0.2.10".parse().unwrap()],
            }],
            ..kinit_pki::PkiSpec::default()
        };
        kinit_pki::generate(&spec).unwrap();
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        let leaf: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read("apiserver.crt"))
                .collect::<Result<_, _>>()
                .unwrap();
        let ca = CertificateDer::pem_slice_iter(&read("ca.crt"))
            .next()
            .unwrap()
            .unwrap();
        let front_proxy = read("front-proxy-ca.crt");
        // The issuer is found among several CAs.
        let bundle = [front_proxy.clone(), read("ca.crt")].concat();
        assert_eq!(issuing_ca(&leaf, &bundle), Some(ca.clone()));
        // A CA that did not sign it, or a chain that is already complete, gets nothing.
        assert_eq!(issuing_ca(&leaf, &front_proxy), None);
        assert_eq!(issuing_ca(&[leaf[0].clone(), ca], &bundle), None);
    }
}
