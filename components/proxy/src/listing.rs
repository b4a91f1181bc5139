//! The kernel's copy of the proxy's table, read from nft's JSON listing (`nft -j list table`),
//! in the forms the full resync and the tamper check compare with the model.
//!
//! nft lists a rule as JSON expressions, not as the text it was given, and it rewrites some
//! of what it is given: hexadecimal numbers come back decimal, `or`/`xor` as `|`/`^`, a
//! one-element anonymous set as its element, `reject` with the default ICMP type spelled
//! out, overlapping or adjacent address intervals of an anonymous set merged (sometimes into
//! a range that is no prefix), `/32` prefixes as plain addresses, set elements sorted. So:
//!
//! - [`render_rule`] and [`render_element`] turn the JSON back into nft syntax, the way the
//!   proxy writes it; anything they do not know is rendered as `?` followed by its JSON, so
//!   it never equals a rule of the proxy;
//! - [`normalize`] removes the differences listed above from a rule or element in nft syntax;
//!   [`same_text`] compares a written and a listed text through it.
//!
//! Compared this way, two rules are equal when they have the same matches (the same payload
//! fields, meta and ct keys, fib lookups, operators other than `==`, addresses and address
//! sets as sets of addresses, numbers, protocol names, set and map references) and the same
//! statements (verdicts with their targets, `numgen` dispatch maps, `dnat` addresses and
//! ports, masquerade flags, mark changes, set updates, the reject type, counters) in the same
//! order. Rule comments and counter values are not compared.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde_json::Value;

/// How much of a listing is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Names, kinds and declarations only (what a full resync needs).
    Declarations,
    /// Also every rule and the elements of sets and maps without timeouts (for the tamper
    /// check). Elements of sets with a timeout (affinity sets, filled by packets) are not
    /// read.
    Contents,
}

/// The hook of a base chain, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedHook {
    /// `filter`, `nat` or `route`.
    pub kind: String,
    /// The netfilter hook.
    pub hook: String,
    /// The numeric priority (`None` when nft listed none or a non-numeric one).
    pub priority: Option<i64>,
    /// The policy (`accept` or `drop`).
    pub policy: String,
}

/// One chain of the listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListedChain {
    /// The hook, for a base chain.
    pub hook: Option<ListedHook>,
    /// Its rules in order, rendered by [`render_rule`] (empty with [`Detail::Declarations`]).
    pub rules: Vec<String>,
    /// How many rules it has.
    pub rule_count: usize,
}

/// The shape of a set or map: what its elements are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetShape {
    /// Whether it is a map (elements carry data).
    pub is_map: bool,
    /// The key type, concatenations joined with ` . ` (e.g. `ipv4_addr . inet_proto`).
    pub key_type: String,
    /// The data type of a map (e.g. `verdict`).
    pub data_type: Option<String>,
    /// The default element timeout in seconds, if any.
    pub timeout_seconds: Option<u64>,
}

impl SetShape {
    /// The shape a declaration body as the proxy writes it describes: `type K;` or
    /// `type K : D;`, optionally `timeout Ns;` (other clauses do not change the shape).
    pub fn from_declaration(is_map: bool, declaration: &str) -> SetShape {
        let mut shape = SetShape {
            is_map,
            key_type: String::new(),
            data_type: None,
            timeout_seconds: None,
        };
        for clause in declaration.split(';').map(str::trim) {
            if let Some(types) = clause.strip_prefix("type ") {
                match types.split_once(" : ") {
                    Some((key, data)) => {
                        shape.key_type = key.trim().to_string();
                        shape.data_type = Some(data.trim().to_string());
                    }
                    None => shape.key_type = types.trim().to_string(),
                }
            } else if let Some(t) = clause.strip_prefix("timeout ") {
                shape.timeout_seconds = t.trim().trim_end_matches('s').parse().ok();
            }
        }
        shape
    }
}

impl std::fmt::Display for SetShape {
    /// `map type K : D`, `set type K`, with `timeout Ns` when there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_map { "map" } else { "set" };
        write!(f, "{kind} type {}", self.key_type)?;
        if let Some(data) = &self.data_type {
            write!(f, " : {data}")?;
        }
        if let Some(t) = self.timeout_seconds {
            write!(f, " timeout {t}s")?;
        }
        Ok(())
    }
}

/// One set or map of the listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedSet {
    /// What its elements are.
    pub shape: SetShape,
    /// Its elements rendered by [`render_element`] (empty with [`Detail::Declarations`] and
    /// for sets with a timeout).
    pub elements: Vec<String>,
    /// How many elements it has.
    pub element_count: usize,
}

/// Everything the listing of one table holds that the proxy compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableListing {
    /// Chains by name.
    pub chains: BTreeMap<String, ListedChain>,
    /// Sets and maps by name (nft requires names unique across both).
    pub sets: BTreeMap<String, ListedSet>,
}

impl TableListing {
    /// Reads nft's JSON listing of one table.
    pub fn from_json(listing: &Value, detail: Detail) -> TableListing {
        let mut out = TableListing::default();
        let items = listing
            .get("nftables")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let contents = detail == Detail::Contents;
        for item in items {
            if let Some(chain) = item.get("chain") {
                let Some(name) = chain.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let hook = chain
                    .get("hook")
                    .and_then(Value::as_str)
                    .map(|hook| ListedHook {
                        kind: text(chain.get("type")),
                        hook: hook.to_string(),
                        priority: chain.get("prio").and_then(Value::as_i64),
                        policy: text(chain.get("policy")),
                    });
                out.chains.entry(name.to_string()).or_default().hook = hook;
            } else if let Some(rule) = item.get("rule") {
                let Some(name) = rule.get("chain").and_then(Value::as_str) else {
                    continue;
                };
                let chain = out.chains.entry(name.to_string()).or_default();
                chain.rule_count += 1;
                if contents {
                    let expr = rule
                        .get("expr")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    chain.rules.push(render_rule(expr));
                }
            } else if let Some((is_map, set)) = item
                .get("map")
                .map(|m| (true, m))
                .or_else(|| item.get("set").map(|s| (false, s)))
            {
                let Some(name) = set.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let shape = SetShape {
                    is_map,
                    key_type: type_text(set.get("type")),
                    data_type: is_map.then(|| type_text(set.get("map"))),
                    timeout_seconds: set.get("timeout").and_then(Value::as_u64),
                };
                let elems = set
                    .get("elem")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let elements = if contents && shape.timeout_seconds.is_none() {
                    elems.iter().map(|e| render_element(e, is_map)).collect()
                } else {
                    Vec::new()
                };
                out.sets.insert(
                    name.to_string(),
                    ListedSet {
                        shape,
                        elements,
                        element_count: elems.len(),
                    },
                );
            }
        }
        out
    }
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_string()
}

/// A set's `type` (a string, or an array for concatenations) as `a . b . c`.
fn type_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| p.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(" . "),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// A rule (its `expr` array) in nft syntax.
pub fn render_rule(expr: &[Value]) -> String {
    expr.iter().map(statement).collect::<Vec<_>>().join(" ")
}

/// A set element (`key`) or map element (`key : data`) in nft syntax.
pub fn render_element(elem: &Value, is_map: bool) -> String {
    match (is_map, elem) {
        (true, Value::Array(pair)) if pair.len() == 2 => {
            format!("{} : {}", expression(&pair[0]), expression(&pair[1]))
        }
        (true, _) => unknown(elem),
        (false, e) => expression(e),
    }
}

fn unknown(v: &Value) -> String {
    format!("?{v}")
}

/// The only key of a one-key object, and its value.
fn single(v: &Value) -> Option<(&str, &Value)> {
    let o = v.as_object()?;
    if o.len() != 1 {
        return None;
    }
    o.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn statement(v: &Value) -> String {
    let Some((kind, body)) = single(v) else {
        return unknown(v);
    };
    match kind {
        "match" => {
            let left = body.get("left").map(expression).unwrap_or_default();
            let right = body.get("right").map(expression).unwrap_or_default();
            match body.get("op").and_then(Value::as_str).unwrap_or("==") {
                // Implicit in nft syntax (`in` is how flag matches such as `ct state new` list).
                "==" | "in" => format!("{left} {right}"),
                op => format!("{left} {op} {right}"),
            }
        }
        "vmap" => format!(
            "{} vmap {}",
            body.get("key").map(expression).unwrap_or_default(),
            body.get("data").map(expression).unwrap_or_default()
        ),
        "mangle" => format!(
            "{} set {}",
            body.get("key").map(expression).unwrap_or_default(),
            body.get("value").map(expression).unwrap_or_default()
        ),
        "masquerade" | "snat" | "dnat" | "redirect" => nat(kind, body),
        "reject" => reject(body),
        "set" if body.is_object() => format!(
            "{} {} {{ {} }}",
            text(body.get("op")),
            text(body.get("set")),
            body.get("elem").map(expression).unwrap_or_default()
        ),
        "counter" => "counter".into(),
        _ => expression(v),
    }
}

fn nat(kind: &str, body: &Value) -> String {
    let mut s = kind.to_string();
    if let Some(family) = body.get("family").and_then(Value::as_str) {
        s.push(' ');
        s.push_str(family);
    }
    let addr = body.get("addr").map(expression);
    let port = body.get("port").map(expression);
    match (addr, port) {
        (Some(a), Some(p)) if a.contains(':') => s.push_str(&format!(" to [{a}]:{p}")),
        (Some(a), Some(p)) => s.push_str(&format!(" to {a}:{p}")),
        (Some(a), None) => s.push_str(&format!(" to {a}")),
        (None, Some(p)) => s.push_str(&format!(" to :{p}")),
        (None, None) => {}
    }
    match body.get("flags") {
        Some(Value::String(f)) => s.push_str(&format!(" {f}")),
        Some(Value::Array(fs)) => {
            let fs: Vec<&str> = fs.iter().filter_map(Value::as_str).collect();
            s.push_str(&format!(" {}", fs.join(",")));
        }
        _ => {}
    }
    s
}

/// `reject` with its type: the default (ICMP port unreachable, whatever the family) is plain
/// `reject`, as written.
fn reject(body: &Value) -> String {
    let kind = body.get("type").and_then(Value::as_str);
    let code = body.get("expr").and_then(Value::as_str);
    match (kind, code) {
        (None, None) => "reject".into(),
        (Some("icmp" | "icmpv6" | "icmpx") | None, Some("port-unreachable") | None) => {
            "reject".into()
        }
        (Some(k), None) => format!("reject with {k}"),
        (Some(k), Some(c)) => format!("reject with {k} {c}"),
        (None, Some(c)) => format!("reject with {c}"),
    }
}

fn expression(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        Value::Array(_) => unknown(v),
        Value::Object(_) => {
            let Some((kind, body)) = single(v) else {
                return unknown(v);
            };
            match kind {
                "payload" => match (
                    body.get("protocol").and_then(Value::as_str),
                    body.get("field").and_then(Value::as_str),
                ) {
                    (Some(p), Some(f)) => format!("{p} {f}"),
                    _ => format!(
                        "@{},{},{}",
                        text(body.get("base")),
                        body.get("offset").map(expression).unwrap_or_default(),
                        body.get("len").map(expression).unwrap_or_default()
                    ),
                },
                "meta" => format!("meta {}", text(body.get("key"))),
                "ct" => match body.get("dir").and_then(Value::as_str) {
                    Some(dir) => format!("ct {dir} {}", text(body.get("key"))),
                    None => format!("ct {}", text(body.get("key"))),
                },
                "fib" => {
                    let flags = match body.get("flags") {
                        Some(Value::String(f)) => f.clone(),
                        Some(Value::Array(fs)) => fs
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" . "),
                        _ => String::new(),
                    };
                    format!("fib {flags} {}", text(body.get("result")))
                }
                "numgen" => {
                    let mut s = format!(
                        "numgen {} mod {}",
                        text(body.get("mode")),
                        body.get("mod").map(expression).unwrap_or_default()
                    );
                    if let Some(offset) = body.get("offset").and_then(Value::as_u64) {
                        if offset != 0 {
                            s.push_str(&format!(" offset {offset}"));
                        }
                    }
                    s
                }
                "concat" => match body.as_array() {
                    Some(parts) => parts.iter().map(expression).collect::<Vec<_>>().join(" . "),
                    None => unknown(v),
                },
                "prefix" => format!(
                    "{}/{}",
                    body.get("addr").map(expression).unwrap_or_default(),
                    body.get("len").map(expression).unwrap_or_default()
                ),
                "range" => match body.as_array().map(Vec::as_slice) {
                    Some([a, b]) => format!("{}-{}", expression(a), expression(b)),
                    _ => unknown(v),
                },
                "set" => match body {
                    Value::Array(items) => {
                        let items: Vec<String> = items
                            .iter()
                            .map(|item| match item.as_array().map(Vec::as_slice) {
                                Some([k, d]) => format!("{} : {}", expression(k), expression(d)),
                                _ => expression(item),
                            })
                            .collect();
                        format!("{{ {} }}", items.join(", "))
                    }
                    other => format!("{{ {} }}", expression(other)),
                },
                "elem" => body
                    .get("val")
                    .map(expression)
                    .unwrap_or_else(|| unknown(v)),
                "&" | "|" | "^" | "<<" | ">>" => match body.as_array().map(Vec::as_slice) {
                    Some([a, b]) => format!("{} {kind} {}", expression(a), expression(b)),
                    _ => unknown(v),
                },
                "jump" | "goto" => format!("{kind} {}", text(body.get("target"))),
                "accept" | "drop" | "return" | "continue" => kind.to_string(),
                _ => unknown(v),
            }
        }
    }
}

/// Whether a rule or element the proxy wrote (`written`) and one nft listed (`listed`,
/// rendered from JSON) mean the same, by [`normalize`].
pub fn same_text(written: &str, listed: &str) -> bool {
    written == listed || normalize(written) == normalize(listed)
}

/// A rule or element in nft syntax with the differences between how nft is given a rule and
/// how it lists it removed (see the module documentation): `==` dropped, `or`/`and`/`xor` as
/// `|`/`&`/`^`, hexadecimal numbers decimal, addresses and prefixes in canonical form,
/// anonymous sets of addresses as the merged intervals they cover, other anonymous sets
/// sorted, and a one-element anonymous set as its element (except the element list of a
/// `vmap` and of a set statement such as `update @set { ip saddr }`).
pub fn normalize(text: &str) -> String {
    let tokens = tokenize(text);
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == "{" {
            let mut depth = 0usize;
            let mut elements: Vec<Vec<String>> = vec![Vec::new()];
            let mut j = i + 1;
            while j < tokens.len() {
                match tokens[j] {
                    "{" => depth += 1,
                    "}" if depth == 0 => break,
                    "}" => depth -= 1,
                    "," if depth == 0 => {
                        elements.push(Vec::new());
                        j += 1;
                        continue;
                    }
                    _ => {}
                }
                if let Some(t) = normalize_token(tokens[j]) {
                    if let Some(last) = elements.last_mut() {
                        last.push(t);
                    }
                }
                j += 1;
            }
            let keep_braces = out
                .last()
                .is_some_and(|p| p == "vmap" || p.starts_with('@'));
            out.push(group(elements, keep_braces));
            i = j + 1;
            continue;
        }
        if let Some(t) = normalize_token(tokens[i]) {
            out.push(t);
        }
        i += 1;
    }
    out.join(" ")
}

/// Splits on white space, with `{`, `}` and `,` always tokens of their own.
fn tokenize(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    for word in text.split_whitespace() {
        let mut start = 0;
        for (i, c) in word.char_indices() {
            if matches!(c, '{' | '}' | ',') {
                if start < i {
                    tokens.push(&word[start..i]);
                }
                tokens.push(&word[i..i + 1]);
                start = i + 1;
            }
        }
        if start < word.len() {
            tokens.push(&word[start..]);
        }
    }
    tokens
}

fn normalize_token(token: &str) -> Option<String> {
    Some(match token {
        "==" => return None,
        "or" => "|".into(),
        "and" => "&".into(),
        "xor" => "^".into(),
        t => {
            if let Some(hex) = t.strip_prefix("0x") {
                if let Ok(n) = u128::from_str_radix(hex, 16) {
                    return Some(n.to_string());
                }
            }
            if let Some(iv) = Interval::parse(t) {
                return Some(iv.to_string());
            }
            if let Ok(sa) = t.parse::<SocketAddr>() {
                return Some(sa.to_string());
            }
            t.to_string()
        }
    })
}

fn group(elements: Vec<Vec<String>>, keep_braces: bool) -> String {
    let mut elements: Vec<String> = elements
        .into_iter()
        .filter(|e| !e.is_empty())
        .map(|e| e.join(" "))
        .collect();
    let intervals: Option<Vec<Interval>> = elements.iter().map(|e| Interval::parse(e)).collect();
    match intervals {
        Some(ivs) if !ivs.is_empty() => {
            elements = Interval::merge(ivs)
                .iter()
                .map(Interval::to_string)
                .collect();
        }
        _ => {
            elements.sort();
            elements.dedup();
        }
    }
    if elements.len() == 1 && !keep_braces {
        return elements.remove(0);
    }
    format!("{{ {} }}", elements.join(", "))
}

/// An inclusive interval of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Interval {
    v6: bool,
    start: u128,
    end: u128,
}

impl Interval {
    /// An address, a prefix or a range `a-b`.
    fn parse(text: &str) -> Option<Interval> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            let (v6, n) = bits(ip);
            return Some(Interval {
                v6,
                start: n,
                end: n,
            });
        }
        if let Ok(net) = text.parse::<IpNet>() {
            let (v6, start) = bits(net.network());
            let (_, end) = bits(net.broadcast());
            return Some(Interval { v6, start, end });
        }
        let (a, b) = text.split_once('-')?;
        let (a, b) = (a.parse::<IpAddr>().ok()?, b.parse::<IpAddr>().ok()?);
        let ((v6, start), (v6b, end)) = (bits(a), bits(b));
        (v6 == v6b && start <= end).then_some(Interval { v6, start, end })
    }

    /// Sorted, with overlapping and adjacent intervals joined.
    fn merge(mut all: Vec<Interval>) -> Vec<Interval> {
        all.sort();
        let mut out: Vec<Interval> = Vec::with_capacity(all.len());
        for iv in all {
            match out.last_mut() {
                Some(last) if last.v6 == iv.v6 && iv.start <= last.end.saturating_add(1) => {
                    last.end = last.end.max(iv.end);
                }
                _ => out.push(iv),
            }
        }
        out
    }

    fn addr(&self, n: u128) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(n))
        } else {
            // An IPv4 interval holds 32-bit values only.
            IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
        }
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = if self.v6 { 128 } else { 32 };
        let size = self.end - self.start;
        if size == 0 {
            return write!(f, "{}", self.addr(self.start));
        }
        // A prefix: the size is 2^k - 1 and the start is aligned to it.
        if size.checked_add(1).is_none_or(|n| n.is_power_of_two()) && self.start & size == 0 {
            let host_bits = 128 - size.leading_zeros();
            return write!(f, "{}/{}", self.addr(self.start), width - host_bits);
        }
        write!(f, "{}-{}", self.addr(self.start), self.addr(self.end))
    }
}

fn bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(expr: Value) -> String {
        render_rule(expr.as_array().unwrap())
    }

    #[test]
    fn listed_rules_render_as_written() {
        // JSON as nft 1.0.6 lists the proxy's rules.
        let cases = [
            (
                json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.96.0.10"}},
                       {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
                       {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
                       {"jump": {"target": "mark-for-masquerade"}}]),
                "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
            ),
            (
                json!([{"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                        "data": {"set": [[0, {"goto": {"target": "endpoint-a"}}], [1, {"goto": {"target": "endpoint-b"}}]]}}}]),
                "numgen random mod 2 vmap { 0 : goto endpoint-a, 1 : goto endpoint-b }",
            ),
            (
                json!([{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                       {"dnat": {"family": "ip6", "addr": "fd54:1::10", "port": 8080}}]),
                "meta l4proto tcp dnat ip6 to [fd54:1::10]:8080",
            ),
            (
                json!([{"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@affinity-x"}}]),
                "update @affinity-x { ip saddr }",
            ),
            (
                json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}}, {"jump": {"target": "x"}}]),
                "ct state new jump x",
            ),
            (
                json!([{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
                       {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
                       {"vmap": {"key": {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@service-nodeports-v4"}}]),
                "ip daddr != 127.0.0.0/8 fib daddr type local meta l4proto . th dport vmap @service-nodeports-v4",
            ),
            (
                json!([{"masquerade": {"flags": "fully-random"}}]),
                "masquerade fully-random",
            ),
        ];
        for (expr, written) in cases {
            assert_eq!(rule(expr), written);
        }
    }

    #[test]
    fn nft_rewrites_are_normalized_away() {
        let same = [
            // Numbers, operators.
            (
                "meta mark & 0x4000 == 0 return",
                json!([{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 0}}, {"return": null}]),
            ),
            (
                "meta mark set meta mark or 0x4000",
                json!([{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}}]),
            ),
            (
                "meta mark set meta mark xor 0x4000",
                json!([{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"^": [{"meta": {"key": "mark"}}, 16384]}}}]),
            ),
            // The default reject type, spelled out per family.
            (
                "ip daddr @cluster-ips-v4 reject",
                json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@cluster-ips-v4"}},
                       {"reject": {"type": "icmp", "expr": "port-unreachable"}}]),
            ),
            (
                "reject",
                json!([{"reject": {"type": "icmpx", "expr": "port-unreachable"}}]),
            ),
            (
                "meta l4proto tcp reject with tcp reset",
                json!([{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"reject": {"type": "tcp reset"}}]),
            ),
            // One-element sets, merged and sorted intervals, /32.
            (
                "ip6 saddr != { 2001:db8::/32 } drop",
                json!([{"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "2001:db8::", "len": 32}}}}, {"drop": null}]),
            ),
            (
                "ip saddr != { 10.0.1.0/24, 10.0.2.0/24 } drop",
                json!([{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"range": ["10.0.1.0", "10.0.2.255"]}]}}}, {"drop": null}]),
            ),
            (
                "ip saddr != { 10.0.0.0/8, 10.1.0.0/16 } drop",
                json!([{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"prefix": {"addr": "10.0.0.0", "len": 8}}]}}}, {"drop": null}]),
            ),
            (
                "ip saddr { 10.254.1.0/24, 10.253.0.0/16 } goto x",
                json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"prefix": {"addr": "10.253.0.0", "len": 16}}, {"prefix": {"addr": "10.254.1.0", "len": 24}}]}}}, {"goto": {"target": "x"}}]),
            ),
            (
                "ip daddr 10.0.0.1/32 drop",
                json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.1"}}, {"drop": null}]),
            ),
            (
                "numgen random mod 1 vmap { 0 : goto e }",
                json!([{"vmap": {"key": {"numgen": {"mode": "random", "mod": 1, "offset": 0}}, "data": {"set": [[0, {"goto": {"target": "e"}}]]}}}]),
            ),
        ];
        for (written, listed) in same {
            let listed = rule(listed);
            assert!(same_text(written, &listed), "{written:?} vs {listed:?}");
        }
    }

    #[test]
    fn real_changes_are_not_normalized_away() {
        let differ = [
            (
                "meta l4proto tcp dnat ip to 10.244.1.5:8080",
                "meta l4proto tcp dnat ip to 10.244.1.6:8080",
            ),
            (
                "meta l4proto tcp dnat ip to 10.244.1.5:8080",
                "meta l4proto tcp dnat ip to 10.244.1.5:8081",
            ),
            (
                "meta l4proto tcp dnat ip to 10.244.1.5:8080",
                "meta l4proto udp dnat ip to 10.244.1.5:8080",
            ),
            (
                "ip saddr 10.244.1.5 jump mark-for-masquerade",
                "ip daddr 10.244.1.5 jump mark-for-masquerade",
            ),
            (
                "ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
                "ip saddr 10.244.0.0/16 jump mark-for-masquerade",
            ),
            ("goto service-a", "jump service-a"),
            ("goto service-a", "goto service-b"),
            ("reject", "reject with tcp reset"),
            ("reject", "drop"),
            (
                "numgen random mod 2 vmap { 0 : goto a, 1 : goto b }",
                "numgen random mod 2 vmap { 0 : goto a, 1 : goto a }",
            ),
            (
                "ip saddr != { 10.0.1.0/24, 10.0.2.0/24 } drop",
                "ip saddr != { 10.0.1.0/24, 10.0.3.0/24 } drop",
            ),
            ("masquerade fully-random", "masquerade"),
            ("jump x", "counter jump x"),
            ("jump x", "?{\"xt\":null}"),
        ];
        for (a, b) in differ {
            assert!(!same_text(a, b), "{a:?} must differ from {b:?}");
        }
    }

    #[test]
    fn intervals_print_as_addresses_prefixes_or_ranges() {
        assert_eq!(normalize("{ 10.0.0.0/24, 10.0.1.0/24 }"), "10.0.0.0/23");
        assert_eq!(
            normalize("{ 10.0.1.0/24, 10.0.2.0/24 }"),
            "10.0.1.0-10.0.2.255"
        );
        assert_eq!(normalize("{ 10.0.0.1/32 }"), "10.0.0.1");
        assert_eq!(normalize("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(normalize("::/0"), "::/0");
        assert_eq!(normalize("{ fd00::1, fd00::0 }"), "fd00::/127");
        assert_eq!(
            normalize("{ 10.0.0.1, 10.0.0.3 }"),
            "{ 10.0.0.1, 10.0.0.3 }"
        );
        assert_eq!(normalize("10.0.0.5/8"), "10.0.0.0/8");
    }

    #[test]
    fn listing_reads_chains_sets_and_elements() {
        let listing = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "t"}},
            {"map": {"name": "service-ips-v4", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
                     "elem": [[{"concat": ["10.96.0.10", "tcp", 80]}, {"goto": {"target": "service-x"}}]]}},
            {"set": {"name": "cluster-ips-v4", "type": "ipv4_addr", "elem": ["10.96.0.10"]}},
            {"set": {"name": "affinity-x", "type": "ipv4_addr", "flags": ["timeout"], "timeout": 300,
                     "elem": [{"elem": {"val": "10.1.1.1", "expires": 299}}]}},
            {"chain": {"name": "nat-prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
            {"chain": {"name": "services"}},
            {"rule": {"chain": "services", "expr": [{"jump": {"target": "a"}}]}},
            {"rule": {"chain": "services", "expr": [{"goto": {"target": "b"}}]}}
        ]});
        let l = TableListing::from_json(&listing, Detail::Contents);
        assert_eq!(l.chains["services"].rules, vec!["jump a", "goto b"]);
        assert_eq!(
            l.chains["nat-prerouting"].hook,
            Some(ListedHook {
                kind: "nat".into(),
                hook: "prerouting".into(),
                priority: Some(-100),
                policy: "accept".into()
            })
        );
        let map = &l.sets["service-ips-v4"];
        assert_eq!(map.elements, vec!["10.96.0.10 . tcp . 80 : goto service-x"]);
        assert_eq!(
            map.shape,
            SetShape::from_declaration(
                true,
                "type ipv4_addr . inet_proto . inet_service : verdict; comment \"x\";"
            )
        );
        assert_eq!(l.sets["cluster-ips-v4"].elements, vec!["10.96.0.10"]);
        let affinity = &l.sets["affinity-x"];
        assert!(affinity.elements.is_empty() && affinity.element_count == 1);
        assert_eq!(
            affinity.shape,
            SetShape::from_declaration(
                false,
                "type ipv4_addr; flags dynamic,timeout; timeout 300s;"
            )
        );
        let light = TableListing::from_json(&listing, Detail::Declarations);
        assert!(light.chains["services"].rules.is_empty());
        assert_eq!(light.chains["services"].rule_count, 2);
    }
}
