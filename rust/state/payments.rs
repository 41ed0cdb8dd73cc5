//! The succeeded payments, kept so refunds can be checked against them: the hot ones in log
//! order, in fixed chunks (`chunked`), and the few held past the hot window by LSN (`kept`).

use std::collections::BTreeMap;

use super::accounts::AccountId;
use super::chunked::{Chunked, Logged};
use super::mandates::MandateIndex;

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

impl Logged for Payment {
    fn lsn(&self) -> u64 {
        self.lsn
    }
}

/// The payments held: the hot window (160 KiB chunks), and the older ones still needed: those
/// with a refund not yet in history.db or a refund waiting to be staged, and those recalled
/// from history.db for a refund (all older than every hot one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payments {
    hot: Chunked<Payment>,
    kept: BTreeMap<u64, Payment>,
    /// The durable LSN of the last eviction that forgot a payment with refunds: a read of
    /// history.db projected to less may miss one of them.
    forgotten_through: u64,
}

impl Payments {
    /// Appends a payment newer than every one held (the caller checks the order).
    pub fn push(&mut self, payment: Payment) {
        self.hot.push(payment);
    }

    /// The newest payment.
    #[must_use]
    pub fn last(&self) -> Option<&Payment> {
        self.hot.last()
    }

    /// The payment logged at `lsn`, if held.
    #[must_use]
    pub fn get(&self, lsn: u64) -> Option<&Payment> {
        match self.hot.find(lsn) {
            Some(index) => Some(self.hot.get(index)),
            None => self.kept.get(&lsn),
        }
    }

    pub fn get_mut(&mut self, lsn: u64) -> Option<&mut Payment> {
        match self.hot.find(lsn) {
            Some(index) => Some(self.hot.get_mut(index)),
            None => self.kept.get_mut(&lsn),
        }
    }

    /// The payments held, in log order (the kept ones first: they are older).
    pub fn iter(&self) -> impl Iterator<Item = &Payment> {
        self.kept.values().chain(self.hot.iter())
    }

    /// The hot payments, in log order.
    pub fn hot(&self) -> impl Iterator<Item = &Payment> {
        self.hot.iter()
    }

    /// The payments held past the hot window, in log order.
    pub fn kept(&self) -> impl Iterator<Item = &Payment> {
        self.kept.values()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.hot.len() + self.kept.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hot.is_empty() && self.kept.is_empty()
    }

    /// The LSN of the oldest hot payment (older ones are kept, or in history.db only).
    #[must_use]
    pub fn hot_from(&self) -> Option<u64> {
        self.hot.first().map(|first| first.lsn)
    }

    /// Drops the hot chunks whose payments are all below `lsn_below` (the last chunk stays),
    /// keeping those `keep` tells; returns how many went.
    pub fn evict(&mut self, lsn_below: u64, mut keep: impl FnMut(&Payment) -> bool) -> usize {
        let Some(lsn_max) = lsn_below.checked_sub(1) else {
            return 0;
        };
        let count = self.hot.droppable(0, lsn_max);
        let mut dropped = 0;
        for payment in self.hot.drop_front(count) {
            if keep(&payment) {
                self.kept.insert(payment.lsn, payment);
            } else {
                dropped += 1;
            }
        }
        dropped
    }

    /// Forgets the kept payments `keep` no longer keeps; returns how many went.
    pub fn prune(&mut self, mut keep: impl FnMut(&Payment) -> bool) -> usize {
        let before = self.kept.len();
        self.kept.retain(|_, payment| keep(payment));
        before - self.kept.len()
    }

    /// Holds an older payment past the hot window (recalled from history.db); false if one of
    /// its LSN is held already (the memory is newer than the database then).
    pub fn recall(&mut self, payment: Payment) -> bool {
        if self.get(payment.lsn).is_some() || self.hot.last().is_some_and(|last| last.lsn <= payment.lsn) {
            return false;
        }
        self.kept.insert(payment.lsn, payment);
        true
    }

    /// Memory forgot payments with refunds that history.db holds up to `lsn`.
    pub fn forgot_through(&mut self, lsn: u64) {
        self.forgotten_through = self.forgotten_through.max(lsn);
    }

    #[must_use]
    pub const fn forgotten_through(&self) -> u64 {
        self.forgotten_through
    }

    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        // A B-tree node holds up to 11 entries with its keys: about 64 bytes an entry.
        self.hot.heap_bytes() + self.kept.len() * 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::chunked::CHUNK_LEN;

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
        assert_eq!((payments.len(), payments.get(1)), (0, None));
        let count = 2 * CHUNK_LEN + 3;
        for index in 0..count {
            payments.push(payment(10 + 2 * index as u64));
        }
        assert_eq!(payments.len(), count);
        for index in [0, 1, CHUNK_LEN - 1, CHUNK_LEN, CHUNK_LEN + 1, count - 1] {
            let lsn = 10 + 2 * index as u64;
            assert_eq!(payments.get(lsn).map(|payment| payment.lsn), Some(lsn));
            assert_eq!(payments.get(lsn + 1), None);
        }
        assert_eq!(payments.get(9), None);
        assert_eq!(payments.iter().count(), count);
        assert_eq!(
            payments.last().map(|last| last.lsn),
            Some(10 + 2 * (count as u64 - 1))
        );
    }

    #[test]
    fn old_chunks_go_but_for_the_payments_kept_and_the_newest_chunk() {
        let mut payments = Payments::default();
        let count = 3 * CHUNK_LEN + 5;
        for index in 0..count {
            payments.push(payment(1 + index as u64));
        }
        let kept_lsn = 7;
        // Below the third chunk: the first two go, but for one payment kept.
        let below = 2 * CHUNK_LEN as u64 + 1;
        assert_eq!(payments.evict(below, |p| p.lsn == kept_lsn), 2 * CHUNK_LEN - 1);
        assert_eq!(payments.len(), CHUNK_LEN + 5 + 1);
        assert_eq!(payments.hot_from(), Some(below));
        assert_eq!(payments.get(8), None);
        assert_eq!(payments.get(kept_lsn).map(|p| p.lsn), Some(kept_lsn));
        let lsn = count as u64;
        payments.get_mut(lsn).unwrap().refunded = 1;
        assert_eq!(payments.get(lsn).unwrap().refunded, 1);
        // The newest chunk always stays, whatever the bound.
        assert_eq!(payments.evict(u64::MAX, |_| false), CHUNK_LEN);
        assert_eq!(payments.hot_from(), Some(3 * CHUNK_LEN as u64 + 1));
        assert!(payments.recall(payment(8)), "an evicted payment comes back");
        assert!(!payments.recall(payment(8)), "once");
        assert!(!payments.recall(payment(lsn)), "a hot one is never replaced");
        let order: Vec<u64> = payments.iter().map(|p| p.lsn).collect();
        assert_eq!(&order[..3], [kept_lsn, 8, 3 * CHUNK_LEN as u64 + 1]);
        assert_eq!(payments.prune(|p| p.lsn == 8), 1);
        assert_eq!(payments.kept().count(), 1);
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
