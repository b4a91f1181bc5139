//! Helpers for the DNS server's integration tests: a fake upstream resolver on 127.0.0.1, DNS
//! queries over UDP/TCP, API clients for kinit-apiserver's TestServer, polling.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// An admin (or any) client from a kubeconfig file.
pub async fn client(path: &Path) -> kube::Client {
    kinit_component_base::client(Some(path)).await.unwrap()
}

/// Writes a Corefile into `dir` and returns its path.
pub fn write_corefile(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("Corefile");
    std::fs::write(&p, text).unwrap();
    p
}

/// Polls `f` every 20 ms until it returns `Some` or `within` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return (v, start.elapsed());
        }
        if start.elapsed() > within {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds a query message.
pub fn query_message(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

/// Sends a query over UDP (or TCP) and returns the decoded response.
pub async fn ask(addr: SocketAddr, name: &str, qtype: RecordType, tcp: bool) -> Message {
    ask_with(addr, query_message(name, qtype, None), tcp).await
}

/// Sends `m` and decodes the response (5 s timeout).
pub async fn ask_with(addr: SocketAddr, m: Message, tcp: bool) -> Message {
    let bytes = m.to_vec().unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), async {
        if tcp {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            s.write_all(&framed).await.unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.unwrap();
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).await.unwrap();
            buf
        } else {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.send_to(&bytes, addr).await.unwrap();
            let mut buf = vec![0u8; 65535];
            let n = s.recv(&mut buf).await.unwrap();
            buf.truncate(n);
            buf
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer from {addr} for {:?}", m.queries));
    let r = Message::from_vec(&resp).unwrap();
    assert_eq!(r.metadata.id, m.metadata.id);
    r
}

/// The A/AAAA addresses of an answer, sorted.
pub fn addrs(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// A port that was free a moment ago (for a server that must know its own port up front).
pub fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// What the fake upstream does with queries.
#[derive(Clone)]
pub enum Behaviour {
    /// Answers A queries with this address and TTL: `nx*` names get NXDOMAIN (SOA minimum
    /// 60), `big*` names 40 records (TC over UDP, complete over TCP).
    Answer { ip: Ipv4Addr, ttl: u32 },
    /// Never answers.
    Silent,
    /// Relays every query to this address and its answer back.
    Relay(SocketAddr),
}

/// A fake resolver on 127.0.0.1 (UDP and TCP on one port) counting what it receives.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub queries: Arc<AtomicUsize>,
    pub names: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeUpstream {
    pub fn count(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    pub fn count_of(&self, name: &str) -> usize {
        self.names
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.eq_ignore_ascii_case(name))
            .count()
    }
}

fn answer(req: &Message, behaviour: &Behaviour, tcp: bool) -> Option<Vec<u8>> {
    let Behaviour::Answer { ip, ttl } = behaviour else {
        return None;
    };
    let q = req.queries.first()?.clone();
    let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(q.clone());
    let label = q
        .name()
        .iter()
        .next()
        .map(|l| String::from_utf8_lossy(l).to_lowercase())
        .unwrap_or_default();
    if label.starts_with("nx") {
        m.metadata.response_code = ResponseCode::NXDomain;
        m.add_authority(Record::from_rdata(
            Name::from_ascii("test.").unwrap(),
            600,
            RData::SOA(SOA::new(
                Name::from_ascii("ns.test.").unwrap(),
                Name::from_ascii("hostmaster.test.").unwrap(),
                1,
                3600,
                600,
                86400,
                60,
            )),
        ));
    } else if q.query_type() == RecordType::A {
        let n = if label.starts_with("big") { 40 } else { 1 };
        if n > 1 && !tcp {
            m.metadata.truncation = true;
        } else {
            for i in 0..n {
                let o = ip.octets();
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    *ttl,
                    RData::A(A(Ipv4Addr::new(
                        o[0],
                        o[1],
                        o[2],
                        o[3].wrapping_add(i as u8),
                    ))),
                ));
            }
        }
    }
    if let Some(e) = &req.edns {
        let mut out = Edns::new();
        out.set_max_payload(e.max_payload().max(512));
        m.set_edns(out);
    }
    m.to_vec().ok()
}

async fn relay(target: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    s.send_to(bytes, target).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Starts a fake upstream.
pub async fn fake_upstream(behaviour: Behaviour) -> FakeUpstream {
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    {
        let (queries, names, behaviour) = (queries.clone(), names.clone(), behaviour.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let bytes = buf[..n].to_vec();
                let Ok(req) = Message::from_vec(&bytes) else {
                    continue;
                };
                queries.fetch_add(1, Ordering::SeqCst);
                if let Some(q) = req.queries.first() {
                    names
                        .lock()
                        .unwrap()
                        .push(q.name().to_ascii().trim_end_matches('.').to_string());
                }
                let udp = udp.clone();
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let resp = match &behaviour {
                        Behaviour::Relay(target) => relay(*target, &bytes).await,
                        b => answer(&req, b, false),
                    };
                    if let Some(resp) = resp {
                        let _ = udp.send_to(&resp, peer).await;
                    }
                });
            }
        }));
    }
    {
        let (queries, names) = (queries.clone(), names.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let (queries, names, behaviour) =
                    (queries.clone(), names.clone(), behaviour.clone());
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Ok(req) = Message::from_vec(&buf) else {
                        return;
                    };
                    queries.fetch_add(1, Ordering::SeqCst);
                    if let Some(q) = req.queries.first() {
                        names
                            .lock()
                            .unwrap()
                            .push(q.name().to_ascii().trim_end_matches('.').to_string());
                    }
                    if let Some(resp) = answer(&req, &behaviour, true) {
                        let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&resp);
                        let _ = s.write_all(&framed).await;
                    }
                });
            }
        }));
    }
    FakeUpstream {
        addr,
        queries,
        names,
        tasks,
    }
}

/// A plain HTTP GET on 127.0.0.1; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}
