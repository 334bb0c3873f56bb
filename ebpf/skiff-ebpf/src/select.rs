//! Backend selection with session affinity, the one copy both the socket LB ([`crate::sock_lb`],
//! cgroup `connect4`/`sendmsg4`) and NodePort ([`crate::nodeport`], tc) use (Cilium's
//! `lb4_affinity_backend_id` + `lb4_select_backend_id`).
//!
//! With `sessionAffinity: ClientIP` a client keeps the backend it got last, as long as the
//! entry is *fresh* (used within the frontend's timeout) and the backend still serves the
//! frontend (its `skiff_aff_match` entry exists) and is still known (`skiff_backends`). An entry
//! that fails any of these is *stale*: it is removed at once — whether or not a new backend can
//! be chosen — so it can never come back to life (say, when the backend rejoins the service
//! within what would have been the timeout). A chosen backend is recorded with the current time.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use skiff_ebpf_common::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, FE_AFFINITY, Frontend, SlotKey,
};

use crate::maps::{AFF_MATCH, AFFINITY, BACKENDS, SLOTS};

/// A backend picked for a new connection (or datagram, or NodePort flow).
pub struct Selected {
    pub backend_id: u32,
    pub backend: Backend,
}

/// Whether an affinity entry last used at `last_used` may still be honoured at `now` (both
/// `CLOCK_MONOTONIC` seconds; wrapping, so a counter overflow does not make it fresh forever).
#[inline(always)]
pub fn affinity_fresh(now: u32, last_used: u32, timeout: u32) -> bool {
    now.wrapping_sub(last_used) <= timeout
}

/// The backend with id `id`, copied out of the map.
#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    // SAFETY: the value is copied out at once; an update or delete of the entry by the agent
    // meanwhile yields the old or the new bytes of a plain-integer struct, both valid.
    unsafe { BACKENDS.get(id) }.copied()
}

/// The backend `client` is bound to by a fresh affinity entry for `rev_nat_id`; a stale entry is
/// removed.
#[inline(always)]
fn affinity_backend(
    key: &AffinityKey,
    rev_nat_id: u32,
    timeout: u32,
    now: u32,
) -> Option<Selected> {
    // SAFETY: the entry's fields are copied out at once (see `backend`).
    let a = unsafe { AFFINITY.get(key) }?;
    let (id, last_used) = (a.backend_id, a.last_used);
    if affinity_fresh(now, last_used, timeout)
        && AFF_MATCH
            .get_ptr(AffinityMatchKey {
                backend_id: id,
                rev_nat_id,
            })
            .is_some()
        && let Some(backend) = backend(id)
    {
        return Some(Selected {
            backend_id: id,
            backend,
        });
    }
    // Expired, or the backend left the frontend (or is gone): forget it.
    let _ = AFFINITY.remove(key);
    None
}

/// Pick a backend of frontend `fe` for `client` (a [`AffinityKey`] without the revNAT id, which
/// comes from `fe`): its affinity backend if it has a fresh one, else a random slot. `None`:
/// the frontend has no usable backend (the caller rejects or drops).
#[inline(always)]
pub fn select_backend(fe: &Frontend, client: u64, client_kind: u32, now: u32) -> Option<Selected> {
    let (rev_nat_id, count, flags, timeout) =
        (fe.rev_nat_id, fe.count, fe.flags, fe.affinity_timeout);
    if count == 0 {
        return None;
    }
    let affinity = flags & FE_AFFINITY != 0;
    let key = AffinityKey {
        client,
        rev_nat_id,
        kind: client_kind,
    };
    let picked = if affinity {
        affinity_backend(&key, rev_nat_id, timeout, now)
    } else {
        None
    };
    let picked = match picked {
        Some(p) => p,
        None => {
            // SAFETY: a helper without arguments.
            let slot = unsafe { bpf_get_prandom_u32() } % count;
            // SAFETY: copied out at once (see `backend`).
            let backend_id = *unsafe { SLOTS.get(SlotKey { rev_nat_id, slot }) }?;
            Selected {
                backend_id,
                backend: backend(backend_id)?,
            }
        }
    };
    if affinity {
        let _ = AFFINITY.insert(
            key,
            AffinityValue {
                backend_id: picked.backend_id,
                last_used: now,
            },
            0,
        );
    }
    Some(picked)
}
