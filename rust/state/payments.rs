//! The succeeded payments, kept so refunds can be checked against them: in log order, in
//! fixed chunks (`chunked`).

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

/// 160 KiB chunks.
pub type Payments = Chunked<Payment>;

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
