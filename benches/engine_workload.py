"""The engine workload shared by the in-process benchmarks: the demo merchant and its 10 000
funded payers, the batch shape, an engine opened for them, and a stream of batches kept in flight
as many clients would keep them (benches/test_bench_engine.py, test_bench_history.py,
test_bench_webhooks.py, history_workload.py). Public API only: `Engine.open`, `submit_many`.
"""

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import orjson

from benches.baselines.naive_engine import NaiveEngine
from benches.conftest import scaled
from benches.http.presign import payment_bodies, signed_payments
from instapay import _core
from instapay.demo import DemoMerchant
from instapay.engine import Engine, FsyncMode
from instapay.model import EngineConfig, PaymentResult
from instapay.signing import SignedRequest

ACCOUNTS = 10_000
FUNDS = 10**12
BATCH_LEN = 1000
BATCHES_IN_FLIGHT = 4
# The history most of these benchmarks build: the recovery log, the snapshot reopened, and the
# state a snapshot is taken of while payments go on.
HISTORY_PAYMENTS = scaled(1_000_000, 50_000)
# Payments signed at once while building a history: their signatures must still be fresh when the
# engine reads them, and a million signed requests held at once would weigh on the heap measured.
SIGN_CHUNK_LEN = 50_000
DEMO = DemoMerchant()


def lone_merchant_capacity(keys: int) -> int:
    """An idempotency capacity in which one merchant alone can hold `keys` keys: it borrows all
    but one share of the index (`idempotency_share_percent`, at least the floor of a share)."""
    share_percent = EngineConfig().idempotency_share_percent
    return -(-keys * 100 // (100 - share_percent)) + _core.IDEMPOTENCY_TENANT_KEYS_MIN


def funded_naive_engine(log: Path) -> NaiveEngine:
    """The naive engine with the demo's key and its payers funded as `DEMO.set_up` funds them."""
    balances = {DEMO.payer(n): FUNDS for n in range(ACCOUNTS)}
    return NaiveEngine(log, {DEMO.kid: DEMO.secret}, balances)


def open_engine(
    directory: Path,
    payments_max: int,
    *,
    fsync: FsyncMode = "always",
    snapshot_every_records: int | None = None,
    snapshot_on_close: bool = True,
    history: bool = False,
) -> AbstractAsyncContextManager[Engine]:
    """`Engine.open` for the demo merchant with room for `payments_max` payments' idempotency
    keys; automatic snapshots only every `snapshot_every_records` records if given, else never
    while `payments_max` payments go in (a benchmark takes them where it means to). Without the
    history projector unless `history`: these engines measure the engine's own memory, recovery
    and snapshots (as before the history), and build histories faster than a projector on the
    same two cores keeps up with, which its backpressure would refuse; the projector's costs are
    benches/test_bench_projector.py's rows."""
    every = snapshot_every_records or 2 * (payments_max + 3 * ACCOUNTS)
    return Engine.open(
        directory,
        config=DEMO.config(),
        fsync=fsync,
        idempotency_capacity=lone_merchant_capacity(payments_max),
        snapshot_every_records=every,
        snapshot_on_close=snapshot_on_close,
        history=history,
    )


async def stream(engine: Engine, requests: Sequence[SignedRequest]) -> list[float]:
    """Sends `requests` in batches of BATCH_LEN, BATCHES_IN_FLIGHT at a time, each lane sending its
    next batch as soon as its last is answered. When each batch was answered (perf_counter
    seconds, in order); RuntimeError if the engine refused any payment."""
    starts = iter(range(0, len(requests), BATCH_LEN))
    answered_s: list[float] = []

    async def lane() -> None:
        for start in starts:
            answers = await engine.submit_many(requests[start : start + BATCH_LEN])
            answered_s.append(time.perf_counter())
            refused = [answer for answer in answers if not isinstance(answer, PaymentResult)]
            if refused:
                raise RuntimeError(f"{len(refused)} payments refused, the first: {refused[0]!r}")

    await asyncio.gather(*(lane() for _ in range(BATCHES_IN_FLIGHT)))
    return answered_s


def chunks(prefix: str, payments: int) -> Iterator[tuple[str, int]]:
    """A history's payments a chunk at a time: each chunk's order id prefix and length."""
    for first in range(0, payments, SIGN_CHUNK_LEN):
        yield f"{prefix}{first}", min(SIGN_CHUNK_LEN, payments - first)


async def add_history(engine: Engine, prefix: str, payments: int) -> None:
    """`payments` new payments, signed a chunk at a time, the payers in turn."""
    for chunk, count in chunks(prefix, payments):
        now_s = int(time.time())
        await stream(engine, signed_payments(DEMO, chunk, count, payers=ACCOUNTS, now_s=now_s))


def add_naive_history(naive: NaiveEngine, prefix: str, payments: int) -> None:
    """The same payments as `add_history` (bodies), checked already, into the naive engine."""
    for chunk, count in chunks(prefix, payments):
        naive.extend(orjson.loads(body) for body in payment_bodies(DEMO, chunk, count, ACCOUNTS))
