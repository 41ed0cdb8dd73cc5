//! `_core.HistoryReadConnection`: a read-only connection to a history database through the
//! `SQLite` compiled into this module, the one the projector writes with. The readers must not
//! use Python's `sqlite3` in the projector's process: that is a second copy of `SQLite`, and two
//! copies in one process do not see each other's POSIX locks (a lock one takes never blocks the
//! other, a close by one drops the other's locks: sqlite.org/howtocorrupt.html, 2.2.1), so a
//! checkpoint could overwrite pages a reader still reads. The SQL stays in Python
//! (`storage/history/reads.py`); this runs it, without the GIL.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyNone};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OpenFlags};

use crate::error::{CoreError, CoreResult};

/// A parameter of a query: what the reads bind (LSNs, times, ids), or NULL.
#[derive(FromPyObject)]
pub enum Param {
    Int(i64),
    Text(String),
}

#[pyclass(frozen, module = "instapay._core", name = "HistoryReadConnection")]
pub struct HistoryReadConnection {
    /// None once closed.
    connection: Mutex<Option<Connection>>,
}

impl HistoryReadConnection {
    fn with<T>(&self, call: impl FnOnce(&Connection) -> CoreResult<T>) -> CoreResult<T> {
        let guard: MutexGuard<'_, Option<Connection>> =
            self.connection.lock().map_err(|_| CoreError::Poisoned)?;
        let connection = guard
            .as_ref()
            .ok_or_else(|| CoreError::HistoryStore("the history read connection is closed".to_owned()))?;
        call(connection)
    }
}

fn query(connection: &Connection, sql: &str, params: &[Option<Param>]) -> CoreResult<Vec<Vec<Value>>> {
    let mut statement = connection.prepare_cached(sql)?;
    let width = statement.column_count();
    let values = params.iter().map(|param| match param {
        Some(Param::Int(number)) => Value::Integer(*number),
        Some(Param::Text(text)) => Value::Text(text.clone()),
        None => Value::Null,
    });
    let rows = statement.query_map(params_from_iter(values), |row| {
        (0..width).map(|index| row.get::<_, Value>(index)).collect()
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn to_python(py: Python<'_>, value: Value) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        Value::Null => PyNone::get(py).to_owned().into_any(),
        Value::Integer(number) => number.into_pyobject(py)?.into_any(),
        Value::Real(number) => number.into_pyobject(py)?.into_any(),
        Value::Text(text) => text.into_pyobject(py)?.into_any(),
        Value::Blob(bytes) => PyBytes::new(py, &bytes).into_any(),
    })
}

#[pymethods]
impl HistoryReadConnection {
    /// Opens `path` read-only (never creating it); `busy_timeout_ms`: how long a statement
    /// waits for a lock.
    #[new]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "pyo3 extracts the path into an owned one"
    )]
    fn new(py: Python<'_>, path: PathBuf, busy_timeout_ms: u64) -> PyResult<Self> {
        let connection = py.detach(|| -> CoreResult<Connection> {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let connection = Connection::open_with_flags(&path, flags)?;
            connection.busy_timeout(Duration::from_millis(busy_timeout_ms))?;
            Ok(connection)
        })?;
        Ok(Self {
            connection: Mutex::new(Some(connection)),
        })
    }

    /// The rows `sql` answers with `params` bound (`?` placeholders), each a tuple of its
    /// columns (int, float, str, bytes or `None`). `OSError` when `SQLite` fails.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "pyo3 extracts the parameters into an owned Vec"
    )]
    fn fetch<'py>(
        &self,
        py: Python<'py>,
        sql: &str,
        params: Vec<Option<Param>>,
    ) -> PyResult<Vec<Bound<'py, pyo3::types::PyTuple>>> {
        let rows = py.detach(|| self.with(|connection| query(connection, sql, &params)))?;
        rows.into_iter()
            .map(|row| {
                let values = row
                    .into_iter()
                    .map(|value| to_python(py, value))
                    .collect::<PyResult<Vec<_>>>()?;
                pyo3::types::PyTuple::new(py, values)
            })
            .collect()
    }

    /// Runs statements that answer no rows (`BEGIN`, `COMMIT`). `OSError` when `SQLite` fails.
    fn execute(&self, py: Python<'_>, sql: &str) -> PyResult<()> {
        Ok(py.detach(|| self.with(|connection| Ok(connection.execute_batch(sql)?)))?)
    }

    /// Closes the connection; later calls raise `OSError`. Closing twice is fine.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let closed = py.detach(|| -> CoreResult<()> {
            let mut guard = self.connection.lock().map_err(|_| CoreError::Poisoned)?;
            if let Some(connection) = guard.take() {
                connection.close().map_err(|(_, error)| CoreError::from(error))?;
            }
            Ok(())
        });
        Ok(closed?)
    }
}
