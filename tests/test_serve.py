"""`instapay serve` as a real process: the embedded demo, a signed payment over HTTP, and a
graceful shutdown on SIGTERM that loses nothing."""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp

from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.signing import SIGNATURE_HEADER

STARTUP_TIMEOUT_S = 30.0
ACKNOWLEDGED_BEFORE_SIGTERM = 50


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """A running `instapay serve` process; its stderr (the JSON logs) is read as it comes, so a
    full pipe can never block the server."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.log_lines: list[str] = []
        assert process.stderr is not None
        errors = process.stderr
        self.reader = threading.Thread(target=lambda: self.log_lines.extend(errors), daemon=True)
        self.reader.start()

    def stop(self) -> tuple[int, list[dict[str, object]]]:
        """Sends SIGTERM (if still running); the exit status and the JSON log lines."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return status, [json.loads(line) for line in self.log_lines]


def start(directory: Path, port: int) -> Server:
    process = subprocess.Popen(  # noqa: S603 (this interpreter and our own entry point)
        [
            sys.executable,
            "-c",
            "from instapay.cli import main; raise SystemExit(main())",
            "serve",
            "--data-dir",
            str(directory),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(process)
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("instapay serving on"):
            return server
        assert line, f"the server exited with {process.wait()} before serving"
    process.kill()
    raise AssertionError("the server did not start in time")


def pay(port: int, demo: DemoMerchant, order_id: str) -> tuple[dict[str, object], bool]:
    request = demo.payment(order_id, demo.payer(0), 1999)
    http_request = urllib.request.Request(
        f"http://127.0.0.1:{port}{request.path}",
        data=request.body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: request.header or ""},
    )
    with urllib.request.urlopen(http_request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read()), response.headers.get("Idempotent-Replayed") == "true"


def test_the_demo_serves_payments_and_shuts_down_gracefully(tmp_path: Path) -> None:
    port = free_port()
    server = start(tmp_path, port)
    demo = DemoMerchant.load_or_create(tmp_path)
    first, replayed = pay(port, demo, "order-1")
    assert (first["status"], replayed) == ("succeeded", False)
    status, logs = server.stop()
    assert status == 0, "SIGTERM is a clean exit"
    assert list((tmp_path / "snapshots").glob("*.snap")), "the shutdown snapshotted"
    [access] = [line for line in logs if line["logger"] == "instapay.access"]
    assert (access["route"], access["status"], access["method"]) == ("/v1/payments", 200, "POST")
    assert isinstance(access["request_id"], str)
    assert "v1=" not in str(logs), "no signature in the logs"

    server = start(tmp_path, port)
    again, replayed = pay(port, demo, "order-1")
    assert (again["id"], replayed) == (first["id"], True)
    assert server.stop()[0] == 0


def test_a_shutdown_under_load_answers_or_refuses_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    server = start(tmp_path, port)
    demo = DemoMerchant.load_or_create(tmp_path)

    async def load() -> list[str]:
        acknowledged: list[str] = []
        under_way = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(n: int) -> None:
                request = demo.payment(f"load-{n}", demo.payer(n % 100), 1)
                headers = {
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: request.header or "",
                }
                try:
                    async with session.post(
                        f"http://127.0.0.1:{port}{request.path}", data=request.body, headers=headers
                    ) as response:
                        body = await response.read()
                        assert response.status in (200, 503), response.status
                        if response.status == 200:
                            acknowledged.append(json.loads(body)["id"])
                            if len(acknowledged) == ACKNOWLEDGED_BEFORE_SIGTERM:
                                under_way.set()
                except aiohttp.ClientConnectionError:
                    pass  # refused: the server had stopped accepting

            tasks = [asyncio.create_task(one(n)) for n in range(2000)]
            # The signal lands while requests are being answered, whatever the machine's speed.
            await asyncio.wait_for(under_way.wait(), timeout=STARTUP_TIMEOUT_S)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks)
        return acknowledged

    acknowledged = asyncio.run(load())
    status, _ = server.stop()
    assert status == 0
    assert len(acknowledged) >= ACKNOWLEDGED_BEFORE_SIGTERM

    async def present() -> list[str]:
        async with Engine.open(tmp_path, config=demo.config()) as engine:
            return [pid for pid in acknowledged if engine.payment(pid) is None]

    assert asyncio.run(present()) == [], "an acknowledged payment is missing after the restart"
