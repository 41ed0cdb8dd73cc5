//! Reading Python batch arguments: sequences of bytes or str, checked item by item so a wrong
//! item is reported by argument name and index.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::type_object::PyTypeCheck;
use pyo3::types::{PyByteArray, PyBytes, PyInt, PyList, PyString, PyTuple};

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

/// Reads every item of a sequence argument with `read` (given the item's index), walking lists
/// and tuples directly. A bare `str`, `bytes` or `bytearray` is refused: iterating it would
/// silently treat each character or byte as an item.
pub fn read_items<'py, T>(
    name: &'static str,
    expected: &'static str,
    sequence: &Bound<'py, PyAny>,
    mut read: impl FnMut(usize, &Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<Vec<T>> {
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
    if let Ok(list) = sequence.cast::<PyList>() {
        for (index, item) in list.iter().enumerate() {
            items.push(read(index, &item)?);
        }
    } else if let Ok(tuple) = sequence.cast::<PyTuple>() {
        for (index, item) in tuple.iter().enumerate() {
            items.push(read(index, &item)?);
        }
    } else {
        for (index, item) in sequence.try_iter()?.enumerate() {
            items.push(read(index, &item?)?);
        }
    }
    Ok(items)
}

/// The items of a sequence argument (see `read_items`).
pub fn sequence_items<'py>(
    name: &'static str,
    expected: &'static str,
    sequence: &Bound<'py, PyAny>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    read_items(name, expected, sequence, |_, item| Ok(item.clone()))
}

/// `bytes` (borrowed) or `bytearray` (copied) items, readable without the GIL.
pub fn bytes_items(name: &'static str, sequence: &Bound<'_, PyAny>) -> PyResult<Vec<PyBackedBytes>> {
    read_items(name, "a sequence of bytes", sequence, |index, item| {
        item.extract::<PyBackedBytes>()
            .map_err(|_| wrong_type(format!("{name}[{index}]"), "bytes", item).into())
    })
}

/// `str` items, read lossily (a lone surrogate becomes U+FFFD, so it can only fail to match);
/// with `none_allowed`, `None` items too.
pub fn text_items(
    name: &'static str,
    sequence: &Bound<'_, PyAny>,
    none_allowed: bool,
) -> PyResult<Vec<Option<String>>> {
    read_items(name, "a sequence of str", sequence, |index, item| {
        if none_allowed && item.is_none() {
            return Ok(None);
        }
        let text = item
            .cast::<PyString>()
            .map_err(|_| wrong_type(format!("{name}[{index}]"), "str", item))?;
        Ok(Some(text.to_string_lossy().into_owned()))
    })
}

/// Reads each `bytes` (in place) or `bytearray` (copied) item with `read`, without keeping it.
pub fn read_bytes_items<T>(
    name: &'static str,
    sequence: &Bound<'_, PyAny>,
    mut read: impl FnMut(usize, &[u8]) -> CoreResult<T>,
) -> PyResult<Vec<T>> {
    read_items(name, "a sequence of bytes", sequence, |index, item| {
        if let Ok(bytes) = item.cast::<PyBytes>() {
            Ok(read(index, bytes.as_bytes())?)
        } else if let Ok(array) = item.cast::<PyByteArray>() {
            Ok(read(index, &array.to_vec())?)
        } else {
            Err(wrong_type(format!("{name}[{index}]"), "bytes", item).into())
        }
    })
}

/// Integers that fit `T` and pass `valid` (`range` says which, for the error); an int outside
/// is a `ValueError`, anything else a `TypeError`.
pub fn int_items<'py, T: for<'a> FromPyObject<'a, 'py>>(
    name: &'static str,
    range: &'static str,
    sequence: &Bound<'py, PyAny>,
    valid: impl Fn(&T) -> bool,
) -> PyResult<Vec<T>> {
    read_items(name, "a sequence of int", sequence, |index, item| {
        let int = typed_item::<PyInt>(name, index, "int", item)?;
        match int.extract::<T>() {
            Ok(value) if valid(&value) => Ok(value),
            _ => Err(CoreError::IntOutOfRange {
                what: format!("{name}[{index}]"),
                range,
            }
            .into()),
        }
    })
}

/// Unsigned 64-bit integers (slots, references).
pub fn u64_items(name: &'static str, sequence: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    int_items(name, "0 to 2**64 - 1", sequence, |_| true)
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
