"""The durable payment and refund results, kept for replays and reads, in native memory
(`rust/state/results`, `_core.Results`): about 80 bytes a payment where a named tuple and its
indexes took 800, one binary snapshot section where JSON lists took seconds to write and read.

`Results` is a read-only mapping of LSN to result, each built on demand (equal to what was added,
not the same object), with the indexes the engine reads: the payments of an order, the refunds of
a payment and what they gave back."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import orjson

from instapay import _core
from instapay.model import Failure, PaymentResult, RefundResult, Status
from instapay.protocol import payment_id, refund_id

Durable = PaymentResult | RefundResult

_FAILURES = {failure.value: failure for failure in Failure}
# The LSNs a result can have (u64); any other number, as an id parsed from a request may hold,
# names none.
_LSNS = range(2**64)
_STATUS = {True: Status.SUCCEEDED, False: Status.FAILED}


# What the batch stage builds a run's results as (`StagedBatch.results`): the same named tuples
# `Results` builds from the store, made natively without a Python call per result.
RESULT_TYPES = _core.ResultTypes(
    PaymentResult, RefundResult, Status.SUCCEEDED, Status.FAILED, _FAILURES
)


def _failure(code: str | None) -> Failure | None:
    return None if code is None else _FAILURES[code]


class Results(Mapping[int, Durable]):
    """The durable results by LSN (a payment's id is `pay_<lsn>`, a refund's `re_<lsn>`).
    A result keeps every field but `replayed` and a payment's `amount_refunded`, which answers
    add (`State.as_now`); each is added once, in log order."""

    __slots__ = ("_native",)

    def __init__(self, native: _core.Results | None = None) -> None:
        self._native = _core.Results() if native is None else native

    @property
    def native(self) -> _core.Results:
        """The native store, for the native calls that add to it in bulk (the batch stage
        `_core.stage_batch` and `StagedBatch.commit`, a replay)."""
        return self._native

    def add(self, lsn: int, result: Durable) -> None:
        """Keeps the result logged at `lsn`, in one native call. ValueError for an LSN not above
        every held one's, or a payment with refunds already counted in."""
        succeeded = result.status == Status.SUCCEEDED
        if isinstance(result, PaymentResult):
            if result.amount_refunded:
                raise ValueError(f"payment {result.id} is stored as made, without refunds")
            metadata = None if result.metadata is None else orjson.dumps(result.metadata)
            self._native.add_payment(
                lsn,
                result.merchant_id,
                result.order_id,
                result.payer,
                result.amount,
                result.currency,
                succeeded,
                result.failure_code,
                result.created_s,
                result.description,
                metadata,
            )
        else:
            self._native.add_refund(
                lsn,
                result.payment_id,
                result.merchant_id,
                result.amount,
                result.currency,
                succeeded,
                result.failure_code,
                result.created_s,
                result.reason,
            )

    def payment(self, lsn: int) -> PaymentResult | None:
        """The payment logged at `lsn`, as stored (no refunds counted in)."""
        row = self._native.payment(lsn) if lsn in _LSNS else None
        if row is None:
            return None
        merchant, order, payer, amount, currency, succeeded, failure, created, text, meta = row
        return PaymentResult(
            payment_id(lsn),
            merchant,
            order,
            payer,
            amount,
            currency,
            _STATUS[succeeded],
            _failure(failure),
            created,
            text,
            None if meta is None else orjson.loads(meta),
        )

    def refund(self, lsn: int) -> RefundResult | None:
        row = self._native.refund(lsn) if lsn in _LSNS else None
        if row is None:
            return None
        paid, merchant, amount, currency, succeeded, failure, created, reason = row
        return RefundResult(
            refund_id(lsn),
            paid,
            merchant,
            amount,
            currency,
            _STATUS[succeeded],
            _failure(failure),
            created,
            reason,
        )

    def __getitem__(self, lsn: int) -> Durable:
        result = self.payment(lsn) or self.refund(lsn)
        if result is None:
            raise KeyError(lsn)
        return result

    def __contains__(self, lsn: object) -> bool:
        return isinstance(lsn, int) and lsn in _LSNS and lsn in self._native

    def __iter__(self) -> Iterator[int]:
        return iter(self._native.lsns())

    def __len__(self) -> int:
        return len(self._native)

    def merchant_of(self, lsn: int) -> str | None:
        """Whose the result logged at `lsn` is, without building it; None if there is none."""
        return self._native.merchant_of(lsn) if lsn in _LSNS else None

    def payments_for_order(self, merchant_id: str, order_id: str) -> list[int]:
        """The LSNs of the payments a merchant made for one order id, oldest first."""
        return self._native.payments_for_order(merchant_id, order_id)

    def refunds_of(self, payment_id_: str) -> list[int]:
        """The LSNs of a payment's refunds, declined ones included, oldest first."""
        return self._native.refunds_of(payment_id_)

    def amount_refunded(self, payment_id_: str) -> int:
        """What the payment's refunds that succeeded gave back."""
        return self._native.amount_refunded(payment_id_)

    def payments_made(self) -> tuple[list[int], list[str], list[int]]:
        """(LSNs, merchant ids, created) of the payments that succeeded, in log order."""
        return self._native.payments_made()

    def events_by_merchant(self) -> dict[str, list[int]]:
        """The LSNs of each merchant's results, in log order."""
        return self._native.lsns_by_merchant()

    def first_lsn(self) -> int | None:
        """The LSN of the oldest result held; older ones are in history.db only."""
        return self._native.first_lsn()

    def heap_bytes(self) -> int:
        return self._native.heap_bytes()

    def to_snapshot(self) -> bytes:
        """Every result in the native snapshot format (`rust/state/results/snapshot.rs`)."""
        return self._native.to_snapshot()

    @classmethod
    def from_snapshot(cls, data: bytes) -> Results:
        """Results from `to_snapshot`'s bytes; ValueError for damaged ones."""
        return cls(_core.Results.from_snapshot(data))
