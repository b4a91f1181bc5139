//! Prometheus metrics under CoreDNS's names (`coredns_dns_requests_total`,
//! `coredns_cache_hits_total`, `coredns_forward_requests_total`, …), so existing dashboards
//! and alerts work. Per-query counters are resolved once per label combination and kept in
//! slots, so the hot path is an atomic load and an atomic add.

use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

/// Query types with their own label value; the rest count as "other".
const TYPES: [(u16, &str); 21] = [
    (1, "A"),
    (28, "AAAA"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (33, "SRV"),
    (35, "NAPTR"),
    (43, "DS"),
    (48, "DNSKEY"),
    (46, "RRSIG"),
    (47, "NSEC"),
    (50, "NSEC3"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (257, "CAA"),
    (252, "AXFR"),
    (251, "IXFR"),
    (255, "ANY"),
];
const NTYPES: usize = TYPES.len() + 1;

const RCODES: [&str; 12] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "BADVERS",
];
const NRCODES: usize = RCODES.len() + 1;

/// The plugin that wrote a response (label `plugin` of `coredns_dns_responses_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Responder {
    /// The server itself (malformed queries, no matching zone).
    Server = 0,
    /// Cluster records.
    Kubernetes = 1,
    /// A cached answer.
    Cache = 2,
    /// An upstream answer.
    Forward = 3,
    /// Loop detection.
    Loop = 4,
}
const PLUGINS: [&str; 5] = ["", "kubernetes", "cache", "forward", "loop"];

fn type_index(qtype: u16) -> usize {
    TYPES
        .iter()
        .position(|(t, _)| *t == qtype)
        .unwrap_or(TYPES.len())
}

fn type_name(i: usize) -> &'static str {
    TYPES.get(i).map(|(_, n)| *n).unwrap_or("other")
}

fn rcode_index(rcode: u16) -> usize {
    if rcode == 16 {
        return 11;
    }
    if (rcode as usize) < 11 {
        rcode as usize
    } else {
        RCODES.len()
    }
}

/// The rcode as CoreDNS names it (`NOERROR`, `NXDOMAIN`, …).
pub fn rcode_label(rcode: u16) -> String {
    rcode_name(rcode_index(rcode))
}

fn rcode_name(i: usize) -> String {
    RCODES
        .get(i)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "other".into())
}

/// The process-wide metrics.
pub struct Metrics {
    /// The registry served on the metrics endpoint.
    pub registry: Registry,
    requests: IntCounterVec,
    responses: IntCounterVec,
    duration: HistogramVec,
    request_size: HistogramVec,
    response_size: HistogramVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_entries: IntGaugeVec,
    forward_requests: IntCounterVec,
    forward_responses: IntCounterVec,
    forward_duration: HistogramVec,
    forward_healthcheck_failures: IntCounterVec,
    /// Forwarded queries refused because `max_concurrent` was reached.
    pub forward_max_concurrent_rejects: IntCounter,
    /// Corefile reloads that failed to parse.
    pub reload_failed: IntCounter,
    plugin_enabled: IntGaugeVec,
}

fn size_buckets() -> Vec<f64> {
    vec![
        0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16000.0, 32000.0,
        48000.0, 64000.0,
    ]
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let dur_buckets = exponential_buckets(0.00025, 2.0, 16)?;
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram = |name: &str,
                         help: &str,
                         labels: &[&str],
                         buckets: Vec<f64>|
         -> Result<HistogramVec, prometheus::Error> {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let requests = counter(
            "coredns_dns_requests_total",
            "Counter of DNS requests made per zone, protocol and family.",
            &["server", "zone", "view", "proto", "family", "type"],
        )?;
        let responses = counter(
            "coredns_dns_responses_total",
            "Counter of response status codes.",
            &["server", "zone", "view", "rcode", "plugin"],
        )?;
        let duration = histogram(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took.",
            &["server", "zone", "view", "type"],
            dur_buckets.clone(),
        )?;
        let request_size = histogram(
            "coredns_dns_request_size_bytes",
            "Size of the request in bytes per zone and protocol.",
            &["server", "zone", "view", "proto"],
            size_buckets(),
        )?;
        let response_size = histogram(
            "coredns_dns_response_size_bytes",
            "Size of the returned response in bytes.",
            &["server", "zone", "view", "proto"],
            size_buckets(),
        )?;
        let cache_hits = counter(
            "coredns_cache_hits_total",
            "The count of cache hits.",
            &["server", "type", "zones", "view"],
        )?;
        let cache_misses = counter(
            "coredns_cache_misses_total",
            "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
            &["server", "zones", "view"],
        )?;
        let cache_entries = gauge(
            "coredns_cache_entries",
            "The number of elements in the cache.",
            &["server", "type", "zones", "view"],
        )?;
        let forward_requests = counter(
            "coredns_forward_requests_total",
            "Counter of requests made per upstream.",
            &["to"],
        )?;
        let forward_responses = counter(
            "coredns_forward_responses_total",
            "Counter of responses received per upstream.",
            &["to", "rcode"],
        )?;
        let forward_duration = histogram(
            "coredns_forward_request_duration_seconds",
            "Histogram of the time each request took.",
            &["to", "rcode"],
            dur_buckets,
        )?;
        let forward_healthcheck_failures = counter(
            "coredns_forward_healthcheck_failures_total",
            "Counter of the number of failed healthchecks.",
            &["to"],
        )?;
        let forward_max_concurrent_rejects = IntCounter::new(
            "coredns_forward_max_concurrent_rejects_total",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
        )?;
        registry.register(Box::new(forward_max_concurrent_rejects.clone()))?;
        let reload_failed = IntCounter::new(
            "coredns_reload_failed_total",
            "Counter of the number of failed reload attempts.",
        )?;
        registry.register(Box::new(reload_failed.clone()))?;
        let build_info = gauge(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
            &["version", "revision", "goversion"],
        )?;
        build_info
            .with_label_values(&[concat!("kinit-", env!("CARGO_PKG_VERSION")), "", ""])
            .set(1);
        let plugin_enabled = gauge(
            "coredns_plugin_enabled",
            "A metric that indicates whether a plugin is enabled on per server and zone basis.",
            &["server", "zone", "view", "name"],
        )?;
        Ok(Metrics {
            registry,
            requests,
            responses,
            duration,
            request_size,
            response_size,
            cache_hits,
            cache_misses,
            cache_entries,
            forward_requests,
            forward_responses,
            forward_duration,
            forward_healthcheck_failures,
            forward_max_concurrent_rejects,
            reload_failed,
            plugin_enabled,
        })
    }

    /// Handles for one server block (`server` like `dns://:53`, `zone` its first zone).
    pub fn block(&self, server: &str, zone: &str, plugins: &[&str]) -> BlockMetrics {
        for p in plugins {
            self.plugin_enabled
                .with_label_values(&[server, zone, "", p])
                .set(1);
        }
        BlockMetrics {
            server: server.to_string(),
            zone: zone.to_string(),
            requests: IntCounterVecSlots::new(2 * 2 * NTYPES),
            responses: IntCounterVecSlots::new(NRCODES * PLUGINS.len()),
            duration: HistogramSlots::new(NTYPES),
            request_size: HistogramSlots::new(2),
            response_size: HistogramSlots::new(2),
            cache_hits: IntCounterVecSlots::new(2),
            cache_misses: OnceLock::new(),
            vecs: BlockVecs {
                requests: self.requests.clone(),
                responses: self.responses.clone(),
                duration: self.duration.clone(),
                request_size: self.request_size.clone(),
                response_size: self.response_size.clone(),
                cache_hits: self.cache_hits.clone(),
                cache_misses: self.cache_misses.clone(),
                cache_entries: self.cache_entries.clone(),
            },
        }
    }

    /// Forgets which plugins are enabled (before the blocks of a new configuration register).
    pub fn clear_plugins(&self) {
        self.plugin_enabled.reset();
    }

    /// Handles for one upstream.
    pub fn upstream(&self, to: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            to: to.to_string(),
            requests: self.forward_requests.with_label_values(&[to]),
            healthcheck_failures: self.forward_healthcheck_failures.with_label_values(&[to]),
            responses: self.forward_responses.clone(),
            duration: self.forward_duration.clone(),
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

struct IntCounterVecSlots(Box<[OnceLock<IntCounter>]>);
impl IntCounterVecSlots {
    fn new(n: usize) -> Self {
        IntCounterVecSlots((0..n).map(|_| OnceLock::new()).collect())
    }
}
struct HistogramSlots(Box<[OnceLock<Histogram>]>);
impl HistogramSlots {
    fn new(n: usize) -> Self {
        HistogramSlots((0..n).map(|_| OnceLock::new()).collect())
    }
}

struct BlockVecs {
    requests: IntCounterVec,
    responses: IntCounterVec,
    duration: HistogramVec,
    request_size: HistogramVec,
    response_size: HistogramVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_entries: IntGaugeVec,
}

/// Per-server-block metric handles.
pub struct BlockMetrics {
    server: String,
    zone: String,
    requests: IntCounterVecSlots,
    responses: IntCounterVecSlots,
    duration: HistogramSlots,
    request_size: HistogramSlots,
    response_size: HistogramSlots,
    cache_hits: IntCounterVecSlots,
    cache_misses: OnceLock<IntCounter>,
    vecs: BlockVecs,
}

/// What one answered query is counted as.
#[derive(Debug, Clone, Copy)]
pub struct QueryRecord {
    /// Over TCP.
    pub tcp: bool,
    /// From an IPv6 client.
    pub ipv6: bool,
    /// Query type.
    pub qtype: u16,
    /// Response code.
    pub rcode: u16,
    /// Who answered.
    pub responder: Responder,
    /// Seconds from receipt to answer.
    pub seconds: f64,
    /// Size of the query message.
    pub request_size: usize,
    /// Size of the response.
    pub response_size: usize,
}

impl BlockMetrics {
    /// Counts one answered query.
    pub fn record(&self, q: &QueryRecord) {
        let proto = if q.tcp { "tcp" } else { "udp" };
        let family = if q.ipv6 { "2" } else { "1" };
        let ti = type_index(q.qtype);
        let slot = ((q.tcp as usize) * 2 + q.ipv6 as usize) * NTYPES + ti;
        self.requests.0[slot]
            .get_or_init(|| {
                self.vecs.requests.with_label_values(&[
                    self.server.as_str(),
                    self.zone.as_str(),
                    "",
                    proto,
                    family,
                    type_name(ti),
                ])
            })
            .inc();
        let ri = rcode_index(q.rcode);
        let pi = q.responder as usize;
        self.responses.0[ri * PLUGINS.len() + pi]
            .get_or_init(|| {
                self.vecs.responses.with_label_values(&[
                    self.server.as_str(),
                    self.zone.as_str(),
                    "",
                    &rcode_name(ri),
                    PLUGINS[pi],
                ])
            })
            .inc();
        self.duration.0[ti]
            .get_or_init(|| {
                self.vecs.duration.with_label_values(&[
                    self.server.as_str(),
                    self.zone.as_str(),
                    "",
                    type_name(ti),
                ])
            })
            .observe(q.seconds);
        let p = q.tcp as usize;
        self.request_size.0[p]
            .get_or_init(|| {
                self.vecs.request_size.with_label_values(&[
                    self.server.as_str(),
                    self.zone.as_str(),
                    "",
                    proto,
                ])
            })
            .observe(q.request_size as f64);
        self.response_size.0[p]
            .get_or_init(|| {
                self.vecs.response_size.with_label_values(&[
                    self.server.as_str(),
                    self.zone.as_str(),
                    "",
                    proto,
                ])
            })
            .observe(q.response_size as f64);
    }

    /// Counts a cache hit (`denial` for NXDOMAIN/NODATA).
    pub fn cache_hit(&self, denial: bool) {
        self.cache_hits.0[denial as usize]
            .get_or_init(|| {
                self.vecs.cache_hits.with_label_values(&[
                    self.server.as_str(),
                    if denial { "denial" } else { "success" },
                    self.zone.as_str(),
                    "",
                ])
            })
            .inc();
    }

    /// Counts a cache miss.
    pub fn cache_miss(&self) {
        self.cache_misses
            .get_or_init(|| {
                self.vecs.cache_misses.with_label_values(&[
                    self.server.as_str(),
                    self.zone.as_str(),
                    "",
                ])
            })
            .inc();
    }

    /// Gauges of cache entries (success, denial).
    pub fn cache_entries(&self) -> (IntGauge, IntGauge) {
        (
            self.vecs.cache_entries.with_label_values(&[
                self.server.as_str(),
                "success",
                self.zone.as_str(),
                "",
            ]),
            self.vecs.cache_entries.with_label_values(&[
                self.server.as_str(),
                "denial",
                self.zone.as_str(),
                "",
            ]),
        )
    }
}

/// Per-upstream metric handles.
pub struct UpstreamMetrics {
    to: String,
    /// Requests sent.
    pub requests: IntCounter,
    /// Failed health checks.
    pub healthcheck_failures: IntCounter,
    responses: IntCounterVec,
    duration: HistogramVec,
}

impl UpstreamMetrics {
    /// Counts a response with its rcode and duration.
    pub fn response(&self, rcode: u16, seconds: f64) {
        let name = rcode_name(rcode_index(rcode));
        self.responses
            .with_label_values(&[self.to.as_str(), &name])
            .inc();
        self.duration
            .with_label_values(&[self.to.as_str(), &name])
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_coredns_names() {
        let m = Metrics::new().unwrap();
        let b = m.block("dns://:53", ".", &["kubernetes", "forward"]);
        b.record(&QueryRecord {
            tcp: false,
            ipv6: false,
            qtype: 1,
            rcode: 3,
            responder: Responder::Kubernetes,
            seconds: 0.0001,
            request_size: 512,
            response_size: 100,
        });
        b.record(&QueryRecord {
            tcp: true,
            ipv6: true,
            qtype: 999,
            rcode: 0,
            responder: Responder::Forward,
            seconds: 0.01,
            request_size: 65535,
            response_size: 100,
        });
        b.cache_hit(true);
        b.cache_miss();
        m.upstream("10.0.0.1:53").requests.inc();
        let text = m.render();
        for needle in [
            r#"coredns_dns_requests_total{family="1",proto="udp",server="dns://:53",type="A",view="",zone="."} 1"#,
            r#"coredns_dns_requests_total{family="2",proto="tcp",server="dns://:53",type="other",view="",zone="."} 1"#,
            r#"coredns_dns_responses_total{plugin="kubernetes",rcode="NXDOMAIN",server="dns://:53",view="",zone="."} 1"#,
            r#"coredns_cache_hits_total{server="dns://:53",type="denial",view="",zones="."} 1"#,
            r#"coredns_cache_misses_total{server="dns://:53",view="",zones="."} 1"#,
            r#"coredns_forward_requests_total{to="10.0.0.1:53"} 1"#,
            "coredns_dns_request_duration_seconds_bucket",
            r#"coredns_plugin_enabled{name="kubernetes",server="dns://:53",view="",zone="."} 1"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
