//! exec/attach over WebSocket `v5.channel.k8s.io` (what kubectl 1.30+ asks for first),
//! translated to SPDY/3.1 with the remote-command protocol `v4.channel.k8s.io`, which kubelets
//! and container runtimes speak — the counterpart of the kube-apiserver's stream translator.
//!
//! WebSocket side: every binary message starts with a channel byte — 0 stdin, 1 stdout,
//! 2 stderr, 3 error (a JSON `Status` at the end), 4 resize (JSON `{"Width","Height"}`); v5
//! adds `[255, channel]`, which half-closes a stream (stdin EOF). SPDY side: one stream per
//! channel, opened by the client with header `streamtype: error|stdin|stdout|stderr|resize`;
//! stdin EOF is a DATA frame with FLAG_FIN. The error stream's bytes already are the Status
//! JSON the WebSocket client expects, so payloads are relayed as they are.

use std::collections::HashMap;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::spdy::{Codec, Frame, GOAWAY_OK, RST_REFUSED_STREAM};

/// The WebSocket remote-command protocol with stream half-close.
pub const PROTOCOL_V5: &str = "v5.channel.k8s.io";
/// The SPDY remote-command protocol spoken to the agent.
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5's close signal: `[255, channel]`.
const CLOSE: u8 = 255;
/// Stdin is forwarded in DATA frames of at most this size.
const DATA_CHUNK: usize = 64 * 1024;

/// Which streams a remote command has, from the agent query (`input|output|error|tty=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    /// Standard input.
    pub stdin: bool,
    /// Standard output.
    pub stdout: bool,
    /// Standard error (never with a TTY).
    pub stderr: bool,
    /// A terminal, with a resize stream.
    pub tty: bool,
}

impl Streams {
    /// Reads the agent query of an exec or attach (`?input=1&output=1&tty=1...`).
    pub fn from_agent_query(path_and_query: &str) -> Streams {
        let query = path_and_query.split_once('?').map(|(_, q)| q).unwrap_or("");
        let on = |key: &str| {
            query
                .split('&')
                .any(|pair| pair.split_once('=') == Some((key, "1")))
        };
        let tty = on("tty");
        Streams {
            stdin: on("input"),
            stdout: on("output"),
            stderr: on("error") && !tty,
            tty,
        }
    }

    /// `(channel, SPDY stream type)` of each stream, in the order client-go opens them.
    fn channels(&self) -> Vec<(u8, &'static str)> {
        let mut out = vec![(ERROR, "error")];
        for (wanted, channel, kind) in [
            (self.stdin, STDIN, "stdin"),
            (self.stdout, STDOUT, "stdout"),
            (self.stderr, STDERR, "stderr"),
            (self.tty, RESIZE, "resize"),
        ] {
            if wanted {
                out.push((channel, kind));
            }
        }
        out
    }
}

/// Whether a request offers `protocol` in `Sec-WebSocket-Protocol`.
pub fn offers_protocol(headers: &http::HeaderMap, protocol: &str) -> bool {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == protocol)
}

/// A JSON `Status` for the error channel.
pub fn failure_status(message: &str) -> Vec<u8> {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
    .to_string()
    .into_bytes()
}

/// Relays a remote command between a WebSocket v5 client and an agent connection that has
/// switched to SPDY/3.1 `v4.channel.k8s.io`, until the command ends (the agent closes its
/// error stream or the session) or the client goes away.
pub async fn relay<C, A>(
    websocket: WebSocketStream<C>,
    agent: A,
    streams: Streams,
) -> Result<(), String>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ws_tx, mut ws_rx) = websocket.split();
    let (mut agent_rx, mut agent_tx) = tokio::io::split(agent);
    let channels = streams.channels();
    // Client streams have odd ids: 1, 3, 5, ...
    let ids: Vec<(u32, u8)> = channels
        .iter()
        .enumerate()
        .map(|(i, (channel, _))| (2 * i as u32 + 1, *channel))
        .collect();
    let id_of: HashMap<u8, u32> = ids.iter().map(|(id, ch)| (*ch, *id)).collect();
    let channel_of: HashMap<u32, u8> = ids.iter().copied().collect();

    let (frames, mut outgoing) = mpsc::channel::<Frame>(64);
    // The SPDY peer drops data sent on a stream before it has replied to it, so client input
    // waits until every stream is accepted.
    let (ready_tx, mut ready) = watch::channel(false);

    let writer = async {
        let mut codec = Codec::new();
        let mut buf = Vec::new();
        while let Some(frame) = outgoing.recv().await {
            buf.clear();
            codec
                .encode(&frame, &mut buf)
                .map_err(|e| format!("encoding for the agent: {e}"))?;
            agent_tx
                .write_all(&buf)
                .await
                .map_err(|e| format!("writing to the agent: {e}"))?;
        }
        let _ = agent_tx.shutdown().await;
        Ok::<(), String>(())
    };

    let from_agent = async {
        for ((id, _), (_, kind)) in ids.iter().zip(&channels) {
            let open = Frame::SynStream {
                stream_id: *id,
                headers: vec![("streamtype".into(), (*kind).into())],
                fin: false,
            };
            frames.send(open).await.map_err(|_| "agent writer ended")?;
        }
        let mut codec = Codec::new();
        let mut buf = Vec::with_capacity(32 * 1024);
        let mut chunk = vec![0u8; 32 * 1024];
        let mut replied = 0usize;
        'session: loop {
            while let Some(frame) = codec
                .decode(&mut buf)
                .map_err(|e| format!("from the agent: {e}"))?
            {
                match frame {
                    Frame::SynReply { stream_id, .. } if channel_of.contains_key(&stream_id) => {
                        replied += 1;
                        if replied == ids.len() {
                            let _ = ready_tx.send(true);
                            // Like the kubelet's WebSocket server: an empty message on the
                            // lowest writable channel says the streams are up.
                            let first = [STDOUT, STDERR, ERROR]
                                .into_iter()
                                .find(|c| *c == ERROR || id_of.contains_key(c))
                                .unwrap_or(ERROR);
                            ws_tx
                                .send(Message::binary(vec![first]))
                                .await
                                .map_err(|e| format!("writing to the client: {e}"))?;
                        }
                    }
                    Frame::Data {
                        stream_id,
                        fin,
                        data,
                    } => {
                        let Some(&channel) = channel_of.get(&stream_id) else {
                            continue;
                        };
                        if !data.is_empty() && channel != STDIN && channel != RESIZE {
                            let mut message = Vec::with_capacity(data.len() + 1);
                            message.push(channel);
                            message.extend_from_slice(&data);
                            ws_tx
                                .send(Message::binary(message))
                                .await
                                .map_err(|e| format!("writing to the client: {e}"))?;
                        }
                        // The status is the last thing the agent sends.
                        if fin && channel == ERROR {
                            break 'session;
                        }
                    }
                    // Echo the peer's pings (server pings have even ids).
                    Frame::Ping { id } if id % 2 == 0 => {
                        let _ = frames.send(Frame::Ping { id }).await;
                    }
                    Frame::SynStream { stream_id, .. } => {
                        let refuse = Frame::RstStream {
                            stream_id,
                            status: RST_REFUSED_STREAM,
                        };
                        let _ = frames.send(refuse).await;
                    }
                    Frame::GoAway { .. } => break 'session,
                    _ => {}
                }
            }
            let n = agent_rx
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading from the agent: {e}"))?;
            if n == 0 {
                if replied < ids.len() {
                    let status = failure_status("the agent closed the stream before it started");
                    let mut message = vec![ERROR];
                    message.extend(status);
                    let _ = ws_tx.send(Message::binary(message)).await;
                }
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = ws_tx
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = ws_tx.close().await;
        Ok::<(), String>(())
    };

    let from_client = async {
        if ready.wait_for(|r| *r).await.is_err() {
            return Ok(());
        }
        while let Some(message) = ws_rx.next().await {
            // A client that vanished (reset, no close handshake) ends the session like a close.
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("reading from the client ended: {e}");
                    break;
                }
            };
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN | RESIZE => {
                    let Some(&stream_id) = id_of.get(&channel) else {
                        continue;
                    };
                    for piece in payload.chunks(DATA_CHUNK) {
                        let frame = Frame::Data {
                            stream_id,
                            fin: false,
                            data: piece.to_vec(),
                        };
                        frames.send(frame).await.map_err(|_| "agent writer ended")?;
                    }
                }
                CLOSE => {
                    let target = payload.first().and_then(|c| id_of.get(c));
                    if let Some(&stream_id) = target {
                        let frame = Frame::Data {
                            stream_id,
                            fin: true,
                            data: Vec::new(),
                        };
                        frames.send(frame).await.map_err(|_| "agent writer ended")?;
                    }
                }
                _ => {}
            }
        }
        // The client is gone: end the session so the runtime stops the stream.
        let _ = frames
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: GOAWAY_OK,
            })
            .await;
        Ok::<(), String>(())
    };

    let session = async {
        tokio::select! {
            r = from_agent => r,
            r = from_client => r,
        }
    };
    tokio::pin!(writer);
    let result = tokio::select! {
        r = session => r,
        r = &mut writer => return r,
    };
    // The session ended (the status arrived, or the client left and a GoAway was queued): the
    // writer delivers what is queued, then ends once the last sender is gone.
    drop(frames);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[test]
    fn streams_follow_the_agent_query() {
        let s = Streams::from_agent_query("/exec/ns/p/c?input=1&output=1&error=1&command=sh");
        assert_eq!(
            s,
            Streams {
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false
            }
        );
        assert_eq!(
            s.channels(),
            vec![
                (ERROR, "error"),
                (STDIN, "stdin"),
                (STDOUT, "stdout"),
                (STDERR, "stderr")
            ]
        );
        // A terminal has no stderr but a resize stream.
        let t = Streams::from_agent_query("/attach/ns/p/c?input=1&output=1&error=1&tty=1");
        assert_eq!(
            t.channels(),
            vec![
                (ERROR, "error"),
                (STDIN, "stdin"),
                (STDOUT, "stdout"),
                (RESIZE, "resize")
            ]
        );
    }

    /// A stand-in runtime on the SPDY side: accepts the streams, echoes stdin upper-cased on
    /// stdout until stdin's FIN, reports resizes on stderr... then writes a Status and ends.
    async fn runtime_side(io: tokio::io::DuplexStream) -> Vec<(String, u32)> {
        let (mut rx, mut tx) = tokio::io::split(io);
        let mut codec = Codec::new();
        let mut encoder = Codec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut types: HashMap<u32, String> = HashMap::new();
        let mut opened = Vec::new();
        let by_type = |types: &HashMap<u32, String>, t: &str| {
            types.iter().find(|(_, v)| v.as_str() == t).map(|(k, _)| *k)
        };
        loop {
            let n = rx.read(&mut chunk).await.unwrap();
            if n == 0 {
                return opened;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                let mut out = Vec::new();
                match frame {
                    Frame::SynStream {
                        stream_id, headers, ..
                    } => {
                        let kind = headers
                            .iter()
                            .find(|(k, _)| k == "streamtype")
                            .map(|(_, v)| v.clone())
                            .unwrap();
                        opened.push((kind.clone(), stream_id));
                        types.insert(stream_id, kind);
                        let reply = Frame::SynReply {
                            stream_id,
                            headers: vec![],
                            fin: false,
                        };
                        encoder.encode(&reply, &mut out).unwrap();
                    }
                    Frame::Data {
                        stream_id,
                        fin,
                        data,
                    } => {
                        let stdout = by_type(&types, "stdout").unwrap();
                        match types[&stream_id].as_str() {
                            "stdin" => {
                                let echo = Frame::Data {
                                    stream_id: stdout,
                                    fin,
                                    data: data.to_ascii_uppercase(),
                                };
                                encoder.encode(&echo, &mut out).unwrap();
                                if fin {
                                    let status = Frame::Data {
                                        stream_id: by_type(&types, "error").unwrap(),
                                        fin: true,
                                        data: br#"{"metadata":{},"status":"Success"}"#.to_vec(),
                                    };
                                    encoder.encode(&status, &mut out).unwrap();
                                }
                            }
                            "resize" => {
                                let report = Frame::Data {
                                    stream_id: stdout,
                                    fin: false,
                                    data: [b"resize:".as_slice(), &data].concat(),
                                };
                                encoder.encode(&report, &mut out).unwrap();
                            }
                            other => panic!("data on {other}"),
                        }
                    }
                    Frame::GoAway { .. } => opened.push(("goaway".into(), 0)),
                    Frame::Ping { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
                tx.write_all(&out).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn v5_websocket_commands_become_spdy_streams() {
        let (client_io, proxy_client_io) = tokio::io::duplex(64 * 1024);
        let (proxy_agent_io, agent_io) = tokio::io::duplex(64 * 1024);
        let runtime = tokio::spawn(runtime_side(agent_io));
        let proxy = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(proxy_client_io, Role::Server, None).await;
            let streams = Streams {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true,
            };
            relay(ws, proxy_agent_io, streams).await
        });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let mut received: Vec<Vec<u8>> = Vec::new();
        // The empty "streams are up" message on stdout comes first.
        let first = client.next().await.unwrap().unwrap();
        assert_eq!(first, Message::binary(vec![STDOUT]));
        client
            .send(Message::binary(
                b"\x04{\"Width\":80,\"Height\":24}".to_vec(),
            ))
            .await
            .unwrap();
        client
            .send(Message::binary(b"\x00hello ".to_vec()))
            .await
            .unwrap();
        client
            .send(Message::binary(b"\x00world".to_vec()))
            .await
            .unwrap();
        // v5 half-close of stdin: the runtime sees FIN and finishes.
        client
            .send(Message::binary(vec![CLOSE, STDIN]))
            .await
            .unwrap();
        while let Some(Ok(m)) = client.next().await {
            match m {
                Message::Binary(b) => received.push(b.to_vec()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        let stdout: Vec<u8> = received
            .iter()
            .filter(|m| m[0] == STDOUT)
            .flat_map(|m| m[1..].to_vec())
            .collect();
        assert_eq!(
            String::from_utf8(stdout).unwrap(),
            "resize:{\"Width\":80,\"Height\":24}HELLO WORLD"
        );
        let status: Vec<&Vec<u8>> = received.iter().filter(|m| m[0] == ERROR).collect();
        assert_eq!(status.len(), 1);
        assert_eq!(&status[0][1..], br#"{"metadata":{},"status":"Success"}"#);
        proxy.await.unwrap().unwrap();
        let opened = runtime.await.unwrap();
        let kinds: Vec<&str> = opened.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["error", "stdin", "stdout", "resize"]);
        assert!(opened.iter().all(|(_, id)| id % 2 == 1), "{opened:?}");
    }

    #[tokio::test]
    async fn a_client_that_leaves_ends_the_runtime_session_with_goaway() {
        let (client_io, proxy_client_io) = tokio::io::duplex(64 * 1024);
        let (proxy_agent_io, agent_io) = tokio::io::duplex(64 * 1024);
        let runtime = tokio::spawn(runtime_side(agent_io));
        let proxy = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(proxy_client_io, Role::Server, None).await;
            let streams = Streams {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: false,
            };
            relay(ws, proxy_agent_io, streams).await
        });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::binary(vec![STDOUT])
        );
        // Gone without closing stdin (a killed kubectl).
        drop(client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), proxy)
            .await
            .expect("the relay ends when the client leaves");
        let opened = tokio::time::timeout(std::time::Duration::from_secs(5), runtime)
            .await
            .expect("the runtime side sees the end")
            .unwrap();
        assert_eq!(
            opened.last().map(|(k, _)| k.as_str()),
            Some("goaway"),
            "{opened:?}"
        );
    }
}
