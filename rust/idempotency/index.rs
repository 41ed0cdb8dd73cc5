//! The index proper: a hash table (`table.rs`) of 4-byte handles pointing into the finished ring or
//! the pending slab. Keeping the 48-byte entries out of the table means its empty buckets (a
//! quarter of them when full) cost 8 bytes each rather than 56.

use std::hash::Hasher as _;

use siphasher::sip128::{Hasher128 as _, SipHasher13};

use super::pending::Pending;
use super::ring::{Finished, Ring};
use super::table::{Probe, Table};
use super::tenants::{TenantId, Tenants};
use super::{Fingerprint, KeyHash, Seed, CAPACITY_MAX, TTL_SECONDS_MAX};
use crate::error::{CoreError, CoreResult};

/// Table handles with this bit set are pending slab indexes; the others are the low 31 bits of a
/// finished entry's sequence number, unique because the ring never holds 2^31 entries.
const PENDING_BIT: u32 = 1 << 31;
const SEQ_MASK: u32 = PENDING_BIT - 1;
const _: () = assert!(CAPACITY_MAX < SEQ_MASK as usize);

/// The answer for one request of a reserve batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The key is now reserved under this slot.
    New(u64),
    /// Finished before with the same fingerprint; the reference `complete` stored.
    Replay(u64),
    /// The key was used with a different fingerprint.
    Mismatch,
    /// Reserved under this slot and not finished yet.
    InFlight(u64),
    /// A new key, but the index holds `capacity_max` keys already.
    Full,
    /// A new key, but its tenant holds its share (this many keys) already, and the index would
    /// keep less than one share free for the others if it borrowed one more.
    TenantFull(u64),
}

/// Whether a reservation is held to its tenant's share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shares {
    Enforced,
    /// For keys that were accepted once (replayed from the log): refusing one now would let a
    /// retry of its request apply a second time.
    Ignored,
}

pub const RESERVE_NEW: u8 = 0;
pub const RESERVE_REPLAY: u8 = 1;
pub const RESERVE_MISMATCH: u8 = 2;
pub const RESERVE_IN_FLIGHT: u8 = 3;
pub const RESERVE_FULL: u8 = 4;
pub const RESERVE_TENANT_FULL: u8 = 5;

impl Outcome {
    /// The `(status, value)` pair Python sees.
    pub fn code(self) -> (u8, u64) {
        match self {
            Self::New(slot) => (RESERVE_NEW, slot),
            Self::Replay(reference) => (RESERVE_REPLAY, reference),
            Self::Mismatch => (RESERVE_MISMATCH, 0),
            Self::InFlight(slot) => (RESERVE_IN_FLIGHT, slot),
            Self::Full => (RESERVE_FULL, 0),
            Self::TenantFull(keys_max) => (RESERVE_TENANT_FULL, keys_max),
        }
    }
}

fn pending_handle(index: u32) -> u32 {
    PENDING_BIT | index
}

fn finished_handle(seq: u64) -> u32 {
    u32::try_from(seq & u64::from(SEQ_MASK)).expect("masked to 31 bits")
}

/// Where the entries live; the table only holds handles into these.
#[derive(Default)]
struct Entries {
    finished: Ring,
    pending: Pending,
}

/// The sequence number a finished handle stands for, given the ring's oldest one: the only one
/// with those low 31 bits in `head_seq..head_seq + 2^31`.
fn seq_from_handle(head_seq: u64, handle: u32) -> u64 {
    head_seq + u64::from(handle.wrapping_sub(finished_handle(head_seq)) & SEQ_MASK)
}

impl Entries {
    fn seq_of(&self, handle: u32) -> u64 {
        seq_from_handle(self.finished.head_seq(), handle)
    }

    fn key_of(&self, handle: u32) -> KeyHash {
        if handle & PENDING_BIT == 0 {
            self.finished.get(self.seq_of(handle)).key
        } else {
            self.pending.get(handle & SEQ_MASK).key
        }
    }

    /// The tenant of every finished entry and reservation (a full scan, for tests).
    #[cfg(test)]
    fn tenants(&self) -> impl Iterator<Item = TenantId> + '_ {
        let finished = self.finished.iter().map(|entry| entry.tenant);
        finished.chain(self.pending.tenants())
    }

    fn answer(&self, handle: u32, fingerprint: &Fingerprint) -> Outcome {
        if handle & PENDING_BIT == 0 {
            let finished = self.finished.get(self.seq_of(handle));
            if finished.fingerprint == *fingerprint {
                Outcome::Replay(finished.reference)
            } else {
                Outcome::Mismatch
            }
        } else {
            let index = handle & SEQ_MASK;
            if self.pending.get(index).fingerprint == *fingerprint {
                Outcome::InFlight(self.pending.slot(index))
            } else {
                Outcome::Mismatch
            }
        }
    }

    fn len(&self) -> usize {
        self.finished.len() + self.pending.len()
    }
}

/// The table uses the first half of the keyed 128-bit hash: uniform, and secret, so a client
/// cannot choose keys that pile up in one probe sequence.
fn table_hash(key: &KeyHash) -> u64 {
    key[0]
}

/// The keyed hash that stands for a key. It only depends on the seed, so callers may hash a
/// batch's keys before taking the index's lock.
#[derive(Clone, Copy)]
pub struct KeyHasher(SipHasher13);

impl KeyHasher {
    pub fn new(seed: &Seed) -> Self {
        Self(SipHasher13::new_with_key(seed))
    }

    pub fn hash(&self, key: &[u8]) -> KeyHash {
        let mut hasher = self.0;
        hasher.write(key);
        let hash = hasher.finish128();
        [hash.h1, hash.h2]
    }
}

pub struct Index {
    seed: Seed,
    key_hasher: KeyHasher,
    capacity_max: usize,
    ttl_s: u64,
    table: Table,
    entries: Entries,
    tenants: Tenants,
}

impl Index {
    /// # Errors
    /// `OutOfRange` for a capacity, TTL or tenant share outside the supported range.
    pub fn new(capacity_max: u64, ttl_s: u64, share_percent: u64, seed: Seed) -> CoreResult<Self> {
        let capacity_max = checked_range("capacity_max", capacity_max, 1, CAPACITY_MAX as u64)?;
        let capacity_max = usize::try_from(capacity_max).expect("bounded by CAPACITY_MAX");
        checked_range("ttl_seconds", ttl_s, 1, TTL_SECONDS_MAX)?;
        Ok(Self {
            seed,
            key_hasher: KeyHasher::new(&seed),
            capacity_max,
            ttl_s,
            table: Table::with_capacity(capacity_max),
            entries: Entries::default(),
            tenants: Tenants::new(capacity_max, share_percent)?,
        })
    }

    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    pub fn capacity_max(&self) -> usize {
        self.capacity_max
    }

    pub fn ttl_s(&self) -> u64 {
        self.ttl_s
    }

    /// Finished and in-flight keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn in_flight(&self) -> usize {
        self.entries.pending.len()
    }

    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    pub fn tenants_mut(&mut self) -> &mut Tenants {
        &mut self.tenants
    }

    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.table.allocated_bytes()
            + self.entries.finished.allocated_bytes()
            + self.entries.pending.allocated_bytes()
            + self.tenants.allocated_bytes()
    }

    /// Finished entries, oldest first: what a snapshot keeps.
    pub fn finished(&self) -> impl Iterator<Item = &Finished> {
        self.entries.finished.iter()
    }

    pub fn key_hasher(&self) -> KeyHasher {
        self.key_hasher
    }

    fn probe(&self, key: &KeyHash) -> Probe {
        let entries = &self.entries;
        self.table
            .probe(table_hash(key), |handle| entries.key_of(handle) == *key)
    }

    /// The answers for a batch of requests whose keys hash to `keys` (see `KeyHasher`), each of
    /// tenant `tenants[i]` (numbered by `Tenants::intern`).
    pub fn reserve_batch(
        &mut self,
        keys: &[KeyHash],
        fingerprints: &[Fingerprint],
        tenants: &[TenantId],
        now_s: u32,
        shares: Shares,
    ) -> Vec<Outcome> {
        assert_eq!(keys.len(), fingerprints.len(), "one fingerprint per key");
        assert_eq!(keys.len(), tenants.len(), "one tenant per key");
        assert!(
            tenants.iter().all(|&tenant| self.tenants.is_known(tenant)),
            "tenants are interned first"
        );
        // Independent loads of every home bucket first: their cache misses overlap, where the
        // probes below, one after the other, would wait for each in turn.
        let warm = keys
            .iter()
            .fold(0, |warm, key| warm ^ self.table.warm(table_hash(key)));
        std::hint::black_box(warm);
        let outcomes = keys
            .iter()
            .zip(fingerprints)
            .zip(tenants)
            .map(|((&key, fingerprint), &tenant)| self.reserve(key, fingerprint, tenant, now_s, shares))
            .collect();
        self.assert_counts();
        outcomes
    }

    /// The answer for one request whose key hashes to `key`. A tenant that may not borrow beyond
    /// its share is answered before a full index: it is that tenant's keys that fill it.
    pub fn reserve(
        &mut self,
        key: KeyHash,
        fingerprint: &Fingerprint,
        tenant: TenantId,
        now_s: u32,
        shares: Shares,
    ) -> Outcome {
        match self.probe(&key) {
            Probe::Found(bucket) => self.entries.answer(self.table.handle(bucket), fingerprint),
            Probe::Vacant(_) if shares == Shares::Enforced && !self.tenants.admits(tenant, self.len()) => {
                Outcome::TenantFull(self.tenants.keys_max() as u64)
            }
            Probe::Vacant(_) if self.len() >= self.capacity_max => Outcome::Full,
            Probe::Vacant(bucket) => {
                let index = self.entries.pending.insert(key, *fingerprint, now_s, tenant);
                self.table.insert(bucket, table_hash(&key), pending_handle(index));
                self.tenants.add(tenant);
                Outcome::New(self.entries.pending.slot(index))
            }
        }
    }

    /// Claims every slot or none: one bad slot leaves the whole batch unapplied.
    fn claim_all(&mut self, slots: &[u64]) -> CoreResult<()> {
        for (index, &slot) in slots.iter().enumerate() {
            if !self.entries.pending.claim(slot) {
                for &claimed in &slots[..index] {
                    self.entries.pending.unclaim(claimed);
                }
                return Err(CoreError::UnknownSlot { index, slot });
            }
        }
        Ok(())
    }

    /// # Errors
    /// `UnknownSlot` (and nothing applied) when a slot is not in flight.
    pub fn complete_batch(&mut self, slots: &[u64], references: &[u64]) -> CoreResult<()> {
        assert_eq!(slots.len(), references.len(), "one reference per slot");
        self.claim_all(slots)?;
        for (&slot, &reference) in slots.iter().zip(references) {
            let (index, reservation) = self.entries.pending.take(slot);
            let seq = self.entries.finished.push(Finished {
                key: reservation.key,
                fingerprint: reservation.fingerprint,
                reference,
                created_s: reservation.created_s,
                tenant: reservation.tenant,
            });
            let bucket = self
                .table
                .bucket_of(table_hash(&reservation.key), pending_handle(index));
            self.table.set_handle(bucket, finished_handle(seq));
        }
        self.assert_counts();
        Ok(())
    }

    /// # Errors
    /// `UnknownSlot` (and nothing released) when a slot is not in flight.
    pub fn release_batch(&mut self, slots: &[u64]) -> CoreResult<()> {
        self.claim_all(slots)?;
        for &slot in slots {
            let (index, reservation) = self.entries.pending.take(slot);
            self.remove_handle(&reservation.key, pending_handle(index));
            self.tenants.remove(reservation.tenant);
        }
        self.assert_counts();
        Ok(())
    }

    fn remove_handle(&mut self, key: &KeyHash, handle: u32) {
        self.table.remove(self.table.bucket_of(table_hash(key), handle));
    }

    /// Removes the finished entries whose age `now_s - created_s` exceeds the TTL, oldest finished
    /// first, stopping at the first one still within its TTL. Returns how many went.
    pub fn expire(&mut self, now_s: u64) -> usize {
        let mut removed = 0;
        while let Some(front) = self.entries.finished.front() {
            if now_s.saturating_sub(u64::from(front.created_s)) <= self.ttl_s {
                break;
            }
            let (key, tenant) = (front.key, front.tenant);
            self.remove_handle(&key, finished_handle(self.entries.finished.head_seq()));
            self.entries.finished.pop_front();
            self.tenants.remove(tenant);
            removed += 1;
        }
        self.assert_counts();
        removed
    }

    /// Adds a finished entry read from a snapshot.
    ///
    /// # Errors
    /// `CorruptDump` when the key is already present, its tenant unknown or the index full.
    /// A tenant over its share is restored all the same: its keys were accepted once.
    pub fn restore(&mut self, entry: Finished) -> CoreResult<()> {
        if self.len() >= self.capacity_max {
            return Err(CoreError::CorruptDump("more entries than capacity_max".into()));
        }
        if !self.tenants.is_known(entry.tenant) {
            return Err(CoreError::CorruptDump(format!("unknown tenant {}", entry.tenant)));
        }
        let Probe::Vacant(bucket) = self.probe(&entry.key) else {
            return Err(CoreError::CorruptDump("a key appears twice".into()));
        };
        self.insert_finished(bucket, entry);
        Ok(())
    }

    /// Adds keys read back from the log, in log order, each finished with its record's LSN
    /// (`reference`), to the state the live index was in: a key already held is left as it is,
    /// and before the first key of each new reservation time the keys past their TTL expire, as
    /// the engine expires them before each batch of a new second. A key the index has no room
    /// for is refused: it was accepted once, and dropping it would let a retry of its request
    /// apply twice (the capacity must have shrunk since).
    ///
    /// # Errors
    /// `IndexTooSmall` when a key does not fit; the keys before it are restored.
    pub fn restore_logged(&mut self, entries: impl IntoIterator<Item = Finished>) -> CoreResult<()> {
        let mut expired_at_s = None;
        for entry in entries {
            assert!(self.tenants.is_known(entry.tenant), "tenants are interned first");
            if expired_at_s != Some(entry.created_s) {
                self.expire(u64::from(entry.created_s));
                expired_at_s = Some(entry.created_s);
            }
            if let Probe::Vacant(bucket) = self.probe(&entry.key) {
                if self.len() >= self.capacity_max {
                    return Err(CoreError::IndexTooSmall {
                        what: "the log",
                        held: self.len() as u64 + 1,
                        capacity: self.capacity_max as u64,
                    });
                }
                self.insert_finished(bucket, entry);
            }
        }
        self.assert_counts();
        Ok(())
    }

    fn insert_finished(&mut self, bucket: usize, entry: Finished) {
        let seq = self.entries.finished.push(entry);
        self.table
            .insert(bucket, table_hash(&entry.key), finished_handle(seq));
        self.tenants.add(entry.tenant);
    }

    /// The table holds exactly the entries, each counted by its tenant; cheap enough to check
    /// after every batch (the tenants are few: merchants).
    fn assert_counts(&self) {
        assert_eq!(self.table.len(), self.entries.len(), "table and entries disagree");
        assert_eq!(
            self.tenants.total(),
            self.table.len(),
            "tenant counts and table disagree"
        );
        assert!(self.table.len() <= self.capacity_max, "over capacity");
    }

    /// Counts every entry's tenant again: what the running counts must equal.
    #[cfg(test)]
    fn recount(&self, tenant: TenantId) -> usize {
        self.entries.tenants().filter(|&each| each == tenant).count()
    }
}

fn checked_range(what: &'static str, value: u64, min: u64, max: u64) -> CoreResult<u64> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(CoreError::OutOfRange {
            what,
            value,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::ring::{CHUNK_LEN, FINISHED_LEN};
    use crate::idempotency::tenants::{NO_TENANT, TENANT_KEYS_MIN};

    const TTL_S: u64 = 100;

    fn index(capacity_max: u64) -> Index {
        Index::new(capacity_max, TTL_S, 100, [7; 16]).expect("valid settings")
    }

    fn fingerprint(byte: u8) -> Fingerprint {
        [byte; 16]
    }

    fn reserve(index: &mut Index, key: &[u8], fingerprint: &Fingerprint, now_s: u32) -> Outcome {
        let key = index.key_hasher().hash(key);
        index.reserve(key, fingerprint, NO_TENANT, now_s, Shares::Enforced)
    }

    fn reserve_for(index: &mut Index, tenant: TenantId, key: &[u8], shares: Shares) -> Outcome {
        let key = index.key_hasher().hash(key);
        index.reserve(key, &fingerprint(1), tenant, 0, shares)
    }

    /// Keys `name-0`, `name-1`, ... of `tenant`, finished.
    fn finish_keys(index: &mut Index, tenant: TenantId, name: &str, count: usize) -> Vec<u64> {
        let slots: Vec<u64> = (0..count)
            .map(|n| {
                let key = format!("{name}-{n}");
                new_slot(reserve_for(index, tenant, key.as_bytes(), Shares::Enforced))
            })
            .collect();
        index.complete_batch(&slots, &slots).expect("in flight");
        slots
    }

    #[test]
    fn logged_keys_restore_as_reserving_and_completing_them_would() {
        let (mut restored, mut reserved) = (index(3), index(3));
        let mut logged = Vec::new();
        for (lsn, name, byte) in [
            (10, "a", 1),
            (11, "b", 2),
            (12, "a", 3),
            (13, "c", 4),
            (14, "d", 5),
        ] {
            let key = restored.key_hasher().hash(name.as_bytes());
            logged.push(Finished {
                key,
                fingerprint: fingerprint(byte),
                reference: lsn,
                created_s: 5,
                tenant: NO_TENANT,
            });
            // What `recovery._restore_keys` does, one key at a time.
            if let Outcome::New(slot) =
                reserved.reserve(key, &fingerprint(byte), NO_TENANT, 5, Shares::Ignored)
            {
                reserved.complete_batch(&[slot], &[lsn]).expect("in flight");
            }
        }
        assert_eq!(
            restored.restore_logged(logged.clone()).err(),
            Some(CoreError::IndexTooSmall {
                what: "the log",
                held: 4,
                capacity: 3
            }),
            "a key past capacity is refused, never left out"
        );
        assert_eq!(restored.len(), 3, "a key held already is left as it is");
        for (name, byte, answer) in [
            ("a", 1, Outcome::Replay(10)),
            ("a", 3, Outcome::Mismatch),
            ("c", 4, Outcome::Replay(13)),
        ] {
            for index in [&mut restored, &mut reserved] {
                assert_eq!(
                    reserve(index, name.as_bytes(), &fingerprint(byte), 6),
                    answer,
                    "{name}"
                );
            }
        }
        assert_eq!(reserve(&mut restored, b"d", &fingerprint(5), 6), Outcome::Full);
        let finished = |index: &Index| index.finished().copied().collect::<Vec<_>>();
        assert_eq!(finished(&restored), finished(&reserved));
    }

    #[test]
    fn logged_keys_past_their_ttl_make_room_for_later_ones_as_they_did_live() {
        let mut restored = index(2);
        let hasher = restored.key_hasher();
        let logged: Vec<Finished> = (0u8..4)
            .map(|n| Finished {
                key: hasher.hash(&[n]),
                fingerprint: fingerprint(n),
                reference: u64::from(n),
                // Two keys a day: the first day's are past their TTL when the second day's come.
                created_s: if n < 2 {
                    10
                } else {
                    11 + u32::try_from(TTL_S).expect("a small TTL")
                },
                tenant: NO_TENANT,
            })
            .collect();
        restored
            .restore_logged(logged)
            .expect("the second day's keys fit");
        assert_eq!(
            reserve(&mut restored, &[3], &fingerprint(3), 120),
            Outcome::Replay(3)
        );
        assert_eq!(restored.len(), 2);
    }

    #[test]
    fn a_tenant_borrows_beyond_its_share_until_one_share_is_left_for_the_others() {
        let mut index = Index::new(4 * TENANT_KEYS_MIN as u64, TTL_S, 25, [7; 16]).expect("valid");
        let shop = index.tenants_mut().intern(0, b"shop").expect("valid name");
        let cafe = index.tenants_mut().intern(0, b"cafe").expect("valid name");
        let bar = index.tenants_mut().intern(0, b"bar").expect("valid name");
        let quota = TENANT_KEYS_MIN;
        finish_keys(&mut index, shop, "shop", 3 * quota);
        assert_eq!(index.tenants().keys_of(shop), 3 * quota, "two shares borrowed");
        assert_eq!(
            reserve_for(&mut index, shop, b"one more", Shares::Enforced),
            Outcome::TenantFull(quota as u64)
        );
        assert_eq!(
            reserve_for(&mut index, shop, b"shop-7", Shares::Enforced),
            Outcome::Replay(7),
            "its known keys are still answered"
        );
        new_slot(reserve_for(&mut index, shop, b"replayed", Shares::Ignored));
        finish_keys(&mut index, cafe, "cafe", quota - 1);
        assert_eq!(
            index.len(),
            4 * quota,
            "the free share went to a tenant within its share"
        );
        assert_eq!(
            reserve_for(&mut index, bar, b"bar-0", Shares::Enforced),
            Outcome::Full
        );
        assert_eq!(index.tenants().keys_of(shop), 3 * quota + 1);
        assert_eq!(index.recount(shop), 3 * quota + 1);
    }

    #[test]
    fn what_a_tenant_may_borrow_shrinks_with_the_keys_others_hold() {
        let mut index = Index::new(4 * TENANT_KEYS_MIN as u64, TTL_S, 25, [7; 16]).expect("valid");
        let shop = index.tenants_mut().intern(0, b"shop").expect("valid name");
        let cafe = index.tenants_mut().intern(0, b"cafe").expect("valid name");
        let quota = TENANT_KEYS_MIN;
        let cafe_slots: Vec<u64> = (0..quota / 2)
            .map(|n| new_slot(reserve_for(&mut index, cafe, &n.to_le_bytes(), Shares::Enforced)))
            .collect();
        finish_keys(&mut index, shop, "shop", 3 * quota - quota / 2);
        assert_eq!(
            reserve_for(&mut index, shop, b"one more", Shares::Enforced),
            Outcome::TenantFull(quota as u64)
        );
        index.release_batch(&cafe_slots).expect("in flight");
        new_slot(reserve_for(&mut index, shop, b"one more", Shares::Enforced));
    }

    #[test]
    fn tenant_counts_follow_release_and_expiry() {
        let mut index = Index::new(100, TTL_S, 100, [7; 16]).expect("valid settings");
        let shop = index.tenants_mut().intern(0, b"shop").expect("valid name");
        finish_keys(&mut index, shop, "old", 3);
        let busy = new_slot(reserve_for(&mut index, shop, b"busy", Shares::Enforced));
        let dropped = new_slot(reserve_for(&mut index, shop, b"dropped", Shares::Enforced));
        assert_eq!(index.tenants().keys_of(shop), 5);
        index.release_batch(&[dropped]).expect("in flight");
        assert_eq!(index.tenants().keys_of(shop), 4);
        assert_eq!(index.expire(TTL_S + 1), 3);
        assert_eq!(index.tenants().keys_of(shop), 1);
        index.complete_batch(&[busy], &[1]).expect("in flight");
        assert_eq!((index.tenants().keys_of(shop), index.recount(shop)), (1, 1));
    }

    #[test]
    fn a_full_index_is_full_for_tenants_within_their_share() {
        let mut index = Index::new(2, TTL_S, 100, [7; 16]).expect("valid settings");
        let shop = index.tenants_mut().intern(0, b"shop").expect("valid name");
        let cafe = index.tenants_mut().intern(0, b"cafe").expect("valid name");
        finish_keys(&mut index, shop, "shop", 1);
        finish_keys(&mut index, cafe, "cafe", 1);
        assert_eq!(
            reserve_for(&mut index, cafe, b"c", Shares::Enforced),
            Outcome::Full
        );
        assert_eq!(
            reserve_for(&mut index, cafe, b"c", Shares::Ignored),
            Outcome::Full
        );
    }

    fn new_slot(outcome: Outcome) -> u64 {
        let Outcome::New(slot) = outcome else {
            panic!("expected NEW, got {outcome:?}");
        };
        slot
    }

    #[test]
    fn handles_map_back_to_sequence_numbers_across_the_31_bit_wrap() {
        for head in [0, 5, u64::from(SEQ_MASK) - 2, u64::from(SEQ_MASK) + 1, 3 << 40] {
            for seq in [head, head + 1, head + 3, head + u64::from(SEQ_MASK)] {
                assert_eq!(
                    seq_from_handle(head, finished_handle(seq)),
                    seq,
                    "head {head}, seq {seq}"
                );
            }
        }
    }

    #[test]
    fn a_key_is_new_then_in_flight_then_replayed() {
        let mut index = index(10);
        let slot = new_slot(reserve(&mut index, b"order-1", &fingerprint(1), 0));
        assert_eq!(
            reserve(&mut index, b"order-1", &fingerprint(1), 0),
            Outcome::InFlight(slot)
        );
        assert_eq!(
            reserve(&mut index, b"order-1", &fingerprint(2), 0),
            Outcome::Mismatch
        );
        index.complete_batch(&[slot], &[42]).expect("slot is in flight");
        assert_eq!(
            reserve(&mut index, b"order-1", &fingerprint(1), 5),
            Outcome::Replay(42)
        );
        assert_eq!(
            reserve(&mut index, b"order-1", &fingerprint(2), 5),
            Outcome::Mismatch
        );
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_released_key_is_new_again() {
        let mut index = index(10);
        let slot = new_slot(reserve(&mut index, b"k", &fingerprint(1), 0));
        index.release_batch(&[slot]).expect("slot is in flight");
        assert_eq!(index.len(), 0);
        let again = new_slot(reserve(&mut index, b"k", &fingerprint(2), 0));
        assert_ne!(again, slot, "a reused place gets a new generation");
    }

    #[test]
    fn a_batch_with_one_bad_slot_applies_nothing() {
        let mut index = index(10);
        let first = new_slot(reserve(&mut index, b"a", &fingerprint(1), 0));
        let second = new_slot(reserve(&mut index, b"b", &fingerprint(1), 0));
        let error = index
            .complete_batch(&[first, second, first], &[1, 2, 3])
            .unwrap_err();
        assert_eq!(
            error,
            CoreError::UnknownSlot {
                index: 2,
                slot: first
            }
        );
        assert_eq!(
            reserve(&mut index, b"a", &fingerprint(1), 0),
            Outcome::InFlight(first)
        );
        index
            .complete_batch(&[first, second], &[1, 2])
            .expect("both still in flight");
        assert_eq!(
            index.complete_batch(&[first], &[1]),
            Err(CoreError::UnknownSlot {
                index: 0,
                slot: first
            })
        );
        assert_eq!(
            index.release_batch(&[second]),
            Err(CoreError::UnknownSlot {
                index: 0,
                slot: second
            })
        );
    }

    #[test]
    fn a_full_index_refuses_new_keys_but_answers_known_ones() {
        let mut index = index(2);
        let a = new_slot(reserve(&mut index, b"a", &fingerprint(1), 0));
        let b = new_slot(reserve(&mut index, b"b", &fingerprint(1), 0));
        assert_eq!(reserve(&mut index, b"c", &fingerprint(1), 0), Outcome::Full);
        assert_eq!(
            reserve(&mut index, b"a", &fingerprint(1), 0),
            Outcome::InFlight(a)
        );
        index.complete_batch(&[a], &[9]).expect("in flight");
        assert_eq!(reserve(&mut index, b"a", &fingerprint(1), 0), Outcome::Replay(9));
        index.release_batch(&[b]).expect("in flight");
        new_slot(reserve(&mut index, b"c", &fingerprint(1), 0));
    }

    #[test]
    fn expiry_keeps_an_entry_for_exactly_its_ttl_and_never_touches_reservations() {
        let mut index = index(10);
        let finished = new_slot(reserve(&mut index, b"done", &fingerprint(1), 1_000));
        new_slot(reserve(&mut index, b"busy", &fingerprint(1), 1_000));
        index.complete_batch(&[finished], &[1]).expect("in flight");
        assert_eq!(index.expire(1_000 + TTL_S), 0, "age == ttl is kept");
        assert_eq!(index.expire(1_000 + TTL_S + 1), 1);
        assert_eq!(index.expire(u64::MAX), 0, "in-flight entries never expire");
        assert_eq!(index.len(), 1);
        new_slot(reserve(&mut index, b"done", &fingerprint(2), 2_000));
    }

    /// Reserves and completes `count` keys in batches of 1024, as the engine does.
    fn fill(index: &mut Index, count: u32) {
        for first in (0..count).step_by(1024) {
            let slots: Vec<u64> = (first..count.min(first + 1024))
                .map(|n| new_slot(reserve(index, &n.to_le_bytes(), &fingerprint(1), 0)))
                .collect();
            index.complete_batch(&slots, &slots).expect("in flight");
        }
    }

    #[test]
    fn expiry_gives_the_entries_memory_back() {
        let mut index = index(100_000);
        let empty = index.memory_bytes();
        fill(&mut index, 100_000);
        assert_eq!(index.expire(TTL_S + 1), 100_000);
        // The ring keeps its current chunk and a spare; the slab keeps room for one batch.
        let kept = index.memory_bytes() - empty;
        assert!(
            kept <= 2 * CHUNK_LEN * FINISHED_LEN + 64 * 1024,
            "{kept} bytes kept"
        );
    }

    #[test]
    fn memory_per_finished_key_stays_under_64_bytes_when_full() {
        let count = 600_000;
        let mut index = index(u64::from(count));
        fill(&mut index, count);
        let per_key = index.memory_bytes() / count as usize;
        assert!(per_key <= 64, "{per_key} bytes per key");
    }

    #[test]
    fn settings_outside_their_range_are_refused() {
        for (capacity, ttl) in [
            (0, 1),
            (CAPACITY_MAX as u64 + 1, 1),
            (1, 0),
            (1, TTL_SECONDS_MAX + 1),
        ] {
            assert!(matches!(
                Index::new(capacity, ttl, 100, [0; 16]),
                Err(CoreError::OutOfRange { .. })
            ));
        }
    }
}
