"""Snapshot files: the engine's state as of one LSN, written atomically, the newest two kept.

    snapshots/snapshot-<LSN, 20 digits>.snap    SNAPSHOT_HEADER, then the payload

The payload is the engine's (instapay.engine.recovery); this module only frames and checks it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from pathlib import Path

from instapay import _core
from instapay.ascii_digits import ascii_int
from instapay.storage import datadir
from instapay.storage.wal import fsync_directory

log = logging.getLogger(__name__)

# Snapshot file: magic, format version, flags (0), LSN, payload length, CRC-32C of the payload.
SNAPSHOT_MAGIC = b"IPSNAPSH"
SNAPSHOT_VERSION = 1
SNAPSHOT_HEADER = struct.Struct("<8sIIQQI")
SNAPSHOT_NAME_FORMAT = "snapshot-{:020d}.snap"
# The newest snapshot and one before it, so a corrupt newest one can fall back.
SNAPSHOTS_KEPT = 2


def snapshot_paths(directory: Path) -> list[tuple[int, Path]]:
    """Snapshots by LSN, newest first."""
    snap_dir = directory / "snapshots"
    found = []
    for path in snap_dir.glob("snapshot-*.snap") if snap_dir.is_dir() else []:
        digits = path.name.removeprefix("snapshot-").removesuffix(".snap")
        if len(digits) == 20 and (lsn := ascii_int(digits)) is not None:
            found.append((lsn, path))
    return sorted(found, reverse=True)


def write_snapshot(directory: Path, lsn: int, payload: bytes) -> Path:
    """Writes a snapshot atomically (temp file, fsync, rename, fsync directory) and keeps only
    the newest `SNAPSHOTS_KEPT`."""
    snap_dir = directory / "snapshots"
    datadir.create(snap_dir)
    path = snap_dir / SNAPSHOT_NAME_FORMAT.format(lsn)
    temp = path.with_suffix(".tmp")
    header = SNAPSHOT_HEADER.pack(
        SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, lsn, len(payload), _core.crc32c(payload)
    )
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, datadir.FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(header)
        out.write(payload)
        out.flush()
        os.fsync(out.fileno())
    temp.rename(path)
    fsync_directory(snap_dir)
    for _, old in snapshot_paths(directory)[SNAPSHOTS_KEPT:]:
        old.unlink()
    return path


def read_snapshot(path: Path, lsn: int) -> bytes:
    """The payload of one snapshot file; ValueError if it is damaged."""
    data = path.read_bytes()
    if len(data) < SNAPSHOT_HEADER.size:
        raise ValueError("shorter than its header")
    magic, version, flags, stored_lsn, length, crc = SNAPSHOT_HEADER.unpack_from(data)
    payload = data[SNAPSHOT_HEADER.size :]
    if magic != SNAPSHOT_MAGIC or version != SNAPSHOT_VERSION or flags != 0:
        raise ValueError("not a snapshot of this format")
    if stored_lsn != lsn or length != len(payload) or _core.crc32c(payload) != crc:
        raise ValueError("truncated or corrupted")
    return payload


def load_snapshot(directory: Path) -> tuple[int, bytes] | None:
    """The newest intact snapshot as (LSN, payload); a damaged one is skipped with a warning."""
    for lsn, path in snapshot_paths(directory):
        try:
            return lsn, read_snapshot(path, lsn)
        except (OSError, ValueError) as error:
            log.warning("skipping snapshot %s: %s", path, error)
    return None


def newest_snapshot_lsn(directory: Path) -> int:
    """The LSN the log is known to have reached: that in the newest snapshot's name (0 if none),
    damaged or not, since a snapshot is renamed into place only after the log it covers is
    durable."""
    kept = snapshot_paths(directory)
    return kept[0][0] if kept else 0


def oldest_kept_snapshot_lsn(directory: Path) -> int:
    """The LSN the log must still reach back to: that of the oldest snapshot kept (0 if none)."""
    kept = snapshot_paths(directory)
    return kept[-1][0] if kept else 0


def remove_temp_files(directory: Path) -> None:
    """Leftovers of a snapshot interrupted before its rename."""
    for temp in (directory / "snapshots").glob("*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
