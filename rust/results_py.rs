//! `_core.Results`: the Python binding of the native result store (`state/results`). Thin: it
//! converts arguments and answers and holds the store behind a mutex; the typed API over it is
//! `python/instapay/engine/results.py`. Status is a bool (succeeded), failures their `Failure`
//! code strings.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::error::{CoreError, CoreResult};
use crate::state::results::{snapshot, Code, Durable, PaymentFields, RefundFields, Results};

type Text<'py> = Bound<'py, PyString>;
/// A payment: merchant id, order id, payer, amount, currency, succeeded, failure, created,
/// description, metadata (JSON bytes).
type PaymentRow<'py> = (
    Text<'py>,
    Text<'py>,
    Text<'py>,
    i64,
    Text<'py>,
    bool,
    Option<&'static str>,
    i64,
    Option<Text<'py>>,
    Option<Bound<'py, PyBytes>>,
);
/// A refund: payment id, merchant id, amount, currency, succeeded, failure, created, reason.
type RefundRow<'py> = (
    Text<'py>,
    Text<'py>,
    i64,
    Text<'py>,
    bool,
    Option<&'static str>,
    i64,
    Option<Text<'py>>,
);

#[pyclass(name = "Results", module = "instapay._core", frozen)]
pub struct ResultsPy {
    state: Mutex<Results>,
}

impl ResultsPy {
    pub(crate) fn state(&self) -> CoreResult<MutexGuard<'_, Results>> {
        self.state.lock().map_err(|_| CoreError::Poisoned)
    }
}

#[pymethods]
impl ResultsPy {
    #[new]
    fn new() -> Self {
        Self {
            state: Mutex::new(Results::default()),
        }
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.state()?.len())
    }

    fn __contains__(&self, lsn: u64) -> PyResult<bool> {
        Ok(self.state()?.merchant_of(lsn).is_some())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field of the payment result"
    )]
    fn add_payment(
        &self,
        lsn: u64,
        merchant_id: &str,
        order_id: &str,
        payer: &str,
        amount: i64,
        currency: &str,
        succeeded: bool,
        failure: Option<&str>,
        created_s: i64,
        description: Option<&str>,
        metadata: Option<&[u8]>,
    ) -> PyResult<()> {
        let payment = PaymentFields {
            merchant_id,
            order_id,
            payer,
            amount,
            currency,
            code: Code::new(succeeded, failure)?,
            created_s,
            description,
            metadata,
        };
        Ok(self.state()?.add(lsn, &Durable::Payment(payment))?)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field of the refund result"
    )]
    fn add_refund(
        &self,
        lsn: u64,
        payment_id: &str,
        merchant_id: &str,
        amount: i64,
        currency: &str,
        succeeded: bool,
        failure: Option<&str>,
        created_s: i64,
        reason: Option<&str>,
    ) -> PyResult<()> {
        let refund = RefundFields {
            payment_id,
            merchant_id,
            amount,
            currency,
            code: Code::new(succeeded, failure)?,
            created_s,
            reason,
        };
        Ok(self.state()?.add(lsn, &Durable::Refund(refund))?)
    }

    /// The payment logged at `lsn`; None if there is none (or a refund is).
    fn payment<'py>(&self, py: Python<'py>, lsn: u64) -> PyResult<Option<PaymentRow<'py>>> {
        let state = self.state()?;
        let Some(Durable::Payment(p)) = state.get(lsn) else {
            return Ok(None);
        };
        let text = |text: &str| PyString::new(py, text);
        Ok(Some((
            text(p.merchant_id),
            text(p.order_id),
            text(p.payer),
            p.amount,
            text(p.currency),
            p.code.succeeded(),
            p.code.failure(),
            p.created_s,
            p.description.map(text),
            p.metadata.map(|json| PyBytes::new(py, json)),
        )))
    }

    /// The refund logged at `lsn`; None if there is none (or a payment is).
    fn refund<'py>(&self, py: Python<'py>, lsn: u64) -> PyResult<Option<RefundRow<'py>>> {
        let state = self.state()?;
        let Some(Durable::Refund(r)) = state.get(lsn) else {
            return Ok(None);
        };
        let text = |text: &str| PyString::new(py, text);
        Ok(Some((
            text(r.payment_id),
            text(r.merchant_id),
            r.amount,
            text(r.currency),
            r.code.succeeded(),
            r.code.failure(),
            r.created_s,
            r.reason.map(text),
        )))
    }

    /// The merchant of the result logged at `lsn`, None if there is none.
    fn merchant_of(&self, lsn: u64) -> PyResult<Option<String>> {
        Ok(self.state()?.merchant_of(lsn).map(str::to_owned))
    }

    /// Every LSN held, in log order.
    fn lsns(&self) -> PyResult<Vec<u64>> {
        Ok(self.state()?.lsns().collect())
    }

    /// The LSNs of each merchant's results, in log order.
    fn lsns_by_merchant(&self) -> PyResult<HashMap<String, Vec<u64>>> {
        let state = self.state()?;
        let mut by_merchant: HashMap<String, Vec<u64>> = HashMap::new();
        for (lsn, merchant_id) in state.merchants_of() {
            match by_merchant.get_mut(merchant_id) {
                Some(lsns) => lsns.push(lsn),
                None => {
                    by_merchant.insert(merchant_id.to_owned(), vec![lsn]);
                }
            }
        }
        Ok(by_merchant)
    }

    /// The LSNs of a merchant's payments for one order id, oldest first.
    fn payments_for_order(&self, merchant_id: &str, order_id: &str) -> PyResult<Vec<u64>> {
        Ok(self.state()?.payments_for_order(merchant_id, order_id))
    }

    /// The LSNs of a payment's refunds, declined ones included, oldest first.
    fn refunds_of(&self, payment_id: &str) -> PyResult<Vec<u64>> {
        Ok(self.state()?.refunds_of(payment_id))
    }

    /// What a payment's refunds that succeeded gave back.
    fn amount_refunded(&self, payment_id: &str) -> PyResult<i64> {
        Ok(self.state()?.amount_refunded(payment_id))
    }

    /// (LSNs, merchant ids, created) of the payments that succeeded, in log order.
    fn payments_made(&self) -> PyResult<(Vec<u64>, Vec<String>, Vec<i64>)> {
        let state = self.state()?;
        let mut made = (Vec::new(), Vec::new(), Vec::new());
        for (lsn, merchant_id, created_s) in state.payments_made() {
            made.0.push(lsn);
            made.1.push(merchant_id.to_owned());
            made.2.push(created_s);
        }
        Ok(made)
    }

    /// The LSN of the oldest result memory holds (older ones left it: `state/evict.rs`).
    fn first_lsn(&self) -> PyResult<Option<u64>> {
        Ok(self.state()?.first_lsn())
    }

    /// The heap the results take, in bytes (entries, texts, indexes).
    fn heap_bytes(&self) -> PyResult<usize> {
        Ok(self.state()?.heap_bytes())
    }

    fn to_snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let encoded = snapshot::encode(&*self.state()?);
        Ok(PyBytes::new(py, &encoded))
    }

    /// Results from `to_snapshot`'s bytes; raises `ValueError` for damaged bytes.
    #[staticmethod]
    fn from_snapshot(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let results = py.detach(|| snapshot::decode(data))?;
        Ok(Self {
            state: Mutex::new(results),
        })
    }
}
