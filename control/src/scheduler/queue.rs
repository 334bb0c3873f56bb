//! The scheduling queue: an active queue ordered by priority then arrival (FIFO), pods in
//! flight (being scheduled, bound or reported), and unschedulable pods waiting out their
//! back-off (1 s doubling to 10 s) or a cluster change that may make them fit.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Active,
    InFlight,
    Unschedulable { retry_at: Instant },
}

#[derive(Debug)]
pub struct Item {
    pub uid: String,
    pub state: State,
    pub attempts: u32,
    priority: i32,
    seq: u64,
    /// A cluster change happened while the pod was in flight: retry it at once if it fails.
    missed_move: bool,
    /// The pod's spec and labels when it last failed (a change of either retries it).
    pub fingerprint: u64,
}

#[derive(PartialEq, Eq)]
struct Entry {
    priority: i32,
    seq: Reverse<u64>,
    key: String,
}

impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.priority, self.seq).cmp(&(o.priority, o.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Entry>,
    items: HashMap<String, Item>,
    seq: u64,
}

impl Queue {
    pub fn get(&self, key: &str) -> Option<&Item> {
        self.items.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.items.keys()
    }

    fn activate(&mut self, key: &str) {
        if let Some(item) = self.items.get_mut(key) {
            self.seq += 1;
            item.seq = self.seq;
            item.state = State::Active;
            self.heap.push(Entry {
                priority: item.priority,
                seq: Reverse(self.seq),
                key: key.to_string(),
            });
        }
    }

    /// A pending pod seen (again). Returns whether the active queue grew.
    pub fn add(
        &mut self,
        key: &str,
        uid: &str,
        priority: i32,
        fingerprint: impl Fn() -> u64,
    ) -> bool {
        match self.items.get_mut(key) {
            Some(item) if item.uid == uid => {
                item.priority = priority;
                if matches!(item.state, State::Unschedulable { .. })
                    && item.fingerprint != fingerprint()
                {
                    // The pod changed (a toleration added, say): try again now.
                    self.activate(key);
                    return true;
                }
                false
            }
            _ => {
                self.items.insert(
                    key.to_string(),
                    Item {
                        uid: uid.to_string(),
                        state: State::Active,
                        attempts: 0,
                        priority,
                        seq: 0,
                        missed_move: false,
                        fingerprint: 0,
                    },
                );
                self.activate(key);
                true
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Item> {
        self.items.remove(key)
    }

    /// The next pod to schedule, now in flight.
    pub fn pop(&mut self) -> Option<(String, String)> {
        while let Some(e) = self.heap.pop() {
            if let Some(item) = self.items.get_mut(&e.key)
                && item.state == State::Active
                && item.seq == e.seq.0
            {
                item.state = State::InFlight;
                item.missed_move = false;
                return Some((e.key, item.uid.clone()));
            }
        }
        None
    }

    /// An attempt failed: back off (or retry at once if the cluster changed meanwhile).
    /// Returns whether the active queue grew.
    pub fn failed(&mut self, key: &str, uid: &str, fingerprint: u64, now: Instant) -> bool {
        let Some(item) = self.items.get_mut(key).filter(|i| i.uid == uid) else {
            return false;
        };
        item.attempts = item.attempts.saturating_add(1);
        item.fingerprint = fingerprint;
        if item.missed_move {
            self.activate(key);
            return true;
        }
        let backoff = INITIAL_BACKOFF
            .saturating_mul(1 << (item.attempts - 1).min(8))
            .min(MAX_BACKOFF);
        item.state = State::Unschedulable {
            retry_at: now + backoff,
        };
        false
    }

    /// Something changed that may let unschedulable pods fit: all of them back to the active
    /// queue. Returns whether any moved.
    pub fn move_all_to_active(&mut self) -> bool {
        let mut moving = Vec::new();
        for (key, item) in self.items.iter_mut() {
            match item.state {
                State::Unschedulable { .. } => moving.push(key.clone()),
                State::InFlight => item.missed_move = true,
                State::Active => {}
            }
        }
        let moved = !moving.is_empty();
        for key in moving {
            self.activate(&key);
        }
        moved
    }

    /// Pods whose back-off has passed back to the active queue. Returns whether any moved.
    pub fn flush_backoff(&mut self, now: Instant) -> bool {
        let due: Vec<String> = self
            .items
            .iter()
            .filter(
                |(_, i)| matches!(i.state, State::Unschedulable { retry_at } if retry_at <= now),
            )
            .map(|(k, _)| k.clone())
            .collect();
        let moved = !due.is_empty();
        for key in due {
            self.activate(&key);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_fifo_and_backoff() {
        let mut q = Queue::default();
        q.add("a", "1", 0, || 0);
        q.add("b", "2", 10, || 0);
        q.add("c", "3", 0, || 0);
        q.add("a", "1", 0, || 0); // no duplicate
        assert_eq!(q.pop().unwrap().0, "b");
        assert_eq!(q.pop().unwrap().0, "a");
        let now = Instant::now();
        assert!(!q.failed("a", "1", 7, now));
        assert_eq!(q.pop().unwrap().0, "c");
        assert!(q.pop().is_none());
        assert!(!q.flush_backoff(now + Duration::from_millis(500)));
        assert!(q.flush_backoff(now + Duration::from_secs(1)));
        assert_eq!(q.pop().unwrap().0, "a");
        q.failed("a", "1", 7, now);
        assert_eq!(
            q.get("a").unwrap().state,
            State::Unschedulable {
                retry_at: now + Duration::from_secs(2)
            }
        );
        // Unchanged pod stays; changed pod or cluster change moves it.
        assert!(!q.add("a", "1", 0, || 7));
        assert!(q.add("a", "1", 0, || 8));
        assert_eq!(q.pop().unwrap().0, "a");
        // A move while in flight makes the failure retry at once.
        assert!(!q.move_all_to_active());
        assert!(q.failed("a", "1", 8, now));
        for _ in 0..10 {
            q.pop();
            q.failed("a", "1", 8, now);
        }
        assert_eq!(
            q.get("a").unwrap().state,
            State::Unschedulable {
                retry_at: now + MAX_BACKOFF
            }
        );
        assert!(q.move_all_to_active());
        assert_eq!(q.pop().unwrap().0, "a");
    }
}
