//! SPDY/3.1, as kubectl's streaming connections (moby/spdystream) speak it: the frames
//! ([`frame`]), the compressed header blocks ([`headers`]) and a server session ([`session`]).

pub mod frame;
pub mod headers;
pub mod session;

pub use session::{Stream, StreamWriter, serve};
