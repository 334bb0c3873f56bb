//! Per-container log files in the CRI logging format, with size-based rotation, and the
//! reader behind `kubectl logs`.
//!
//! One directory per container, one file per container instance: `<dir>/<restart_count>.log`,
//! rotated to `<n>.log.1`, `<n>.log.2`, … (higher is older). Each line is one record:
//!
//! ```text
//! 2024-05-01T10:00:00.123456789Z stdout F a complete line
//! 2024-05-01T10:00:00.2Z stderr P the first part of a line that
//! 2024-05-01T10:00:00.3Z stderr F  continues here
//! ```
//!
//! `P` (partial) records hold content that did not end in a newline: a piece of a line longer
//! than [`MAX_RECORD_CONTENT`], or an unterminated tail flushed at EOF. `F` (full) records end
//! a line; the newline itself is not stored.
//!
//! The writer ([`LogWriter`]) lives in the per-container shim, which has no async runtime; the
//! reader ([`read_logs`]) serves the agent's HTTPS server.

mod reader;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

pub use reader::read_logs;
pub use writer::LogWriter;

/// Longest content of one record; longer lines are split into `P` records (as containerd does).
pub const MAX_RECORD_CONTENT: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    fn parse(bytes: &[u8]) -> Option<LogStream> {
        match bytes {
            b"stdout" => Some(LogStream::Stdout),
            b"stderr" => Some(LogStream::Stderr),
            _ => None,
        }
    }
}

/// What `kubectl logs` asks for (kubelet's query parameters).
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Not interpreted by [`read_logs`]: the caller picks the instance (see
    /// [`previous_instance`]) and passes its restart count.
    pub previous: bool,
    /// Last N lines; negative means all.
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<jiff::Timestamp>,
    pub timestamps: bool,
    /// Stop after this many bytes of output; negative means no limit.
    pub limit_bytes: Option<i64>,
}

pub type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

/// The current log file of an instance.
pub fn log_path(dir: &Path, restart_count: u32) -> PathBuf {
    dir.join(format!("{restart_count}.log"))
}

/// A rotated log file of an instance; generation 1 is the newest.
fn rotated_log_path(dir: &Path, restart_count: u32, generation: usize) -> PathBuf {
    dir.join(format!("{restart_count}.log.{generation}"))
}

/// Splits a log file name into (restart count, generation), generation 0 being the current
/// file. Only names this module writes count ("01.log" or "1.log.gz" do not).
fn parse_log_file_name(name: &str) -> Option<(u32, usize)> {
    let (count_text, rest) = name.split_once(".log")?;
    let restart_count: u32 = count_text.parse().ok()?;
    if count_text != restart_count.to_string() {
        return None;
    }
    if rest.is_empty() {
        return Some((restart_count, 0));
    }
    let generation_text = rest.strip_prefix('.')?;
    let generation: usize = generation_text.parse().ok()?;
    (generation > 0 && generation_text == generation.to_string())
        .then_some((restart_count, generation))
}

/// Restart counts that have log files in `dir`, ascending; empty if `dir` does not exist.
pub fn instances(dir: &Path) -> io::Result<Vec<u32>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some((restart_count, _)) = entry.file_name().to_str().and_then(parse_log_file_name) {
            found.push(restart_count);
        }
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

/// The newest instance before `current` that has logs, for `kubectl logs --previous`.
pub fn previous_instance(dir: &Path, current: u32) -> io::Result<Option<u32>> {
    Ok(instances(dir)?.into_iter().rev().find(|&n| n < current))
}

/// Generations of one instance's log files present in `dir`, newest (0 = current) first.
fn generations(dir: &Path, restart_count: u32) -> io::Result<Vec<usize>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some((owner, generation)) = entry.file_name().to_str().and_then(parse_log_file_name)
            && owner == restart_count
        {
            found.push(generation);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn generation_path(dir: &Path, restart_count: u32, generation: usize) -> PathBuf {
    if generation == 0 {
        log_path(dir, restart_count)
    } else {
        rotated_log_path(dir, restart_count, generation)
    }
}

/// One parsed log line.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    timestamp: jiff::Timestamp,
    stream: LogStream,
    partial: bool,
    content: &'a [u8],
}

/// Appends one record, newline included.
fn format_record(
    out: &mut Vec<u8>,
    timestamp: jiff::Timestamp,
    stream: LogStream,
    partial: bool,
    content: &[u8],
) {
    use std::io::Write as _;
    // jiff's Display is RFC 3339 with nanoseconds and trailing zeros trimmed, like Go's
    // RFC3339Nano that containerd and kubelet use.
    let _ = write!(
        out,
        "{timestamp} {} {} ",
        stream.as_str(),
        if partial { "P" } else { "F" }
    );
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Parses one line (without its newline); `None` if it is not a CRI log record.
fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let timestamp = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let stream = LogStream::parse(fields.next()?)?;
    // Tags are colon-separated; the first says full or partial.
    let tag = fields.next()?;
    let partial = match tag.split(|&b| b == b':').next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    let content = fields.next().unwrap_or_default();
    Some(Record {
        timestamp,
        stream,
        partial,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let timestamp: jiff::Timestamp = "2024-05-01T10:00:00.120Z".parse().unwrap();
        let mut line = Vec::new();
        format_record(&mut line, timestamp, LogStream::Stderr, true, b"a b  c");
        assert_eq!(line, b"2024-05-01T10:00:00.12Z stderr P a b  c\n");
        let parsed = parse_record(&line[..line.len() - 1]).unwrap();
        assert_eq!(
            parsed,
            Record {
                timestamp,
                stream: LogStream::Stderr,
                partial: true,
                content: b"a b  c",
            }
        );
    }

    #[test]
    fn malformed_records_are_rejected() {
        for line in [
            &b""[..],
            b"garbage",
            b"2024-05-01T10:00:00Z",
            b"2024-05-01T10:00:00Z stdout",
            b"2024-05-01T10:00:00Z stdin F x",
            b"2024-05-01T10:00:00Z stdout X x",
            b"yesterday stdout F x",
            b"\xff\xfe stdout F x",
        ] {
            assert!(
                parse_record(line).is_none(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let empty = parse_record(b"2024-05-01T10:00:00Z stdout F").unwrap();
        assert_eq!(empty.content, b"");
        let tagged = parse_record(b"2024-05-01T10:00:00+02:00 stdout P:extra x").unwrap();
        assert!(tagged.partial);
        assert_eq!(tagged.timestamp.to_string(), "2024-05-01T08:00:00Z");
    }

    #[test]
    fn log_file_names() {
        assert_eq!(parse_log_file_name("0.log"), Some((0, 0)));
        assert_eq!(parse_log_file_name("12.log.3"), Some((12, 3)));
        for name in [
            "x.log", "1.log.0", "1.log.", "1.logs", "01.log", "+1.log", "1.log.03", "1.log.gz",
        ] {
            assert_eq!(parse_log_file_name(name), None, "{name}");
        }
    }
}
