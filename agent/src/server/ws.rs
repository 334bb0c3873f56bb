//! The server side of RFC 6455 WebSocket, as far as kube's streaming protocols need it:
//! the handshake's accept key, frames read from a client (masked, possibly fragmented, with
//! ping and close control frames) and unmasked frames written back. No extensions
//! (permessage-deflate is never negotiated, as kubelet's server does not either).

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The GUID RFC 6455 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest message accepted from a client: stdin chunks and resize events are small;
/// this bounds what a peer can make the agent buffer.
pub const MAX_MESSAGE: usize = 16 << 20;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One frame, unmasked, as the server sends it.
pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A close frame with `code` and a reason.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    encode(OP_CLOSE, &payload)
}

/// What a client sent: a whole data message, a ping to answer, or the end.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Binary(Vec<u8>),
    Text(Vec<u8>),
    Ping(Vec<u8>),
    /// A close frame, or the connection ended.
    Close,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    #[error("websocket: {0}")]
    Protocol(&'static str),
    #[error("websocket: message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("websocket: {0}")]
    Io(String),
}

/// Reads a client's messages, joining fragments.
pub struct Reader<R> {
    inner: R,
    /// A fragmented message being received: its opcode and the data so far.
    partial: Option<(u8, Vec<u8>)>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            partial: None,
        }
    }

    /// The next message; pongs are skipped. A connection that ends is [`Message::Close`].
    pub async fn next(&mut self) -> Result<Message, WsError> {
        loop {
            let Some((fin, opcode, payload)) = self.frame().await? else {
                return Ok(Message::Close);
            };
            let message = &mut self.partial;
            match opcode {
                OP_CLOSE => return Ok(Message::Close),
                OP_PING => return Ok(Message::Ping(payload)),
                OP_PONG => continue,
                OP_TEXT | OP_BINARY if message.is_none() => *message = Some((opcode, payload)),
                OP_CONTINUATION => match message.as_mut() {
                    Some((_, data)) => {
                        if data.len() + payload.len() > MAX_MESSAGE {
                            return Err(WsError::TooLarge);
                        }
                        data.extend_from_slice(&payload);
                    }
                    None => return Err(WsError::Protocol("continuation without a message")),
                },
                OP_TEXT | OP_BINARY => {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
            if fin && let Some((op, data)) = self.partial.take() {
                return Ok(if op == OP_TEXT {
                    Message::Text(data)
                } else {
                    Message::Binary(data)
                });
            }
        }
    }

    /// One frame: (fin, opcode, unmasked payload); `None` at a clean end of the stream.
    async fn frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, WsError> {
        let io = |e: std::io::Error| WsError::Io(e.to_string());
        let mut head = [0u8; 2];
        match self.inner.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let fin = head[0] & 0x80 != 0;
        if head[0] & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set without an extension"));
        }
        let opcode = head[0] & 0x0F;
        if head[1] & 0x80 == 0 {
            return Err(WsError::Protocol("client frame not masked"));
        }
        let len = match head[1] & 0x7F {
            126 => u64::from(self.inner.read_u16().await.map_err(io)?),
            127 => self.inner.read_u64().await.map_err(io)?,
            n => u64::from(n),
        };
        if opcode >= OP_CLOSE && (len > 125 || !fin) {
            return Err(WsError::Protocol("bad control frame"));
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|n| *n <= MAX_MESSAGE)
            .ok_or(WsError::TooLarge)?;
        let mut mask = [0u8; 4];
        self.inner.read_exact(&mut mask).await.map_err(io)?;
        let mut payload = vec![0u8; len];
        self.inner.read_exact(&mut payload).await.map_err(io)?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        Ok(Some((fin, opcode, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's (masked) frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn accept_key_of_rfc_6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn encodes_the_three_length_forms() {
        assert_eq!(encode(OP_BINARY, b"\x01hi"), b"\x82\x03\x01hi");
        let mid = encode(OP_BINARY, &[7u8; 300]);
        assert_eq!(&mid[..4], &[0x82, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = encode(OP_BINARY, &vec![0u8; 70_000]);
        assert_eq!(&big[..2], &[0x82, 127]);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
        assert_eq!(close_frame(1000, ""), vec![0x88, 2, 0x03, 0xe8]);
    }

    #[tokio::test]
    async fn reads_masked_fragmented_and_control_frames() {
        let mut wire = client_frame(true, OP_BINARY, b"\x00echo");
        wire.extend(client_frame(false, OP_BINARY, b"\x00ab"));
        wire.extend(client_frame(true, OP_PING, b"p"));
        wire.extend(client_frame(false, OP_CONTINUATION, &[b'c'; 200]));
        wire.extend(client_frame(true, OP_CONTINUATION, b"d"));
        wire.extend(client_frame(true, OP_PONG, b""));
        wire.extend(client_frame(true, OP_TEXT, b"t"));
        wire.extend(client_frame(true, OP_CLOSE, b"\x03\xe8"));
        let mut r = Reader::new(&wire[..]);
        assert_eq!(r.next().await, Ok(Message::Binary(b"\x00echo".to_vec())));
        // A ping between the fragments of a message is handed over first.
        assert_eq!(r.next().await, Ok(Message::Ping(b"p".to_vec())));
        let mut want = b"\x00ab".to_vec();
        want.extend([b'c'; 200]);
        want.push(b'd');
        assert_eq!(r.next().await, Ok(Message::Binary(want)));
        assert_eq!(r.next().await, Ok(Message::Text(b"t".to_vec())));
        assert_eq!(r.next().await, Ok(Message::Close));
        assert_eq!(Reader::new(&b""[..]).next().await, Ok(Message::Close));
    }

    #[tokio::test]
    async fn refuses_unmasked_and_oversized_frames() {
        let unmasked = encode(OP_BINARY, b"x");
        assert_eq!(
            Reader::new(&unmasked[..]).next().await,
            Err(WsError::Protocol("client frame not masked"))
        );
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(Reader::new(&huge[..]).next().await, Err(WsError::TooLarge));
    }
}
