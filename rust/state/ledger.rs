//! The double-entry ledger: accounts, the payments and refunds that move money between them, and
//! the mandates that let a payment debit its payer.
//!
//! Money is integers in minor units. A payment debits the payer and credits the merchant's
//! settlement account, so the sum of the balances of a currency changes only by deposits and
//! withdrawals (`check_invariants`). Consent: a payment debits a payer only under a mandate the
//! payer granted that merchant, and a merchant's settlement account never pays.

use super::accounts::{AccountId, Accounts, Owner};
use super::mandates::{MandateIndex, Mandates, Terms};
use super::payments::{Payment, Payments};
use super::{Decline, Outcome, PAYMENT_ID_PREFIX};
use crate::error::{CoreError, CoreResult};

/// What a payment asks for, by the names its record gives.
#[derive(Debug, Clone, Copy)]
pub struct PaymentRequest<'a> {
    pub lsn: u64,
    pub payer: &'a str,
    pub settlement: &'a str,
    pub amount: i64,
    pub currency: &'a str,
}

impl<'a> PaymentRequest<'a> {
    #[must_use]
    pub const fn new(lsn: u64, payer: &'a str, settlement: &'a str, amount: i64, currency: &'a str) -> Self {
        Self {
            lsn,
            payer,
            settlement,
            amount,
            currency,
        }
    }
}

#[must_use]
pub fn payment_id(lsn: u64) -> String {
    format!("{PAYMENT_ID_PREFIX}{lsn}")
}

fn check_amount(amount: i64) -> CoreResult<()> {
    if amount < 0 {
        return Err(CoreError::NegativeAmount(amount));
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub(super) accounts: Accounts,
    /// By increasing LSN (the log's order), so found by binary search.
    pub(super) payments: Payments,
    pub(super) mandates: Mandates,
}

impl Ledger {
    /// # Errors
    /// The state is full.
    pub fn open_account(
        &mut self,
        id: &str,
        currency: &str,
        overdraft: bool,
        owner: Owner,
    ) -> CoreResult<Outcome> {
        self.accounts.open(id, currency, overdraft, owner)
    }

    /// The account has become a merchant's settlement account (if it is open).
    pub fn settles_merchant(&mut self, id: &str) {
        if let Some(index) = self.accounts.find(id) {
            self.accounts.get_mut(index).owner = Owner::Merchant;
        }
    }

    /// # Errors
    /// A negative amount.
    pub fn deposit(&mut self, id: &str, amount: i64, currency: &str) -> CoreResult<Outcome> {
        check_amount(amount)?;
        Ok(self.accounts.move_in(id, amount, currency))
    }

    /// # Errors
    /// A negative amount.
    pub fn withdraw(&mut self, id: &str, amount: i64, currency: &str) -> CoreResult<Outcome> {
        check_amount(amount)?;
        Ok(self.accounts.move_in(id, -amount, currency))
    }

    /// Debits the payer under its mandate for the merchant and credits the settlement account,
    /// or declines and changes nothing. An unknown payer is `mandate_missing`, like a known one
    /// without a mandate: a merchant learns nothing of accounts that never consented.
    ///
    /// # Errors
    /// A negative amount, or an LSN not above every held payment's.
    pub fn pay(
        &mut self,
        request: &PaymentRequest<'_>,
        merchant_id: &str,
        created_s: i64,
    ) -> CoreResult<Outcome> {
        self.check_request(request)?;
        Ok(self.pay_checked(request, merchant_id, created_s))
    }

    fn pay_checked(&mut self, request: &PaymentRequest<'_>, merchant_id: &str, created_s: i64) -> Outcome {
        if request.payer == request.settlement {
            return Err(Decline::PayerIsMerchant);
        }
        let payer = self.accounts.find(request.payer);
        if payer.is_some_and(|index| self.accounts.get(index).owner == Owner::Merchant) {
            return Err(Decline::PayerNotAuthorized);
        }
        let index = payer
            .and_then(|payer| self.mandates.current(payer, merchant_id))
            .ok_or(Decline::MandateMissing)?;
        self.mandates.get(index).covers(request.amount, created_s)?;
        let (payer, settlement) = self.transfer(request)?;
        self.mandates
            .get_mut(index)
            .record_debit(request.amount, created_s);
        self.record(request, payer, settlement, Some(index));
        Ok(())
    }

    /// A payment as logged before mandates existed (a PAYMENT record): replayed by the rules it
    /// was applied under, so old logs give their logged outcomes.
    ///
    /// # Errors
    /// A negative amount, or an LSN not above every held payment's.
    pub fn pay_as_before_consent(&mut self, request: &PaymentRequest<'_>) -> CoreResult<Outcome> {
        self.check_request(request)?;
        if request.payer == request.settlement {
            return Ok(Err(Decline::PayerIsMerchant));
        }
        Ok(self.transfer(request).map(|(payer, settlement)| {
            self.record(request, payer, settlement, None);
        }))
    }

    fn check_request(&self, request: &PaymentRequest<'_>) -> CoreResult<()> {
        check_amount(request.amount)?;
        match self.payments.last() {
            Some(last) if last.lsn >= request.lsn => Err(CoreError::InvalidState(format!(
                "payment {} is not newer than {}",
                payment_id(request.lsn),
                payment_id(last.lsn)
            ))),
            _ => Ok(()),
        }
    }

    /// Moves the payment's amount from the payer to the settlement account, or declines.
    fn transfer(&mut self, request: &PaymentRequest<'_>) -> Result<(AccountId, AccountId), Decline> {
        let payer = self.accounts.resolve(request.payer, request.currency)?;
        let settlement = self.accounts.resolve(request.settlement, request.currency)?;
        self.accounts.transfer(payer, settlement, request.amount)?;
        Ok((payer, settlement))
    }

    fn record(
        &mut self,
        request: &PaymentRequest<'_>,
        payer: AccountId,
        settlement: AccountId,
        mandate: Option<MandateIndex>,
    ) {
        self.payments.push(Payment {
            lsn: request.lsn,
            amount: request.amount,
            refunded: 0,
            payer,
            settlement,
            mandate,
        });
    }

    /// Moves `amount` (None: all not yet refunded) back from the settlement account to the
    /// payer; returns the amount and the decline, if declined. `lsn` None: the refund named
    /// an id that is no payment's.
    ///
    /// # Errors
    /// A negative amount.
    pub fn refund(&mut self, lsn: Option<u64>, amount: Option<i64>) -> CoreResult<(i64, Outcome)> {
        if let Some(amount) = amount {
            check_amount(amount)?;
        }
        let Some(payment) = lsn.and_then(|lsn| self.payments.get_mut(lsn)) else {
            return Ok((amount.unwrap_or(0), Err(Decline::PaymentNotRefundable)));
        };
        let remaining = payment.amount - payment.refunded;
        let wanted = amount.unwrap_or(remaining);
        if wanted == 0 || wanted > remaining {
            return Ok((wanted, Err(Decline::RefundExceedsPayment)));
        }
        let moved = self.accounts.transfer(payment.settlement, payment.payer, wanted);
        if moved.is_ok() {
            payment.refunded += wanted;
        }
        Ok((wanted, moved))
    }

    /// Records a checked mandate grant at `lsn`; it replaces the payer's expired one for that
    /// merchant.
    ///
    /// # Errors
    /// No such account, or an LSN not above every held mandate's.
    pub fn grant_mandate(&mut self, lsn: u64, grant: &Grant<'_>) -> CoreResult<MandateIndex> {
        let payer = self
            .accounts
            .find(grant.account_id)
            .ok_or_else(|| CoreError::UnknownAccount(grant.account_id.to_owned()))?;
        let terms = Terms {
            payer,
            merchant: self.mandates.intern_merchant(grant.merchant_id)?,
            amount_max_per_payment: grant.amount_max_per_payment,
            amount_max_per_day: grant.amount_max_per_day,
            expires_at_s: grant.expires_at_s,
            created_s: grant.created_s,
        };
        self.mandates.add(super::mandates::Mandate::granted(lsn, terms))
    }

    /// # Errors
    /// No mandate was granted at `lsn`.
    pub fn revoke_mandate(&mut self, lsn: u64, revoked_s: i64) -> CoreResult<MandateIndex> {
        self.mandates.revoke(lsn, revoked_s)
    }

    /// The succeeded payment logged at `lsn`, if held (hot, kept or recalled).
    #[must_use]
    pub fn payment(&self, lsn: u64) -> Option<&Payment> {
        self.payments.get(lsn)
    }

    #[must_use]
    pub const fn payments(&self) -> &Payments {
        &self.payments
    }

    pub fn payments_mut(&mut self) -> &mut Payments {
        &mut self.payments
    }

    #[must_use]
    pub const fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    #[must_use]
    pub const fn mandates(&self) -> &Mandates {
        &self.mandates
    }

    #[must_use]
    pub fn payment_count(&self) -> usize {
        self.payments.len()
    }
}

/// A mandate's terms as an admin grants them, by name.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    pub account_id: &'a str,
    pub merchant_id: &'a str,
    pub amount_max_per_payment: i64,
    pub amount_max_per_day: Option<i64>,
    pub expires_at_s: Option<i64>,
    pub created_s: i64,
}

fn without_consent(payment: &Payment, accounts: &Accounts) -> CoreError {
    CoreError::InvariantBroken(format!(
        "payment {} debited {} without consent",
        payment_id(payment.lsn),
        accounts.id_of(payment.payer)
    ))
}

impl Ledger {
    /// Per currency, balances sum to deposits minus withdrawals; no balance breaks its floor; no
    /// payment is refunded beyond its amount; no money left an account without its owner's
    /// consent.
    ///
    /// # Errors
    /// `InvariantBroken`, naming the breach.
    pub fn check_invariants(&self) -> CoreResult<()> {
        self.accounts.check_invariants()?;
        // Whether a payment under the consent rules came before (log order).
        let mut consented = false;
        for payment in self.payments.iter() {
            if !(0..=payment.amount).contains(&payment.refunded) {
                return Err(CoreError::InvariantBroken(format!(
                    "payment {} refunded {}",
                    payment_id(payment.lsn),
                    payment.refunded
                )));
            }
        }
        // The payments held past the hot window were checked while hot; a recalled one comes
        // from history.db without its mandate: consent is checked on the hot ones.
        for payment in self.payments.hot() {
            // Consent: a mandate of the payer allowed the payment, within its per-payment
            // limit (the daily one is checked on the mandate's spend).
            let Some(index) = payment.mandate else {
                if consented {
                    return Err(without_consent(payment, &self.accounts));
                }
                continue; // logged before consent was checked: such payments all come first
            };
            consented = true;
            let terms = &self.mandates.get(index).terms;
            if terms.payer != payment.payer || payment.amount > terms.amount_max_per_payment {
                return Err(without_consent(payment, &self.accounts));
            }
        }
        self.mandates.check_invariants()
    }

    /// What only a payment's result tells (the ledger knows neither whose a payment is nor when
    /// it was made): the succeeded payment at `lsn`, if made under a mandate, was made by the
    /// mandate's merchant before the mandate's expiry.
    ///
    /// # Errors
    /// `InvariantBroken`: no such payment, or its mandate did not allow it.
    pub fn check_made(&self, lsn: u64, merchant_id: &str, created_s: i64) -> CoreResult<()> {
        let payment = self.payment(lsn).ok_or_else(|| {
            CoreError::InvariantBroken(format!(
                "payment {} succeeded but the ledger holds no entry for it",
                payment_id(lsn)
            ))
        })?;
        let Some(mandate) = payment.mandate else {
            return Ok(()); // logged before consent (check_invariants: no consented one is so)
        };
        let mandate = self.mandates.get(mandate);
        if self.mandates.merchant_name(mandate.terms.merchant) != merchant_id || mandate.expired(created_s) {
            return Err(without_consent(payment, &self.accounts));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub const NOW_S: i64 = 1_795_996_800 + 3600;

    pub fn request(lsn: u64, payer: &str, amount: i64) -> PaymentRequest<'_> {
        PaymentRequest::new(lsn, payer, "shop", amount, "EUR")
    }

    pub fn grant(account_id: &str, amount_max_per_payment: i64) -> Grant<'_> {
        Grant {
            account_id,
            merchant_id: "shop",
            amount_max_per_payment,
            amount_max_per_day: None,
            expires_at_s: None,
            created_s: NOW_S,
        }
    }

    /// alice (1000 EUR, a mandate for "shop" of up to 500 a payment) and the merchant's "shop".
    pub fn shop_ledger() -> Ledger {
        let mut ledger = Ledger::default();
        ledger
            .open_account("alice", "EUR", false, Owner::Customer)
            .unwrap()
            .unwrap();
        ledger
            .open_account("shop", "EUR", false, Owner::Merchant)
            .unwrap()
            .unwrap();
        ledger
            .open_account("usd", "USD", false, Owner::Customer)
            .unwrap()
            .unwrap();
        ledger.deposit("alice", 1000, "EUR").unwrap().unwrap();
        ledger.grant_mandate(1, &grant("alice", 500)).unwrap();
        ledger
    }

    #[test]
    fn a_payment_moves_money_under_its_mandate() {
        let mut ledger = shop_ledger();
        assert_eq!(ledger.pay(&request(2, "alice", 400), "shop", NOW_S), Ok(Ok(())));
        let balances = [0, 1].map(|id| ledger.accounts.get(id).balance);
        assert_eq!(balances, [600, 400]);
        assert_eq!(ledger.payment(2).unwrap().mandate, Some(0));
        assert_eq!(ledger.mandates.get(0).spent, 400);
        ledger.check_invariants().unwrap();
    }

    #[test]
    fn a_payment_declines_in_the_order_of_the_python_ledger() {
        let mut ledger = shop_ledger();
        let cases = [
            (request(2, "shop", 1), "shop", Decline::PayerIsMerchant),
            (request(2, "nobody", 1), "shop", Decline::MandateMissing),
            (request(2, "alice", 1), "other", Decline::MandateMissing),
            (request(2, "alice", 501), "shop", Decline::MandateAmountExceeded),
            (
                PaymentRequest {
                    currency: "USD",
                    ..request(2, "alice", 1)
                },
                "shop",
                Decline::CurrencyMismatch,
            ),
            (
                PaymentRequest {
                    settlement: "nowhere",
                    ..request(2, "alice", 1)
                },
                "shop",
                Decline::AccountNotFound,
            ),
            (
                PaymentRequest {
                    settlement: "usd",
                    ..request(2, "alice", 1)
                },
                "shop",
                Decline::CurrencyMismatch,
            ),
        ];
        for (request, merchant_id, decline) in cases {
            assert_eq!(
                ledger.pay(&request, merchant_id, NOW_S),
                Ok(Err(decline)),
                "{request:?}"
            );
        }
        ledger.deposit("alice", 0, "EUR").unwrap().unwrap();
        ledger.withdraw("alice", 700, "EUR").unwrap().unwrap();
        let short = ledger.pay(&request(2, "alice", 301), "shop", NOW_S);
        assert_eq!(short, Ok(Err(Decline::InsufficientFunds)));
        assert_eq!(ledger.payment_count(), 0);
        assert_eq!(ledger.mandates.get(0).spent, 0);
    }

    #[test]
    fn a_settlement_account_never_pays() {
        let mut ledger = shop_ledger();
        ledger
            .open_account("other", "EUR", false, Owner::Merchant)
            .unwrap()
            .unwrap();
        let theft = PaymentRequest {
            settlement: "other",
            ..request(2, "shop", 1)
        };
        assert_eq!(
            ledger.pay(&theft, "other", NOW_S),
            Ok(Err(Decline::PayerNotAuthorized))
        );
    }

    #[test]
    fn payments_are_taken_in_log_order_only() {
        let mut ledger = shop_ledger();
        ledger
            .pay(&request(5, "alice", 1), "shop", NOW_S)
            .unwrap()
            .unwrap();
        assert!(ledger.pay(&request(5, "alice", 1), "shop", NOW_S).is_err());
        assert!(ledger.pay_as_before_consent(&request(3, "alice", 1)).is_err());
        assert!(ledger.pay(&request(6, "alice", -1), "shop", NOW_S).is_err());
        assert_eq!(ledger.payment_count(), 1);
    }

    #[test]
    fn refunds_never_exceed_the_payment() {
        let mut ledger = shop_ledger();
        ledger
            .pay(&request(2, "alice", 400), "shop", NOW_S)
            .unwrap()
            .unwrap();
        assert_eq!(ledger.refund(Some(2), Some(150)), Ok((150, Ok(()))));
        assert_eq!(
            ledger.refund(Some(2), Some(251)),
            Ok((251, Err(Decline::RefundExceedsPayment)))
        );
        assert_eq!(ledger.refund(Some(2), None), Ok((250, Ok(()))));
        assert_eq!(
            ledger.refund(Some(2), None),
            Ok((0, Err(Decline::RefundExceedsPayment)))
        );
        assert_eq!(
            ledger.refund(None, Some(1)),
            Ok((1, Err(Decline::PaymentNotRefundable)))
        );
        assert_eq!(ledger.accounts.get(0).balance, 1000);
        ledger.check_invariants().unwrap();
    }

    /// A change to a payment entry, and the breach `check_invariants` must name.
    type Corruption = (fn(&mut Payment), &'static str);

    #[test]
    fn check_invariants_catches_a_corrupted_payment_entry() {
        let mut ledger = shop_ledger();
        ledger
            .open_account("bob", "EUR", false, Owner::Customer)
            .unwrap()
            .unwrap();
        ledger.grant_mandate(2, &grant("bob", 500)).unwrap();
        ledger
            .pay_as_before_consent(&request(3, "alice", 100))
            .unwrap()
            .unwrap();
        for lsn in [4, 5] {
            ledger
                .pay(&request(lsn, "alice", 100), "shop", NOW_S)
                .unwrap()
                .unwrap();
        }
        ledger.check_invariants().unwrap();
        let corruptions: [Corruption; 3] = [
            (
                |p| p.mandate = None,
                "payment pay_5 debited alice without consent",
            ),
            (
                |p| p.mandate = Some(1),
                "payment pay_5 debited alice without consent",
            ),
            (|p| p.refunded = 101, "payment pay_5 refunded 101"),
        ];
        for (corrupt, breach) in corruptions {
            let mut broken = ledger.clone();
            let last = broken.payments.last().unwrap().lsn;
            corrupt(broken.payments.get_mut(last).unwrap());
            let error = broken.check_invariants().unwrap_err().to_string();
            assert!(error.contains(breach), "{error}");
        }
    }

    #[test]
    fn check_made_holds_a_payment_to_its_mandates_merchant_and_expiry() {
        let mut ledger = shop_ledger();
        ledger
            .pay(&request(2, "alice", 100), "shop", NOW_S)
            .unwrap()
            .unwrap();
        ledger.check_made(2, "shop", NOW_S).unwrap();
        let error = ledger.check_made(2, "thief", NOW_S).unwrap_err().to_string();
        assert!(
            error.contains("payment pay_2 debited alice without consent"),
            "{error}"
        );
        ledger.mandates.get_mut(0).terms.expires_at_s = Some(NOW_S);
        assert!(ledger.check_made(2, "shop", NOW_S).is_err());
        assert!(ledger.check_made(3, "shop", NOW_S).is_err());
    }
}
