//! How a batch is run: inline on the calling thread, or spread over the rayon pool.
//!
//! Splitting costs a few microseconds of hand-off, so only batches with enough work are spread.
//! The work of a batch is counted in bytes fed to the SHA-256 compression function (see
//! `digest::hmac_work`); the thresholds come from `make bench` on a 2-core SHA-NI machine
//! (README, "Native core"), where one core compresses about 1 GB/s.

use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::marker::Ungil;
use pyo3::Python;
use rayon::prelude::*;

use crate::error::{CoreError, CoreResult};

/// Below this much work a batch takes under ~30 µs on one core: releasing the GIL (and risking a
/// wait of up to the interpreter's switch interval to get it back) does not pay.
pub const DETACH_WORK_BYTES_MIN: usize = 32 * 1024;
/// Below this much work the rayon hand-off costs more than a second core saves.
pub const PARALLEL_WORK_BYTES_MIN: usize = 256 * 1024;
const _: () = assert!(
    PARALLEL_WORK_BYTES_MIN >= DETACH_WORK_BYTES_MIN,
    "parallel work runs detached only"
);

/// 0 means "every thread of the rayon pool" (one per core the process may run on).
static THREADS_MAX: AtomicUsize = AtomicUsize::new(0);

#[must_use]
pub fn threads_available() -> usize {
    rayon::current_num_threads()
}

/// How many threads a large batch may use; 1 keeps all hashing on the calling thread.
#[must_use]
pub fn parallelism() -> usize {
    match THREADS_MAX.load(Ordering::Relaxed) {
        0 => threads_available(),
        threads => threads,
    }
}

/// # Errors
/// `InvalidParallelism` unless `threads` is between 1 and the size of the rayon pool.
pub fn set_parallelism(threads: usize) -> CoreResult<()> {
    let max = threads_available();
    if threads == 0 || threads > max {
        return Err(CoreError::InvalidParallelism { threads, max });
    }
    THREADS_MAX.store(threads, Ordering::Relaxed);
    Ok(())
}

/// Runs `batch` with the GIL released when its work pays for the release.
pub fn run_batch<T, F>(py: Python<'_>, work_bytes: usize, batch: F) -> T
where
    T: Ungil,
    F: Ungil + FnOnce() -> T,
{
    detach_when(py, work_bytes >= DETACH_WORK_BYTES_MIN, batch)
}

/// Runs `batch` without the GIL if `detach`, else on the calling thread holding it.
pub fn detach_when<T, F>(py: Python<'_>, detach: bool, batch: F) -> T
where
    T: Ungil,
    F: Ungil + FnOnce() -> T,
{
    if detach {
        py.detach(batch)
    } else {
        batch()
    }
}

/// `(0..len).map(item)`, on several threads when the batch has enough work and parallelism
/// allows; the results keep the input order either way.
pub fn map_indexed<T, F>(len: usize, work_bytes: usize, item: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync + Send,
{
    let threads = parallelism().min(len);
    if threads <= 1 || work_bytes < PARALLEL_WORK_BYTES_MIN {
        return (0..len).map(item).collect();
    }
    // One contiguous run of items per thread: the fewest hand-offs for equal-cost items.
    let run_len = len.div_ceil(threads);
    (0..len).into_par_iter().with_min_len(run_len).map(item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_input_order_inline_and_in_parallel() {
        for work_bytes in [0, PARALLEL_WORK_BYTES_MIN] {
            let squares = map_indexed(10_000, work_bytes, |i| i * i);
            assert_eq!(squares, (0..10_000).map(|i| i * i).collect::<Vec<_>>());
        }
    }

    #[test]
    fn parallelism_outside_the_pool_is_rejected() {
        assert!(set_parallelism(0).is_err());
        assert!(set_parallelism(threads_available() + 1).is_err());
    }
}
