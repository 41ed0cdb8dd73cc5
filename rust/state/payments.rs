//! The succeeded payments, kept so refunds can be checked against them: in log order (so found
//! by LSN with a binary search), in chunks of a fixed size. A chunk is allocated whole and never
//! moves, so the heap is the entries' bytes plus at most one chunk not yet full, where one
//! growing vector would hold up to twice that and copy everything at each doubling (a pause of
//! the single writer that grows with the history).

use super::accounts::AccountId;
use super::mandates::MandateIndex;

/// Entries per chunk: 160 KiB chunks.
pub const CHUNK_LEN: usize = 4096;

/// A succeeded payment. Its currency is its accounts' (a payment moves money within one
/// currency only), its id `pay_<lsn>`: no strings are kept per payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub lsn: u64,
    pub amount: i64,
    pub refunded: i64,
    pub payer: AccountId,
    pub settlement: AccountId,
    /// The mandate that allowed it; None for a payment logged before consent was checked.
    pub mandate: Option<MandateIndex>,
}

const _: () = assert!(std::mem::size_of::<Payment>() == 40);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payments {
    /// Every chunk but the last is full; none is empty.
    chunks: Vec<Vec<Payment>>,
}

impl Payments {
    /// Appends a payment newer than every one held (the caller checks the order).
    pub fn push(&mut self, payment: Payment) {
        debug_assert!(self.last().is_none_or(|last| last.lsn < payment.lsn));
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK_LEN => chunk.push(payment),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK_LEN);
                chunk.push(payment);
                self.chunks.push(chunk);
            }
        }
    }

    #[must_use]
    pub fn last(&self) -> Option<&Payment> {
        self.chunks.last().and_then(|chunk| chunk.last())
    }

    /// The index of the payment logged at `lsn`.
    #[must_use]
    pub fn find(&self, lsn: u64) -> Option<usize> {
        // The chunk with the greatest first LSN at or below `lsn`.
        let chunk = self
            .chunks
            .partition_point(|chunk| chunk[0].lsn <= lsn)
            .checked_sub(1)?;
        let at = self.chunks[chunk]
            .binary_search_by_key(&lsn, |payment| payment.lsn)
            .ok()?;
        Some(chunk * CHUNK_LEN + at)
    }

    #[must_use]
    pub fn get(&self, index: usize) -> &Payment {
        &self.chunks[index / CHUNK_LEN][index % CHUNK_LEN]
    }

    pub fn get_mut(&mut self, index: usize) -> &mut Payment {
        &mut self.chunks[index / CHUNK_LEN][index % CHUNK_LEN]
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK_LEN + last.len())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Payment> {
        self.chunks.iter().flatten()
    }

    /// The heap the payments take: the chunks, and the list of them.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let chunks: usize = self.chunks.iter().map(Vec::capacity).sum();
        chunks * std::mem::size_of::<Payment>() + self.chunks.capacity() * std::mem::size_of::<Vec<Payment>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(lsn: u64) -> Payment {
        Payment {
            lsn,
            amount: 1,
            refunded: 0,
            payer: 0,
            settlement: 1,
            mandate: None,
        }
    }

    #[test]
    fn payments_are_found_by_lsn_across_chunks() {
        let mut payments = Payments::default();
        assert_eq!((payments.len(), payments.find(1)), (0, None));
        let count = 2 * CHUNK_LEN + 3;
        for index in 0..count {
            payments.push(payment(10 + 2 * index as u64));
        }
        assert_eq!(payments.len(), count);
        for index in [0, 1, CHUNK_LEN - 1, CHUNK_LEN, CHUNK_LEN + 1, count - 1] {
            let lsn = 10 + 2 * index as u64;
            assert_eq!(payments.find(lsn), Some(index));
            assert_eq!(payments.get(index).lsn, lsn);
            assert_eq!(payments.find(lsn + 1), None);
        }
        assert_eq!(payments.find(9), None);
        assert_eq!(payments.iter().count(), count);
        assert_eq!(
            payments.last().map(|last| last.lsn),
            Some(10 + 2 * (count as u64 - 1))
        );
    }

    #[test]
    fn a_payment_takes_the_heap_of_its_entry_and_little_more() {
        const PAYMENTS: usize = 100_000;
        let mut payments = Payments::default();
        for lsn in 1..=PAYMENTS as u64 {
            payments.push(payment(lsn));
        }
        let per_payment = payments.heap_bytes() / PAYMENTS;
        // `cargo test heap -- --nocapture` prints the figure.
        println!(
            "payment entry: {} bytes; heap of {PAYMENTS} payments: {per_payment} bytes each",
            std::mem::size_of::<Payment>()
        );
        assert!(per_payment <= 42, "{per_payment}");
    }
}
