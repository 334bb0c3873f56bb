//! Encoded answers by request. A query asked again — the same bytes after its id: flags,
//! question (in the same letter case) and EDNS record — is answered by copying the bytes of
//! the first answer under the new id, without parsing or encoding a message: that is most of
//! a cluster's DNS traffic (every pod asking for the same few Services), and what keeps the
//! server's work per query below dnsmasq's.
//!
//! A cache belongs to one zone snapshot, so a zone answer is kept exactly as long as the
//! zone that gave it. An answer that came from upstream is kept at most [`FORWARDED_FOR`]:
//! the forwarder counts TTLs down in whole seconds, so a copy is never more than that behind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an encoded upstream answer is reused.
pub const FORWARDED_FOR: Duration = Duration::from_secs(1);
/// Beyond this many, the cache starts over (questions are few; a flood of random names must
/// not grow it without bound).
const MAX_ENTRIES: usize = 10_000;

/// How long an answer may be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// For as long as the zone it came from.
    WithZone,
    /// For [`FORWARDED_FOR`] (an answer with upstream records).
    Briefly,
    /// Not at all (a failure, which the next query should retry).
    Never,
}

struct Entry {
    bytes: Vec<u8>,
    until: Option<Instant>,
}

#[derive(Default)]
pub struct AnswerCache {
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
}

impl AnswerCache {
    /// The answer to `request` (a whole message, at least a header long) if the same query
    /// was answered over the same transport before and the answer is still good.
    pub fn lookup(&self, over_udp: bool, request: &[u8]) -> Option<Vec<u8>> {
        let key = key(over_udp, request);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(&key)?;
        if entry.until.is_some_and(|t| Instant::now() >= t) {
            entries.remove(&key);
            return None;
        }
        let mut bytes = entry.bytes.clone();
        bytes[..2].copy_from_slice(&request[..2]);
        Some(bytes)
    }

    /// Keep `answer` (at least a header long) to `request` as `keep` says.
    pub fn remember(&self, over_udp: bool, request: &[u8], answer: &[u8], keep: Keep) {
        let until = match keep {
            Keep::WithZone => None,
            Keep::Briefly => Some(Instant::now() + FORWARDED_FOR),
            Keep::Never => return,
        };
        if request.len() < 12 || answer.len() < 12 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            key(over_udp, request),
            Entry {
                bytes: answer.to_vec(),
                until,
            },
        );
    }
}

/// The request without its id, after a byte for the transport (a UDP answer may be truncated
/// where the TCP one is not).
fn key(over_udp: bool, request: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(request.len() - 1);
    key.push(u8::from(over_udp));
    key.extend_from_slice(&request[2..]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u16, name: &[u8]) -> Vec<u8> {
        let mut r = id.to_be_bytes().to_vec();
        r.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(name);
        r
    }

    #[test]
    fn a_repeated_query_gets_the_first_answer_under_its_own_id() {
        let cache = AnswerCache::default();
        let first = request(7, b"\x05kubia\0\0\x01\0\x01");
        let mut answer = first.clone();
        answer[2] |= 0x80;
        answer.extend_from_slice(b"answer");
        cache.remember(true, &first, &answer, Keep::WithZone);
        let hit = cache
            .lookup(true, &request(0xbeef, b"\x05kubia\0\0\x01\0\x01"))
            .unwrap();
        assert_eq!(&hit[..2], &[0xbe, 0xef]);
        assert_eq!(&hit[2..], &answer[2..]);
        // Another transport, another letter case or another name: not the same query.
        assert!(cache.lookup(false, &first).is_none());
        assert!(
            cache
                .lookup(true, &request(7, b"\x05KUBIA\0\0\x01\0\x01"))
                .is_none()
        );
        assert!(
            cache
                .lookup(true, &request(7, b"\x05kubib\0\0\x01\0\x01"))
                .is_none()
        );
    }

    #[test]
    fn failures_are_not_kept_and_upstream_answers_only_briefly() {
        let cache = AnswerCache::default();
        let q = request(1, b"\x03www\0\0\x01\0\x01");
        cache.remember(true, &q, &q, Keep::Never);
        assert!(cache.lookup(true, &q).is_none());
        cache.remember(true, &q, &q, Keep::Briefly);
        assert!(cache.lookup(true, &q).is_some());
        cache
            .entries
            .lock()
            .unwrap()
            .values_mut()
            .for_each(|e| e.until = Some(Instant::now()));
        assert!(cache.lookup(true, &q).is_none());
        assert!(cache.entries.lock().unwrap().is_empty());
    }
}
