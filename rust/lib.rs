//! `instapay._core`: the native core of instapay.
//!
//! Batch SHA-256 and HMAC-SHA256 signing and verification with the GIL released for batches large
//! enough to pay for it, a key ring of precomputed HMAC states, and the idempotency index. The typed Python view of this
//! module is `python/instapay/_core.pyi`.

mod body;
mod convert;
pub mod digest;
mod error;
pub mod history;
mod history_py;
mod idempotency;
mod keyring;
mod ledger_py;
mod machine;
mod machine_py;
pub mod parallel;
mod replay_py;
mod results_py;
mod signature;
pub mod state;
mod wal;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::convert::{bytes_items, BATCH_LEN_MAX};
use crate::digest::sha256_work;
use crate::parallel::{map_indexed, run_batch};

pub use crate::error::{CoreError, CoreResult};
pub use crate::idempotency::IdempotencyIndex;
pub use crate::keyring::KeyRing;

#[pyfunction]
fn sha256<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    let digest = run_batch(py, sha256_work(data.len()), || digest::sha256(data));
    PyBytes::new(py, &digest)
}

#[pyfunction]
fn hmac_sha256<'py>(py: Python<'py>, key: &[u8], msg: &[u8]) -> Bound<'py, PyBytes> {
    let work_bytes = digest::hmac_work(key.len() + msg.len());
    let mac = run_batch(py, work_bytes, || digest::hmac_sha256(key, msg));
    PyBytes::new(py, &mac)
}

/// The `Instapay-Signature` value of a response or webhook, one v1 per secret, in one call
/// (`signature::payload_header`).
#[pyfunction]
fn payload_signature(
    py: Python<'_>,
    secrets: &Bound<'_, PyAny>,
    timestamp_s: u64,
    body: &[u8],
) -> PyResult<String> {
    let secrets = bytes_items("secrets", secrets)?;
    let secrets: Vec<&[u8]> = secrets.iter().map(|secret| &**secret).collect();
    let work_bytes = digest::hmac_work(body.len()).saturating_mul(secrets.len());
    Ok(run_batch(py, work_bytes, || {
        signature::payload_header(&secrets, timestamp_s, body)
    }))
}

#[pyfunction]
fn sha256_batch<'py>(py: Python<'py>, items: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let items = bytes_items("items", items)?;
    let work_bytes = items.iter().map(|item| sha256_work(item.len())).sum();
    let digests = run_batch(py, work_bytes, || {
        map_indexed(items.len(), work_bytes, |index| digest::sha256(&items[index]))
    });
    PyList::new(py, digests.iter().map(|digest| PyBytes::new(py, digest)))
}

/// What `parse_signature_header` returns: problem, detail, t, kid, v1 values, v2.
type HeaderFields = (u8, String, u64, Option<String>, Vec<String>, Option<String>);

/// Parses an `Instapay-Signature` header: `(problem, detail, t, kid, v1 values, v2)`, problem 0
/// when the header is well formed (see `signature.rs` for the codes).
#[pyfunction]
fn parse_signature_header(header: &str) -> HeaderFields {
    match signature::parse_header(header) {
        Ok(parsed) => (
            signature::PROBLEM_NONE,
            String::new(),
            parsed.timestamp_s,
            parsed.kid.map(str::to_owned),
            parsed.v1.into_iter().map(str::to_owned).collect(),
            parsed.v2.map(str::to_owned),
        ),
        Err(problem) => (problem.code, problem.detail, 0, None, Vec::new(), None),
    }
}

/// How many threads a large batch may be spread over (1 = the calling thread only).
#[pyfunction]
fn parallelism() -> usize {
    parallel::parallelism()
}

#[pyfunction]
fn set_parallelism(threads: usize) -> PyResult<()> {
    Ok(parallel::set_parallelism(threads)?)
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(sha256, module)?)?;
    module.add_function(wrap_pyfunction!(hmac_sha256, module)?)?;
    module.add_function(wrap_pyfunction!(payload_signature, module)?)?;
    module.add_function(wrap_pyfunction!(sha256_batch, module)?)?;
    module.add_function(wrap_pyfunction!(parallelism, module)?)?;
    module.add_function(wrap_pyfunction!(set_parallelism, module)?)?;
    module.add_class::<KeyRing>()?;
    module.add_class::<IdempotencyIndex>()?;
    module.add_class::<ledger_py::LedgerPy>()?;
    module.add_class::<results_py::ResultsPy>()?;
    module.add_class::<history_py::HistoryProjectorPy>()?;
    module.add("HISTORY_SCHEMA_VERSION", history::SCHEMA_VERSION)?;
    module.add_class::<machine_py::MerchantTablePy>()?;
    module.add_class::<machine_py::StagedPy>()?;
    module.add_class::<machine_py::ResultTypesPy>()?;
    module.add_function(wrap_pyfunction!(machine_py::stage_batch, module)?)?;
    module.add_function(wrap_pyfunction!(machine_py::route, module)?)?;
    module.add_function(wrap_pyfunction!(machine_py::client_key_problem, module)?)?;
    module.add_function(wrap_pyfunction!(machine_py::lsn_in_id, module)?)?;
    module.add("BALANCE_MAX", state::accounts::BALANCE_MAX)?;
    module.add("SECONDS_PER_DAY", state::mandates::SECONDS_PER_DAY)?;
    module.add_function(wrap_pyfunction!(parse_signature_header, module)?)?;
    module.add_function(wrap_pyfunction!(body::parse_payment_bodies, module)?)?;
    module.add_function(wrap_pyfunction!(body::parse_refund_bodies, module)?)?;
    module.add_function(wrap_pyfunction!(body::parse_json_object, module)?)?;
    module.add_function(wrap_pyfunction!(body::is_id, module)?)?;
    module.add_function(wrap_pyfunction!(body::is_currency, module)?)?;
    module.add("AMOUNT_MAX", body::AMOUNT_MAX)?;
    module.add("ID_LEN_MAX", body::ID_LEN_MAX)?;
    module.add_function(wrap_pyfunction!(wal::crc32c, module)?)?;
    module.add_function(wrap_pyfunction!(wal::wal_encode, module)?)?;
    module.add_function(wrap_pyfunction!(wal::wal_scan, module)?)?;
    module.add_function(wrap_pyfunction!(wal::wal_scan_extent, module)?)?;
    module.add_function(wrap_pyfunction!(wal::wal_next_valid, module)?)?;
    module.add_function(wrap_pyfunction!(replay_py::replay_run, module)?)?;
    module.add("WAL_HEADER_LEN", wal::HEADER_LEN)?;
    module.add("WAL_RECORD_LEN_MAX", wal::RECORD_LEN_MAX)?;
    module.add("SCAN_END", wal::SCAN_END)?;
    module.add("SCAN_TORN", wal::SCAN_TORN)?;
    module.add("SCAN_BAD_CRC", wal::SCAN_BAD_CRC)?;
    module.add("SCAN_BAD_HEADER", wal::SCAN_BAD_HEADER)?;
    module.add("SCAN_BAD_LSN", wal::SCAN_BAD_LSN)?;
    module.add("BATCH_LEN_MAX", BATCH_LEN_MAX)?;
    module.add("KEYS_MAX", keyring::KEYS_MAX)?;
    module.add("KID_LEN_MAX", keyring::KID_LEN_MAX)?;
    module.add("SECRET_LEN_MAX", keyring::SECRET_LEN_MAX)?;
    module.add("VERIFY_VALID", keyring::VERIFY_VALID)?;
    module.add("VERIFY_MISMATCH", keyring::VERIFY_MISMATCH)?;
    module.add("VERIFY_UNKNOWN_KID", keyring::VERIFY_UNKNOWN_KID)?;
    module.add("VERIFY_WRONG_LENGTH", keyring::VERIFY_WRONG_LENGTH)?;
    module.add("VERIFY_NOT_HEX", keyring::VERIFY_NOT_HEX)?;
    module.add("RESERVE_NEW", idempotency::RESERVE_NEW)?;
    module.add("RESERVE_REPLAY", idempotency::RESERVE_REPLAY)?;
    module.add("RESERVE_MISMATCH", idempotency::RESERVE_MISMATCH)?;
    module.add("RESERVE_IN_FLIGHT", idempotency::RESERVE_IN_FLIGHT)?;
    module.add("RESERVE_FULL", idempotency::RESERVE_FULL)?;
    module.add("RESERVE_TENANT_FULL", idempotency::RESERVE_TENANT_FULL)?;
    module.add(
        "IDEMPOTENCY_TENANT_SHARE_PERCENT_DEFAULT",
        idempotency::TENANT_SHARE_PERCENT_DEFAULT,
    )?;
    module.add("IDEMPOTENCY_TENANT_KEYS_MIN", idempotency::TENANT_KEYS_MIN)?;
    module.add("IDEMPOTENCY_KEY_LEN_MAX", idempotency::KEY_LEN_MAX)?;
    module.add("IDEMPOTENCY_CAPACITY_MAX", idempotency::CAPACITY_MAX)?;
    module.add(
        "IDEMPOTENCY_TTL_SECONDS_DEFAULT",
        idempotency::TTL_SECONDS_DEFAULT,
    )?;
    module.add("IDEMPOTENCY_TTL_SECONDS_MAX", idempotency::TTL_SECONDS_MAX)?;
    module.add("FINGERPRINT_LEN", idempotency::FINGERPRINT_LEN)?;
    for (name, code) in signature::PROBLEMS {
        module.add(name, code)?;
    }
    module.add("SIGNATURE_HEADER_LEN_MAX", signature::HEADER_LEN_MAX)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
