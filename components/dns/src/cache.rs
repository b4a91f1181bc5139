//! The `cache` plugin: forwarded answers kept for their TTL, capped by the configured maximum,
//! positive and negative (NXDOMAIN/NODATA) separately, SERVFAIL briefly. Served answers carry
//! the remaining TTL. Cluster answers are not cached: they are prepared in the record table
//! already, and caching them would hide Service changes for up to the cache TTL.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use prometheus::IntGauge;

use crate::corefile::CacheConfig;
use crate::wire::{in_zone, NameKey, Prepared, Request};

/// CoreDNS's TTL for denials that carry no SOA.
const DEFAULT_DENIAL_TTL: u32 = 5;
const SHARDS: usize = 16;

/// Which capacity an entry counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// An answer with records.
    Success,
    /// NXDOMAIN or NODATA.
    Denial,
    /// SERVFAIL from upstream.
    ServFail,
}

struct Item {
    name: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    flags: u8,
    prepared: Arc<Prepared>,
    stored: Instant,
    ttl: u32,
    kind: EntryKind,
}

/// A cache hit.
pub struct Hit {
    /// The answer.
    pub prepared: Arc<Prepared>,
    /// TTL to serve (remaining seconds), or `None` to keep the stored TTLs (`keepttl`).
    pub ttl: Option<u32>,
    /// What kind of answer it is.
    pub kind: EntryKind,
}

/// The response cache of one server block.
pub struct Cache {
    cfg: CacheConfig,
    zones: Vec<Box<[u8]>>,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<u64, Item>>>,
    success: AtomicUsize,
    denial: AtomicUsize,
    gauges: Option<(IntGauge, IntGauge)>,
}

fn flags_of(req: &Request) -> u8 {
    (req.edns.is_some_and(|e| e.dnssec_ok) as u8) | ((req.cd as u8) << 1)
}

/// The lowest TTL of a message's records, and the kind of answer it is; `None` when the
/// message must not be cached.
pub fn classify(msg: &Message) -> Option<(EntryKind, u32)> {
    if msg.metadata.truncation {
        return None;
    }
    match msg.metadata.response_code {
        ResponseCode::NoError if !msg.answers.is_empty() => {
            let ttl = msg
                .answers
                .iter()
                .chain(&msg.authorities)
                .chain(&msg.additionals)
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0);
            Some((EntryKind::Success, ttl))
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            let ttl = msg
                .authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
                .unwrap_or(DEFAULT_DENIAL_TTL);
            Some((EntryKind::Denial, ttl))
        }
        ResponseCode::ServFail => Some((EntryKind::ServFail, 0)),
        _ => None,
    }
}

impl Cache {
    /// A cache with these settings; `gauges` count entries (success, denial).
    pub fn new(cfg: CacheConfig, gauges: Option<(IntGauge, IntGauge)>) -> Cache {
        let zones = cfg
            .zones
            .iter()
            .filter_map(|z| NameKey::from_name(z, true))
            .map(|k| k.as_bytes().into())
            .collect();
        Cache {
            cfg,
            zones,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            success: AtomicUsize::new(0),
            denial: AtomicUsize::new(0),
            gauges,
        }
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// Whether names like `key` are cached at all.
    pub fn covers(&self, key: &NameKey) -> bool {
        self.zones.iter().any(|z| in_zone(key.as_bytes(), z))
    }

    fn hash(&self, req: &Request) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(req.key.as_bytes());
        h.write_u16(req.qtype);
        h.write_u16(req.qclass);
        h.write_u8(flags_of(req));
        h.finish()
    }

    fn counter(&self, kind: EntryKind) -> &AtomicUsize {
        match kind {
            EntryKind::Success => &self.success,
            EntryKind::Denial | EntryKind::ServFail => &self.denial,
        }
    }

    fn update_gauges(&self) {
        if let Some((s, d)) = &self.gauges {
            s.set(self.success.load(Ordering::Relaxed) as i64);
            d.set(self.denial.load(Ordering::Relaxed) as i64);
        }
    }

    /// The cached answer to `req`, if fresh.
    pub fn get(&self, req: &Request, now: Instant) -> Option<Hit> {
        let h = self.hash(req);
        let mut shard = self.shards[(h as usize) % SHARDS].lock().ok()?;
        let item = shard.get(&h)?;
        if &*item.name != req.key.as_bytes()
            || item.qtype != req.qtype
            || item.qclass != req.qclass
            || item.flags != flags_of(req)
        {
            return None;
        }
        let age = now.saturating_duration_since(item.stored).as_secs();
        if age >= item.ttl as u64 {
            let kind = item.kind;
            shard.remove(&h);
            drop(shard);
            self.counter(kind).fetch_sub(1, Ordering::Relaxed);
            self.update_gauges();
            return None;
        }
        Some(Hit {
            prepared: item.prepared.clone(),
            ttl: if self.cfg.keepttl {
                None
            } else {
                Some(item.ttl - age as u32)
            },
            kind: item.kind,
        })
    }

    /// Stores the upstream answer `msg` (prepared as `prepared`) for `req`. Returns the TTL to
    /// serve this answer with now (the capped TTL, as later hits will), or `None` when the
    /// answer is not cached or `keepttl` is set.
    pub fn insert(
        &self,
        req: &Request,
        msg: &Message,
        prepared: Arc<Prepared>,
        now: Instant,
    ) -> Option<u32> {
        let (kind, ttl) = classify(msg)?;
        let (capacity, ttl) = match kind {
            EntryKind::Success => (
                self.cfg.success_capacity,
                clamp(ttl, self.cfg.success_min_ttl, self.cfg.success_ttl),
            ),
            EntryKind::Denial => (
                self.cfg.denial_capacity,
                clamp(ttl, self.cfg.denial_min_ttl, self.cfg.denial_ttl),
            ),
            EntryKind::ServFail => (
                self.cfg.denial_capacity,
                self.cfg.servfail_ttl.as_secs() as u32,
            ),
        };
        if capacity == 0 || ttl == 0 {
            return None;
        }
        let h = self.hash(req);
        let mut shard = self.shards[(h as usize) % SHARDS].lock().ok()?;
        let counter = self.counter(kind);
        if shard.get(&h).is_none() && counter.load(Ordering::Relaxed) >= capacity {
            // Full: evict an arbitrary entry of this shard (CoreDNS evicts at random too).
            let victim = shard
                .iter()
                .find(|(_, it)| (it.kind == EntryKind::Success) == (kind == EntryKind::Success))
                .map(|(k, _)| *k);
            match victim {
                Some(v) => {
                    shard.remove(&v);
                    counter.fetch_sub(1, Ordering::Relaxed);
                }
                None => return None,
            }
        }
        let item = Item {
            name: req.key.as_bytes().into(),
            qtype: req.qtype,
            qclass: req.qclass,
            flags: flags_of(req),
            prepared,
            stored: now,
            ttl,
            kind,
        };
        if let Some(old) = shard.insert(h, item) {
            self.counter(old.kind).fetch_sub(1, Ordering::Relaxed);
        }
        counter.fetch_add(1, Ordering::Relaxed);
        drop(shard);
        self.update_gauges();
        (!self.cfg.keepttl).then_some(ttl)
    }

    /// Entries (success, denial including SERVFAIL).
    pub fn len(&self) -> (usize, usize) {
        (
            self.success.load(Ordering::Relaxed),
            self.denial.load(Ordering::Relaxed),
        )
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

fn clamp(ttl: u32, min: Duration, max: Duration) -> u32 {
    let min = min.as_secs().min(u32::MAX as u64) as u32;
    let max = max.as_secs().min(u32::MAX as u64) as u32;
    ttl.max(min).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, parse_request, Parsed, WriteOpts};
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record, RecordType};

    fn req(name: &str) -> Request {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let mut out = Vec::new();
        match parse_request(&m.to_vec().unwrap(), &mut out) {
            Parsed::Query(r) => r,
            _ => panic!(),
        }
    }

    fn answer(name: &str, ttl: u32) -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.add_answer(Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            ttl,
            RData::A(A(std::net::Ipv4Addr::new(192, 0, 2, 1))),
        ));
        m
    }

    fn nxdomain(name: &str, soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.add_authority(Record::from_rdata(
            Name::from_ascii("example.").unwrap(),
            soa_ttl,
            RData::SOA(SOA::new(
                Name::from_ascii("ns.example.").unwrap(),
                Name::from_ascii("h.example.").unwrap(),
                1,
                1,
                1,
                1,
                minimum,
            )),
        ));
        m
    }

    fn cache(ttl: u64) -> Cache {
        Cache::new(
            CacheConfig {
                zones: vec![Name::root()],
                success_ttl: Duration::from_secs(ttl),
                denial_ttl: Duration::from_secs(ttl),
                ..CacheConfig::default()
            },
            None,
        )
    }

    #[test]
    fn ttl_capped_and_decremented() {
        let c = cache(30);
        let r = req("www.example.");
        let m = answer("www.example.", 300);
        let p = Arc::new(wire::prepare_from_message(&r, &m).unwrap());
        let t0 = Instant::now();
        c.insert(&r, &m, p, t0);
        let hit = c.get(&r, t0).unwrap();
        assert_eq!(hit.ttl, Some(30), "capped at the cache TTL");
        let hit = c.get(&r, t0 + Duration::from_secs(12)).unwrap();
        assert_eq!(hit.ttl, Some(18), "decremented");
        // The served answer carries the remaining TTL.
        let mut out = Vec::new();
        wire::write_response(
            &mut out,
            &r,
            &hit.prepared,
            &WriteOpts {
                max_size: 512,
                ttl: hit.ttl,
                rotate: 0,
            },
        );
        assert_eq!(Message::from_vec(&out).unwrap().answers[0].ttl, 18);
        assert!(c.get(&r, t0 + Duration::from_secs(30)).is_none(), "expired");
        assert!(c.is_empty());
        // A short upstream TTL is kept, but not below the 5 s minimum.
        let m = answer("www.example.", 2);
        let p = Arc::new(wire::prepare_from_message(&r, &m).unwrap());
        c.insert(&r, &m, p, t0);
        assert_eq!(c.get(&r, t0).unwrap().ttl, Some(5));
    }

    #[test]
    fn denials_use_the_soa() {
        let c = cache(3600);
        let r = req("nope.example.");
        let m = nxdomain("nope.example.", 900, 60);
        let p = Arc::new(wire::prepare_from_message(&r, &m).unwrap());
        c.insert(&r, &m, p, Instant::now());
        let hit = c.get(&r, Instant::now()).unwrap();
        assert_eq!(hit.kind, EntryKind::Denial);
        assert_eq!(hit.ttl, Some(60));
        assert_eq!(c.len(), (0, 1));
    }

    #[test]
    fn key_includes_type_and_name_and_capacity_is_enforced() {
        let c = Cache::new(
            CacheConfig {
                zones: vec![Name::root()],
                success_capacity: 2,
                ..CacheConfig::default()
            },
            None,
        );
        let now = Instant::now();
        for i in 0..5 {
            let name = format!("h{i}.example.");
            let r = req(&name);
            let m = answer(&name, 60);
            c.insert(
                &r,
                &m,
                Arc::new(wire::prepare_from_message(&r, &m).unwrap()),
                now,
            );
        }
        assert!(c.len().0 <= 2);
        let mut aaaa = req("h4.example.");
        aaaa.qtype = 28;
        assert!(c.get(&aaaa, now).is_none());
        // Zones restrict what is cached.
        let zoned = Cache::new(
            CacheConfig {
                zones: vec![Name::from_ascii("example.org.").unwrap()],
                ..CacheConfig::default()
            },
            None,
        );
        assert!(zoned.covers(&NameKey::parse("a.example.org.").unwrap()));
        assert!(!zoned.covers(&NameKey::parse("a.example.com.").unwrap()));
    }

    #[test]
    fn servfail_cached_briefly_and_truncated_not_at_all() {
        let c = cache(30);
        let r = req("bad.example.");
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.metadata.response_code = ResponseCode::ServFail;
        m.add_query(Query::query(
            Name::from_ascii("bad.example.").unwrap(),
            RecordType::A,
        ));
        let p = Arc::new(wire::prepare_from_message(&r, &m).unwrap());
        c.insert(&r, &m, p.clone(), Instant::now());
        assert_eq!(c.get(&r, Instant::now()).unwrap().ttl, Some(5));
        let r2 = req("tc.example.");
        let mut t = answer("tc.example.", 60);
        t.metadata.truncation = true;
        c.insert(&r2, &t, p, Instant::now());
        assert!(c.get(&r2, Instant::now()).is_none());
    }
}
