//! Mandates: a payer account's standing consent that one merchant may debit it, within a limit
//! per payment, optionally per UTC day, and optionally until it expires (see
//! `python/instapay/mandates.py` for the rules in prose). A payment's day is that of its logged
//! `created` time, never the clock at replay, so replays decide as the live run did.

use std::collections::HashMap;

use super::accounts::AccountId;
use super::names::Names;
use super::{Decline, MANDATE_ID_PREFIX};
use crate::error::{CoreError, CoreResult};

pub const SECONDS_PER_DAY: i64 = 86_400;

/// The index of a mandate in its `Mandates` (grant order).
pub type MandateIndex = u32;
/// The index of a merchant id interned by `Mandates`.
pub type MerchantId = u32;

/// Days since 1970-01-01, UTC: the day a daily limit counts in.
#[must_use]
pub const fn utc_day(unix_s: i64) -> i64 {
    unix_s.div_euclid(SECONDS_PER_DAY)
}

/// A mandate's terms, as granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub payer: AccountId,
    pub merchant: MerchantId,
    pub amount_max_per_payment: i64,
    pub amount_max_per_day: Option<i64>,
    pub expires_at_s: Option<i64>,
    pub created_s: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mandate {
    /// The LSN of its grant: its id is `mdt_<lsn>`.
    pub lsn: u64,
    pub terms: Terms,
    pub revoked_s: Option<i64>,
    /// The UTC day of the latest debit, and the total debited on that day.
    pub spent_day: i64,
    pub spent: i64,
}

impl Mandate {
    #[must_use]
    pub const fn granted(lsn: u64, terms: Terms) -> Self {
        Self {
            lsn,
            terms,
            revoked_s: None,
            spent_day: 0,
            spent: 0,
        }
    }

    #[must_use]
    pub fn expired(&self, now_s: i64) -> bool {
        self.terms.expires_at_s.is_some_and(|at_s| now_s >= at_s)
    }

    /// Why this mandate does not cover a payment of `amount` made at `created_s`, if so. A
    /// payment stamped before the latest debit's day (the clock stepped back) counts into that
    /// later day: never a fresh allowance.
    ///
    /// # Errors
    /// The decline.
    pub fn covers(&self, amount: i64, created_s: i64) -> Result<(), Decline> {
        if self.expired(created_s) {
            return Err(Decline::MandateExpired);
        }
        if amount > self.terms.amount_max_per_payment {
            return Err(Decline::MandateAmountExceeded);
        }
        if let Some(per_day) = self.terms.amount_max_per_day {
            let spent = if utc_day(created_s) <= self.spent_day {
                self.spent
            } else {
                0
            };
            // An overflowing sum is over every limit.
            if spent.checked_add(amount).is_none_or(|total| total > per_day) {
                return Err(Decline::MandateDailyLimitExceeded);
            }
        }
        Ok(())
    }

    /// Counts a debit that `covers` allowed.
    pub fn record_debit(&mut self, amount: i64, created_s: i64) {
        let day = utc_day(created_s);
        if day > self.spent_day {
            self.spent_day = day;
            self.spent = amount;
        } else {
            self.spent += amount;
        }
    }

    #[must_use]
    pub fn id(&self) -> String {
        format!("{MANDATE_ID_PREFIX}{}", self.lsn)
    }
}

/// Every account's mandates, and per payer the one each merchant may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mandates {
    merchants: Names,
    /// In grant order, so by increasing LSN.
    granted: Vec<Mandate>,
    by_account: HashMap<AccountId, Vec<MandateIndex>>,
    /// (payer, merchant) -> its newest mandate not revoked: the lookup of every payment.
    current: HashMap<(AccountId, MerchantId), MandateIndex>,
}

impl Mandates {
    /// # Errors
    /// The state is full (over `u32::MAX` merchant ids).
    pub fn intern_merchant(&mut self, merchant_id: &str) -> CoreResult<MerchantId> {
        self.merchants.intern(merchant_id)
    }

    #[must_use]
    pub fn merchant_name(&self, merchant: MerchantId) -> &str {
        self.merchants.name(merchant)
    }

    pub fn merchant_names(&self) -> impl Iterator<Item = &str> {
        self.merchants.iter()
    }

    /// Files a mandate newer than every one held (grants, and snapshot rows in grant order): it
    /// becomes the pair's current one, or, revoked, leaves the pair none, as its revocation did
    /// (an older, expired mandate must not come back from a snapshot).
    ///
    /// # Errors
    /// Its LSN is not above every held mandate's, or its merchant is not interned here.
    pub fn add(&mut self, mandate: Mandate) -> CoreResult<MandateIndex> {
        if self.granted.last().is_some_and(|last| last.lsn >= mandate.lsn) {
            return Err(CoreError::InvalidState(format!(
                "mandate {} is not newer than every mandate held",
                mandate.id()
            )));
        }
        if mandate.terms.merchant as usize >= self.merchants.len() {
            return Err(CoreError::InvalidState(format!(
                "mandate {} names no known merchant",
                mandate.id()
            )));
        }
        let index = MandateIndex::try_from(self.granted.len())
            .map_err(|_| CoreError::StateFull { what: "mandates" })?;
        let pair = (mandate.terms.payer, mandate.terms.merchant);
        self.by_account.entry(pair.0).or_default().push(index);
        if mandate.revoked_s.is_none() {
            self.current.insert(pair, index);
        } else {
            self.current.remove(&pair);
        }
        self.granted.push(mandate);
        Ok(index)
    }

    /// # Errors
    /// No mandate was granted at `lsn`.
    pub fn revoke(&mut self, lsn: u64, revoked_s: i64) -> CoreResult<MandateIndex> {
        let index = self
            .find(lsn)
            .ok_or_else(|| CoreError::UnknownMandate(format!("{MANDATE_ID_PREFIX}{lsn}")))?;
        let mandate = &mut self.granted[index as usize];
        mandate.revoked_s = Some(revoked_s);
        let pair = (mandate.terms.payer, mandate.terms.merchant);
        if self.current.get(&pair) == Some(&index) {
            self.current.remove(&pair);
        }
        Ok(index)
    }

    /// The mandate granted at `lsn`.
    #[must_use]
    pub fn find(&self, lsn: u64) -> Option<MandateIndex> {
        let index = self.granted.binary_search_by_key(&lsn, |m| m.lsn).ok()?;
        MandateIndex::try_from(index).ok()
    }

    /// The payer's mandate for the merchant that is not revoked (it may have expired).
    #[must_use]
    pub fn current(&self, payer: AccountId, merchant_id: &str) -> Option<MandateIndex> {
        let merchant = self.merchants.get(merchant_id)?;
        self.current.get(&(payer, merchant)).copied()
    }

    #[must_use]
    pub fn get(&self, index: MandateIndex) -> &Mandate {
        &self.granted[index as usize]
    }

    pub fn get_mut(&mut self, index: MandateIndex) -> &mut Mandate {
        &mut self.granted[index as usize]
    }

    /// An account's mandates, oldest first.
    #[must_use]
    pub fn of_account(&self, payer: AccountId) -> &[MandateIndex] {
        self.by_account.get(&payer).map_or(&[], Vec::as_slice)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.granted.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.granted.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mandate> {
        self.granted.iter()
    }

    /// No mandate spent beyond its daily limit; each current one is filed under its own pair
    /// and not revoked.
    ///
    /// # Errors
    /// `InvariantBroken`, naming the breach.
    pub fn check_invariants(&self) -> CoreResult<()> {
        for mandate in &self.granted {
            if let Some(per_day) = mandate.terms.amount_max_per_day {
                if mandate.spent > per_day {
                    return Err(CoreError::InvariantBroken(format!(
                        "mandate {} spent {} of {per_day} in a day",
                        mandate.id(),
                        mandate.spent
                    )));
                }
            }
        }
        for (&(payer, merchant), &index) in &self.current {
            let mandate = self.get(index);
            if (mandate.terms.payer, mandate.terms.merchant) != (payer, merchant) {
                return Err(CoreError::InvariantBroken(format!(
                    "mandate {} is filed under the wrong pair",
                    mandate.id()
                )));
            }
            if mandate.revoked_s.is_some() {
                return Err(CoreError::InvariantBroken(format!(
                    "revoked mandate {} still allows payments",
                    mandate.id()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-01T00:00:00Z
    const DAY_START_S: i64 = 1_795_996_800;

    fn mandates_with(per_payment: i64, per_day: Option<i64>, expires_at_s: Option<i64>) -> Mandates {
        let mut mandates = Mandates::default();
        let merchant = mandates.intern_merchant("shop").unwrap();
        let terms = Terms {
            payer: 0,
            merchant,
            amount_max_per_payment: per_payment,
            amount_max_per_day: per_day,
            expires_at_s,
            created_s: DAY_START_S,
        };
        mandates.add(Mandate::granted(1, terms)).unwrap();
        mandates
    }

    #[test]
    fn a_mandate_declines_in_the_order_expiry_per_payment_per_day() {
        let mandates = mandates_with(300, Some(300), Some(DAY_START_S + 10));
        let mandate = mandates.get(0);
        assert_eq!(
            mandate.covers(301, DAY_START_S + 10),
            Err(Decline::MandateExpired)
        );
        assert_eq!(
            mandate.covers(301, DAY_START_S),
            Err(Decline::MandateAmountExceeded)
        );
        assert_eq!(mandate.covers(300, DAY_START_S), Ok(()));
        assert_eq!(
            mandate.covers(i64::MAX, DAY_START_S),
            Err(Decline::MandateAmountExceeded)
        );
    }

    #[test]
    fn daily_spend_counts_the_utc_day_and_never_a_day_before_the_latest() {
        let mut mandates = mandates_with(1000, Some(1000), None);
        let mandate = mandates.get_mut(0);
        mandate.record_debit(1000, DAY_START_S + SECONDS_PER_DAY);
        let earlier = mandate.covers(1, DAY_START_S);
        assert_eq!(earlier, Err(Decline::MandateDailyLimitExceeded));
        assert_eq!(mandate.covers(1000, DAY_START_S + 2 * SECONDS_PER_DAY), Ok(()));
        mandate.record_debit(1, DAY_START_S);
        assert_eq!(
            (mandate.spent_day, mandate.spent),
            (utc_day(DAY_START_S) + 1, 1001)
        );
        let broken = mandates.check_invariants().unwrap_err().to_string();
        assert!(
            broken.contains("mandate mdt_1 spent 1001 of 1000 in a day"),
            "{broken}"
        );
    }

    #[test]
    fn a_revoked_mandate_is_no_pairs_current_one() {
        let mut mandates = mandates_with(1, None, None);
        assert_eq!(mandates.current(0, "shop"), Some(0));
        assert_eq!(mandates.current(0, "other"), None);
        assert_eq!(mandates.revoke(1, DAY_START_S).unwrap(), 0);
        assert_eq!(mandates.current(0, "shop"), None);
        let unknown = CoreError::UnknownMandate("mdt_2".to_owned());
        assert_eq!(mandates.revoke(2, DAY_START_S), Err(unknown));
        assert_eq!(mandates.of_account(0), [0]);
        mandates.check_invariants().unwrap();
    }

    #[test]
    fn mandates_are_added_in_grant_order_only() {
        let mut mandates = mandates_with(1, None, None);
        let older = Mandate::granted(1, mandates.get(0).terms.clone());
        assert!(mandates.add(older).is_err());
        assert_eq!(mandates.len(), 1);
    }

    #[test]
    fn check_invariants_catches_a_revoked_mandate_still_current() {
        let mut mandates = mandates_with(1, None, None);
        mandates.get_mut(0).revoked_s = Some(DAY_START_S);
        let broken = mandates.check_invariants().unwrap_err().to_string();
        assert!(
            broken.contains("revoked mandate mdt_1 still allows payments"),
            "{broken}"
        );
    }
}
