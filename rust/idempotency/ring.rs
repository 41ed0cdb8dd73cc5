//! The finished entries in the order they finished: a FIFO of fixed-size chunks, so expiry pops
//! from the front in O(expired) and memory grows by one chunk at a time (never a doubling).
//!
//! Entries are named by a sequence number that only grows; the front entry is `head_seq`.

use std::collections::VecDeque;

use super::tenants::TenantId;
use super::{Fingerprint, KeyHash};

/// Entries per chunk: 4096 x 48 B = 192 KiB, so a full index wastes at most two chunks.
pub const CHUNK_LEN: usize = 4096;

/// One finished request: what a replay needs (`reference`) and what expiry needs (`created_s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub key: KeyHash,
    pub fingerprint: Fingerprint,
    /// Set by `complete`: the engine's handle to the stored response.
    pub reference: u64,
    /// When the key was reserved (the clock the engine passed to `reserve`): 32 bits reach
    /// the year 2106 and leave room for the tenant within the 48 bytes.
    pub created_s: u32,
    pub tenant: TenantId,
}

/// The memory budget of DESIGN.md (64 B per key) rests on this size.
pub const FINISHED_LEN: usize = 48;
const _: () = assert!(size_of::<Finished>() == FINISHED_LEN);

#[derive(Default)]
pub struct Ring {
    chunks: VecDeque<Vec<Finished>>,
    /// A drained chunk kept for the next push, so a steady state allocates nothing.
    spare: Option<Vec<Finished>>,
    /// Sequence number of `chunks[0][0]`.
    front_chunk_seq: u64,
    head_seq: u64,
    tail_seq: u64,
}

impl Ring {
    pub fn len(&self) -> usize {
        usize::try_from(self.tail_seq - self.head_seq).expect("the ring is bounded by the capacity")
    }

    pub fn head_seq(&self) -> u64 {
        self.head_seq
    }

    pub fn get(&self, seq: u64) -> &Finished {
        assert!(
            (self.head_seq..self.tail_seq).contains(&seq),
            "seq {seq} is outside the ring"
        );
        let offset = usize::try_from(seq - self.front_chunk_seq).expect("offsets are bounded");
        &self.chunks[offset / CHUNK_LEN][offset % CHUNK_LEN]
    }

    pub fn front(&self) -> Option<&Finished> {
        (self.head_seq < self.tail_seq).then(|| self.get(self.head_seq))
    }

    /// Appends an entry and returns its sequence number.
    pub fn push(&mut self, entry: Finished) -> u64 {
        if self.chunks.back().is_none_or(|chunk| chunk.len() == CHUNK_LEN) {
            let chunk = self.spare.take().unwrap_or_else(|| Vec::with_capacity(CHUNK_LEN));
            self.chunks.push_back(chunk);
        }
        let chunk = self
            .chunks
            .back_mut()
            .expect("a chunk with room was just ensured");
        chunk.push(entry);
        self.tail_seq += 1;
        self.tail_seq - 1
    }

    pub fn pop_front(&mut self) {
        assert!(self.head_seq < self.tail_seq, "pop from an empty ring");
        self.head_seq += 1;
        if self.head_seq - self.front_chunk_seq == CHUNK_LEN as u64 {
            let mut drained = self.chunks.pop_front().expect("the front chunk exists");
            drained.clear();
            self.spare = Some(drained);
            self.front_chunk_seq = self.head_seq;
        }
    }

    /// Entries from the oldest finished to the newest.
    pub fn iter(&self) -> impl Iterator<Item = &Finished> {
        (self.head_seq..self.tail_seq).map(|seq| self.get(seq))
    }

    pub fn allocated_bytes(&self) -> usize {
        let chunks = self.chunks.len() + usize::from(self.spare.is_some());
        chunks * CHUNK_LEN * FINISHED_LEN + self.chunks.capacity() * size_of::<Vec<Finished>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Finished {
        Finished {
            key: [n, !n],
            fingerprint: [0; 16],
            reference: n,
            created_s: u32::try_from(n).expect("small test numbers"),
            tenant: 0,
        }
    }

    #[test]
    fn entries_leave_in_the_order_they_came_across_chunks() {
        let mut ring = Ring::default();
        let count = 3 * CHUNK_LEN as u64 + 5;
        for n in 0..count {
            assert_eq!(ring.push(entry(n)), n);
        }
        for n in 0..count {
            assert_eq!(ring.front(), Some(&entry(n)));
            assert_eq!(ring.get(n + (count - n - 1)), &entry(count - 1));
            ring.pop_front();
        }
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.front(), None);
    }

    #[test]
    fn a_steady_state_reuses_the_spare_chunk() {
        let mut ring = Ring::default();
        for n in 0..10 * CHUNK_LEN as u64 {
            ring.push(entry(n));
            if ring.len() > CHUNK_LEN {
                ring.pop_front();
            }
        }
        assert!(ring.allocated_bytes() <= 3 * CHUNK_LEN * FINISHED_LEN + 1024);
        assert_eq!(ring.iter().count(), CHUNK_LEN);
    }
}
