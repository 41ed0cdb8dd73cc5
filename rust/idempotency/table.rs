//! The hash table of the index: open addressing with linear probing over one array of 8-byte
//! buckets, each holding a key's 32-bit tag (the top half of its table hash) and a 32-bit handle
//! into the entries (plus one, so that an all-zero bucket is empty).
//!
//! A key's home bucket is computed from its tag alone (`tag * len >> 32`), which gives two things:
//! the bucket count need not be a power of two, so the table is exactly `capacity_max * 4 / 3`
//! buckets (at most 3/4 full, about 10.7 bytes per key), and a deletion shifts the following
//! entries back without reading any entry, so there are no tombstones and the table never has to
//! be rebuilt. The array is allocated zeroed once, for `capacity_max`, and never resized.

/// Buckets per key at `capacity_max`: 4/3, a load of at most 3/4, where a lookup of an absent key
/// reads about 8.5 buckets (a cache line or two) on average.
const BUCKETS_PER_KEY: (usize, usize) = (4, 3);
const EMPTY: u64 = 0;

pub type Tag = u32;

/// The part of a 64-bit hash the table keeps.
pub fn tag_of(hash: u64) -> Tag {
    u32::try_from(hash >> 32).expect("the top half of a u64 fits u32")
}

pub struct Table {
    buckets: Vec<u64>,
    len: usize,
}

/// Where a probe ended: at the key's bucket, or at the empty bucket where it would go.
pub enum Probe {
    Found(usize),
    Vacant(usize),
}

impl Table {
    pub fn with_capacity(capacity_max: usize) -> Self {
        let (numerator, denominator) = BUCKETS_PER_KEY;
        let buckets_len = capacity_max / denominator * numerator + capacity_max % denominator + 1;
        assert!(
            buckets_len > capacity_max,
            "a full table still has an empty bucket"
        );
        assert!(
            u32::try_from(buckets_len).is_ok(),
            "homes are computed in 32 bits"
        );
        Self {
            buckets: vec![EMPTY; buckets_len],
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn allocated_bytes(&self) -> usize {
        self.buckets.capacity() * size_of::<u64>()
    }

    fn home(&self, tag: Tag) -> usize {
        let home = (u64::from(tag) * self.buckets.len() as u64) >> 32;
        usize::try_from(home).expect("below the bucket count")
    }

    fn next(&self, bucket: usize) -> usize {
        if bucket + 1 == self.buckets.len() {
            0
        } else {
            bucket + 1
        }
    }

    /// How many steps forward, wrapping around, lead from bucket `from` to bucket `to`.
    fn distance(&self, from: usize, to: usize) -> usize {
        if to >= from {
            to - from
        } else {
            to + self.buckets.len() - from
        }
    }

    /// Reads the home bucket of `hash` and returns it, so that a batch can bring the buckets of
    /// all its keys into cache with independent loads before probing one key after the other.
    pub fn warm(&self, hash: u64) -> u64 {
        self.buckets[self.home(tag_of(hash))]
    }

    /// Finds the bucket of the key with this hash for which `is_key(handle)` holds.
    pub fn probe(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Probe {
        let tag = tag_of(hash);
        let mut bucket = self.home(tag);
        loop {
            let (bucket_tag, handle) = split(self.buckets[bucket]);
            match handle {
                None => return Probe::Vacant(bucket),
                Some(handle) if bucket_tag == tag && is_key(handle) => return Probe::Found(bucket),
                Some(_) => bucket = self.next(bucket),
            }
        }
    }

    /// The bucket holding `handle`, which must be in the table under `hash`.
    pub fn bucket_of(&self, hash: u64, handle: u32) -> usize {
        match self.probe(hash, |found| found == handle) {
            Probe::Found(bucket) => bucket,
            Probe::Vacant(_) => panic!("handle {handle:#x} is missing from the table"),
        }
    }

    pub fn handle(&self, bucket: usize) -> u32 {
        split(self.buckets[bucket]).1.expect("the bucket is occupied")
    }

    /// Fills the vacant bucket a probe for `hash` just returned.
    pub fn insert(&mut self, bucket: usize, hash: u64, handle: u32) {
        assert_eq!(self.buckets[bucket], EMPTY, "insert into an occupied bucket");
        self.buckets[bucket] = join(tag_of(hash), handle);
        self.len += 1;
    }

    pub fn set_handle(&mut self, bucket: usize, handle: u32) {
        let (tag, old) = split(self.buckets[bucket]);
        assert!(old.is_some(), "set_handle on an empty bucket");
        self.buckets[bucket] = join(tag, handle);
    }

    /// Empties `bucket` and moves back every following entry of the run whose probe path
    /// crosses the hole, so every key stays reachable from its home without tombstones.
    pub fn remove(&mut self, bucket: usize) {
        assert_ne!(self.buckets[bucket], EMPTY, "remove of an empty bucket");
        let mut hole = bucket;
        let mut next = self.next(bucket);
        while self.buckets[next] != EMPTY {
            let its_home = self.home(split(self.buckets[next]).0);
            // The entry may fill the hole when the hole is no farther from its home than it is.
            if self.distance(its_home, next) >= self.distance(hole, next) {
                self.buckets[hole] = self.buckets[next];
                hole = next;
            }
            next = self.next(next);
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
    }
}

fn join(tag: Tag, handle: u32) -> u64 {
    let stored = handle.checked_add(1).expect("handles stay below u32::MAX");
    u64::from(tag) << 32 | u64::from(stored)
}

fn split(bucket: u64) -> (Tag, Option<u32>) {
    let tag = tag_of(bucket);
    let stored = u32::try_from(bucket & u64::from(u32::MAX)).expect("masked to 32 bits");
    (tag, stored.checked_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator: the tests need many reproducible operation sequences.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    fn find(table: &Table, hash: u64, handle: u32) -> bool {
        matches!(table.probe(hash, |found| found == handle), Probe::Found(_))
    }

    #[test]
    fn keeps_every_entry_reachable_under_random_inserts_and_removes() {
        for (seed, capacity, hash_bits) in [(1, 8, 64), (2, 100, 64), (3, 1000, 64), (4, 200, 3)] {
            let mut random = SplitMix(seed);
            let mut table = Table::with_capacity(capacity);
            // (handle, hash) pairs; few hash bits force long runs and tag collisions.
            let mut model: Vec<(u32, u64)> = Vec::new();
            for step in 0..20_000u32 {
                let remove = !model.is_empty() && (model.len() == capacity || random.next() & 1 == 0);
                if remove {
                    let at = usize::try_from(random.next() % model.len() as u64).unwrap();
                    let (handle, hash) = model.swap_remove(at);
                    table.remove(table.bucket_of(hash, handle));
                    assert!(
                        !find(&table, hash, handle),
                        "seed {seed}: removed handle still found"
                    );
                } else {
                    let hash = random.next() >> (64 - hash_bits) << (64 - hash_bits);
                    let Probe::Vacant(bucket) = table.probe(hash, |found| found == step) else {
                        panic!("a new handle was found");
                    };
                    table.insert(bucket, hash, step);
                    model.push((step, hash));
                }
                assert_eq!(table.len(), model.len());
            }
            for &(handle, hash) in &model {
                assert!(find(&table, hash, handle), "seed {seed}: lost handle {handle}");
            }
        }
    }

    #[test]
    fn probes_wrap_around_the_end_of_the_array() {
        let mut table = Table::with_capacity(3);
        let last_home = u64::MAX;
        for handle in 0..3 {
            let Probe::Vacant(bucket) = table.probe(last_home, |_| false) else {
                panic!("nothing matches");
            };
            table.insert(bucket, last_home, handle);
        }
        table.remove(table.bucket_of(last_home, 0));
        assert!(find(&table, last_home, 1) && find(&table, last_home, 2));
        assert!(!find(&table, last_home, 0));
    }

    #[test]
    fn the_table_is_four_thirds_of_the_capacity() {
        assert_eq!(Table::with_capacity(3_000_000).buckets.len(), 4_000_001);
        assert_eq!(Table::with_capacity(1).buckets.len(), 2);
    }
}
