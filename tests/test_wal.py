"""The write-ahead log on real files: group commit, segments, torn tails, corruption, snapshots."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from instapay import _core
from instapay.storage import datadir, snapshots, wal
from instapay.storage.wal import Record, WalCorruptError, WalWriter

KIND = 3


def writer(directory: Path, lsn_next: int = 1, segment_bytes_max: int = 1 << 20) -> WalWriter:
    return WalWriter(directory, lsn_next, sync=True, segment_bytes_max=segment_bytes_max)


def replayed(directory: Path, lsn_after: int = 0, lsn_reached: int | None = None) -> list[Record]:
    return [record for batch in wal.replay(directory, lsn_after, lsn_reached) for record in batch]


def write_batches(directory: Path, batches: list[list[bytes]], **options: int) -> WalWriter:
    log = writer(directory, **options)
    for payloads in batches:
        log.append([KIND] * len(payloads), payloads)
    return log


def payloads(count: int, start: int = 0) -> list[bytes]:
    return [f"record {n}".encode() * (1 + n % 3) for n in range(start, start + count)]


def test_batches_replay_in_order_with_consecutive_lsns(tmp_path: Path) -> None:
    written = payloads(10)
    write_batches(tmp_path, [written[:3], written[3:]]).close()
    records = replayed(tmp_path)
    assert [record.payload for record in records] == written
    assert [record.lsn for record in records] == list(range(1, 11))


def test_replay_skips_what_a_snapshot_covers(tmp_path: Path) -> None:
    write_batches(tmp_path, [payloads(10)]).close()
    assert [record.lsn for record in replayed(tmp_path, lsn_after=7)] == [8, 9, 10]


def test_segments_roll_over_and_old_ones_can_be_dropped(tmp_path: Path) -> None:
    log = write_batches(tmp_path, [payloads(5, n * 5) for n in range(6)], segment_bytes_max=200)
    segments = wal.segment_paths(tmp_path / "wal")
    assert len(segments) > 3
    assert [record.lsn for record in replayed(tmp_path)] == list(range(1, 31))
    dropped = log.drop_segments_before(segments[2][0])
    assert dropped == 2
    assert next(record.lsn for record in replayed(tmp_path, segments[2][0] - 1)) == segments[2][0]
    log.close()


def test_a_writer_reopened_after_recovery_continues_the_sequence(tmp_path: Path) -> None:
    write_batches(tmp_path, [payloads(3)]).close()
    lsn_next = replayed(tmp_path)[-1].lsn + 1
    log = writer(tmp_path, lsn_next)
    assert log.append([KIND], [b"more"]) == 4
    log.close()
    assert [record.lsn for record in replayed(tmp_path)] == [1, 2, 3, 4]


def last_segment(directory: Path) -> Path:
    return wal.segment_paths(directory / "wal")[-1][1]


def test_every_truncation_of_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    template = tmp_path / "template"
    write_batches(template, [payloads(3), [b"the last record"]]).close()
    data = last_segment(template).read_bytes()
    last_start = len(data) - (_core.WAL_HEADER_LEN + len(b"the last record"))
    for cut in range(last_start + 1, len(data)):
        directory = tmp_path / f"cut-{cut}"
        (directory / "wal").mkdir(parents=True)
        segment = directory / "wal" / last_segment(template).name
        segment.write_bytes(data[:cut])
        assert [record.lsn for record in replayed(directory)] == [1, 2, 3], f"cut at {cut}"
        assert segment.stat().st_size == last_start, "the tail is cut off"
        kept = segment.with_name(f"{segment.name}.torn-{last_start}").read_bytes()
        assert kept == data[last_start:cut], "the cut bytes are kept aside"
        log = writer(directory, 4)
        log.append([KIND], [b"after recovery"])
        log.close()
        assert replayed(directory)[-1].payload == b"after recovery"


def test_damage_followed_by_valid_records_stops_recovery_naming_file_and_offset(
    tmp_path: Path,
) -> None:
    write_batches(tmp_path, [[b"first"], [b"second"], [b"third"]]).close()
    segment = last_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    second_start = wal.SEGMENT_HEADER.size + _core.WAL_HEADER_LEN + len(b"first")
    data[second_start + _core.WAL_HEADER_LEN + 2] ^= 0x40
    segment.write_bytes(bytes(data))
    with pytest.raises(
        WalCorruptError, match=rf"{segment.name}: checksum mismatch at byte offset {second_start}"
    ):
        replayed(tmp_path)


def test_damage_in_an_older_segment_is_never_taken_for_a_torn_tail(tmp_path: Path) -> None:
    write_batches(tmp_path, [payloads(5, n * 5) for n in range(4)], segment_bytes_max=150).close()
    first = wal.segment_paths(tmp_path / "wal")[0][1]
    first.write_bytes(first.read_bytes()[:-3])
    with pytest.raises(WalCorruptError, match="record cut short"):
        replayed(tmp_path)


def test_a_missing_segment_is_a_gap(tmp_path: Path) -> None:
    write_batches(tmp_path, [payloads(5, n * 5) for n in range(4)], segment_bytes_max=150).close()
    wal.segment_paths(tmp_path / "wal")[1][1].unlink()
    with pytest.raises(WalCorruptError, match="segment starts at LSN"):
        replayed(tmp_path)


def test_a_foreign_file_is_not_read_as_a_segment(tmp_path: Path) -> None:
    (tmp_path / "wal").mkdir()
    (tmp_path / "wal" / wal.SEGMENT_NAME_FORMAT.format(1)).write_bytes(b"not a log at all")
    with pytest.raises(WalCorruptError, match="not a WAL segment header"):
        replayed(tmp_path)


def test_snapshots_load_the_newest_and_keep_two(tmp_path: Path) -> None:
    for lsn in (10, 20, 30):
        snapshots.write_snapshot(tmp_path, lsn, f"state at {lsn}".encode())
    assert [lsn for lsn, _ in snapshots.snapshot_paths(tmp_path)] == [30, 20]
    assert snapshots.load_snapshot(tmp_path) == (30, b"state at 30")
    assert snapshots.oldest_kept_snapshot_lsn(tmp_path) == 20


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_newest_snapshot_falls_back_to_the_previous(tmp_path: Path, damage: str) -> None:
    snapshots.write_snapshot(tmp_path, 10, b"older state")
    newest = snapshots.write_snapshot(tmp_path, 20, b"newer state")
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[-2] ^= 1
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[:-1]))
    else:
        newest.unlink()
    assert snapshots.load_snapshot(tmp_path) == (10, b"older state")


def test_no_snapshot_means_replay_from_the_start(tmp_path: Path) -> None:
    assert snapshots.load_snapshot(tmp_path) is None
    assert replayed(tmp_path) == []


def snapshot_then_truncate(directory: Path, keep_bytes: int) -> Path:
    """Six records and a snapshot at LSN 6 (a clean stop), then the last segment cut to its
    first `keep_bytes` bytes after the header."""
    write_batches(directory, [payloads(3), payloads(3, 3)]).close()
    snapshots.write_snapshot(directory, 6, b"state at 6")
    segment = last_segment(directory)
    segment.write_bytes(segment.read_bytes()[: wal.SEGMENT_HEADER.size + keep_bytes])
    return segment


def frame_bytes(records: list[bytes]) -> int:
    return sum(_core.WAL_HEADER_LEN + len(payload) for payload in records)


def test_a_log_cut_at_a_record_boundary_behind_the_snapshot_refuses_recovery(
    tmp_path: Path,
) -> None:
    """Records 5 and 6 were acknowledged and snapshotted: appending after record 4 would issue
    their LSNs again."""
    end = frame_bytes(payloads(4))
    segment = snapshot_then_truncate(tmp_path, end)
    offset = wal.SEGMENT_HEADER.size + end
    with pytest.raises(
        WalCorruptError,
        match=rf"{segment.name}: records 5 to 6 are missing \(a snapshot covers them\) "
        rf"at byte offset {offset}",
    ):
        replayed(tmp_path, lsn_after=6)


def test_a_log_cut_inside_a_record_behind_the_snapshot_is_no_torn_tail(tmp_path: Path) -> None:
    """A torn write can only be of records no snapshot covers; this cut is kept as it is."""
    end = frame_bytes(payloads(5))
    segment = snapshot_then_truncate(tmp_path, end - 3)
    damaged = segment.read_bytes()
    with pytest.raises(WalCorruptError, match="records 5 to 6 are missing"):
        replayed(tmp_path, lsn_after=6)
    assert segment.read_bytes() == damaged, "nothing was cut off"
    assert not list(segment.parent.glob("*.torn-*"))


def test_the_newest_snapshot_name_says_how_far_the_log_reached_even_when_it_is_damaged(
    tmp_path: Path,
) -> None:
    write_batches(tmp_path, [payloads(10)]).close()
    snapshots.write_snapshot(tmp_path, 4, b"older state")
    newest = snapshots.write_snapshot(tmp_path, 8, b"newer state")
    newest.write_bytes(newest.read_bytes()[:-1])
    segment = last_segment(tmp_path)
    segment.write_bytes(segment.read_bytes()[: wal.SEGMENT_HEADER.size + frame_bytes(payloads(6))])
    assert snapshots.load_snapshot(tmp_path) == (4, b"older state")
    assert snapshots.newest_snapshot_lsn(tmp_path) == 8
    with pytest.raises(WalCorruptError, match="records 7 to 8 are missing"):
        replayed(tmp_path, lsn_after=4, lsn_reached=snapshots.newest_snapshot_lsn(tmp_path))


def test_a_log_that_reaches_the_snapshot_exactly_recovers(tmp_path: Path) -> None:
    write_batches(tmp_path, [payloads(6)]).close()
    snapshots.write_snapshot(tmp_path, 6, b"state at 6")
    assert replayed(tmp_path, lsn_after=6, lsn_reached=6) == []


def test_a_snapshot_without_any_segment_refuses_recovery(tmp_path: Path) -> None:
    write_batches(tmp_path, [payloads(6)]).close()
    snapshots.write_snapshot(tmp_path, 6, b"state at 6")
    last_segment(tmp_path).unlink()
    with pytest.raises(WalCorruptError, match="no segment holds the log up to LSN 6"):
        replayed(tmp_path, lsn_after=6)


def test_a_missing_last_segment_behind_the_snapshot_refuses_recovery(tmp_path: Path) -> None:
    write_batches(tmp_path, [payloads(5, n * 5) for n in range(4)], segment_bytes_max=150).close()
    snapshots.write_snapshot(tmp_path, 20, b"state at 20")
    *kept, (_, holding_16_to_20), (_, empty_since_21) = wal.segment_paths(tmp_path / "wal")
    holding_16_to_20.unlink()
    empty_since_21.unlink()
    with pytest.raises(WalCorruptError, match=rf"{kept[-1][1].name}: records 16 to 20 are missing"):
        replayed(tmp_path, lsn_after=0, lsn_reached=20)


def open_modes(directory: Path) -> dict[str, str]:
    """`directory` and each path below it that its group or others may access, with its mode."""
    return {str(path): f"{mode:04o}" for path, mode in datadir.open_to_others(directory)}


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The usual umask, which leaves new files readable by all unless their mode says not."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.mark.usefixtures("usual_umask")
def test_everything_the_log_writes_is_owner_only(tmp_path: Path) -> None:
    datadir.create(tmp_path / "data")
    directory = tmp_path / "data"
    write_batches(directory, [payloads(5, n * 5) for n in range(4)], segment_bytes_max=150).close()
    snapshots.write_snapshot(directory, 10, b"state")
    segment = last_segment(directory)
    segment.write_bytes(segment.read_bytes()[:-2])
    segment.chmod(0o600)
    replayed(directory, lsn_after=10)
    assert list(segment.parent.glob("*.torn-*")), "a torn tail was kept aside"
    assert len(list(directory.rglob("*"))) > 6, "segments, a torn tail, a snapshot, folders"
    assert open_modes(directory) == {}
