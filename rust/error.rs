//! The one error type of the native core, and its single conversion into Python exceptions.
//!
//! Messages name the argument and, for batch items, the index, and never contain key material.

use std::fmt;

use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::PyErr;

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
        }
    }
}

impl std::error::Error for CoreError {}

impl From<CoreError> for PyErr {
    fn from(error: CoreError) -> Self {
        let message = error.to_string();
        match error {
            CoreError::WrongType { .. } => PyTypeError::new_err(message),
            CoreError::UnknownKid { .. } => PyKeyError::new_err(message),
            CoreError::LengthMismatch { .. }
            | CoreError::BatchTooLarge { .. }
            | CoreError::InvalidKid { .. }
            | CoreError::InvalidSecret { .. }
            | CoreError::KeyRingFull { .. }
            | CoreError::InvalidParallelism { .. } => PyValueError::new_err(message),
        }
    }
}

pub type CoreResult<T> = Result<T, CoreError>;
