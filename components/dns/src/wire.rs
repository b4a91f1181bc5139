//! DNS messages on the wire: parsing queries, prepared answers, and writing responses with
//! EDNS0, truncation, TTL rewriting and address rotation.
//!
//! Answers are prepared once (when records change, or when an upstream answer enters the
//! cache) as the bytes that follow the question section, encoded by hickory with names
//! compressed against the question. A response is then the 12-byte header, the client's own
//! question bytes (its letter case preserved) and a copy of those bytes: no per-query encoding.
//! This works because the question's wire length does not depend on letter case, so pointers
//! into it stay valid for any client spelling of the same name.

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding,
};

/// UDP payload size this server advertises in its OPT records.
pub const ADVERTISED_PAYLOAD: u16 = 1232;
/// Largest UDP response this server sends, whatever the client advertises.
pub const MAX_UDP_PAYLOAD: usize = 4096;
/// Size of a DNS response without EDNS0 over UDP.
pub const PLAIN_UDP_PAYLOAD: usize = 512;
/// Largest message over TCP.
pub const MAX_TCP_MESSAGE: usize = 65535;
const OPT_LEN: usize = 11;

/// A name in lowercase wire form (length-prefixed labels, root byte included), stored inline.
#[derive(Clone, Copy)]
pub struct NameKey {
    len: u8,
    buf: [u8; 255],
}

impl NameKey {
    /// The root name.
    pub fn root() -> Self {
        NameKey {
            len: 1,
            buf: [0; 255],
        }
    }

    /// From a hickory name; `lowercase` folds ASCII letters. `None` if over 255 bytes.
    pub fn from_name(name: &Name, lowercase: bool) -> Option<Self> {
        let mut key = NameKey {
            len: 0,
            buf: [0; 255],
        };
        let mut pos = 0usize;
        for label in name.iter() {
            if pos + 1 + label.len() >= 255 || label.len() > 63 {
                return None;
            }
            key.buf[pos] = label.len() as u8;
            pos += 1;
            for (i, b) in label.iter().enumerate() {
                key.buf[pos + i] = if lowercase {
                    b.to_ascii_lowercase()
                } else {
                    *b
                };
            }
            pos += label.len();
        }
        key.buf[pos] = 0;
        key.len = (pos + 1) as u8;
        Some(key)
    }

    /// From a dotted name (`web.default.svc.cluster.local`), lowercased.
    pub fn parse(s: &str) -> Option<Self> {
        let name = Name::from_ascii(s).ok()?;
        Self::from_name(&name, true)
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Wire length.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Is this the root name.
    pub fn is_empty(&self) -> bool {
        self.len <= 1
    }

    /// The labels, first (leftmost) first.
    pub fn labels(&self) -> LabelIter<'_> {
        LabelIter {
            bytes: self.as_bytes(),
            pos: 0,
        }
    }

    /// Back to a hickory name.
    pub fn to_name(&self) -> Name {
        Name::from_labels(self.labels()).unwrap_or_else(|_| Name::root())
    }
}

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_name())
    }
}

/// Iterator over the labels of wire-form name bytes.
pub struct LabelIter<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let len = *self.bytes.get(self.pos)? as usize;
        if len == 0 {
            return None;
        }
        let label = self.bytes.get(self.pos + 1..self.pos + 1 + len)?;
        self.pos += 1 + len;
        Some(label)
    }
}

/// Whether wire name `name` is `zone` or below it (both lowercase wire form).
pub fn in_zone(name: &[u8], zone: &[u8]) -> bool {
    if zone.len() > name.len() || !name.ends_with(zone) {
        return false;
    }
    let offset = name.len() - zone.len();
    // The zone must start on a label boundary of the name.
    let mut pos = 0;
    while pos < offset {
        pos += 1 + name[pos] as usize;
    }
    pos == offset
}

/// EDNS0 details of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdnsInfo {
    /// Advertised UDP payload size.
    pub payload: u16,
    /// EDNS version.
    pub version: u8,
    /// DNSSEC OK bit.
    pub dnssec_ok: bool,
}

/// A parsed query: what the answer depends on, and what the response echoes.
#[derive(Clone, Copy)]
pub struct Request {
    /// Message ID.
    pub id: u16,
    /// Recursion desired.
    pub rd: bool,
    /// Checking disabled.
    pub cd: bool,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
    /// Query name, lowercase.
    pub key: NameKey,
    /// Query name as the client wrote it.
    pub wire_name: NameKey,
    /// EDNS0, when the query had an OPT record.
    pub edns: Option<EdnsInfo>,
    /// Size of the query message.
    pub size: usize,
}

impl Request {
    /// A query for `name`/`qtype` made by this server itself (chasing a CNAME).
    pub fn internal(name: &Name, qtype: u16, like: &Request) -> Option<Request> {
        Some(Request {
            id: like.id,
            rd: true,
            cd: like.cd,
            qtype,
            qclass: like.qclass,
            key: NameKey::from_name(name, true)?,
            wire_name: NameKey::from_name(name, false)?,
            edns: like.edns,
            size: 0,
        })
    }

    /// The query type as hickory's enum.
    pub fn record_type(&self) -> RecordType {
        RecordType::from(self.qtype)
    }

    /// The query name (as written by the client).
    pub fn name(&self) -> Name {
        self.wire_name.to_name()
    }

    /// Largest response for this query over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => (e.payload as usize).clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
            None => PLAIN_UDP_PAYLOAD,
        }
    }
}

/// What to do with a received message.
// Returned by value once per query; boxing the request would allocate per query.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// A query to answer.
    Query(Request),
    /// An error response was written to the output buffer (FORMERR, NOTIMP, BADVERS).
    ErrorReply(ResponseCode),
    /// Not worth an answer (too short, or a response).
    Drop,
}

/// Parses a query message. Error responses go into `out`.
pub fn parse_request(buf: &[u8], out: &mut Vec<u8>) -> Parsed {
    let mut dec = BinDecoder::new(buf);
    let Ok(header) = Header::read(&mut dec) else {
        return Parsed::Drop;
    };
    let meta = header.metadata;
    if meta.message_type == MessageType::Response {
        return Parsed::Drop;
    }
    let reply_error = |out: &mut Vec<u8>, rcode: ResponseCode, q: Option<&Request>| {
        write_error(out, meta.id, meta.op_code, meta.recursion_desired, rcode, q);
        Parsed::ErrorReply(rcode)
    };
    if meta.op_code != OpCode::Query {
        return reply_error(out, ResponseCode::NotImp, None);
    }
    if header.counts.queries != 1 {
        return reply_error(out, ResponseCode::FormErr, None);
    }
    let Ok(query) = Query::read(&mut dec) else {
        return reply_error(out, ResponseCode::FormErr, None);
    };
    let (Some(key), Some(wire_name)) = (
        NameKey::from_name(query.name(), true),
        NameKey::from_name(query.name(), false),
    ) else {
        return reply_error(out, ResponseCode::FormErr, None);
    };
    let mut req = Request {
        id: meta.id,
        rd: meta.recursion_desired,
        cd: meta.checking_disabled,
        qtype: u16::from(query.query_type()),
        qclass: u16::from(query.query_class()),
        key,
        wire_name,
        edns: None,
        size: buf.len(),
    };
    let rest = header.counts.answers as usize
        + header.counts.authorities as usize
        + header.counts.additionals as usize;
    if rest > 0 {
        if header.counts.answers > 0 || header.counts.authorities > 0 {
            let skip = header.counts.answers as usize + header.counts.authorities as usize;
            if Message::read_records(&mut dec, skip, false, meta.op_code).is_err() {
                return reply_error(out, ResponseCode::FormErr, Some(&req));
            }
        }
        match Message::read_records(
            &mut dec,
            header.counts.additionals as usize,
            true,
            meta.op_code,
        ) {
            Ok((_, edns, _)) => {
                req.edns = edns.map(|e| EdnsInfo {
                    payload: e.max_payload(),
                    version: e.version(),
                    dnssec_ok: e.flags().dnssec_ok,
                });
            }
            Err(_) => return reply_error(out, ResponseCode::FormErr, Some(&req)),
        }
    }
    if let Some(e) = req.edns {
        if e.version > 0 {
            return reply_error(out, ResponseCode::BADVERS, Some(&req));
        }
    }
    Parsed::Query(req)
}

fn push_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn push_opt(out: &mut Vec<u8>, rcode_high: u8, dnssec_ok: bool) {
    out.push(0);
    push_u16(out, 41);
    push_u16(out, ADVERTISED_PAYLOAD);
    out.push(rcode_high);
    out.push(0);
    push_u16(out, if dnssec_ok { 0x8000 } else { 0 });
    push_u16(out, 0);
}

fn header_flags(rd: bool, cd: bool, aa: bool, tc: bool, rcode_low: u8) -> u16 {
    let mut f: u16 = 0x8000 | 0x0080; // QR, RA
    if aa {
        f |= 0x0400;
    }
    if tc {
        f |= 0x0200;
    }
    if rd {
        f |= 0x0100;
    }
    if cd {
        f |= 0x0010;
    }
    f | (rcode_low & 0x0f) as u16
}

/// Writes a response carrying only an error code (and the question, when known).
pub fn write_error(
    out: &mut Vec<u8>,
    id: u16,
    op_code: OpCode,
    rd: bool,
    rcode: ResponseCode,
    q: Option<&Request>,
) {
    out.clear();
    push_u16(out, id);
    let code = u16::from(rcode);
    let mut flags = header_flags(
        rd,
        q.is_some_and(|q| q.cd),
        false,
        false,
        (code & 0xf) as u8,
    );
    flags |= (u8::from(op_code) as u16 & 0xf) << 11;
    push_u16(out, flags);
    push_u16(out, q.is_some() as u16);
    push_u16(out, 0);
    push_u16(out, 0);
    let edns = q.and_then(|q| q.edns);
    push_u16(out, (edns.is_some() || code > 15) as u16);
    if let Some(q) = q {
        out.extend_from_slice(q.wire_name.as_bytes());
        push_u16(out, q.qtype);
        push_u16(out, q.qclass);
    }
    if edns.is_some() || code > 15 {
        push_opt(out, (code >> 4) as u8, edns.is_some_and(|e| e.dnssec_ok));
    }
}

/// A run of equal-size address records in the answer section that may be rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotateSpan {
    /// Offset in `rest` of the first record.
    pub start: u16,
    /// Size of each record.
    pub rr_len: u16,
    /// Number of records.
    pub count: u16,
}

/// An answer ready to be copied after a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Response code (low 4 bits).
    pub rcode: u8,
    /// Authoritative answer.
    pub authoritative: bool,
    /// Record counts: answer, authority, additional.
    pub counts: [u16; 3],
    /// The encoded records.
    pub rest: Box<[u8]>,
    /// Wire length of the question name the records were compressed against; `None` when
    /// the records hold no pointers into the question.
    pub qname_len: Option<u16>,
    /// Address records to rotate (loadbalance).
    pub rotate: Option<RotateSpan>,
    /// Offsets in `rest` of every record's TTL.
    pub ttl_offsets: Box<[u16]>,
}

/// Errors preparing an answer (records too large for one message).
#[derive(Debug, thiserror::Error)]
#[error("encoding the answer for {name} failed: {message}")]
pub struct PrepareError {
    name: String,
    message: String,
}

/// Skips a wire name at `pos`; the position after it.
fn skip_name(buf: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let b = *buf.get(pos)?;
        match b & 0xc0 {
            0x00 if b == 0 => return Some(pos + 1),
            0x00 => pos += 1 + b as usize,
            0xc0 => return Some(pos + 2),
            _ => return None,
        }
    }
}

/// One record at `pos`: (type, TTL offset, end, owner length).
fn record_at(buf: &[u8], pos: usize) -> Option<(u16, usize, usize, usize)> {
    let after_name = skip_name(buf, pos)?;
    let fixed = buf.get(after_name..after_name + 10)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
    let end = after_name + 10 + rdlen;
    if end > buf.len() {
        return None;
    }
    Some((rtype, after_name + 4, end, after_name - pos))
}

/// Record ends (absolute offsets) of `count` records starting at `pos`.
fn record_ends(buf: &[u8], mut pos: usize, count: usize) -> Option<Vec<(u16, usize)>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (rtype, _, end, _) = record_at(buf, pos)?;
        out.push((rtype, end));
        pos = end;
    }
    Some(out)
}

fn analyse(rest: &[u8], counts: [u16; 3]) -> Option<(Box<[u16]>, Option<RotateSpan>)> {
    let total = counts.iter().map(|c| *c as usize).sum::<usize>();
    let mut ttls = Vec::with_capacity(total);
    let mut pos = 0;
    let mut rotate: Option<RotateSpan> = None;
    let mut run: Option<(u16, RotateSpan)> = None;
    for i in 0..total {
        let (rtype, ttl_pos, end, owner_len) = record_at(rest, pos)?;
        if rtype != 41 {
            ttls.push(u16::try_from(ttl_pos).ok()?);
        }
        if i < counts[0] as usize {
            let rr_len = (end - pos) as u16;
            let addr = (rtype == 1 || rtype == 28) && owner_len == 2;
            match &mut run {
                Some((t, span)) if addr && *t == rtype && span.rr_len == rr_len => span.count += 1,
                _ => {
                    if let Some((_, span)) = run.take() {
                        if span.count > 1 && rotate.is_none() {
                            rotate = Some(span);
                        }
                    }
                    if addr {
                        run = Some((
                            rtype,
                            RotateSpan {
                                start: pos as u16,
                                rr_len,
                                count: 1,
                            },
                        ));
                    }
                }
            }
        }
        pos = end;
    }
    if let Some((_, span)) = run {
        if span.count > 1 && rotate.is_none() {
            rotate = Some(span);
        }
    }
    if pos != rest.len() {
        return None;
    }
    Some((ttls.into_boxed_slice(), rotate))
}

fn name_wire_len(name: &Name) -> usize {
    name.iter().map(|l| l.len() + 1).sum::<usize>() + 1
}

/// Prepares an answer to `qname`/`qtype`: the records are compressed against that question.
pub fn prepare(
    qname: &Name,
    qtype: RecordType,
    rcode: ResponseCode,
    authoritative: bool,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> Result<Prepared, PrepareError> {
    let fail = |e: hickory_proto::ProtoError| PrepareError {
        name: qname.to_string(),
        message: e.to_string(),
    };
    let mut msg = Message::response(0, OpCode::Query);
    msg.add_query(Query::query(qname.clone(), qtype));
    msg.answers = answers.to_vec();
    msg.authorities = authorities.to_vec();
    msg.additionals = additionals.to_vec();
    let bytes = msg.to_vec().map_err(fail)?;
    let qlen = name_wire_len(qname);
    let start = 12 + qlen + 4;
    if bytes.len() < start || start > u16::MAX as usize {
        return Err(fail(hickory_proto::ProtoError::Message(
            "encoded message shorter than its question",
        )));
    }
    let counts = [
        u16::from_be_bytes([bytes[6], bytes[7]]),
        u16::from_be_bytes([bytes[8], bytes[9]]),
        u16::from_be_bytes([bytes[10], bytes[11]]),
    ];
    let rest: Box<[u8]> = bytes[start..].into();
    finish(rest, counts, rcode, authoritative, Some(qlen as u16)).ok_or_else(|| {
        fail(hickory_proto::ProtoError::Message(
            "answer too large for one message",
        ))
    })
}

fn finish(
    rest: Box<[u8]>,
    counts: [u16; 3],
    rcode: ResponseCode,
    authoritative: bool,
    qname_len: Option<u16>,
) -> Option<Prepared> {
    if rest.len() > MAX_TCP_MESSAGE {
        return None;
    }
    let (ttl_offsets, rotate) = analyse(&rest, counts)?;
    Some(Prepared {
        rcode: (u16::from(rcode) & 0xf) as u8,
        authoritative,
        counts,
        rest,
        qname_len,
        rotate,
        ttl_offsets,
    })
}

/// Prepares a denial (NXDOMAIN/NODATA) whose authority records are encoded without
/// compression, so it can follow any question.
pub fn prepare_denial(
    rcode: ResponseCode,
    authorities: &[Record],
) -> Result<Prepared, PrepareError> {
    let mut buf = Vec::with_capacity(128);
    let fail = |e: hickory_proto::ProtoError| PrepareError {
        name: ".".into(),
        message: e.to_string(),
    };
    {
        let mut enc = BinEncoder::new(&mut buf);
        enc.set_name_encoding(NameEncoding::Uncompressed);
        for r in authorities {
            r.emit(&mut enc).map_err(fail)?;
        }
    }
    finish(
        buf.into_boxed_slice(),
        [0, authorities.len() as u16, 0],
        rcode,
        true,
        None,
    )
    .ok_or_else(|| fail(hickory_proto::ProtoError::Message("denial too large")))
}

/// Prepares an upstream answer for caching and relaying to the client of `req`.
pub fn prepare_from_message(req: &Request, msg: &Message) -> Result<Prepared, PrepareError> {
    let qname = req.key.to_name();
    prepare(
        &qname,
        req.record_type(),
        msg.metadata.response_code,
        false,
        &msg.answers,
        &msg.authorities,
        &msg.additionals,
    )
}

impl Prepared {
    /// The records back as a hickory message for `qname`/`qtype` (used when answers are
    /// combined, e.g. a CNAME and its target's records).
    pub fn to_message(&self, qname: &Name, qtype: RecordType) -> Option<Message> {
        let mut buf = Vec::with_capacity(12 + 260 + self.rest.len());
        push_u16(&mut buf, 0);
        push_u16(
            &mut buf,
            header_flags(false, false, self.authoritative, false, self.rcode),
        );
        push_u16(&mut buf, 1);
        for c in self.counts {
            push_u16(&mut buf, c);
        }
        let key = NameKey::from_name(qname, true)?;
        if self.qname_len.is_some_and(|l| l as usize != key.len()) {
            return None;
        }
        buf.extend_from_slice(key.as_bytes());
        push_u16(&mut buf, u16::from(qtype));
        push_u16(&mut buf, u16::from(DNSClass::IN));
        buf.extend_from_slice(&self.rest);
        Message::from_vec(&buf).ok()
    }

    /// Response code as hickory's enum.
    pub fn response_code(&self) -> ResponseCode {
        ResponseCode::from(0, self.rcode)
    }
}

/// How a prepared answer is written for one client.
#[derive(Debug, Clone, Copy)]
pub struct WriteOpts {
    /// Largest message the client takes.
    pub max_size: usize,
    /// Rewrite every TTL to this value (cached answers: the remaining time).
    pub ttl: Option<u32>,
    /// Rotate the address records by this many places.
    pub rotate: usize,
}

/// Writes the response to `req` with the prepared records into `out`. Returns whether the
/// response was truncated.
pub fn write_response(out: &mut Vec<u8>, req: &Request, p: &Prepared, opts: &WriteOpts) -> bool {
    out.clear();
    let qlen = req.wire_name.len();
    if p.qname_len.is_some_and(|l| l as usize != qlen) {
        // A prepared answer for another question: never send pointers into the wrong bytes.
        write_error(
            out,
            req.id,
            OpCode::Query,
            req.rd,
            ResponseCode::ServFail,
            Some(req),
        );
        return false;
    }
    push_u16(out, req.id);
    push_u16(
        out,
        header_flags(req.rd, req.cd, p.authoritative, false, p.rcode),
    );
    push_u16(out, 1);
    push_u16(out, p.counts[0]);
    push_u16(out, p.counts[1]);
    push_u16(out, p.counts[2] + req.edns.is_some() as u16);
    out.extend_from_slice(req.wire_name.as_bytes());
    push_u16(out, req.qtype);
    push_u16(out, req.qclass);
    let base = out.len();
    match p.rotate {
        Some(span) if opts.rotate % span.count as usize != 0 => {
            let start = span.start as usize;
            let rr = span.rr_len as usize;
            let end = start + rr * span.count as usize;
            let k = opts.rotate % span.count as usize;
            out.extend_from_slice(&p.rest[..start]);
            out.extend_from_slice(&p.rest[start + k * rr..end]);
            out.extend_from_slice(&p.rest[start..start + k * rr]);
            out.extend_from_slice(&p.rest[end..]);
        }
        _ => out.extend_from_slice(&p.rest),
    }
    if let Some(ttl) = opts.ttl {
        let b = ttl.to_be_bytes();
        for off in p.ttl_offsets.iter() {
            let at = base + *off as usize;
            out[at..at + 4].copy_from_slice(&b);
        }
    }
    if let Some(e) = req.edns {
        push_opt(out, 0, e.dnssec_ok);
    }
    if out.len() > opts.max_size {
        truncate(out, opts.max_size, req.edns);
        return true;
    }
    false
}

/// Cuts a response to `limit` bytes: drops additional records first (no TC), then answer and
/// authority records from the end (TC set), keeping whole records only.
fn truncate(out: &mut Vec<u8>, limit: usize, edns: Option<EdnsInfo>) {
    let counts = [
        u16::from_be_bytes([out[6], out[7]]) as usize,
        u16::from_be_bytes([out[8], out[9]]) as usize,
        u16::from_be_bytes([out[10], out[11]]) as usize - edns.is_some() as usize,
    ];
    let Some(qend) = skip_name(out, 12).map(|p| p + 4) else {
        out.truncate(12);
        return;
    };
    let total = counts[0] + counts[1] + counts[2];
    let Some(ends) = record_ends(out, qend, total) else {
        out.truncate(qend);
        return;
    };
    let budget = limit.saturating_sub(if edns.is_some() { OPT_LEN } else { 0 });
    let fits = ends.iter().take_while(|(_, end)| *end <= budget).count();
    let cut = if fits == 0 { qend } else { ends[fits - 1].1 };
    let kept_an = fits.min(counts[0]);
    let kept_ns = fits.saturating_sub(counts[0]).min(counts[1]);
    let kept_ar = fits.saturating_sub(counts[0] + counts[1]).min(counts[2]);
    let tc = kept_an < counts[0] || kept_ns < counts[1];
    out.truncate(cut);
    out[6..8].copy_from_slice(&(kept_an as u16).to_be_bytes());
    out[8..10].copy_from_slice(&(kept_ns as u16).to_be_bytes());
    out[10..12].copy_from_slice(&((kept_ar + edns.is_some() as usize) as u16).to_be_bytes());
    if tc {
        out[2] |= 0x02;
    }
    if let Some(e) = edns {
        push_opt(out, 0, e.dnssec_ok);
    }
}

/// Builds the query this server sends upstream for `req`: a fresh ID, the client's question,
/// and EDNS0 with this server's payload size.
pub fn upstream_query(req: &Request, id: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + req.wire_name.len() + 4 + OPT_LEN);
    push_u16(&mut out, id);
    let mut flags = 0x0100u16; // RD
    if req.cd {
        flags |= 0x0010;
    }
    push_u16(&mut out, flags);
    push_u16(&mut out, 1);
    push_u16(&mut out, 0);
    push_u16(&mut out, 0);
    push_u16(&mut out, 1);
    out.extend_from_slice(req.wire_name.as_bytes());
    push_u16(&mut out, req.qtype);
    push_u16(&mut out, req.qclass);
    push_opt(&mut out, 0, req.edns.is_some_and(|e| e.dnssec_ok));
    out
}

/// Whether `resp` answers the upstream query `id` for `req`'s question. Checks the ID, the QR
/// bit and the question (name compared without case).
pub fn matches_query(resp: &[u8], id: u16, req: &Request) -> bool {
    if resp.len() < 12 || u16::from_be_bytes([resp[0], resp[1]]) != id || resp[2] & 0x80 == 0 {
        return false;
    }
    if u16::from_be_bytes([resp[4], resp[5]]) != 1 {
        // A response without the question (some servers do this for errors) is accepted only
        // as an error response.
        return u16::from_be_bytes([resp[4], resp[5]]) == 0 && resp[3] & 0x0f != 0;
    }
    let name = req.key.as_bytes();
    let Some(q) = resp.get(12..12 + name.len() + 4) else {
        return false;
    };
    q[..name.len()].eq_ignore_ascii_case(name)
        && q[name.len()..name.len() + 2] == req.qtype.to_be_bytes()
        && q[name.len() + 2..] == req.qclass.to_be_bytes()
}

/// Whether a response has the TC bit.
pub fn is_truncated(resp: &[u8]) -> bool {
    resp.len() > 2 && resp[2] & 0x02 != 0
}

/// The response code of a response message (low 4 bits).
pub fn rcode_of(resp: &[u8]) -> u8 {
    resp.get(3).map(|b| b & 0x0f).unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Edns;
    use hickory_proto::rr::rdata::{A, CNAME, SOA};
    use hickory_proto::rr::RData;
    use std::net::Ipv4Addr;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    pub(crate) fn query_bytes(qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name(qname), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn parse(bytes: &[u8]) -> Request {
        let mut out = Vec::new();
        match parse_request(bytes, &mut out) {
            Parsed::Query(r) => r,
            _ => panic!("not a query"),
        }
    }

    fn a_records(owner: &str, n: u8) -> Vec<Record> {
        (1..=n)
            .map(|i| Record::from_rdata(name(owner), 30, RData::A(A(Ipv4Addr::new(10, 0, 0, i)))))
            .collect()
    }

    #[test]
    fn echoes_question_case_and_answers() {
        let p = prepare(
            &name("web.default.svc.cluster.local."),
            RecordType::A,
            ResponseCode::NoError,
            true,
            &a_records("web.default.svc.cluster.local.", 1),
            &[],
            &[],
        )
        .unwrap();
        let req = parse(&query_bytes(
            "Web.DEFAULT.svc.cluster.local.",
            RecordType::A,
            None,
        ));
        assert_eq!(req.key.to_name(), name("web.default.svc.cluster.local."));
        let mut out = Vec::new();
        let tc = write_response(
            &mut out,
            &req,
            &p,
            &WriteOpts {
                max_size: 512,
                ttl: None,
                rotate: 0,
            },
        );
        assert!(!tc);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "Web.DEFAULT.svc.cluster.local."
        );
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 0, 0, 1))));
        assert_eq!(m.answers[0].ttl, 30);
        assert!(m.edns.is_none());
    }

    #[test]
    fn edns_echoed_and_badvers() {
        let p = prepare_denial(
            ResponseCode::NXDomain,
            &[Record::from_rdata(
                name("cluster.local."),
                30,
                RData::SOA(SOA::new(
                    name("ns.dns.cluster.local."),
                    name("hostmaster.cluster.local."),
                    1,
                    7200,
                    1800,
                    86400,
                    30,
                )),
            )],
        )
        .unwrap();
        let req = parse(&query_bytes(
            "nope.cluster.local.",
            RecordType::A,
            Some(1232),
        ));
        assert_eq!(req.edns.unwrap().payload, 1232);
        let mut out = Vec::new();
        write_response(
            &mut out,
            &req,
            &p,
            &WriteOpts {
                max_size: req.udp_limit(),
                ttl: None,
                rotate: 0,
            },
        );
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities.len(), 1);
        assert!(matches!(m.authorities[0].data, RData::SOA(_)));
        assert_eq!(m.edns.as_ref().unwrap().max_payload(), ADVERTISED_PAYLOAD);

        let mut bad = Message::query();
        bad.add_query(Query::query(name("x."), RecordType::A));
        let mut e = Edns::new();
        e.set_version(1);
        bad.set_edns(e);
        let mut out = Vec::new();
        assert!(matches!(
            parse_request(&bad.to_vec().unwrap(), &mut out),
            Parsed::ErrorReply(ResponseCode::BADVERS)
        ));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(u16::from(m.metadata.response_code), 16, "BADVERS");
    }

    #[test]
    fn malformed_and_non_query() {
        let mut out = Vec::new();
        assert!(matches!(parse_request(&[0; 5], &mut out), Parsed::Drop));
        let mut notify = Message::new(7, MessageType::Query, OpCode::Notify);
        notify.add_query(Query::query(name("x."), RecordType::SOA));
        assert!(matches!(
            parse_request(&notify.to_vec().unwrap(), &mut out),
            Parsed::ErrorReply(ResponseCode::NotImp)
        ));
        let mut two = Message::query();
        two.add_query(Query::query(name("x."), RecordType::A));
        two.add_query(Query::query(name("y."), RecordType::A));
        assert!(matches!(
            parse_request(&two.to_vec().unwrap(), &mut out),
            Parsed::ErrorReply(ResponseCode::FormErr)
        ));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let mut resp = query_bytes("x.", RecordType::A, None);
        resp[2] |= 0x80;
        assert!(matches!(parse_request(&resp, &mut out), Parsed::Drop));
    }

    #[test]
    fn truncation_keeps_whole_records_and_sets_tc() {
        let owner = "big.default.svc.cluster.local.";
        let p = prepare(
            &name(owner),
            RecordType::A,
            ResponseCode::NoError,
            true,
            &a_records(owner, 60),
            &[],
            &[],
        )
        .unwrap();
        let req = parse(&query_bytes(owner, RecordType::A, None));
        let mut out = Vec::new();
        let opts = WriteOpts {
            max_size: 512,
            ttl: None,
            rotate: 0,
        };
        assert!(write_response(&mut out, &req, &p, &opts));
        assert!(out.len() <= 512);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation);
        assert!(!m.answers.is_empty() && m.answers.len() < 60);
        // With a large EDNS buffer everything fits.
        let req = parse(&query_bytes(owner, RecordType::A, Some(4096)));
        let opts = WriteOpts {
            max_size: req.udp_limit(),
            ..opts
        };
        assert!(!write_response(&mut out, &req, &p, &opts));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.answers.len(), 60);
        assert!(!m.metadata.truncation);
        assert!(m.edns.is_some());
    }

    #[test]
    fn additional_records_dropped_without_tc() {
        let owner = "_http._tcp.web.default.svc.cluster.local.";
        let p = prepare(
            &name(owner),
            RecordType::SRV,
            ResponseCode::NoError,
            true,
            &[Record::from_rdata(
                name(owner),
                5,
                RData::SRV(hickory_proto::rr::rdata::SRV::new(
                    0,
                    100,
                    80,
                    name("web.default.svc.cluster.local."),
                )),
            )],
            &[],
            &a_records("web.default.svc.cluster.local.", 40),
        )
        .unwrap();
        let req = parse(&query_bytes(owner, RecordType::SRV, None));
        let mut out = Vec::new();
        write_response(
            &mut out,
            &req,
            &p,
            &WriteOpts {
                max_size: 512,
                ttl: None,
                rotate: 0,
            },
        );
        let m = Message::from_vec(&out).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 1);
        assert!(m.additionals.len() < 40);
    }

    #[test]
    fn ttl_rewrite_and_rotation() {
        let owner = "web.example.";
        let mut answers = vec![Record::from_rdata(
            name("www.example."),
            300,
            RData::CNAME(CNAME(name(owner))),
        )];
        answers.extend(a_records(owner, 3));
        let p = prepare(
            &name("www.example."),
            RecordType::A,
            ResponseCode::NoError,
            false,
            &answers,
            &[],
            &[],
        )
        .unwrap();
        let span = p.rotate.expect("a rotatable run of A records");
        assert_eq!(span.count, 3);
        let req = parse(&query_bytes("www.example.", RecordType::A, None));
        let mut out = Vec::new();
        let mut firsts = Vec::new();
        for rotate in 0..3 {
            write_response(
                &mut out,
                &req,
                &p,
                &WriteOpts {
                    max_size: 512,
                    ttl: Some(17),
                    rotate,
                },
            );
            let m = Message::from_vec(&out).unwrap();
            assert!(
                matches!(m.answers[0].data, RData::CNAME(_)),
                "CNAME stays first"
            );
            assert!(m.answers.iter().all(|r| r.ttl == 17));
            firsts.push(m.answers[1].data.clone());
            let mut ips: Vec<_> = m.answers[1..].iter().map(|r| r.data.clone()).collect();
            ips.sort_by_key(|d| format!("{d}"));
            assert_eq!(ips.len(), 3);
        }
        firsts.dedup();
        assert_eq!(firsts.len(), 3, "each rotation starts with another address");
    }

    #[test]
    fn zone_membership_on_label_boundaries() {
        let k = |s: &str| NameKey::parse(s).unwrap();
        assert!(in_zone(
            k("a.cluster.local.").as_bytes(),
            k("cluster.local.").as_bytes()
        ));
        assert!(in_zone(
            k("cluster.local.").as_bytes(),
            k("cluster.local.").as_bytes()
        ));
        assert!(!in_zone(
            k("xcluster.local.").as_bytes(),
            k("cluster.local.").as_bytes()
        ));
        assert!(in_zone(
            k("anything.").as_bytes(),
            NameKey::root().as_bytes()
        ));
    }

    #[test]
    fn upstream_query_and_response_matching() {
        let req = parse(&query_bytes("Example.ORG.", RecordType::AAAA, None));
        let q = upstream_query(&req, 777);
        let m = Message::from_vec(&q).unwrap();
        assert_eq!(m.metadata.id, 777);
        assert_eq!(m.queries[0].name().to_ascii(), "Example.ORG.");
        assert!(m.edns.is_some());
        let mut resp = m.clone();
        resp.metadata.message_type = MessageType::Response;
        let bytes = resp.to_vec().unwrap();
        assert!(matches_query(&bytes, 777, &req));
        assert!(!matches_query(&bytes, 778, &req));
        let other = parse(&query_bytes("example.net.", RecordType::AAAA, None));
        assert!(!matches_query(&bytes, 777, &other));
    }
}
