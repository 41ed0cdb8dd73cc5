"""`instapay serve` as a real process: the embedded demo, a signed payment over HTTP, and a
graceful shutdown on SIGTERM that loses nothing."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from instapay.demo import DemoMerchant
from instapay.signing import SIGNATURE_HEADER

STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start(directory: Path, port: int) -> subprocess.Popen[str]:
    server = subprocess.Popen(  # noqa: S603 (this interpreter and our own entry point)
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
    assert server.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if line.startswith("instapay serving on"):
            return server
        assert line, f"the server exited with {server.wait()} before serving"
    server.kill()
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


def stop(server: subprocess.Popen[str]) -> tuple[int, list[dict[str, object]]]:
    """Sends SIGTERM; returns the exit status and the JSON log lines the server wrote."""
    server.send_signal(signal.SIGTERM)
    _, errors = server.communicate(timeout=30)
    return server.returncode, [json.loads(line) for line in errors.splitlines()]


def test_the_demo_serves_payments_and_shuts_down_gracefully(tmp_path: Path) -> None:
    port = free_port()
    server = start(tmp_path, port)
    demo = DemoMerchant.load_or_create(tmp_path)
    first, replayed = pay(port, demo, "order-1")
    assert (first["status"], replayed) == ("succeeded", False)
    status, logs = stop(server)
    assert status == 0, "SIGTERM is a clean exit"
    assert list((tmp_path / "snapshots").glob("*.snap")), "the shutdown snapshotted"
    [access] = [line for line in logs if line["logger"] == "instapay.access"]
    assert (access["route"], access["status"], access["method"]) == ("/v1/payments", 200, "POST")
    assert isinstance(access["request_id"], str)
    assert "v1=" not in str(logs), "no signature in the logs"

    server = start(tmp_path, port)
    again, replayed = pay(port, demo, "order-1")
    assert (again["id"], replayed) == (first["id"], True)
    assert stop(server)[0] == 0
