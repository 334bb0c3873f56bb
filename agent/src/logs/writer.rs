//! Writing container output as CRI log records, rotating by size.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{LogStream, MAX_RECORD_CONTENT, format_record, generation_path, log_path};

/// Appends a container instance's stdout and stderr to `<dir>/<restart_count>.log`.
///
/// Uses blocking std I/O: it runs in the per-container shim, which has no async runtime.
/// Every call writes whole records, so a concurrent reader only ever sees complete lines
/// (plus, at worst, a torn last line it waits out).
pub struct LogWriter {
    dir: PathBuf,
    restart_count: u32,
    /// 0 means never rotate.
    max_size: u64,
    /// Files kept per instance, the current one included; at least 1.
    max_files: usize,
    file: File,
    /// Bytes in the current file.
    size: u64,
    /// Unterminated output per stream, waiting for its newline.
    pending: [Vec<u8>; 2],
    /// Records of one call, written together.
    batch: Vec<u8>,
}

impl LogWriter {
    /// Opens (appending) the log of instance `restart_count` in `dir`, creating `dir`.
    /// `max_size` 0 disables rotation; `max_files` counts the current file and is at least 1.
    pub fn create(
        dir: &Path,
        restart_count: u32,
        max_size: u64,
        max_files: usize,
    ) -> io::Result<LogWriter> {
        fs::create_dir_all(dir)?;
        let file = open_append(&log_path(dir, restart_count))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            restart_count,
            max_size,
            max_files: max_files.max(1),
            file,
            size,
            pending: [Vec::new(), Vec::new()],
            batch: Vec::new(),
        })
    }

    /// Records `data` read from `stream`: every complete line becomes an `F` record, lines
    /// longer than [`MAX_RECORD_CONTENT`] are cut into `P` records, and an unterminated rest
    /// waits for more data (or [`flush_partial`](Self::flush_partial)).
    pub fn write(&mut self, stream: LogStream, data: &[u8]) -> io::Result<()> {
        let timestamp = jiff::Timestamp::now();
        let mut pending = std::mem::take(&mut self.pending[stream_index(stream)]);
        pending.extend_from_slice(data);
        let mut start = 0;
        let result = loop {
            let rest = &pending[start..];
            // A newline right after a full-size piece still makes that piece a full line.
            let window = &rest[..rest.len().min(MAX_RECORD_CONTENT + 1)];
            let step = if let Some(newline) = window.iter().position(|&b| b == b'\n') {
                self.add_record(timestamp, stream, false, &rest[..newline])
                    .map(|()| newline + 1)
            } else if rest.len() > MAX_RECORD_CONTENT {
                self.add_record(timestamp, stream, true, &rest[..MAX_RECORD_CONTENT])
                    .map(|()| MAX_RECORD_CONTENT)
            } else {
                break Ok(());
            };
            match step {
                Ok(consumed) => start += consumed,
                Err(error) => break Err(error),
            }
        };
        pending.drain(..start);
        self.pending[stream_index(stream)] = pending;
        result?;
        self.write_batch()
    }

    /// Writes the unterminated output of both streams as `P` records; call on EOF.
    pub fn flush_partial(&mut self) -> io::Result<()> {
        let timestamp = jiff::Timestamp::now();
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream_index(stream)]);
            for piece in pending.chunks(MAX_RECORD_CONTENT) {
                self.add_record(timestamp, stream, true, piece)?;
            }
        }
        self.write_batch()
    }

    fn add_record(
        &mut self,
        timestamp: jiff::Timestamp,
        stream: LogStream,
        partial: bool,
        content: &[u8],
    ) -> io::Result<()> {
        let before = self.batch.len();
        format_record(&mut self.batch, timestamp, stream, partial, content);
        let record_len = (self.batch.len() - before) as u64;
        let already = self.size + before as u64;
        // Rotate before a record that would push the file past max_size, so files stay
        // within it (unless a single record is bigger, which can only go into a file alone).
        if self.max_size > 0 && already > 0 && already + record_len > self.max_size {
            let record = self.batch.split_off(before);
            self.write_batch()?;
            self.rotate()?;
            self.batch = record;
        }
        Ok(())
    }

    fn write_batch(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.batch);
        // Counted even on failure: part of it may be on disk, and retrying it would
        // duplicate lines.
        self.size += self.batch.len() as u64;
        self.batch.clear();
        result
    }

    /// `<n>.log` → `<n>.log.1` → … → `<n>.log.<max_files-1>`, dropping the oldest.
    fn rotate(&mut self) -> io::Result<()> {
        let current = log_path(&self.dir, self.restart_count);
        let oldest_kept = self.max_files - 1;
        if oldest_kept == 0 {
            remove_if_present(&current)?;
        } else {
            remove_if_present(&generation_path(&self.dir, self.restart_count, oldest_kept))?;
            for generation in (1..oldest_kept).rev() {
                rename_if_present(
                    &generation_path(&self.dir, self.restart_count, generation),
                    &generation_path(&self.dir, self.restart_count, generation + 1),
                )?;
            }
            fs::rename(&current, generation_path(&self.dir, self.restart_count, 1))?;
        }
        self.file = open_append(&current)?;
        self.size = 0;
        Ok(())
    }
}

impl Drop for LogWriter {
    /// Best effort, for a shim that exits without calling `flush_partial`.
    fn drop(&mut self) {
        let _ = self.flush_partial();
    }
}

fn stream_index(stream: LogStream) -> usize {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_record, rotated_log_path};
    use super::*;

    /// (stream, partial, content) of every record in a file.
    fn records(path: &Path) -> Vec<(LogStream, bool, Vec<u8>)> {
        let bytes = fs::read(path).unwrap();
        assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
        bytes
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                let record = parse_record(line).unwrap();
                (record.stream, record.partial, record.content.to_vec())
            })
            .collect()
    }

    #[test]
    fn interleaved_streams_and_partial_lines() {
        let temp = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(temp.path(), 0, 0, 1).unwrap();
        writer.write(LogStream::Stdout, b"out one\nout ").unwrap();
        writer.write(LogStream::Stderr, b"err one\n").unwrap();
        writer.write(LogStream::Stdout, b"two\n\nthree").unwrap();
        writer.write(LogStream::Stderr, b"no newline").unwrap();
        writer.flush_partial().unwrap();
        writer.flush_partial().unwrap();
        use LogStream::{Stderr, Stdout};
        assert_eq!(
            records(&log_path(temp.path(), 0)),
            vec![
                (Stdout, false, b"out one".to_vec()),
                (Stderr, false, b"err one".to_vec()),
                (Stdout, false, b"out two".to_vec()),
                (Stdout, false, b"".to_vec()),
                (Stdout, true, b"three".to_vec()),
                (Stderr, true, b"no newline".to_vec()),
            ]
        );
    }

    #[test]
    fn long_lines_are_split_into_partial_records() {
        let temp = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(temp.path(), 2, 0, 1).unwrap();
        let long: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        // Delivered in odd-sized chunks, as pipes do.
        let mut line = long.clone();
        line.push(b'\n');
        for chunk in line.chunks(7_777) {
            writer.write(LogStream::Stdout, chunk).unwrap();
        }
        let exact = vec![b'x'; MAX_RECORD_CONTENT];
        writer.write(LogStream::Stdout, &exact).unwrap();
        writer.write(LogStream::Stdout, b"\n").unwrap();
        drop(writer);

        let found = records(&log_path(temp.path(), 2));
        let shapes: Vec<(bool, usize)> = found.iter().map(|(_, p, c)| (*p, c.len())).collect();
        assert_eq!(
            shapes,
            [
                (true, 16_384),
                (true, 16_384),
                (false, 7_232),
                (false, 16_384)
            ]
        );
        let joined: Vec<u8> = found[..3].iter().flat_map(|(_, _, c)| c.clone()).collect();
        assert_eq!(joined, long);
    }

    #[test]
    fn rotation_keeps_max_files() {
        let temp = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(temp.path(), 0, 200, 3).unwrap();
        for number in 0..40 {
            writer
                .write(LogStream::Stdout, format!("line {number:02}\n").as_bytes())
                .unwrap();
        }
        let current = log_path(temp.path(), 0);
        let files = [
            rotated_log_path(temp.path(), 0, 2),
            rotated_log_path(temp.path(), 0, 1),
            current.clone(),
        ];
        for file in &files {
            let size = fs::metadata(file).unwrap().len();
            assert!(
                size > 0 && size <= 200,
                "{} has {size} bytes",
                file.display()
            );
        }
        assert!(!rotated_log_path(temp.path(), 0, 3).exists());
        // What is kept is the newest, contiguous stretch of lines, ending with the last.
        let kept: Vec<Vec<u8>> = files.iter().flat_map(|f| records(f)).map(|r| r.2).collect();
        let first: usize = String::from_utf8_lossy(&kept[0][5..]).parse().unwrap();
        let expected: Vec<Vec<u8>> = (first..40)
            .map(|n| format!("line {n:02}").into_bytes())
            .collect();
        assert_eq!(kept, expected);
        assert!(first > 0);
    }

    #[test]
    fn single_file_rotation_starts_over() {
        let temp = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::create(temp.path(), 0, 100, 1).unwrap();
        for _ in 0..10 {
            writer.write(LogStream::Stderr, b"0123456789\n").unwrap();
        }
        assert!(fs::metadata(log_path(temp.path(), 0)).unwrap().len() <= 100);
        assert!(!rotated_log_path(temp.path(), 0, 1).exists());
    }

    #[test]
    fn reopening_appends() {
        let temp = tempfile::tempdir().unwrap();
        LogWriter::create(temp.path(), 0, 0, 1)
            .unwrap()
            .write(LogStream::Stdout, b"first\n")
            .unwrap();
        LogWriter::create(temp.path(), 0, 0, 1)
            .unwrap()
            .write(LogStream::Stdout, b"second\n")
            .unwrap();
        assert_eq!(records(&log_path(temp.path(), 0)).len(), 2);
    }
}
