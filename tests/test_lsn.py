"""An LSN is never lost once acknowledged, nor issued twice: recovery refuses a log that ends
before what a snapshot reached, and the log thread writes a batch only under the numbers the
engine gave it. Real files, real fsync, a real server process for the restarts."""

import asyncio
import signal
from pathlib import Path

import pytest

from instapay import _core
from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.model import EngineFailedError, PaymentResult
from instapay.storage import snapshots, wal
from servers import free_port, pay, refused, start


def paid_id(port: int, demo: DemoMerchant, order_id: str) -> str:
    answer, _ = pay(port, demo, order_id)
    return str(answer["id"])


def cut_last_record(directory: Path) -> tuple[Path, int]:
    """Truncates the last segment at the start of its last record; the segment and the offset."""
    first_lsn, segment = wal.segment_paths(directory / "wal")[-1]
    scan = wal.scan_segment(segment, first_lsn, last=True)
    boundary = scan.end - (_core.WAL_HEADER_LEN + len(scan.records[-1].payload))
    segment.write_bytes(segment.read_bytes()[:boundary])
    return segment, boundary


def test_a_log_cut_behind_the_snapshot_refuses_start_up_instead_of_reissuing_an_lsn(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = start(tmp_path, port)
    demo = DemoMerchant.load_or_create(tmp_path)
    paid = paid_id(port, demo, "order-1")
    assert server.stop()[0] == 0, "a clean stop: a snapshot at the payment's LSN"
    snapshot_lsn = snapshots.newest_snapshot_lsn(tmp_path)
    assert paid == f"pay_{snapshot_lsn}"
    segment, offset = cut_last_record(tmp_path)

    status, errors = refused(tmp_path, port)
    assert status == 1
    assert errors[-1] == (
        f"instapay serve: the engine could not start: {segment}: records {snapshot_lsn} to "
        f"{snapshot_lsn} are missing (a snapshot covers them) at byte offset {offset}"
    )
    assert "Traceback" not in "\n".join(errors)


def test_payments_after_a_restart_and_a_sigkill_keep_their_lsns(tmp_path: Path) -> None:
    """The other half: on an intact log, a payment acknowledged after a clean restart survives
    a SIGKILL, and the next one gets the next LSN."""
    port = free_port()
    server = start(tmp_path, port)
    demo = DemoMerchant.load_or_create(tmp_path)
    first = paid_id(port, demo, "order-1")
    assert server.stop()[0] == 0
    server = start(tmp_path, port)
    second = paid_id(port, demo, "order-2")
    server.process.send_signal(signal.SIGKILL)
    server.stop()
    server = start(tmp_path, port)
    assert paid_id(port, demo, "order-2") == second, "acknowledged before the kill, so replayed"
    third = paid_id(port, demo, "order-3")
    assert server.stop()[0] == 0
    lsns = [int(paid.removeprefix("pay_")) for paid in (first, second, third)]
    assert lsns == sorted(set(lsns)), "each payment its own, increasing LSN"


def test_a_writer_out_of_step_with_the_engine_stops_the_engine_before_writing(
    tmp_path: Path,
) -> None:
    demo = DemoMerchant()

    async def main() -> None:
        async with Engine.open(tmp_path, config=demo.config(), snapshot_on_close=False) as engine:
            await demo.set_up(engine, payers=1, balance=1000)
            logged = wal.segment_paths(tmp_path / "wal")[-1][1].read_bytes()
            engine._writer().lsn_next += 1  # as a writer bug would leave it
            with pytest.raises(EngineFailedError, match="numbered a batch from LSN"):
                await engine.submit(demo.payment("order-1", demo.payer(0), 10))
            assert wal.segment_paths(tmp_path / "wal")[-1][1].read_bytes() == logged
            assert engine.failed is not None, "fail-stop"

    asyncio.run(main())

    async def reopened() -> list[PaymentResult]:
        async with Engine.open(tmp_path, config=demo.config()) as engine:
            return [r for r in engine.results.values() if isinstance(r, PaymentResult)]

    assert asyncio.run(reopened()) == [], "the misnumbered payment never reached the log"
