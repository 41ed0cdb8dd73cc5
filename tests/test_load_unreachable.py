"""`instapay load` against a server that is down, or dies during the run: the summary of what was
measured with the unanswered requests counted, an audit that says it could not reach the server,
exit status 1, and no traceback anywhere (issue 12, section 7)."""

import io
import re
import threading
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from instapay.demo import DemoMerchant
from instapay.load import Plan, Target, run
from servers import Server, free_port, start

ADMIN_TOKEN = "load-test-admin"  # noqa: S105 (a test's token)
# Enough that the run is still going when the server is killed, however slow the machine; once
# it is gone the rest fail at once.
REQUESTS = 20_000
KILL_AFTER_REQUESTS = 200
POLL_S = 0.02


def load(plan: Plan, tmp_path: Path) -> tuple[int, str, dict[str, Any]]:
    output = io.StringIO()
    console = Console(file=output, width=200, color_system=None)
    report = tmp_path / "report.json"
    status = run(plan, console=console, show_progress=False, report_path=report)
    return status, output.getvalue(), orjson.loads(report.read_bytes())


def engine_requests(port: int) -> int:
    """Requests the server's engine has taken, from its metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    [line] = [line for line in text.splitlines() if line.startswith("instapay_engine_requests")]
    return int(float(line.split()[-1]))


def kill_when_busy(server: Server, port: int) -> threading.Thread:
    """SIGKILLs the server once it has taken KILL_AFTER_REQUESTS more requests (its start-up
    took some: the demo's accounts and deposits)."""
    kill_at = engine_requests(port) + KILL_AFTER_REQUESTS

    def watch() -> None:
        stopped = threading.Event()
        while engine_requests(port) < kill_at:
            stopped.wait(POLL_S)
        server.process.kill()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_a_server_killed_during_the_run_gets_a_summary_and_a_failed_audit(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    server = start(tmp_path / "data", port, admin_token=ADMIN_TOKEN)
    demo = DemoMerchant.load_or_create(tmp_path / "data")
    target = Target(f"http://127.0.0.1:{port}", demo.merchant_id, demo.kid, demo.secret)
    plan = Plan(target, "closed", concurrency=4, requests=REQUESTS, payers=10)
    watcher = kill_when_busy(server, port)
    status, printed, report = load(plan, tmp_path)
    watcher.join(timeout=60)
    server.stop()
    counts = report["counts"]
    assert status == 1, printed
    assert counts["sent"] == REQUESTS
    assert counts["answered"] >= KILL_AFTER_REQUESTS - 4, "what was measured before the kill"
    assert counts["failed"] > 0
    assert counts["sent"] == counts["answered"] + counts["failed"]
    assert re.search(rf"no answer\s+│ {counts['failed']} ", printed)
    assert report["audit"]["unreachable"].startswith(f"http://127.0.0.1:{port}: ")
    assert f"audit FAILED, the server could not be reached (http://127.0.0.1:{port}" in printed
    assert "Traceback" not in printed + capfd.readouterr().err


def test_no_server_at_all_gets_a_summary_and_a_failed_audit(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    demo = DemoMerchant()
    base_url = f"http://127.0.0.1:{free_port()}"
    target = Target(base_url, demo.merchant_id, demo.kid, demo.secret, admin_token=ADMIN_TOKEN)
    plan = Plan(target, "closed", concurrency=2, requests=50, payers=10)
    status, printed, report = load(plan, tmp_path)
    assert status == 1, printed
    assert (report["counts"]["sent"], report["counts"]["failed"]) == (50, 50)
    assert "the server cannot be reached" in printed
    assert "skipped balances: the server could not be reached before the run" in printed
    assert report["audit"]["unreachable"].startswith(base_url)
    assert not report["audit"]["passed"]
    assert "Traceback" not in printed + capfd.readouterr().err
