//! The agent's HTTPS server (:10250): `/healthz`, `/containerLogs/<ns>/<pod>/<container>` and
//! `/exec|attach/<ns>/<pod>/<container>` for the API server's node proxy. Callers present a
//! client certificate from the cluster CA; only the API server's kubelet-client identity and
//! cluster admins may read logs or exec.

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
use k8s_cri::v1::{ContainerState, ExecRequest};
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

/// Loads the configured serving certificate, or makes (once) a self-signed one under
/// `<rootDir>/pki` for the node's name and IP.
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
            let cert = dir.join("agent.crt");
            let key = dir.join("agent.key");
            if !(cert.exists() && key.exists()) {
                self_signed(settings, &dir, &cert, &key)?;
            }
            (read(&cert)?, read(&key)?)
        }
    };
    Ok(ServingTls {
        cert_pem,
        key_pem,
        client_ca_pem,
    })
}

fn self_signed(
    settings: &crate::Settings,
    dir: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(), AgentError> {
    let mut names = vec![settings.node_name.clone(), "localhost".to_string()];
    if let Some(ip) = settings.node_ip {
        names.push(ip.to_string());
    }
    names.push("127.0.0.1".into());
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| AgentError::Server(format!("generating a serving certificate: {e}")))?;
    let err = |e: std::io::Error| AgentError::Server(format!("writing {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::write(cert, generated.cert.pem()).map_err(err)?;
    let tmp = key.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(generated.signing_key.serialize_pem().as_bytes())
            .map_err(err)?;
    }
    std::fs::rename(&tmp, key).map_err(err)?;
    Ok(())
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

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn flag(q: &HashMap<String, Vec<String>>, k: &str) -> bool {
    q.get(k)
        .and_then(|v| v.first())
        .is_some_and(|v| v == "true" || v == "1")
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
            let verb = verb.to_string();
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            exec(manager, &verb, &ns, &pod, &container, req).await
        }
        _ => full(
            StatusCode::NOT_FOUND,
            format!("404 page not found: {path}\n"),
        ),
    }
}

async fn find_container(
    manager: &PodManager,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<k8s_cri::v1::ContainerStatus, Response<Body>> {
    let Some(p) = manager.find(ns, pod) else {
        return Err(full(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on this node\n"),
        ));
    };
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
    let status = match find_container(manager, ns, pod, container, previous).await {
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

/// Asks the runtime for a streaming URL and proxies the client's (upgrading) request to it,
/// like the kubelet with `--redirect-container-streaming=false`.
async fn exec(
    manager: &PodManager,
    verb: &str,
    ns: &str,
    pod: &str,
    container: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let status = match find_container(manager, ns, pod, container, false).await {
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
    let command: Vec<String> = q.get("command").cloned().unwrap_or_default();
    if verb == "exec" && command.is_empty() {
        return full(StatusCode::BAD_REQUEST, "exec needs at least one command\n");
    }
    let runtime = manager.runtime();
    let request = ExecRequest {
        container_id: status.id.clone(),
        cmd: command,
        tty: flag(&q, "tty"),
        stdin: flag(&q, "stdin") || flag(&q, "input"),
        stdout: flag(&q, "stdout") || flag(&q, "output"),
        stderr: flag(&q, "stderr") || flag(&q, "error"),
    };
    let url = if verb == "exec" {
        runtime.exec(request).await
    } else {
        Err(crate::runtime::RuntimeError::Call {
            op: "Attach",
            code: tonic::Code::Unimplemented,
            message: "attach is not supported by kinit agent; use exec".into(),
        })
    };
    let url = match url {
        Ok(u) => u,
        Err(e) => return full(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
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

    #[test]
    fn query_decoding() {
        let pairs = url_pairs("command=sh&command=-c&command=echo%20hi+there&tty=true");
        assert_eq!(pairs[2], ("command".into(), "echo hi there".into()));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
