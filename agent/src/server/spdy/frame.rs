//! SPDY/3.1 frames (draft-mbelshe-httpbis-spdy-00 §2.2, with 3.1's WINDOW_UPDATE): an 8-byte
//! head (control bit, version and type, or a stream id; flags; a 24-bit length) and the body.
//! Header blocks stay compressed here; [`super::headers`] reads and writes them.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const VERSION: u16 = 3;

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

/// FLAG_FIN on data, SYN_STREAM, SYN_REPLY and HEADERS frames.
pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_CANCEL: u32 = 5;

/// The largest body a frame can carry (a 24-bit length).
pub const MAX_LENGTH: usize = 0x00FF_FFFF;

const STREAM_ID_MASK: u32 = 0x7FFF_FFFF;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        /// The compressed header block.
        block: Vec<u8>,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        block: Vec<u8>,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// The settings are not acted on (nothing here is tuned by them); kept as raw entries.
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        block: Vec<u8>,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame of a type this side does not know: SPDY says to ignore it.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("spdy: {0}")]
    Protocol(&'static str),
    #[error("spdy: unsupported version {0}")]
    Version(u16),
    #[error("spdy: frame body larger than {MAX_LENGTH} bytes")]
    TooLarge,
    #[error("spdy: {0}")]
    Io(String),
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, FrameError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(FrameError::Protocol("frame body too short"))
}

fn rest(b: &[u8], at: usize) -> Result<Vec<u8>, FrameError> {
    b.get(at..)
        .map(<[u8]>::to_vec)
        .ok_or(FrameError::Protocol("frame body too short"))
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let (head, flags, body): (Option<u16>, u8, Vec<u8>) = match self {
            Frame::SynStream {
                stream_id,
                associated,
                priority,
                flags,
                block,
            } => {
                let mut b = Vec::with_capacity(10 + block.len());
                b.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                b.extend_from_slice(&(associated & STREAM_ID_MASK).to_be_bytes());
                b.push((priority & 0x07) << 5);
                b.push(0);
                b.extend_from_slice(block);
                (Some(SYN_STREAM), *flags, b)
            }
            Frame::SynReply {
                stream_id,
                flags,
                block,
            } => (Some(SYN_REPLY), *flags, id_then(*stream_id, block)),
            Frame::Headers {
                stream_id,
                flags,
                block,
            } => (Some(HEADERS), *flags, id_then(*stream_id, block)),
            Frame::RstStream { stream_id, status } => (
                Some(RST_STREAM),
                0,
                id_then(*stream_id, &status.to_be_bytes()),
            ),
            Frame::Settings { flags, entries } => {
                let mut b = (entries.len() as u32).to_be_bytes().to_vec();
                for (f, id, value) in entries {
                    b.extend_from_slice(
                        &((u32::from(*f) << 24) | (id & 0x00FF_FFFF)).to_be_bytes(),
                    );
                    b.extend_from_slice(&value.to_be_bytes());
                }
                (Some(SETTINGS), *flags, b)
            }
            Frame::Ping { id } => (Some(PING), 0, id.to_be_bytes().to_vec()),
            Frame::GoAway { last_good, status } => {
                (Some(GOAWAY), 0, id_then(*last_good, &status.to_be_bytes()))
            }
            Frame::WindowUpdate { stream_id, delta } => (
                Some(WINDOW_UPDATE),
                0,
                id_then(*stream_id, &(delta & STREAM_ID_MASK).to_be_bytes()),
            ),
            Frame::Data {
                stream_id: _,
                flags,
                data,
            } => (None, *flags, data.clone()),
            Frame::Unknown { .. } => {
                return Err(FrameError::Protocol("cannot encode an unknown frame"));
            }
        };
        if body.len() > MAX_LENGTH {
            return Err(FrameError::TooLarge);
        }
        let mut out = Vec::with_capacity(8 + body.len());
        match (head, self) {
            (Some(kind), _) => {
                out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
                out.extend_from_slice(&kind.to_be_bytes());
            }
            (None, Frame::Data { stream_id, .. }) => {
                out.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
            }
            (None, _) => return Err(FrameError::Protocol("frame without a head")),
        }
        out.push(flags);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The frame of an 8-byte `head` and its `body`.
    pub fn decode(head: [u8; 8], body: Vec<u8>) -> Result<Frame, FrameError> {
        let flags = head[4];
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if word & 0x8000_0000 == 0 {
            return Ok(Frame::Data {
                stream_id: word,
                flags,
                data: body,
            });
        }
        let version = ((word >> 16) & 0x7FFF) as u16;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = (word & 0xFFFF) as u16;
        let id = |at| u32_at(&body, at).map(|v| v & STREAM_ID_MASK);
        Ok(match kind {
            SYN_STREAM => Frame::SynStream {
                stream_id: id(0)?,
                associated: id(4)?,
                priority: body.get(8).map_or(0, |p| p >> 5),
                flags,
                block: rest(&body, 10)?,
            },
            SYN_REPLY => Frame::SynReply {
                stream_id: id(0)?,
                flags,
                block: rest(&body, 4)?,
            },
            HEADERS => Frame::Headers {
                stream_id: id(0)?,
                flags,
                block: rest(&body, 4)?,
            },
            RST_STREAM => Frame::RstStream {
                stream_id: id(0)?,
                status: u32_at(&body, 4)?,
            },
            SETTINGS => Frame::Settings {
                flags,
                entries: settings(&body)?,
            },
            PING => Frame::Ping {
                id: u32_at(&body, 0)?,
            },
            GOAWAY => Frame::GoAway {
                last_good: id(0)?,
                status: u32_at(&body, 4).unwrap_or(0),
            },
            WINDOW_UPDATE => Frame::WindowUpdate {
                stream_id: id(0)?,
                delta: id(4)?,
            },
            kind => Frame::Unknown { kind },
        })
    }
}

fn id_then(stream_id: u32, tail: &[u8]) -> Vec<u8> {
    let mut b = (stream_id & STREAM_ID_MASK).to_be_bytes().to_vec();
    b.extend_from_slice(tail);
    b
}

fn settings(body: &[u8]) -> Result<Vec<(u8, u32, u32)>, FrameError> {
    let n = u32_at(body, 0)? as usize;
    if body.len() != 4 + n.saturating_mul(8) {
        return Err(FrameError::Protocol(
            "SETTINGS length does not match its entries",
        ));
    }
    (0..n)
        .map(|i| {
            let at = 4 + i * 8;
            let word = u32_at(body, at)?;
            Ok((
                (word >> 24) as u8,
                word & 0x00FF_FFFF,
                u32_at(body, at + 4)?,
            ))
        })
        .collect()
}

/// The next frame from `r`; `None` when the connection ends between frames.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let io = |e: std::io::Error| FrameError::Io(e.to_string());
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io(e)),
    }
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(io)?;
    Frame::decode(head, body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) {
        let wire = f.encode().unwrap();
        let mut r = &wire[..];
        let back = futures::executor::block_on(read(&mut r)).unwrap().unwrap();
        assert_eq!(back, f);
        assert!(r.is_empty());
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::SynStream {
            stream_id: 3,
            associated: 0,
            priority: 2,
            flags: FLAG_FIN,
            block: vec![1, 2, 3],
        });
        round_trip(Frame::SynReply {
            stream_id: 5,
            flags: 0,
            block: vec![9],
        });
        round_trip(Frame::Headers {
            stream_id: 5,
            flags: 0,
            block: vec![],
        });
        round_trip(Frame::RstStream {
            stream_id: 7,
            status: RST_CANCEL,
        });
        round_trip(Frame::Settings {
            flags: 1,
            entries: vec![(0, 7, 65536), (1, 4, 100)],
        });
        round_trip(Frame::Ping { id: 1 });
        round_trip(Frame::GoAway {
            last_good: 9,
            status: 0,
        });
        round_trip(Frame::WindowUpdate {
            stream_id: 1,
            delta: 4096,
        });
        round_trip(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: b"hello".to_vec(),
        });
    }

    #[test]
    fn wire_layout_follows_the_draft() {
        let ping = Frame::Ping { id: 2 }.encode().unwrap();
        assert_eq!(ping, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2]);
        let data = Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: b"ab".to_vec(),
        }
        .encode()
        .unwrap();
        assert_eq!(data, [0, 0, 0, 1, 1, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn bad_input_is_an_error() {
        let head = |kind: u8, len: u8| [0x80, 3, 0, kind, 0, 0, 0, len];
        // Too short for its type.
        assert!(Frame::decode(head(1, 3), vec![0; 3]).is_err());
        assert!(Frame::decode(head(6, 2), vec![0; 2]).is_err());
        assert!(Frame::decode(head(3, 4), vec![0; 4]).is_err());
        // A SETTINGS count that overflows the body.
        assert!(Frame::decode(head(4, 4), vec![0xff, 0xff, 0xff, 0xff]).is_err());
        // Another version.
        assert_eq!(
            Frame::decode([0x80, 2, 0, 1, 0, 0, 0, 0], vec![]),
            Err(FrameError::Version(2))
        );
        // Unknown control types are kept, to be ignored.
        assert_eq!(
            Frame::decode(head(42, 0), vec![]),
            Ok(Frame::Unknown { kind: 42 })
        );
        // A body cut short by the end of the connection.
        let mut short = &[0u8, 0, 0, 1, 0, 0, 0, 9, 1][..];
        assert!(futures::executor::block_on(read(&mut short)).is_err());
        let mut empty = &[][..];
        assert_eq!(futures::executor::block_on(read(&mut empty)), Ok(None));
        let big = Frame::Data {
            stream_id: 1,
            flags: 0,
            data: vec![0; MAX_LENGTH + 1],
        };
        assert_eq!(big.encode(), Err(FrameError::TooLarge));
    }
}
