//! Accounts: interned ids, a currency each, balances in minor units with checked arithmetic, and
//! per currency the deposits minus withdrawals the balances must sum to.

use super::names::Names;
use super::{Decline, Outcome};
use crate::error::{CoreError, CoreResult};

/// No balance may exceed this (amounts are at most 10^15), nor go below minus this on overdraft.
pub const BALANCE_MAX: i64 = 1_000_000_000_000_000_000;

/// The index of an account in its `Accounts`.
pub type AccountId = u32;
/// The index of a currency in its `Accounts`.
pub type CurrencyId = u32;

/// Whose an account is: a customer's (it may pay, under its mandates) or a merchant's
/// settlement account (it receives payments and pays refunds, never a payment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Customer,
    Merchant,
}

impl Owner {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Merchant => "merchant",
        }
    }

    /// # Errors
    /// A name that is neither `customer` nor `merchant`.
    pub fn from_name(name: &str) -> CoreResult<Self> {
        match name {
            "customer" => Ok(Self::Customer),
            "merchant" => Ok(Self::Merchant),
            _ => Err(CoreError::InvalidOwner(name.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub currency: CurrencyId,
    pub balance: i64,
    pub overdraft: bool,
    pub owner: Owner,
}

impl Account {
    /// The lowest balance the account may reach.
    #[must_use]
    pub const fn floor(&self) -> i64 {
        if self.overdraft {
            -BALANCE_MAX
        } else {
            0
        }
    }

    /// The balance after debiting `amount`, or why not (an overflow is below every floor).
    ///
    /// # Errors
    /// The decline.
    pub fn debited(&self, amount: i64) -> Result<i64, Decline> {
        match self.balance.checked_sub(amount) {
            Some(balance) if balance >= self.floor() => Ok(balance),
            _ => Err(Decline::InsufficientFunds),
        }
    }

    /// The balance after crediting `amount`, or why not (an overflow is beyond the maximum).
    ///
    /// # Errors
    /// The decline.
    pub fn credited(&self, amount: i64) -> Result<i64, Decline> {
        match self.balance.checked_add(amount) {
            Some(balance) if balance <= BALANCE_MAX => Ok(balance),
            _ => Err(Decline::AmountTooLarge),
        }
    }

    #[must_use]
    pub fn in_range(&self) -> bool {
        (self.floor()..=BALANCE_MAX).contains(&self.balance)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    ids: Names,
    rows: Vec<Account>,
    currencies: Names,
    /// Per currency (by `CurrencyId`): deposits minus withdrawals.
    net_inflow: Vec<i64>,
}

impl Accounts {
    /// # Errors
    /// The state is full (over `u32::MAX` ids).
    pub fn open(&mut self, id: &str, currency: &str, overdraft: bool, owner: Owner) -> CoreResult<Outcome> {
        if self.ids.get(id).is_some() {
            return Ok(Err(Decline::AccountExists));
        }
        let currency = self.intern_currency(currency)?;
        let account = Account {
            currency,
            balance: 0,
            overdraft,
            owner,
        };
        self.restore(id, account)
    }

    /// Adds an account as a snapshot holds it, its currency interned before.
    ///
    /// # Errors
    /// The state is full (over `u32::MAX` ids).
    pub fn restore(&mut self, id: &str, account: Account) -> CoreResult<Outcome> {
        if self.ids.get(id).is_some() {
            return Ok(Err(Decline::AccountExists));
        }
        debug_assert!((account.currency as usize) < self.currencies.len());
        self.ids.intern(id)?;
        self.rows.push(account);
        Ok(Ok(()))
    }

    /// # Errors
    /// The state is full (over `u32::MAX` currencies).
    pub fn intern_currency(&mut self, currency: &str) -> CoreResult<CurrencyId> {
        let id = self.currencies.intern(currency)?;
        if id as usize == self.net_inflow.len() {
            self.net_inflow.push(0);
        }
        Ok(id)
    }

    #[must_use]
    pub fn find(&self, id: &str) -> Option<AccountId> {
        self.ids.get(id)
    }

    /// The account `id`, if it is open in `currency`.
    ///
    /// # Errors
    /// The decline.
    pub fn resolve(&self, id: &str, currency: &str) -> Result<AccountId, Decline> {
        let index = self.find(id).ok_or(Decline::AccountNotFound)?;
        if self.currencies.get(currency) == Some(self.get(index).currency) {
            Ok(index)
        } else {
            Err(Decline::CurrencyMismatch)
        }
    }

    #[must_use]
    pub fn get(&self, id: AccountId) -> &Account {
        &self.rows[id as usize]
    }

    pub fn get_mut(&mut self, id: AccountId) -> &mut Account {
        &mut self.rows[id as usize]
    }

    #[must_use]
    pub fn id_of(&self, id: AccountId) -> &str {
        self.ids.name(id)
    }

    #[must_use]
    pub fn currency_of(&self, id: AccountId) -> &str {
        self.currencies.name(self.get(id).currency)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every account with its id, in the order they were opened.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Account)> {
        self.ids.iter().zip(&self.rows)
    }

    pub fn currencies(&self) -> impl Iterator<Item = (&str, i64)> {
        self.currencies.iter().zip(self.net_inflow.iter().copied())
    }

    pub fn set_net_inflow(&mut self, currency: CurrencyId, inflow: i64) {
        self.net_inflow[currency as usize] = inflow;
    }

    /// Adds `amount` to the account and to its currency's net inflow (a deposit; negative for
    /// a withdrawal), or declines and changes nothing.
    ///
    /// # Errors
    /// The decline.
    pub fn move_in(&mut self, id: &str, amount: i64, currency: &str) -> Outcome {
        let index = self.resolve(id, currency)?;
        let account = self.get(index);
        let balance = if amount >= 0 {
            account.credited(amount)?
        } else {
            account.debited(-amount)?
        };
        let currency = account.currency as usize;
        // Cannot overflow: the net inflow is the sum of balances, each within ±BALANCE_MAX, and
        // `check_invariants` holds that; checked all the same, as every sum of money here is.
        let inflow = self.net_inflow[currency]
            .checked_add(amount)
            .ok_or(Decline::AmountTooLarge)?;
        self.net_inflow[currency] = inflow;
        self.get_mut(index).balance = balance;
        Ok(())
    }

    /// Moves `amount` between two accounts of one currency, or declines and changes nothing.
    ///
    /// # Errors
    /// The decline.
    pub fn transfer(&mut self, debit: AccountId, credit: AccountId, amount: i64) -> Outcome {
        let debited = self.get(debit).debited(amount)?;
        let credited = self.get(credit).credited(amount)?;
        self.get_mut(debit).balance = debited;
        self.get_mut(credit).balance = credited;
        Ok(())
    }

    /// Per currency, balances sum to deposits minus withdrawals; no balance breaks its floor.
    ///
    /// # Errors
    /// `InvariantBroken`, naming the breach.
    pub fn check_invariants(&self) -> CoreResult<()> {
        let mut sums = vec![0i128; self.net_inflow.len()];
        for (id, account) in self.iter() {
            if !account.in_range() {
                return Err(CoreError::InvariantBroken(format!(
                    "account {id} balance {} out of range",
                    account.balance
                )));
            }
            sums[account.currency as usize] += i128::from(account.balance);
        }
        for ((currency, inflow), sum) in self.currencies().zip(sums) {
            if sum != i128::from(inflow) {
                return Err(CoreError::InvariantBroken(format!(
                    "balances in {currency} sum to {sum}, the net inflow is {inflow}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> Accounts {
        let mut accounts = Accounts::default();
        for (id, overdraft) in [("alice", false), ("overdrawn", true)] {
            assert_eq!(accounts.open(id, "EUR", overdraft, Owner::Customer), Ok(Ok(())));
        }
        accounts
    }

    #[test]
    fn an_account_opens_once() {
        let mut accounts = accounts();
        let again = accounts.open("alice", "USD", false, Owner::Customer);
        assert_eq!(again, Ok(Err(Decline::AccountExists)));
        assert_eq!(accounts.currency_of(0), "EUR");
    }

    #[test]
    fn balances_stay_within_their_floor_and_the_maximum() {
        let mut accounts = accounts();
        assert_eq!(accounts.move_in("alice", BALANCE_MAX, "EUR"), Ok(()));
        assert_eq!(accounts.move_in("alice", 1, "EUR"), Err(Decline::AmountTooLarge));
        assert_eq!(
            accounts.move_in("alice", i64::MAX, "EUR"),
            Err(Decline::AmountTooLarge)
        );
        assert_eq!(accounts.move_in("overdrawn", -BALANCE_MAX, "EUR"), Ok(()));
        let below = accounts.move_in("overdrawn", -1, "EUR");
        assert_eq!(below, Err(Decline::InsufficientFunds));
        assert_eq!(
            accounts.move_in("alice", 1, "USD"),
            Err(Decline::CurrencyMismatch)
        );
        assert_eq!(accounts.move_in("bob", 1, "EUR"), Err(Decline::AccountNotFound));
        accounts.check_invariants().unwrap();
    }

    #[test]
    fn a_transfer_past_a_floor_changes_nothing() {
        let mut accounts = accounts();
        accounts.move_in("alice", 10, "EUR").unwrap();
        assert_eq!(accounts.transfer(0, 1, 11), Err(Decline::InsufficientFunds));
        assert_eq!(accounts.transfer(1, 0, BALANCE_MAX), Err(Decline::AmountTooLarge));
        assert_eq!((accounts.get(0).balance, accounts.get(1).balance), (10, 0));
    }

    #[test]
    fn check_invariants_catches_money_made_from_nothing() {
        let mut accounts = accounts();
        accounts.get_mut(0).balance = 5;
        let broken = accounts.check_invariants().unwrap_err().to_string();
        assert!(
            broken.contains("balances in EUR sum to 5, the net inflow is 0"),
            "{broken}"
        );
        accounts.get_mut(0).balance = -1;
        let broken = accounts.check_invariants().unwrap_err().to_string();
        assert!(
            broken.contains("account alice balance -1 out of range"),
            "{broken}"
        );
    }
}
