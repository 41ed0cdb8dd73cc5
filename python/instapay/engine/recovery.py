"""Recovery: replaying logged records into the state, and the snapshot payload (the state as of
one LSN) that lets a recovery skip the log before it. Snapshot files are instapay.storage's."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import orjson

from instapay import _core
from instapay.engine import handlers, records
from instapay.engine.handlers import ReplayMismatchError
from instapay.engine.ops import ADMIN_TENANT, Applied
from instapay.engine.records import Record, RecordType
from instapay.engine.results import Results
from instapay.engine.state import State
from instapay.ledger import Ledger
from instapay.model import AdminResult, Failure, PaymentResult, RefundResult, RequestError, Status
from instapay.protocol import PAYMENT_ID_PREFIX
from instapay.storage import wal

# Snapshot payload: length of the JSON state, the JSON state, length of the ledger state, the
# ledger state (native, rust/state/snapshot.rs), length of the results, the results (native,
# rust/state/results/snapshot.rs), then the idempotency index dump. Snapshots written before the
# ledger was native hold it as JSON rows in the state ("ledger"), with no length; those written
# before the results were native hold them as JSON rows ("results"), with no length either.
SNAPSHOT_STATE_LEN = struct.Struct("<Q")


# Recovery's recall of what a record names that memory forgot, before the record at an LSN is
# replayed: (record, LSN) -> None (engine/hot.py).
Recall = Callable[[Record, int], None]


def replay_segment(
    state: State, segment: wal.SegmentScan, lsn_after: int, recall: Recall | None = None
) -> int:
    """Applies a scanned segment's records above `lsn_after` in order, as `replay_records`
    does: runs of payments and refunds natively, from the segment's bytes (`_core.replay_run`:
    the ledger, the results and their idempotency keys in one call a run), any other record,
    and one the native replay leaves to Python, by `replay_records`, a run of them at a time.
    Returns how many records it applied."""
    lsn_first = state.lsn_next
    offset = wal.SEGMENT_HEADER.size
    while True:
        webhooks = {m.id for m in state.merchants.by_id.values() if m.webhook_url is not None}
        offset, state.lsn_next, events, scheduled, stop = _core.replay_run(
            state.ledger.native,
            state.results.native,
            state.index,
            segment.data,
            offset,
            segment.end,
            lsn_after,
            state.lsn_next,
            webhooks,
        )
        # Before the record that stopped the run: a delivery record reads these events.
        state.outbox.index_events(events)
        for lsn, merchant_id, at_ms in scheduled:
            state.outbox.schedule_new(merchant_id, lsn, at_ms)
        if stop is None:
            return state.lsn_next - lsn_first
        if isinstance(stop, str):
            raise ReplayMismatchError(stop)
        replay_records(state, [wal.Record(*entry) for entry in stop], recall)


def replay_records(state: State, logged: list[wal.Record], recall: Recall | None = None) -> None:
    """Applies logged records in order, one at a time in Python: the state, the durable
    results, and the idempotency keys they reserved (re-reserved in one go at the end). What a
    record names that memory forgot is recalled first (`recall`)."""
    keys: list[tuple[bytes, bytes, int, int]] = []
    for entry in logged:
        lsn = entry.lsn
        if lsn != state.lsn_next:
            raise AssertionError(f"replay expected LSN {state.lsn_next}, got {lsn}")
        state.lsn_next += 1
        kind, record = records.decode(entry.type, entry.payload)
        if recall is not None:
            recall(record, lsn)
        result = _replay(state, kind, lsn, record)
        key = record.logged_key()
        if isinstance(result, PaymentResult | RefundResult):
            state.remember(lsn, result)
        elif key is not None and isinstance(result, AdminResult):
            state.admin_results[lsn] = result
        if key is not None:
            keys.append((*key, lsn))
    _restore_keys(state, keys)


def _replay(state: State, kind: RecordType, lsn: int, record: Record) -> Applied:
    try:
        return handlers.replay(state, kind, lsn, record)
    except ReplayMismatchError:
        raise
    except (RequestError, ValueError, KeyError) as error:
        # The log holds it, so it applied once: the configuration file changed since.
        detail = error.message if isinstance(error, RequestError) else str(error)
        message = f"the {kind.name} record at LSN {lsn} does not apply: {detail}"
        raise ValueError(message) from None


def _restore_keys(state: State, keys: list[tuple[bytes, bytes, int, int]]) -> None:
    """Re-reserves and completes logged idempotency keys, a run of equal times at a time, each
    run after the keys past their TTL at its time expired, as they did live
    (`Index::restore_logged` does the same natively)."""
    start = 0
    while start < len(keys):
        end = start
        while end < len(keys) and keys[end][2] == keys[start][2]:
            end += 1
        run = keys[start:end]
        state.index.expire(run[0][2])
        # Logged keys were accepted once: over a share (changed since) they are kept all the
        # same, or a retry of their request would apply twice.
        answers = state.index.reserve_batch(
            [k for k, _, _, _ in run],
            [f for _, f, _, _ in run],
            run[0][2],
            [_tenant_of(state, lsn) for _, _, _, lsn in run],
            enforce_shares=False,
        )
        if any(status == _core.RESERVE_FULL for status, _ in answers):
            # Accepted once: dropping it would let a retry of its request apply twice.
            raise ValueError(
                f"the log holds more idempotency keys than the capacity of "
                f"{state.index.capacity_max}: raise the capacity ([idempotency] capacity)"
            )
        slots = [slot for status, slot in answers if status == _core.RESERVE_NEW]
        refs = [
            lsn
            for (status, _), (_, _, _, lsn) in zip(answers, run, strict=True)
            if status == _core.RESERVE_NEW
        ]
        state.index.complete_batch(slots, refs)
        start = end


def _tenant_of(state: State, lsn: int) -> str:
    """Whose share of the idempotency index the key logged at `lsn` counts in."""
    merchant_id = state.results.merchant_of(lsn)
    return ADMIN_TENANT if merchant_id is None else merchant_id


def snapshot_payload(state: State) -> bytes:
    """The state as of its last LSN: its length, the state as JSON, the ledger's length, the
    ledger (native format), the results' length, the results (native format), the idempotency
    index dump."""
    saved = {
        "lsn": state.lsn_next - 1,
        "admin_results": [
            [lsn, result.account_id, result.status, result.failure_code, result.balance]
            for lsn, result in state.admin_results.items()
        ],
        "merchants": state.merchants.to_snapshot(),
        "deliveries": state.outbox.to_snapshot(),
        # The payments held past the hot window, which the native ledger section leaves out.
        "kept_payments": state.ledger.native.kept_payments(state.results.native),
    }
    encoded = orjson.dumps(saved)
    ledger = state.ledger.to_snapshot()
    results = state.results.to_snapshot()
    return b"".join(
        (
            SNAPSHOT_STATE_LEN.pack(len(encoded)),
            encoded,
            SNAPSHOT_STATE_LEN.pack(len(ledger)),
            ledger,
            SNAPSHOT_STATE_LEN.pack(len(results)),
            results,
            state.index.dump(),
        )
    )


def restore(state: State, lsn: int, payload: bytes) -> None:
    """Loads a snapshot payload (`snapshot_payload`, or an older one) into a fresh state."""
    (length,) = SNAPSHOT_STATE_LEN.unpack_from(payload)
    start = SNAPSHOT_STATE_LEN.size
    saved = orjson.loads(payload[start : start + length])
    if saved["lsn"] != lsn:
        raise ValueError(f"snapshot for LSN {lsn} holds state of LSN {saved['lsn']}")
    start += length
    if "ledger" in saved:  # written before the ledger was native: its JSON rows
        state.ledger = Ledger.from_snapshot(saved["ledger"])
    else:
        ledger, start = _section(payload, start)
        state.ledger = Ledger.from_snapshot(ledger)
    # Snapshots written before merchants and deliveries were logged have neither.
    state.merchants.restore(saved.get("merchants", []))
    state.mark_settlement_accounts()
    if "results" in saved:  # written before the results were native: their JSON rows
        for row in saved["results"]:
            result = _result_from_row(row)
            state.remember(_lsn_of(result), result, notify=False)
    else:
        results, start = _section(payload, start)
        state.results = Results.from_snapshot(results)
        state.outbox.index_events(state.results.events_by_merchant())
    # Snapshots written before deposits took idempotency keys have none.
    for admin_lsn, account_id, status, failure, balance in saved.get("admin_results", []):
        state.admin_results[admin_lsn] = AdminResult(
            account_id, Status(status), failure_of(failure), balance
        )
    state.outbox.restore(saved.get("deliveries", []))
    # Snapshots written before the hot state was bounded have none.
    for paid, merchant_id, payer, settlement, amount, refunded in saved.get("kept_payments", []):
        state.ledger.native.recall(
            state.results.native, paid, merchant_id, payer, settlement, amount, refunded, lsn
        )
    # The configured settings, not the ones the snapshot was taken with.
    index = state.index
    state.index = _core.IdempotencyIndex.load(
        payload[start:], index.tenant_share_percent, index.capacity_max, index.ttl_seconds
    )
    state.lsn_next = lsn + 1


def _section(payload: bytes, start: int) -> tuple[bytes, int]:
    """The native section at `start` (its length, its bytes) and the offset after it."""
    (length,) = SNAPSHOT_STATE_LEN.unpack_from(payload, start)
    start += SNAPSHOT_STATE_LEN.size
    return payload[start : start + length], start + length


def _result_from_row(row: list[Any]) -> PaymentResult | RefundResult:
    """A result from its snapshot row (its fields but `replayed`, enums as their values). A
    payment's row holds its `amount_refunded` as stored, 0: its refunds tell what they gave."""
    kind = PaymentResult if row[0].startswith(PAYMENT_ID_PREFIX) else RefundResult
    status_at = kind._fields.index("status")
    row[status_at] = Status(row[status_at])
    row[status_at + 1] = failure_of(row[status_at + 1])
    result = kind(*row)
    return result._replace(amount_refunded=0) if isinstance(result, PaymentResult) else result


def _lsn_of(result: PaymentResult | RefundResult) -> int:
    return int(result.id.rpartition("_")[2])


def failure_of(code: str | None) -> Failure | None:
    """A failure code as a snapshot row holds it."""
    return None if code is None else Failure(code)
