//! Corefile parsing: CoreDNS's configuration syntax (server blocks of plugin directives) into
//! typed settings for the plugins kinit's DNS server implements.
//!
//! The syntax is CoreDNS's (Caddyfile): a server block is one or more keys
//! (`[dns://]ZONE[:PORT]`) followed by `{ … }`; each line inside is a directive (a plugin name
//! and its arguments), optionally followed by a `{ … }` block of sub-directives, which may also
//! sit on one line (`health { lameduck 5s }`). `#` starts a comment, double quotes group a word.
//! Plugins kinit does not implement are reported as warnings and otherwise ignored.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::rr::Name;

/// A Corefile that did not parse, with the line where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Corefile line {line}: {message}")]
pub struct CorefileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, CorefileError> {
    Err(CorefileError {
        line,
        message: message.into(),
    })
}

/// A parsed Corefile.
#[derive(Debug, Clone, PartialEq)]
pub struct Corefile {
    /// Server blocks in file order.
    pub blocks: Vec<ServerBlock>,
    /// Non-fatal findings (unsupported plugins or options), each naming its line.
    pub warnings: Vec<String>,
}

/// One server block: the zones and port it serves and its plugins' settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerBlock {
    /// Zones of the block's keys, lowercase, fully qualified (`.` for the root).
    pub zones: Vec<Name>,
    /// Port of the block's keys (53 when none is given).
    pub port: u16,
    /// Line of the block's first key.
    pub line: usize,
    /// `kubernetes`: cluster records.
    pub kubernetes: Option<KubernetesConfig>,
    /// `forward`: upstream resolvers.
    pub forward: Option<ForwardConfig>,
    /// `cache`: response cache for forwarded answers.
    pub cache: Option<CacheConfig>,
    /// `health`: liveness endpoint.
    pub health: Option<HealthConfig>,
    /// `ready`: readiness endpoint, with its address when one is given.
    pub ready: Option<Option<ListenAddr>>,
    /// `prometheus`: metrics endpoint address.
    pub prometheus: Option<ListenAddr>,
    /// `loop`: detect forwarding loops.
    pub loop_detect: bool,
    /// `reload`: apply Corefile edits while running.
    pub reload: Option<ReloadConfig>,
    /// `log`: one log line per query.
    pub log: bool,
    /// `errors`: log failed queries.
    pub errors: bool,
    /// `loadbalance`: rotate address records in answers.
    pub loadbalance: bool,
}

/// An address a plugin listens on: `[HOST]:PORT` (an empty host means all addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    /// The host to bind; `None` for all addresses.
    pub ip: Option<IpAddr>,
    /// The port.
    pub port: u16,
}

impl ListenAddr {
    /// The socket address to bind, all addresses (`0.0.0.0`) when no host is given.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.ip
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            self.port,
        )
    }
}

/// How pod names (`a-b-c-d.<ns>.pod.<zone>`) are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodMode {
    /// No pod records (CoreDNS's default).
    #[default]
    Disabled,
    /// Any well-formed dashed IP in an existing namespace gets its A/AAAA record.
    Insecure,
    /// Only IPs of pods that exist in that namespace.
    Verified,
}

/// Settings of the `kubernetes` plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// Zones answered from the cluster: forward zones (the cluster domain) and reverse zones.
    pub zones: Vec<Name>,
    /// Pod record mode.
    pub pods: PodMode,
    /// TTL of answers (0–3600, default 5).
    pub ttl: u32,
    /// Zones whose NXDOMAIN answers go to the next plugin instead; `Some(empty)` means all.
    pub fallthrough: Option<Vec<Name>>,
    /// Line of the directive.
    pub line: usize,
}

/// An upstream of `forward`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// `IP[:PORT]` (port 53 by default).
    Addr(SocketAddr),
    /// A resolv.conf-style file whose `nameserver` lines are the upstreams.
    ResolvConf(PathBuf),
}

/// How `forward` orders its upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardPolicy {
    /// A random order per query (CoreDNS's default).
    #[default]
    Random,
    /// Each query starts at the next upstream.
    RoundRobin,
    /// Always in the listed order.
    Sequential,
}

/// Settings of the `forward` plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardConfig {
    /// Names under this zone are forwarded.
    pub from: Name,
    /// Upstreams, as written.
    pub to: Vec<UpstreamSpec>,
    /// Zones never forwarded.
    pub except: Vec<Name>,
    /// Always TCP to the upstreams.
    pub force_tcp: bool,
    /// UDP first even for queries that came over TCP.
    pub prefer_udp: bool,
    /// Failures before an upstream counts as down (0: never).
    pub max_fails: u32,
    /// Upstream order.
    pub policy: ForwardPolicy,
    /// Interval of health checks of a failing upstream.
    pub health_check: Duration,
    /// Concurrent forwarded queries allowed; more are answered REFUSED.
    pub max_concurrent: Option<usize>,
    /// Line of the directive.
    pub line: usize,
}

/// Settings of the `cache` plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Zones cached (the block's zones when none are given).
    pub zones: Vec<Name>,
    /// Capacity of positive answers.
    pub success_capacity: usize,
    /// Maximum TTL of positive answers.
    pub success_ttl: Duration,
    /// Minimum TTL of positive answers.
    pub success_min_ttl: Duration,
    /// Capacity of NXDOMAIN/NODATA answers.
    pub denial_capacity: usize,
    /// Maximum TTL of denials.
    pub denial_ttl: Duration,
    /// Minimum TTL of denials.
    pub denial_min_ttl: Duration,
    /// How long upstream SERVFAIL answers are cached (0: not at all).
    pub servfail_ttl: Duration,
    /// Serve the TTLs as received instead of the remaining time.
    pub keepttl: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            zones: Vec::new(),
            success_capacity: 9984,
            success_ttl: Duration::from_secs(3600),
            success_min_ttl: Duration::from_secs(5),
            denial_capacity: 9984,
            denial_ttl: Duration::from_secs(1800),
            denial_min_ttl: Duration::from_secs(5),
            servfail_ttl: Duration::from_secs(5),
            keepttl: false,
        }
    }
}

/// Settings of the `health` plugin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Address, when given.
    pub addr: Option<ListenAddr>,
    /// How long to keep serving after a shutdown signal.
    pub lameduck: Duration,
}

/// Settings of the `reload` plugin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReloadConfig {
    /// How often the Corefile is checked.
    pub interval: Duration,
}

/// Default `reload` check interval: faster than CoreDNS's 30 s so ConfigMap edits show quickly.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

// ---- tokens ----

#[derive(Debug, Clone)]
struct Token {
    text: String,
    line: usize,
    /// Was written in quotes (so `{` is a word, not a brace).
    quoted: bool,
    /// First token of its line.
    line_start: bool,
}

impl Token {
    fn is(&self, s: &str) -> bool {
        !self.quoted && self.text == s
    }
}

fn tokenize(input: &str) -> Result<Vec<Token>, CorefileError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut last_line = 0;
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == '\n' {
            line += 1;
            chars.next();
            continue;
        }
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' {
            while let Some(&c) = chars.peek() {
                if c == '\n' {
                    break;
                }
                chars.next();
            }
            continue;
        }
        let start_line = line;
        let mut text = String::new();
        let mut quoted = false;
        if c == '"' {
            quoted = true;
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(n) => {
                            if n == '\n' {
                                line += 1;
                            }
                            if n != '"' && n != '\\' {
                                text.push('\\');
                            }
                            text.push(n);
                        }
                        None => break,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\n' => {
                        line += 1;
                        text.push('\n');
                    }
                    c => text.push(c),
                }
            }
            if !closed {
                return err(start_line, "unterminated quoted string: add the closing \"");
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                text.push(c);
                chars.next();
            }
        }
        out.push(Token {
            text,
            line: start_line,
            quoted,
            line_start: start_line != last_line,
        });
        last_line = start_line;
    }
    Ok(out)
}

// ---- generic structure ----

/// A directive: a name, its arguments and an optional block of sub-directives.
#[derive(Debug, Clone)]
struct Directive {
    name: String,
    args: Vec<Token>,
    block: Option<Vec<Directive>>,
    line: usize,
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn last_line(&self) -> usize {
        self.tokens.last().map(|t| t.line).unwrap_or(1)
    }

    /// Directives until the closing `}` (consumed).
    fn directives(&mut self, open_line: usize) -> Result<Vec<Directive>, CorefileError> {
        let mut out = Vec::new();
        let mut after_brace = true;
        loop {
            let Some(tok) = self.peek().cloned() else {
                return err(
                    self.last_line(),
                    format!("the block opened on line {open_line} is not closed: add a '}}'"),
                );
            };
            if tok.is("}") {
                self.pos += 1;
                return Ok(out);
            }
            if tok.is("{") {
                return err(tok.line, "unexpected '{': a block must follow a directive");
            }
            if !tok.line_start && !after_brace {
                return err(
                    tok.line,
                    format!(
                        "unexpected '{}': a directive must start on its own line",
                        tok.text
                    ),
                );
            }
            self.pos += 1;
            let mut args = Vec::new();
            let mut block = None;
            while let Some(next) = self.peek() {
                if next.line != tok.line || next.is("}") {
                    break;
                }
                if next.is("{") {
                    let open = next.line;
                    self.pos += 1;
                    block = Some(self.directives(open)?);
                    break;
                }
                args.push(next.clone());
                self.pos += 1;
            }
            out.push(Directive {
                name: tok.text.clone(),
                args,
                block,
                line: tok.line,
            });
            after_brace = false;
        }
    }
}

// ---- helpers ----

/// Parses a Go duration (`500ms`, `5s`, `1m30s`, `2h`: CoreDNS plugins take Go's
/// `time.ParseDuration` syntax), or plain seconds when `bare_seconds` is set.
pub fn parse_duration(s: &str, bare_seconds: bool) -> Option<Duration> {
    if bare_seconds {
        if let Ok(n) = s.parse::<u64>() {
            return Some(Duration::from_secs(n));
        }
    }
    kinit_component_base::parse_duration(s).ok()
}

/// Parses a zone name (`cluster.local`, `.`, `example.org.`) into a lowercase FQDN.
pub fn parse_zone(s: &str) -> Option<Name> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let name = Name::from_ascii(s).ok()?;
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    Some(name)
}

/// Reverse zones covering a CIDR (`10.96.0.0/12` → `96.10.in-addr.arpa.` … `111.10.in-addr.arpa.`),
/// split at octet (IPv4) or nibble (IPv6) boundaries, as CoreDNS does for CIDR zone arguments.
pub fn cidr_reverse_zones(cidr: &str) -> Option<Vec<Name>> {
    let net: ipnet::IpNet = cidr.parse().ok()?;
    let net = net.trunc();
    let mut zones = Vec::new();
    match net {
        ipnet::IpNet::V4(v4) => {
            let prefix = v4.prefix_len();
            let step = prefix.div_ceil(8) * 8;
            let step = step.clamp(8, 32);
            for sub in v4.subnets(step.max(prefix)).ok()? {
                let octets = sub.network().octets();
                let n = (step / 8) as usize;
                let mut labels: Vec<String> =
                    octets[..n].iter().rev().map(|o| o.to_string()).collect();
                labels.push("in-addr".into());
                labels.push("arpa".into());
                zones.push(Name::from_ascii(format!("{}.", labels.join("."))).ok()?);
                if zones.len() > 65536 {
                    return None;
                }
            }
        }
        ipnet::IpNet::V6(v6) => {
            let prefix = v6.prefix_len();
            let step = (prefix.div_ceil(4) * 4).clamp(4, 128);
            for sub in v6.subnets(step.max(prefix)).ok()? {
                let segs = sub.network().octets();
                let nibbles: Vec<u8> = segs.iter().flat_map(|b| [b >> 4, b & 0xf]).collect();
                let n = (step / 4) as usize;
                let mut labels: Vec<String> = nibbles[..n]
                    .iter()
                    .rev()
                    .map(|x| format!("{x:x}"))
                    .collect();
                labels.push("ip6".into());
                labels.push("arpa".into());
                zones.push(Name::from_ascii(format!("{}.", labels.join("."))).ok()?);
                if zones.len() > 65536 {
                    return None;
                }
            }
        }
    }
    Some(zones)
}

/// Zones from a plugin argument: a name or a CIDR.
fn zones_of_arg(tok: &Token) -> Result<Vec<Name>, CorefileError> {
    if tok.text.contains('/') {
        return cidr_reverse_zones(&tok.text).ok_or_else(|| CorefileError {
            line: tok.line,
            message: format!(
                "'{}' is not a CIDR that can be turned into reverse zones",
                tok.text
            ),
        });
    }
    parse_zone(&tok.text)
        .map(|z| vec![z])
        .ok_or_else(|| CorefileError {
            line: tok.line,
            message: format!("'{}' is not a valid zone name", tok.text),
        })
}

/// Parses `[HOST]:PORT` (host may be empty or a bracketed IPv6 address).
pub fn parse_listen_addr(s: &str) -> Option<ListenAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(ListenAddr {
            ip: Some(sa.ip()),
            port: sa.port(),
        });
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip = match host {
        "" => None,
        "localhost" => Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        h => Some(
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()?,
        ),
    };
    Some(ListenAddr { ip, port })
}

/// Parses an upstream `[dns://]IP[:PORT]`; `None` when it is not an address.
fn parse_upstream_addr(s: &str) -> Option<SocketAddr> {
    let s = s.strip_prefix("dns://").unwrap_or(s);
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Ok(ip) = inner.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, 53));
        }
    }
    None
}

fn no_args(d: &Directive) -> Result<(), CorefileError> {
    if let Some(a) = d.args.first() {
        return err(
            a.line,
            format!("'{}' takes no arguments, got '{}'", d.name, a.text),
        );
    }
    Ok(())
}

fn no_block(d: &Directive, warnings: &mut Vec<String>) {
    if d.block.is_some() {
        warnings.push(format!(
            "Corefile line {}: the options block of '{}' is not supported and was ignored",
            d.line, d.name
        ));
    }
}

fn arg_u32(tok: &Token, what: &str, max: u32) -> Result<u32, CorefileError> {
    match tok.text.parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => err(
            tok.line,
            format!(
                "{what} must be a number from 0 to {max}, got '{}'",
                tok.text
            ),
        ),
    }
}

fn arg_duration(tok: &Token, what: &str, bare_seconds: bool) -> Result<Duration, CorefileError> {
    parse_duration(&tok.text, bare_seconds).ok_or_else(|| CorefileError {
        line: tok.line,
        message: format!(
            "{what} must be a duration like 5s or 500ms, got '{}'",
            tok.text
        ),
    })
}

// ---- plugins ----

fn parse_kubernetes(
    d: &Directive,
    block_zones: &[Name],
    warnings: &mut Vec<String>,
) -> Result<KubernetesConfig, CorefileError> {
    let mut zones = Vec::new();
    for a in &d.args {
        zones.extend(zones_of_arg(a)?);
    }
    if zones.is_empty() {
        zones = block_zones.to_vec();
    }
    let mut cfg = KubernetesConfig {
        zones,
        pods: PodMode::Disabled,
        ttl: 5,
        fallthrough: None,
        line: d.line,
    };
    for sub in d.block.iter().flatten() {
        match sub.name.as_str() {
            "pods" => {
                let Some(mode) = sub.args.first() else {
                    return err(sub.line, "pods needs a mode: disabled, insecure or verified");
                };
                cfg.pods = match mode.text.as_str() {
                    "disabled" => PodMode::Disabled,
                    "insecure" => PodMode::Insecure,
                    "verified" => PodMode::Verified,
                    other => {
                        return err(
                            mode.line,
                            format!(
                                "unknown pods mode '{other}': use disabled, insecure or verified"
                            ),
                        )
                    }
                };
            }
            "ttl" => {
                let Some(t) = sub.args.first() else {
                    return err(sub.line, "ttl needs a value in seconds (0-3600)");
                };
                cfg.ttl = arg_u32(t, "ttl", 3600)?;
            }
            "fallthrough" => {
                let mut fz = Vec::new();
                for a in &sub.args {
                    fz.extend(zones_of_arg(a)?);
                }
                cfg.fallthrough = Some(fz);
            }
            "endpoint" | "tls" | "kubeconfig" | "namespaces" | "labels" | "namespace_labels"
            | "endpoint_pod_names" | "noendpoints" | "ignore" | "multicluster"
            | "resyncperiod" | "upstream" | "startup_timeout" | "apiserver_qps"
            | "apiserver_burst" | "apiserver_max_inflight" => warnings.push(format!(
                "Corefile line {}: kubernetes option '{}' is not supported by kinit dns and was ignored",
                sub.line, sub.name
            )),
            other => {
                return err(
                    sub.line,
                    format!("unknown kubernetes option '{other}'"),
                )
            }
        }
    }
    Ok(cfg)
}

fn parse_forward(
    d: &Directive,
    warnings: &mut Vec<String>,
) -> Result<ForwardConfig, CorefileError> {
    let Some(from) = d.args.first() else {
        return err(
            d.line,
            "forward needs a zone and at least one upstream: forward . 1.1.1.1",
        );
    };
    let from_zone = parse_zone(&from.text).ok_or_else(|| CorefileError {
        line: from.line,
        message: format!("'{}' is not a valid zone for forward", from.text),
    })?;
    let mut to = Vec::new();
    for a in &d.args[1..] {
        if a.text.starts_with("tls://") || a.text.starts_with("https://") {
            return err(
                a.line,
                format!(
                    "upstream '{}': DNS over TLS/HTTPS is not supported by kinit dns; use a plain IP[:PORT]",
                    a.text
                ),
            );
        }
        if let Some(sa) = parse_upstream_addr(&a.text) {
            to.push(UpstreamSpec::Addr(sa));
        } else if a.text.starts_with('/') || a.text.starts_with('.') {
            to.push(UpstreamSpec::ResolvConf(PathBuf::from(&a.text)));
        } else {
            return err(
                a.line,
                format!(
                    "upstream '{}' is neither an IP[:PORT] nor a resolv.conf file path",
                    a.text
                ),
            );
        }
    }
    if to.is_empty() {
        return err(d.line, "forward needs at least one upstream after the zone");
    }
    if to.len() > 15 {
        return err(d.line, "forward accepts at most 15 upstreams");
    }
    let mut cfg = ForwardConfig {
        from: from_zone,
        to,
        except: Vec::new(),
        force_tcp: false,
        prefer_udp: false,
        max_fails: 2,
        policy: ForwardPolicy::Random,
        health_check: Duration::from_millis(500),
        max_concurrent: None,
        line: d.line,
    };
    for sub in d.block.iter().flatten() {
        let first = sub.args.first();
        match sub.name.as_str() {
            "except" => {
                for a in &sub.args {
                    cfg.except.extend(zones_of_arg(a)?);
                }
            }
            "force_tcp" => {
                no_args(sub)?;
                cfg.force_tcp = true;
            }
            "prefer_udp" => {
                no_args(sub)?;
                cfg.prefer_udp = true;
            }
            "max_fails" => {
                let Some(a) = first else {
                    return err(sub.line, "max_fails needs a number");
                };
                cfg.max_fails = arg_u32(a, "max_fails", 1_000_000)?;
            }
            "policy" => {
                cfg.policy = match first.map(|t| t.text.as_str()) {
                    Some("random") => ForwardPolicy::Random,
                    Some("round_robin") => ForwardPolicy::RoundRobin,
                    Some("sequential") => ForwardPolicy::Sequential,
                    _ => {
                        return err(
                            sub.line,
                            "policy must be random, round_robin or sequential",
                        )
                    }
                };
            }
            "health_check" => {
                let Some(a) = first else {
                    return err(sub.line, "health_check needs a duration");
                };
                cfg.health_check = arg_duration(a, "health_check", false)?;
                if sub.args.len() > 1 {
                    warnings.push(format!(
                        "Corefile line {}: health_check options after the interval are ignored",
                        sub.line
                    ));
                }
            }
            "max_concurrent" => {
                let Some(a) = first else {
                    return err(sub.line, "max_concurrent needs a number");
                };
                let n = arg_u32(a, "max_concurrent", 1_000_000)?;
                cfg.max_concurrent = Some(n as usize);
            }
            "expire" => {
                // No connection pool: every query uses a fresh socket (random source port), so
                // there is nothing to expire. The value is still checked.
                if let Some(a) = first {
                    arg_duration(a, "expire", false)?;
                }
            }
            "tls" | "tls_servername" | "next" | "failfast_all_unhealthy_upstreams"
            | "failover" => warnings.push(format!(
                "Corefile line {}: forward option '{}' is not supported by kinit dns and was ignored",
                sub.line, sub.name
            )),
            other => return err(sub.line, format!("unknown forward option '{other}'")),
        }
    }
    Ok(cfg)
}

fn parse_cache(
    d: &Directive,
    block_zones: &[Name],
    warnings: &mut Vec<String>,
) -> Result<CacheConfig, CorefileError> {
    let mut cfg = CacheConfig::default();
    let mut args = d.args.iter();
    if let Some(first) = d.args.first() {
        if first.text.chars().all(|c| c.is_ascii_digit()) {
            let ttl = Duration::from_secs(arg_u32(first, "cache TTL", u32::MAX)? as u64);
            cfg.success_ttl = ttl;
            cfg.denial_ttl = ttl;
            args.next();
        }
    }
    for a in args {
        cfg.zones.extend(zones_of_arg(a)?);
    }
    if cfg.zones.is_empty() {
        cfg.zones = block_zones.to_vec();
    }
    for sub in d.block.iter().flatten() {
        match sub.name.as_str() {
            "success" | "denial" => {
                let Some(cap) = sub.args.first() else {
                    return err(sub.line, format!("{} needs a capacity", sub.name));
                };
                let cap = arg_u32(cap, "capacity", u32::MAX)? as usize;
                let ttl = sub
                    .args
                    .get(1)
                    .map(|t| arg_u32(t, "TTL", u32::MAX))
                    .transpose()?;
                let min = sub
                    .args
                    .get(2)
                    .map(|t| arg_u32(t, "minimum TTL", u32::MAX))
                    .transpose()?;
                let (c, t, m) = if sub.name == "success" {
                    (
                        &mut cfg.success_capacity,
                        &mut cfg.success_ttl,
                        &mut cfg.success_min_ttl,
                    )
                } else {
                    (
                        &mut cfg.denial_capacity,
                        &mut cfg.denial_ttl,
                        &mut cfg.denial_min_ttl,
                    )
                };
                *c = cap;
                if let Some(ttl) = ttl {
                    *t = Duration::from_secs(ttl as u64);
                }
                if let Some(min) = min {
                    *m = Duration::from_secs(min as u64);
                }
            }
            "servfail" => {
                let Some(a) = sub.args.first() else {
                    return err(sub.line, "servfail needs a duration");
                };
                let dur = arg_duration(a, "servfail", false)?;
                if dur > Duration::from_secs(300) {
                    return err(a.line, "servfail may not exceed 5m");
                }
                cfg.servfail_ttl = dur;
            }
            "keepttl" => {
                no_args(sub)?;
                cfg.keepttl = true;
            }
            "disable" => match sub.args.first().map(|t| t.text.as_str()) {
                Some("success") => cfg.success_capacity = 0,
                Some("denial") => cfg.denial_capacity = 0,
                _ => return err(sub.line, "disable needs 'success' or 'denial'"),
            },
            "prefetch" | "serve_stale" => warnings.push(format!(
                "Corefile line {}: cache option '{}' is not supported by kinit dns and was ignored",
                sub.line, sub.name
            )),
            other => return err(sub.line, format!("unknown cache option '{other}'")),
        }
    }
    Ok(cfg)
}

fn parse_addr_arg(d: &Directive) -> Result<Option<ListenAddr>, CorefileError> {
    match d.args.first() {
        None => Ok(None),
        Some(a) => parse_listen_addr(&a.text)
            .map(Some)
            .ok_or_else(|| CorefileError {
                line: a.line,
                message: format!("{}: '{}' is not an address like :8080", d.name, a.text),
            }),
    }
}

/// Parses a server block key: `[dns://]ZONE[:PORT]`, or a CIDR for reverse zones.
fn parse_key(tok: &Token) -> Result<(Vec<Name>, u16), CorefileError> {
    let mut s = tok.text.trim_end_matches(',');
    for scheme in ["tls://", "https://", "grpc://", "quic://", "h3://"] {
        if s.starts_with(scheme) {
            return err(
                tok.line,
                format!(
                    "server block '{}': only plain DNS (dns://) is supported",
                    tok.text
                ),
            );
        }
    }
    s = s.strip_prefix("dns://").unwrap_or(s);
    let (zone, port) = match s.rsplit_once(':') {
        Some((z, p)) if !z.contains(':') || z.ends_with(']') => {
            let port = p.parse::<u16>().map_err(|_| CorefileError {
                line: tok.line,
                message: format!("server block '{}': '{p}' is not a port", tok.text),
            })?;
            (z, port)
        }
        _ => (s, 53),
    };
    let zone = if zone.is_empty() { "." } else { zone };
    let zt = Token {
        text: zone.to_string(),
        ..tok.clone()
    };
    Ok((zones_of_arg(&zt)?, port))
}

fn parse_block(
    keys: &[Token],
    directives: &[Directive],
    warnings: &mut Vec<String>,
) -> Result<ServerBlock, CorefileError> {
    let mut zones = Vec::new();
    let mut port = None;
    for k in keys {
        let (z, p) = parse_key(k)?;
        if let Some(prev) = port {
            if prev != p {
                return err(
                    k.line,
                    "all keys of one server block must use the same port; write a second block",
                );
            }
        }
        port = Some(p);
        zones.extend(z);
    }
    let line = keys.first().map(|k| k.line).unwrap_or(1);
    let mut b = ServerBlock {
        zones,
        port: port.unwrap_or(53),
        line,
        kubernetes: None,
        forward: None,
        cache: None,
        health: None,
        ready: None,
        prometheus: None,
        loop_detect: false,
        reload: None,
        log: false,
        errors: false,
        loadbalance: false,
    };
    let once = |present: bool, d: &Directive| -> Result<(), CorefileError> {
        if present {
            return err(
                d.line,
                format!("'{}' may appear only once per server block", d.name),
            );
        }
        Ok(())
    };
    for d in directives {
        match d.name.as_str() {
            "kubernetes" => {
                once(b.kubernetes.is_some(), d)?;
                b.kubernetes = Some(parse_kubernetes(d, &b.zones, warnings)?);
            }
            "forward" => {
                once(b.forward.is_some(), d)?;
                b.forward = Some(parse_forward(d, warnings)?);
            }
            "cache" => {
                once(b.cache.is_some(), d)?;
                b.cache = Some(parse_cache(d, &b.zones, warnings)?);
            }
            "health" => {
                once(b.health.is_some(), d)?;
                let addr = parse_addr_arg(d)?;
                let mut lameduck = Duration::ZERO;
                for sub in d.block.iter().flatten() {
                    match sub.name.as_str() {
                        "lameduck" => {
                            let Some(a) = sub.args.first() else {
                                return err(sub.line, "lameduck needs a duration like 5s");
                            };
                            lameduck = arg_duration(a, "lameduck", false)?;
                        }
                        other => return err(sub.line, format!("unknown health option '{other}'")),
                    }
                }
                b.health = Some(HealthConfig { addr, lameduck });
            }
            "ready" => {
                once(b.ready.is_some(), d)?;
                no_block(d, warnings);
                b.ready = Some(parse_addr_arg(d)?);
            }
            "prometheus" => {
                once(b.prometheus.is_some(), d)?;
                no_block(d, warnings);
                b.prometheus = Some(parse_addr_arg(d)?.unwrap_or(ListenAddr {
                    ip: Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                    port: 9153,
                }));
            }
            "loop" => {
                no_args(d)?;
                b.loop_detect = true;
            }
            "reload" => {
                let interval = match d.args.first() {
                    Some(a) => {
                        let i = arg_duration(a, "reload interval", false)?;
                        if i < Duration::from_secs(1) {
                            return err(a.line, "reload interval must be at least 1s");
                        }
                        i
                    }
                    None => DEFAULT_RELOAD_INTERVAL,
                };
                if let Some(j) = d.args.get(1) {
                    arg_duration(j, "reload jitter", false)?;
                }
                b.reload = Some(ReloadConfig { interval });
            }
            "log" => {
                no_block(d, warnings);
                b.log = true;
            }
            "errors" => {
                no_block(d, warnings);
                b.errors = true;
            }
            "loadbalance" => {
                match d.args.first().map(|t| t.text.as_str()) {
                    None | Some("round_robin") => {}
                    Some(other) => warnings.push(format!(
                        "Corefile line {}: loadbalance policy '{other}' is not supported; rotating records (round_robin)",
                        d.line
                    )),
                }
                b.loadbalance = true;
            }
            other => warnings.push(format!(
                "Corefile line {}: plugin '{other}' is not supported by kinit dns and was ignored",
                d.line
            )),
        }
    }
    if b.kubernetes.is_none() && b.forward.is_none() {
        warnings.push(format!(
            "Corefile line {line}: server block has neither kubernetes nor forward; it answers SERVFAIL"
        ));
    }
    Ok(b)
}

/// Parses a Corefile.
pub fn parse(input: &str) -> Result<Corefile, CorefileError> {
    let tokens = tokenize(input)?;
    let mut p = Parser { tokens, pos: 0 };
    let mut blocks = Vec::new();
    let mut warnings = Vec::new();
    while p.pos < p.tokens.len() {
        let mut keys = Vec::new();
        loop {
            let Some(tok) = p.peek().cloned() else {
                let line = keys
                    .last()
                    .map(|k: &Token| k.line)
                    .unwrap_or_else(|| p.last_line());
                return err(line, "server block keys must be followed by '{'");
            };
            if tok.is("{") {
                p.pos += 1;
                break;
            }
            if tok.is("}") {
                return err(tok.line, "unexpected '}' outside a server block");
            }
            if tok.text.starts_with('(') && tok.text.ends_with(')') {
                return err(tok.line, "Corefile snippets and import are not supported");
            }
            for part in tok.text.split(',').filter(|s| !s.is_empty()) {
                keys.push(Token {
                    text: part.to_string(),
                    ..tok.clone()
                });
            }
            p.pos += 1;
        }
        if keys.is_empty() {
            let line = p.tokens[p.pos - 1].line;
            return err(line, "a server block needs a key such as .:53 before '{'");
        }
        let open = p.tokens[p.pos - 1].line;
        let directives = p.directives(open)?;
        blocks.push(parse_block(&keys, &directives, &mut warnings)?);
    }
    if blocks.is_empty() {
        return err(
            1,
            "the Corefile has no server block; write e.g. '.:53 { forward . /etc/resolv.conf }'",
        );
    }
    for (i, a) in blocks.iter().enumerate() {
        for b in &blocks[i + 1..] {
            if a.port == b.port {
                if let Some(z) = a.zones.iter().find(|z| b.zones.contains(z)) {
                    return err(
                        b.line,
                        format!(
                            "zone '{z}' on port {} is already served by the block on line {}",
                            b.port, a.line
                        ),
                    );
                }
            }
        }
    }
    Ok(Corefile { blocks, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kubeadm default, with `health` written on one line.
    pub const KUBEADM: &str = r#".:53 {
    errors
    health { lameduck 5s }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf { max_concurrent 1000 }
    cache 30
    loop
    reload
    loadbalance
}
"#;

    fn n(s: &str) -> Name {
        parse_zone(s).unwrap()
    }

    #[test]
    fn kubeadm_default() {
        let cf = parse(KUBEADM).unwrap();
        assert!(cf.warnings.is_empty(), "{:?}", cf.warnings);
        assert_eq!(cf.blocks.len(), 1);
        let b = &cf.blocks[0];
        assert_eq!(b.port, 53);
        assert_eq!(b.zones, vec![Name::root()]);
        assert!(b.errors && b.loop_detect && b.loadbalance && !b.log);
        assert_eq!(
            b.health,
            Some(HealthConfig {
                addr: None,
                lameduck: Duration::from_secs(5)
            })
        );
        assert_eq!(b.ready, Some(None));
        assert_eq!(
            b.prometheus,
            Some(ListenAddr {
                ip: None,
                port: 9153
            })
        );
        let k = b.kubernetes.as_ref().unwrap();
        assert_eq!(
            k.zones,
            vec![n("cluster.local"), n("in-addr.arpa"), n("ip6.arpa")]
        );
        assert_eq!(k.pods, PodMode::Insecure);
        assert_eq!(k.ttl, 30);
        assert_eq!(k.fallthrough, Some(vec![n("in-addr.arpa"), n("ip6.arpa")]));
        let f = b.forward.as_ref().unwrap();
        assert_eq!(f.from, Name::root());
        assert_eq!(
            f.to,
            vec![UpstreamSpec::ResolvConf("/etc/resolv.conf".into())]
        );
        assert_eq!(f.max_concurrent, Some(1000));
        let c = b.cache.as_ref().unwrap();
        assert_eq!(c.success_ttl, Duration::from_secs(30));
        assert_eq!(c.denial_ttl, Duration::from_secs(30));
        assert_eq!(
            b.reload,
            Some(ReloadConfig {
                interval: DEFAULT_RELOAD_INTERVAL
            })
        );
    }

    #[test]
    fn multi_line_blocks_and_variants() {
        let cf = parse(
            "# comment\ndns://cluster.local:1053 example.org:1053 {\n  health :8081 {\n    lameduck 2s\n  }\n  kubernetes {\n    pods verified\n    fallthrough\n  }\n  forward . 10.0.0.1 [2001:db8::1]:5353 1.1.1.1:53 {\n    except foo.local\n    policy sequential\n    force_tcp\n    max_fails 0\n    health_check 1s\n  }\n  cache 300 example.org {\n    success 100 60 1\n    denial 50\n    servfail 0\n  }\n  log\n  reload 10s 5s\n  hosts /etc/hosts\n}\n.:1054 {\n  forward . 9.9.9.9\n}\n",
        )
        .unwrap();
        assert_eq!(cf.blocks.len(), 2);
        let b = &cf.blocks[0];
        assert_eq!(b.port, 1053);
        assert_eq!(b.zones, vec![n("cluster.local"), n("example.org")]);
        assert_eq!(
            b.health.unwrap().addr,
            Some(ListenAddr {
                ip: None,
                port: 8081
            })
        );
        assert_eq!(b.health.unwrap().lameduck, Duration::from_secs(2));
        let k = b.kubernetes.as_ref().unwrap();
        assert_eq!(k.zones, b.zones, "kubernetes defaults to the block's zones");
        assert_eq!(k.pods, PodMode::Verified);
        assert_eq!(k.ttl, 5);
        assert_eq!(k.fallthrough, Some(vec![]));
        let f = b.forward.as_ref().unwrap();
        assert_eq!(
            f.to,
            vec![
                UpstreamSpec::Addr("10.0.0.1:53".parse().unwrap()),
                UpstreamSpec::Addr("[2001:db8::1]:5353".parse().unwrap()),
                UpstreamSpec::Addr("1.1.1.1:53".parse().unwrap()),
            ]
        );
        assert_eq!(f.except, vec![n("foo.local")]);
        assert_eq!(f.policy, ForwardPolicy::Sequential);
        assert!(f.force_tcp);
        assert_eq!(f.max_fails, 0);
        assert_eq!(f.health_check, Duration::from_secs(1));
        let c = b.cache.as_ref().unwrap();
        assert_eq!(c.zones, vec![n("example.org")]);
        assert_eq!(c.success_capacity, 100);
        assert_eq!(c.success_ttl, Duration::from_secs(60));
        assert_eq!(c.success_min_ttl, Duration::from_secs(1));
        assert_eq!(c.denial_capacity, 50);
        assert_eq!(c.denial_ttl, Duration::from_secs(300));
        assert_eq!(c.servfail_ttl, Duration::ZERO);
        assert!(b.log);
        assert_eq!(b.reload.unwrap().interval, Duration::from_secs(10));
        assert_eq!(cf.warnings.len(), 1);
        assert!(cf.warnings[0].contains("line 24") && cf.warnings[0].contains("hosts"));
        assert_eq!(cf.blocks[1].port, 1054);
    }

    #[test]
    fn errors_carry_line_numbers() {
        let cases: &[(&str, usize, &str)] = &[
            (
                ".:53 {\n  kubernetes cluster.local {\n    pods sometimes\n  }\n}\n",
                3,
                "pods mode",
            ),
            (".:53 {\n  forward .\n}\n", 2, "at least one upstream"),
            (".:53 {\n  cache 30\n", 2, "not closed"),
            (".:53 {\n  errors\n}\n}\n", 4, "unexpected '}'"),
            (
                ".:53 {\n  kubernetes cluster.local {\n    ttl 99999\n  }\n}\n",
                3,
                "ttl",
            ),
            (".:53 {\n\n  forward . not-an-ip\n}\n", 3, "neither an IP"),
            (".:abc {\n}\n", 1, "not a port"),
            (
                ".:53 {\n  health {\n    lameduck soon\n  }\n}\n",
                3,
                "duration",
            ),
            (".:53 {\n  forward . tls://1.1.1.1\n}\n", 2, "TLS"),
            (".:53 {\n  cache 30\n  cache 60\n}\n", 3, "only once"),
            (
                ".:53 {\n  forward . 1.1.1.1 {\n    bogus 1\n  }\n}\n",
                3,
                "unknown forward option",
            ),
            (".:53 {\n  loop now\n}\n", 2, "no arguments"),
            ("", 1, "no server block"),
            (
                ".:53 {\n  errors\n}\n.:53 {\n  errors\n}\n",
                4,
                "already served",
            ),
            (".:53 {\n  log \"unterminated\n}\n", 2, "unterminated"),
        ];
        for (input, line, needle) in cases {
            let e = parse(input).expect_err(input);
            assert_eq!(e.line, *line, "{input:?}: {e}");
            assert!(e.message.contains(needle), "{input:?}: {e}");
            assert!(e.to_string().starts_with(&format!("Corefile line {line}:")));
        }
    }

    #[test]
    fn unknown_plugins_warn() {
        let cf = parse(".:53 {\n  rewrite name foo bar\n  hosts {\n    fallthrough\n  }\n  forward . 8.8.8.8\n}\n").unwrap();
        assert_eq!(cf.warnings.len(), 2);
        assert!(cf.warnings[0].contains("line 2") && cf.warnings[0].contains("rewrite"));
        assert!(cf.warnings[1].contains("line 3") && cf.warnings[1].contains("hosts"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s", false), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_duration("500ms", false),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("1m30s", false),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_duration("30", true), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30", false), None);
        assert_eq!(parse_duration("soon", false), None);
        assert_eq!(parse_duration("", false), None);
    }

    #[test]
    fn cidr_zones() {
        let z = cidr_reverse_zones("10.96.0.0/12").unwrap();
        assert_eq!(z.len(), 16);
        assert_eq!(z[0], n("96.10.in-addr.arpa"));
        assert_eq!(z[15], n("111.10.in-addr.arpa"));
        assert_eq!(
            cidr_reverse_zones("10.0.0.0/8").unwrap(),
            vec![n("10.in-addr.arpa")]
        );
        assert_eq!(
            cidr_reverse_zones("fd00::/8").unwrap(),
            vec![n("d.f.ip6.arpa")]
        );
        let cf = parse(".:53 {\n  kubernetes cluster.local 10.0.0.0/24\n}\n").unwrap();
        assert_eq!(
            cf.blocks[0].kubernetes.as_ref().unwrap().zones,
            vec![n("cluster.local"), n("0.0.10.in-addr.arpa")]
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr(":9153"),
            Some(ListenAddr {
                ip: None,
                port: 9153
            })
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:8080").unwrap().socket_addr(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("[::1]:53").unwrap().ip,
            Some("::1".parse().unwrap())
        );
        assert_eq!(parse_listen_addr("9153"), None);
    }
}
