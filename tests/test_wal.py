"""The write-ahead log on real files: group commit, segments, torn tails, corruption, snapshots."""

from pathlib import Path

import pytest

from instapay import _core, wal
from instapay.wal import Record, WalCorruptError, WalWriter

KIND = 3


def writer(directory: Path, lsn_next: int = 1, segment_bytes_max: int = 1 << 20) -> WalWriter:
    return WalWriter(directory, lsn_next, sync=True, segment_bytes_max=segment_bytes_max)


def replayed(directory: Path, lsn_after: int = 0) -> list[Record]:
    return [record for batch in wal.replay(directory, lsn_after) for record in batch]


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
        wal.write_snapshot(tmp_path, lsn, f"state at {lsn}".encode())
    assert [lsn for lsn, _ in wal.snapshot_paths(tmp_path)] == [30, 20]
    assert wal.load_snapshot(tmp_path) == (30, b"state at 30")
    assert wal.oldest_kept_snapshot_lsn(tmp_path) == 20


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_newest_snapshot_falls_back_to_the_previous(tmp_path: Path, damage: str) -> None:
    wal.write_snapshot(tmp_path, 10, b"older state")
    newest = wal.write_snapshot(tmp_path, 20, b"newer state")
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[-2] ^= 1
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[:-1]))
    else:
        newest.unlink()
    assert wal.load_snapshot(tmp_path) == (10, b"older state")


def test_no_snapshot_means_replay_from_the_start(tmp_path: Path) -> None:
    assert wal.load_snapshot(tmp_path) is None
    assert replayed(tmp_path) == []
