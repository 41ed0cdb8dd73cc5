"""Real server processes for the tests: `instapay serve` started, read and stopped."""

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from instapay.cli import serve_command
from instapay.client import Client
from instapay.demo import DemoMerchant
from instapay.engine import IDEMPOTENCY_CAPACITY_DEFAULT, Engine
from instapay.http import ServerSettings, create_app
from instapay.http.app import (
    HEADER_LIMITS,
    REQUESTS_IN_FLIGHT_MAX_DEFAULT,
    RUNTIME,
    Runtime,
)
from instapay.model import EngineConfig
from instapay.notify import DeliveryPolicy, Dispatcher
from instapay.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER
from instapay.storage.history.projector import HistoryPolicy

STARTUP_TIMEOUT_S = 30.0


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


def limit_descriptors(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def start(
    directory: Path,
    port: int,
    *arguments: str,
    admin_token: str | None = None,
    descriptors_max: int | None = None,
) -> Server:
    """`instapay serve` on `directory` and `port` (and more `arguments`), once it serves; with
    `descriptors_max`, under that descriptor limit (soft and hard)."""
    environment = dict(os.environ)
    if admin_token is not None:
        environment["INSTAPAY_ADMIN_TOKEN"] = admin_token
    process = subprocess.Popen(  # noqa: S603 (this interpreter and our own entry point)
        serve_command(directory, port, *arguments),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        # A system call between fork and exec, no lock taken: safe beside the reader threads.
        preexec_fn=None if descriptors_max is None else lambda: limit_descriptors(descriptors_max),  # noqa: PLW1509
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


def refused(directory: Path, port: int, *arguments: str) -> tuple[int, list[str]]:
    """`instapay serve` that must refuse to start: its exit status and its stderr lines (a
    server that starts instead runs into the timeout)."""
    finished = subprocess.run(  # noqa: S603 (this interpreter and our own entry point)
        serve_command(directory, port, *arguments),
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
        check=False,
    )
    return finished.returncode, finished.stderr.splitlines()


def pay(port: int, demo: DemoMerchant, order_id: str) -> tuple[dict[str, object], bool]:
    """A signed payment to a server on `port`: its answer, and whether it was a replay."""
    request = demo.payment(order_id, demo.payer(0), 1999)
    http_request = urllib.request.Request(
        f"http://127.0.0.1:{port}{request.path}",
        data=request.body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: request.header or ""},
    )
    with urllib.request.urlopen(http_request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read()), response.headers.get("Idempotent-Replayed") == "true"


# ---- the application in this process, on a loopback port ---------------------------------------

DEMO = DemoMerchant()
ADMIN_TOKEN = "test-admin-token"  # noqa: S105 (a test's token)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class AdminApi:
    """The admin endpoints of a server at `base_url` (in this process or another)."""

    base_url: str
    session: aiohttp.ClientSession

    async def admin(
        self, method: str, path: str, body: object = None
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(
            method, self.base_url + path, data=data, headers=ADMIN
        ) as response:
            return response.status, orjson.loads(await response.read())


@dataclass
class Running:
    """A running application: its engine, its URL, and a session to call it with."""

    engine: Engine
    base_url: str
    session: aiohttp.ClientSession
    runtime: Runtime

    def dispatcher(self) -> Dispatcher:
        if self.runtime.dispatcher is None:
            raise AssertionError("the webhook dispatcher is not running")
        return self.runtime.dispatcher

    def client(self, demo: DemoMerchant = DEMO) -> Client:
        return Client(self.base_url, demo.merchant_id, demo.kid, demo.secret)

    async def admin(
        self, method: str, path: str, body: object = None
    ) -> tuple[int, dict[str, Any]]:
        return await AdminApi(self.base_url, self.session).admin(method, path, body)


@contextlib.asynccontextmanager
async def serving(
    directory: Path,
    config: EngineConfig,
    delivery: DeliveryPolicy | None = None,
    *,
    balance: int = 1_000_000,
    requests_in_flight_max: int = REQUESTS_IN_FLIGHT_MAX_DEFAULT,
    idempotency_capacity: int = IDEMPOTENCY_CAPACITY_DEFAULT,
    history: HistoryPolicy | None = None,
) -> AsyncIterator[Running]:
    """The real application on a loopback port; on a new directory, three demo payers funded
    with `balance` each."""
    history = history or HistoryPolicy()
    if not (directory / "wal").exists():
        async with Engine.open(
            directory,
            config=config,
            idempotency_capacity=idempotency_capacity,
            history_policy=history,
        ) as engine:
            await DEMO.set_up(engine, payers=3, balance=balance)
    settings = ServerSettings(
        directory,
        config,
        admin_token=ADMIN_TOKEN,
        requests_in_flight_max=requests_in_flight_max,
        delivery=delivery or DeliveryPolicy(),
        idempotency_capacity=idempotency_capacity,
        history_policy=history,
    )
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    # The parser's limits go to the runner (`TestServer` itself drops keywords it does not know).
    await server.start_server(**HEADER_LIMITS)
    engine = await app[RUNTIME].ready()
    try:
        async with aiohttp.ClientSession() as session:
            url = str(server.make_url("")).rstrip("/")
            yield Running(engine, url, session, app[RUNTIME])
    finally:
        await server.close()


async def call(
    api: Running,
    path: str,
    body: bytes = b"",
    merchant: DemoMerchant = DEMO,
    method: str = "GET",
    *,
    idempotency_key: str | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """A request signed by `merchant` (GET by default): status, JSON body, headers."""
    request = merchant.sign(path, body, method=method, idempotency_key=idempotency_key)
    headers = {SIGNATURE_HEADER: request.header or ""}
    if idempotency_key is not None:
        headers[IDEMPOTENCY_HEADER] = idempotency_key
    if method == "POST":
        headers["Content-Type"] = "application/json"
    session: aiohttp.ClientSession = api.session
    async with session.request(method, api.base_url + path, data=body, headers=headers) as answer:
        return answer.status, orjson.loads(await answer.read()), dict(answer.headers)
