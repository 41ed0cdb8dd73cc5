"""The data directory: owner-only modes, the warning about wider ones, and the lock that lets one
engine at a time write it.

Everything in it is for the engine's user alone: segments and snapshots hold merchants' key and
webhook secrets, `demo-merchant.json` the demo's key.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
# Permission bits that let anyone but the owner in.
NOT_OWNER_BITS = 0o077
LOCK_FILE = "LOCK"


class DataDirectoryInUseError(Exception):
    """Another engine (in this process or another) has the data directory open."""


def create(directory: Path) -> None:
    """Creates `directory` owner-only (missing parents get the usual mode); an existing one is
    left as it is, and `warn_if_open_to_others` reports it if it is wider."""
    directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)


def open_to_others(directory: Path) -> Iterator[tuple[Path, int]]:
    """The directory itself and everything below it that its group or others may access, with
    their permission bits (symbolic links are not followed)."""
    yield from _if_open(directory)
    for folder, folders, files in os.walk(directory):
        for name in (*folders, *files):
            yield from _if_open(Path(folder) / name)


def _if_open(path: Path) -> Iterator[tuple[Path, int]]:
    status = path.lstat()
    mode = stat.S_IMODE(status.st_mode)
    if mode & NOT_OWNER_BITS and not stat.S_ISLNK(status.st_mode):
        yield path, mode


def warn_if_open_to_others(directory: Path) -> None:
    """One warning line per path in the data directory that is not owner-only."""
    for path, mode in open_to_others(directory):
        wanted = DIRECTORY_MODE if path.is_dir() else FILE_MODE
        log.warning(
            "%s has mode %04o: its group or others can read what holds merchants' secrets "
            "(want %04o)",
            path,
            mode,
            wanted,
        )


def lock(directory: Path) -> int:
    """Takes the data directory's lock: two engines writing one log would corrupt it. The
    kernel drops the lock with the process, so a crash never leaves it held."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirectoryInUseError(f"{directory} is in use by another engine") from None
    return fd


def check_not_in_use(directory: Path) -> None:
    """Raises `DataDirectoryInUseError` if an engine holds `directory` now; creates nothing.
    For a clear refusal before start-up begins (the engine still takes the lock itself)."""
    if (directory / LOCK_FILE).is_file():
        os.close(lock(directory))
