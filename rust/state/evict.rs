//! The bounded hot state: memory holds a window of recent results and the ledger's payments
//! they name; what is older is read from history.db. One rule decides what may leave: a result
//! (and its payment) goes once history.db holds it durably (its LSN at or below the projector's
//! durable LSN) and once it is older than the window, in whole chunks. A payment past the window
//! stays (kept) while a refund of it is not yet durable in history.db, so that the database's
//! `amount_refunded` is right for every payment memory forgets, or while a refund of it waits to
//! be staged (pinned); a refund of a payment memory no longer holds recalls it from history.db
//! first (`recall`).

use super::accounts::AccountId;
use super::ledger::Ledger;
use super::payments::Payment;
use super::results::Results;
use crate::error::CoreResult;

/// How far memory may forget.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Every record up to this LSN is durable in history.db.
    pub durable_lsn: u64,
    /// The results memory holds at least (the newest ones).
    pub results_max: usize,
}

/// What one pass forgot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evicted {
    pub results: usize,
    pub payments: usize,
}

/// Forgets what the window no longer needs (see the module). `pinned`: sorted LSNs of payments
/// a queued refund names.
///
pub fn evict(ledger: &mut Ledger, results: &mut Results, window: Window, pinned: &[u64]) -> Evicted {
    // The results go first; the merchant of each payment that succeeded is remembered while the
    // ledger still holds it, for a refund's check of whose it is.
    let mut evicted = Evicted {
        results: results.evict(window.results_max, window.durable_lsn, |lsn| {
            ledger.payment(lsn).is_some()
        }),
        payments: 0,
    };
    let needed = |payment: &Payment| {
        pinned.binary_search(&payment.lsn).is_ok()
            || results
                .last_refund_of(payment.lsn)
                .is_some_and(|refund| refund > window.durable_lsn)
    };
    let mut forgot_refunded = false;
    let mut keep = |payment: &Payment| {
        let kept = needed(payment);
        forgot_refunded |= !kept && payment.refunded > 0;
        kept
    };
    let payments = ledger.payments_mut();
    // The ledger's chunks whose payments' results all left memory.
    if let Some(first) = results.first_lsn() {
        evicted.payments += payments.evict(first, &mut keep);
    }
    evicted.payments += payments.prune(&mut keep);
    if forgot_refunded {
        // A read of history.db older than this could miss a refund memory no longer holds.
        payments.forgot_through(window.durable_lsn);
    }
    results.prune_recalled(|lsn| payments.get(lsn).is_some());
    evicted
}

/// A payment's refundable state as history.db holds it, read for a refund of it.
#[derive(Debug, Clone, Copy)]
pub struct Recalled<'a> {
    pub lsn: u64,
    pub merchant_id: &'a str,
    pub payer: &'a str,
    pub settlement: &'a str,
    pub amount: i64,
    pub refunded: i64,
    /// The LSN history.db was projected to when read.
    pub as_of: u64,
}

/// How a recall went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recall {
    /// Memory holds it now.
    Recalled,
    /// Memory held it already (newer than any read of the database).
    Held,
    /// The read is older than what memory forgot since: read again.
    Stale,
    /// Its accounts are not open (the payment cannot be refunded as the database says).
    Unknown,
}

/// Puts a payment history.db holds back into memory, past the window (see the module).
///
/// # Errors
/// `StateFull` past `u32::MAX` merchants.
pub fn recall(ledger: &mut Ledger, results: &mut Results, recalled: &Recalled<'_>) -> CoreResult<Recall> {
    if ledger.payment(recalled.lsn).is_some() {
        return Ok(Recall::Held);
    }
    if recalled.as_of < ledger.payments().forgotten_through() {
        return Ok(Recall::Stale);
    }
    let accounts = ledger.accounts();
    let (Some(payer), Some(settlement)) = (accounts.find(recalled.payer), accounts.find(recalled.settlement))
    else {
        return Ok(Recall::Unknown);
    };
    let (payer, settlement): (AccountId, AccountId) = (payer, settlement);
    let payment = Payment {
        lsn: recalled.lsn,
        amount: recalled.amount,
        refunded: recalled.refunded,
        payer,
        settlement,
        mandate: None,
    };
    if !ledger.payments_mut().recall(payment) {
        return Ok(Recall::Held);
    }
    results.recall_merchant(recalled.lsn, recalled.merchant_id)?;
    Ok(Recall::Recalled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::chunked::CHUNK_LEN;
    use crate::state::ledger::tests::{request, shop_ledger, NOW_S};
    use crate::state::results::{Code, Durable, PaymentFields, RefundFields};

    const PAYMENTS: u64 = 3 * CHUNK_LEN as u64;

    /// Payments of 1 at LSNs 2 to PAYMENTS + 1, their results; what refunds add goes after.
    fn busy() -> (Ledger, Results) {
        let mut ledger = shop_ledger();
        ledger.deposit("alice", 1_000_000, "EUR").unwrap().unwrap();
        let mut results = Results::default();
        for lsn in 2..=PAYMENTS + 1 {
            ledger
                .pay(&request(lsn, "alice", 1), "shop", NOW_S)
                .unwrap()
                .unwrap();
            let payment = PaymentFields {
                merchant_id: "shop",
                order_id: "o",
                payer: "alice",
                amount: 1,
                currency: "EUR",
                code: Code::new(true, None).unwrap(),
                created_s: NOW_S,
                description: None,
                metadata: None,
            };
            results.add(lsn, &Durable::Payment(payment)).unwrap();
        }
        (ledger, results)
    }

    fn refund(ledger: &mut Ledger, results: &mut Results, paid: u64, lsn: u64) {
        ledger.refund(Some(paid), Some(1)).unwrap().1.unwrap();
        let id = format!("pay_{paid}");
        let refund = RefundFields {
            payment_id: &id,
            merchant_id: "shop",
            amount: 1,
            currency: "EUR",
            code: Code::new(true, None).unwrap(),
            created_s: NOW_S,
            reason: None,
        };
        results.add(lsn, &Durable::Refund(refund)).unwrap();
    }

    fn window(durable_lsn: u64) -> Window {
        Window {
            durable_lsn,
            results_max: 10,
        }
    }

    #[test]
    fn only_what_history_holds_durably_beyond_the_window_goes() {
        let (mut ledger, mut results) = busy();
        let (refunded, pinned, refund_lsn) = (2, 3, PAYMENTS + 2);
        refund(&mut ledger, &mut results, refunded, refund_lsn);
        // Nothing is durable in history.db yet: nothing goes.
        assert_eq!(
            evict(&mut ledger, &mut results, window(0), &[]),
            Evicted::default()
        );
        // All but the refund: the refunded payment and the pinned one stay past the window.
        let evicted = evict(&mut ledger, &mut results, window(PAYMENTS + 1), &[pinned]);
        assert_eq!(evicted.results, 2 * CHUNK_LEN, "whole chunks, the newest stays");
        assert_eq!(evicted.payments, 2 * CHUNK_LEN - 2);
        assert_eq!(ledger.payment(refunded).map(|p| p.refunded), Some(1));
        assert!(ledger.payment(pinned).is_some());
        assert!(ledger.payment(4).is_none());
        assert_eq!(
            results.merchant_of(pinned),
            Some("shop"),
            "a refund checks whose it is"
        );
        ledger.check_invariants().unwrap();
        // Once the refund is durable and the pin gone, both go; a read older than that is stale.
        let evicted = evict(&mut ledger, &mut results, window(refund_lsn), &[]);
        assert_eq!(
            evicted,
            Evicted {
                results: 0,
                payments: 2
            }
        );
        assert_eq!(
            (ledger.payment(refunded), results.merchant_of(pinned)),
            (None, None)
        );
        let mut recalled = Recalled {
            lsn: refunded,
            merchant_id: "shop",
            payer: "alice",
            settlement: "shop",
            amount: 1,
            refunded: 0,
            as_of: refund_lsn - 1,
        };
        assert_eq!(
            recall(&mut ledger, &mut results, &recalled).unwrap(),
            Recall::Stale
        );
        recalled.as_of = refund_lsn;
        recalled.refunded = 1;
        assert_eq!(
            recall(&mut ledger, &mut results, &recalled).unwrap(),
            Recall::Recalled
        );
        assert_eq!(
            recall(&mut ledger, &mut results, &recalled).unwrap(),
            Recall::Held
        );
        let (amount, declined) = ledger.refund(Some(refunded), None).unwrap();
        assert_eq!((amount, declined.is_err()), (0, true), "refunded in full already");
        let unknown = Recalled {
            payer: "nobody",
            lsn: 5,
            ..recalled
        };
        assert_eq!(
            recall(&mut ledger, &mut results, &unknown).unwrap(),
            Recall::Unknown
        );
    }
}
