"""`instapay serve` as a real process: the embedded demo, a signed payment over HTTP, and a
graceful shutdown on SIGTERM that loses nothing."""

import asyncio
import json
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from instapay import cli
from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.signing import SIGNATURE_HEADER
from servers import STARTUP_TIMEOUT_S, free_port, pay, refused, start

ACKNOWLEDGED_BEFORE_SIGTERM = 50


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
    for mac in ("v1=", "v2="):
        assert mac not in str(logs), "no signature, the request's or the answer's, in the logs"

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


def test_a_second_server_on_a_data_directory_in_use_refuses_in_one_line(tmp_path: Path) -> None:
    server = start(tmp_path, free_port())
    status, errors = refused(tmp_path, free_port())
    assert status == 1
    assert errors == [f"instapay serve: {tmp_path} is in use by another engine"]
    assert server.stop()[0] == 0, "the first server was not disturbed"


def test_a_server_on_a_port_in_use_refuses_in_one_line_and_creates_no_data_directory(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = start(tmp_path / "first", port)
    status, errors = refused(tmp_path / "second", port)
    assert status == 1
    assert errors == [f"instapay serve: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert not (tmp_path / "second").exists()
    assert server.stop()[0] == 0


def test_a_server_on_a_host_that_is_not_this_machine_refuses_in_one_line(tmp_path: Path) -> None:
    status, errors = refused(tmp_path / "var", free_port(), "--host", "192.0.2.1")
    assert status == 1
    assert len(errors) == 1
    assert errors[0].startswith("instapay serve: cannot listen on 192.0.2.1:")
    assert not (tmp_path / "var").exists()


def test_a_configured_server_on_a_port_in_use_refuses_before_creating_its_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "instapay.toml"
    merchant = '[[merchants]]\nid = "shop"\nsettlement_account = "shop.settlement"\n'
    key = f'[merchants.keys]\n"shop.k1" = {{ secret_hex = "{"ab" * 32}" }}\n'
    settings.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n{merchant}{key}')
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        arguments = ["serve", "--config", str(settings), "--port", str(port)]
        assert cli.main(arguments) == 1
    assert capsys.readouterr().err == (
        f"instapay serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
    assert not (tmp_path / "data").exists()


def test_the_demo_on_a_data_directory_that_is_a_file_refuses_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_directory = tmp_path / "var"
    not_a_directory.write_text("a file")
    port = str(free_port())
    assert cli.main(["serve", "--data-dir", str(not_a_directory), "--port", port]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"instapay serve: cannot keep the demo merchant in {not_a_directory}:")
    assert not_a_directory.read_text() == "a file"
