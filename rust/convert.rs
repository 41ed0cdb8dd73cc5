//! Reading Python batch arguments: sequences of bytes or str, checked item by item so a wrong
//! item is reported by argument name and index.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::type_object::PyTypeCheck;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use crate::error::{CoreError, CoreResult};

/// The most items one batch call takes. The engine's batches are far smaller; the bound keeps a
/// runaway caller from building gigabytes of results.
pub const BATCH_LEN_MAX: usize = 1 << 20;

fn type_name(object: &Bound<'_, PyAny>) -> String {
    object
        .get_type()
        .name()
        .map_or_else(|_| "an unknown type".to_owned(), |name| name.to_string())
}

fn wrong_type(what: String, expected: &'static str, object: &Bound<'_, PyAny>) -> CoreError {
    CoreError::WrongType {
        what,
        expected,
        got: type_name(object),
    }
}

/// The items of a sequence argument. A bare `str`, `bytes` or `bytearray` is refused: iterating
/// it would silently treat each character or byte as an item.
pub fn sequence_items<'py>(
    name: &'static str,
    expected: &'static str,
    sequence: &Bound<'py, PyAny>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let is_scalar = sequence.is_instance_of::<PyString>()
        || sequence.is_instance_of::<PyBytes>()
        || sequence.is_instance_of::<PyByteArray>();
    let Ok(len) = sequence.len() else {
        return Err(wrong_type(name.to_owned(), expected, sequence).into());
    };
    if is_scalar {
        return Err(wrong_type(name.to_owned(), expected, sequence).into());
    }
    if len > BATCH_LEN_MAX {
        return Err(CoreError::BatchTooLarge {
            len,
            max: BATCH_LEN_MAX,
        }
        .into());
    }
    let mut items = Vec::with_capacity(len);
    for item in sequence.try_iter()? {
        items.push(item?);
    }
    Ok(items)
}

/// `bytes` (borrowed) or `bytearray` (copied) items, readable without the GIL.
pub fn bytes_items(name: &'static str, sequence: &Bound<'_, PyAny>) -> PyResult<Vec<PyBackedBytes>> {
    sequence_items(name, "a sequence of bytes", sequence)?
        .iter()
        .enumerate()
        .map(|(index, item)| {
            item.extract::<PyBackedBytes>()
                .map_err(|_| wrong_type(format!("{name}[{index}]"), "bytes", item).into())
        })
        .collect()
}

/// Item `index` of the batch argument `name`, checked to be a `T` (`expected` names it).
pub fn typed_item<'a, 'py, T: PyTypeCheck>(
    name: &'static str,
    index: usize,
    expected: &'static str,
    item: &'a Bound<'py, PyAny>,
) -> CoreResult<&'a Bound<'py, T>> {
    item.cast::<T>()
        .map_err(|_| wrong_type(format!("{name}[{index}]"), expected, item))
}

/// Checks that the parallel sequences of a batch call have one length.
pub fn same_lengths(names: &'static str, lengths: &[usize]) -> CoreResult<usize> {
    let first = lengths.first().copied().unwrap_or(0);
    if lengths.iter().all(|&len| len == first) {
        Ok(first)
    } else {
        Err(CoreError::LengthMismatch {
            names,
            lengths: lengths.to_vec(),
        })
    }
}
