//! Reading an instance's log files back as `kubectl logs` output.
//!
//! The reading runs on a dedicated thread with blocking std I/O and hands chunks to the
//! returned stream through a small channel. Following a log is polling a file, which would
//! otherwise hold a tokio blocking-pool thread just the same; a plain thread also makes
//! `read_logs` callable outside a runtime.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ByteStream, LogOptions, Record, generation_path, generations, log_path, parse_record};

const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Output is handed over in chunks of about this size (or whatever is there when caught up).
const CHUNK_BYTES: usize = 32 * 1024;
const CHANNEL_CHUNKS: usize = 8;
/// A line longer than any record we write is garbage; it is dropped rather than buffered.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Streams the log of one container instance as `kubectl logs` shows it: `P` records joined
/// without newline, `F` records ending in "\n", each line prefixed by "<timestamp> " with
/// `opts.timestamps`.
///
/// Rotated files are read oldest first. `tail_lines` counts lines from the end across rotated
/// files, `since_*` filter by record timestamp, and `limit_bytes` ends the stream after that
/// many bytes. With `follow`, the stream then keeps polling (every ~100 ms, following
/// rotation) and ends once `still_running()` has returned false and everything written
/// before that has been sent; `still_running` should only turn false once the writer is done.
/// Malformed lines are skipped.
///
/// If the instance has no log file, the stream yields one `NotFound` error (with `follow`,
/// only once `still_running()` is false and the file still has not appeared).
/// `opts.previous` is not interpreted here: `restart_count` selects the instance.
pub fn read_logs(
    dir: &Path,
    restart_count: u32,
    opts: &LogOptions,
    still_running: Box<dyn Fn() -> bool + Send + Sync>,
) -> ByteStream {
    let (sender, mut receiver) = mpsc::channel(CHANNEL_CHUNKS);
    let request = Request {
        dir: dir.to_path_buf(),
        restart_count,
        follow: opts.follow,
        tail_lines: opts
            .tail_lines
            .and_then(|lines| usize::try_from(lines).ok()),
        since: since(opts),
        timestamps: opts.timestamps,
        still_running,
    };
    let limit = opts
        .limit_bytes
        .and_then(|limit| usize::try_from(limit).ok());
    let spawned = std::thread::Builder::new()
        .name("log-reader".into())
        .spawn(move || {
            let mut output = Output::new(sender, limit);
            match request.run(&mut output) {
                Ok(()) | Err(Halt::Done) => {}
                Err(Halt::Failed(error)) => output.fail(error),
            }
        });
    match spawned {
        Ok(_) => Box::pin(futures::stream::poll_fn(move |context| {
            receiver.poll_recv(context)
        })),
        Err(error) => Box::pin(futures::stream::once(async move { Err(error) })),
    }
}

/// The earliest record time wanted, from `since_time` and `since_seconds` (the later wins).
fn since(opts: &LogOptions) -> Option<jiff::Timestamp> {
    let relative = opts.since_seconds.map(|seconds| {
        jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(jiff::Timestamp::MIN)
    });
    match (opts.since_time, relative) {
        (Some(absolute), Some(relative)) => Some(absolute.max(relative)),
        (absolute, relative) => absolute.or(relative),
    }
}

/// Why reading stopped early.
enum Halt {
    /// The byte limit was reached or nobody is listening any more.
    Done,
    Failed(io::Error),
}

impl From<io::Error> for Halt {
    fn from(error: io::Error) -> Halt {
        Halt::Failed(error)
    }
}

type Step = Result<(), Halt>;

struct Request {
    dir: PathBuf,
    restart_count: u32,
    follow: bool,
    tail_lines: Option<usize>,
    since: Option<jiff::Timestamp>,
    timestamps: bool,
    still_running: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Request {
    fn run(&self, output: &mut Output) -> Step {
        if output.remaining == Some(0) {
            return Err(Halt::Done);
        }
        let mut files = self.wait_for_files(output)?;
        let mut lines = Lines {
            renderer: Renderer {
                timestamps: self.timestamps,
                since: self.since,
                at_line_start: true,
            },
            tail: self.tail_lines.map(TailBuffer::new),
            rendered: Vec::new(),
        };

        // Everything already written.
        let Some(mut followed) = files.pop() else {
            return Ok(());
        };
        for mut older in files {
            older.read_to_end(&mut lines, output)?;
        }
        followed.read_available(&mut lines, output)?;
        if !self.follow {
            followed.finish(&mut lines, output)?;
        }
        if let Some(tail) = lines.tail.take() {
            for line in tail.lines {
                output.push(&line)?;
            }
            output.push(&tail.current)?;
        }
        output.flush()?;
        if !self.follow {
            return Ok(());
        }

        // Whatever comes next.
        loop {
            if output.is_closed() {
                return Err(Halt::Done);
            }
            // Asked before reading, so that everything written before the writer stopped
            // is read once more below.
            let running = (self.still_running)();
            followed.read_available(&mut lines, output)?;
            if let Some(mut newer) = self.rotated_away(&followed)?
                && let Some(newest) = newer.pop()
            {
                followed.read_to_end(&mut lines, output)?;
                for mut file in newer {
                    file.read_to_end(&mut lines, output)?;
                }
                followed = newest;
                followed.read_available(&mut lines, output)?;
            }
            if !running {
                followed.finish(&mut lines, output)?;
                return output.flush();
            }
            output.flush()?;
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Opens the instance's files oldest first; with `follow`, waits for a first file while
    /// the container runs.
    fn wait_for_files(&self, output: &Output) -> Result<Vec<LogFile>, Halt> {
        loop {
            let running = self.follow && (self.still_running)();
            let files = self.open_files(None)?;
            if !files.is_empty() {
                return Ok(files);
            }
            if !running {
                return Err(Halt::Failed(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no log file for instance {} in {}",
                        self.restart_count,
                        self.dir.display()
                    ),
                )));
            }
            if output.is_closed() {
                return Err(Halt::Done);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The instance's files oldest first, or only those newer than `newer_than` (all of them
    /// if that file is gone). Files renamed during the listing are opened once.
    fn open_files(&self, newer_than: Option<FileIdentity>) -> io::Result<Vec<LogFile>> {
        let generations = match generations(&self.dir, self.restart_count) {
            Ok(generations) => generations,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let mut newest_first = Vec::new();
        let mut seen = HashSet::new();
        for generation in generations {
            let path = generation_path(&self.dir, self.restart_count, generation);
            let Some(file) = LogFile::open(&path)? else {
                continue;
            };
            if Some(file.identity) == newer_than {
                break;
            }
            if seen.insert(file.identity) {
                newest_first.push(file);
            }
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// If the writer rotated `followed` away, the files written since, oldest first.
    fn rotated_away(&self, followed: &LogFile) -> io::Result<Option<Vec<LogFile>>> {
        let current = log_path(&self.dir, self.restart_count);
        match std::fs::metadata(&current) {
            Ok(metadata) if FileIdentity::of(&metadata) == followed.identity => Ok(None),
            Ok(_) => self.open_files(Some(followed.identity)).map(Some),
            // Between the writer's rename and its creating the new file.
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    fn of(metadata: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

/// An open log file and the start of a line not yet terminated.
struct LogFile {
    file: File,
    identity: FileIdentity,
    unterminated: Vec<u8>,
    /// Set after dropping an overlong line, until its end.
    skipping_line: bool,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<Option<LogFile>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let identity = FileIdentity::of(&file.metadata()?);
        Ok(Some(LogFile {
            file,
            identity,
            unterminated: Vec::new(),
            skipping_line: false,
        }))
    }

    /// Passes every complete line written so far to `lines`.
    fn read_available(&mut self, lines: &mut Lines, output: &mut Output) -> Step {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match self.file.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            };
            let mut chunk = &buffer[..read];
            while let Some(newline) = chunk.iter().position(|&b| b == b'\n') {
                let (line, rest) = (&chunk[..newline], &chunk[newline + 1..]);
                chunk = rest;
                if self.skipping_line {
                    self.skipping_line = false;
                } else if self.unterminated.is_empty() {
                    lines.line(line, output)?;
                } else {
                    self.unterminated.extend_from_slice(line);
                    let whole = std::mem::take(&mut self.unterminated);
                    lines.line(&whole, output)?;
                }
            }
            if !self.skipping_line {
                self.unterminated.extend_from_slice(chunk);
                if self.unterminated.len() > MAX_LINE_BYTES {
                    self.unterminated.clear();
                    self.skipping_line = true;
                }
            }
        }
    }

    /// Reads a file that will not grow any more, including a last line without newline.
    fn read_to_end(&mut self, lines: &mut Lines, output: &mut Output) -> Step {
        self.read_available(lines, output)?;
        self.finish(lines, output)
    }

    /// A last line without newline: only a writer that died mid-record leaves one.
    fn finish(&mut self, lines: &mut Lines, output: &mut Output) -> Step {
        let last = std::mem::take(&mut self.unterminated);
        if last.is_empty() {
            Ok(())
        } else {
            lines.line(&last, output)
        }
    }
}

/// Turns log lines into output, through the tail buffer while reading what already exists.
struct Lines {
    renderer: Renderer,
    tail: Option<TailBuffer>,
    rendered: Vec<u8>,
}

impl Lines {
    fn line(&mut self, line: &[u8], output: &mut Output) -> Step {
        let Some(record) = parse_record(line) else {
            let start = &line[..line.len().min(120)];
            tracing::debug!(line = %String::from_utf8_lossy(start), "skipping malformed log line");
            return Ok(());
        };
        self.rendered.clear();
        let Some(line_ended) = self.renderer.render(&record, &mut self.rendered) else {
            return Ok(());
        };
        match &mut self.tail {
            Some(tail) => {
                tail.add(&self.rendered, line_ended);
                Ok(())
            }
            None => output.push(&self.rendered),
        }
    }
}

/// Formats records as `kubectl logs` shows them.
struct Renderer {
    timestamps: bool,
    since: Option<jiff::Timestamp>,
    /// Whether the next record starts a line (and so gets the timestamp prefix).
    at_line_start: bool,
}

impl Renderer {
    /// Appends the record's output; `None` if it is filtered out, else whether a line ended.
    fn render(&mut self, record: &Record<'_>, out: &mut Vec<u8>) -> Option<bool> {
        if self.since.is_some_and(|since| record.timestamp < since) {
            return None;
        }
        if self.timestamps && self.at_line_start {
            use std::io::Write as _;
            let _ = write!(out, "{} ", record.timestamp);
        }
        out.extend_from_slice(record.content);
        if !record.partial {
            out.push(b'\n');
        }
        self.at_line_start = !record.partial;
        Some(!record.partial)
    }
}

/// The last `limit` lines seen; a line is its records up to and including an `F` record.
struct TailBuffer {
    limit: usize,
    lines: VecDeque<Vec<u8>>,
    /// The line being assembled from `P` records.
    current: Vec<u8>,
}

impl TailBuffer {
    fn new(limit: usize) -> TailBuffer {
        TailBuffer {
            limit,
            lines: VecDeque::new(),
            current: Vec::new(),
        }
    }

    fn add(&mut self, rendered: &[u8], line_ended: bool) {
        self.current.extend_from_slice(rendered);
        if line_ended {
            self.lines.push_back(std::mem::take(&mut self.current));
            self.trim(0);
        } else {
            // An unfinished line counts as the last line.
            self.trim(1);
        }
    }

    fn trim(&mut self, unfinished: usize) {
        while self.lines.len() + unfinished > self.limit && !self.lines.is_empty() {
            self.lines.pop_front();
        }
        if self.limit == 0 {
            self.current.clear();
        }
    }
}

/// The receiving end of the stream, with the byte limit.
struct Output {
    sender: mpsc::Sender<io::Result<Bytes>>,
    chunk: Vec<u8>,
    remaining: Option<usize>,
}

impl Output {
    fn new(sender: mpsc::Sender<io::Result<Bytes>>, limit: Option<usize>) -> Output {
        Output {
            sender,
            chunk: Vec::with_capacity(CHUNK_BYTES),
            remaining: limit,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Step {
        let bytes = match self.remaining {
            Some(remaining) => &bytes[..bytes.len().min(remaining)],
            None => bytes,
        };
        self.chunk.extend_from_slice(bytes);
        if let Some(remaining) = &mut self.remaining {
            *remaining -= bytes.len();
            if *remaining == 0 {
                self.flush()?;
                return Err(Halt::Done);
            }
        }
        if self.chunk.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Step {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.chunk,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| Halt::Done)
    }

    fn fail(&mut self, error: io::Error) {
        if self.flush().is_ok() {
            let _ = self.sender.blocking_send(Err(error));
        }
    }

    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures::StreamExt;

    use super::super::{LogStream, LogWriter, format_record, instances, previous_instance};
    use super::*;

    fn always_running() -> Box<dyn Fn() -> bool + Send + Sync> {
        Box::new(|| true)
    }

    async fn collect(mut stream: ByteStream) -> io::Result<String> {
        let mut all = Vec::new();
        let deadline = Duration::from_secs(20);
        while let Some(chunk) = tokio::time::timeout(deadline, stream.next())
            .await
            .expect("log stream stalled")
        {
            all.extend_from_slice(&chunk?);
        }
        Ok(String::from_utf8(all).unwrap())
    }

    async fn read(dir: &Path, restart_count: u32, opts: LogOptions) -> String {
        collect(read_logs(dir, restart_count, &opts, always_running()))
            .await
            .unwrap()
    }

    fn write_lines(writer: &mut LogWriter, range: std::ops::Range<u32>) {
        for number in range {
            let stream = if number % 2 == 0 {
                LogStream::Stdout
            } else {
                LogStream::Stderr
            };
            writer
                .write(stream, format!("line {number:03}\n").as_bytes())
                .unwrap();
        }
    }

    fn expected_lines(range: std::ops::Range<u32>) -> String {
        range.map(|number| format!("line {number:03}\n")).collect()
    }

    /// Writes records with chosen timestamps, as an older writer would have.
    fn write_records(path: &Path, records: &[(&str, LogStream, bool, &str)]) {
        let mut bytes = Vec::new();
        for (timestamp, stream, partial, content) in records {
            format_record(
                &mut bytes,
                timestamp.parse().unwrap(),
                *stream,
                *partial,
                content.as_bytes(),
            );
        }
        fs::write(path, bytes).unwrap();
    }

    #[tokio::test]
    async fn joins_partial_records_and_shows_both_streams() {
        let temp = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(temp.path(), 0, 0, 1).unwrap();
        writer.write(LogStream::Stdout, b"hel").unwrap();
        writer.write(LogStream::Stderr, b"oops\n").unwrap();
        writer.write(LogStream::Stdout, b"lo\nworld").unwrap();
        let long = "y".repeat(40_000);
        writer
            .write(LogStream::Stderr, format!("{long}\n").as_bytes())
            .unwrap();
        writer.flush_partial().unwrap();
        let output = read(temp.path(), 0, LogOptions::default()).await;
        assert_eq!(output, format!("oops\nhello\n{long}\nworld"));
    }

    #[tokio::test]
    async fn reads_rotated_files_oldest_first_and_tails_across_them() {
        let temp = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(temp.path(), 1, 150, 4).unwrap();
        write_lines(&mut writer, 0..10);
        // Three records per file: all ten lines still fit into the four files allowed.
        assert!(temp.path().join("1.log.3").exists());
        assert!(!temp.path().join("1.log.4").exists());

        let all = read(temp.path(), 1, LogOptions::default()).await;
        assert_eq!(all, expected_lines(0..10));

        for (tail, expected) in [(3, 7..10), (7, 3..10), (100, 0..10), (-1, 0..10), (0, 0..0)] {
            let opts = LogOptions {
                tail_lines: Some(tail),
                ..LogOptions::default()
            };
            assert_eq!(
                read(temp.path(), 1, opts).await,
                expected_lines(expected),
                "tail {tail}"
            );
        }
    }

    #[tokio::test]
    async fn tail_counts_lines_not_records() {
        let temp = tempfile::tempdir().unwrap();
        use LogStream::Stdout;
        write_records(
            &log_path(temp.path(), 0),
            &[
                ("2024-01-01T00:00:01Z", Stdout, false, "one"),
                ("2024-01-01T00:00:02Z", Stdout, true, "two "),
                ("2024-01-01T00:00:03Z", Stdout, true, "in "),
                ("2024-01-01T00:00:04Z", Stdout, false, "pieces"),
                ("2024-01-01T00:00:05Z", Stdout, true, "unfinished"),
            ],
        );
        let opts = LogOptions {
            tail_lines: Some(2),
            timestamps: true,
            ..LogOptions::default()
        };
        assert_eq!(
            read(temp.path(), 0, opts).await,
            "2024-01-01T00:00:02Z two in pieces\n2024-01-01T00:00:05Z unfinished"
        );
    }

    #[tokio::test]
    async fn since_and_timestamps() {
        let temp = tempfile::tempdir().unwrap();
        use LogStream::{Stderr, Stdout};
        let recent = jiff::Timestamp::now().to_string();
        write_records(
            &rotated_path(temp.path(), 0, 1),
            &[("2020-01-01T00:00:00.5Z", Stdout, false, "ancient")],
        );
        write_records(
            &log_path(temp.path(), 0),
            &[
                ("2024-01-01T00:00:00Z", Stdout, false, "old"),
                ("2024-06-01T12:00:00.000000001Z", Stderr, false, "newer"),
                (&recent, Stdout, false, "recent"),
            ],
        );
        let since_time = LogOptions {
            since_time: Some("2024-03-01T00:00:00Z".parse().unwrap()),
            timestamps: true,
            ..LogOptions::default()
        };
        assert_eq!(
            read(temp.path(), 0, since_time).await,
            format!("2024-06-01T12:00:00.000000001Z newer\n{recent} recent\n")
        );
        let since_seconds = LogOptions {
            since_seconds: Some(3600),
            ..LogOptions::default()
        };
        assert_eq!(read(temp.path(), 0, since_seconds).await, "recent\n");
        let everything = LogOptions {
            timestamps: true,
            ..LogOptions::default()
        };
        assert!(
            read(temp.path(), 0, everything)
                .await
                .starts_with("2020-01-01T00:00:00.5Z ancient\n2024-01-01T00:00:00Z old\n")
        );
    }

    fn rotated_path(dir: &Path, restart_count: u32, generation: usize) -> PathBuf {
        generation_path(dir, restart_count, generation)
    }

    #[tokio::test]
    async fn limit_bytes_cuts_the_output() {
        let temp = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(temp.path(), 0, 0, 1).unwrap();
        write_lines(&mut writer, 0..100);
        let opts = LogOptions {
            limit_bytes: Some(13),
            ..LogOptions::default()
        };
        assert_eq!(read(temp.path(), 0, opts).await, "line 000\nline");
        // Also ends a follow.
        let opts = LogOptions {
            limit_bytes: Some(9),
            follow: true,
            ..LogOptions::default()
        };
        assert_eq!(read(temp.path(), 0, opts).await, "line 000\n");
    }

    #[tokio::test]
    async fn malformed_lines_are_skipped() {
        let temp = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"2024-01-01T00:00:00Z stdout F good one\n");
        bytes.extend_from_slice(b"complete garbage\n\n\xff\xff\xff\n");
        bytes.extend_from_slice(b"2024-01-01T00:00:00Z stdin F wrong stream\n");
        bytes.extend_from_slice(b"2024-01-01T00:00:01Z stderr F good two\n");
        bytes.extend_from_slice(&vec![b'z'; MAX_LINE_BYTES + 10]);
        bytes.extend_from_slice(b"\n2024-01-01T00:00:02Z stdout F good three\n");
        fs::write(log_path(temp.path(), 0), bytes).unwrap();
        assert_eq!(
            read(temp.path(), 0, LogOptions::default()).await,
            "good one\ngood two\ngood three\n"
        );
    }

    #[tokio::test]
    async fn missing_instance_is_not_found() {
        let temp = tempfile::tempdir().unwrap();
        let result = collect(read_logs(
            &temp.path().join("nope"),
            0,
            &LogOptions::default(),
            always_running(),
        ))
        .await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn instances_and_previous() {
        let temp = tempfile::tempdir().unwrap();
        assert!(instances(&temp.path().join("nope")).unwrap().is_empty());
        for restart_count in [3, 0, 1] {
            let mut writer = LogWriter::create(temp.path(), restart_count, 60, 3).unwrap();
            write_lines(&mut writer, 0..3);
        }
        fs::write(temp.path().join("7.log.1"), b"").unwrap();
        fs::write(temp.path().join("notes.txt"), b"").unwrap();
        fs::write(temp.path().join("9.log.gz"), b"").unwrap();
        assert!(temp.path().join("3.log.1").exists());
        assert_eq!(instances(temp.path()).unwrap(), [0, 1, 3, 7]);
        assert_eq!(previous_instance(temp.path(), 3).unwrap(), Some(1));
        assert_eq!(previous_instance(temp.path(), 0).unwrap(), None);
    }

    #[tokio::test]
    async fn follow_picks_up_new_lines_and_rotation_then_ends() {
        let temp = tempfile::tempdir().unwrap();
        // Small files, but enough of them that none is dropped before the reader gets to it.
        let mut writer = LogWriter::create(temp.path(), 0, 120, 50).unwrap();
        write_lines(&mut writer, 0..3);
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let opts = LogOptions {
            follow: true,
            tail_lines: Some(2),
            ..LogOptions::default()
        };
        let mut stream = read_logs(
            temp.path(),
            0,
            &opts,
            Box::new(move || flag.load(Ordering::SeqCst)),
        );

        let mut seen = String::new();
        while !seen.ends_with("line 002\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(seen, expected_lines(1..3));

        // Enough to rotate several times, partly between two polls.
        write_lines(&mut writer, 3..8);
        tokio::time::sleep(Duration::from_millis(250)).await;
        write_lines(&mut writer, 8..30);
        writer.write(LogStream::Stdout, b"last words").unwrap();
        writer.flush_partial().unwrap();
        running.store(false, Ordering::SeqCst);

        let rest = collect(stream).await.unwrap();
        assert_eq!(seen + &rest, expected_lines(1..30) + "last words");
    }

    #[tokio::test]
    async fn follow_waits_for_the_file_and_stops_when_dropped() {
        let temp = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        let mut stream = read_logs(temp.path(), 5, &opts, always_running());
        let mut writer = LogWriter::create(temp.path(), 5, 0, 1).unwrap();
        writer.write(LogStream::Stdout, b"hello\n").unwrap();
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&chunk[..], b"hello\n");
        // Dropping the stream must end the reader thread; nothing to observe but no hang.
        drop(stream);
    }

    #[test]
    fn tail_buffer_keeps_the_last_lines() {
        let mut tail = TailBuffer::new(2);
        for line in ["a\n", "b\n", "c\n"] {
            tail.add(line.as_bytes(), true);
        }
        tail.add(b"d", false);
        assert_eq!(tail.lines, [b"c\n".to_vec()]);
        assert_eq!(tail.current, b"d");
        let mut none = TailBuffer::new(0);
        none.add(b"x", false);
        none.add(b"y\n", true);
        assert!(none.lines.is_empty() && none.current.is_empty());
    }

    #[test]
    fn read_logs_works_outside_a_runtime() {
        let temp = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(temp.path(), 0, 0, 1).unwrap();
        write_lines(&mut writer, 0..2);
        let stream = read_logs(temp.path(), 0, &LogOptions::default(), always_running());
        let output: Vec<u8> =
            futures::executor::block_on(stream.map(|chunk| chunk.unwrap().to_vec()).concat());
        assert_eq!(&output[..], expected_lines(0..2).as_bytes());
    }
}
