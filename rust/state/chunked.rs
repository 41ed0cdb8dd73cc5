//! Entries in log order (so found by LSN with a binary search), in chunks of a fixed size. A
//! chunk is allocated whole and never moves, so the heap is the entries' bytes plus at most one
//! chunk not yet full, where one growing vector would hold up to twice that and copy everything
//! at each doubling (a pause of the single writer that grows with the history). The oldest
//! chunks can be dropped whole (the bounded hot state: what is older is in history.db); an
//! entry's index stays the same for as long as it is held.

/// Entries per chunk.
pub const CHUNK_LEN: usize = 4096;

/// An entry logged at one LSN.
pub trait Logged {
    fn lsn(&self) -> u64;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked<T> {
    /// Every chunk but the last is full; none is empty.
    chunks: Vec<Vec<T>>,
    /// The chunks dropped from the front: the first held entry's index is this many chunks.
    dropped: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            dropped: 0,
        }
    }
}

impl<T: Logged> Chunked<T> {
    /// Appends an entry newer than every one held (the caller checks the order).
    pub fn push(&mut self, entry: T) {
        debug_assert!(self.last().is_none_or(|last| last.lsn() < entry.lsn()));
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK_LEN => chunk.push(entry),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK_LEN);
                chunk.push(entry);
                self.chunks.push(chunk);
            }
        }
    }

    #[must_use]
    pub fn last(&self) -> Option<&T> {
        self.chunks.last().and_then(|chunk| chunk.last())
    }

    /// The index of the entry logged at `lsn`.
    #[must_use]
    pub fn find(&self, lsn: u64) -> Option<usize> {
        // The chunk with the greatest first LSN at or below `lsn`.
        let chunk = self
            .chunks
            .partition_point(|chunk| chunk[0].lsn() <= lsn)
            .checked_sub(1)?;
        let at = self.chunks[chunk].binary_search_by_key(&lsn, T::lsn).ok()?;
        Some((self.dropped + chunk) * CHUNK_LEN + at)
    }

    /// The entry at `index` (a held one's: at least `first_index`).
    #[must_use]
    pub fn get(&self, index: usize) -> &T {
        &self.chunks[index / CHUNK_LEN - self.dropped][index % CHUNK_LEN]
    }

    pub fn get_mut(&mut self, index: usize) -> &mut T {
        &mut self.chunks[index / CHUNK_LEN - self.dropped][index % CHUNK_LEN]
    }

    /// The entries held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK_LEN + last.len())
    }

    /// The index of the first entry held (the entries before it were dropped).
    #[must_use]
    pub const fn first_index(&self) -> usize {
        self.dropped * CHUNK_LEN
    }

    /// The index the next entry pushed gets.
    #[must_use]
    pub fn end_index(&self) -> usize {
        self.first_index() + self.len()
    }

    /// The first entry held.
    #[must_use]
    pub fn first(&self) -> Option<&T> {
        self.chunks.first().and_then(|chunk| chunk.first())
    }

    /// How many front chunks could go so that at least `keep` entries stay held, each of them
    /// entirely at or below `lsn_max`: the last chunk always stays (it takes the next entry).
    #[must_use]
    pub fn droppable(&self, keep: usize, lsn_max: u64) -> usize {
        let mut held = self.len();
        let mut count = 0;
        for chunk in &self.chunks[..self.chunks.len().saturating_sub(1)] {
            let newest = chunk.last().map_or(u64::MAX, T::lsn); // no chunk is empty
            if held - chunk.len() < keep || newest > lsn_max {
                break;
            }
            held -= chunk.len();
            count += 1;
        }
        count
    }

    /// Drops the `count` oldest chunks (at most `droppable`'s) and returns their entries.
    pub fn drop_front(&mut self, count: usize) -> impl Iterator<Item = T> + '_ {
        self.dropped += count;
        self.chunks.drain(..count).flatten()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// The heap the entries take: the chunks, and the list of them.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let chunks: usize = self.chunks.iter().map(Vec::capacity).sum();
        chunks * std::mem::size_of::<T>() + self.chunks.capacity() * std::mem::size_of::<Vec<T>>()
    }
}
