//! The DNS server: listeners, the per-query plugin chain (loop probes → kubernetes → cache →
//! forward), live configuration reloads, the record builder and the HTTP endpoints.
//!
//! The UDP and TCP loops are written here rather than using hickory-server's `ServerFuture`:
//! that one spawns a task and builds a response message per query, while cluster answers here
//! are prepared bytes copied into a reused buffer on the receiving task (see `wire`). Each UDP
//! worker owns an `SO_REUSEPORT` socket, so the kernel spreads clients over the workers.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cache::{Cache, EntryKind};
use crate::corefile::{self, Corefile, ForwardConfig, KubernetesConfig, PodMode, UpstreamSpec};
use crate::forward::{self, ForwardError, ForwardTimeouts, Forwarder, LoopProbes};
use crate::http::{self as web, DelegatedAuth, HttpListener};
use crate::metrics::{BlockMetrics, Metrics, QueryRecord, Responder};
use crate::records::{Answer, ClusterSnapshot, RecordTable};
use crate::watch::{ClusterSource, ClusterWatch};
use crate::wire::{self, in_zone, NameKey, Parsed, Prepared, Request, WriteOpts};
use crate::DnsError;

/// How a server is started (the library form of `kinit dns`'s flags).
#[derive(Clone)]
pub struct ServerOptions {
    /// The Corefile.
    pub corefile: PathBuf,
    /// Where records come from.
    pub cluster: ClusterSource,
    /// Address DNS listeners bind (default: all, IPv6 and IPv4).
    pub listen_ip: Option<IpAddr>,
    /// Replaces every server block's port (0: a free port); for tests.
    pub dns_port: Option<u16>,
    /// Liveness address when the Corefile's `health` names none.
    pub health_addr: SocketAddr,
    /// Readiness address when the Corefile's `ready` names none.
    pub ready_addr: SocketAddr,
    /// Replaces the `prometheus` address; for tests.
    pub metrics_addr: Option<SocketAddr>,
    /// UDP sockets (and receive loops) per port; 0 means one per CPU.
    pub udp_workers: usize,
    /// Forwarding time limits.
    pub forward_timeouts: ForwardTimeouts,
    /// This server's own addresses (for `ns.dns.<zone>`); default: the interfaces' addresses.
    pub local_ips: Option<Vec<IpAddr>>,
    /// Replaces the `reload` interval; for tests.
    pub reload_interval: Option<Duration>,
    /// How long metrics authentication decisions are cached.
    pub auth_cache_ttl: Duration,
}

impl ServerOptions {
    /// Defaults: CoreDNS's ports (health 8080, ready 8181) on all addresses.
    pub fn new(corefile: impl Into<PathBuf>, cluster: ClusterSource) -> ServerOptions {
        ServerOptions {
            corefile: corefile.into(),
            cluster,
            listen_ip: None,
            dns_port: None,
            health_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080),
            ready_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8181),
            metrics_addr: None,
            udp_workers: 0,
            forward_timeouts: ForwardTimeouts::default(),
            local_ips: None,
            reload_interval: None,
            auth_cache_ttl: Duration::from_secs(10),
        }
    }

    /// Everything on 127.0.0.1 with free ports: for tests and benchmarks.
    pub fn loopback(corefile: impl Into<PathBuf>, cluster: ClusterSource) -> ServerOptions {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        ServerOptions {
            listen_ip: Some(lo),
            dns_port: Some(0),
            health_addr: SocketAddr::new(lo, 0),
            ready_addr: SocketAddr::new(lo, 0),
            metrics_addr: Some(SocketAddr::new(lo, 0)),
            local_ips: Some(vec![]),
            ..ServerOptions::new(corefile, cluster)
        }
    }
}

enum Cluster {
    Kube(Box<ClusterWatch>),
    Static(Arc<ClusterSnapshot>),
}

impl Cluster {
    fn snapshot(&self) -> (ClusterSnapshot, bool) {
        match self {
            Cluster::Kube(w) => {
                let synced = w.synced();
                (w.snapshot(), synced)
            }
            Cluster::Static(s) => ((**s).clone(), true),
        }
    }

    fn want_pods(&self, want: bool) {
        if let Cluster::Kube(w) = self {
            w.want_pods(want);
        }
    }
}

struct KubeBlock {
    cfg: KubernetesConfig,
    table: ArcSwap<RecordTable>,
}

struct Block {
    zones: Vec<Box<[u8]>>,
    kubernetes: Option<KubeBlock>,
    forward: Option<Arc<Forwarder>>,
    cache: Option<Arc<Cache>>,
    loadbalance: bool,
    log: bool,
    errors: bool,
    metrics: BlockMetrics,
}

/// Process-wide settings taken from the blocks.
#[derive(Debug, Clone, PartialEq)]
struct Global {
    health: SocketAddr,
    lameduck: Duration,
    ready: SocketAddr,
    metrics: Option<SocketAddr>,
    reload: Option<Duration>,
}

struct ServingState {
    blocks: Vec<Block>,
    /// Block indices per port, most specific zone first.
    ports: HashMap<u16, Vec<usize>>,
    resolv: Vec<(PathBuf, Vec<SocketAddr>)>,
    global: Global,
}

impl ServingState {
    fn select(&self, port: u16, key: &NameKey) -> Option<usize> {
        self.ports.get(&port)?.iter().copied().find(|&i| {
            self.blocks[i]
                .zones
                .iter()
                .any(|z| in_zone(key.as_bytes(), z))
        })
    }
}

struct DnsListener {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsListener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Default)]
struct Listeners {
    dns: HashMap<u16, DnsListener>,
    health: Option<HttpListener>,
    ready: Option<HttpListener>,
    metrics: Option<HttpListener>,
}

#[derive(Default, Clone)]
struct BoundAddrs {
    dns: Vec<SocketAddr>,
    health: Option<SocketAddr>,
    ready: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
}

struct Shared {
    opts: ServerOptions,
    state: ArcSwap<ServingState>,
    probes: Arc<LoopProbes>,
    metrics: Arc<Metrics>,
    rotate: AtomicUsize,
    cluster: Cluster,
    rebuild: Arc<Notify>,
    records_synced: AtomicBool,
    local_ips: Vec<IpAddr>,
    addrs: Mutex<BoundAddrs>,
    auth: Option<Arc<DelegatedAuth>>,
    metrics_tls: Mutex<Option<Arc<rustls::ServerConfig>>>,
}

/// A running DNS server.
pub struct DnsServer {
    shared: Arc<Shared>,
    listeners: Arc<tokio::sync::Mutex<Listeners>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Clone, Copy)]
struct Ctx {
    port: u16,
    tcp: bool,
    peer: SocketAddr,
    start: Instant,
}

enum JobKind {
    Forward,
    Chase(Box<(Record, Name)>),
    Probe(Arc<forward::Probe>),
}

struct Job {
    state: Arc<ServingState>,
    block: usize,
    req: Request,
    ctx: Ctx,
    kind: JobKind,
}

enum Step {
    Reply,
    Pending(Box<Job>),
    Drop,
}

fn interface_ips() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            let ip = v6.ip();
            // Link-local addresses are not reachable through a Service.
            if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                out.push(IpAddr::V6(ip));
            }
        }
    }
    out.retain(|ip| !ip.is_loopback());
    out
}

fn unix_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

fn is_ipv6_peer(peer: &SocketAddr) -> bool {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none(),
        IpAddr::V4(_) => false,
    }
}

fn bind_error(what: &str, addr: SocketAddr, source: io::Error) -> DnsError {
    DnsError::Bind {
        what: what.to_string(),
        addr,
        source,
    }
}

/// Binds UDP (one socket per worker, SO_REUSEPORT) and TCP on `ip:port`.
fn bind_dns(
    ip: Option<IpAddr>,
    port: u16,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, std::net::TcpListener, SocketAddr), DnsError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let candidates: Vec<IpAddr> = match ip {
        Some(ip) => vec![ip],
        None => vec![
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ],
    };
    let mut last_err = None;
    for ip in candidates {
        // With port 0 the UDP port is chosen first; TCP may find it taken, so retry.
        for _ in 0..8 {
            let domain = if ip.is_ipv6() {
                Domain::IPV6
            } else {
                Domain::IPV4
            };
            let udp_socket = |addr: SocketAddr| -> io::Result<std::net::UdpSocket> {
                let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
                if ip.is_ipv6() {
                    s.set_only_v6(false)?;
                }
                s.set_reuse_port(true)?;
                s.set_nonblocking(true)?;
                let _ = s.set_recv_buffer_size(4 << 20);
                s.bind(&addr.into())?;
                Ok(s.into())
            };
            let first = match udp_socket(SocketAddr::new(ip, port)) {
                Ok(s) => s,
                Err(e) => {
                    last_err = Some(bind_error("UDP", SocketAddr::new(ip, port), e));
                    break;
                }
            };
            let bound = match first.local_addr() {
                Ok(a) => a,
                Err(e) => return Err(bind_error("UDP", SocketAddr::new(ip, port), e)),
            };
            let mut udp = vec![first];
            for _ in 1..workers.max(1) {
                udp.push(udp_socket(bound).map_err(|e| bind_error("UDP", bound, e))?);
            }
            let tcp = (|| -> io::Result<std::net::TcpListener> {
                let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
                if ip.is_ipv6() {
                    s.set_only_v6(false)?;
                }
                s.set_reuse_address(true)?;
                s.set_nonblocking(true)?;
                s.bind(&bound.into())?;
                s.listen(1024)?;
                Ok(s.into())
            })();
            match tcp {
                Ok(t) => return Ok((udp, t, bound)),
                Err(e) if port == 0 => {
                    last_err = Some(bind_error("TCP", bound, e));
                    continue;
                }
                Err(e) => return Err(bind_error("TCP", bound, e)),
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        bind_error(
            "UDP",
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            io::Error::other("no address to bind"),
        )
    }))
}

impl Shared {
    fn handle(self: &Arc<Self>, buf: &[u8], ctx: Ctx, out: &mut Vec<u8>) -> Step {
        let req = match wire::parse_request(buf, out) {
            Parsed::Query(r) => r,
            Parsed::ErrorReply(_) => return Step::Reply,
            Parsed::Drop => return Step::Drop,
        };
        let state = self.state.load();
        let Some(bi) = state.select(ctx.port, &req.key) else {
            // No server block for this zone.
            wire::write_error(
                out,
                req.id,
                OpCode::Query,
                req.rd,
                ResponseCode::Refused,
                Some(&req),
            );
            return Step::Reply;
        };
        let block = &state.blocks[bi];
        if req.qtype == u16::from(RecordType::HINFO) {
            if let Some(p) = self.probes.get(&req.key) {
                return Step::Pending(Box::new(Job {
                    state: arc_swap::Guard::into_inner(state),
                    block: bi,
                    req,
                    ctx,
                    kind: JobKind::Probe(p),
                }));
            }
        }
        // Cluster records are class IN (ANY accepted); other classes go on to forward.
        let kubernetes = block
            .kubernetes
            .as_ref()
            .filter(|_| req.qclass == 1 || req.qclass == 255);
        if let Some(k) = kubernetes {
            let table = k.table.load();
            match table.lookup(&req.key, req.qtype) {
                Answer::Prepared(p) => {
                    self.respond(block, &req, ctx, p, None, Responder::Kubernetes, out);
                    return Step::Reply;
                }
                Answer::Built(p) => {
                    self.respond(block, &req, ctx, &p, None, Responder::Kubernetes, out);
                    return Step::Reply;
                }
                Answer::Chase { cname, target } => {
                    let kind = JobKind::Chase(Box::new((cname.clone(), target.clone())));
                    drop(table);
                    return Step::Pending(Box::new(Job {
                        state: arc_swap::Guard::into_inner(state),
                        block: bi,
                        req,
                        ctx,
                        kind,
                    }));
                }
                Answer::Refused => {
                    self.error(
                        block,
                        &req,
                        ctx,
                        ResponseCode::Refused,
                        Responder::Kubernetes,
                        out,
                    );
                    return Step::Reply;
                }
                Answer::ServFail => {
                    self.error(
                        block,
                        &req,
                        ctx,
                        ResponseCode::ServFail,
                        Responder::Kubernetes,
                        out,
                    );
                    return Step::Reply;
                }
                Answer::Fallthrough | Answer::NotInZone => {}
            }
        }
        if let Some(c) = &block.cache {
            if c.covers(&req.key) {
                if let Some(hit) = c.get(&req, Instant::now()) {
                    block.metrics.cache_hit(hit.kind != EntryKind::Success);
                    self.respond(
                        block,
                        &req,
                        ctx,
                        &hit.prepared,
                        hit.ttl,
                        Responder::Cache,
                        out,
                    );
                    return Step::Reply;
                }
                block.metrics.cache_miss();
            }
        }
        if block.forward.as_ref().is_some_and(|f| f.handles(&req.key)) {
            return Step::Pending(Box::new(Job {
                state: arc_swap::Guard::into_inner(state),
                block: bi,
                req,
                ctx,
                kind: JobKind::Forward,
            }));
        }
        self.error(
            block,
            &req,
            ctx,
            ResponseCode::ServFail,
            Responder::Server,
            out,
        );
        Step::Reply
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        block: &Block,
        req: &Request,
        ctx: Ctx,
        p: &Prepared,
        ttl: Option<u32>,
        responder: Responder,
        out: &mut Vec<u8>,
    ) {
        let max_size = if ctx.tcp {
            wire::MAX_TCP_MESSAGE
        } else {
            req.udp_limit()
        };
        let rotate = if block.loadbalance {
            self.rotate.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        wire::write_response(
            out,
            req,
            p,
            &WriteOpts {
                max_size,
                ttl,
                rotate,
            },
        );
        self.account(block, req, ctx, p.rcode as u16, responder, out);
    }

    fn error(
        &self,
        block: &Block,
        req: &Request,
        ctx: Ctx,
        rcode: ResponseCode,
        responder: Responder,
        out: &mut Vec<u8>,
    ) {
        wire::write_error(out, req.id, OpCode::Query, req.rd, rcode, Some(req));
        self.account(block, req, ctx, u16::from(rcode), responder, out);
    }

    fn account(
        &self,
        block: &Block,
        req: &Request,
        ctx: Ctx,
        rcode: u16,
        responder: Responder,
        out: &[u8],
    ) {
        let seconds = ctx.start.elapsed().as_secs_f64();
        block.metrics.record(&QueryRecord {
            tcp: ctx.tcp,
            ipv6: is_ipv6_peer(&ctx.peer),
            qtype: req.qtype,
            rcode,
            responder,
            seconds,
            request_size: req.size,
            response_size: out.len(),
        });
        if block.log {
            let flags = out
                .get(2..4)
                .map(|f| u16::from_be_bytes([f[0], f[1]]))
                .unwrap_or(0);
            let mut fl = vec!["qr"];
            for (bit, name) in [
                (0x0400, "aa"),
                (0x0200, "tc"),
                (0x0100, "rd"),
                (0x0080, "ra"),
            ] {
                if flags & bit != 0 {
                    fl.push(name);
                }
            }
            tracing::info!(
                target: "kinit_dns::log",
                "{} - {} \"{} IN {} {} {} {} {}\" {} {} {} {:.6}s",
                ctx.peer,
                req.id,
                req.record_type(),
                req.name(),
                if ctx.tcp { "tcp" } else { "udp" },
                req.size,
                req.edns.is_some_and(|e| e.dnssec_ok),
                req.edns.map(|e| e.payload).unwrap_or(512),
                crate::metrics::rcode_label(rcode),
                fl.join(","),
                out.len(),
                seconds
            );
        }
    }

    async fn complete(self: &Arc<Self>, job: Box<Job>, out: &mut Vec<u8>) {
        let Job {
            state,
            block,
            req,
            ctx,
            kind,
        } = *job;
        let b = &state.blocks[block];
        match kind {
            JobKind::Forward => {
                let Some(f) = b.forward.clone() else {
                    return self.error(
                        b,
                        &req,
                        ctx,
                        ResponseCode::ServFail,
                        Responder::Server,
                        out,
                    );
                };
                match f.forward(&req, ctx.tcp).await {
                    Ok(msg) => self.relay(b, &req, ctx, &msg, Responder::Forward, out),
                    Err(ForwardError::MaxConcurrent(_)) => {
                        self.error(b, &req, ctx, ResponseCode::Refused, Responder::Forward, out)
                    }
                    Err(e) => {
                        if b.errors {
                            tracing::error!("{} {}: {e}", req.record_type(), req.name());
                        } else {
                            tracing::debug!("{} {}: {e}", req.record_type(), req.name());
                        }
                        self.error(
                            b,
                            &req,
                            ctx,
                            ResponseCode::ServFail,
                            Responder::Forward,
                            out,
                        )
                    }
                }
            }
            JobKind::Chase(chase) => {
                let (cname, target) = *chase;
                let mut answers = vec![cname];
                let mut authorities = Vec::new();
                let mut rcode = ResponseCode::NoError;
                if let Some(msg) = self.resolve(&state, ctx, &target, &req, 1).await {
                    rcode = msg.metadata.response_code;
                    if msg.answers.is_empty() {
                        authorities = msg.authorities;
                    }
                    answers.extend(msg.answers);
                }
                match wire::prepare(
                    &req.key.to_name(),
                    req.record_type(),
                    rcode,
                    true,
                    &answers,
                    &authorities,
                    &[],
                ) {
                    Ok(p) => self.respond(b, &req, ctx, &p, None, Responder::Kubernetes, out),
                    Err(e) => {
                        tracing::error!("{e}");
                        self.error(
                            b,
                            &req,
                            ctx,
                            ResponseCode::ServFail,
                            Responder::Kubernetes,
                            out,
                        )
                    }
                }
            }
            JobKind::Probe(probe) => {
                let hits = probe.hits.fetch_add(1, Ordering::SeqCst) + 1;
                let Some(f) = probe.forwarder.upgrade() else {
                    return self.error(b, &req, ctx, ResponseCode::ServFail, Responder::Loop, out);
                };
                if hits > forward::LOOP_HITS_ALLOWED {
                    let listen = self
                        .addrs
                        .lock()
                        .map(|a| {
                            a.dns
                                .iter()
                                .map(|x| x.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    f.refuse(probe.upstream, &listen);
                    return self.error(b, &req, ctx, ResponseCode::ServFail, Responder::Loop, out);
                }
                match f.forward_via(probe.upstream, &req, ctx.tcp).await {
                    Ok(msg) => self.relay(b, &req, ctx, &msg, Responder::Loop, out),
                    Err(_) => {
                        self.error(b, &req, ctx, ResponseCode::ServFail, Responder::Loop, out)
                    }
                }
            }
        }
    }

    /// Sends an upstream answer on, caching it.
    fn relay(
        &self,
        b: &Block,
        req: &Request,
        ctx: Ctx,
        msg: &Message,
        responder: Responder,
        out: &mut Vec<u8>,
    ) {
        match wire::prepare_from_message(req, msg) {
            Ok(p) => {
                let p = Arc::new(p);
                // Served with the capped TTL right away, like every later cache hit.
                let ttl = b
                    .cache
                    .as_ref()
                    .filter(|c| c.covers(&req.key))
                    .and_then(|c| c.insert(req, msg, p.clone(), Instant::now()));
                self.respond(b, req, ctx, &p, ttl, responder, out);
            }
            Err(e) => {
                tracing::warn!("relaying the answer to {}: {e}", req.name());
                self.error(b, req, ctx, ResponseCode::ServFail, responder, out);
            }
        }
    }

    /// Resolves `name` (same type as `like`) through this server's own chain: cluster records,
    /// cache, forward. For CNAME targets.
    fn resolve<'a>(
        self: &'a Arc<Self>,
        state: &'a Arc<ServingState>,
        ctx: Ctx,
        name: &'a Name,
        like: &'a Request,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Message>> + Send + 'a>> {
        Box::pin(async move {
            if depth > 8 {
                return None;
            }
            let req = Request::internal(name, like.qtype, like)?;
            let bi = state.select(ctx.port, &req.key)?;
            let b = &state.blocks[bi];
            let lname = req.key.to_name();
            if let Some(k) = &b.kubernetes {
                let table = k.table.load_full();
                match table.lookup(&req.key, req.qtype) {
                    Answer::Prepared(p) => return p.to_message(&lname, req.record_type()),
                    Answer::Built(p) => return p.to_message(&lname, req.record_type()),
                    Answer::Chase { cname, target } => {
                        let cname = cname.clone();
                        let target = target.clone();
                        let mut msg = self
                            .resolve(state, ctx, &target, like, depth + 1)
                            .await
                            .unwrap_or_else(|| Message::response(0, OpCode::Query));
                        msg.answers.insert(0, cname);
                        return Some(msg);
                    }
                    Answer::Refused | Answer::ServFail => return None,
                    Answer::Fallthrough | Answer::NotInZone => {}
                }
            }
            if let Some(c) = &b.cache {
                if c.covers(&req.key) {
                    if let Some(hit) = c.get(&req, Instant::now()) {
                        let mut m = hit.prepared.to_message(&lname, req.record_type())?;
                        if let Some(ttl) = hit.ttl {
                            for r in m.answers.iter_mut().chain(m.authorities.iter_mut()) {
                                r.ttl = ttl;
                            }
                        }
                        return Some(m);
                    }
                }
            }
            let f = b.forward.as_ref().filter(|f| f.handles(&req.key))?;
            let msg = f.forward(&req, ctx.tcp).await.ok()?;
            if let Some(c) = &b.cache {
                if c.covers(&req.key) {
                    if let Ok(p) = wire::prepare_from_message(&req, &msg) {
                        c.insert(&req, &msg, Arc::new(p), Instant::now());
                    }
                }
            }
            Some(msg)
        })
    }

    fn rebuild_tables(&self) {
        let (snap, synced) = self.cluster.snapshot();
        let state = self.state.load();
        let serial = unix_serial();
        for b in &state.blocks {
            if let Some(k) = &b.kubernetes {
                let t = RecordTable::build(&k.cfg, &snap, &self.local_ips, synced, serial);
                k.table.store(Arc::new(t));
            }
        }
        if synced && !self.records_synced.swap(true, Ordering::SeqCst) {
            tracing::info!(
                "cluster DNS: records built from {}",
                crate::watch::describe(&snap)
            );
        }
    }

    fn ready(&self) -> bool {
        self.records_synced.load(Ordering::SeqCst)
    }
}

async fn udp_worker(sock: Arc<UdpSocket>, shared: Arc<Shared>, port: u16) {
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they are not fatal.
                tracing::trace!("udp receive: {e}");
                continue;
            }
        };
        let ctx = Ctx {
            port,
            tcp: false,
            peer,
            start: Instant::now(),
        };
        match shared.handle(&buf[..n], ctx, &mut out) {
            Step::Reply => {
                let _ = sock.send_to(&out, peer).await;
            }
            Step::Pending(job) => {
                let sock = sock.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut out = Vec::with_capacity(1024);
                    shared.complete(job, &mut out).await;
                    let _ = sock.send_to(&out, peer).await;
                });
            }
            Step::Drop => {}
        }
    }
}

const TCP_IDLE: Duration = Duration::from_secs(10);

async fn tcp_connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, port: u16) {
    let _ = stream.set_nodelay(true);
    let mut out = Vec::with_capacity(4096);
    let mut framed = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let ctx = Ctx {
            port,
            tcp: true,
            peer,
            start: Instant::now(),
        };
        match shared.handle(&msg, ctx, &mut out) {
            Step::Reply => {}
            Step::Pending(job) => shared.complete(job, &mut out).await,
            Step::Drop => return,
        }
        framed.clear();
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

async fn tcp_acceptor(listener: TcpListener, shared: Arc<Shared>, port: u16) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(tcp_connection(stream, peer, shared.clone(), port));
            }
            Err(e) => {
                tracing::warn!("dns tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn strip_line(mut f: ForwardConfig) -> ForwardConfig {
    f.line = 0;
    f
}

fn resolve_upstreams(
    cfg: &ForwardConfig,
    resolv: &mut Vec<(PathBuf, Vec<SocketAddr>)>,
) -> Result<Vec<SocketAddr>, DnsError> {
    let mut out = Vec::new();
    for spec in &cfg.to {
        match spec {
            UpstreamSpec::Addr(a) => out.push(*a),
            UpstreamSpec::ResolvConf(path) => {
                let addrs = forward::read_resolv_conf(path).map_err(|e| DnsError::ResolvConf {
                    path: path.clone(),
                    line: cfg.line,
                    message: e.to_string(),
                })?;
                if addrs.is_empty() {
                    return Err(DnsError::ResolvConf {
                        path: path.clone(),
                        line: cfg.line,
                        message: "it has no nameserver line".into(),
                    });
                }
                resolv.push((path.clone(), addrs.clone()));
                out.extend(addrs);
            }
        }
    }
    out.dedup();
    Ok(out)
}

impl DnsServer {
    /// Reads the Corefile, binds the listeners and starts serving. A Corefile error is fatal
    /// here (later, at reload, the running configuration is kept).
    pub async fn start(opts: ServerOptions) -> Result<DnsServer, DnsError> {
        let text = tokio::fs::read_to_string(&opts.corefile)
            .await
            .map_err(|source| DnsError::ReadCorefile {
                path: opts.corefile.clone(),
                source,
            })?;
        let metrics = Arc::new(Metrics::new().map_err(|e| DnsError::Metrics(e.to_string()))?);
        let rebuild = Arc::new(Notify::new());
        let (cluster, auth) = match &opts.cluster {
            ClusterSource::Kube(client) => (
                Cluster::Kube(Box::new(ClusterWatch::start(
                    client.clone(),
                    rebuild.clone(),
                ))),
                Some(Arc::new(DelegatedAuth::new(
                    client.clone(),
                    "/metrics",
                    opts.auth_cache_ttl,
                ))),
            ),
            ClusterSource::Static(s) => (Cluster::Static(s.clone()), None),
        };
        let local_ips = opts.local_ips.clone().unwrap_or_else(interface_ips);
        let empty = ServingState {
            blocks: Vec::new(),
            ports: HashMap::new(),
            resolv: Vec::new(),
            global: Global {
                health: opts.health_addr,
                lameduck: Duration::ZERO,
                ready: opts.ready_addr,
                metrics: None,
                reload: None,
            },
        };
        let shared = Arc::new(Shared {
            opts,
            state: ArcSwap::from_pointee(empty),
            probes: Arc::new(LoopProbes::default()),
            metrics,
            rotate: AtomicUsize::new(0),
            cluster,
            rebuild,
            records_synced: AtomicBool::new(false),
            local_ips,
            addrs: Mutex::new(BoundAddrs::default()),
            auth,
            metrics_tls: Mutex::new(None),
        });
        let listeners = Arc::new(tokio::sync::Mutex::new(Listeners::default()));
        {
            let mut l = listeners.lock().await;
            apply(&shared, &mut l, &text).await?;
        }
        let mut tasks = Vec::new();
        // Record builder: rebuilds the tables after every change (coalescing bursts).
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                s.rebuild.notified().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                let s2 = s.clone();
                let _ = tokio::task::spawn_blocking(move || s2.rebuild_tables()).await;
            }
        }));
        shared.rebuild.notify_one();
        // Reload: re-reads the Corefile (and resolv.conf upstreams) while `reload` is set.
        let s = shared.clone();
        let l = listeners.clone();
        tasks.push(tokio::spawn(async move {
            let mut last_text = text;
            loop {
                let state = s.state.load_full();
                let Some(interval) = state.global.reload else {
                    tokio::time::sleep(corefile::DEFAULT_RELOAD_INTERVAL).await;
                    continue;
                };
                tokio::time::sleep(s.opts.reload_interval.unwrap_or(interval)).await;
                let text = match tokio::fs::read_to_string(&s.opts.corefile).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(
                            "reload: reading {}: {e}; keeping the running configuration",
                            s.opts.corefile.display()
                        );
                        continue;
                    }
                };
                let resolv_changed = state.resolv.iter().any(|(path, addrs)| {
                    forward::read_resolv_conf(path).is_ok_and(|now| &now != addrs)
                });
                if text == last_text && !resolv_changed {
                    continue;
                }
                let mut guard = l.lock().await;
                match apply(&s, &mut guard, &text).await {
                    Ok(()) => tracing::info!(
                        "reload: {} applied",
                        if text != last_text {
                            "new Corefile"
                        } else {
                            "changed upstreams"
                        }
                    ),
                    Err(e) => {
                        s.metrics.reload_failed.inc();
                        tracing::error!("reload: {e}; keeping the running configuration");
                    }
                }
                last_text = text;
            }
        }));
        Ok(DnsServer {
            shared,
            listeners,
            tasks,
        })
    }

    /// The bound DNS addresses (UDP and TCP share them).
    pub fn dns_addrs(&self) -> Vec<SocketAddr> {
        self.shared
            .addrs
            .lock()
            .map(|a| a.dns.clone())
            .unwrap_or_default()
    }

    /// The first bound DNS address.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addrs().first().copied()
    }

    /// The `/health` address.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.shared.addrs.lock().ok().and_then(|a| a.health)
    }

    /// The `/ready` address.
    pub fn ready_addr(&self) -> Option<SocketAddr> {
        self.shared.addrs.lock().ok().and_then(|a| a.ready)
    }

    /// The HTTPS `/metrics` address, when `prometheus` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.shared.addrs.lock().ok().and_then(|a| a.metrics)
    }

    /// The metrics text (what an authorized scrape gets).
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }

    /// Whether the records are built from a synced view of the cluster.
    pub fn is_ready(&self) -> bool {
        self.shared.ready()
    }

    /// Waits until ready or `timeout`; returns readiness.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The `health` plugin's lameduck duration.
    pub fn lameduck(&self) -> Duration {
        self.shared.state.load().global.lameduck
    }

    /// Stops every listener and task.
    pub async fn shutdown(self) {
        let mut l = self.listeners.lock().await;
        *l = Listeners::default();
        drop(l);
        drop(self);
    }
}

/// Parses `text` and makes it the running configuration: binds new listeners first (so a
/// failure leaves the old configuration serving), builds the blocks, swaps them in.
async fn apply(shared: &Arc<Shared>, l: &mut Listeners, text: &str) -> Result<(), DnsError> {
    let opts = &shared.opts;
    let cf: Corefile = corefile::parse(text).map_err(|source| DnsError::Corefile {
        path: opts.corefile.clone(),
        source,
    })?;
    for w in &cf.warnings {
        tracing::warn!("{w}");
    }
    let port_of = |b: &corefile::ServerBlock| opts.dns_port.unwrap_or(b.port);
    let ports: HashSet<u16> = cf.blocks.iter().map(port_of).collect();
    // Resolve upstreams before touching anything.
    let mut resolv = Vec::new();
    let mut upstreams = Vec::new();
    for b in &cf.blocks {
        upstreams.push(match &b.forward {
            Some(f) => Some(resolve_upstreams(f, &mut resolv)?),
            None => None,
        });
    }
    // Listeners for new ports.
    let workers = if opts.udp_workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.udp_workers
    };
    for &port in &ports {
        if l.dns.contains_key(&port) {
            continue;
        }
        let (udp, tcp, addr) = bind_dns(opts.listen_ip, port, workers)?;
        let mut tasks = Vec::new();
        for s in udp {
            let sock = Arc::new(UdpSocket::from_std(s).map_err(|e| bind_error("UDP", addr, e))?);
            tasks.push(tokio::spawn(udp_worker(sock, shared.clone(), port)));
        }
        let tcp = TcpListener::from_std(tcp).map_err(|e| bind_error("TCP", addr, e))?;
        tasks.push(tokio::spawn(tcp_acceptor(tcp, shared.clone(), port)));
        tracing::info!("dns: listening on {addr} (udp, tcp)");
        l.dns.insert(port, DnsListener { addr, tasks });
    }
    let listen: Vec<SocketAddr> = ports
        .iter()
        .filter_map(|p| l.dns.get(p).map(|d| d.addr))
        .collect();

    // Process-wide endpoints.
    let health = cf.blocks.iter().find_map(|b| b.health);
    let global = Global {
        health: health
            .and_then(|h| h.addr)
            .map(|a| a.socket_addr())
            .unwrap_or(opts.health_addr),
        lameduck: health.map(|h| h.lameduck).unwrap_or_default(),
        ready: cf
            .blocks
            .iter()
            .find_map(|b| b.ready.flatten())
            .map(|a| a.socket_addr())
            .unwrap_or(opts.ready_addr),
        metrics: cf
            .blocks
            .iter()
            .find_map(|b| b.prometheus)
            .map(|a| opts.metrics_addr.unwrap_or_else(|| a.socket_addr())),
        reload: cf.blocks.iter().find_map(|b| b.reload).map(|r| r.interval),
    };

    // Blocks, reusing forwarders and caches whose settings did not change.
    let old = shared.state.load_full();
    let old_forwarders: Vec<Arc<Forwarder>> = old
        .blocks
        .iter()
        .filter_map(|b| b.forward.clone())
        .collect();
    let old_caches: Vec<Arc<Cache>> = old.blocks.iter().filter_map(|b| b.cache.clone()).collect();
    let (snap, synced) = shared.cluster.snapshot();
    let serial = unix_serial();
    shared.metrics.clear_plugins();
    let mut blocks = Vec::new();
    let mut new_forwarders = Vec::new();
    for (b, addrs) in cf.blocks.iter().zip(upstreams) {
        let server = format!("dns://:{}", b.port);
        let zone = b
            .zones
            .first()
            .map(|z| z.to_string())
            .unwrap_or_else(|| ".".into());
        let mut plugins = Vec::new();
        for (on, name) in [
            (b.kubernetes.is_some(), "kubernetes"),
            (b.forward.is_some(), "forward"),
            (b.cache.is_some(), "cache"),
            (b.loop_detect, "loop"),
            (b.log, "log"),
            (b.errors, "errors"),
            (b.loadbalance, "loadbalance"),
            (b.prometheus.is_some(), "prometheus"),
        ] {
            if on {
                plugins.push(name);
            }
        }
        let metrics = shared.metrics.block(&server, &zone, &plugins);
        let forward = match (&b.forward, addrs) {
            (Some(f), Some(addrs)) => {
                let wanted = strip_line(f.clone());
                let reuse = old_forwarders.iter().find(|o| {
                    let (cfg, a, t) = o.identity();
                    strip_line(cfg.clone()) == wanted
                        && a == addrs.as_slice()
                        && t == opts.forward_timeouts
                });
                Some(match reuse {
                    Some(o) => o.clone(),
                    None => {
                        let m = shared.metrics.clone();
                        let fwd = Forwarder::new(
                            f.clone(),
                            addrs,
                            &listen,
                            |to| m.upstream(to),
                            opts.forward_timeouts,
                            shared.metrics.forward_max_concurrent_rejects.clone(),
                        );
                        if b.loop_detect {
                            new_forwarders.push(fwd.clone());
                        }
                        fwd
                    }
                })
            }
            _ => None,
        };
        let cache = b.cache.as_ref().map(|c| {
            old_caches
                .iter()
                .find(|o| o.config() == c)
                .cloned()
                .unwrap_or_else(|| Arc::new(Cache::new(c.clone(), Some(metrics.cache_entries()))))
        });
        let kubernetes = b.kubernetes.as_ref().map(|k| KubeBlock {
            cfg: k.clone(),
            table: ArcSwap::from_pointee(RecordTable::build(
                k,
                &snap,
                &shared.local_ips,
                synced,
                serial,
            )),
        });
        blocks.push(Block {
            zones: b
                .zones
                .iter()
                .filter_map(|z| NameKey::from_name(z, true))
                .map(|k| k.as_bytes().into())
                .collect(),
            kubernetes,
            forward,
            cache,
            loadbalance: b.loadbalance,
            log: b.log,
            errors: b.errors,
            metrics,
        });
    }
    let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
    for (i, b) in cf.blocks.iter().enumerate() {
        by_port.entry(port_of(b)).or_default().push(i);
    }
    for idx in by_port.values_mut() {
        idx.sort_by_key(|&i| {
            std::cmp::Reverse(blocks[i].zones.iter().map(|z| z.len()).max().unwrap_or(0))
        });
    }
    let want_pods = cf.blocks.iter().any(|b| {
        b.kubernetes
            .as_ref()
            .is_some_and(|k| k.pods == PodMode::Verified)
    });

    // HTTP endpoints whose address changed.
    let old_global = &old.global;
    let first = l.health.is_none();
    if first || old_global.health != global.health {
        l.health = Some(
            web::serve(
                global.health,
                None,
                web::simple("/health", || (StatusCode::OK, "OK".to_string())),
            )
            .await
            .map_err(|e| bind_error("health", global.health, e))?,
        );
    }
    if first || old_global.ready != global.ready {
        let s = shared.clone();
        l.ready = Some(
            web::serve(
                global.ready,
                None,
                web::simple("/ready", move || {
                    if s.ready() {
                        (StatusCode::OK, "OK".to_string())
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "kubernetes\n".to_string())
                    }
                }),
            )
            .await
            .map_err(|e| bind_error("ready", global.ready, e))?,
        );
    }
    if global.metrics.is_none() {
        l.metrics = None;
    } else if first || l.metrics.is_none() || old_global.metrics != global.metrics {
        let addr = global
            .metrics
            .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9153));
        let tls = {
            let mut cached = shared
                .metrics_tls
                .lock()
                .map_err(|_| DnsError::Tls("lock poisoned".into()))?;
            match &*cached {
                Some(t) => t.clone(),
                None => {
                    let mut names = vec!["localhost".to_string()];
                    names.extend(shared.local_ips.iter().map(|ip| ip.to_string()));
                    names.push("127.0.0.1".into());
                    if let Ok(h) = nix::unistd::gethostname() {
                        if let Some(h) = h.to_str() {
                            names.push(h.to_string());
                        }
                    }
                    names.dedup();
                    let t = web::self_signed_tls(names).map_err(DnsError::Tls)?;
                    *cached = Some(t.clone());
                    t
                }
            }
        };
        let m = shared.metrics.clone();
        l.metrics = Some(
            web::serve(
                addr,
                Some(tls),
                web::metrics_handler(shared.auth.clone(), move || m.render()),
            )
            .await
            .map_err(|e| bind_error("metrics", addr, e))?,
        );
        tracing::info!(
            "metrics: serving https://{}/metrics (bearer token, TokenReview + SubjectAccessReview)",
            l.metrics
                .as_ref()
                .map(|m| m.addr.to_string())
                .unwrap_or_default()
        );
    }

    // Swap in.
    let state = Arc::new(ServingState {
        blocks,
        ports: by_port,
        resolv,
        global,
    });
    shared.state.store(state);
    l.dns.retain(|p, _| ports.contains(p));
    if let Ok(mut a) = shared.addrs.lock() {
        a.dns = listen;
        a.health = l.health.as_ref().map(|h| h.addr);
        a.ready = l.ready.as_ref().map(|h| h.addr);
        a.metrics = l.metrics.as_ref().map(|h| h.addr);
    }
    shared.cluster.want_pods(want_pods);
    for f in new_forwarders {
        tokio::spawn(forward::run_loop_probes(f, shared.probes.clone()));
    }
    shared.rebuild.notify_one();
    Ok(())
}
