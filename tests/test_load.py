"""`instapay load` against servers: a real `instapay serve` process (the counts add up, the audit
passes, the JSON report is the printed summary, the plot is written), and a fake server in this
process that misbehaves on purpose (drops acknowledged payments, charges twice, stalls), which the
harness must catch: a non-zero exit and a message that names the problem. A server that is down,
or killed during the run, gets the summary and an audit that says so, never a traceback."""

import asyncio
import base64
import dataclasses
import io
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hdrh.histogram import HdrHistogram
from rich.console import Console

from instapay import cli
from instapay.demo import DemoMerchant
from instapay.load import Amounts, Plan, PlanError, Target, run
from instapay.load import worker as worker_module
from instapay.load.plan import Mode
from instapay.signing import SIGNATURE_HEADER, sign_payload
from servers import Server, free_port, start

ADMIN_TOKEN = "load-test-admin"  # noqa: S105 (a test's token)
DEMO = DemoMerchant()
PAYERS = 5
# Not the `<merchant>.settlement` of the demo: the harness must read it from the admin API.
SETTLEMENT = "shop-settles-here"
BALANCE = 1_000_000


@dataclass
class FakeServer:
    """Answers payments like instapay (signed, with replays by idempotency key), but can drop
    what it acknowledged, charge twice, or stall every request for a while."""

    drop_every: int = 0
    # Every n-th payment is applied, then its connection is closed without an answer.
    unanswered_every: int = 0
    charge_times: int = 1
    stall_at_s: float | None = None
    stall_s: float = 0.0
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    first_request_s: float | None = None

    def __post_init__(self) -> None:
        self.balances = {f"payer-{n}": BALANCE for n in range(PAYERS)}
        self.balances[SETTLEMENT] = 0

    def signed(self, payload: dict[str, Any], **headers: str) -> web.Response:
        body = orjson.dumps(payload)
        header = sign_payload([DEMO.secret], body, int(time.time()))
        return web.Response(body=body, headers={SIGNATURE_HEADER: header, **headers})

    async def stall(self) -> None:
        now_s = time.monotonic()
        self.first_request_s = self.first_request_s or now_s
        if self.stall_at_s is None:
            return
        stall_from_s = self.first_request_s + self.stall_at_s
        if stall_from_s <= now_s < stall_from_s + self.stall_s:
            await asyncio.sleep(stall_from_s + self.stall_s - now_s)

    async def pay(self, request: web.Request) -> web.Response:
        await self.stall()
        fields = orjson.loads(await request.read())
        key = request.headers["Idempotency-Key"]
        if key in self.by_key:
            return self.signed(self.payments[self.by_key[key]], **{"Idempotent-Replayed": "true"})
        payment_id = f"pay_{len(self.payments) + 1}"
        payment = {**fields, "id": payment_id, "object": "payment", "status": "succeeded"}
        self.payments[payment_id] = payment
        self.by_key[key] = payment_id
        self.balances[fields["payer"]] -= fields["amount"] * self.charge_times
        self.balances[SETTLEMENT] += fields["amount"]
        if self.unanswered_every and len(self.payments) % self.unanswered_every == 0:
            assert request.transport is not None
            request.transport.close()
        return self.signed(payment)

    async def by_order(self, request: web.Request) -> web.Response:
        order_id = request.query["order_id"]
        found = [p for p in self.payments.values() if p["order_id"] == order_id]
        return self.signed({"object": "list", "data": found})

    async def read(self, request: web.Request) -> web.Response:
        payment_id = request.match_info["payment_id"]
        number = int(payment_id.removeprefix("pay_"))
        if self.drop_every and number % self.drop_every == 0:
            error = {"code": "not_found", "message": f"no payment {payment_id}"}
            return web.json_response({"error": error}, status=404)
        return self.signed(self.payments[payment_id])

    async def merchant(self, request: web.Request) -> web.Response:
        merchant_id = request.match_info["merchant_id"]
        return web.json_response({"id": merchant_id, "settlement_account": SETTLEMENT})

    async def balance(self, request: web.Request) -> web.Response:
        account = request.match_info["account_id"]
        return web.json_response({"account_id": account, "balance": self.balances[account]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/payments", self.pay)
        app.router.add_get("/v1/payments", self.by_order)
        app.router.add_get("/v1/payments/{payment_id}", self.read)
        app.router.add_get("/v1/admin/accounts/{account_id}", self.balance)
        app.router.add_get("/v1/admin/merchants/{merchant_id}", self.merchant)
        return app


@contextmanager
def listening(fake: FakeServer) -> Iterator[str]:
    """The fake server on a loopback port, on an event loop in a thread of its own (the harness
    runs its own loops and processes)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = TestServer(fake.app(), host="127.0.0.1")
    asyncio.run_coroutine_threadsafe(server.start_server(), loop).result(timeout=30)
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def target(base_url: str, secret: bytes = DEMO.secret) -> Target:
    return Target(base_url, DEMO.merchant_id, DEMO.kid, secret, admin_token=ADMIN_TOKEN)


def load(plan: Plan, tmp_path: Path) -> tuple[int, str, dict[str, Any]]:
    """Runs the harness; its exit status, what it printed, and its JSON report."""
    output = io.StringIO()
    console = Console(file=output, width=120, color_system=None)
    report = tmp_path / "report.json"
    status = run(plan, console=console, show_progress=False, report_path=report)
    return status, output.getvalue(), orjson.loads(report.read_bytes())


def test_the_counts_add_up_and_the_audit_passes_on_a_real_server(tmp_path: Path) -> None:
    port = free_port()
    server = start(tmp_path / "data", port, admin_token=ADMIN_TOKEN)
    demo = DemoMerchant.load_or_create(tmp_path / "data")
    plan = Plan(
        target(f"http://127.0.0.1:{port}", demo.secret),
        "closed",
        concurrency=8,
        requests=400,
        replay_ratio=0.2,
        amounts=Amounts.parse("100-500"),
        workers=2,
    )
    status, printed, report = load(plan, tmp_path)
    batched = dataclasses.replace(plan, batch=50, requests=30, replay_ratio=0.3, workers=1)
    batch_status, batch_printed, batch_report = load(batched, tmp_path)
    plot = tmp_path / "plot.png"
    with_plot = run(
        Plan(plan.target, "open", rate_per_s=100, duration_s=1),
        show_progress=False,
        console=Console(file=io.StringIO()),
        plot_path=plot,
    )
    assert server.stop()[0] == 0
    counts = report["counts"]
    assert status == 0, printed
    assert counts["sent"] == 400
    assert counts["sent"] == counts["answered"] + counts["failed"]
    assert sum(counts["statuses"].values()) == counts["answered"]
    assert counts["replays"]["matched"] > 0
    assert counts["replays"]["mismatched"] == 0
    audit = report["audit"]
    assert audit["passed"]
    assert audit["payments_checked"] == 400 - counts["replays"]["matched"]
    assert audit["balances_checked"] == 1001, "the demo's 1000 payers and the settlement account"
    assert_printed_is_reported(printed, report)
    assert batch_status == 0, batch_printed
    assert batch_report["counts"]["replays"]["matched"] > 0, "batch replays, line by line"
    assert with_plot == 0
    assert plot.read_bytes().startswith(b"\x89PNG"), "a PNG"
    assert plot.stat().st_size > 10_000, "with something drawn on it"


def assert_printed_is_reported(printed: str, report: dict[str, Any]) -> None:
    """Every figure of the printed summary is the one in the JSON report."""
    rows = dict(re.findall(r"│ (\S[^│]*?)\s*│ (\S[^│]*?)\s*│", printed))
    figures = report["figures"]
    assert rows["throughput"] == f"{figures['requests_per_s']:,.1f} requests/s"
    for name, value in figures["latency_ms"].items():
        assert rows[name] == f"{value:.3f} ms", name
    assert rows["sent"] == str(figures["sent"])
    assert rows["answered"] == str(figures["answered"])
    matched = report["counts"]["replays"]["matched"]
    assert rows["replays"].startswith(f"{matched} returned the stored result")


def fake_plan(base_url: str, **options: Any) -> Plan:
    return Plan(target(base_url), "closed", concurrency=4, requests=60, payers=PAYERS, **options)


def test_the_audit_fails_when_acknowledged_payments_are_lost(tmp_path: Path) -> None:
    with listening(FakeServer(drop_every=7)) as base_url:
        status, printed, report = load(fake_plan(base_url), tmp_path)
    assert status == 1
    assert "audit FAILED" in printed
    assert report["audit"]["problem_count"] == 60 // 7
    assert "pay_7 was answered 2xx, now: 404 not_found" in printed


def test_the_audit_fails_when_payers_are_charged_twice(tmp_path: Path) -> None:
    with listening(FakeServer(charge_times=2)) as base_url:
        status, printed, _ = load(fake_plan(base_url, amounts=Amounts.parse("100")), tmp_path)
    assert status == 1
    assert re.search(r"balance of payer-\d moved by -(\d+), the acknowledged payments say", printed)
    moved, said = map(
        int, re.findall(r"moved by -(\d+), the acknowledged payments say -(\d+)", printed)[0]
    )
    assert moved == 2 * said


def slower_than(report: dict[str, Any], threshold_ms: float) -> int:
    """How many measured requests took longer than `threshold_ms`."""
    histogram = HdrHistogram.decode(base64.b64decode(report["histogram_us"]))
    return sum(
        item.count_added_in_this_iter_step
        for item in histogram.get_recorded_iterator()
        if item.value_iterated_to > threshold_ms * 1000
    )


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_open_loop_latency_counts_from_the_schedule_so_a_stall_shows(
    tmp_path: Path, mode: Mode
) -> None:
    """The server stalls once for 200 ms, with one request in flight at most. Open loop: the
    requests that fell due during the stall wait, and are measured from when they were due, so
    the stall is in the percentiles. Closed loop (no schedule): only the request in flight
    during the stall sees it (coordinated omission, which open loop corrects)."""
    with listening(FakeServer(stall_at_s=0.5, stall_s=0.2)) as base_url:
        options: dict[str, Any] = (
            {"rate_per_s": 200, "in_flight_max": 1} if mode == "open" else {"concurrency": 1}
        )
        plan = Plan(target(base_url), mode, duration_s=2, payers=PAYERS, **options)
        status, printed, report = load(plan, tmp_path)
    assert status == 0, printed
    latency = report["figures"]["latency_ms"]
    assert latency["max"] >= 190, latency
    if mode == "open":
        assert slower_than(report, 100) >= 15, "the requests due during the stall show it"
        assert latency["p99"] >= 100, latency
    else:
        assert slower_than(report, 100) <= 2, "only what was in flight during the stall"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"mode": "open", "rate_per_s": 0}, "--rate"),
        ({"mode": "closed", "concurrency": 0}, "--concurrency"),
        ({"mode": "closed", "concurrency": 4, "replay_ratio": 1.0}, "--replay-ratio"),
        ({"mode": "closed", "concurrency": 4, "batch": 10_001}, "--batch"),
        ({"mode": "closed", "concurrency": 2, "workers": 3}, "at least --workers"),
    ],
)
def test_a_plan_that_cannot_run_names_the_option(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(PlanError, match=re.escape(problem)):
        Plan(target("http://127.0.0.1:1"), **options)


@pytest.mark.parametrize("text", ["0", "5-2", "lognormal:x:1", "cheap"])
def test_amounts_that_make_no_sense_are_refused(text: str) -> None:
    with pytest.raises(PlanError, match="--amounts"):
        Amounts.parse(text)


def test_the_command_line_refuses_a_missing_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["load", "--data-dir", str(tmp_path), "--requests", "1"]) == 2
    assert "--secret-hex is needed" in capsys.readouterr().err


def test_payments_applied_without_an_answer_are_found_and_counted(tmp_path: Path) -> None:
    """A server that applies a payment and then drops the connection is not lying: the audit
    finds the payment by its order id and counts it in the balances."""
    with listening(FakeServer(unanswered_every=5)) as base_url:
        status, printed, report = load(fake_plan(base_url), tmp_path)
    assert status == 0, printed
    assert report["counts"]["failed"] == 60 // 5
    assert report["audit"]["unanswered_applied"] == 60 // 5
    assert "had been applied (counted in the balances)" in printed


def test_a_closed_loop_runs_its_whole_duration_past_the_drain_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "DRAIN_TIMEOUT_S", 0.2)
    with listening(FakeServer()) as base_url:
        plan = Plan(target(base_url), "closed", concurrency=2, duration_s=1.0, payers=PAYERS)
        generator = worker_module.Worker(plan, plan.share(0), lambda message: None)
        asyncio.run(generator.run(time.time()))
    assert generator.last_done_s >= 0.9, "the clients kept going until the deadline"
    assert generator.counts.failed == 0


# ---- a server that is down, or dies during the run (issue 12, section 7) ------------------------

# Enough that the run is still going when the server is killed, however slow the machine; once
# it is gone the rest fail at once.
REQUESTS = 20_000
KILL_AFTER_REQUESTS = 200
POLL_S = 0.02


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


def test_a_wrong_admin_token_is_refused_in_one_line_before_any_load(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    server = start(tmp_path / "data", port, admin_token=ADMIN_TOKEN)
    demo = DemoMerchant.load_or_create(tmp_path / "data")
    target = Target(
        f"http://127.0.0.1:{port}",
        demo.merchant_id,
        demo.kid,
        demo.secret,
        admin_token="wrong",  # noqa: S106 (a test's token)
    )
    output = io.StringIO()
    plan = Plan(target, "closed", concurrency=2, requests=10)
    status = run(plan, console=Console(file=output, width=200), show_progress=False)
    server.stop()
    assert status == 2
    printed = output.getvalue()
    assert "the admin API refused the audit's reads: 401" in printed
    assert "admin_unauthorized" in printed
    assert "Traceback" not in printed + capfd.readouterr().err
