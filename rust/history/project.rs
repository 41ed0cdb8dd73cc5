//! The projector: applies durable WAL frames to the history database, a call's records in one
//! transaction that also moves `projection.lsn` to the last of them, so the database always
//! holds exactly the records up to its LSN (a crash mid-transaction leaves the previous LSN, and
//! the records after it are projected again from the log).
//!
//! Durability: the rows are committed with `synchronous=NORMAL` (in WAL mode a commit is not
//! synced; a power loss may take the last ones back, which the log projects again). What lets
//! log segments go is `durable_lsn`, and it only moves on a commit made with
//! `synchronous=FULL` (the WAL file is synced, and with it every commit before): one every
//! `DURABLE_EVERY`, or when the caller asks (`sync`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, CachedStatement, Connection, OptionalExtension, Transaction};

use super::records::{
    AccountRecord, Deliveries, OPERATION_DELIVERIES, OPERATION_DEPOSIT, OPERATION_OPEN_ACCOUNT,
    OPERATION_WITHDRAW,
};
use super::{SCHEMA, SCHEMA_VERSION};
use crate::error::{CoreError, CoreResult};
use crate::state::records::{
    decode, PaymentRecord, RefundRecord, OPERATION_PAYMENT, OPERATION_PAYMENT_WITH_CONSENT, OPERATION_REFUND,
    VERSION_CURRENT,
};
use crate::state::{lsn_in_id, PAYMENT_ID_PREFIX};
use crate::wal::{frame_at, Frame};

/// A commit made durable at least this often while records keep coming.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// How long a write waits for a lock another connection holds before it fails (and the caller
/// retries): readers never hold one in WAL mode, only another writer would.
const BUSY_TIMEOUT: Duration = Duration::from_millis(200);
/// The database file and its -wal and -shm files (`SQLite` gives them the database's mode).
const FILE_MODE: u32 = 0o600;
const VERSION_SHIFT: u16 = 8;
/// WAL pages (4 KiB) between automatic checkpoints, and the page cache (`configure` says why).
const WAL_CHECKPOINT_PAGES: i64 = 16_384;
const CACHE_KIB: i64 = 64 * 1024;

pub(super) const INSERT_PAYMENT: &str = "INSERT INTO payments (lsn, merchant_id, order_id, payer, \
    settlement_account, amount, currency, status, failure_code, description, metadata, created) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
pub(super) const INSERT_REFUND: &str =
    "INSERT INTO refunds (lsn, payment_id, merchant_id, amount, currency, \
    status, failure_code, reason, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const PAYMENT_OF_REFUND: &str =
    "SELECT payer, settlement_account, currency FROM payments WHERE lsn = ?1 AND status = 'succeeded'";
const ADD_REFUNDED: &str = "UPDATE payments SET amount_refunded = amount_refunded + ?2 WHERE lsn = ?1";
const INSERT_ACCOUNT: &str =
    "INSERT INTO accounts (account_id, currency, balance, opened_lsn) VALUES (?1, ?2, 0, ?3)";
const SET_BALANCE: &str = "UPDATE accounts SET balance = ?2 WHERE account_id = ?1";
pub(super) const INSERT_ENTRY: &str =
    "INSERT INTO account_entries (account_id, lsn, kind, amount, balance_after) \
    VALUES (?1, ?2, ?3, ?4, ?5)";
const INSERT_ATTEMPT: &str = "INSERT INTO delivery_attempts (logged_lsn, position, event_lsn, at_ms, \
    outcome, delivered, next_at_ms, round) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
pub(super) const SET_LSN: &str = "UPDATE projection SET lsn = ?1";

impl From<rusqlite::Error> for CoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::HistoryStore(error.to_string())
    }
}

/// What one `project` call did: where in the data it stopped, the LSN projected now, the records
/// and rows it wrote, and the version-0 (JSON) record it stopped at, if any: the caller converts
/// it (`engine/records.py` reads every version), projects it, and goes on after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub end: usize,
    pub lsn: u64,
    pub records: usize,
    pub rows: u64,
    pub legacy: Option<Frame>,
}

/// The frames a call applies (each with its operation), where they end, and the version-0
/// record they stop before.
type Taken = (Vec<(Frame, u16)>, usize, Option<Frame>);

/// One change of a balance, inserted once the transaction's changes are sorted.
struct Entry<'a> {
    /// Borrowed from the payload, or read from the payment row for a refund.
    account_id: Cow<'a, str>,
    lsn: u64,
    kind: &'static str,
    amount: i64,
}

/// The one writer of a history database.
pub struct Projector {
    path: String,
    pub(super) connection: Connection,
    pub(super) lsn: u64,
    pub(super) durable_lsn: u64,
    /// Every account's balance as of `lsn` (what `accounts.balance` holds).
    pub(super) balances: HashMap<String, i64>,
    pub(super) synced_at: Instant,
}

fn store_error(path: &str, error: &rusqlite::Error) -> CoreError {
    CoreError::HistoryStore(format!("{path}: {error}"))
}

/// The operation of a logged type, if the history keeps its rows, and whether it is version 0.
fn projected_operation(record_type: u16) -> CoreResult<Option<(u16, bool)>> {
    let operation = record_type & ((1 << VERSION_SHIFT) - 1);
    let version = record_type >> VERSION_SHIFT;
    let projected = matches!(
        operation,
        OPERATION_OPEN_ACCOUNT
            | OPERATION_DEPOSIT
            | OPERATION_WITHDRAW
            | OPERATION_PAYMENT
            | OPERATION_REFUND
            | OPERATION_DELIVERIES
            | OPERATION_PAYMENT_WITH_CONSENT
    );
    if !projected {
        return Ok(None);
    }
    if version > VERSION_CURRENT {
        return Err(CoreError::CorruptRecord {
            what: "logged",
            detail: format!("type {record_type} is of a version newer than this code"),
        });
    }
    Ok(Some((operation, version == 0)))
}

impl Projector {
    /// Opens (or creates, owner-only, with the schema in one transaction) the history database
    /// at `path`. A database of another schema version is refused and left as it is.
    ///
    /// # Errors
    /// `HistoryStore` when `SQLite` fails, `HistorySchema` for another version or a file that is
    /// no history database.
    pub fn open(path: &Path) -> CoreResult<Self> {
        let shown = path.display().to_string();
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)
            .map_err(|error| CoreError::HistoryStore(format!("{shown}: {error}")))?;
        let mut connection = Connection::open(path).map_err(|error| store_error(&shown, &error))?;
        Self::configure(&connection, &shown)?;
        let lsn = Self::schema(&mut connection, &shown)?;
        let balances = Self::load_balances(&connection).map_err(|error| store_error(&shown, &error))?;
        Ok(Self {
            path: shown,
            connection,
            lsn,
            durable_lsn: lsn,
            balances,
            synced_at: Instant::now(),
        })
    }

    fn configure(connection: &Connection, path: &str) -> CoreResult<()> {
        let wrap = |error: rusqlite::Error| store_error(path, &error);
        connection.busy_timeout(BUSY_TIMEOUT).map_err(wrap)?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(wrap)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(CoreError::HistoryStore(format!(
                "{path}: the database stays in journal mode {mode}, not WAL"
            )));
        }
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap)?;
        // Measured projecting 230 k records in transactions of 1000 (as live batches come):
        // a checkpoint every 64 MiB of WAL instead of 4 MiB, and a 64 MiB page cache instead of
        // 2 MiB, cut the time by about a third (fewer checkpoints, each with its fsyncs, which
        // also delay the log's fdatasync on the same disk; fewer pages read again). Both bound
        // the memory and the WAL file whatever the history's size.
        connection
            .pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(wrap)?;
        connection
            .pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(wrap)
    }

    /// Creates the schema in an empty database, or checks the version of an existing one;
    /// returns the projected LSN.
    fn schema(connection: &mut Connection, path: &str) -> CoreResult<u64> {
        let wrap = |error: rusqlite::Error| store_error(path, &error);
        let tables: i64 = connection
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(wrap)?;
        let found: Option<(i64, i64)> = if tables == 0 {
            None
        } else {
            connection
                .query_row("SELECT schema_version, lsn FROM projection", [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
                .map_err(|_| CoreError::HistorySchema {
                    path: path.to_owned(),
                    found: None,
                    expected: SCHEMA_VERSION,
                })?
        };
        match found {
            Some((version, lsn)) if version == SCHEMA_VERSION => Ok(u64::try_from(lsn).unwrap_or(0)),
            Some((version, _)) => Err(CoreError::HistorySchema {
                path: path.to_owned(),
                found: Some(version),
                expected: SCHEMA_VERSION,
            }),
            None if tables > 0 => Err(CoreError::HistorySchema {
                path: path.to_owned(),
                found: None,
                expected: SCHEMA_VERSION,
            }),
            None => {
                let transaction = connection.transaction().map_err(wrap)?;
                transaction.execute_batch(SCHEMA).map_err(wrap)?;
                transaction
                    .execute(
                        "INSERT INTO projection (one, schema_version, lsn) VALUES (1, ?1, 0)",
                        [SCHEMA_VERSION],
                    )
                    .map_err(wrap)?;
                transaction.commit().map_err(wrap)?;
                Ok(0)
            }
        }
    }

    fn load_balances(connection: &Connection) -> rusqlite::Result<HashMap<String, i64>> {
        let mut statement = connection.prepare("SELECT account_id, balance FROM accounts")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    }

    /// The last LSN applied (committed, perhaps not yet synced).
    #[must_use]
    pub const fn lsn(&self) -> u64 {
        self.lsn
    }

    /// The last LSN applied by a synced commit: the log before it may go.
    #[must_use]
    pub const fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The frames of `data` from `at` that this call applies: at most `records_max` records
    /// above the projected LSN and at most `lsn_last`, stopping at the end of the data or before
    /// a version-0 record the history keeps. Returns them, where they end, and that record.
    fn frames(&self, data: &[u8], mut at: usize, records_max: usize, lsn_last: u64) -> CoreResult<Taken> {
        let mut frames = Vec::new();
        let mut lsn_next = self.lsn + 1;
        while at < data.len() && frames.len() < records_max {
            let frame = frame_at(data, at).map_err(|reason| CoreError::CorruptRecord {
                what: "framed",
                detail: format!("no valid frame at byte {at} (scan reason {reason})"),
            })?;
            if frame.lsn > lsn_last {
                break;
            }
            let after = frame.payload_at + frame.payload_len;
            if frame.lsn < lsn_next {
                at = after;
                continue;
            }
            if frame.lsn > lsn_next {
                return Err(CoreError::HistoryGap {
                    expected: lsn_next,
                    got: frame.lsn,
                });
            }
            let operation = projected_operation(frame.record_type)?;
            if let Some((_, true)) = operation {
                return Ok((frames, at, Some(frame)));
            }
            frames.push((frame, operation.map_or(0, |(operation, _)| operation)));
            lsn_next += 1;
            at = after;
        }
        Ok((frames, at, None))
    }

    /// Applies the frames of `data` from byte `at` (whole frames, as the log holds them) in one
    /// transaction; see `frames` for which. Records at or below the projected LSN are skipped
    /// (a batch fed twice adds nothing); a record after a gap is an error naming both LSNs. On
    /// any error nothing of the call is applied.
    ///
    /// # Errors
    /// `HistoryGap`, `CorruptRecord` for a record that does not decode, `InvalidState` for one
    /// the history cannot hold (money of an account never opened), `HistoryStore` when `SQLite`
    /// fails (a full disk, a lock held too long).
    pub fn project(&mut self, data: &[u8], at: usize, records_max: usize, lsn_last: u64) -> CoreResult<Step> {
        let (frames, end, legacy) = self.frames(data, at, records_max, lsn_last)?;
        let Some((last, _)) = frames.last() else {
            return Ok(self.step(end, 0, 0, legacy));
        };
        let lsn = last.lsn;
        let durable = self.synced_at.elapsed() >= DURABLE_EVERY;
        let (rows, balances) = self.write(data, &frames, lsn, durable)?;
        self.balances.extend(balances);
        self.lsn = lsn;
        if durable {
            self.durable_lsn = lsn;
            self.synced_at = Instant::now();
        }
        Ok(self.step(end, frames.len(), rows, legacy))
    }

    const fn step(&self, end: usize, records: usize, rows: u64, legacy: Option<Frame>) -> Step {
        Step {
            end,
            lsn: self.lsn,
            records,
            rows,
            legacy,
        }
    }

    /// One transaction (synced when `durable`): the rows of `frames`, the entries sorted by
    /// (account, LSN), the new balances, the LSN. Returns the rows written and the balances it
    /// changed, which the caller keeps only once committed.
    fn write(
        &mut self,
        data: &[u8],
        frames: &[(Frame, u16)],
        lsn: u64,
        durable: bool,
    ) -> CoreResult<(u64, HashMap<String, i64>)> {
        if !durable {
            return self.transact(data, frames, lsn);
        }
        self.connection.pragma_update(None, "synchronous", "FULL")?;
        let written = self.transact(data, frames, lsn);
        self.connection.pragma_update(None, "synchronous", "NORMAL")?;
        written
    }

    fn transact(
        &mut self,
        data: &[u8],
        frames: &[(Frame, u16)],
        lsn: u64,
    ) -> CoreResult<(u64, HashMap<String, i64>)> {
        let transaction = self.connection.transaction()?;
        let (entries, opened, mut rows) = {
            let mut batch = Batch {
                transaction: &transaction,
                insert_payment: transaction.prepare_cached(INSERT_PAYMENT)?,
                entries: Vec::new(),
                opened: HashSet::new(),
                rows: 0,
            };
            for &(frame, operation) in frames {
                let payload = &data[frame.payload_at..frame.payload_at + frame.payload_len];
                batch.apply(frame.lsn, operation, payload)?;
            }
            (batch.entries, batch.opened, batch.rows)
        };
        let balances = write_entries(&transaction, &self.balances, opened, entries, &mut rows)?;
        transaction.prepare_cached(SET_LSN)?.execute([lsn_sql(lsn)?])?;
        transaction.commit()?;
        Ok((rows, balances))
    }

    /// Makes every commit durable (a checkpoint syncs the WAL first) and returns the durable
    /// LSN; it stays where it was when a reader keeps the checkpoint from finishing.
    ///
    /// # Errors
    /// `HistoryStore` when `SQLite` fails.
    pub fn sync(&mut self) -> CoreResult<u64> {
        let (busy, log, checkpointed): (i64, i64, i64) =
            self.connection
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
        if busy == 0 && log == checkpointed {
            self.durable_lsn = self.lsn;
            self.synced_at = Instant::now();
        }
        Ok(self.durable_lsn)
    }
}

pub(super) const fn status(failure_code: Option<&str>) -> &'static str {
    if failure_code.is_none() {
        "succeeded"
    } else {
        "failed"
    }
}

pub(super) fn lsn_sql(lsn: u64) -> CoreResult<i64> {
    i64::try_from(lsn).map_err(|_| CoreError::OutOfRange {
        what: "an LSN in the history",
        value: lsn,
        min: 0,
        max: i64::MAX.unsigned_abs(),
    })
}

/// Inserts the entries sorted by (account, LSN) (measured ~15 % faster than in log order), each
/// with the running balance from the account's committed one (0 for an account opened in this
/// transaction), and sets the balance of every account touched. Returns the new balances.
fn write_entries(
    transaction: &Transaction<'_>,
    committed: &HashMap<String, i64>,
    opened: HashSet<&str>,
    mut entries: Vec<Entry<'_>>,
    rows: &mut u64,
) -> CoreResult<HashMap<String, i64>> {
    entries.sort_unstable_by(|a, b| (&a.account_id, a.lsn).cmp(&(&b.account_id, b.lsn)));
    let mut balances: HashMap<String, i64> = opened.into_iter().map(|id| (id.to_owned(), 0)).collect();
    let mut insert = transaction.prepare_cached(INSERT_ENTRY)?;
    for entry in &entries {
        let account_id: &str = &entry.account_id;
        if !balances.contains_key(account_id) {
            let held = committed.get(account_id).ok_or_else(|| {
                CoreError::InvalidState(format!(
                    "LSN {} moves money of account {account_id}, which the history never saw opened",
                    entry.lsn
                ))
            })?;
            balances.insert(account_id.to_owned(), *held);
        }
        let balance = balances.get_mut(account_id).expect("inserted above");
        *balance = balance.checked_add(entry.amount).ok_or_else(|| {
            CoreError::InvalidState(format!(
                "the balance of {account_id} overflows at LSN {}",
                entry.lsn
            ))
        })?;
        insert.execute(params![
            account_id,
            lsn_sql(entry.lsn)?,
            entry.kind,
            entry.amount,
            *balance
        ])?;
    }
    *rows += entries.len() as u64;
    let mut set_balance = transaction.prepare_cached(SET_BALANCE)?;
    for (account_id, balance) in &balances {
        set_balance.execute(params![account_id, balance])?;
    }
    Ok(balances)
}

/// The rows of one transaction being written.
struct Batch<'t, 'a> {
    transaction: &'t Transaction<'t>,
    /// Prepared once a transaction: the statement of nearly every record.
    insert_payment: CachedStatement<'t>,
    entries: Vec<Entry<'a>>,
    /// Accounts opened in this transaction (balance 0 until their entries are counted).
    opened: HashSet<&'a str>,
    rows: u64,
}

impl<'a> Batch<'_, 'a> {
    fn apply(&mut self, lsn: u64, operation: u16, payload: &'a [u8]) -> CoreResult<()> {
        match operation {
            OPERATION_PAYMENT | OPERATION_PAYMENT_WITH_CONSENT => {
                self.payment(lsn, &decode("payment", payload)?)
            }
            OPERATION_REFUND => self.refund(lsn, &decode("refund", payload)?),
            OPERATION_OPEN_ACCOUNT | OPERATION_DEPOSIT | OPERATION_WITHDRAW => {
                self.account(lsn, operation, &decode("account", payload)?)
            }
            OPERATION_DELIVERIES => self.deliveries(lsn, &decode("deliveries", payload)?),
            _ => Ok(()),
        }
    }

    fn payment(&mut self, lsn: u64, record: &PaymentRecord<'a>) -> CoreResult<()> {
        let mut metadata = Vec::new();
        if let Some(pairs) = &record.metadata {
            pairs.write_json(&mut metadata);
        }
        let metadata = record
            .metadata
            .as_ref()
            .map(|_| String::from_utf8_lossy(&metadata).into_owned());
        self.insert_payment.execute(params![
            lsn_sql(lsn)?,
            record.merchant_id,
            record.order_id,
            record.payer,
            record.settlement_account,
            record.amount,
            record.currency,
            status(record.failure_code),
            record.failure_code,
            record.description,
            metadata,
            record.created_s,
        ])?;
        self.rows += 1;
        if record.failure_code.is_none() {
            self.entry(Cow::Borrowed(record.payer), lsn, "payment", -record.amount);
            let settlement = Cow::Borrowed(record.settlement_account);
            self.entry(settlement, lsn, "payment", record.amount);
        }
        Ok(())
    }

    /// A refund takes its currency from the payment it refunded (none for a declined refund of
    /// no payment that succeeded, as the results store keeps it), and moves the money back.
    fn refund(&mut self, lsn: u64, record: &RefundRecord<'a>) -> CoreResult<()> {
        let paid = lsn_in_id(record.payment_id, PAYMENT_ID_PREFIX).and_then(|paid| i64::try_from(paid).ok());
        let payment: Option<(String, String, String)> = match paid {
            Some(paid) => self
                .transaction
                .prepare_cached(PAYMENT_OF_REFUND)?
                .query_row([paid], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .optional()?,
            None => None,
        };
        let currency = payment.as_ref().map_or("", |(_, _, currency)| currency.as_str());
        self.transaction.prepare_cached(INSERT_REFUND)?.execute(params![
            lsn_sql(lsn)?,
            record.payment_id,
            record.merchant_id,
            record.amount,
            currency,
            status(record.failure_code),
            record.failure_code,
            record.reason,
            record.created_s,
        ])?;
        self.rows += 1;
        if record.failure_code.is_some() {
            return Ok(());
        }
        let (Some(paid), Some((payer, settlement, _))) = (paid, payment) else {
            return Err(CoreError::InvalidState(format!(
                "the refund at LSN {lsn} succeeded, but the history holds no succeeded payment {}",
                record.payment_id
            )));
        };
        self.transaction
            .prepare_cached(ADD_REFUNDED)?
            .execute(params![paid, record.amount])?;
        self.entry(Cow::Owned(settlement), lsn, "refund", -record.amount);
        self.entry(Cow::Owned(payer), lsn, "refund", record.amount);
        Ok(())
    }

    fn account(&mut self, lsn: u64, operation: u16, record: &AccountRecord<'a>) -> CoreResult<()> {
        if record.failure_code.is_some() {
            return Ok(());
        }
        match operation {
            OPERATION_OPEN_ACCOUNT => {
                self.transaction.prepare_cached(INSERT_ACCOUNT)?.execute(params![
                    record.account_id,
                    record.currency,
                    lsn_sql(lsn)?
                ])?;
                self.rows += 1;
                self.opened.insert(record.account_id);
            }
            OPERATION_DEPOSIT => {
                self.entry(Cow::Borrowed(record.account_id), lsn, "deposit", record.amount);
            }
            _ => self.entry(
                Cow::Borrowed(record.account_id),
                lsn,
                "withdrawal",
                -record.amount,
            ),
        }
        Ok(())
    }

    fn deliveries(&mut self, lsn: u64, record: &Deliveries<'a>) -> CoreResult<()> {
        let mut insert = self.transaction.prepare_cached(INSERT_ATTEMPT)?;
        for (position, outcome) in record.outcomes.iter().enumerate() {
            insert.execute(params![
                lsn_sql(lsn)?,
                i64::try_from(position).unwrap_or(i64::MAX),
                outcome.event_lsn,
                outcome.at_ms,
                outcome.outcome,
                outcome.delivered,
                outcome.next_at_ms,
                outcome.round,
            ])?;
            self.rows += 1;
        }
        Ok(())
    }

    fn entry(&mut self, account_id: Cow<'a, str>, lsn: u64, kind: &'static str, amount: i64) {
        self.entries.push(Entry {
            account_id,
            lsn,
            kind,
            amount,
        });
    }
}
