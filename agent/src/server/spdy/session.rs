//! The server side of a SPDY/3.1 session, as moby/spdystream (kubectl's side) speaks it: the
//! client opens streams (odd ids) with SYN_STREAM, each is answered with a SYN_REPLY and
//! handed to the caller with its headers, its incoming data and a writer; client pings are
//! echoed. Like spdystream, no flow control is done (WINDOW_UPDATE is read and ignored, none
//! is sent) and SETTINGS are ignored.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{self, FLAG_FIN, Frame};
use super::headers::{Compressor, Decompressor, Headers};

/// Data chunks queued per stream before the session waits for the stream's reader.
const STREAM_QUEUE: usize = 32;
/// Frames queued for the connection before writers wait.
const OUT_QUEUE: usize = 64;

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// The client's data; ends at its FIN, a reset, or the end of the session.
    pub incoming: mpsc::Receiver<Vec<u8>>,
    pub out: StreamWriter,
}

/// Writes to one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    tx: mpsc::Sender<Out>,
}

/// The session has ended: nothing more can be sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

enum Out {
    Frame(Frame),
    /// A SYN_REPLY, whose header block is compressed by the writer (the zlib stream is the
    /// writer's, in frame order).
    Reply {
        stream_id: u32,
        flags: u8,
    },
    /// The session is over: what is queued before this is still written.
    End,
}

impl StreamWriter {
    /// Send `data` on the stream.
    pub async fn write(&self, data: &[u8]) -> Result<(), Closed> {
        for chunk in data.chunks(frame::MAX_LENGTH) {
            self.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: chunk.to_vec(),
            })
            .await?;
        }
        Ok(())
    }

    /// Half-close: this side sends no more on the stream.
    pub async fn close(&self) {
        let _ = self
            .send(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Vec::new(),
            })
            .await;
    }

    /// Abort the stream (RST_STREAM CANCEL, as spdystream's `Reset`).
    pub async fn reset(&self) {
        let _ = self
            .send(Frame::RstStream {
                stream_id: self.id,
                status: frame::RST_CANCEL,
            })
            .await;
    }

    /// Resolves when the session has ended.
    pub async fn ended(&self) {
        self.tx.closed().await;
    }

    async fn send(&self, f: Frame) -> Result<(), Closed> {
        self.tx.send(Out::Frame(f)).await.map_err(|_| Closed)
    }
}

/// Serve one session on `io` until the client leaves (EOF, GOAWAY or a protocol error),
/// handing each new stream to `streams`.
pub async fn serve<S>(io: S, streams: mpsc::Sender<Stream>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let writer = tokio::spawn(write_frames(wr, rx));
    let mut session = Session {
        decompressor: Decompressor::new(),
        open: HashMap::new(),
        tx,
        streams,
    };
    loop {
        let f = match frame::read(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "spdy session ended");
                break;
            }
        };
        if session.handle(f).await.is_err() {
            break;
        }
    }
    // Stream readers see their data end; writers see the session closed once the writer
    // has sent what was queued (a GOAWAY, say) or could not within a few seconds.
    let _ = session.tx.send(Out::End).await;
    drop(session);
    let abort = writer.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

struct Session {
    decompressor: Decompressor,
    /// The open streams' incoming data.
    open: HashMap<u32, mpsc::Sender<Vec<u8>>>,
    tx: mpsc::Sender<Out>,
    streams: mpsc::Sender<Stream>,
}

impl Session {
    /// Act on one frame; an error ends the session.
    async fn handle(&mut self, f: Frame) -> Result<(), Closed> {
        match f {
            Frame::SynStream {
                stream_id,
                flags,
                block,
                ..
            } => self.open_stream(stream_id, flags, &block).await,
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                self.deliver(stream_id, data).await;
                if flags & FLAG_FIN != 0 {
                    self.open.remove(&stream_id);
                }
                Ok(())
            }
            Frame::RstStream { stream_id, .. } => {
                self.open.remove(&stream_id);
                Ok(())
            }
            // Odd ids are the client's pings, to be echoed; even ones would answer ours.
            Frame::Ping { id } if !id.is_multiple_of(2) => {
                self.send(Out::Frame(Frame::Ping { id })).await
            }
            Frame::GoAway { .. } => Err(Closed),
            Frame::Headers { block, .. } => {
                // Decompressed all the same, to keep the zlib stream in step.
                self.decompressor.decompress(&block).map_err(|_| Closed)?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn open_stream(&mut self, id: u32, flags: u8, block: &[u8]) -> Result<(), Closed> {
        let headers = match self.decompressor.decompress(block) {
            Ok(h) => h,
            Err(e) => {
                // The shared zlib stream is out of step: the session cannot go on.
                tracing::debug!(error = %e, "spdy: bad header block");
                let _ = self
                    .send(Out::Frame(Frame::GoAway {
                        last_good: id.saturating_sub(2),
                        status: frame::RST_PROTOCOL_ERROR,
                    }))
                    .await;
                return Err(Closed);
            }
        };
        if id.is_multiple_of(2) || self.open.contains_key(&id) {
            return self
                .send(Out::Frame(Frame::RstStream {
                    stream_id: id,
                    status: frame::RST_PROTOCOL_ERROR,
                }))
                .await;
        }
        self.send(Out::Reply {
            stream_id: id,
            flags: 0,
        })
        .await?;
        let (data_tx, incoming) = mpsc::channel(STREAM_QUEUE);
        if flags & FLAG_FIN == 0 {
            self.open.insert(id, data_tx);
        }
        let stream = Stream {
            id,
            headers,
            incoming,
            out: StreamWriter {
                id,
                tx: self.tx.clone(),
            },
        };
        self.streams.send(stream).await.map_err(|_| Closed)
    }

    async fn deliver(&mut self, id: u32, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if let Some(tx) = self.open.get(&id)
            && tx.send(data).await.is_err()
        {
            // The stream's reader is gone: what follows is dropped.
            self.open.remove(&id);
        }
    }

    async fn send(&self, out: Out) -> Result<(), Closed> {
        self.tx.send(out).await.map_err(|_| Closed)
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Out>) {
    let mut compressor = Compressor::new();
    while let Some(out) = rx.recv().await {
        let f = match out {
            Out::Frame(f) => f,
            Out::Reply { stream_id, flags } => match compressor.compress(&Headers::default()) {
                Ok(block) => Frame::SynReply {
                    stream_id,
                    flags,
                    block,
                },
                Err(e) => {
                    tracing::debug!(error = %e, "spdy: compressing a reply");
                    return;
                }
            },
            Out::End => break,
        };
        let Ok(bytes) = f.encode() else { return };
        if wr.write_all(&bytes).await.is_err() {
            return;
        }
        // Frames are flushed once nothing more is queued.
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client's side of a session: its compressor and decompressor.
    struct Client {
        io: tokio::io::DuplexStream,
        compress: Compressor,
        decompress: Decompressor,
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            self.io.write_all(&f.encode().unwrap()).await.unwrap();
        }

        async fn open(&mut self, id: u32, pairs: &[(&str, &str)]) {
            let h = Headers(
                pairs
                    .iter()
                    .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                    .collect(),
            );
            let block = self.compress.compress(&h).unwrap();
            self.send(Frame::SynStream {
                stream_id: id,
                associated: 0,
                priority: 0,
                flags: 0,
                block,
            })
            .await;
        }

        async fn next(&mut self) -> Option<Frame> {
            frame::read(&mut self.io).await.unwrap()
        }
    }

    #[tokio::test]
    async fn streams_are_replied_to_and_carry_data_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (tx, mut streams) = mpsc::channel(4);
        let server = tokio::spawn(serve(b, tx));
        let mut c = Client {
            io: a,
            compress: Compressor::new(),
            decompress: Decompressor::new(),
        };
        c.open(1, &[("streamType", "data"), ("port", "80")]).await;
        let mut s = streams.recv().await.unwrap();
        assert_eq!((s.id, s.headers.get("port")), (1, Some("80")));
        let Some(Frame::SynReply {
            stream_id: 1,
            block,
            ..
        }) = c.next().await
        else {
            panic!("no reply")
        };
        assert_eq!(c.decompress.decompress(&block).unwrap(), Headers::default());
        c.send(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: b"ping".to_vec(),
        })
        .await;
        assert_eq!(s.incoming.recv().await.unwrap(), b"ping");
        assert_eq!(s.incoming.recv().await, None);
        s.out.write(b"pong").await.unwrap();
        s.out.close().await;
        assert_eq!(
            c.next().await,
            Some(Frame::Data {
                stream_id: 1,
                flags: 0,
                data: b"pong".to_vec()
            })
        );
        assert!(matches!(
            c.next().await,
            Some(Frame::Data {
                flags: FLAG_FIN,
                ..
            })
        ));
        // Client pings are echoed; an even (server) stream id is refused.
        c.send(Frame::Ping { id: 7 }).await;
        assert_eq!(c.next().await, Some(Frame::Ping { id: 7 }));
        c.open(2, &[]).await;
        assert!(matches!(
            c.next().await,
            Some(Frame::RstStream { stream_id: 2, .. })
        ));
        // The client leaves: the session ends and writers see it.
        drop(c);
        server.await.unwrap();
        assert_eq!(s.out.write(b"late").await, Err(Closed));
    }

    #[tokio::test]
    async fn garbage_ends_the_session_without_panicking() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let (tx, _streams) = mpsc::channel(4);
        let server = tokio::spawn(serve(b, tx));
        // A SYN_STREAM whose header block is not zlib.
        let f = Frame::SynStream {
            stream_id: 1,
            associated: 0,
            priority: 0,
            flags: 0,
            block: b"garbage".to_vec(),
        };
        a.write_all(&f.encode().unwrap()).await.unwrap();
        server.await.unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        let mut r = &rest[..];
        assert!(matches!(
            frame::read(&mut r).await,
            Ok(Some(Frame::GoAway { .. }))
        ));
    }
}
