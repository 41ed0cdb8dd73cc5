"""Snapshots written by a forked child (instapay.storage.forked): the child works on the state as
it was at the fork, reports its failures, and never outlives the engine that forked it."""

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.engine.recovery import SNAPSHOT_STATE_LEN
from instapay.model import PaymentResult, Status
from instapay.storage import datadir, forked, snapshots

DEMO = DemoMerchant()
CHILD_TIMEOUT_S = 10.0


def test_the_child_works_on_the_state_as_it_was_at_the_fork(tmp_path: Path) -> None:
    state = {"payments": 1}
    seen = tmp_path / "seen"

    async def main() -> None:
        child = asyncio.create_task(
            forked.run_in_child(lambda: seen.write_text(str(state["payments"])))
        )
        await asyncio.sleep(0)  # the task has forked
        state["payments"] = 2
        await child

    asyncio.run(main())
    assert seen.read_text() == "1"


def test_the_child_leaves_the_cpu_to_the_engine(tmp_path: Path) -> None:
    seen = tmp_path / "niceness"
    asyncio.run(forked.run_in_child(lambda: seen.write_text(str(os.nice(0)))))
    assert int(seen.read_text()) == min(os.nice(0) + forked.CHILD_NICENESS, 19)


def test_a_failing_child_reports_its_error_to_the_parent() -> None:
    def fail() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(forked.ChildFailedError, match=r"OSError: .*No space left on device"):
        asyncio.run(forked.run_in_child(fail))


def test_the_child_holds_none_of_the_files_it_inherited(tmp_path: Path) -> None:
    """Not the data directory's lock (a restarted engine would wait for the child), nor the log,
    nor the server's sockets."""
    seen = tmp_path / "open-in-child"
    lock = datadir.lock(tmp_path)
    try:
        asyncio.run(
            forked.run_in_child(lambda: seen.write_text(" ".join(os.listdir("/proc/self/fd"))))
        )
    finally:
        os.close(lock)
    # stdin, stdout, stderr, the pipe to the parent, and the one listdir opened.
    assert str(lock) not in seen.read_text().split()
    assert len(seen.read_text().split()) == 5


PARENT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from pathlib import Path
    from instapay.storage import forked

    pid_file = Path(sys.argv[1])
    def sleep_long():
        pid_file.write_text(str(os.getpid()))
        time.sleep(120)
    asyncio.run(forked.run_in_child(sleep_long))
    """
)


def test_the_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A child of a killed engine must not write a snapshot beside the restarted one."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(  # noqa: S603 (this interpreter, our script)
        [sys.executable, "-c", PARENT, str(pid_file)]
    )
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not pid_file.exists() or not pid_file.read_text():
        assert parent.poll() is None, f"the parent exited with {parent.returncode}"
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.01)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    while Path(f"/proc/{child}").exists() and "zombie" not in status_of(child):
        assert time.monotonic() < deadline, "the snapshot child outlived its engine"
        time.sleep(0.01)


def status_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return "gone"


def test_a_failed_snapshot_is_logged_and_payments_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def pay_through_failed_snapshots() -> None:
        async with Engine.open(
            tmp_path, config=DEMO.config(), snapshot_every_records=20, snapshot_on_close=False
        ) as engine:
            await DEMO.set_up(engine, payers=3, balance=10_000)
            (tmp_path / "snapshots").write_text("not a directory: every snapshot fails")
            for batch in range(5):
                answers = await engine.submit_many(
                    [DEMO.payment(f"o-{batch}-{n}", DEMO.payer(n % 3), 1) for n in range(10)]
                )
                assert all(
                    isinstance(a, PaymentResult) and a.status == Status.SUCCEEDED for a in answers
                )

    with caplog.at_level(logging.ERROR, logger="instapay.engine"):
        asyncio.run(pay_through_failed_snapshots())
    assert "failed, the log keeps everything" in caplog.text
    (tmp_path / "snapshots").unlink()

    async def count_payments() -> int:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            return sum(isinstance(r, PaymentResult) for r in engine.results.values())

    assert asyncio.run(count_payments()) == 50
    assert snapshots.snapshot_paths(tmp_path), "the restart snapshots as it closes"


def test_a_snapshot_taken_while_batches_wait_holds_the_state_of_its_lsn(tmp_path: Path) -> None:
    """Requests still queued when a snapshot is due are staged right after it: the child must
    be forked before them, or its snapshot holds records beyond its LSN (not yet durable) and
    the next start refuses it."""

    async def pay_while_snapshotting() -> None:
        async with Engine.open(
            tmp_path,
            config=DEMO.config(),
            batch_size_max=10,
            snapshot_every_records=25,
            snapshot_on_close=False,
        ) as engine:
            await DEMO.set_up(engine, payers=3, balance=10_000)
            requests = [DEMO.payment(f"o-{n}", DEMO.payer(n % 3), 1) for n in range(200)]
            answers = await engine.submit_many(requests)
            assert all(isinstance(a, PaymentResult) for a in answers)
            while engine._snapshotting is not None:
                await asyncio.sleep(0.01)

    asyncio.run(pay_while_snapshotting())
    paths = snapshots.snapshot_paths(tmp_path)
    assert paths, "snapshots were taken"
    for lsn, path in paths:
        payload = snapshots.read_snapshot(path, lsn)
        (length,) = SNAPSHOT_STATE_LEN.unpack_from(payload)
        state = orjson.loads(payload[SNAPSHOT_STATE_LEN.size : SNAPSHOT_STATE_LEN.size + length])
        assert state["lsn"] == lsn, path.name
