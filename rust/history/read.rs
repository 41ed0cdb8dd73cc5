//! Reading the history database in the process that writes it: through this crate's `SQLite`,
//! the one copy the projector uses. A second copy in the same process (Python's `sqlite3`
//! module links its own) does not see this copy's POSIX locks (they are per process, and each
//! copy tracks only its own), so it may take the write lock the projector holds, or truncate the
//! shared-memory index the projector has mapped: "locking protocol" errors and a SIGBUS, tried.
//! Another process (the `sqlite3` shell, `instapay` commands run from a shell) is safe with any
//! copy.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OpenFlags};

use super::project::BUSY_TIMEOUT;
use crate::error::{CoreError, CoreResult};

/// A read-only connection to a history database (`SQLITE_OPEN_READ_ONLY`: any statement that
/// would write fails).
pub struct Reader {
    connection: Connection,
}

impl Reader {
    /// # Errors
    /// `HistoryStore` when the file cannot be opened (it must exist: a reader never creates it).
    pub fn open(path: &Path) -> CoreResult<Self> {
        let shown = path.display();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags)
            .map_err(|error| CoreError::HistoryStore(format!("{shown}: {error}")))?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Self { connection })
    }

    /// Runs one statement with positional parameters (`?`), in one read transaction: every row
    /// is of the same projected LSN.
    ///
    /// # Errors
    /// `HistoryStore` for a statement `SQLite` refuses (a write among them) or a failed read.
    pub fn query(&self, sql: &str, parameters: &[Value]) -> CoreResult<Vec<Vec<Value>>> {
        let mut statement = self.connection.prepare_cached(sql)?;
        let width = statement.column_count();
        let mut rows = statement.query(params_from_iter(parameters))?;
        let mut answer = Vec::new();
        while let Some(row) = rows.next()? {
            let values = (0..width).map(|at| row.get::<_, Value>(at));
            answer.push(values.collect::<Result<Vec<Value>, _>>()?);
        }
        Ok(answer)
    }
}
