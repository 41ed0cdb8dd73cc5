//! The one error type of the native core, and its single conversion into Python exceptions.
//!
//! Messages name the argument and, for batch items, the index, and never contain key material.

use std::fmt;

use pyo3::exceptions::{PyAssertionError, PyKeyError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;

use crate::body::ID_LEN_MAX;
use crate::idempotency::KEY_LEN_MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// An argument is not of the expected Python type.
    WrongType {
        what: String,
        expected: &'static str,
        got: String,
    },
    /// The parallel sequences of one batch call differ in length.
    LengthMismatch {
        names: &'static str,
        lengths: Vec<usize>,
    },
    BatchTooLarge {
        len: usize,
        max: usize,
    },
    /// `sign_batch` was asked to sign with a key id the ring does not hold.
    UnknownKid {
        index: usize,
        kid: String,
    },
    InvalidKid {
        reason: &'static str,
    },
    InvalidSecret {
        reason: &'static str,
    },
    KeyRingFull {
        max: usize,
    },
    InvalidParallelism {
        threads: usize,
        max: usize,
    },
    /// An integer batch item outside the range its argument allows.
    IntOutOfRange {
        what: String,
        range: &'static str,
    },
    /// A WAL record payload over the size limit.
    RecordTooLarge {
        index: usize,
        len: usize,
        max: usize,
    },
    OutOfRange {
        what: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    KeyLength {
        index: usize,
        len: usize,
    },
    FingerprintLength {
        index: usize,
        len: usize,
    },
    /// A tenant name of the index outside 1..=255 bytes.
    TenantName {
        index: usize,
        len: usize,
    },
    /// A slot that is not an in-flight reservation of the index.
    UnknownSlot {
        index: usize,
        slot: u64,
    },
    CorruptDump(String),
    /// A snapshot's dump or the log holds more keys than the capacity of the index they are
    /// loaded into.
    IndexTooSmall {
        what: &'static str,
        held: u64,
        capacity: u64,
    },
    /// Ledger snapshot bytes (or the JSON of an older snapshot) that are not a ledger.
    CorruptLedger(String),
    /// Result store snapshot bytes that are not a result store.
    CorruptResults(String),
    /// A logged payload that is not a record of its type (`state::records`).
    CorruptRecord {
        what: &'static str,
        detail: String,
    },
    /// The ledger's state breaks one of its invariants (money conserved, consent, limits).
    InvariantBroken(String),
    /// A ledger change that its caller should have refused (the engine checks before it logs).
    InvalidState(String),
    UnknownAccount(String),
    /// An id (or the `mdt_<lsn>` of an LSN) that names no mandate.
    UnknownMandate(String),
    NegativeAmount(i64),
    InvalidOwner(String),
    /// A replayed record whose LSN is not the one the state expects next.
    LsnOutOfOrder {
        expected: u64,
        got: u64,
    },
    /// More names or mandates than a u32 index counts.
    StateFull {
        what: &'static str,
    },
    /// The operating system gave no randomness for a hash seed.
    NoEntropy(String),
    /// The history database failed (`SQLite`: a full disk, a lock held too long); the log
    /// still holds everything, so the caller may retry.
    HistoryStore(String),
    /// A file that is not a history database of the schema version this code writes.
    HistorySchema {
        path: String,
        /// None: no version at all (not a history database).
        found: Option<i64>,
        expected: i64,
    },
    /// Records handed to the projector that skip some: it expected `expected` next.
    HistoryGap {
        expected: u64,
        got: u64,
    },
    /// A panic left a lock (of the index or the ledger) poisoned; its state can no longer be trusted.
    Poisoned,
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongType { what, expected, got } => write!(f, "{what} must be {expected}, not {got}"),
            Self::LengthMismatch { names, lengths } => {
                write!(f, "{names} must have the same length (got {lengths:?})")
            }
            Self::BatchTooLarge { len, max } => write!(f, "batch of {len} items is over the limit of {max}"),
            Self::UnknownKid { index, kid } => write!(f, "unknown key id {kid:?} at index {index}"),
            Self::InvalidKid { reason } => write!(f, "invalid key id: {reason}"),
            Self::InvalidSecret { reason } => write!(f, "invalid secret: {reason}"),
            Self::KeyRingFull { max } => write!(f, "key ring is full ({max} keys)"),
            Self::InvalidParallelism { threads, max } => {
                write!(
                    f,
                    "parallelism must be between 1 and {max} threads, not {threads}"
                )
            }
            Self::IntOutOfRange { what, range } => write!(f, "{what} must be an integer from {range}"),
            Self::RecordTooLarge { index, len, max } => {
                write!(
                    f,
                    "payloads[{index}] is {len} bytes, over the record limit of {max}"
                )
            }
            Self::OutOfRange {
                what,
                value,
                min,
                max,
            } => {
                write!(f, "{what} must be between {min} and {max}, not {value}")
            }
            Self::KeyLength { index, len } => write!(
                f,
                "keys[{index}] is {len} bytes long; idempotency keys are 1 to {KEY_LEN_MAX} bytes"
            ),
            Self::FingerprintLength { index, len } => write!(
                f,
                "fingerprints[{index}] is {len} bytes long; a fingerprint is a 32-byte SHA-256 digest"
            ),
            Self::TenantName { index, len } => write!(
                f,
                "tenants[{index}] is {len} bytes long; tenant names are 1 to {ID_LEN_MAX} bytes"
            ),
            Self::UnknownSlot { index, slot } => write!(
                f,
                "slots[{index}] = {slot} is not an in-flight reservation (unknown, already completed \
                 or released, or twice in the batch); nothing in the batch was applied"
            ),
            Self::CorruptDump(reason) => write!(f, "not a valid idempotency index dump: {reason}"),
            Self::IndexTooSmall { what, held, capacity } => write!(
                f,
                "{what} holds {held} idempotency keys, more than the capacity of {capacity}: \
                 dropping any would let a retry of its request apply twice; raise the capacity \
                 ([idempotency] capacity) to at least {held}"
            ),
            Self::CorruptLedger(reason) => write!(f, "not a valid ledger snapshot: {reason}"),
            Self::CorruptResults(reason) => write!(f, "not a valid results snapshot: {reason}"),
            Self::CorruptRecord { what, detail } => {
                write!(f, "a {what} record that does not decode: {detail}")
            }
            Self::InvariantBroken(breach) | Self::InvalidState(breach) => f.write_str(breach),
            Self::UnknownAccount(id) => write!(f, "no account {id}"),
            Self::UnknownMandate(id) => write!(f, "no mandate {id}"),
            Self::NegativeAmount(amount) => write!(f, "amounts are at least 0, not {amount}"),
            Self::InvalidOwner(name) => {
                write!(f, "an owner is \"customer\" or \"merchant\", not {name:?}")
            }
            Self::LsnOutOfOrder { expected, got } => {
                write!(f, "replay expected LSN {expected}, got {got}")
            }
            Self::StateFull { what } => write!(f, "the ledger holds the most {what} it can"),
            Self::NoEntropy(reason) => write!(f, "no randomness for the hash seed: {reason}"),
            Self::HistoryStore(detail) => write!(f, "the history database failed: {detail}"),
            Self::HistorySchema {
                path,
                found: Some(found),
                expected,
            } => write!(
                f,
                "{path} is a history database of schema version {found}, this code reads version \
                 {expected}; nothing was changed (move it away to rebuild it from the log)"
            ),
            Self::HistorySchema {
                path,
                found: None,
                expected,
            } => write!(
                f,
                "{path} is not a history database (no projection row of schema version {expected}); \
                 nothing was changed"
            ),
            Self::HistoryGap { expected, got } => write!(
                f,
                "the history expects LSN {expected} next, the records given go on at LSN {got}: \
                 records {expected} to {} are missing",
                got - 1
            ),
            Self::Poisoned => write!(f, "the native state is unusable after a panic in an earlier call"),
        }
    }
}

impl std::error::Error for CoreError {}

impl From<CoreError> for PyErr {
    fn from(error: CoreError) -> Self {
        let message = error.to_string();
        match error {
            CoreError::WrongType { .. } => PyTypeError::new_err(message),
            CoreError::UnknownKid { .. } | CoreError::UnknownAccount(_) | CoreError::UnknownMandate(_) => {
                PyKeyError::new_err(message)
            }
            CoreError::InvariantBroken(_) | CoreError::LsnOutOfOrder { .. } => {
                PyAssertionError::new_err(message)
            }
            CoreError::LengthMismatch { .. }
            | CoreError::BatchTooLarge { .. }
            | CoreError::InvalidKid { .. }
            | CoreError::InvalidSecret { .. }
            | CoreError::KeyRingFull { .. }
            | CoreError::InvalidParallelism { .. }
            | CoreError::IntOutOfRange { .. }
            | CoreError::RecordTooLarge { .. }
            | CoreError::OutOfRange { .. }
            | CoreError::KeyLength { .. }
            | CoreError::FingerprintLength { .. }
            | CoreError::TenantName { .. }
            | CoreError::UnknownSlot { .. }
            | CoreError::CorruptDump(_)
            | CoreError::IndexTooSmall { .. }
            | CoreError::CorruptLedger(_)
            | CoreError::CorruptResults(_)
            | CoreError::CorruptRecord { .. }
            | CoreError::InvalidState(_)
            | CoreError::NegativeAmount(_)
            | CoreError::InvalidOwner(_)
            | CoreError::StateFull { .. }
            | CoreError::HistorySchema { .. }
            | CoreError::HistoryGap { .. } => PyValueError::new_err(message),
            CoreError::NoEntropy(_) | CoreError::HistoryStore(_) => PyOSError::new_err(message),
            CoreError::Poisoned => PyRuntimeError::new_err(message),
        }
    }
}

pub type CoreResult<T> = Result<T, CoreError>;
