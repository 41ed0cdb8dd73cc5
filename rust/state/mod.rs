//! The ledger state in native memory: accounts and balances, payments kept for refunds, mandates
//! and their spend, and the rules that change them (see `python/instapay/ledger.py` and
//! `mandates.py` for the Python API over it). Plain Rust, no pyo3: a later step verifies, parses,
//! reserves and applies a whole batch here in one call.
//!
//! Single writer and deterministic: the same operations in the same (log) order give the same
//! state, and the same encoded snapshot, whether it was built live, from the log or from a
//! snapshot. Account ids, currencies and merchant ids are interned once; a payment is keyed by
//! its LSN (its id is `pay_<lsn>`), a mandate by its LSN (`mdt_<lsn>`).

pub mod accounts;
pub mod chunked;
pub(crate) mod codec;
pub mod evict;
pub mod ledger;
pub mod legacy;
pub mod mandates;
pub mod names;
pub mod payments;
pub mod records;
pub mod replay;
pub mod results;
pub mod snapshot;

pub use ledger::Ledger;

/// Why an operation was declined: a stored, replayable result. The codes are the `Failure`
/// values of `python/instapay/model.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    AccountNotFound,
    AccountExists,
    CurrencyMismatch,
    InsufficientFunds,
    /// The amount would take a balance beyond `BALANCE_MAX`.
    AmountTooLarge,
    PayerIsMerchant,
    PaymentNotRefundable,
    RefundExceedsPayment,
    PayerNotAuthorized,
    MandateMissing,
    MandateExpired,
    MandateAmountExceeded,
    MandateDailyLimitExceeded,
}

impl Decline {
    #[must_use]
    pub const fn code(self) -> &'static str {
        match self {
            Self::AccountNotFound => "account_not_found",
            Self::AccountExists => "account_exists",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::InsufficientFunds => "insufficient_funds",
            Self::AmountTooLarge => "amount_too_large",
            Self::PayerIsMerchant => "payer_is_merchant",
            Self::PaymentNotRefundable => "payment_not_refundable",
            Self::RefundExceedsPayment => "refund_exceeds_payment",
            Self::PayerNotAuthorized => "payer_not_authorized",
            Self::MandateMissing => "mandate_missing",
            Self::MandateExpired => "mandate_expired",
            Self::MandateAmountExceeded => "mandate_amount_exceeded",
            Self::MandateDailyLimitExceeded => "mandate_daily_limit_exceeded",
        }
    }
}

/// What an operation that may be declined returns: `Ok` when it applied.
pub type Outcome = Result<(), Decline>;

pub const PAYMENT_ID_PREFIX: &str = "pay_";
pub const MANDATE_ID_PREFIX: &str = "mdt_";

/// The LSN an id such as `pay_12` names, written as the engine writes it (the prefix, then
/// ASCII digits without a leading zero: `u64::from_str` takes a `+`, which `to_string` never writes).
#[must_use]
pub fn lsn_in_id(id: &str, prefix: &str) -> Option<u64> {
    let digits = id.strip_prefix(prefix)?;
    let lsn = digits.parse::<u64>().ok()?;
    (lsn.to_string() == digits).then_some(lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_has_one_spelling() {
        assert_eq!(lsn_in_id("pay_12", PAYMENT_ID_PREFIX), Some(12));
        assert_eq!(lsn_in_id("pay_0", PAYMENT_ID_PREFIX), Some(0));
        for id in ["pay_012", "pay_+12", "pay_", "mdt_12", "pay_18446744073709551616"] {
            assert_eq!(lsn_in_id(id, PAYMENT_ID_PREFIX), None, "{id}");
        }
    }
}
