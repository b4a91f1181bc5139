//! The `forward` plugin: queries outside the cluster zones go to upstream resolvers over UDP
//! (TCP when the answer is truncated, the client used TCP, or `force_tcp`), with failover
//! between upstreams, health checks of failing ones, a concurrency limit and an overall
//! deadline (SERVFAIL when it passes). Also the `loop` plugin's probes, and the refusal of
//! upstreams that are this server itself.
//!
//! Every upstream query uses a fresh socket, so the kernel picks a random source port per
//! query (with the random message ID, the usual defence against spoofed answers).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RecordType};
use prometheus::IntCounter;
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::corefile::{ForwardConfig, ForwardPolicy};
use crate::metrics::UpstreamMetrics;
use crate::wire::{self, in_zone, NameKey, Request};

/// Time limits of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardTimeouts {
    /// Limit of one attempt at one upstream.
    pub attempt: Duration,
    /// Limit of a whole forwarded query, over all attempts (then SERVFAIL).
    pub deadline: Duration,
}

impl Default for ForwardTimeouts {
    fn default() -> Self {
        // CoreDNS: 2 s per attempt at most, 5 s overall.
        ForwardTimeouts {
            attempt: Duration::from_secs(2),
            deadline: Duration::from_secs(5),
        }
    }
}

/// Reads the `nameserver` lines of a resolv.conf file.
pub fn read_resolv_conf(path: &Path) -> io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path)?;
    Ok(parse_resolv_conf(&text))
}

/// The `nameserver` addresses of resolv.conf text (port 53).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            if parts.next()? != "nameserver" {
                return None;
            }
            let ip = parts.next()?;
            let ip = ip.split('%').next()?;
            ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Whether `ip` is an address of this host (it can be bound).
fn is_local_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Whether sending to `upstream` would reach this server's own listener on one of `listen`.
pub fn is_self(upstream: SocketAddr, listen: &[SocketAddr]) -> bool {
    listen.iter().any(|l| {
        if l.port() != upstream.port() {
            return false;
        }
        let up = canonical(upstream.ip());
        let l_ip = canonical(l.ip());
        up == l_ip || (l_ip.is_unspecified() && is_local_ip(up)) || up.is_unspecified()
    })
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Every upstream is refused (a loop, or this server itself).
    #[error("no usable upstream: every upstream is refused (it loops back to this server)")]
    NoUsableUpstream,
    /// `max_concurrent` reached.
    #[error("too many concurrent forwarded queries (max_concurrent {0})")]
    MaxConcurrent(usize),
    /// All attempts failed within the deadline.
    #[error("all upstreams failed within {deadline:?}; last error: {last}")]
    Failed {
        /// The deadline.
        deadline: Duration,
        /// The last attempt's error.
        last: String,
    },
}

/// One upstream resolver.
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    fails: AtomicU32,
    refused: AtomicBool,
    checking: AtomicBool,
    metrics: UpstreamMetrics,
}

impl Upstream {
    /// Whether this upstream is no longer used (loop or self).
    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The forwarder of one server block.
pub struct Forwarder {
    cfg: ForwardConfig,
    addrs: Vec<SocketAddr>,
    from: Box<[u8]>,
    except: Vec<Box<[u8]>>,
    upstreams: Vec<Arc<Upstream>>,
    in_flight: AtomicUsize,
    next: AtomicUsize,
    timeouts: ForwardTimeouts,
    rejects: IntCounter,
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Forwarder {
    /// A forwarder to `addrs` (the resolved upstreams of `cfg`). Upstreams that are this server
    /// (`listen` are its DNS listeners) are refused at once.
    pub fn new(
        cfg: ForwardConfig,
        addrs: Vec<SocketAddr>,
        listen: &[SocketAddr],
        metrics: impl Fn(&str) -> UpstreamMetrics,
        timeouts: ForwardTimeouts,
        rejects: IntCounter,
    ) -> Arc<Forwarder> {
        let upstreams = addrs
            .iter()
            .map(|a| {
                let refused = is_self(*a, listen);
                if refused {
                    tracing::error!(
                        "forward: upstream {a} is this DNS server itself (it listens on {}); it is not used, \
                         as forwarding to it would loop. Point forward at another resolver: name the \
                         site's DNS servers in the inventory's cluster.dns.upstreams (kinit apply \
                         writes them into the Corefile) or edit the coredns ConfigMap",
                        listen
                            .iter()
                            .map(|l| l.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Arc::new(Upstream {
                    addr: *a,
                    fails: AtomicU32::new(0),
                    refused: AtomicBool::new(refused),
                    checking: AtomicBool::new(false),
                    metrics: metrics(&a.to_string()),
                })
            })
            .collect();
        let key = |n: &Name| -> Option<Box<[u8]>> {
            NameKey::from_name(n, true).map(|k| k.as_bytes().into())
        };
        Arc::new(Forwarder {
            from: key(&cfg.from).unwrap_or_else(|| Box::new([0u8])),
            except: cfg.except.iter().filter_map(key).collect(),
            cfg,
            addrs,
            upstreams,
            in_flight: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            timeouts,
            rejects,
        })
    }

    /// The configuration and resolved upstreams this forwarder was made from.
    pub fn identity(&self) -> (&ForwardConfig, &[SocketAddr], ForwardTimeouts) {
        (&self.cfg, &self.addrs, self.timeouts)
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The zone forwarded.
    pub fn from_zone(&self) -> &Name {
        &self.cfg.from
    }

    /// Whether this forwarder handles `key`.
    pub fn handles(&self, key: &NameKey) -> bool {
        in_zone(key.as_bytes(), &self.from)
            && !self.except.iter().any(|z| in_zone(key.as_bytes(), z))
    }

    /// Stops using upstream `idx` (a detected loop), logging why.
    pub fn refuse(&self, idx: usize, listen: &str) {
        let Some(up) = self.upstreams.get(idx) else {
            return;
        };
        if !up.refused.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "loop ({listen} -> {}) detected for zone \"{}\": upstream {} sends queries back to this \
                 server; it is no longer used and queries it would get are answered SERVFAIL. Point \
                 forward at a resolver that does not forward to this server (with /etc/resolv.conf: \
                 the node's real resolvers, not a local stub such as 127.0.0.53)",
                up.addr,
                self.cfg.from,
                up.addr
            );
        }
    }

    fn order(&self) -> Vec<usize> {
        let usable: Vec<usize> = (0..self.upstreams.len())
            .filter(|i| !self.upstreams[*i].is_refused())
            .collect();
        let down = |i: &usize| {
            self.cfg.max_fails > 0
                && self.upstreams[*i].fails.load(Ordering::Relaxed) >= self.cfg.max_fails
        };
        let (mut healthy, mut unhealthy): (Vec<usize>, Vec<usize>) =
            usable.into_iter().partition(|i| !down(i));
        match self.cfg.policy {
            ForwardPolicy::Random => {
                let mut rng = rand::rng();
                healthy.shuffle(&mut rng);
                unhealthy.shuffle(&mut rng);
            }
            ForwardPolicy::RoundRobin => {
                if !healthy.is_empty() {
                    let n = self.next.fetch_add(1, Ordering::Relaxed) % healthy.len();
                    healthy.rotate_left(n);
                }
            }
            ForwardPolicy::Sequential => {}
        }
        healthy.extend(unhealthy);
        healthy
    }

    fn use_tcp(&self, client_tcp: bool) -> bool {
        self.cfg.force_tcp || (client_tcp && !self.cfg.prefer_udp)
    }

    /// Forwards `req` (received over TCP when `client_tcp`) to the upstreams.
    pub async fn forward(
        self: &Arc<Self>,
        req: &Request,
        client_tcp: bool,
    ) -> Result<Message, ForwardError> {
        let _guard = self.admit()?;
        let order = self.order();
        if order.is_empty() {
            return Err(ForwardError::NoUsableUpstream);
        }
        let start = Instant::now();
        let mut last = String::from("no attempt was made");
        // Every upstream at most twice, within the deadline.
        for idx in order.iter().cycle().take(order.len() * 2) {
            let remaining = self.timeouts.deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                break;
            }
            let up = &self.upstreams[*idx];
            if up.is_refused() {
                continue;
            }
            match self
                .exchange(
                    up,
                    req,
                    self.use_tcp(client_tcp),
                    remaining.min(self.timeouts.attempt),
                )
                .await
            {
                Ok(msg) => return Ok(msg),
                Err(e) => {
                    last = format!("{}: {e}", up.addr);
                    self.failed(up);
                }
            }
        }
        Err(ForwardError::Failed {
            deadline: self.timeouts.deadline,
            last,
        })
    }

    /// Forwards `req` to upstream `idx` only (loop probes).
    pub async fn forward_via(
        &self,
        idx: usize,
        req: &Request,
        client_tcp: bool,
    ) -> Result<Message, ForwardError> {
        let _guard = self.admit()?;
        let up = self
            .upstreams
            .get(idx)
            .ok_or(ForwardError::NoUsableUpstream)?;
        if up.is_refused() {
            return Err(ForwardError::NoUsableUpstream);
        }
        self.exchange(up, req, self.use_tcp(client_tcp), self.timeouts.attempt)
            .await
            .map_err(|e| ForwardError::Failed {
                deadline: self.timeouts.attempt,
                last: format!("{}: {e}", up.addr),
            })
    }

    fn admit(&self) -> Result<InFlight<'_>, ForwardError> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(&self.in_flight);
        if let Some(max) = self.cfg.max_concurrent {
            if n >= max {
                self.rejects.inc();
                return Err(ForwardError::MaxConcurrent(max));
            }
        }
        Ok(guard)
    }

    fn failed(self: &Arc<Self>, up: &Arc<Upstream>) {
        up.fails.fetch_add(1, Ordering::Relaxed);
        if self.cfg.max_fails == 0 || up.checking.swap(true, Ordering::Relaxed) {
            return;
        }
        // Health-check the upstream until it answers again (CoreDNS sends `. IN NS`).
        let weak: Weak<Forwarder> = Arc::downgrade(self);
        let up = up.clone();
        let interval = self.cfg.health_check.max(Duration::from_millis(50));
        let tcp = self.cfg.force_tcp;
        tokio::spawn(async move {
            let Some(probe) =
                Request::internal(&Name::root(), u16::from(RecordType::NS), &root_template())
            else {
                return;
            };
            loop {
                tokio::time::sleep(interval).await;
                let Some(fwd) = weak.upgrade() else { return };
                if up.is_refused() {
                    break;
                }
                let timeout = fwd.timeouts.attempt.min(Duration::from_secs(1));
                drop(fwd);
                match exchange_raw(up.addr, &probe, tcp, timeout).await {
                    Ok(_) => {
                        up.fails.store(0, Ordering::Relaxed);
                        break;
                    }
                    Err(_) => {
                        up.metrics.healthcheck_failures.inc();
                        up.fails.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            up.checking.store(false, Ordering::Relaxed);
        });
    }

    async fn exchange(
        &self,
        up: &Upstream,
        req: &Request,
        tcp: bool,
        timeout: Duration,
    ) -> io::Result<Message> {
        up.metrics.requests.inc();
        let t0 = Instant::now();
        let bytes = exchange_raw(up.addr, req, tcp, timeout).await?;
        let msg = Message::from_vec(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("undecodable response: {e}"),
            )
        })?;
        up.fails.store(0, Ordering::Relaxed);
        up.metrics.response(
            u16::from(msg.metadata.response_code),
            t0.elapsed().as_secs_f64(),
        );
        Ok(msg)
    }
}

fn root_template() -> Request {
    Request {
        id: 0,
        rd: true,
        cd: false,
        qtype: 2,
        qclass: 1,
        key: NameKey::root(),
        wire_name: NameKey::root(),
        edns: None,
        size: 0,
    }
}

/// Sends `req` to `addr` and returns the matching response bytes: UDP first (unless `tcp`),
/// TCP when the UDP answer is truncated.
pub async fn exchange_raw(
    addr: SocketAddr,
    req: &Request,
    tcp: bool,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let id: u16 = rand::random();
    let query = wire::upstream_query(req, id);
    let attempt = async {
        if !tcp {
            let resp = udp_exchange(addr, &query, id, req).await?;
            if !wire::is_truncated(&resp) {
                return Ok(resp);
            }
        }
        tcp_exchange(addr, &query, id, req).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    }
}

async fn udp_exchange(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    req: &Request,
) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        if wire::matches_query(&buf[..n], id, req) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(
    addr: SocketAddr,
    query: &[u8],
    id: u16,
    req: &Request,
) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).await?;
        if wire::matches_query(&buf, id, req) {
            return Ok(buf);
        }
    }
}

// ---- loop detection ----

/// A loop probe in flight: a random name sent to one upstream of one forwarder.
pub struct Probe {
    /// The forwarder the probe tests.
    pub forwarder: Weak<Forwarder>,
    /// Which of its upstreams.
    pub upstream: usize,
    /// How often this server has received the probe.
    pub hits: AtomicU32,
}

/// Loop probes by name.
#[derive(Default)]
pub struct LoopProbes {
    active: AtomicUsize,
    map: Mutex<HashMap<Box<[u8]>, Arc<Probe>>>,
}

/// How often a probe may come back before its upstream counts as a loop (CoreDNS: twice).
pub const LOOP_HITS_ALLOWED: u32 = 2;

impl LoopProbes {
    /// The probe named `key`, if one is registered.
    pub fn get(&self, key: &NameKey) -> Option<Arc<Probe>> {
        if self.active.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.map.lock().ok()?.get(key.as_bytes()).cloned()
    }

    fn register(&self, key: &NameKey, probe: Arc<Probe>) {
        if let Ok(mut m) = self.map.lock() {
            if m.insert(key.as_bytes().into(), probe).is_none() {
                self.active.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn remove(&self, key: &NameKey) {
        if let Ok(mut m) = self.map.lock() {
            if m.remove(key.as_bytes()).is_some() {
                self.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends one loop probe (`<random>.<random>.<zone> HINFO`) to every upstream of `forwarder`.
/// An upstream that sends it back to this server more than [`LOOP_HITS_ALLOWED`] times is
/// refused (see the server's probe handling). Probes stay registered a while after their
/// answer, so late copies are still recognised and stopped.
pub async fn run_loop_probes(forwarder: Arc<Forwarder>, probes: Arc<LoopProbes>) {
    let zone = forwarder.from_zone().clone();
    let mut tasks = Vec::new();
    for (idx, up) in forwarder.upstreams().iter().enumerate() {
        if up.is_refused() {
            continue;
        }
        let labels = format!("{}.{}", rand::random::<u64>(), rand::random::<u64>());
        let Some(name) = Name::from_ascii(&labels)
            .ok()
            .and_then(|n| n.append_domain(&zone).ok())
        else {
            continue;
        };
        let Some(req) = Request::internal(&name, u16::from(RecordType::HINFO), &root_template())
        else {
            continue;
        };
        let probe = Arc::new(Probe {
            forwarder: Arc::downgrade(&forwarder),
            upstream: idx,
            hits: AtomicU32::new(0),
        });
        probes.register(&req.key, probe);
        let addr = up.addr;
        let probes = probes.clone();
        let timeouts = forwarder.timeouts;
        tasks.push(tokio::spawn(async move {
            // Retry while the upstream does not answer at all (it may still be starting).
            for _ in 0..3 {
                match exchange_raw(addr, &req, false, timeouts.attempt).await {
                    Ok(_) => break,
                    Err(e) => tracing::debug!("loop probe to {addr}: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            probes.remove(&req.key);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let addrs = parse_resolv_conf(
            "# comment\nsearch default.svc.cluster.local\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\noptions ndots:5\nnameserver   192.0.2.53\n",
        );
        assert_eq!(
            addrs,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "192.0.2.53:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn self_detection() {
        let any: SocketAddr = "0.0.0.0:53".parse().unwrap();
        let any6: SocketAddr = "[::]:53".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:1053".parse().unwrap();
        assert!(is_self("127.0.0.53:53".parse().unwrap(), &[any]));
        assert!(is_self("127.0.0.1:53".parse().unwrap(), &[any6]));
        assert!(!is_self("127.0.0.1:54".parse().unwrap(), &[any]));
        assert!(is_self("127.0.0.1:1053".parse().unwrap(), &[lo]));
        assert!(!is_self("127.0.0.2:1053".parse().unwrap(), &[lo]));
        // A documentation address is not local.
        assert!(!is_self("192.0.2.1:53".parse().unwrap(), &[any]));
    }
}
