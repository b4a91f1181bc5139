//! `kinit demoapp`: a tiny HTTP server for tests, tutorials and docs, in the spirit of the
//! Kubernetes tutorial apps.
//!
//! - `GET /`         hostname, pod name/IP, version, a request count and the client's address
//!   (JSON when the client sends `Accept: application/json`, one line of text otherwise)
//! - `GET /healthz`  200 `ok` (readiness)
//! - `GET /livez`    200 `ok`, or 500 once `/fail` was called or `--fail-liveness-after`
//!   elapsed, so liveness-probe restarts can be shown
//! - `POST|GET /fail` makes `/livez` fail from now on
//! - `GET /readyz`   200 `ok`, or 503 after `POST /readyz` with the body `readyz=FAIL` (and
//!   200 again after `readyz=OK`), so a pod can be taken out of its Services by hand
//! - `GET /version`  the configured version (`VERSION`), so a rollout or `rollout undo` is visible

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;

/// Flags of `kinit demoapp`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoAppArgs {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = crate::kinit::DEMOAPP_PORT)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind_address: IpAddr,
    /// Version shown by `/` and `/version` (the image sets it to the image tag).
    #[arg(long = "app-version", env = "VERSION", default_value = concat!("v", env!("CARGO_PKG_VERSION")))]
    pub app_version: String,
    /// Pod name shown by `/` (set it from the downward API: `fieldRef: metadata.name`).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    /// Pod IP shown by `/` (downward API: `fieldRef: status.podIP`).
    #[arg(long, env = "POD_IP", default_value = "")]
    pub pod_ip: String,
    /// Make `/livez` fail this many seconds after start (demonstrates liveness restarts).
    #[arg(long, env = "FAIL_LIVENESS_AFTER", value_name = "SECONDS")]
    pub fail_liveness_after: Option<u64>,
}

impl Default for DemoAppArgs {
    fn default() -> Self {
        Self {
            port: crate::kinit::DEMOAPP_PORT,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            app_version: concat!("v", env!("CARGO_PKG_VERSION")).into(),
            pod_name: String::new(),
            pod_ip: String::new(),
            fail_liveness_after: None,
        }
    }
}

/// Why `kinit demoapp` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DemoAppError {
    /// The listening socket could not be opened.
    #[error("kinit demoapp: cannot listen on {address}: {source} (is the port in use? pick another with --port)")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("kinit demoapp: serving HTTP failed: {0}")]
    Serve(#[source] std::io::Error),
    /// SIGTERM/SIGINT handlers could not be installed.
    #[error("kinit demoapp: cannot install SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Shared state of the demo app.
#[derive(Debug)]
pub struct DemoApp {
    args: DemoAppArgs,
    started: Instant,
    requests: AtomicU64,
    failing: AtomicBool,
    unready: AtomicBool,
}

/// What `GET /` answers (as JSON, or as one line of text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Greeting {
    /// Container hostname (the pod name in Kubernetes).
    pub hostname: String,
    /// `POD_NAME`.
    pub pod_name: String,
    /// `POD_IP`.
    pub pod_ip: String,
    /// `VERSION`.
    pub version: String,
    /// Requests to `/` served by this process, this one included.
    pub requests: u64,
    /// The address the request came from, as this pod sees it (shows whether a hop NATed it).
    pub client: String,
}

impl DemoApp {
    /// New state from the flags.
    pub fn new(args: DemoAppArgs) -> Arc<Self> {
        Arc::new(Self {
            args,
            started: Instant::now(),
            requests: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            unready: AtomicBool::new(false),
        })
    }

    fn live(&self) -> Result<(), String> {
        if self.failing.load(Ordering::Relaxed) {
            return Err("failing: /fail was called".into());
        }
        if let Some(after) = self.args.fail_liveness_after {
            if self.started.elapsed() >= Duration::from_secs(after) {
                return Err(format!("failing: started more than {after}s ago"));
            }
        }
        Ok(())
    }
}

/// The demo app's routes.
pub fn router(app: Arc<DemoApp>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/livez", get(livez))
        .route("/fail", get(fail).post(fail))
        .route("/readyz", get(readyz).post(set_readyz))
        .route("/version", get(version))
        .with_state(app)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

async fn root(
    State(app): State<Arc<DemoApp>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let greeting = Greeting {
        client: peer
            .map(|Extension(ConnectInfo(addr))| addr.ip().to_string())
            .unwrap_or_default(),
        hostname: hostname(),
        pod_name: app.args.pod_name.clone(),
        pod_ip: app.args.pod_ip.clone(),
        version: app.args.app_version.clone(),
        requests: app.requests.fetch_add(1, Ordering::Relaxed) + 1,
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        Json(greeting).into_response()
    } else {
        format!(
            "Hello from kinit demoapp {} | host: {} | pod: {} | ip: {} | requests: {} | client: {}\n",
            greeting.version,
            greeting.hostname,
            or_dash(&greeting.pod_name),
            or_dash(&greeting.pod_ip),
            greeting.requests,
            or_dash(&greeting.client)
        )
        .into_response()
    }
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() {
        "-"
    } else {
        value
    }
}

async fn livez(State(app): State<Arc<DemoApp>>) -> Response {
    match app.live() {
        Ok(()) => "ok\n".into_response(),
        Err(reason) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{reason}\n")).into_response(),
    }
}

async fn fail(State(app): State<Arc<DemoApp>>) -> &'static str {
    app.failing.store(true, Ordering::Relaxed);
    tracing::warn!("/fail called: /livez fails from now on");
    "/livez fails from now on\n"
}

async fn readyz(State(app): State<Arc<DemoApp>>) -> Response {
    if app.unready.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: readyz=FAIL was posted\n",
        )
            .into_response()
    } else {
        "ok\n".into_response()
    }
}

/// `POST /readyz` with the form body `readyz=FAIL` or `readyz=OK` (as the seeds' demoapp takes
/// it) makes `/readyz` fail or pass, so a pod can be taken out of its Services by hand.
async fn set_readyz(State(app): State<Arc<DemoApp>>, body: String) -> Response {
    match body.trim() {
        "readyz=FAIL" => {
            app.unready.store(true, Ordering::Relaxed);
            tracing::warn!("readyz=FAIL posted: /readyz fails from now on");
            "/readyz fails from now on\n".into_response()
        }
        "readyz=OK" => {
            app.unready.store(false, Ordering::Relaxed);
            "/readyz passes from now on\n".into_response()
        }
        other => (
            StatusCode::BAD_REQUEST,
            format!("expected the body readyz=FAIL or readyz=OK, got {other:?}\n"),
        )
            .into_response(),
    }
}

async fn version(State(app): State<Arc<DemoApp>>) -> String {
    format!("{}\n", app.args.app_version)
}

/// Serves the demo app on `listener` until `shutdown` completes, then finishes in-flight
/// requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<DemoApp>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoAppError> {
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(DemoAppError::Serve)
}

/// Runs `kinit demoapp`: listens on `--bind-address:--port` and serves until SIGTERM or SIGINT
/// (as PID 1 in a container nothing else would stop it), then returns `Ok(())`.
pub async fn run_demoapp(args: DemoAppArgs) -> Result<(), DemoAppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let address = SocketAddr::new(args.bind_address, args.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| DemoAppError::Bind { address, source })?;
    let mut term = signal(SignalKind::terminate()).map_err(DemoAppError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DemoAppError::Signals)?;
    tracing::info!(%address, version = %args.app_version, "kinit demoapp listening");
    eprintln!("kinit demoapp {} listening on {address}", args.app_version);
    serve(listener, DemoApp::new(args), async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("kinit demoapp: shutting down");
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(
        app: &Arc<DemoApp>,
        method: &str,
        uri: &str,
        accept: Option<&str>,
    ) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let response = router(app.clone())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn app() -> Arc<DemoApp> {
        DemoApp::new(DemoAppArgs {
            pod_name: "web-1".into(),
            pod_ip: "10.244.0.7".into(),
            app_version: "v2".into(),
            ..DemoAppArgs::default()
        })
    }

    #[tokio::test]
    async fn root_reports_host_pod_version_and_counts_requests() {
        let app = app();
        let (status, text) = call(&app, "GET", "/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains(&format!("host: {}", hostname())), "{text}");
        assert!(text.contains("pod: web-1 | ip: 10.244.0.7"), "{text}");
        assert!(
            text.contains("v2") && text.contains("requests: 1"),
            "{text}"
        );

        let (status, json) = call(&app, "GET", "/", Some("application/json")).await;
        assert_eq!(status, StatusCode::OK);
        let greeting: Greeting = serde_json::from_str(&json).unwrap();
        assert_eq!(
            greeting,
            Greeting {
                hostname: hostname(),
                pod_name: "web-1".into(),
                pod_ip: "10.244.0.7".into(),
                version: "v2".into(),
                requests: 2,
                client: String::new(),
            }
        );
        // Probes do not count as requests.
        call(&app, "GET", "/healthz", None).await;
        let (_, json) = call(&app, "GET", "/", Some("application/json")).await;
        assert_eq!(serde_json::from_str::<Greeting>(&json).unwrap().requests, 3);
    }

    #[tokio::test]
    async fn healthz_and_version() {
        let app = app();
        assert_eq!(
            call(&app, "GET", "/healthz", None).await,
            (StatusCode::OK, "ok\n".into())
        );
        assert_eq!(
            call(&app, "GET", "/version", None).await,
            (StatusCode::OK, "v2\n".into())
        );
        assert_eq!(
            call(&app, "GET", "/nope", None).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn fail_makes_livez_fail_but_not_healthz() {
        let app = app();
        assert_eq!(call(&app, "GET", "/livez", None).await.0, StatusCode::OK);
        assert_eq!(call(&app, "POST", "/fail", None).await.0, StatusCode::OK);
        let (status, text) = call(&app, "GET", "/livez", None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(text.contains("/fail"), "{text}");
        assert_eq!(call(&app, "GET", "/healthz", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_follows_what_was_posted() {
        let app = app();
        let post = |body: &'static str| {
            let app = app.clone();
            async move {
                let request = Request::builder()
                    .method("POST")
                    .uri("/readyz")
                    .body(Body::from(body))
                    .unwrap();
                router(app).oneshot(request).await.unwrap().status()
            }
        };
        assert_eq!(call(&app, "GET", "/readyz", None).await.0, StatusCode::OK);
        assert_eq!(post("readyz=FAIL").await, StatusCode::OK);
        assert_eq!(
            call(&app, "GET", "/readyz", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(call(&app, "GET", "/livez", None).await.0, StatusCode::OK);
        assert_eq!(post("nonsense").await, StatusCode::BAD_REQUEST);
        assert_eq!(post("readyz=OK").await, StatusCode::OK);
        assert_eq!(call(&app, "GET", "/readyz", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn livez_fails_after_the_configured_time() {
        let app = DemoApp::new(DemoAppArgs {
            fail_liveness_after: Some(0),
            ..DemoAppArgs::default()
        });
        let (status, text) = call(&app, "GET", "/livez", None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(text.contains("0s"), "{text}");
        let later = DemoApp::new(DemoAppArgs {
            fail_liveness_after: Some(3600),
            ..DemoAppArgs::default()
        });
        assert_eq!(call(&later, "GET", "/livez", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn serves_over_tcp_and_shuts_down_gracefully() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app(), async {
            let _ = stopped.await;
        }));
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream
                .write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let response = get("/version").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("v2\n"), "{response}");
        // Over TCP the greeting names the client's address.
        let response = get("/").await;
        assert!(response.ends_with("| client: 127.0.0.1\n"), "{response}");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops after shutdown")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = run_demoapp(DemoAppArgs {
            port,
            bind_address: "127.0.0.1".parse().unwrap(),
            ..DemoAppArgs::default()
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[test]
    fn flags_parse_with_kubernetes_style_names() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: DemoAppArgs,
        }
        let cli = Cli::try_parse_from([
            "demoapp",
            "--port=9000",
            "--bind-address=127.0.0.1",
            "--app-version=v3",
            "--fail-liveness-after=30",
        ])
        .unwrap();
        assert_eq!(cli.args.port, 9000);
        assert_eq!(cli.args.bind_address.to_string(), "127.0.0.1");
        assert_eq!(cli.args.app_version, "v3");
        assert_eq!(cli.args.fail_liveness_after, Some(30));
    }
}
