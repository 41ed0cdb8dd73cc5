//! The durable payment and refund results, kept for replays and reads: what a retried request
//! gets again, what HTTP reads answer, what events carry. Compact: a result is a 48-byte entry
//! keyed by its LSN (its id is `pay_<lsn>` or `re_<lsn>`), its merchant, payer and currency
//! interned, its status and failure one byte, its texts in one arena (`text`). The orders' and
//! the refunds' indexes are native too. Plain Rust, no pyo3; single writer, deterministic like
//! the ledger (the same results in the same order encode to the same snapshot).

pub mod snapshot;
mod text;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use super::chunked::{Chunked, Logged};
use super::names::Names;
use super::{lsn_in_id, PAYMENT_ID_PREFIX};
use crate::error::{CoreError, CoreResult};
use text::{TextAt, Texts};

/// The failure codes a result may carry, the `Failure` values of `python/instapay/model.py`.
/// Append only: a result's code byte, in memory and in snapshots, is 1 + the index here.
pub const FAILURES: [&str; 14] = [
    "account_not_found",
    "account_exists",
    "currency_mismatch",
    "insufficient_funds",
    "amount_too_large",
    "payer_is_merchant",
    "payment_not_found",
    "payment_not_refundable",
    "refund_exceeds_payment",
    "payer_not_authorized",
    "mandate_missing",
    "mandate_expired",
    "mandate_amount_exceeded",
    "mandate_daily_limit_exceeded",
];

/// The high bit of a code: the result failed.
const FAILED: u8 = 0x80;
/// `Entry::prev` of the first entry of its chain.
const NONE: u32 = u32::MAX;

/// A result's status and failure code in one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(u8);

impl Code {
    /// # Errors
    /// `InvalidState` for a failure code not in `FAILURES`.
    ///
    /// # Panics
    /// Never: `FAILURES` holds fewer than 128 codes.
    pub fn new(succeeded: bool, failure: Option<&str>) -> CoreResult<Self> {
        let index = match failure {
            None => 0,
            Some(code) => {
                let at = FAILURES.iter().position(|known| *known == code);
                1 + at.ok_or_else(|| CoreError::InvalidState(format!("unknown failure code {code:?}")))?
            }
        };
        let index = u8::try_from(index).expect("fewer than 128 failure codes");
        Ok(Self(if succeeded { index } else { index | FAILED }))
    }

    /// The code a byte `byte` stands for, if any.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        (usize::from(byte & !FAILED) <= FAILURES.len()).then_some(Self(byte))
    }

    #[must_use]
    pub const fn byte(self) -> u8 {
        self.0
    }

    #[must_use]
    pub const fn succeeded(self) -> bool {
        self.0 & FAILED == 0
    }

    #[must_use]
    pub fn failure(self) -> Option<&'static str> {
        match self.0 & !FAILED {
            0 => None,
            index => Some(FAILURES[usize::from(index) - 1]),
        }
    }
}

/// A payment result; `metadata` is its JSON (as the engine encodes it), None when it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentFields<'a> {
    pub merchant_id: &'a str,
    pub order_id: &'a str,
    pub payer: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub code: Code,
    pub created_s: i64,
    pub description: Option<&'a str>,
    pub metadata: Option<&'a [u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundFields<'a> {
    pub payment_id: &'a str,
    pub merchant_id: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub code: Code,
    pub created_s: i64,
    pub reason: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durable<'a> {
    Payment(PaymentFields<'a>),
    Refund(RefundFields<'a>),
}

impl Durable<'_> {
    #[must_use]
    pub const fn merchant_id(&self) -> &str {
        match self {
            Self::Payment(payment) => payment.merchant_id,
            Self::Refund(refund) => refund.merchant_id,
        }
    }
}

/// One result: 48 bytes, no padding.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    lsn: u64,
    amount: i64,
    created_s: i64,
    /// Its texts: a payment's order id, description and metadata; a refund's payment id and
    /// reason.
    texts: TextAt,
    merchant: u32,
    /// A payment's payer (of `payers`); 0 for a refund.
    payer: u32,
    /// The entry before it of the same order (a payment) or the same payment (a refund), NONE
    /// for the first (the chains of the indexes, so they hold one number per order or payment).
    prev: u32,
    currency: u16,
    code: Code,
    refund: bool,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 48);

impl Logged for Entry {
    fn lsn(&self) -> u64 {
        self.lsn
    }
}

/// The refunds of one payment: the newest (its entry), and what those that succeeded gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refunded {
    last: u32,
    amount: i64,
}

/// A result with its names interned: what `snapshot` reads and `add` builds.
pub(super) struct Interned<'a> {
    pub lsn: u64,
    pub refund: bool,
    pub code: Code,
    pub merchant: u32,
    pub payer: u32,
    pub currency: u16,
    pub amount: i64,
    pub created_s: i64,
    /// A payment's order id, description, metadata; a refund's payment id, reason, None.
    pub texts: [Option<&'a [u8]>; 3],
}

#[derive(Debug, Default)]
pub struct Results {
    entries: Chunked<Entry>,
    texts: Texts,
    merchants: Names,
    payers: Names,
    /// At most `u16::MAX + 1`.
    currencies: Names,
    /// The hash of (merchant, order id) to the newest payment entry with that hash.
    orders: HashMap<u32, u32>,
    /// The refunds of each payment, by its LSN.
    refunds: HashMap<u64, Refunded>,
    /// The refunds of payment ids that name no LSN (no live refund has one: a refund is checked
    /// against the ledger's payments before it is logged, but old logs may hold such declines).
    odd_refunds: HashMap<Box<str>, Refunded>,
    /// Seeded per process: merchants choose order ids, and must not choose collisions.
    hasher: RandomState,
    /// The merchants of the payments held past the hot window by the ledger (their results
    /// left memory), by LSN: whose a refund of them may be.
    recalled: HashMap<u64, u32>,
}

fn utf8(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("texts are put as UTF-8")
}

impl Results {
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps the result logged at `lsn`.
    ///
    /// # Errors
    /// `InvalidState` for an LSN not above every held one's or an unknown failure code;
    /// `StateFull` past `u32::MAX` results, names or more than 65536 currencies.
    pub fn add(&mut self, lsn: u64, result: &Durable<'_>) -> CoreResult<()> {
        let interned = match result {
            Durable::Payment(payment) => Interned {
                lsn,
                refund: false,
                code: payment.code,
                merchant: self.merchants.intern(payment.merchant_id)?,
                payer: self.payers.intern(payment.payer)?,
                currency: self.intern_currency(payment.currency)?,
                amount: payment.amount,
                created_s: payment.created_s,
                texts: [
                    Some(payment.order_id.as_bytes()),
                    payment.description.map(str::as_bytes),
                    payment.metadata,
                ],
            },
            Durable::Refund(refund) => Interned {
                lsn,
                refund: true,
                code: refund.code,
                merchant: self.merchants.intern(refund.merchant_id)?,
                payer: 0,
                currency: self.intern_currency(refund.currency)?,
                amount: refund.amount,
                created_s: refund.created_s,
                texts: [
                    Some(refund.payment_id.as_bytes()),
                    refund.reason.map(str::as_bytes),
                    None,
                ],
            },
        };
        self.push(&interned)
    }

    fn intern_currency(&mut self, currency: &str) -> CoreResult<u16> {
        let index = self.currencies.intern(currency)?;
        u16::try_from(index).map_err(|_| CoreError::StateFull { what: "currencies" })
    }

    /// Appends a result whose names are interned, and indexes it.
    pub(super) fn push(&mut self, result: &Interned<'_>) -> CoreResult<()> {
        if self.entries.last().is_some_and(|last| last.lsn >= result.lsn) {
            let message = format!("result LSN {} is not above every held one's", result.lsn);
            return Err(CoreError::InvalidState(message));
        }
        let index = u32::try_from(self.entries.end_index())
            .ok()
            .filter(|&index| index != NONE)
            .ok_or(CoreError::StateFull { what: "results" })?;
        let texts = if result.refund {
            &result.texts[..2]
        } else {
            &result.texts[..]
        };
        let prev = if result.refund {
            let paid = utf8(result.texts[0].unwrap_or_default());
            let added = if result.code.succeeded() { result.amount } else { 0 };
            self.index_refund(paid, index, added)?
        } else {
            let order = self.order_hash(result.merchant, result.texts[0].unwrap_or_default());
            self.orders.insert(order, index).unwrap_or(NONE)
        };
        let texts = self.texts.push(texts)?;
        self.entries.push(Entry {
            lsn: result.lsn,
            amount: result.amount,
            created_s: result.created_s,
            texts,
            merchant: result.merchant,
            payer: result.payer,
            prev,
            currency: result.currency,
            code: result.code,
            refund: result.refund,
        });
        Ok(())
    }

    /// Chains a refund to the payment's earlier ones; the entry before it.
    fn index_refund(&mut self, payment_id: &str, index: u32, added: i64) -> CoreResult<u32> {
        match lsn_in_id(payment_id, PAYMENT_ID_PREFIX) {
            Some(lsn) => Self::chain(self.refunds.entry(lsn), index, added),
            None => Self::chain(self.odd_refunds.entry(payment_id.into()), index, added),
        }
    }

    fn chain<K>(
        entry: std::collections::hash_map::Entry<'_, K, Refunded>,
        index: u32,
        added: i64,
    ) -> CoreResult<u32> {
        let refunded = entry.or_insert(Refunded {
            last: NONE,
            amount: 0,
        });
        let amount = refunded.amount.checked_add(added);
        let amount = amount.ok_or_else(|| CoreError::InvalidState("refunds over i64".into()))?;
        let prev = refunded.last;
        *refunded = Refunded { last: index, amount };
        Ok(prev)
    }

    fn order_hash(&self, merchant: u32, order_id: &[u8]) -> u32 {
        let hash = self.hasher.hash_one((merchant, order_id));
        u32::try_from(hash >> 32).expect("32 bits")
    }

    fn view(&self, entry: &Entry) -> Durable<'_> {
        let merchant_id = self.merchants.name(entry.merchant);
        let currency = self.currencies.name(u32::from(entry.currency));
        if entry.refund {
            let [payment_id, reason] = self.texts.get::<2>(entry.texts);
            return Durable::Refund(RefundFields {
                payment_id: utf8(payment_id.unwrap_or_default()),
                merchant_id,
                amount: entry.amount,
                currency,
                code: entry.code,
                created_s: entry.created_s,
                reason: reason.map(utf8),
            });
        }
        let [order_id, description, metadata] = self.texts.get::<3>(entry.texts);
        Durable::Payment(PaymentFields {
            merchant_id,
            order_id: utf8(order_id.unwrap_or_default()),
            payer: self.payers.name(entry.payer),
            amount: entry.amount,
            currency,
            code: entry.code,
            created_s: entry.created_s,
            description: description.map(utf8),
            metadata,
        })
    }

    /// The result logged at `lsn`.
    #[must_use]
    pub fn get(&self, lsn: u64) -> Option<Durable<'_>> {
        let index = self.entries.find(lsn)?;
        Some(self.view(self.entries.get(index)))
    }

    /// The merchant of the result logged at `lsn` (without reading its texts), or of a payment
    /// held past the hot window.
    #[must_use]
    pub fn merchant_of(&self, lsn: u64) -> Option<&str> {
        let merchant = match self.entries.find(lsn) {
            Some(index) => self.entries.get(index).merchant,
            None => *self.recalled.get(&lsn)?,
        };
        Some(self.merchants.name(merchant))
    }

    /// The payment logged at `lsn`, older than the hot window, is the merchant's (the ledger
    /// holds it past the window, for a refund).
    ///
    /// # Errors
    /// `StateFull` past `u32::MAX` merchants.
    pub fn recall_merchant(&mut self, lsn: u64, merchant_id: &str) -> CoreResult<()> {
        let merchant = self.merchants.intern(merchant_id)?;
        self.recalled.insert(lsn, merchant);
        Ok(())
    }

    /// Forgets the merchants of the payments `keep` does not keep.
    pub fn prune_recalled(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.recalled.retain(|&lsn, _| keep(lsn));
    }

    /// The LSN of the oldest result held (older ones are in history.db only).
    #[must_use]
    pub fn first_lsn(&self) -> Option<u64> {
        self.entries.first().map(|first| first.lsn)
    }

    /// The LSN of the newest refund held of the payment logged at `lsn`.
    #[must_use]
    pub fn last_refund_of(&self, lsn: u64) -> Option<u64> {
        let refunded = self.refunds.get(&lsn)?;
        Some(self.entries.get(refunded.last as usize).lsn)
    }

    /// Drops the oldest chunks of results, all at or below `lsn_max`, so that at least `keep`
    /// stay held, and what the indexes knew of them (a chain ends where its entries left);
    /// remembers the merchant of each payment that succeeded which `held` says the ledger still
    /// holds. Returns how many went.
    pub fn evict(&mut self, keep: usize, lsn_max: u64, held: impl Fn(u64) -> bool) -> usize {
        let count = self.entries.droppable(keep, lsn_max);
        if count == 0 {
            return 0;
        }
        let before = self.entries.len();
        for entry in self.entries.drop_front(count) {
            if !entry.refund && entry.code.failure().is_none() && held(entry.lsn) {
                self.recalled.insert(entry.lsn, entry.merchant);
            }
        }
        let first = self.first_index();
        self.orders.retain(|_, index| *index >= first);
        self.refunds.retain(|_, refunded| refunded.last >= first);
        self.odd_refunds.retain(|_, refunded| refunded.last >= first);
        if let Some(oldest) = self.entries.first() {
            self.texts.forget_before(oldest.texts);
        }
        before - self.entries.len()
    }

    fn first_index(&self) -> u32 {
        u32::try_from(self.entries.first_index()).expect("indexes are below NONE")
    }

    /// Every result, in log order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Durable<'_>)> {
        self.entries.iter().map(|entry| (entry.lsn, self.view(entry)))
    }

    pub fn lsns(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|entry| entry.lsn)
    }

    /// (LSN, merchant id) of every result, in log order.
    pub fn merchants_of(&self) -> impl Iterator<Item = (u64, &str)> {
        self.entries
            .iter()
            .map(|entry| (entry.lsn, self.merchants.name(entry.merchant)))
    }

    /// The entries of a chain, newest first.
    fn chain_of(&self, last: u32) -> impl Iterator<Item = &Entry> {
        // An entry before the first held one left memory: the chain ends there (NONE is above
        // every index, and a chain's entries only get older).
        let first = self.first_index();
        let held = move |index: u32| index != NONE && index >= first;
        std::iter::successors(
            held(last).then(|| self.entries.get(last as usize)),
            move |entry| held(entry.prev).then(|| self.entries.get(entry.prev as usize)),
        )
    }

    /// The LSNs of the payments a merchant made for one order id, oldest first.
    #[must_use]
    pub fn payments_for_order(&self, merchant_id: &str, order_id: &str) -> Vec<u64> {
        let Some(merchant) = self.merchants.get(merchant_id) else {
            return Vec::new();
        };
        let hash = self.order_hash(merchant, order_id.as_bytes());
        let last = self.orders.get(&hash).copied().unwrap_or(NONE);
        let mut lsns: Vec<u64> = self
            .chain_of(last)
            .filter(|entry| {
                let [order, _, _] = self.texts.get::<3>(entry.texts);
                entry.merchant == merchant && order == Some(order_id.as_bytes())
            })
            .map(|entry| entry.lsn)
            .collect();
        lsns.reverse();
        lsns
    }

    fn refunded(&self, payment_id: &str) -> Option<&Refunded> {
        match lsn_in_id(payment_id, PAYMENT_ID_PREFIX) {
            Some(lsn) => self.refunds.get(&lsn),
            None => self.odd_refunds.get(payment_id),
        }
    }

    /// The LSNs of a payment's refunds, declined ones included, oldest first.
    #[must_use]
    pub fn refunds_of(&self, payment_id: &str) -> Vec<u64> {
        let last = self.refunded(payment_id).map_or(NONE, |refunded| refunded.last);
        let mut lsns: Vec<u64> = self.chain_of(last).map(|entry| entry.lsn).collect();
        lsns.reverse();
        lsns
    }

    /// What the refunds of a payment that succeeded gave back.
    #[must_use]
    pub fn amount_refunded(&self, payment_id: &str) -> i64 {
        self.refunded(payment_id).map_or(0, |refunded| refunded.amount)
    }

    /// (LSN, merchant, created) of each payment that succeeded, in log order: what the ledger's
    /// consent invariants check its payments against.
    pub fn payments_made(&self) -> impl Iterator<Item = (u64, &str, i64)> {
        self.entries
            .iter()
            .filter(|entry| !entry.refund && entry.code.failure().is_none())
            .map(|entry| (entry.lsn, self.merchants.name(entry.merchant), entry.created_s))
    }

    /// The heap the results take (the entries, the texts, the indexes; not the names).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        // A hash map holds about 8 buckets for 7 of its capacity, each its pair and a byte.
        let table = |capacity: usize, pair: usize| capacity * 8 / 7 * (pair + 1);
        self.entries.heap_bytes()
            + self.texts.heap_bytes()
            + table(self.orders.capacity(), 8)
            + table(self.refunds.capacity(), 24)
            + table(self.recalled.capacity(), 16)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn payment<'a>(merchant_id: &'a str, order_id: &'a str, failure: Option<&str>) -> Durable<'a> {
        Durable::Payment(PaymentFields {
            merchant_id,
            order_id,
            payer: "acct_alice",
            amount: 1999,
            currency: "EUR",
            code: Code::new(failure.is_none(), failure).unwrap(),
            created_s: 1_700_000_000,
            description: None,
            metadata: None,
        })
    }

    pub fn refund<'a>(payment_id: &'a str, amount: i64, failure: Option<&str>) -> Durable<'a> {
        Durable::Refund(RefundFields {
            payment_id,
            merchant_id: "shop",
            amount,
            currency: "EUR",
            code: Code::new(failure.is_none(), failure).unwrap(),
            created_s: 1_700_000_001,
            reason: Some("requested_by_customer"),
        })
    }

    /// Payments at 1, 2 (declined), 4 (the same order as 1), refunds of 1 at 3 and 5 (declined)
    /// and of an id that names no LSN at 6.
    pub fn busy_results() -> Results {
        let mut results = Results::default();
        let described = Durable::Payment(PaymentFields {
            description: Some("thé ✓"),
            metadata: Some(br#"{"k":"v"}"#),
            ..match payment("shop", "order-1", None) {
                Durable::Payment(fields) => fields,
                Durable::Refund(_) => unreachable!(),
            }
        });
        results.add(1, &described).unwrap();
        results
            .add(2, &payment("other", "order-1", Some("insufficient_funds")))
            .unwrap();
        results.add(3, &refund("pay_1", 500, None)).unwrap();
        results.add(4, &payment("shop", "order-1", None)).unwrap();
        results
            .add(5, &refund("pay_1", 0, Some("refund_exceeds_payment")))
            .unwrap();
        results
            .add(6, &refund("pay_x", 0, Some("payment_not_found")))
            .unwrap();
        results
    }

    #[test]
    fn a_code_holds_status_and_failure_in_one_byte() {
        for (succeeded, failure) in [(true, None), (false, None), (false, Some("mandate_expired"))] {
            let code = Code::new(succeeded, failure).unwrap();
            assert_eq!((code.succeeded(), code.failure()), (succeeded, failure));
            assert_eq!(Code::from_byte(code.byte()), Some(code));
        }
        assert!(Code::new(false, Some("no_such_code")).is_err());
        assert_eq!(Code::from_byte(FAILED | 15), None);
    }

    #[test]
    fn results_come_back_as_put_with_their_indexes() {
        let results = busy_results();
        assert_eq!(results.len(), 6);
        let Some(Durable::Payment(first)) = results.get(1) else {
            panic!("no payment at 1")
        };
        assert_eq!(
            (first.description, first.metadata, first.order_id),
            (Some("thé ✓"), Some(&br#"{"k":"v"}"#[..]), "order-1")
        );
        assert_eq!(
            results.get(2),
            Some(payment("other", "order-1", Some("insufficient_funds")))
        );
        assert_eq!(
            results.get(5),
            Some(refund("pay_1", 0, Some("refund_exceeds_payment")))
        );
        assert_eq!((results.get(7), results.merchant_of(2)), (None, Some("other")));
        assert_eq!(results.payments_for_order("shop", "order-1"), [1, 4]);
        assert_eq!(results.payments_for_order("other", "order-1"), [2]);
        assert!(results.payments_for_order("shop", "order-2").is_empty());
        assert!(results.payments_for_order("nobody", "order-1").is_empty());
        assert_eq!(
            (results.refunds_of("pay_1"), results.amount_refunded("pay_1")),
            (vec![3, 5], 500)
        );
        assert_eq!(
            (results.refunds_of("pay_x"), results.amount_refunded("pay_x")),
            (vec![6], 0)
        );
        assert!(results.refunds_of("pay_4").is_empty());
        let made: Vec<_> = results
            .payments_made()
            .map(|(lsn, merchant, _)| (lsn, merchant))
            .collect();
        assert_eq!(made, [(1, "shop"), (4, "shop")]);
        assert_eq!(results.lsns().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn old_chunks_of_results_go_with_what_the_indexes_knew_of_them() {
        use crate::state::chunked::CHUNK_LEN;
        let mut results = Results::default();
        let count = 3 * CHUNK_LEN as u64;
        for lsn in 1..=count {
            let order = if lsn % 2 == 0 { "even" } else { "odd" };
            results.add(2 * lsn, &payment("shop", order, None)).unwrap();
        }
        // Refunds of the first payment (in the first chunk) and of one in the last chunk.
        results.add(2 * count + 1, &refund("pay_2", 1, None)).unwrap();
        results
            .add(2 * count + 3, &refund(&format!("pay_{}", 2 * count), 1, None))
            .unwrap();
        results.recall_merchant(1, "old-shop").unwrap();
        // Not above the durable bound: nothing goes; then only whole chunks beyond the window.
        assert_eq!(results.evict(10, 2 * CHUNK_LEN as u64 - 1, |_| true), 0);
        assert_eq!(
            results.evict(2 * CHUNK_LEN + 1, u64::MAX, |lsn| lsn == 4),
            CHUNK_LEN
        );
        assert_eq!(results.first_lsn(), Some(2 * (CHUNK_LEN as u64 + 1)));
        assert_eq!(results.len(), 2 * CHUNK_LEN + 2);
        assert_eq!((results.get(2), results.merchant_of(2)), (None, None));
        assert_eq!(results.merchant_of(1), Some("old-shop"));
        assert_eq!(
            results.merchant_of(4),
            Some("shop"),
            "the ledger still holds pay_4"
        );
        let odd = results.payments_for_order("shop", "odd");
        assert_eq!(odd.len(), CHUNK_LEN, "the held payments of the order only");
        assert_eq!(odd[0], 2 * (CHUNK_LEN as u64 + 1));
        // A refund held of an evicted payment keeps its chain; its amount counts what is held.
        assert_eq!(results.refunds_of("pay_2"), [2 * count + 1]);
        assert_eq!(results.last_refund_of(2), Some(2 * count + 1));
        assert_eq!(results.evict(0, u64::MAX, |_| false), 2 * CHUNK_LEN);
        assert_eq!(results.len(), 2, "the newest chunk stays");
        assert!(results.payments_for_order("shop", "even").is_empty());
        let last = format!("pay_{}", 2 * count);
        assert_eq!(results.refunds_of(&last), [2 * count + 3]);
        assert_eq!(results.amount_refunded(&last), 1);
        results.prune_recalled(|_| false);
        assert_eq!(results.merchant_of(1), None);
        results.add(2 * count + 5, &payment("shop", "odd", None)).unwrap();
        assert_eq!(results.payments_for_order("shop", "odd"), [2 * count + 5]);
    }

    #[test]
    fn a_result_lsn_must_grow() {
        let mut results = busy_results();
        let error = results.add(6, &payment("shop", "order-9", None)).unwrap_err();
        assert!(error.to_string().contains("result LSN 6 is not above"), "{error}");
        assert_eq!(results.len(), 6);
    }

    #[test]
    fn a_payment_result_takes_under_100_bytes() {
        const PAYMENTS: usize = 100_000;
        let mut results = Results::default();
        for lsn in 1..=PAYMENTS as u64 {
            let order_id = format!("order-{lsn:010}");
            assert_eq!(order_id.len(), 16);
            results.add(lsn, &payment("shop", &order_id, None)).unwrap();
        }
        let per_payment = results.heap_bytes() / PAYMENTS;
        // `cargo test result_takes -- --nocapture` prints the figure.
        println!("payment result: {per_payment} bytes each (16-byte order id, no description or metadata)");
        assert!(per_payment <= 100, "{per_payment}");
    }
}
