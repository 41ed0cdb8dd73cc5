//! `_core.replay_run`: the Python binding of the native replay (`state/replay.rs`). It locks the
//! ledger and the result store for a run, replays it without the GIL, restores the run's
//! idempotency keys in the index, and answers what the Python state still needs: the events of
//! each merchant and the webhooks to schedule (`recovery.replay_segment`).

use std::collections::{HashMap, HashSet};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::idempotency::IdempotencyIndex;
use crate::ledger_py::LedgerPy;
use crate::results_py::ResultsPy;
use crate::state::replay::{self, Event, Run, Span, Stop};

/// A record the Python path applies: LSN, type, payload.
type ForeignRecord<'py> = (u64, u16, Bound<'py, PyBytes>);
/// What a run answers: the offset after the last record it took (the foreign ones included),
/// the LSN expected next, the event LSNs of each merchant, the webhooks to schedule (LSN,
/// merchant id, due at ms) in log order, and why it stopped: None at the end, the records the
/// Python path must apply, or a mismatch (the `ReplayMismatchError` detail).
type RunAnswer<'py> = (
    usize,
    u64,
    HashMap<String, Vec<u64>>,
    Vec<(u64, Bound<'py, PyString>, i64)>,
    Option<Bound<'py, PyAny>>,
);

/// Replays the payments and refunds of `data[offset..end]` (frames a scan found valid; those
/// at or below `lsn_after` skipped), the first expected at `lsn_next`, until the end or a record
/// the Python path must apply. Events of merchants in `webhook_merchants` are scheduled.
#[pyfunction]
#[expect(
    clippy::too_many_arguments,
    reason = "the three native stores, the span of the segment and the webhook merchants"
)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "pyo3 extracts the set into an owned one"
)]
pub fn replay_run<'py>(
    py: Python<'py>,
    ledger: &LedgerPy,
    results: &ResultsPy,
    index: &IdempotencyIndex,
    data: &[u8],
    offset: usize,
    end: usize,
    lsn_after: u64,
    lsn_next: u64,
    webhook_merchants: HashSet<String>,
) -> PyResult<RunAnswer<'py>> {
    let span = Span {
        data,
        at: offset,
        end,
        lsn_after,
    };
    let run = py.detach(|| {
        let mut ledger = ledger.state()?;
        let mut results = results.state()?;
        let run = replay::replay_run(&mut ledger, &mut results, span, lsn_next)?;
        index.restore_logged(&run.keys)?;
        Ok::<Run<'_>, crate::CoreError>(run)
    })?;
    let events = events_by_merchant(&run.events);
    let scheduled = scheduled(py, &run.events, &webhook_merchants);
    let (at, stop) = match run.stop {
        Stop::End => (run.at, None),
        Stop::Foreign(frames) => {
            let last = frames.last().expect("a foreign run holds its first record");
            let records = frames.iter().map(|frame| {
                let payload = &data[frame.payload_at..frame.payload_at + frame.payload_len];
                (frame.lsn, frame.record_type, PyBytes::new(py, payload))
            });
            let records: Vec<ForeignRecord<'py>> = records.collect();
            let after = last.payload_at + last.payload_len;
            (after, Some(records.into_pyobject(py)?.into_any()))
        }
        Stop::Mismatch(detail) => (run.at, Some(PyString::new(py, &detail).into_any())),
    };
    Ok((at, run.lsn_next, events, scheduled, stop))
}

fn events_by_merchant(events: &[Event<'_>]) -> HashMap<String, Vec<u64>> {
    let mut by_merchant: HashMap<String, Vec<u64>> = HashMap::new();
    // One merchant's events one after the other are the rule: its list is found once a run.
    for run in events.chunk_by(|one, next| one.merchant_id == next.merchant_id) {
        let lsns = run.iter().map(|event| event.lsn);
        match by_merchant.get_mut(run[0].merchant_id) {
            Some(held) => held.extend(lsns),
            None => {
                by_merchant.insert(run[0].merchant_id.to_owned(), lsns.collect());
            }
        }
    }
    by_merchant
}

/// (LSN, merchant id, due at) of the events whose merchant has a webhook, in log order; one
/// `str` object per merchant.
fn scheduled<'py>(
    py: Python<'py>,
    events: &[Event<'_>],
    webhook_merchants: &HashSet<String>,
) -> Vec<(u64, Bound<'py, PyString>, i64)> {
    if webhook_merchants.is_empty() {
        return Vec::new();
    }
    let mut names: HashMap<&str, Bound<'py, PyString>> = HashMap::new();
    events
        .iter()
        .filter(|event| webhook_merchants.contains(event.merchant_id))
        .map(|event| {
            let name = names
                .entry(event.merchant_id)
                .or_insert_with(|| PyString::new(py, event.merchant_id));
            (event.lsn, name.clone(), event.at_ms)
        })
        .collect()
}
