//! SPDY/3.1 framing: the subset Kubernetes streaming uses (SYN_STREAM, SYN_REPLY, DATA,
//! RST_STREAM, PING, GOAWAY; SETTINGS and WINDOW_UPDATE are read and ignored), with the
//! zlib-compressed header blocks of SPDY/3 (one compression context per direction, preset with
//! the protocol's dictionary).
//!
//! Written by hand because no maintained Rust crate implements SPDY (the protocol was retired
//! in favour of HTTP/2), and Kubernetes' container streaming still speaks it. Like the Go
//! implementation on the other end (moby/spdystream), there is no flow control: WINDOW_UPDATE
//! is neither sent nor honoured.

use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The protocol version in every control frame.
const VERSION: u16 = 3;
const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
/// FLAG_FIN of control and data frames: the sender's half of the stream ends.
const FLAG_FIN: u8 = 0x01;
/// Largest frame payload (24-bit length field).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// Largest decompressed header block accepted (a guard against compression bombs).
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// RST_STREAM status: the stream was refused.
pub const RST_REFUSED_STREAM: u32 = 3;
/// GOAWAY status: a normal end of the session.
pub const GOAWAY_OK: u32 = 0;

/// The SPDY/3 header-compression dictionary (SPDY draft 3, section 2.6.10.1): header names
/// each behind a 32-bit big-endian length, then a run of common values. 1423 bytes.
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const VALUES: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    );
    let mut d = Vec::with_capacity(1423);
    for word in WORDS {
        d.extend_from_slice(&(word.len() as u32).to_be_bytes());
        d.extend_from_slice(word.as_bytes());
    }
    d.extend_from_slice(VALUES.as_bytes());
    d
});

/// One frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream with headers (lower-case names).
    SynStream {
        /// Stream id (odd when opened by the client).
        stream_id: u32,
        /// Header names and values.
        headers: Vec<(String, String)>,
        /// The sender will send nothing on it.
        fin: bool,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// Header names and values.
        headers: Vec<(String, String)>,
        /// The sender will send nothing on it.
        fin: bool,
    },
    /// More headers on a stream.
    Headers {
        /// Stream id.
        stream_id: u32,
        /// The sender's half ends.
        fin: bool,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// Why.
        status: u32,
    },
    /// A ping, answered by echoing it when the peer sent it.
    Ping {
        /// Ping id (odd from clients, even from servers).
        id: u32,
    },
    /// Ends the session.
    GoAway {
        /// Last stream the sender accepted.
        last_good_stream_id: u32,
        /// Why.
        status: u32,
    },
    /// Stream data.
    Data {
        /// Stream id.
        stream_id: u32,
        /// The sender's half ends after this.
        fin: bool,
        /// Payload.
        data: Vec<u8>,
    },
    /// A control frame this subset does not act on (SETTINGS, WINDOW_UPDATE, ...).
    Ignored {
        /// Its type.
        frame_type: u16,
    },
}

/// A malformed or unsupported frame.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A control frame of another protocol version.
    #[error("SPDY control frame of version {0}; only SPDY/3 is spoken")]
    Version(u16),
    /// A frame shorter than its type requires.
    #[error("SPDY {what} frame too short ({len} bytes)")]
    Short {
        /// Frame type.
        what: &'static str,
        /// Its payload length.
        len: usize,
    },
    /// A header block that does not decompress or parse.
    #[error("SPDY header block: {0}")]
    HeaderBlock(String),
    /// A payload over the 24-bit limit.
    #[error("SPDY frame payload of {0} bytes exceeds the 16 MiB limit")]
    TooLarge(usize),
}

/// The framing state of one side of a session: frame (de)serialization and the two header
/// compression contexts.
pub struct Codec {
    deflate: Compress,
    inflate: Decompress,
}

impl Default for Codec {
    fn default() -> Codec {
        Codec::new()
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Codec {
    /// A fresh session's codec.
    pub fn new() -> Codec {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate
            .set_dictionary(&DICTIONARY)
            .expect("a fresh zlib stream accepts a dictionary");
        Codec {
            deflate,
            inflate: Decompress::new(true),
        }
    }

    fn compress_headers(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
        let mut block = Vec::new();
        block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            block.extend_from_slice(&(name.len() as u32).to_be_bytes());
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(&(value.len() as u32).to_be_bytes());
            block.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let start = self.deflate.total_in();
        loop {
            let consumed = (self.deflate.total_in() - start) as usize;
            self.deflate
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(format!("compressing: {e}")))?;
            let consumed = (self.deflate.total_in() - start) as usize;
            // A sync flush is complete once all input is in and the output did not fill up.
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(256));
        }
    }

    fn decompress_headers(
        &mut self,
        compressed: &[u8],
    ) -> Result<Vec<(String, String)>, SpdyError> {
        let mut out = Vec::with_capacity(compressed.len() * 4 + 64);
        let start = self.inflate.total_in();
        loop {
            let consumed = (self.inflate.total_in() - start) as usize;
            if consumed == compressed.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::HeaderBlock(format!(
                        "decompresses to more than {MAX_HEADER_BLOCK} bytes"
                    )));
                }
                out.reserve(out.capacity());
            }
            let before = (self.inflate.total_in(), self.inflate.total_out());
            match self.inflate.decompress_vec(
                &compressed[consumed..],
                &mut out,
                FlushDecompress::Sync,
            ) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| SpdyError::HeaderBlock(format!("dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::HeaderBlock(format!("decompressing: {e}"))),
            }
            if (self.inflate.total_in(), self.inflate.total_out()) == before
                && out.len() < out.capacity()
            {
                return Err(SpdyError::HeaderBlock("truncated compressed data".into()));
            }
        }
        parse_header_block(&out)
    }

    /// Appends `frame`'s bytes to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, payload: &[u8]| {
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(payload);
        };
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match frame {
            Frame::SynStream {
                stream_id,
                headers,
                fin,
            } => {
                let mut payload = Vec::new();
                payload.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                payload.extend_from_slice(&0u32.to_be_bytes()); // associated stream
                payload.extend_from_slice(&[0, 0]); // priority, slot
                payload.extend(self.compress_headers(headers)?);
                control(out, TYPE_SYN_STREAM, fin_flag(*fin), &payload);
            }
            Frame::SynReply {
                stream_id,
                headers,
                fin,
            } => {
                let mut payload = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                payload.extend(self.compress_headers(headers)?);
                control(out, TYPE_SYN_REPLY, fin_flag(*fin), &payload);
            }
            Frame::Headers { stream_id, fin } => {
                let mut payload = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                payload.extend(self.compress_headers(&[])?);
                control(out, TYPE_HEADERS, fin_flag(*fin), &payload);
            }
            Frame::RstStream { stream_id, status } => {
                let mut payload = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                payload.extend_from_slice(&status.to_be_bytes());
                control(out, TYPE_RST_STREAM, 0, &payload);
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut payload = (last_good_stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                payload.extend_from_slice(&status.to_be_bytes());
                control(out, TYPE_GOAWAY, 0, &payload);
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(SpdyError::TooLarge(data.len()));
                }
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.push(fin_flag(*fin));
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
            }
            Frame::Ignored { .. } => {}
        }
        Ok(())
    }

    /// Takes one complete frame off the front of `buf`, or `None` until more bytes arrive.
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (be32(buf, 4) & 0x00ff_ffff) as usize;
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let flags = buf[4];
        let fin = flags & FLAG_FIN != 0;
        let frame: Vec<u8> = buf.drain(..8 + len).collect();
        let payload = &frame[8..];
        if frame[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: be32(&frame, 0) & 0x7fff_ffff,
                fin,
                data: payload.to_vec(),
            }));
        }
        let version = u16::from_be_bytes([frame[0], frame[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([frame[2], frame[3]]);
        let need = |what: &'static str, n: usize| {
            if payload.len() < n {
                Err(SpdyError::Short {
                    what,
                    len: payload.len(),
                })
            } else {
                Ok(())
            }
        };
        let stream = |p: &[u8]| be32(p, 0) & 0x7fff_ffff;
        Ok(Some(match kind {
            TYPE_SYN_STREAM => {
                need("SYN_STREAM", 10)?;
                Frame::SynStream {
                    stream_id: stream(payload),
                    headers: self.decompress_headers(&payload[10..])?,
                    fin,
                }
            }
            TYPE_SYN_REPLY => {
                need("SYN_REPLY", 4)?;
                Frame::SynReply {
                    stream_id: stream(payload),
                    headers: self.decompress_headers(&payload[4..])?,
                    fin,
                }
            }
            TYPE_HEADERS => {
                need("HEADERS", 4)?;
                // Decompressed to keep the shared zlib context in step; the headers are unused.
                self.decompress_headers(&payload[4..])?;
                Frame::Headers {
                    stream_id: stream(payload),
                    fin,
                }
            }
            TYPE_RST_STREAM => {
                need("RST_STREAM", 8)?;
                Frame::RstStream {
                    stream_id: stream(payload),
                    status: be32(payload, 4),
                }
            }
            TYPE_PING => {
                need("PING", 4)?;
                Frame::Ping {
                    id: be32(payload, 0),
                }
            }
            TYPE_GOAWAY => {
                need("GOAWAY", 8)?;
                Frame::GoAway {
                    last_good_stream_id: stream(payload),
                    status: be32(payload, 4),
                }
            }
            other => Frame::Ignored { frame_type: other },
        }))
    }
}

fn parse_header_block(block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let bad = |what: &str| SpdyError::HeaderBlock(format!("malformed name/value block: {what}"));
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let end = at.checked_add(n).filter(|e| *e <= block.len());
        let end = end.ok_or_else(|| bad("truncated"))?;
        let s = &block[at..end];
        at = end;
        Ok(s)
    };
    let count = be32(take(4)?, 0) as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = be32(take(4)?, 0) as usize;
        let name = String::from_utf8_lossy(take(n)?).into_owned();
        let n = be32(take(4)?, 0) as usize;
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_protocols() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
        // A zlib stream with a preset dictionary names it by its Adler-32 checksum, which peers
        // check: this is the value every SPDY/3 implementation sends.
        let mut codec = Codec::new();
        let block = codec.compress_headers(&[]).unwrap();
        assert_eq!(block[1] & 0x20, 0x20, "FDICT set");
        assert_eq!(be32(&block, 2), 0xe3c6_a7c2);
    }

    #[test]
    fn frames_round_trip_between_two_codecs() {
        let (mut client, mut server) = (Codec::new(), Codec::new());
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                headers: vec![("streamtype".into(), "error".into())],
                fin: false,
            },
            Frame::SynStream {
                stream_id: 3,
                headers: vec![
                    ("streamtype".into(), "stdout".into()),
                    ("port".into(), "8080".into()),
                ],
                fin: false,
            },
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: b"hello".to_vec(),
            },
            Frame::Ping { id: 7 },
            Frame::RstStream {
                stream_id: 3,
                status: RST_REFUSED_STREAM,
            },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: GOAWAY_OK,
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            client.encode(f, &mut wire).unwrap();
        }
        // Fed in small pieces: frames come out only once complete.
        let mut buf = Vec::new();
        let mut decoded = Vec::new();
        for chunk in wire.chunks(5) {
            buf.extend_from_slice(chunk);
            while let Some(f) = server.decode(&mut buf).unwrap() {
                decoded.push(f);
            }
        }
        assert_eq!(decoded, frames);
        assert!(buf.is_empty());

        // The reverse direction has its own compression context.
        let mut wire = Vec::new();
        for stream_id in [1, 3] {
            let reply = Frame::SynReply {
                stream_id,
                headers: vec![],
                fin: false,
            };
            server.encode(&reply, &mut wire).unwrap();
        }
        let first = client.decode(&mut wire).unwrap();
        let second = client.decode(&mut wire).unwrap();
        assert!(matches!(first, Some(Frame::SynReply { stream_id: 1, .. })));
        assert!(matches!(second, Some(Frame::SynReply { stream_id: 3, .. })));
    }

    #[test]
    fn data_frames_use_the_wire_layout() {
        let mut out = Vec::new();
        Codec::new()
            .encode(
                &Frame::Data {
                    stream_id: 5,
                    fin: true,
                    data: vec![0xaa; 3],
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(out, [0, 0, 0, 5, 1, 0, 0, 3, 0xaa, 0xaa, 0xaa]);
        let mut ping = Vec::new();
        Codec::new()
            .encode(&Frame::Ping { id: 2 }, &mut ping)
            .unwrap();
        assert_eq!(ping, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut codec = Codec::new();
        // SPDY/2 control frame.
        let mut buf = vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        assert!(matches!(codec.decode(&mut buf), Err(SpdyError::Version(2))));
        // SYN_REPLY whose header block is not zlib.
        let mut buf = vec![0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4];
        assert!(matches!(
            Codec::new().decode(&mut buf),
            Err(SpdyError::HeaderBlock(_))
        ));
        // RST_STREAM too short.
        let mut buf = vec![0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0];
        assert!(matches!(
            Codec::new().decode(&mut buf),
            Err(SpdyError::Short { .. })
        ));
        assert!(parse_header_block(&[0, 0, 0, 9, 0, 0]).is_err());
    }
}
