//! The ids the reconciler hands out for the LB maps (as Cilium's `id_allocator.go`): revNAT ids
//! (which also name a frontend's slot set) and backend ids.
//!
//! Ids come from a moving cursor, so an id just released is not handed out again at once: a
//! socket or conntrack entry that still carries it (the programs' LRU maps) cannot be mistaken
//! for the new owner's. 0 is never an id (the programs read it as "none").
use rustc_hash::FxHashSet;

/// The ids in use, and where the search for the next free one starts.
#[derive(Debug, Clone, Default)]
pub struct IdAllocator {
    in_use: FxHashSet<u32>,
    next: u32,
}

impl IdAllocator {
    /// The allocator of a restarted agent: `in_use` are the ids the pinned maps hold; new ids
    /// continue after the highest of them.
    pub fn restore(in_use: impl IntoIterator<Item = u32>) -> Self {
        let in_use: FxHashSet<u32> = in_use.into_iter().collect();
        let next = in_use.iter().max().map_or(1, |m| m.wrapping_add(1).max(1));
        IdAllocator { in_use, next }
    }

    /// A free id, now in use: the first at or after the cursor (wrapping, skipping 0).
    pub fn allocate(&mut self) -> u32 {
        loop {
            let id = self.next;
            self.next = self.next.wrapping_add(1).max(1);
            if id != 0 && self.in_use.insert(id) {
                return id;
            }
        }
    }

    /// `id` is free again (a later [`IdAllocator::allocate`] reaches it once the cursor has
    /// gone round).
    pub fn release(&mut self, id: u32) {
        self.in_use.remove(&id);
    }

    /// The ids in use, in no particular order.
    pub fn in_use(&self) -> impl Iterator<Item = u32> + '_ {
        self.in_use.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_skip_those_in_use_and_zero_and_are_not_reused_at_once() {
        let mut ids = IdAllocator::default();
        assert_eq!(ids.allocate(), 1);
        assert_eq!(ids.allocate(), 2);
        ids.release(1);
        assert_eq!(ids.allocate(), 3, "a released id waits for the cursor");

        let mut restored = IdAllocator::restore([4, 7]);
        assert_eq!(restored.allocate(), 8);
        let mut wrapped = IdAllocator::restore([u32::MAX, 1]);
        assert_eq!(
            wrapped.allocate(),
            2,
            "past the top: wraps, skipping 0 and 1"
        );
    }
}
