"""The servers under test, each in its own process (the load generator never shares one with
them): `instapay serve` on a fresh data directory, and the baselines: the bare aiohttp handler and
the naive server (`benches/baselines/`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from benches.baselines import naive_server
from instapay.cli import ADMIN_TOKEN_ENV
from instapay.demo import DemoMerchant

HOST = "127.0.0.1"
ADMIN_TOKEN = "bench-admin-token"  # noqa: S105 (a benchmark's throwaway token)
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
# The baselines run as modules of `benches`, from the repository's root.
REPO_ROOT = Path(__file__).parents[2]
# Every server prints a line with this once it takes requests.
READY_MARK = b" serving on "


def machine_busy_s() -> float:
    """CPU time all cores have spent neither idle nor waiting for I/O since boot (steal counts:
    on a VM it is time taken from us, like another process's)."""
    first_line = Path("/proc/stat").read_text().split("\n", 1)[0]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first_line.split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """A server process; its stdout and stderr (the JSON access log) go to files in `directory`,
    as a terminal or a log shipper would take them, so a full pipe never slows it down."""

    def __init__(self, command: list[str], port: int, directory: Path) -> None:
        self.port = port
        self.stdout_path = directory / "server.stdout"
        env = {**os.environ, ADMIN_TOKEN_ENV: ADMIN_TOKEN}
        with self.stdout_path.open("wb") as out, (directory / "server.stderr").open("wb") as err:
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and entry points)
                command, stdout=out, stderr=err, env=env, cwd=REPO_ROOT
            )
        self.wait_until_ready()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def wait_until_ready(self) -> None:
        deadline_s = time.monotonic() + STARTUP_TIMEOUT_S
        while READY_MARK not in self.stdout_path.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            if time.monotonic() > deadline_s:
                self.process.kill()
                raise RuntimeError("the server did not start in time")
            time.sleep(0.05)

    def cpu_s(self) -> float:
        """CPU time the server has used so far, all its threads, user + system."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 in proc(5)
        return ticks / os.sysconf("SC_CLK_TCK")

    def balance(self, account_id: str) -> int:
        """An account's balance through the admin API (the audit after a run)."""
        request = urllib.request.Request(
            f"http://{self.address}/v1/admin/accounts/{account_id}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            balance: int = orjson.loads(response.read())["balance"]
            return balance

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_: object) -> None:
        """SIGTERM, the graceful shutdown both servers have; a non-zero exit is an error."""
        self.process.send_signal(signal.SIGTERM)
        if self.process.wait(timeout=STOP_TIMEOUT_S) != 0:
            raise RuntimeError(f"the server exited with {self.process.returncode}")


def start_instapay(directory: Path) -> tuple[Server, DemoMerchant]:
    """`instapay serve` with its embedded demo (fsync="always", the default) in `directory`; the
    demo merchant's key is made here first, so this process can sign for it."""
    demo = DemoMerchant.load_or_create(directory)
    port = free_port()
    entry_point = str(Path(sys.executable).parent / "instapay")
    command = [entry_point, "serve", "--data-dir", str(directory), "--port", str(port)]
    return Server(command, port, directory), demo


def start_bare_aiohttp(directory: Path) -> Server:
    port = free_port()
    return Server(
        [sys.executable, "-m", "benches.baselines.bare_aiohttp", str(port)], port, directory
    )


def start_naive_server(directory: Path) -> tuple[Server, DemoMerchant]:
    """`benches/baselines/naive_server.py` in `directory`, with a demo key this process signs with;
    it logs each payment it answers to `naive_payments_logged`'s file."""
    demo = DemoMerchant.load_or_create(directory)
    port = free_port()
    module = "benches.baselines.naive_server"
    command = [sys.executable, "-m", module, str(port), str(directory)]
    return Server(command, port, directory), demo


def naive_payments_logged(directory: Path) -> int:
    with (directory / naive_server.LOG_FILE).open("rb") as log:
        return sum(1 for _ in log)
