"""Work done by a forked copy of the process, as Redis writes its snapshots (BGSAVE).

`os.fork` gives the child a copy-on-write image of the whole heap as it is at that instant: a
consistent copy of the engine's state that costs the parent only the fork itself (copying page
tables, a few milliseconds even for a large heap), while encoding and writing a snapshot, which
takes seconds at a million payments, happens in the child as the parent's pipeline goes on.

The child only runs the given function and leaves with `os._exit`: no event loop, no other
thread (only the forking thread exists in a child), no atexit handlers, no flushing of the
parent's buffers. It closes every file it inherited but the standard streams (the data
directory's lock, the log, the server's sockets), so a restart never waits for it, and it dies
with its parent (PR_SET_PDEATHSIG), so it never writes beside a restarted engine.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

# From <linux/prctl.h>: the signal a process gets when the thread that forked it ends.
PR_SET_PDEATHSIG = 1
# File descriptors 0 to 2 (stdin, stdout, stderr) stay open in the child.
STANDARD_STREAMS = 3
# The lowest CPU priority (the most a process can add to its niceness).
CHILD_NICENESS = 19
# Enough of a child's error message to say what failed, small enough for one pipe write.
ERROR_BYTES_MAX = 4096


class ChildFailedError(Exception):
    """The forked child's work raised, or the child was killed."""


@dataclass(frozen=True, slots=True)
class Child:
    """A forked child at work: `wait` for it."""

    pid: int
    error_fd: int

    async def wait(self) -> None:
        """Waits for the child without blocking the event loop; raises ChildFailedError with
        the child's error."""
        await asyncio.to_thread(_wait, self.pid, self.error_fd)


def start_in_child(work: Callable[[], object]) -> Child:
    """Forks now a child that runs `work`. Call it when the state `work` reads is consistent
    (between batches): the child sees it exactly as it is at this call, whatever the caller
    changes after it returns."""
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_child(work, parent, write_fd)
    os.close(write_fd)
    return Child(pid, read_fd)


async def run_in_child(work: Callable[[], object]) -> None:
    """Runs `work` in a forked child (`start_in_child`) and waits for it."""
    await start_in_child(work).wait()


def _run_child(work: Callable[[], object], parent: int, error_fd: int) -> None:
    """The child's whole life: never returns."""
    code = 0
    try:
        _die_with_parent(parent)
        os.closerange(STANDARD_STREAMS, error_fd)
        os.closerange(error_fd + 1, os.sysconf("SC_OPEN_MAX"))
        # The engine's batches come first: on a busy machine the snapshot waits for the CPU.
        os.nice(CHILD_NICENESS)
        # A collection would touch every object's header, copying the whole heap page by page.
        gc.disable()
        work()
    except BaseException as error:  # everything goes to the parent, then the child exits
        os.write(error_fd, f"{type(error).__name__}: {error}".encode()[:ERROR_BYTES_MAX])
        code = 1
    finally:
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _wait(pid: int, error_fd: int) -> None:
    """Blocks (in a worker thread) until the child exits; raises ChildFailedError if it failed."""
    with os.fdopen(error_fd, "rb") as errors:
        message = errors.read().decode(errors="replace")  # EOF once the child has exited
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise ChildFailedError(f"killed by signal {os.WTERMSIG(status)}")
    if os.WEXITSTATUS(status) != 0:
        raise ChildFailedError(message or f"exited with status {os.WEXITSTATUS(status)}")
