//! `_core.Ledger`: the Python binding of the native ledger state (`state/`). Thin: it converts
//! arguments and answers and holds the state behind a mutex; every rule is in `state/`.
//! Declines come back as their `Failure` code strings, None when the operation applied.

use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{CoreError, CoreResult};
use crate::results_py::ResultsPy;
use crate::state::accounts::Owner;
use crate::state::evict::{self, Recall, Recalled, Window};
use crate::state::ledger::{Grant, PaymentRequest};
use crate::state::mandates::MandateIndex;
use crate::state::{
    legacy, lsn_in_id, snapshot, Decline, Ledger as State, Outcome, MANDATE_ID_PREFIX, PAYMENT_ID_PREFIX,
};

/// A payment held past the hot window: LSN, merchant, payer, settlement, amount, refunded.
type KeptRow = (u64, String, String, String, i64, i64);
/// An account: id, currency, overdraft, balance, owner.
type AccountRow = (String, String, bool, i64, &'static str);
/// A payment entry: payer, settlement account, amount, currency, refunded, mandate LSN.
type PaymentRow = (String, String, i64, String, i64, Option<u64>);
/// A mandate: LSN, account id, merchant id, per payment, per day, expires at, created, revoked
/// at, spent day, spent.
type MandateRow = (
    u64,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    Option<i64>,
    i64,
    i64,
);

fn code(outcome: Outcome) -> Option<&'static str> {
    outcome.err().map(Decline::code)
}

fn account_row(state: &State, index: u32) -> AccountRow {
    let accounts = state.accounts();
    let account = accounts.get(index);
    (
        accounts.id_of(index).to_owned(),
        accounts.currency_of(index).to_owned(),
        account.overdraft,
        account.balance,
        account.owner.name(),
    )
}

fn mandate_row(state: &State, index: MandateIndex) -> MandateRow {
    let mandate = state.mandates().get(index);
    let terms = &mandate.terms;
    (
        mandate.lsn,
        state.accounts().id_of(terms.payer).to_owned(),
        state.mandates().merchant_name(terms.merchant).to_owned(),
        terms.amount_max_per_payment,
        terms.amount_max_per_day,
        terms.expires_at_s,
        terms.created_s,
        mandate.revoked_s,
        mandate.spent_day,
        mandate.spent,
    )
}

/// The native ledger. Thread-safe: frozen, with the state behind a mutex (a snapshot is
/// encoded in the engine's log thread); no call releases the GIL while holding it.
#[pyclass(frozen, module = "instapay._core", name = "Ledger")]
pub struct LedgerPy {
    state: Mutex<State>,
}

impl LedgerPy {
    pub(crate) fn state(&self) -> CoreResult<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| CoreError::Poisoned)
    }

    fn from_state(state: State) -> Self {
        Self {
            state: Mutex::new(state),
        }
    }
}

#[pymethods]
impl LedgerPy {
    #[new]
    fn new() -> Self {
        Self::from_state(State::default())
    }

    fn open_account(
        &self,
        account_id: &str,
        currency: &str,
        overdraft: bool,
        owner: &str,
    ) -> PyResult<Option<&'static str>> {
        let owner = Owner::from_name(owner)?;
        Ok(code(
            self.state()?
                .open_account(account_id, currency, overdraft, owner)?,
        ))
    }

    fn settles_merchant(&self, account_id: &str) -> PyResult<()> {
        self.state()?.settles_merchant(account_id);
        Ok(())
    }

    fn deposit(&self, account_id: &str, amount: i64, currency: &str) -> PyResult<Option<&'static str>> {
        Ok(code(self.state()?.deposit(account_id, amount, currency)?))
    }

    fn withdraw(&self, account_id: &str, amount: i64, currency: &str) -> PyResult<Option<&'static str>> {
        Ok(code(self.state()?.withdraw(account_id, amount, currency)?))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field of the payment record"
    )]
    fn pay(
        &self,
        lsn: u64,
        payer: &str,
        settlement: &str,
        amount: i64,
        currency: &str,
        merchant_id: &str,
        created_s: i64,
    ) -> PyResult<Option<&'static str>> {
        let request = PaymentRequest::new(lsn, payer, settlement, amount, currency);
        Ok(code(self.state()?.pay(&request, merchant_id, created_s)?))
    }

    fn pay_as_before_consent(
        &self,
        lsn: u64,
        payer: &str,
        settlement: &str,
        amount: i64,
        currency: &str,
    ) -> PyResult<Option<&'static str>> {
        let request = PaymentRequest::new(lsn, payer, settlement, amount, currency);
        Ok(code(self.state()?.pay_as_before_consent(&request)?))
    }

    /// Refunds `amount` (None: all not yet refunded) of the payment `payment_id` names.
    #[pyo3(signature = (payment_id, amount))]
    fn refund(&self, payment_id: &str, amount: Option<i64>) -> PyResult<(i64, Option<&'static str>)> {
        let lsn = lsn_in_id(payment_id, PAYMENT_ID_PREFIX);
        let (amount, outcome) = self.state()?.refund(lsn, amount)?;
        Ok((amount, code(outcome)))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field of the grant record"
    )]
    #[pyo3(signature = (lsn, account_id, merchant_id, amount_max_per_payment, amount_max_per_day, expires_at_s, created_s))]
    fn grant_mandate(
        &self,
        lsn: u64,
        account_id: &str,
        merchant_id: &str,
        amount_max_per_payment: i64,
        amount_max_per_day: Option<i64>,
        expires_at_s: Option<i64>,
        created_s: i64,
    ) -> PyResult<MandateRow> {
        let grant = Grant {
            account_id,
            merchant_id,
            amount_max_per_payment,
            amount_max_per_day,
            expires_at_s,
            created_s,
        };
        let mut state = self.state()?;
        let index = state.grant_mandate(lsn, &grant)?;
        Ok(mandate_row(&state, index))
    }

    /// Raises `KeyError` for an id that names no mandate.
    fn revoke_mandate(&self, mandate_id: &str, revoked_s: i64) -> PyResult<MandateRow> {
        let lsn = lsn_in_id(mandate_id, MANDATE_ID_PREFIX);
        let lsn = lsn.ok_or_else(|| CoreError::UnknownMandate(mandate_id.to_owned()))?;
        let mut state = self.state()?;
        let index = state.revoke_mandate(lsn, revoked_s)?;
        Ok(mandate_row(&state, index))
    }

    fn account(&self, account_id: &str) -> PyResult<Option<AccountRow>> {
        let state = self.state()?;
        Ok(state
            .accounts()
            .find(account_id)
            .map(|index| account_row(&state, index)))
    }

    /// Every account, in the order they were opened.
    fn accounts(&self) -> PyResult<Vec<AccountRow>> {
        let state = self.state()?;
        let len = u32::try_from(state.accounts().len()).expect("u32 indexes");
        Ok((0..len).map(|index| account_row(&state, index)).collect())
    }

    /// The number of accounts.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.state()?.accounts().len())
    }

    /// The succeeded payment `payment_id` names, kept for refunds.
    fn payment(&self, payment_id: &str) -> PyResult<Option<PaymentRow>> {
        let state = self.state()?;
        let accounts = state.accounts();
        let lsn = lsn_in_id(payment_id, PAYMENT_ID_PREFIX);
        Ok(lsn.and_then(|lsn| state.payment(lsn)).map(|payment| {
            (
                accounts.id_of(payment.payer).to_owned(),
                accounts.id_of(payment.settlement).to_owned(),
                payment.amount,
                accounts.currency_of(payment.payer).to_owned(),
                payment.refunded,
                payment.mandate.map(|mandate| state.mandates().get(mandate).lsn),
            )
        }))
    }

    fn mandate(&self, mandate_id: &str) -> PyResult<Option<MandateRow>> {
        let state = self.state()?;
        let lsn = lsn_in_id(mandate_id, MANDATE_ID_PREFIX);
        let index = lsn.and_then(|lsn| state.mandates().find(lsn));
        Ok(index.map(|index| mandate_row(&state, index)))
    }

    /// An account's mandates, oldest first (none for an unknown account).
    fn mandates_of(&self, account_id: &str) -> PyResult<Vec<MandateRow>> {
        let state = self.state()?;
        let Some(payer) = state.accounts().find(account_id) else {
            return Ok(Vec::new());
        };
        let mandates = state.mandates().of_account(payer);
        Ok(mandates.iter().map(|&index| mandate_row(&state, index)).collect())
    }

    fn current_mandate(&self, account_id: &str, merchant_id: &str) -> PyResult<Option<MandateRow>> {
        let state = self.state()?;
        let payer = state.accounts().find(account_id);
        let current = payer.and_then(|payer| state.mandates().current(payer, merchant_id));
        Ok(current.map(|index| mandate_row(&state, index)))
    }

    /// Raises `AssertionError` naming the first breach of the ledger's invariants.
    fn check_invariants(&self) -> PyResult<()> {
        Ok(self.state()?.check_invariants()?)
    }

    /// Raises `AssertionError` unless each succeeded payment of `results`, if made under a
    /// mandate, was made by its merchant before its expiry: read where both are, in one call,
    /// without a Python object per payment.
    fn check_payments_made(&self, py: Python<'_>, results: &ResultsPy) -> PyResult<()> {
        py.detach(|| {
            let state = self.state()?;
            let results = results.state()?;
            for (lsn, merchant_id, created_s) in results.payments_made() {
                state.check_made(lsn, merchant_id, created_s)?;
            }
            Ok(())
        })
    }

    /// Forgets the results and payments the hot window no longer needs (`state/evict.rs`):
    /// history.db holds every record up to `durable_lsn`; at least `results_max` results stay,
    /// and the payments `pinned` names (a queued refund's). Returns (results, payments) forgotten.
    fn evict(
        &self,
        py: Python<'_>,
        results: &ResultsPy,
        durable_lsn: u64,
        results_max: usize,
        mut pinned: Vec<u64>,
    ) -> PyResult<(usize, usize)> {
        pinned.sort_unstable();
        py.detach(|| {
            let mut state = self.state()?;
            let mut results = results.state()?;
            let window = Window {
                durable_lsn,
                results_max,
            };
            let evicted = evict::evict(&mut state, &mut results, window, &pinned);
            Ok((evicted.results, evicted.payments))
        })
    }

    /// Puts the payment history.db holds at `lsn` (read when it was projected to `as_of`) back
    /// into memory for a refund: "recalled", "held" (memory has it, newer), "stale" (read again)
    /// or "unknown" (its accounts are not open).
    #[expect(clippy::too_many_arguments, reason = "a payments row's refundable columns")]
    fn recall(
        &self,
        results: &ResultsPy,
        lsn: u64,
        merchant_id: &str,
        payer: &str,
        settlement: &str,
        amount: i64,
        refunded: i64,
        as_of: u64,
    ) -> PyResult<&'static str> {
        let mut state = self.state()?;
        let mut results = results.state()?;
        let recalled = Recalled {
            lsn,
            merchant_id,
            payer,
            settlement,
            amount,
            refunded,
            as_of,
        };
        Ok(match evict::recall(&mut state, &mut results, &recalled)? {
            Recall::Recalled => "recalled",
            Recall::Held => "held",
            Recall::Stale => "stale",
            Recall::Unknown => "unknown",
        })
    }

    /// The payments held past the hot window (which the native snapshot leaves out): LSN,
    /// merchant, payer, settlement account, amount, refunded; for `recall` after a restart.
    fn kept_payments(&self, results: &ResultsPy) -> PyResult<Vec<KeptRow>> {
        let state = self.state()?;
        let results = results.state()?;
        let accounts = state.accounts();
        Ok(state
            .payments()
            .kept()
            .map(|payment| {
                (
                    payment.lsn,
                    results.merchant_of(payment.lsn).unwrap_or_default().to_owned(),
                    accounts.id_of(payment.payer).to_owned(),
                    accounts.id_of(payment.settlement).to_owned(),
                    payment.amount,
                    payment.refunded,
                )
            })
            .collect())
    }

    /// How many payments memory holds (hot, kept and recalled).
    fn payments_held(&self) -> PyResult<usize> {
        Ok(self.state()?.payments().len())
    }

    /// The whole state in the native snapshot format (`state/snapshot.rs`).
    fn to_snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let encoded = snapshot::encode(&*self.state()?);
        Ok(PyBytes::new(py, &encoded))
    }

    /// A ledger from `to_snapshot`'s bytes; raises `ValueError` for damaged bytes and
    /// `AssertionError` for a state that breaks the invariants.
    #[staticmethod]
    fn from_snapshot(data: &[u8]) -> PyResult<Self> {
        Ok(Self::from_state(snapshot::decode(data)?))
    }

    /// A ledger from the JSON of the ledger of a snapshot written before the ledger was native.
    #[staticmethod]
    fn from_legacy_json(data: &[u8]) -> PyResult<Self> {
        Ok(Self::from_state(legacy::decode(data)?))
    }
}
