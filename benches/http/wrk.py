"""Runs wrk (closed loop: each connection sends its next request when the answer arrives) with
`replay.lua`, and reads the one result line the script prints."""

from __future__ import annotations

import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

REPLAY_SCRIPT = Path(__file__).parent / "replay.lua"
RESULT_MARK = "wrk-result "
# Long enough that a slow answer is measured as latency, not dropped as an error.
TIMEOUT_S = 10
INSTALL_HINT = "wrk is not installed: `apt-get install wrk` (Debian/Ubuntu), or `make bench`"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    replays: int
    cpu_s: float
    """CPU time wrk used, all threads: with the server's, it shows which one was the limit."""

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError(INSTALL_HINT)
    return path


def run_wrk(
    address: str, path: str, requests: Path, *, threads: int, connections: int, duration_s: int
) -> WrkResult:
    """Replays the requests in `<requests>.<thread>` files at `address` for `duration_s`."""
    command = [
        wrk_path(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={duration_s}s",
        f"--timeout={TIMEOUT_S}s",
        f"--script={REPLAY_SCRIPT}",
        f"http://{address}{path}",
        "--",
        str(requests),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout  # noqa: S603
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    [line] = [line for line in output.splitlines() if line.startswith(RESULT_MARK)]
    result = orjson.loads(line.removeprefix(RESULT_MARK))
    return WrkResult(
        requests=result["requests"],
        duration_s=result["duration_us"] / 1e6,
        p50_ms=result["p50_us"] / 1e3,
        p99_ms=result["p99_us"] / 1e3,
        socket_errors=result["socket_errors"],
        non_2xx=result["non_2xx"],
        replays=result["replays"],
        cpu_s=cpu_s,
    )
