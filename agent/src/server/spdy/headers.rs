//! SPDY/3 header blocks: name/value pairs (32-bit lengths; several values of one name joined
//! by NUL), compressed with one zlib stream per direction for the whole session, primed with
//! the draft's dictionary (§2.6.10.1) and sync-flushed after each block.

use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The largest decompressed header block accepted (a peer could otherwise make the agent
/// inflate without bound).
pub const MAX_BLOCK: usize = 1 << 20;

/// The words of the SPDY/3 dictionary, each prefixed by its 32-bit length.
const DICTIONARY_WORDS: [&str; 65] = [
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

/// The dictionary's tail, after the words: status codes and phrases, dates, common values.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The SPDY/3 header dictionary.
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut d = Vec::with_capacity(1423);
    for w in DICTIONARY_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    d
});

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("spdy: header block: {0}")]
    Malformed(&'static str),
    #[error("spdy: header block larger than {MAX_BLOCK} bytes")]
    TooLarge,
    #[error("spdy: header compression: {0}")]
    Zlib(String),
}

/// A header block: names (lower case on the wire) with their values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of `name`, compared without case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The uncompressed block.
    fn encode(&self) -> Vec<u8> {
        let mut out = (self.0.len() as u32).to_be_bytes().to_vec();
        for (name, value) in &self.0 {
            for s in [name.to_ascii_lowercase().as_str(), value.as_str()] {
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    /// The headers of an uncompressed block; a NUL-joined value is several values.
    fn decode(block: &[u8]) -> Result<Headers, HeaderError> {
        let mut rest = block;
        let count = take_len(&mut rest)?;
        let mut out = Vec::new();
        for _ in 0..count {
            let n = take_len(&mut rest)?;
            let name = String::from_utf8_lossy(take(&mut rest, n)?).into_owned();
            let n = take_len(&mut rest)?;
            let value = take(&mut rest, n)?;
            for v in value.split(|b| *b == 0) {
                out.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
            }
        }
        Ok(Headers(out))
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
    if rest.len() < n {
        return Err(HeaderError::Malformed("truncated"));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_len(rest: &mut &[u8]) -> Result<usize, HeaderError> {
    let b = take(rest, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// One direction's compressor.
pub struct Compressor(Compress);

impl Default for Compressor {
    fn default() -> Self {
        Compressor::new()
    }
}

impl Compressor {
    pub fn new() -> Compressor {
        Compressor(Compress::new(Compression::default(), true))
    }

    /// `headers` compressed, continuing the session's zlib stream.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, HeaderError> {
        let z = |e: flate2::CompressError| HeaderError::Zlib(e.to_string());
        if self.0.total_in() == 0 && self.0.total_out() == 0 {
            self.0.set_dictionary(&DICTIONARY).map_err(z)?;
        }
        let input = headers.encode();
        let mut out = Vec::with_capacity(input.len() + 64);
        let start = self.0.total_in();
        loop {
            let consumed = (self.0.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.0
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(z)?;
            let done = (self.0.total_in() - start) as usize == input.len();
            // A sync flush is complete once it stopped short of filling the output.
            if done && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// One direction's decompressor.
pub struct Decompressor(Decompress);

impl Default for Decompressor {
    fn default() -> Self {
        Decompressor::new()
    }
}

impl Decompressor {
    pub fn new() -> Decompressor {
        Decompressor(Decompress::new(true))
    }

    /// The headers of a compressed `block`, continuing the session's zlib stream.
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.0.total_in();
        loop {
            let consumed = (self.0.total_in() - start) as usize;
            if out.capacity() - out.len() < 256 {
                if out.len() >= MAX_BLOCK {
                    return Err(HeaderError::TooLarge);
                }
                out.reserve(out.len().max(1024));
            }
            let before = (self.0.total_in(), self.0.total_out());
            match self
                .0
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => return Headers::decode(&out),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| HeaderError::Zlib(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(HeaderError::Zlib(e.to_string())),
            }
            let all_in = (self.0.total_in() - start) as usize == block.len();
            if all_in && out.len() < out.capacity() {
                return Headers::decode(&out);
            }
            if before == (self.0.total_in(), self.0.total_out()) && all_in {
                return Headers::decode(&out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        Headers(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_dictionary_is_the_drafts() {
        let d = &*DICTIONARY;
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",enq=0."));
        // Adler-32 of the dictionary: the DICTID a peer's zlib header names.
        let mut c = Compress::new(Compression::default(), true);
        assert_eq!(c.set_dictionary(d).unwrap(), adler32(d));
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn blocks_round_trip_across_one_session_stream() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let first = h(&[
            ("streamtype", "error"),
            ("port", "8080"),
            ("requestid", "0"),
        ]);
        let second = h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]);
        let a = c.compress(&first).unwrap();
        // The first block names the dictionary (FDICT set in the zlib header).
        assert_eq!(a[1] & 0x20, 0x20);
        let b = c.compress(&second).unwrap();
        assert_eq!(d.decompress(&a).unwrap(), first);
        assert_eq!(d.decompress(&b).unwrap(), second);
        let empty = c.compress(&Headers::default()).unwrap();
        assert_eq!(d.decompress(&empty).unwrap(), Headers::default());
        assert_eq!(second.get("StreamType"), Some("data"));
    }

    #[test]
    fn large_blocks_and_nul_joined_values() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let big: String = (0..20_000)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        let block = c
            .compress(&h(&[("x-big", &big), ("multi", "a\0b")]))
            .unwrap();
        let got = d.decompress(&block).unwrap();
        assert_eq!(got.get("x-big"), Some(big.as_str()));
        assert_eq!(
            got.0[1..],
            [
                ("multi".to_string(), "a".to_string()),
                ("multi".to_string(), "b".to_string())
            ]
        );
    }

    #[test]
    fn bad_blocks_are_errors() {
        assert!(Decompressor::new().decompress(b"not zlib at all").is_err());
        // A count of pairs the block does not hold.
        assert!(Headers::decode(&[0, 0, 0, 5]).is_err());
        assert!(Headers::decode(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Headers::decode(&[]).is_err());
        // A block compressed without the dictionary's session is refused, not a panic.
        let mut c = Compressor::new();
        let _ = c.compress(&h(&[("a", "b")])).unwrap();
        let second = c.compress(&h(&[("a", "b")])).unwrap();
        assert!(Decompressor::new().decompress(&second).is_err());
    }
}
