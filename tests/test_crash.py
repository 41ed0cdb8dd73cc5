"""Crash test: SIGKILL a real engine process under load, reopen its data directory, and check that
every acknowledged result survived, nothing was applied twice, and the books balance; and that
history.db, killed mid-transaction of its projector, held exactly the log's records up to its
projected LSN, and after the restart holds exactly the durable results.

Rounds per run: INSTAPAY_CRASH_ROUNDS (default 6, each with its own seed and kill point); set it
higher for a soak, e.g. `INSTAPAY_CRASH_ROUNDS=200 .venv/bin/pytest tests/test_crash.py`.
"""

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from history_checks import (
    assert_history_is_a_prefix_of_the_log,
    assert_history_matches,
    read_only,
)
from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.model import PaymentResult, RefundResult, Status
from instapay.storage.history.projector import HistoryPolicy

CHILD = Path(__file__).parent / "crash" / "child.py"
ROUNDS = int(os.environ.get("INSTAPAY_CRASH_ROUNDS", "6"))
PAYERS = 20
BALANCE = 10**9
READY_TIMEOUT_S = 30.0


def kill_under_load(
    directory: Path,
    demo: DemoMerchant,
    seed: int,
    window: int | None = None,
    acks: range = range(1, 4001),
) -> list[dict[str, Any]]:
    """Runs the child until it has acknowledged some results (a number in `acks`), kills it at a
    random moment, and returns every result it acknowledged (whole lines only). `window`: the
    child's hot window (`[history] hot_results_max`)."""
    rng = random.Random(seed)
    arguments = [str(directory), demo.secret.hex(), str(seed)]
    arguments += [] if window is None else [str(window)]
    child = subprocess.Popen(  # noqa: S603 (this interpreter, our script, our arguments)
        [sys.executable, str(CHILD), *arguments],
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    output = bytearray()
    deadline = time.monotonic() + READY_TIMEOUT_S
    kill_after = rng.choice(acks)
    os.set_blocking(child.stdout.fileno(), False)
    while output.count(b"\n") < kill_after and time.monotonic() < deadline:
        chunk = child.stdout.read()
        if chunk:
            output += chunk
        elif child.poll() is not None:
            pytest.fail(f"the child died on its own with status {child.returncode}")
        else:
            time.sleep(0.001)
    child.send_signal(signal.SIGKILL)
    child.wait()
    output += child.stdout.read() or b""
    child.stdout.close()
    lines = bytes(output).split(b"\n")[:-1]  # a cut last line was never fully acknowledged
    assert lines, "the child acknowledged nothing before the deadline"
    return [orjson.loads(line) for line in lines]


async def set_up(directory: Path, demo: DemoMerchant) -> None:
    async with Engine.open(directory, config=demo.config()) as engine:
        await demo.set_up(engine, PAYERS, BALANCE)


async def check_recovery(directory: Path, demo: DemoMerchant, acked: list[dict[str, Any]]) -> None:
    async with Engine.open(directory, config=demo.config()) as engine:
        assert await engine.history_caught_up(READY_TIMEOUT_S)
        assert_history_matches(engine)
        durable = engine.results
        payments = [r for r in durable.values() if isinstance(r, PaymentResult)]
        for ack in acked:
            lsn = int(ack["id"].rpartition("_")[2])
            stored = durable.get(lsn)
            assert stored is not None, f"acknowledged {ack['id']} is gone"
            assert stored.to_json() == {
                k: v for k, v in ack.items() if k not in ("kind", "replayed")
            }
        orders = [p.order_id for p in payments]
        assert len(orders) == len(set(orders)), "an order was applied twice"
        expected = {demo.payer(n): BALANCE for n in range(PAYERS)}
        expected[demo.settlement_account] = 0
        for result in durable.values():
            if result.status != Status.SUCCEEDED:
                continue
            payer = (
                result.payer
                if isinstance(result, PaymentResult)
                else durable_payer(durable, result)
            )
            sign = 1 if isinstance(result, PaymentResult) else -1
            expected[payer] -= sign * result.amount
            expected[demo.settlement_account] += sign * result.amount
        for account, balance in expected.items():
            assert engine.balance(account) == ("EUR", balance), account
        engine.ledger.check_invariants()
        acked_payments = [ack for ack in acked if ack["kind"] == "PaymentResult"][-20:]
        for ack in acked_payments:
            retry = await engine.submit(demo.payment(ack["order_id"], ack["payer"], ack["amount"]))
            assert retry.replayed, "a retry after the restart was charged again"
            assert retry.id == ack["id"]


def durable_payer(durable: Mapping[int, PaymentResult | RefundResult], refund: RefundResult) -> str:
    payment = durable[int(refund.payment_id.rpartition("_")[2])]
    assert isinstance(payment, PaymentResult)
    return payment.payer


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_acknowledged_payments_survive_sigkill(tmp_path: Path, seed: int) -> None:
    demo = DemoMerchant()
    asyncio.run(set_up(tmp_path, demo))
    acked: list[dict[str, Any]] = []
    for kill in range(2):  # the second kill hits a directory that was itself recovered
        acked += kill_under_load(tmp_path, demo, seed * 10 + kill)
        assert_history_is_a_prefix_of_the_log(tmp_path)
        asyncio.run(check_recovery(tmp_path, demo, acked))


# The bounded hot state's round: a window of 100 results, and enough results (past two chunks of
# 4096) before the kill that memory forgets the oldest, whose refunds read them back.
HOT_WINDOW = 100
HOT_ACKS = range(9_000, 14_001)
HOT_ROUNDS = max(1, ROUNDS // 3)


async def check_recovery_from_history(
    directory: Path, demo: DemoMerchant, acked: list[dict[str, Any]]
) -> None:
    """`check_recovery` where memory holds a window only: every acknowledged result is in
    history.db as acknowledged, no order applied twice, no payment refunded beyond its amount
    (each `amount_refunded` the sum of its refunds), the books balance by the database, and a
    retry after the restart replays."""
    policy = HistoryPolicy(hot_results_max=HOT_WINDOW)
    async with Engine.open(directory, config=demo.config(), history_policy=policy) as engine:
        assert await engine.history_caught_up(READY_TIMEOUT_S)
        for ack in acked:
            stored = await engine.durable_result(int(ack["id"].rpartition("_")[2]))
            assert stored is not None, f"acknowledged {ack['id']} is gone"
            answer = stored.to_json()
            if isinstance(stored, PaymentResult):
                answer["amount_refunded"] = ack["amount_refunded"]  # refunded since, maybe
            assert answer == {k: v for k, v in ack.items() if k not in ("kind", "replayed")}
        db = read_only(directory)
        try:
            assert_refunded_once(db)
            expected = {demo.payer(n): BALANCE for n in range(PAYERS)}
            expected[demo.settlement_account] = 0
            for payer, paid, refunded in db.execute(
                "SELECT payer, SUM(amount), SUM(amount_refunded) FROM payments"
                " WHERE status = 'succeeded' GROUP BY payer"
            ):
                expected[payer] -= paid - refunded
                expected[demo.settlement_account] += paid - refunded
        finally:
            db.close()
        for account, balance in expected.items():
            assert engine.balance(account) == ("EUR", balance), account
        engine.check_invariants()
        for ack in [ack for ack in acked if ack["kind"] == "PaymentResult"][:20]:
            retry = await engine.submit(demo.payment(ack["order_id"], ack["payer"], ack["amount"]))
            assert (retry.replayed, retry.id) == (True, ack["id"]), "charged again"


def assert_refunded_once(db: sqlite3.Connection) -> None:
    """No order twice; each payment refunded within its amount, by exactly its refunds."""
    [(orders, distinct)] = db.execute("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM payments")
    assert orders == distinct, "an order was applied twice"
    for lsn, amount, refunded, summed in db.execute(
        "SELECT p.lsn, p.amount, p.amount_refunded, COALESCE(SUM(r.amount), 0) FROM payments p"
        " LEFT JOIN refunds r ON r.payment_id = 'pay_' || p.lsn AND r.status = 'succeeded'"
        " GROUP BY p.lsn"
    ):
        assert 0 <= refunded <= amount, f"pay_{lsn} refunded {refunded} of {amount}"
        assert refunded == summed, f"pay_{lsn}"


@pytest.mark.parametrize("seed", range(HOT_ROUNDS))
def test_acknowledged_refunds_of_forgotten_payments_survive_sigkill(
    tmp_path: Path, seed: int
) -> None:
    demo = DemoMerchant()
    asyncio.run(set_up(tmp_path, demo))
    acked: list[dict[str, Any]] = []
    for kill in range(2):
        acked += kill_under_load(tmp_path, demo, 1000 + seed * 10 + kill, HOT_WINDOW, HOT_ACKS)
        assert_history_is_a_prefix_of_the_log(tmp_path)
        asyncio.run(check_recovery_from_history(tmp_path, demo, acked))
    refunds_of_forgotten = [
        ack for ack in acked if ack["kind"] == "RefundResult" and ack["status"] == "succeeded"
    ]
    assert refunds_of_forgotten, "the round refunded nothing"
