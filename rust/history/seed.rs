//! Seeding a new history database from a snapshot, when the log no longer reaches back to LSN 1:
//! the snapshot's accounts (each with an 'opening' entry of its balance, so its entries still
//! sum to it) and the payment and refund results it holds, at the snapshot's LSN, in one
//! transaction; the projector then goes on from the log after it.

use std::time::Instant;

use rusqlite::params;

use super::project::{lsn_sql, status, Projector, INSERT_ENTRY, INSERT_REFUND, SET_LSN};
use crate::error::{CoreError, CoreResult};

const INSERT_SEEDED_PAYMENT: &str = "INSERT INTO payments (lsn, merchant_id, order_id, payer, \
    settlement_account, amount, currency, status, failure_code, amount_refunded, description, \
    metadata, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const INSERT_SEEDED_ACCOUNT: &str =
    "INSERT INTO accounts (account_id, currency, balance, opened_lsn) VALUES (?1, ?2, ?3, ?4)";
/// Any row at all: a seed goes only into a database that holds none.
const ANY_ROW: &str = "SELECT EXISTS (SELECT 1 FROM accounts) OR EXISTS (SELECT 1 FROM payments) \
    OR EXISTS (SELECT 1 FROM refunds) OR EXISTS (SELECT 1 FROM account_entries) \
    OR EXISTS (SELECT 1 FROM delivery_attempts)";

/// An account as the snapshot's ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedAccount {
    pub account_id: String,
    pub currency: String,
    pub balance: i64,
}

/// A payment result the snapshot holds, with what its refunds gave back by then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPayment {
    pub lsn: u64,
    pub merchant_id: String,
    pub order_id: String,
    pub payer: String,
    pub settlement_account: String,
    pub amount: i64,
    pub currency: String,
    pub failure_code: Option<String>,
    pub amount_refunded: i64,
    pub description: Option<String>,
    /// The metadata object as JSON text.
    pub metadata: Option<String>,
    pub created: i64,
}

/// A refund result the snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedRefund {
    pub lsn: u64,
    pub payment_id: String,
    pub merchant_id: String,
    pub amount: i64,
    pub currency: String,
    pub failure_code: Option<String>,
    pub reason: Option<String>,
    pub created: i64,
}

/// What a snapshot at `lsn` gives a new history database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seed {
    pub lsn: u64,
    pub accounts: Vec<SeedAccount>,
    pub payments: Vec<SeedPayment>,
    pub refunds: Vec<SeedRefund>,
}

impl Projector {
    /// Writes `seed` into this empty database in one synced transaction, `projection.lsn` set
    /// to its LSN; returns the rows written. The payments and refunds get no entries: what they
    /// moved is in the opening balances.
    ///
    /// # Errors
    /// `InvalidState` for a database that holds any row or is projected past LSN 0 (nothing is
    /// written), `HistoryStore` when `SQLite` fails (nothing is written either).
    pub fn seed(&mut self, seed: &Seed) -> CoreResult<u64> {
        let any_row: bool = self.connection.query_row(ANY_ROW, [], |row| row.get(0))?;
        if self.lsn != 0 || any_row {
            return Err(CoreError::InvalidState(format!(
                "{} is not empty (projected to LSN {}): a seed goes only into a new history",
                self.path(),
                self.lsn
            )));
        }
        self.connection.pragma_update(None, "synchronous", "FULL")?;
        let written = self.write_seed(seed);
        self.connection.pragma_update(None, "synchronous", "NORMAL")?;
        let rows = written?;
        self.balances = seed
            .accounts
            .iter()
            .map(|account| (account.account_id.clone(), account.balance))
            .collect();
        self.lsn = seed.lsn;
        self.durable_lsn = seed.lsn;
        self.synced_at = Instant::now();
        Ok(rows)
    }

    fn write_seed(&mut self, seed: &Seed) -> CoreResult<u64> {
        let lsn = lsn_sql(seed.lsn)?;
        let transaction = self.connection.transaction()?;
        {
            let mut account = transaction.prepare(INSERT_SEEDED_ACCOUNT)?;
            let mut entry = transaction.prepare(INSERT_ENTRY)?;
            for seeded in &seed.accounts {
                let balance = seeded.balance;
                account.execute(params![seeded.account_id, seeded.currency, balance, lsn])?;
                entry.execute(params![seeded.account_id, lsn, "opening", balance, balance])?;
            }
            let mut payment = transaction.prepare(INSERT_SEEDED_PAYMENT)?;
            for paid in &seed.payments {
                payment.execute(params![
                    lsn_sql(paid.lsn)?,
                    paid.merchant_id,
                    paid.order_id,
                    paid.payer,
                    paid.settlement_account,
                    paid.amount,
                    paid.currency,
                    status(paid.failure_code.as_deref()),
                    paid.failure_code,
                    paid.amount_refunded,
                    paid.description,
                    paid.metadata,
                    paid.created,
                ])?;
            }
            let mut refund = transaction.prepare(INSERT_REFUND)?;
            for refunded in &seed.refunds {
                refund.execute(params![
                    lsn_sql(refunded.lsn)?,
                    refunded.payment_id,
                    refunded.merchant_id,
                    refunded.amount,
                    refunded.currency,
                    status(refunded.failure_code.as_deref()),
                    refunded.failure_code,
                    refunded.reason,
                    refunded.created,
                ])?;
            }
            transaction.execute(SET_LSN, [lsn])?;
        }
        transaction.commit()?;
        let rows = 2 * seed.accounts.len() + seed.payments.len() + seed.refunds.len();
        Ok(rows as u64)
    }
}
