"""The history projector through the real engine: history.db holds exactly the durable results,
the ledger's balances and running entries, and the delivery attempts; it catches up after a
restart (or rebuilds when deleted), refuses a log that no longer reaches it, keeps its files
owner-only and free of secrets, slows intake when it falls behind, and keeps the log it needs."""

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import ClientResponse, ClientSession
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from history_checks import assert_history_matches, projected_lsn, read_only, rows
from instapay import _core
from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.engine.records import RecordType
from instapay.http.app import RUNTIME, ServerSettings, create_app
from instapay.model import (
    EngineConfig,
    Merchant,
    Overloaded,
    PaymentResult,
    RequestError,
    Status,
)
from instapay.outbox import DeliveryOutcome
from instapay.signing import SIGNATURE_HEADER
from instapay.storage import snapshots, wal
from instapay.storage.history import history_path
from instapay.storage.history import projector as projector_module
from instapay.storage.history.projector import HistoryPolicy, HistoryUnreachableError
from test_records import JSON_LOG_LSN_LAST, json_log

T = TypeVar("T")
DEMO = DemoMerchant()
WEBHOOK_SECRET = os.urandom(32)
BALANCE = 10_000
CAUGHT_UP_TIMEOUT_S = 60.0
AT_MS = 1_700_000_000_000


def config() -> EngineConfig:
    """The demo merchant with a webhook, so that a webhook secret is logged too."""
    merchant = Merchant(
        DEMO.merchant_id,
        DEMO.settlement_account,
        {DEMO.kid: DEMO.secret},
        webhook_url="http://127.0.0.1:9/hook",
        webhook_secret=WEBHOOK_SECRET,
    )
    return EngineConfig((merchant,))


def run(directory: Path, scenario: Callable[[Engine], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        async with Engine.open(directory, config=config(), **options) as engine:
            return await scenario(engine)

    return asyncio.run(main())


async def caught_up(engine: Engine) -> None:
    assert await engine.history_caught_up(CAUGHT_UP_TIMEOUT_S)
    assert engine.history_lsn == engine.lsn_next - 1


async def pay(engine: Engine, order_id: str, amount: int, payer: int = 0) -> PaymentResult:
    result = await engine.submit(DEMO.payment(order_id, DEMO.payer(payer), amount))
    assert isinstance(result, PaymentResult)
    return result


async def busy(engine: Engine) -> list[DeliveryOutcome]:
    """Payments (one declined), refunds (partial, the rest, of a refunded payment, of a declined
    one), deposits and withdrawals (one declined), delivery attempts; returns the attempts."""
    await DEMO.set_up(engine, payers=3, balance=BALANCE)
    paid = [await pay(engine, f"o-{n}", 100 + n, payer=n % 3) for n in range(6)]
    declined = await pay(engine, "too-much", BALANCE * 10)
    assert declined.status == Status.FAILED
    for refund in (
        DEMO.refund(paid[0].id, 30),
        DEMO.refund(paid[0].id),
        DEMO.refund(paid[0].id, 1),
        DEMO.refund(declined.id, 1),
    ):
        with contextlib.suppress(RequestError):  # a refund the rules refuse is not logged
            await engine.submit(refund)
    await engine.deposit(DEMO.payer(1), 500, "EUR")
    await engine.withdraw(DEMO.payer(2), 250, "EUR")
    await engine.withdraw(DEMO.payer(2), BALANCE * 10, "EUR")
    event = int(paid[1].id.removeprefix("pay_"))
    outcomes = [
        DeliveryOutcome(event, AT_MS, "500", False, AT_MS + 15_000),
        DeliveryOutcome(event, AT_MS + 15_000, "200", True, None),
    ]
    await engine.record_deliveries(outcomes)
    return outcomes


def test_history_holds_exactly_the_durable_results_balances_and_attempts(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> tuple[list[DeliveryOutcome], int]:
        outcomes = await busy(engine)
        await caught_up(engine)
        assert_history_matches(engine)
        refunds = [r for r in engine.results.values() if r.id.startswith("re_")]
        assert {r.status for r in refunds} == {Status.SUCCEEDED, Status.FAILED}
        return outcomes, engine.lsn_next - 1

    outcomes, last = run(tmp_path, scenario)
    attempts = rows(
        tmp_path,
        "SELECT logged_lsn, position, event_lsn, at_ms, outcome, delivered, next_at_ms, round "
        "FROM delivery_attempts ORDER BY logged_lsn, position",
    )
    assert attempts == [
        (last, n, o.event_lsn, o.at_ms, o.outcome, int(o.delivered), o.next_at_ms, o.round)
        for n, o in enumerate(outcomes)
    ]
    assert projected_lsn(tmp_path) == last


def test_a_restart_catches_up_what_was_logged_without_the_projector(tmp_path: Path) -> None:
    run(tmp_path, busy, history=False)
    assert not history_path(tmp_path).exists()

    async def more(engine: Engine) -> None:
        await pay(engine, "after", 7)
        await caught_up(engine)
        assert_history_matches(engine)

    run(tmp_path, more)


def test_a_deleted_history_is_rebuilt_equal_from_the_log(tmp_path: Path) -> None:
    run(tmp_path, busy)
    before = rows(tmp_path, "SELECT * FROM payments_view ORDER BY lsn")
    entries = rows(tmp_path, "SELECT * FROM account_entries ORDER BY account_id, lsn")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{history_path(tmp_path)}{suffix}").unlink()

    async def rebuilt(engine: Engine) -> None:
        await caught_up(engine)
        assert_history_matches(engine)

    run(tmp_path, rebuilt)
    assert rows(tmp_path, "SELECT * FROM payments_view ORDER BY lsn") == before
    assert rows(tmp_path, "SELECT * FROM account_entries ORDER BY account_id, lsn") == entries


SMALL_LOG = {"segment_bytes_max": 4096, "snapshot_every_records": 20}


def payments_run(prefix: str, *, set_up: bool = False) -> Callable[[Engine], Awaitable[None]]:
    """A run of 120 payments (after the demo's accounts with `set_up`), projected."""

    async def scenario(engine: Engine) -> None:
        if set_up:
            await DEMO.set_up(engine, payers=3, balance=BALANCE)
        for n in range(120):
            await pay(engine, f"{prefix}-{n}", 1, payer=n % 3)
        await caught_up(engine)

    return scenario


def remove_history(directory: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{history_path(directory)}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("left_empty", [False, True], ids=["deleted", "empty"])
def test_a_deleted_history_is_rebuilt_from_the_oldest_kept_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, left_empty: bool
) -> None:
    # Two runs: each close snapshots, so both kept snapshots are past the first segments
    # whatever the automatic snapshots managed under load.
    run(tmp_path, payments_run("o", set_up=True), **SMALL_LOG)
    run(tmp_path, payments_run("p"), **SMALL_LOG)
    first = wal.segment_paths(tmp_path / "wal")[0][0]
    assert first > 1, "snapshots and the projector let the oldest segments go"
    oldest = snapshots.oldest_kept_snapshot_lsn(tmp_path)
    assert oldest + 1 >= first
    remove_history(tmp_path)
    if left_empty:  # a new database, projected to LSN 0: the same as none
        _core.HistoryProjector(history_path(tmp_path)).close()
        assert projected_lsn(tmp_path) == 0

    async def rebuilt(engine: Engine) -> int:
        await caught_up(engine)
        # Every result memory holds (all of them: the window is larger) reads the same, every
        # account has the ledger's balance and its entries sum to it.
        assert_history_matches(engine)
        paid = await pay(engine, "after", 3, payer=1)
        await engine.submit(DEMO.refund(paid.id, 1))
        # A payment only the snapshot gave the database is refunded on top of it too.
        seeded = engine.results[min(engine.results)]
        assert isinstance(seeded, PaymentResult)
        assert int(seeded.id.removeprefix("pay_")) <= oldest
        refunded = await engine.submit(DEMO.refund(seeded.id, 1))
        assert refunded.status == Status.SUCCEEDED
        await caught_up(engine)
        assert_history_matches(engine)
        return len(engine.ledger.accounts())

    with caplog.at_level(logging.WARNING, logger=projector_module.__name__):
        accounts = run(tmp_path, rebuilt, **SMALL_LOG)
    assert f"history.db rebuilt from the snapshot at LSN {oldest}" in caplog.text
    opening = "SELECT count(*), min(lsn), max(lsn) FROM account_entries WHERE kind = 'opening'"
    assert rows(tmp_path, opening) == [(accounts, oldest, oldest)]
    # Rebuilt once: the next start goes on from what the database holds.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=projector_module.__name__):
        run(tmp_path, payments_run("q"), **SMALL_LOG)
    assert "rebuilt" not in caplog.text
    assert rows(tmp_path, opening) == [(accounts, oldest, oldest)]


def test_a_history_the_log_no_longer_reaches_is_refused(tmp_path: Path) -> None:
    run(tmp_path, payments_run("o", set_up=True), **SMALL_LOG)
    projected = projected_lsn(tmp_path)
    old = tmp_path / "old-history.db"
    with (
        contextlib.closing(read_only(tmp_path)) as source,
        contextlib.closing(sqlite3.connect(old)) as copy,
    ):
        source.backup(copy)
    # Two more runs: both kept snapshots, and the segments kept, are past what the copy holds.
    run(tmp_path, payments_run("p"), **SMALL_LOG)
    run(tmp_path, payments_run("q"), **SMALL_LOG)
    first = wal.segment_paths(tmp_path / "wal")[0][0]
    assert first > projected + 1, "snapshots and the projector let the segments after it go"
    remove_history(tmp_path)
    shutil.copyfile(old, history_path(tmp_path))
    with pytest.raises(HistoryUnreachableError) as refused:
        run(tmp_path, payments_run("r"), **SMALL_LOG)
    message = str(refused.value)
    assert f"projected to LSN {projected}," in message
    assert f"starts at LSN {first}" in message
    assert "Restore history.db" in message
    assert projected_lsn(tmp_path) == projected


def test_a_history_of_another_schema_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    run(tmp_path, busy)
    connection = sqlite3.connect(history_path(tmp_path))
    with connection:
        connection.execute("UPDATE projection SET schema_version = 99")
    connection.close()
    with pytest.raises(ValueError, match="schema version 99") as refused:
        run(tmp_path, busy)
    assert str(history_path(tmp_path)) in str(refused.value)
    assert rows(tmp_path, "SELECT schema_version FROM projection") == [(99,)]


def test_the_history_files_are_owner_only_and_hold_no_secret(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> list[bytes]:
        await busy(engine)
        await caught_up(engine)
        files = [Path(f"{history_path(tmp_path)}{suffix}") for suffix in ("", "-wal", "-shm")]
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        return [path.read_bytes() for path in files]

    contents = run(tmp_path, scenario)
    contents.append(history_path(tmp_path).read_bytes())
    for secret in (DEMO.secret, WEBHOOK_SECRET):
        for data in contents:
            assert secret not in data
            assert secret.hex().encode() not in data


# Holds history.db's write lock from another process: the SQLite that Python's sqlite3 module
# links is another copy than the projector's (bundled), and two copies in one process do not
# see each other's POSIX locks.
_HOLD_WRITE_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
"""


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    holder = subprocess.Popen(  # noqa: S603 (this interpreter, our script)
        [sys.executable, "-c", _HOLD_WRITE_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait() == 0
        holder.stdout.close()


def test_a_projector_that_cannot_write_slows_intake_and_loses_nothing(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        await DEMO.set_up(engine, payers=3, balance=BALANCE)
        await caught_up(engine)
        paid = []
        refused = None
        with write_lock_held(history_path(tmp_path)):
            for n in range(50):
                try:
                    paid.append(await pay(engine, f"o-{n}", 1))
                except Overloaded as error:
                    refused = error
                    break
            assert refused is not None, "intake went on while the history fell behind"
            assert "history projector is" in str(refused)
            assert len(paid) > 5, "refused only beyond the bound"
            assert engine.history_lsn < engine.lsn_next - 1 - 5
            # Control ops (the dispatcher's deliveries, admin) are not held back.
            await engine.deposit(DEMO.payer(1), 1, "EUR")
            await failed_once(engine)
        await caught_up(engine)
        paid.append(await pay(engine, "after", 1))
        await caught_up(engine)
        assert_history_matches(engine)
        assert len(paid) == len([r for r in engine.results.values() if r.id.startswith("pay_")])

    run(tmp_path, scenario, history_policy=HistoryPolicy(lag_records_max=5))


def test_batches_beyond_the_queue_are_read_back_from_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue of three records: while the projector cannot write, a batch of two is queued, the
    next of two does not fit, and the one of one after it, which would, is dropped too (a queue
    with a gap would fail every transaction); the log gives them back once it can write."""
    monkeypatch.setattr(projector_module, "QUEUE_RECORDS_MAX", 3)

    async def scenario(engine: Engine) -> None:
        await DEMO.set_up(engine, payers=3, balance=BALANCE)
        await caught_up(engine)
        with write_lock_held(history_path(tmp_path)):
            for batch in (["a", "b"], ["c", "d"], ["e"]):
                requests = [DEMO.payment(order_id, DEMO.payer(0), 1) for order_id in batch]
                answers = await engine.submit_many(requests)
                assert all(isinstance(answer, PaymentResult) for answer in answers)
        await caught_up(engine)
        assert_history_matches(engine)

    run(tmp_path, scenario)


async def failed_once(engine: Engine) -> None:
    """Waits until a write of the projector failed (a lock waits BUSY_TIMEOUT, then fails)."""
    history = engine.history
    assert history is not None
    for _ in range(2000):
        if history.stats.failures:
            assert history.stats.last_error is not None
            assert "locked" in history.stats.last_error
            return
        await asyncio.sleep(0.01)
    pytest.fail("the projector never failed while the lock was held")


def test_segments_stay_while_the_projector_is_behind(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> int:
        await DEMO.set_up(engine, payers=3, balance=BALANCE)
        await caught_up(engine)
        held = engine.history_lsn
        with write_lock_held(history_path(tmp_path)):
            for n in range(60):
                await pay(engine, f"o-{n}", 1)
            await asyncio.to_thread(engine.snapshot)
            first = wal.segment_paths(tmp_path / "wal")[0][0]
            assert first <= held + 1, "a segment the projector still needs was dropped"
            assert len(wal.segment_paths(tmp_path / "wal")) > 2
        await caught_up(engine)
        return held

    # Closing syncs the projector, then snapshots: the segments it passed may go now.
    held = run(tmp_path, scenario, segment_bytes_max=2048)
    assert wal.segment_paths(tmp_path / "wal")[0][0] > held + 1


def test_log_keep_records_keeps_more_log(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> int:
        await DEMO.set_up(engine, payers=3, balance=BALANCE)
        for n in range(60):
            await pay(engine, f"o-{n}", 1)
        await caught_up(engine)
        return engine.lsn_next - 1

    policy = HistoryPolicy(log_keep_records=1000)
    last = run(tmp_path, scenario, segment_bytes_max=2048, history_policy=policy)
    assert last < 1000
    assert wal.segment_paths(tmp_path / "wal")[0][0] == 1


def test_a_log_of_json_records_is_projected(tmp_path: Path) -> None:
    directory = json_log(tmp_path)

    async def main() -> None:
        async with Engine.open(directory, config=DemoMerchant().config()) as engine:
            await caught_up(engine)
            assert engine.history_lsn == JSON_LOG_LSN_LAST
            assert_history_matches(engine)

    asyncio.run(main())
    assert rows(directory, "SELECT count(*) FROM delivery_attempts") != [(0,)]


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("pay"), st.integers(0, 2), st.integers(1, 4000)),
        st.tuples(st.just("refund"), st.integers(0, 30), st.one_of(st.none(), st.integers(1, 900))),
        st.tuples(st.just("deposit"), st.integers(0, 2), st.integers(1, 3000)),
        st.tuples(st.just("withdraw"), st.integers(0, 2), st.integers(1, 3000)),
    ),
    max_size=40,
)


@settings(max_examples=15)
@given(operations=OPERATIONS)
def test_any_mix_of_operations_is_projected_as_the_engine_holds_it(
    tmp_path_factory: pytest.TempPathFactory, operations: list[tuple[str, int, int | None]]
) -> None:
    directory = tmp_path_factory.mktemp("history")

    async def scenario(engine: Engine) -> None:
        await DEMO.set_up(engine, payers=3, balance=BALANCE)
        paid: list[str] = []
        for number, operation in enumerate(operations):
            await apply(engine, operation, f"o-{number}", paid)
        await caught_up(engine)
        assert_history_matches(engine)

    run(directory, scenario, history_policy=HistoryPolicy(transaction_records_max=3))
    shutil.rmtree(directory)


async def apply(
    engine: Engine, operation: tuple[str, int, int | None], order_id: str, paid: list[str]
) -> None:
    kind, who, amount = operation
    account = DEMO.payer(who % 3)
    if kind == "pay" and amount is not None:
        paid.append((await pay(engine, order_id, amount, payer=who)).id)
    elif kind == "refund" and paid:
        with contextlib.suppress(RequestError):
            await engine.submit(DEMO.refund(paid[who % len(paid)], amount))
    elif kind == "deposit" and amount is not None:
        await engine.deposit(account, amount, "EUR")
    elif kind == "withdraw" and amount is not None:
        await engine.withdraw(account, amount, "EUR")


def test_the_core_refuses_a_record_type_of_a_newer_version(tmp_path: Path) -> None:
    projector = _core.HistoryProjector(tmp_path / "history.db")
    newer = (2 << 8) | RecordType.DEPOSIT
    frame = _core.wal_encode(1, [newer], [b"\x90"])
    with pytest.raises(ValueError, match="newer than this code"):
        projector.project(frame, 0, 10, 1)
    assert projector.lsn == 0
    projector.close()


def test_over_http_a_lagging_history_is_503_with_retry_after_and_metrics_show_it(
    tmp_path: Path,
) -> None:
    settings = ServerSettings(tmp_path, config(), history_policy=HistoryPolicy(lag_records_max=3))

    async def post(session: ClientSession, base: str, order_id: str) -> ClientResponse:
        request = DEMO.payment(order_id, DEMO.payer(0), 1)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: request.header or ""}
        async with session.post(base + request.path, data=request.body, headers=headers) as sent:
            await sent.read()
            return sent

    async def metric(session: ClientSession, base: str, name: str) -> float:
        async with session.get(base + "/metrics") as response:
            text = await response.text()
        [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
        return float(line.split()[1])

    async def scenario() -> None:
        app = create_app(settings)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            engine = await app[RUNTIME].ready()
            await DEMO.set_up(engine, payers=1, balance=BALANCE)
            base = str(server.make_url("")).rstrip("/")
            async with ClientSession() as session:
                with write_lock_held(history_path(tmp_path)):
                    statuses = [(await post(session, base, f"o-{n}")) for n in range(20)]
                    refused = [answer for answer in statuses if answer.status == 503]
                    assert refused, "no 503 while the history was behind"
                    assert refused[0].headers["Retry-After"]
                    assert await metric(session, base, "instapay_history_lag_records") > 3
                # The dispatcher may log meanwhile: only what was durable is waited for.
                assert await engine.history_caught_up(CAUGHT_UP_TIMEOUT_S)
                assert (await post(session, base, "after")).status == 200
                assert await engine.history_caught_up(CAUGHT_UP_TIMEOUT_S)
                # The dispatcher may log deliveries meanwhile: the history is at least there.
                projected = engine.history_lsn
                assert projected > 0
                assert await metric(session, base, "instapay_history_lsn") >= projected
                assert await metric(session, base, "instapay_history_durable_lsn") >= 0
                assert await metric(session, base, "instapay_history_rows_total") > 0
                assert await metric(session, base, "instapay_history_rows_per_second") > 0
        finally:
            await server.close()

    asyncio.run(scenario())
