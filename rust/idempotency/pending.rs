//! Reservations in flight, in a slab: a slot is handed to the engine as `generation << 32 | index`,
//! so a stale slot (completed or released, its place since reused) is refused, never applied to
//! the newer reservation.

use super::tenants::TenantId;
use super::{Fingerprint, KeyHash};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Reserved,
    /// Taken by a `complete`/`release` batch that has not checked all its slots yet.
    Claimed,
}

#[derive(Clone, Copy, Debug)]
pub struct Reservation {
    pub key: KeyHash,
    pub fingerprint: Fingerprint,
    pub created_s: u32,
    pub tenant: TenantId,
    generation: u32,
    state: State,
}

#[derive(Default)]
pub struct Pending {
    entries: Vec<Reservation>,
    free: Vec<u32>,
    len: usize,
}

fn split_slot(slot: u64) -> (usize, u32) {
    let index = usize::try_from(slot & u64::from(u32::MAX)).expect("u32 fits usize");
    let generation = u32::try_from(slot >> 32).unwrap_or(u32::MAX);
    (index, generation)
}

impl Pending {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores a reservation; returns its index (what the hash table refers to).
    pub fn insert(
        &mut self,
        key: KeyHash,
        fingerprint: Fingerprint,
        created_s: u32,
        tenant: TenantId,
    ) -> u32 {
        let reservation = |generation| Reservation {
            key,
            fingerprint,
            created_s,
            tenant,
            generation,
            state: State::Reserved,
        };
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let entry = &mut self.entries[index as usize];
            *entry = reservation(entry.generation);
            index
        } else {
            self.entries.push(reservation(0));
            u32::try_from(self.entries.len() - 1).expect("the capacity bound keeps indexes in u32")
        }
    }

    pub fn get(&self, index: u32) -> &Reservation {
        let entry = &self.entries[index as usize];
        assert!(entry.state != State::Free, "reservation {index} is free");
        entry
    }

    /// The handle the engine gets for reservation `index`.
    pub fn slot(&self, index: u32) -> u64 {
        u64::from(self.get(index).generation) << 32 | u64::from(index)
    }

    /// Marks a reserved slot as taken by the batch being checked; false for an unknown, stale,
    /// already finished or already claimed slot.
    pub fn claim(&mut self, slot: u64) -> bool {
        let (index, generation) = split_slot(slot);
        match self.entries.get_mut(index) {
            Some(entry) if entry.generation == generation && entry.state == State::Reserved => {
                entry.state = State::Claimed;
                true
            }
            _ => false,
        }
    }

    /// Undoes `claim` when a later slot of the batch turned out invalid.
    pub fn unclaim(&mut self, slot: u64) {
        let entry = &mut self.entries[split_slot(slot).0];
        assert_eq!(
            entry.state,
            State::Claimed,
            "unclaim of a slot that was not claimed"
        );
        entry.state = State::Reserved;
    }

    /// Frees a claimed slot and returns its index and reservation.
    pub fn take(&mut self, slot: u64) -> (u32, Reservation) {
        let (index, _) = split_slot(slot);
        let entry = &mut self.entries[index];
        assert_eq!(entry.state, State::Claimed, "take of a slot that was not claimed");
        let taken = *entry;
        entry.state = State::Free;
        entry.generation = entry.generation.wrapping_add(1);
        self.free
            .push(u32::try_from(index).expect("slot indexes are u32"));
        self.len -= 1;
        (u32::try_from(index).expect("slot indexes are u32"), taken)
    }

    /// The tenants of the reservations (a full scan, for tests).
    #[cfg(test)]
    pub fn tenants(&self) -> impl Iterator<Item = super::tenants::TenantId> + '_ {
        self.entries
            .iter()
            .filter(|entry| entry.state != State::Free)
            .map(|entry| entry.tenant)
    }

    pub fn allocated_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<Reservation>() + self.free.capacity() * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_refused_once_taken_even_after_its_place_is_reused() {
        let mut pending = Pending::default();
        let index = pending.insert([1, 1], [1; 16], 0, 0);
        let first = pending.slot(index);
        assert!(pending.claim(first));
        pending.take(first);
        let reused = pending.insert([2, 2], [2; 16], 0, 0);
        assert_eq!(reused, index);
        assert_ne!(pending.slot(reused), first);
        assert!(!pending.claim(first));
        assert!(pending.claim(pending.slot(reused)));
    }

    #[test]
    fn a_slot_cannot_be_claimed_twice() {
        let mut pending = Pending::default();
        let index = pending.insert([1, 1], [1; 16], 0, 0);
        let slot = pending.slot(index);
        assert!(pending.claim(slot));
        assert!(!pending.claim(slot));
        pending.unclaim(slot);
        assert!(pending.claim(slot));
    }

    #[test]
    fn unknown_slots_are_refused() {
        let mut pending = Pending::default();
        assert!(!pending.claim(0));
        assert!(!pending.claim(u64::MAX));
    }
}
