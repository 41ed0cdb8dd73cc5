"""The data directory holds merchants' secrets: the engine creates it and everything in it
owner-only, warns at start-up about anything wider, and lets one engine at a time in."""

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.storage import datadir, snapshots, wal
from instapay.storage.datadir import DataDirectoryInUseError

DEMO = DemoMerchant()


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The usual umask, which leaves new files readable by all unless their mode says not."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def open_modes(directory: Path) -> dict[str, str]:
    return {str(path): f"{mode:04o}" for path, mode in datadir.open_to_others(directory)}


def run_demo(directory: Path) -> None:
    """The demo's files, an engine run with a payment, a snapshot on close."""
    DEMO.save(directory)

    async def main() -> None:
        async with Engine.open(directory, config=DEMO.config()) as engine:
            if engine.balance(DEMO.payer(0)) is None:  # the first run
                await DEMO.set_up(engine, payers=2, balance=100)
            await engine.submit(DEMO.payment("order-1", DEMO.payer(0), 10))

    asyncio.run(main())


def test_the_data_directory_and_everything_in_it_are_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "var"
    run_demo(directory)
    made = {path.relative_to(directory).as_posix() for path in directory.rglob("*")}
    assert {"LOCK", "demo-merchant.json", "wal", "snapshots"} <= made
    assert snapshots.snapshot_paths(directory), "a snapshot was written"
    assert f"{directory.stat().st_mode & 0o777:04o}" == "0700"
    assert open_modes(directory) == {}


def test_start_up_warns_once_per_path_open_to_others_naming_path_and_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_demo(tmp_path)
    segment = wal.segment_paths(tmp_path / "wal")[0][1]
    tmp_path.chmod(0o755)
    segment.chmod(0o644)
    (tmp_path / "demo-merchant.json").chmod(0o640)
    with caplog.at_level(logging.WARNING, logger=datadir.__name__):
        run_demo(tmp_path)
    warnings = [record.getMessage() for record in caplog.records if record.name == datadir.__name__]
    assert sorted(warnings) == sorted(
        [
            f"{tmp_path} has mode 0755: its group or others can read what holds merchants' "
            "secrets (want 0700)",
            f"{segment} has mode 0644: its group or others can read what holds merchants' "
            "secrets (want 0600)",
            f"{tmp_path / 'demo-merchant.json'} has mode 0640: its group or others can read "
            "what holds merchants' secrets (want 0600)",
        ]
    )


def test_an_owner_only_directory_starts_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_demo(tmp_path / "var")
    with caplog.at_level(logging.WARNING, logger=datadir.__name__):
        run_demo(tmp_path / "var")
    assert [record for record in caplog.records if record.name == datadir.__name__] == []


def test_checking_for_another_engine_creates_nothing_and_finds_one(tmp_path: Path) -> None:
    directory = tmp_path / "var"
    datadir.check_not_in_use(directory)
    assert not directory.exists()

    async def main() -> None:
        async with Engine.open(directory, config=DEMO.config()):
            with pytest.raises(DataDirectoryInUseError, match="in use by another engine"):
                datadir.check_not_in_use(directory)
        datadir.check_not_in_use(directory)

    asyncio.run(main())
