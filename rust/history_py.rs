//! `_core.HistoryProjector`: the Python binding of the history projector (`history/`). Every call
//! runs without the GIL: the projector thread writes while the event loop and the log thread go on.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{CoreError, CoreResult};
use crate::history::{Projector, Seed, SeedAccount, SeedPayment, SeedRefund, Step};

/// What `project` answers: the offset it stopped at, the LSN projected and the durable one, the
/// records and rows written, and the version-0 record it stopped before (LSN, type, payload).
type Projected<'py> = (
    usize,
    u64,
    u64,
    usize,
    u64,
    Option<(u64, u16, Bound<'py, PyBytes>)>,
);

/// A seeded account: id, currency, balance.
type AccountRow = (String, String, i64);
/// A seeded payment: LSN, merchant, order id, payer, settlement account, amount, currency,
/// failure code, amount refunded, description, metadata (JSON), created.
type PaymentRow = (
    u64,
    String,
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    i64,
    Option<String>,
    Option<String>,
    i64,
);
/// A seeded refund: LSN, payment id, merchant, amount, currency, failure code, reason, created.
type RefundRow = (
    u64,
    String,
    String,
    i64,
    String,
    Option<String>,
    Option<String>,
    i64,
);

fn seed_of(lsn: u64, accounts: Vec<AccountRow>, payments: Vec<PaymentRow>, refunds: Vec<RefundRow>) -> Seed {
    Seed {
        lsn,
        accounts: accounts
            .into_iter()
            .map(|(account_id, currency, balance)| SeedAccount {
                account_id,
                currency,
                balance,
            })
            .collect(),
        payments: payments
            .into_iter()
            .map(|row| SeedPayment {
                lsn: row.0,
                merchant_id: row.1,
                order_id: row.2,
                payer: row.3,
                settlement_account: row.4,
                amount: row.5,
                currency: row.6,
                failure_code: row.7,
                amount_refunded: row.8,
                description: row.9,
                metadata: row.10,
                created: row.11,
            })
            .collect(),
        refunds: refunds
            .into_iter()
            .map(|row| SeedRefund {
                lsn: row.0,
                payment_id: row.1,
                merchant_id: row.2,
                amount: row.3,
                currency: row.4,
                failure_code: row.5,
                reason: row.6,
                created: row.7,
            })
            .collect(),
    }
}

#[pyclass(frozen, module = "instapay._core", name = "HistoryProjector")]
pub struct HistoryProjectorPy {
    /// None once closed.
    projector: Mutex<Option<Projector>>,
}

impl HistoryProjectorPy {
    fn with<T>(&self, call: impl FnOnce(&mut Projector) -> CoreResult<T>) -> CoreResult<T> {
        let mut guard: MutexGuard<'_, Option<Projector>> =
            self.projector.lock().map_err(|_| CoreError::Poisoned)?;
        let projector = guard
            .as_mut()
            .ok_or_else(|| CoreError::HistoryStore("the history projector is closed".to_owned()))?;
        call(projector)
    }
}

#[pymethods]
impl HistoryProjectorPy {
    #[new]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "pyo3 extracts the path into an owned one"
    )]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let projector = py.detach(|| Projector::open(&path))?;
        Ok(Self {
            projector: Mutex::new(Some(projector)),
        })
    }

    #[getter]
    fn lsn(&self) -> PyResult<u64> {
        Ok(self.with(|projector| Ok(projector.lsn()))?)
    }

    #[getter]
    fn durable_lsn(&self) -> PyResult<u64> {
        Ok(self.with(|projector| Ok(projector.durable_lsn()))?)
    }

    /// Applies the whole frames of `data` from `offset` in one transaction: at most
    /// `records_max` records above the projected LSN, none above `lsn_last`.
    fn project<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        offset: usize,
        records_max: usize,
        lsn_last: u64,
    ) -> PyResult<Projected<'py>> {
        let start = offset.min(data.len());
        let (step, durable_lsn): (Step, u64) = py.detach(|| {
            self.with(|projector| {
                let step = projector.project(data, start, records_max, lsn_last)?;
                Ok((step, projector.durable_lsn()))
            })
        })?;
        let legacy = step.legacy.map(|frame| {
            let payload = &data[frame.payload_at..frame.payload_at + frame.payload_len];
            (frame.lsn, frame.record_type, PyBytes::new(py, payload))
        });
        Ok((step.end, step.lsn, durable_lsn, step.records, step.rows, legacy))
    }

    /// Seeds this new database from a snapshot at `lsn` in one synced transaction (see
    /// `history/seed.rs`); returns the rows written.
    fn seed(
        &self,
        py: Python<'_>,
        lsn: u64,
        accounts: Vec<AccountRow>,
        payments: Vec<PaymentRow>,
        refunds: Vec<RefundRow>,
    ) -> PyResult<u64> {
        let seed = seed_of(lsn, accounts, payments, refunds);
        Ok(py.detach(|| self.with(|projector| projector.seed(&seed)))?)
    }

    /// Makes every commit durable if no reader keeps it from it; returns the durable LSN.
    fn sync(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(py.detach(|| self.with(Projector::sync))?)
    }

    /// Syncs and closes the database (idempotent); returns the durable LSN, 0 if already closed.
    fn close(&self, py: Python<'_>) -> PyResult<u64> {
        let closed = py.detach(|| {
            let mut guard = self.projector.lock().map_err(|_| CoreError::Poisoned)?;
            let durable = match guard.as_mut() {
                Some(projector) => projector.sync()?,
                None => 0,
            };
            *guard = None;
            Ok::<u64, CoreError>(durable)
        })?;
        Ok(closed)
    }
}
