//! Which slot each backend of a frontend takes: stable across syncs (see the module doc of
//! [`super`]).
use std::collections::VecDeque;

use rustc_hash::FxHashSet as HashSet;

/// New slot contents for a set that holds `current` and should hold `want` (see module doc).
pub fn assign_slots(current: &[u32], want: &[u32]) -> Vec<u32> {
    // Fast path (the common case of a resync): the same backends, no holes or duplicates.
    if current.len() == want.len()
        && current.len() <= 32
        && current.iter().all(|id| *id != 0 && want.contains(id))
        && want.iter().all(|id| current.contains(id))
        && current
            .iter()
            .enumerate()
            .all(|(i, id)| !current[..i].contains(id))
    {
        return current.to_vec();
    }
    let want_set: HashSet<u32> = want.iter().copied().collect();
    let mut seen = HashSet::default();
    let mut out: Vec<u32> = current
        .iter()
        .map(|&id| {
            if id != 0 && want_set.contains(&id) && seen.insert(id) {
                id
            } else {
                0
            }
        })
        .collect();
    let mut fresh: VecDeque<u32> = want
        .iter()
        .copied()
        .filter(|id| !seen.contains(id))
        .collect();
    {
        let mut dedup = HashSet::default();
        fresh.retain(|id| dedup.insert(*id));
    }
    for slot in out.iter_mut() {
        if *slot == 0 {
            match fresh.pop_front() {
                Some(id) => *slot = id,
                None => break,
            }
        }
    }
    out.extend(fresh);
    loop {
        while out.last() == Some(&0) {
            out.pop();
        }
        match out.iter().position(|&id| id == 0) {
            Some(hole) => {
                let last = out.pop().expect("non-empty");
                out[hole] = last;
            }
            None => break,
        }
    }
    out
}
