"""Write-ahead log: segment files of framed records, group commit, recovery.

A data directory holds::

    wal/wal-<first LSN, 20 digits>.log    segments: SEGMENT_HEADER, then records
    wal/<segment>.torn-<offset>           bytes cut off a torn tail, kept for inspection
    snapshots/snapshot-<LSN, 20 digits>.snap   (instapay.storage.snapshots)

Records are framed in Rust (`rust/wal.rs` documents the layout: length, CRC-32C, type, flags,
LSN, payload); a batch of records goes out in one write and one fdatasync (group commit).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from instapay import _core
from instapay.ascii_digits import ascii_int
from instapay.storage import datadir

log = logging.getLogger(__name__)

# Segment header: magic, format version, reserved (0). The first LSN is in the file name.
SEGMENT_MAGIC = b"IPWALSEG"
SEGMENT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sII")
SEGMENT_BYTES_MAX_DEFAULT = 64 * 1024 * 1024
SEGMENT_NAME_FORMAT = "wal-{:020d}.log"

SCAN_REASONS = {
    _core.SCAN_TORN: "record cut short",
    _core.SCAN_BAD_CRC: "checksum mismatch",
    _core.SCAN_BAD_HEADER: "impossible record header",
    _core.SCAN_BAD_LSN: "LSN out of sequence",
}


class WalCorruptError(Exception):
    """The log is damaged where it cannot be a torn tail; start-up must stop."""

    def __init__(self, path: Path, offset: int, problem: str) -> None:
        super().__init__(f"{path}: {problem} at byte offset {offset}")
        self.path = path
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Record:
    lsn: int
    type: int
    payload: bytes


def fsync_directory(directory: Path) -> None:
    """Makes a create, rename or delete in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_paths(wal_dir: Path) -> list[tuple[int, Path]]:
    """Segments by first LSN, oldest first."""
    segments = []
    for path in wal_dir.glob("wal-*.log"):
        first = path.name.removeprefix("wal-").removesuffix(".log")
        if len(first) == 20 and (lsn := ascii_int(first)) is not None:
            segments.append((lsn, path))
    return sorted(segments)


def _check_segment_header(path: Path, data: bytes) -> None:
    magic, version, reserved = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC or reserved != 0:
        raise WalCorruptError(path, 0, "not a WAL segment header")
    if version != SEGMENT_VERSION:
        raise WalCorruptError(path, 0, f"unsupported segment version {version}")


def _cut_torn_tail(path: Path, offset: int) -> None:
    """Moves the bytes from `offset` on aside and truncates the segment there, durably."""
    data = path.read_bytes()
    aside = path.with_name(f"{path.name}.torn-{offset}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, datadir.FILE_MODE)
    with os.fdopen(fd, "wb") as kept:
        kept.write(data[offset:])
        kept.flush()
        os.fsync(kept.fileno())
    if offset < SEGMENT_HEADER.size:
        _write_segment_header(path)
    else:
        with path.open("rb+") as segment:
            segment.truncate(offset)
            os.fsync(segment.fileno())
    fsync_directory(path.parent)
    log.warning("cut a torn tail of %d bytes off %s (kept in %s)", len(data) - offset, path, aside)


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """What reading one segment found: its bytes (`data`), whose records, from byte
    `SEGMENT_HEADER.size` on, end at byte `end`, where a torn tail starts when `torn_at` is set.
    Recovery replays the records from the bytes (`recovery.replay_segment`); `records` reads
    them as objects."""

    path: Path
    first_lsn: int
    data: bytes
    lsn_next: int
    end: int
    torn_at: int | None

    @property
    def records(self) -> list[Record]:
        # The scan that found `end` stops there again.
        raw, _, _ = _core.wal_scan(self.data, SEGMENT_HEADER.size, self.first_lsn)
        return [Record(lsn, kind, payload) for lsn, kind, payload in raw]


def scan_segment(path: Path, first_lsn: int, *, last: bool) -> SegmentScan:
    """Reads one segment without changing it. Only the last segment may end in a torn tail;
    anything else is a `WalCorruptError`."""
    data = path.read_bytes()
    if len(data) < SEGMENT_HEADER.size:
        if not last:
            raise WalCorruptError(path, len(data), "segment shorter than its header")
        return SegmentScan(path, first_lsn, b"", first_lsn, 0, 0)
    _check_segment_header(path, data)
    count, end, reason = _core.wal_scan_extent(data, SEGMENT_HEADER.size, first_lsn)
    lsn_next = first_lsn + count
    torn_at = None
    if reason != _core.SCAN_END:
        if not last or _core.wal_next_valid(data, end, lsn_next) is not None:
            raise WalCorruptError(path, end, SCAN_REASONS[reason])
        torn_at = end
    return SegmentScan(path, first_lsn, data, lsn_next, end, torn_at)


def scan_log(
    directory: Path, lsn_after: int = 0, lsn_reached: int | None = None
) -> Iterator[SegmentScan]:
    """Reads, without changing anything, the segments holding records above `lsn_after`;
    raises `WalCorruptError` for damage that is not a torn tail, for a gap in the LSNs, or for
    a log that ends before `lsn_reached` (default `lsn_after`), an LSN it is known to have
    reached: records there were acknowledged, and appending after the end would reissue them."""
    lsn_reached = lsn_after if lsn_reached is None else lsn_reached
    wal_dir = directory / "wal"
    segments = segment_paths(wal_dir) if wal_dir.is_dir() else []
    if not segments:
        if lsn_reached > 0:
            raise WalCorruptError(wal_dir, 0, f"no segment holds the log up to LSN {lsn_reached}")
        return
    # Segments wholly at or before `lsn_after` are not read.
    while len(segments) > 1 and segments[1][0] <= lsn_after + 1:
        segments.pop(0)
    lsn_expected = segments[0][0]
    if lsn_expected > lsn_after + 1:
        raise WalCorruptError(
            segments[0][1], 0, f"records {lsn_after + 1} to {lsn_expected - 1} are missing"
        )
    for index, (first_lsn, path) in enumerate(segments):
        if first_lsn != lsn_expected:
            raise WalCorruptError(path, 0, f"segment starts at LSN {first_lsn}, not {lsn_expected}")
        last = index == len(segments) - 1
        scan = scan_segment(path, first_lsn, last=last)
        if last and scan.lsn_next <= lsn_reached:
            missing = f"records {scan.lsn_next} to {lsn_reached} are missing"
            raise WalCorruptError(path, scan.end, f"{missing} (a snapshot covers them)")
        lsn_expected = scan.lsn_next
        yield scan


def replay_segments(
    directory: Path, lsn_after: int, lsn_reached: int | None = None
) -> Iterator[SegmentScan]:
    """The segments holding records with an LSN above `lsn_after`, oldest first, for recovery.

    A torn tail of the last segment is cut off (and kept aside); any other damage, a gap in
    the LSNs or a log that ends before `lsn_reached` (see `scan_log`) raises `WalCorruptError`
    naming the file and byte offset.
    """
    for scan in scan_log(directory, lsn_after, lsn_reached):
        if scan.torn_at is not None:
            _cut_torn_tail(scan.path, scan.torn_at)
        yield scan


def replay(
    directory: Path, lsn_after: int, lsn_reached: int | None = None
) -> Iterator[list[Record]]:
    """The records with an LSN above `lsn_after`, a segment's worth at a time (see
    `replay_segments`)."""
    for scan in replay_segments(directory, lsn_after, lsn_reached):
        yield [record for record in scan.records if record.lsn > lsn_after]


def _write_segment_header(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, datadir.FILE_MODE)
    try:
        os.write(fd, SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, 0))
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)


class WalWriter:
    """Appends batches of records to the newest segment; one write and one fdatasync each.

    Not thread-safe: the engine calls it from its single log thread.
    """

    def __init__(
        self, directory: Path, lsn_next: int, *, sync: bool, segment_bytes_max: int
    ) -> None:
        self.wal_dir = directory / "wal"
        datadir.create(self.wal_dir)
        self.sync = sync
        self.segment_bytes_max = segment_bytes_max
        self.lsn_next = lsn_next
        # Record bytes written by this writer, across segments.
        self.bytes_written = 0
        segments = segment_paths(self.wal_dir)
        if segments:
            path = segments[-1][1]
        else:
            path = self.wal_dir / SEGMENT_NAME_FORMAT.format(lsn_next)
            _write_segment_header(path)
        self._open(path)

    def _open(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.segment_bytes = os.fstat(self.fd).st_size

    def append(self, types: Sequence[int], payloads: Sequence[bytes]) -> int:
        """Writes records numbered from `lsn_next` and makes them durable; returns the first LSN.

        Any OSError leaves the log in an unknown state: the caller must stop (fail-stop).
        """
        return self.append_frames([_core.wal_encode(self.lsn_next, types, payloads)], len(types))

    def append_frames(self, frames: Sequence[bytes], count: int) -> int:
        """Writes `count` records already framed (`_core.wal_encode`, or the engine's batch stage,
        which numbers them as it applies them) and makes them durable; returns the first LSN.
        The frames must be exactly `count` valid records numbered from `lsn_next`: checked before
        anything is written (ValueError), so nothing misnumbered reaches the disk.

        Any OSError leaves the log in an unknown state: the caller must stop (fail-stop).
        """
        first = self.lsn_next
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        framed, end, reason = _core.wal_scan_extent(data, 0, first)
        if reason != _core.SCAN_END or framed != count:
            raise ValueError(
                f"the frames hold {framed} valid records numbered from LSN {first} up to byte "
                f"{end} of {len(data)}, {count} expected"
            )
        unwritten = memoryview(data)
        while unwritten:
            unwritten = unwritten[os.write(self.fd, unwritten) :]
        if self.sync:
            os.fdatasync(self.fd)
        self.segment_bytes += len(data)
        self.bytes_written += len(data)
        self.lsn_next = first + count
        if self.segment_bytes >= self.segment_bytes_max:
            self._roll_over()
        return first

    def _roll_over(self) -> None:
        os.close(self.fd)
        path = self.wal_dir / SEGMENT_NAME_FORMAT.format(self.lsn_next)
        _write_segment_header(path)
        self._open(path)

    def drop_segments_before(self, lsn: int) -> int:
        """Deletes the segments whose records all have LSNs below `lsn`; returns how many."""
        segments = segment_paths(self.wal_dir)
        dropped = 0
        for (_, path), (next_first, _) in pairwise(segments):
            if next_first > lsn or path == self.path:
                break
            path.unlink()
            dropped += 1
        if dropped:
            fsync_directory(self.wal_dir)
        return dropped

    def close(self) -> None:
        if self.sync:
            os.fsync(self.fd)
        os.close(self.fd)
