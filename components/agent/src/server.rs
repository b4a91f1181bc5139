//! The agent's HTTPS server (:10250): `/healthz`, `/containerLogs/<ns>/<pod>/<container>`,
//! `/exec|attach/<ns>/<pod>[/<uid>]/<container>` and `/portForward/<ns>/<pod>[/<uid>]` for the
//! API server's node proxy, with the kubelet's paths and query parameters. Callers present a
//! client certificate from the cluster CA; only the API server's kubelet-client identity and
//! cluster admins may read logs, exec, attach or forward ports.
//!
//! Streaming requests are served like the kubelet with redirects disabled: the agent asks the
//! runtime (CRI `Exec`, `Attach`, `PortForward`) for a streaming URL and proxies the client's
//! upgrade request to the runtime's streaming server, which speaks the protocols itself: SPDY/3.1
//! (`v4.channel.k8s.io`, `portforward.k8s.io`) and the legacy WebSocket channel protocols
//! (`v4.channel.k8s.io`, the WebSocket port-forward protocol with `?port=`). The newer WebSocket
//! protocols of kubectl 1.30+ (`v5.channel.k8s.io`, `SPDY/3.1+portforward.k8s.io`) are
//! translated by the API server, as the kube-apiserver does for kubelets; a request offering
//! only protocols the runtime does not speak is refused by the runtime with a non-101 answer,
//! on which kubectl falls back to SPDY.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::SeekFrom;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{AttachRequest, ContainerState, ExecRequest};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt};

use crate::manager::PodManager;
use crate::pods::Observed;
use crate::AgentError;

/// Response body type of the server.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Identities allowed to use the log and exec endpoints.
pub const ALLOWED_USERS: &[&str] = &["kube-apiserver-kubelet-client", "system:kube-apiserver"];
/// Groups allowed to use the log and exec endpoints.
pub const ALLOWED_GROUPS: &[&str] = &["system:masters", "kubeadm:cluster-admins"];

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()).map_err(|e| match e {}).boxed())
        .expect("valid response")
}

/// TLS material of the server.
pub struct ServingTls {
    /// Certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Private key (PEM).
    pub key_pem: Vec<u8>,
    /// CA whose client certificates are accepted (PEM).
    pub client_ca_pem: Vec<u8>,
}

/// Loads the configured serving certificate, or keeps a self-signed one under `<rootDir>/pki`
/// for the node's name and IP (made anew when missing, unusable or naming other addresses).
pub fn serving_tls(settings: &crate::Settings) -> Result<ServingTls, AgentError> {
    let c = &settings.config;
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| AgentError::Server(format!("reading {}: {e}", p.display())))
    };
    let client_ca_pem = read(&c.client_ca_file).map_err(|e| {
        AgentError::Server(format!(
            "{e}; clientCAFile must name the cluster CA so the API server can be authenticated"
        ))
    })?;
    let (cert_pem, key_pem) = match (&c.tls_cert_file, &c.tls_private_key_file) {
        (Some(cert), Some(key)) => (read(cert)?, read(key)?),
        _ => {
            let dir = c.root_dir.join("pki");
            let pair = kinit_pki::keep_or_self_sign_serving_certificate(
                &dir.join("agent.crt"),
                &dir.join("agent.key"),
                &self_signed_names(settings),
            )
            .map_err(|e| AgentError::Server(format!("serving certificate: {e}")))?;
            if let Some(reason) = &pair.replaced {
                tracing::info!(dir = %dir.display(), "wrote a self-signed serving certificate: the previous one {reason}");
            }
            (pair.cert_pem, pair.key_pem)
        }
    };
    Ok(ServingTls {
        cert_pem,
        key_pem,
        client_ca_pem,
    })
}

/// The names a self-signed serving certificate carries: node name, node IP and loopback.
fn self_signed_names(settings: &crate::Settings) -> Vec<String> {
    let mut names = vec![settings.node_name.clone(), "localhost".to_string()];
    if let Some(ip) = settings.node_ip {
        names.push(ip.to_string());
    }
    names.push("127.0.0.1".into());
    names
}

fn tls_config(tls: &ServingTls) -> Result<rustls::ServerConfig, AgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        rustls_pki_types::pem::PemObject::pem_slice_iter(&tls.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| AgentError::Server(format!("serving certificate: {e}")))?;
    let key: PrivateKeyDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(&tls.key_pem)
            .map_err(|e| AgentError::Server(format!("serving key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pki_types::pem::PemObject::pem_slice_iter(&tls.client_ca_pem) {
        let ca: CertificateDer<'static> =
            ca.map_err(|e| AgentError::Server(format!("client CA: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| AgentError::Server(format!("client CA: {e}")))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| AgentError::Server(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Server(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| AgentError::Server(format!("serving certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The authenticated caller (CN and O of its verified client certificate).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Common name.
    pub user: Option<String>,
    /// Organizations.
    pub groups: Vec<String>,
}

impl Caller {
    fn from_cert(cert: Option<&CertificateDer<'_>>) -> Caller {
        let Some(cert) = cert else {
            return Caller::default();
        };
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
            return Caller::default();
        };
        let subject = parsed.subject();
        let caller = Caller {
            user: subject
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(String::from),
            groups: subject
                .iter_organization()
                .filter_map(|a| a.as_str().ok())
                .map(String::from)
                .collect(),
        };
        caller
    }

    fn allowed(&self) -> bool {
        self.user
            .as_deref()
            .is_some_and(|u| ALLOWED_USERS.contains(&u))
            || self
                .groups
                .iter()
                .any(|g| ALLOWED_GROUPS.contains(&g.as_str()))
    }
}

/// Serves on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: ServingTls,
    manager: PodManager,
) -> Result<(), AgentError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&tls)?));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let manager = manager.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            let caller = Caller::from_cert(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first()),
            );
            let service = hyper::service::service_fn(move |req| {
                let manager = manager.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(handle(req, &caller, &manager, peer).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in url_pairs(req.uri().query().unwrap_or("")) {
        out.entry(k).or_default().push(v);
    }
    out
}

/// The `application/x-www-form-urlencoded` pairs of a query string, decoded (`+` is a space,
/// bad escapes stay as they are, invalid UTF-8 becomes U+FFFD); never panics.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn flag(q: &HashMap<String, Vec<String>>, k: &str) -> bool {
    q.get(k)
        .and_then(|v| v.first())
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// What a remote command (exec or attach) streams, from the kubelet's query parameters
/// `input`, `output`, `error`, `tty` (the API server's names `stdin`, `stdout`, `stderr` are
/// accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// The client sends standard input.
    pub stdin: bool,
    /// The client wants standard output.
    pub stdout: bool,
    /// The client wants standard error (never together with a TTY).
    pub stderr: bool,
    /// The stream is a terminal.
    pub tty: bool,
}

impl StreamOptions {
    /// Reads the options like the kubelet: a TTY has no separate standard error, and at least
    /// one stream must be asked for.
    pub fn from_query(q: &HashMap<String, Vec<String>>) -> Result<StreamOptions, String> {
        let tty = flag(q, "tty");
        let options = StreamOptions {
            stdin: flag(q, "input") || flag(q, "stdin"),
            stdout: flag(q, "output") || flag(q, "stdout"),
            stderr: (flag(q, "error") || flag(q, "stderr")) && !tty,
            tty,
        };
        if !(options.stdin || options.stdout || options.stderr) {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(options)
    }
}

/// The ports of a port-forward request: the kubelet's `port` parameter (repeated or
/// comma-separated; the API server's `ports` is accepted too). SPDY clients name the port of
/// each stream in its headers, so an empty list is valid for them.
pub fn forwarded_ports(q: &HashMap<String, Vec<String>>) -> Result<Vec<i32>, String> {
    let mut ports = Vec::new();
    for value in ["port", "ports"].iter().filter_map(|k| q.get(*k)).flatten() {
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in value.split(',') {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(i32::from(port)),
                _ => return Err(format!("unable to parse {p:?} as a port (1-65535)")),
            }
        }
    }
    Ok(ports)
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn handle(
    req: Request<Incoming>,
    caller: &Caller,
    manager: &PodManager,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return full(StatusCode::OK, "ok");
    }
    if caller.user.is_none() {
        return full(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: a client certificate from the cluster CA is required\n",
        );
    }
    if !caller.allowed() {
        return full(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden: user {:?} may not use the node agent's API\n",
                caller.user.as_deref().unwrap_or_default()
            ),
        );
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    tracing::debug!(%peer, user = ?caller.user, %path, "agent request");
    match parts.as_slice() {
        ["containerLogs", ns, pod, container] => {
            container_logs(manager, ns, pod, container, &query(&req)).await
        }
        [verb @ ("exec" | "attach"), ns, pod, container] => {
            let target = StreamTarget::new(ns, pod, None);
            let (verb, container) = (verb.to_string(), container.to_string());
            remote_command(manager, &verb, &target, &container, req).await
        }
        [verb @ ("exec" | "attach"), ns, pod, uid, container] => {
            let target = StreamTarget::new(ns, pod, Some(uid));
            let (verb, container) = (verb.to_string(), container.to_string());
            remote_command(manager, &verb, &target, &container, req).await
        }
        ["portForward", ns, pod] => {
            let target = StreamTarget::new(ns, pod, None);
            port_forward(manager, &target, req).await
        }
        ["portForward", ns, pod, uid] => {
            let target = StreamTarget::new(ns, pod, Some(uid));
            port_forward(manager, &target, req).await
        }
        _ => full(
            StatusCode::NOT_FOUND,
            format!("404 page not found: {path}\n"),
        ),
    }
}

async fn find_container(
    manager: &PodManager,
    p: &k8s_openapi::api::core::v1::Pod,
    container: &str,
    previous: bool,
) -> Result<k8s_cri::v1::ContainerStatus, Response<Body>> {
    let pod = p.metadata.name.as_deref().unwrap_or_default();
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let observed = Observed::read(manager.runtime().as_ref(), &uid)
        .await
        .map_err(|e| full(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?;
    let found = if previous {
        observed.previous(container)
    } else {
        observed.latest(container, None)
    };
    found.cloned().ok_or_else(|| {
        full(
            StatusCode::BAD_REQUEST,
            if previous {
                format!("previous terminated container {container:?} in pod {pod:?} not found\n")
            } else {
                format!("container {container:?} in pod {pod:?} is waiting to start\n")
            },
        )
    })
}

/// One parsed CRI log line: `<RFC3339Nano> <stdout|stderr> <P|F> <message>`.
#[derive(Debug, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// Timestamp as written.
    pub time: &'a str,
    /// Stream.
    pub stream: &'a str,
    /// Whether the line is complete (`F`) or a partial chunk (`P`).
    pub full: bool,
    /// The content.
    pub message: &'a str,
}

/// Parses a CRI log line.
pub fn parse_log_line(line: &str) -> Option<LogLine<'_>> {
    let mut it = line.splitn(4, ' ');
    let time = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    let message = it.next().unwrap_or("");
    Some(LogLine {
        time,
        stream,
        full: !tag.starts_with('P'),
        message,
    })
}

fn render(line: &str, timestamps: bool, pending: &mut String) -> Option<String> {
    let l = parse_log_line(line.trim_end_matches('\n'))?;
    if !l.full {
        if pending.is_empty() && timestamps {
            pending.push_str(l.time);
            pending.push(' ');
        }
        pending.push_str(l.message);
        return None;
    }
    let mut out = std::mem::take(pending);
    if out.is_empty() && timestamps {
        out.push_str(l.time);
        out.push(' ');
    }
    out.push_str(l.message);
    out.push('\n');
    Some(out)
}

/// Renders a CRI log file's content for `kubectl logs` (tail, timestamps).
pub fn render_log(content: &str, tail: Option<usize>, timestamps: bool) -> String {
    let mut pending = String::new();
    let lines: Vec<String> = content
        .lines()
        .filter_map(|l| render(l, timestamps, &mut pending))
        .collect();
    let start = tail.map(|t| lines.len().saturating_sub(t)).unwrap_or(0);
    lines[start..].concat()
}

async fn container_logs(
    manager: &PodManager,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, Vec<String>>,
) -> Response<Body> {
    let previous = flag(q, "previous");
    let follow = flag(q, "follow") && !previous;
    let timestamps = flag(q, "timestamps");
    let tail: Option<usize> = q
        .get("tailLines")
        .and_then(|v| v.first())
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|t| *t >= 0)
        .map(|t| t as usize);
    let found = StreamTarget::new(ns, pod, None).pod(manager);
    let status = match found {
        Ok(p) => find_container(manager, &p, container, previous).await,
        Err(r) => Err(*r),
    };
    let status = match status {
        Ok(s) => s,
        Err(r) => return r,
    };
    let path = PathBuf::from(&status.log_path);
    let content = match tokio::fs::read(&path).await {
        Ok(c) => String::from_utf8_lossy(&c).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return full(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the log {}: {e}\n", path.display()),
            )
        }
    };
    let head = render_log(&content, tail, timestamps);
    if !follow {
        return full(StatusCode::OK, head);
    }
    let offset = content.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let runtime = manager.runtime();
    let id = status.id.clone();
    tokio::spawn(async move {
        if tx.send(Ok(Frame::data(Bytes::from(head)))).await.is_err() {
            return;
        }
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            return;
        };
        if file.seek(SeekFrom::Start(offset)).await.is_err() {
            return;
        }
        let mut reader = tokio::io::BufReader::new(file);
        let mut pending = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) => {
                    let running = runtime
                        .container_status(&id)
                        .await
                        .map(|s| s.state == ContainerState::ContainerRunning as i32)
                        .unwrap_or(false);
                    if !running {
                        // Drain what the container wrote before exiting, then end the stream.
                        let mut rest = String::new();
                        let _ = reader.read_to_string(&mut rest).await;
                        let out = render_log(&rest, None, timestamps);
                        if !out.is_empty() {
                            let _ = tx.send(Ok(Frame::data(Bytes::from(out)))).await;
                        }
                        return;
                    }
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(_) if !line.ends_with('\n') => {
                    // A half-written line: wait for the rest.
                    let mut more = String::new();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = reader.read_line(&mut more).await;
                    line.push_str(&more);
                    if let Some(out) = render(&line, timestamps, &mut pending) {
                        if tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {
                    if let Some(out) = render(&line, timestamps, &mut pending) {
                        if tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(_) => return,
            }
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body)
        .expect("valid response")
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The pod a streaming request names: namespace, name and, on the kubelet's longer paths, the
/// uid it must have.
struct StreamTarget {
    namespace: String,
    name: String,
    uid: Option<String>,
}

impl StreamTarget {
    fn new(namespace: &str, name: &str, uid: Option<&str>) -> StreamTarget {
        StreamTarget {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.map(String::from),
        }
    }

    /// The pod, if it runs on this node (and has the uid asked for).
    fn pod(
        &self,
        manager: &PodManager,
    ) -> Result<k8s_openapi::api::core::v1::Pod, Box<Response<Body>>> {
        let (ns, name) = (&self.namespace, &self.name);
        manager
            .find(ns, name)
            .filter(|p| {
                self.uid
                    .as_deref()
                    .is_none_or(|uid| p.metadata.uid.as_deref() == Some(uid))
            })
            .ok_or_else(|| {
                Box::new(full(
                    StatusCode::NOT_FOUND,
                    format!("pod {ns}/{name} is not running on this node\n"),
                ))
            })
    }
}

fn runtime_failed(e: crate::runtime::RuntimeError) -> Response<Body> {
    let status = match &e {
        crate::runtime::RuntimeError::Call {
            code: tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition,
            ..
        } => StatusCode::BAD_REQUEST,
        e if e.is_not_found() => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    full(status, format!("{e}\n"))
}

/// `exec` and `attach`: asks the runtime for a streaming URL and proxies the client's
/// (upgrading) request to it, like the kubelet with `--redirect-container-streaming=false`.
async fn remote_command(
    manager: &PodManager,
    verb: &str,
    target: &StreamTarget,
    container: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let pod = match target.pod(manager) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let status = match find_container(manager, &pod, container, false).await {
        Ok(s) if s.state == ContainerState::ContainerRunning as i32 => s,
        Ok(_) => {
            return full(
                StatusCode::BAD_REQUEST,
                format!("container {container} is not running\n"),
            )
        }
        Err(r) => return r,
    };
    let q = query(&req);
    let mut options = match StreamOptions::from_query(&q) {
        Ok(o) => o,
        Err(e) => return full(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let runtime = manager.runtime();
    let url = if verb == "exec" {
        let command: Vec<String> = q.get("command").cloned().unwrap_or_default();
        if command.is_empty() {
            return full(StatusCode::BAD_REQUEST, "exec needs at least one command\n");
        }
        runtime
            .exec(ExecRequest {
                container_id: status.id.clone(),
                cmd: command,
                tty: options.tty,
                stdin: options.stdin,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
    } else {
        // Whether the main process has a terminal was fixed when it started: the attach
        // follows the container's spec, whatever the client asked (as the kubelet does).
        options.tty = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == container))
            .and_then(|c| c.tty)
            .unwrap_or(false);
        if options.tty {
            options.stderr = false;
            if !(options.stdin || options.stdout) {
                return full(
                    StatusCode::BAD_REQUEST,
                    "a container with a TTY has no separate stderr: attach to stdin or stdout\n",
                );
            }
        }
        runtime
            .attach(AttachRequest {
                container_id: status.id.clone(),
                stdin: options.stdin,
                tty: options.tty,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
    };
    let url = match url {
        Ok(u) => u,
        Err(e) => return runtime_failed(e),
    };
    match proxy_stream(&url, req).await {
        Ok(r) => r,
        Err(e) => full(
            StatusCode::BAD_GATEWAY,
            format!("proxying to the runtime's streaming server failed: {e}\n"),
        ),
    }
}

/// `portForward`: asks the runtime for a streaming URL into the pod's ready sandbox and
/// proxies the client's upgrade request to it.
async fn port_forward(
    manager: &PodManager,
    target: &StreamTarget,
    req: Request<Incoming>,
) -> Response<Body> {
    let pod = match target.pod(manager) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let ports = match forwarded_ports(&query(&req)) {
        Ok(p) => p,
        Err(e) => return full(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // A WebSocket client has no other way to name its ports (SPDY clients name them per
    // stream).
    if ports.is_empty() && is_websocket(&req) {
        return full(
            StatusCode::BAD_REQUEST,
            "query parameter \"port\" is required for a WebSocket port-forward\n",
        );
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let observed = match Observed::read(manager.runtime().as_ref(), &uid).await {
        Ok(o) => o,
        Err(e) => return runtime_failed(e),
    };
    let Some(sandbox) = observed.ready_sandbox() else {
        return full(
            StatusCode::BAD_REQUEST,
            format!(
                "pod {}/{} has no running sandbox to forward ports into\n",
                target.namespace, target.name
            ),
        );
    };
    let url = match manager.runtime().port_forward(&sandbox.id, ports).await {
        Ok(u) => u,
        Err(e) => return runtime_failed(e),
    };
    match proxy_stream(&url, req).await {
        Ok(r) => r,
        Err(e) => full(
            StatusCode::BAD_GATEWAY,
            format!("proxying to the runtime's streaming server failed: {e}\n"),
        ),
    }
}

async fn proxy_stream(url: &str, mut req: Request<Incoming>) -> Result<Response<Body>, String> {
    let target: http::Uri = url
        .parse()
        .map_err(|e| format!("bad streaming URL {url}: {e}"))?;
    let authority = target
        .authority()
        .ok_or_else(|| format!("streaming URL {url} has no host"))?
        .clone();
    if target.scheme_str() != Some("http") {
        return Err(format!("streaming URL {url} is not plain http on the node"));
    }
    let tcp = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(target.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    for (k, v) in req.headers() {
        if k == http::header::HOST {
            continue;
        }
        out = out.header(k, v);
    }
    out = out.header(http::header::HOST, authority.as_str());
    let client_upgrade = hyper::upgrade::on(&mut req);
    let out = out
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let mut resp = sender.send_request(out).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut builder = Response::builder().status(status);
    for (k, v) in resp.headers() {
        builder = builder.header(k, v);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let server_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut server = TokioIo::new(server);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
        return builder
            .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
            .map_err(|e| e.to_string());
    }
    let body = resp.into_body().map_err(std::io::Error::other).boxed();
    builder.body(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines() {
        let log = "2024-01-01T00:00:00.1Z stdout F hello\n\
                   2024-01-01T00:00:01.1Z stderr P par\n\
                   2024-01-01T00:00:01.2Z stderr F tial\n\
                   2024-01-01T00:00:02.1Z stdout F bye\n";
        assert_eq!(render_log(log, None, false), "hello\npartial\nbye\n");
        assert_eq!(render_log(log, Some(1), false), "bye\n");
        assert_eq!(
            render_log(log, Some(2), true),
            "2024-01-01T00:00:01.1Z partial\n2024-01-01T00:00:02.1Z bye\n"
        );
        assert_eq!(render_log(log, Some(0), false), "");
    }

    fn q(s: &str) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in url_pairs(s) {
            out.entry(k).or_default().push(v);
        }
        out
    }

    #[test]
    fn stream_options_read_the_kubelet_parameters() {
        let o = StreamOptions::from_query(&q("input=1&output=1&error=1")).unwrap();
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        // A terminal has no separate stderr; the API server's names work too.
        let o = StreamOptions::from_query(&q("stdin=true&stdout=true&stderr=true&tty=true"));
        assert_eq!(
            o.unwrap(),
            StreamOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true
            }
        );
        assert!(StreamOptions::from_query(&q("tty=1&error=1")).is_err());
        assert!(StreamOptions::from_query(&q("input=0&output=false")).is_err());
    }

    #[test]
    fn forwarded_ports_are_validated() {
        assert_eq!(
            forwarded_ports(&q("port=8080&port=90,91")).unwrap(),
            [8080, 90, 91]
        );
        assert_eq!(forwarded_ports(&q("ports=53")).unwrap(), [53]);
        assert!(forwarded_ports(&q("")).unwrap().is_empty());
        for bad in ["port=0", "port=65536", "port=http", "port="] {
            assert!(forwarded_ports(&q(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_decoding() {
        let pairs = url_pairs("command=sh&command=-c&command=echo%20hi+there&tty=true");
        assert_eq!(pairs[2], ("command".into(), "echo hi there".into()));
        assert_eq!(url_pairs("k=%zz%4")[0].1, "%zz%4");
    }

    #[test]
    fn percent_before_a_multibyte_character_does_not_panic() {
        // Used to slice inside the two-byte 'é' and panic the connection's task.
        assert_eq!(
            url_pairs("container=%aé&follow=true"),
            [
                ("container".to_string(), "%aé".to_string()),
                ("follow".to_string(), "true".to_string())
            ]
        );
        assert_eq!(url_pairs("%€x")[0].0, "%€x");
        assert_eq!(url_pairs("a=%C3%A9")[0].1, "é");
        assert_eq!(url_pairs("a=%FF")[0].1, "\u{FFFD}");
    }

    proptest::proptest! {
        #[test]
        fn query_decoding_never_panics(q in "(\\PC|%|&|=|\\+){0,64}") {
            let pairs = url_pairs(&q);
            proptest::prop_assert!(pairs.len() <= q.split('&').count());
        }

        #[test]
        fn encoded_pairs_round_trip(k in "\\PC{1,16}", v in "\\PC{0,16}") {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(&k, &v)
                .finish();
            proptest::prop_assert_eq!(url_pairs(&q), vec![(k, v)]);
        }
    }
}
