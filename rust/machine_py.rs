//! `_core.stage_batch`, `_core.StagedBatch`, `_core.MerchantTable`: the Python binding of the
//! batch stage (`machine/`). Thin: it reads the requests, verifies their signatures with the key
//! ring (without the GIL for large batches), takes the locks in the stage's order (ledger,
//! results, index) and converts the answers; every rule is in `machine/`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple, PyType};

use crate::convert::{read_items, same_lengths};
use crate::error::{CoreError, CoreResult};
use crate::idempotency::IdempotencyIndex;
use crate::keyring::{KeyRing, SignedParts};
use crate::ledger_py::LedgerPy;
use crate::machine::merchants::Merchants;
use crate::machine::route::{client_key_problem as key_problem, route as route_of, Route};
use crate::machine::{self, Answer, AppliedResult, Kept, Parts, Request, Staged, Verdict};
use crate::results_py::ResultsPy;
use crate::state::lsn_in_id as lsn_in;

/// A refused request: its index in the run, then code, message, HTTP status.
type RefusalRow = (usize, (&'static str, String, u16));

/// The merchants the stage resolves kids and merchant ids with (`machine::merchants`).
#[pyclass(frozen, module = "instapay._core", name = "MerchantTable")]
pub struct MerchantTablePy {
    table: Mutex<Merchants>,
}

/// A binding's state, locked (a panic in an earlier call leaves it unusable).
fn locked<T>(mutex: &Mutex<T>) -> CoreResult<MutexGuard<'_, T>> {
    mutex.lock().map_err(|_| CoreError::Poisoned)
}

impl MerchantTablePy {
    fn table(&self) -> CoreResult<MutexGuard<'_, Merchants>> {
        locked(&self.table)
    }
}

#[pymethods]
impl MerchantTablePy {
    #[new]
    fn new() -> Self {
        Self {
            table: Mutex::new(Merchants::default()),
        }
    }

    /// Adds a merchant or replaces it with its current kids.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "pyo3 extracts lists into owned vectors"
    )]
    fn put(&self, merchant_id: &str, settlement_account: &str, kids: Vec<String>) -> PyResult<()> {
        self.table()?.put(merchant_id, settlement_account, &kids);
        Ok(())
    }

    /// The merchant id a kid names, None if none.
    fn merchant_of_kid(&self, kid: &str) -> PyResult<Option<String>> {
        Ok(self.table()?.by_kid(kid).map(|merchant| merchant.id.clone()))
    }
}

/// The Python types a run's results are answered as: `PaymentResult` and `RefundResult` (named
/// tuples of 13 and 10 fields), the `Status` members and the `Failure` members by code.
#[pyclass(frozen, module = "instapay._core", name = "ResultTypes")]
pub struct ResultTypesPy {
    payment: Py<PyType>,
    refund: Py<PyType>,
    succeeded: Py<PyAny>,
    failed: Py<PyAny>,
    failures: HashMap<String, Py<PyAny>>,
}

const PAYMENT_FIELDS: usize = 13;
const REFUND_FIELDS: usize = 10;

fn check_fields(cls: &Bound<'_, PyType>, fields: usize) -> PyResult<()> {
    let len = cls.getattr(intern!(cls.py(), "_fields"))?.len()?;
    if len != fields {
        let what = format!("{} has {len} fields, the stage builds {fields}", cls.name()?);
        return Err(CoreError::InvalidState(what).into());
    }
    Ok(())
}

#[pymethods]
impl ResultTypesPy {
    #[new]
    fn new(
        payment: Bound<'_, PyType>,
        refund: Bound<'_, PyType>,
        succeeded: Py<PyAny>,
        failed: Py<PyAny>,
        failures: HashMap<String, Py<PyAny>>,
    ) -> PyResult<Self> {
        check_fields(&payment, PAYMENT_FIELDS)?;
        check_fields(&refund, REFUND_FIELDS)?;
        Ok(Self {
            payment: payment.unbind(),
            refund: refund.unbind(),
            succeeded,
            failed,
            failures,
        })
    }
}

impl ResultTypesPy {
    /// The result as the named tuple `Results` would build from the store: as made, not
    /// replayed, nothing refunded yet.
    fn build<'py>(
        &self,
        py: Python<'py>,
        applied: &AppliedResult,
        created_s: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let status = if applied.failure.is_none() {
            &self.succeeded
        } else {
            &self.failed
        };
        let failure = match applied.failure {
            None => py.None(),
            Some(code) => self
                .failures
                .get(code)
                .ok_or_else(|| CoreError::InvalidState(format!("no Failure {code}")))?
                .clone_ref(py),
        };
        let text = |text: &str| PyString::new(py, text).into_any();
        let optional = |text: Option<&String>| {
            text.map_or_else(
                || py.None().into_bound(py),
                |text| PyString::new(py, text).into_any(),
            )
        };
        let (cls, fields): (&Py<PyType>, Vec<Bound<'py, PyAny>>) = match &applied.kept {
            Kept::Payment {
                order_id,
                payer,
                amount,
                currency,
                description,
                metadata,
            } => {
                let metadata = match metadata {
                    None => py.None().into_bound(py),
                    Some(pairs) => {
                        let dict = PyDict::new(py);
                        for (key, value) in pairs {
                            dict.set_item(key, value)?;
                        }
                        dict.into_any()
                    }
                };
                let fields = vec![
                    text(&format!("pay_{}", applied.lsn)),
                    text(&applied.merchant_id),
                    text(order_id),
                    text(payer),
                    amount.into_pyobject(py)?.into_any(),
                    text(currency),
                    status.bind(py).clone(),
                    failure.into_bound(py),
                    created_s.into_pyobject(py)?.into_any(),
                    optional(description.as_ref()),
                    metadata,
                    0_i64.into_pyobject(py)?.into_any(),
                    false.into_pyobject(py)?.to_owned().into_any(),
                ];
                (&self.payment, fields)
            }
            Kept::Refund {
                payment_id,
                amount,
                currency,
                reason,
            } => {
                let fields = vec![
                    text(&format!("re_{}", applied.lsn)),
                    text(payment_id),
                    text(&applied.merchant_id),
                    amount.into_pyobject(py)?.into_any(),
                    text(currency),
                    status.bind(py).clone(),
                    failure.into_bound(py),
                    created_s.into_pyobject(py)?.into_any(),
                    optional(reason.as_ref()),
                    false.into_pyobject(py)?.to_owned().into_any(),
                ];
                (&self.refund, fields)
            }
        };
        // `tuple.__new__(cls, fields)`: a named tuple without its Python-level `__new__`.
        let tuple_new = py.get_type::<PyTuple>().getattr(intern!(py, "__new__"))?;
        tuple_new.call1((cls.bind(py), PyTuple::new(py, fields)?))
    }
}

/// A run applied in memory, waiting for its frames to be durable (`machine::Staged`).
#[pyclass(frozen, module = "instapay._core", name = "StagedBatch")]
pub struct StagedPy {
    staged: Mutex<Staged>,
}

impl StagedPy {
    fn staged(&self) -> CoreResult<MutexGuard<'_, Staged>> {
        locked(&self.staged)
    }

    /// A row per request whose answer `pick` takes, with its index in the run.
    fn rows<R>(&self, pick: impl Fn(&Answer) -> Option<R>) -> PyResult<Vec<(usize, R)>> {
        let staged = self.staged()?;
        let rows = staged.answers.iter().enumerate();
        Ok(rows
            .filter_map(|(at, answer)| Some((at, pick(answer)?)))
            .collect())
    }
}

#[pymethods]
impl StagedPy {
    #[getter]
    fn lsn_first(&self) -> PyResult<u64> {
        Ok(self.staged()?.lsn_first)
    }

    #[getter]
    fn lsn_next(&self) -> PyResult<u64> {
        Ok(self.staged()?.lsn_next)
    }

    #[getter]
    fn records(&self) -> PyResult<u64> {
        Ok(self.staged()?.records())
    }

    #[getter]
    fn created_s(&self) -> PyResult<i64> {
        Ok(self.staged()?.created_s)
    }

    /// The run's records as WAL frames (`rust/wal.rs`), numbered from `lsn_first`.
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.staged()?.frames))
    }

    /// Per refused request: (index, (code, message, HTTP status)).
    fn refusals(&self) -> PyResult<Vec<RefusalRow>> {
        self.rows(|answer| match answer {
            Answer::Refused(refusal) => Some((refusal.code, refusal.message.clone(), refusal.status)),
            _ => None,
        })
    }

    /// Per request refused for its signature: (index, (problem code, detail)).
    fn signature_problems(&self) -> PyResult<Vec<(usize, (u8, String))>> {
        self.rows(|answer| match answer {
            Answer::Signature(problem) => Some((problem.code, problem.detail.clone())),
            _ => None,
        })
    }

    /// Per request whose key the index knew: (index, (reserve status, value)).
    fn known(&self) -> PyResult<Vec<(usize, (u8, u64))>> {
        self.rows(|answer| match answer {
            Answer::Known(status, value) => Some((*status, *value)),
            _ => None,
        })
    }

    /// (indexes, LSNs) of the applied requests, in LSN order.
    fn applied(&self) -> PyResult<(Vec<usize>, Vec<u64>)> {
        let staged = self.staged()?;
        let mut applied = (Vec::new(), Vec::new());
        for (at, answer) in staged.answers.iter().enumerate() {
            if let Answer::Applied(lsn) = answer {
                applied.0.push(at);
                applied.1.push(*lsn);
            }
        }
        Ok(applied)
    }

    /// The applied requests' results, in LSN order (`applied()`'s), built as `types` says.
    fn results<'py>(&self, py: Python<'py>, types: &ResultTypesPy) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let staged = self.staged()?;
        let created_s = staged.created_s;
        staged
            .applied()
            .iter()
            .map(|applied| types.build(py, applied, created_s))
            .collect()
    }

    /// The LSN of the request of this run that reserved `slot`, None if none did.
    fn lsn_of_slot(&self, slot: u64) -> PyResult<Option<u64>> {
        Ok(self.staged()?.lsn_of_slot(slot))
    }

    /// After the frames are durable: adds the results, completes the keys; returns each
    /// merchant's new event LSNs (dict order: each merchant's first result).
    fn commit(&self, results: &ResultsPy, index: &IdempotencyIndex) -> PyResult<HashMap<String, Vec<u64>>> {
        let mut staged = self.staged()?;
        let mut results = results.state()?;
        let mut index = index.lock()?;
        Ok(staged.commit(&mut results, &mut index)?.into_iter().collect())
    }
}

/// A `str` attribute read lossily (a lone surrogate becomes U+FFFD, so it can only fail to
/// match), None when it is None.
fn text_attribute(item: &Bound<'_, PyAny>, name: &Bound<'_, PyString>) -> PyResult<Option<String>> {
    let value = item.getattr(name)?;
    if value.is_none() {
        return Ok(None);
    }
    let text = value.cast::<PyString>().map_err(|_| CoreError::WrongType {
        what: format!("request.{name}"),
        expected: "str",
        got: value.get_type().to_string(),
    })?;
    Ok(Some(text.to_string_lossy().into_owned()))
}

/// A request's parts, owned for the duration of the call.
struct Owned {
    merchant: Option<String>,
    header: Option<String>,
    method: String,
    path: String,
    idempotency_key: Option<String>,
    body: PyBackedBytes,
}

fn read_request(item: &Bound<'_, PyAny>, merchant: Option<String>) -> PyResult<Owned> {
    let py = item.py();
    Ok(Owned {
        merchant,
        header: text_attribute(item, intern!(py, "header"))?,
        method: text_attribute(item, intern!(py, "method"))?.unwrap_or_default(),
        path: text_attribute(item, intern!(py, "path"))?.unwrap_or_default(),
        idempotency_key: text_attribute(item, intern!(py, "idempotency_key"))?,
        body: item.getattr(intern!(py, "body"))?.extract()?,
    })
}

/// Stages a run of signed requests (`SignedRequest`s; `merchant_ids[i]` set for one whose
/// merchant the caller authenticated) as records from `lsn_first` on: verify, route, parse,
/// reserve, apply, encode, in one call. See `machine::stage`.
#[pyfunction]
#[expect(clippy::too_many_arguments, reason = "the state a run touches, then the run")]
#[pyo3(signature = (ledger, results, index, ring, merchants, requests, merchant_ids, lsn_first, now_s, tolerance_s))]
pub fn stage_batch(
    py: Python<'_>,
    ledger: &LedgerPy,
    results: &ResultsPy,
    index: &IdempotencyIndex,
    ring: &KeyRing,
    merchants: &MerchantTablePy,
    requests: &Bound<'_, PyAny>,
    merchant_ids: &Bound<'_, PyAny>,
    lsn_first: u64,
    now_s: i64,
    tolerance_s: i64,
) -> PyResult<StagedPy> {
    let ids = read_items(
        "merchant_ids",
        "a sequence of str or None",
        merchant_ids,
        |_, item| item.extract::<Option<String>>(),
    )?;
    let mut ids = ids.into_iter();
    let owned = read_items("requests", "a sequence of SignedRequest", requests, |_, item| {
        read_request(item, ids.next().flatten())
    })?;
    same_lengths(
        "requests and merchant_ids",
        &[owned.len(), ids.len() + owned.len()],
    )?;
    let requests: Vec<Request<'_>> = owned
        .iter()
        .map(|request| Request {
            merchant: request.merchant.as_deref(),
            method: &request.method,
            path: &request.path,
            idempotency_key: request.idempotency_key.as_deref(),
            body: &request.body,
        })
        .collect();
    let verdicts = verify(py, ring, &owned, (now_s, tolerance_s));
    // The lock order of `machine`: ledger, results, index; none is held while the GIL is
    // released (the verification above ran before any).
    let mut ledger = ledger.state()?;
    let results = results.state()?;
    let mut index_guard = index.lock()?;
    let table = merchants.table()?;
    let mut parts = Parts {
        ledger: &mut ledger,
        results: &results,
        index: &mut index_guard,
        key_hasher: index.key_hasher(),
        merchants: &table,
    };
    let staged = machine::stage(&mut parts, &requests, &verdicts, lsn_first, now_s)?;
    Ok(StagedPy {
        staged: Mutex::new(staged),
    })
}

/// The signature verdict of each request this stage verifies (None for the authenticated).
fn verify(py: Python<'_>, ring: &KeyRing, owned: &[Owned], clock: (i64, i64)) -> Vec<Verdict> {
    let signed: Vec<SignedParts<'_>> = owned
        .iter()
        .filter(|request| request.merchant.is_none())
        .map(|request| SignedParts {
            header: request.header.as_deref(),
            method: &request.method,
            path: &request.path,
            idempotency_key: request.idempotency_key.as_deref(),
            body: &request.body,
        })
        .collect();
    let mut checked = ring.verify_parts(py, &signed, clock).into_iter();
    owned
        .iter()
        .map(|request| {
            if request.merchant.is_none() {
                checked.next()
            } else {
                None
            }
        })
        .collect()
}

/// `protocol.route`'s rule: None for a payment, the payment id for a refund, or the refusal
/// (code, message, HTTP status).
#[pyfunction]
pub fn route(method: &Bound<'_, PyString>, path: &Bound<'_, PyString>) -> RouteAnswer {
    let (method, path) = (method.to_string_lossy(), path.to_string_lossy());
    match route_of(&method, &path) {
        Ok(Route::Payment) => RouteAnswer::Payment(None),
        Ok(Route::Refund(paid, _)) => RouteAnswer::Payment(Some(paid.to_owned())),
        Err(refusal) => RouteAnswer::Refused((refusal.code, refusal.message, refusal.status)),
    }
}

#[derive(IntoPyObject)]
pub enum RouteAnswer {
    Payment(Option<String>),
    Refused((&'static str, String, u16)),
}

/// Why a client's `Idempotency-Key` is refused, None when it is acceptable.
#[pyfunction]
pub fn client_key_problem(key: &Bound<'_, PyString>) -> Option<&'static str> {
    key_problem(&key.to_string_lossy())
}

/// The LSN an id such as `pay_12` names (`state::lsn_in_id`), None if it names none.
#[pyfunction]
pub fn lsn_in_id(id: &Bound<'_, PyString>, prefix: &str) -> Option<u64> {
    lsn_in(&id.to_string_lossy(), prefix)
}
