"""The JSON log lines: written a batch per event-loop iteration, in order, none lost at exit; the
access log's direct way to its handler writes the line `logging` would write."""

import asyncio
import io
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from instapay.http import logs


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def handler(stream: io.StringIO) -> Iterator[logs.JsonLinesHandler]:
    handler = logs.JsonLinesHandler(stream)
    yield handler
    handler.close()


def own_logger(name: str, handler: logging.Handler, level: int = logging.INFO) -> logging.Logger:
    """A logger of the access log's family that keeps its records to itself (not to pytest's)."""
    logger = logging.getLogger(f"{logs.ACCESS_LOGGER}.{name}")
    logger.handlers[:] = [handler]
    logger.filters.clear()
    logger.propagate = False
    logger.setLevel(level)
    return logger


async def ok(request: web.Request) -> web.Response:
    return web.Response(headers={"X-Request-Id": "req-1"})


async def access_line(logger: logging.Logger, stream: io.StringIO) -> dict[str, object]:
    """The access line a real aiohttp server writes through `logger` for one request."""
    app = web.Application()
    app.router.add_get("/things/{id}", ok)
    server = TestServer(app)
    # Given to start_server: TestServer drops what its constructor gets beyond its own.
    await server.start_server(access_log_class=logs.JsonAccessLogger, access_log=logger)
    url = server.make_url("/things/7?secret=1")
    async with server, ClientSession() as session, session.get(url) as response:
        assert response.status == 200
    # The server logs a request once its answer is written: by the time it has closed.
    for handler in logger.handlers:
        handler.flush()
    [line] = stream.getvalue().splitlines()
    entry: dict[str, object] = orjson.loads(line)
    return entry


def test_the_direct_access_line_is_the_line_logging_writes(
    handler: logs.JsonLinesHandler, stream: io.StringIO
) -> None:
    direct = own_logger("direct", handler)
    assert logs.direct_sink(direct) is handler
    through_logging = io.StringIO()
    other = logs.JsonLinesHandler(through_logging)
    # Any filter on the way sends the record through logging, which must honour it.
    filtered = own_logger("filtered", other)
    filtered.addFilter(lambda record: True)
    assert logs.direct_sink(filtered) is None
    first = asyncio.run(access_line(direct, stream))
    second = asyncio.run(access_line(filtered, through_logging))
    other.close()
    assert list(first) == list(second), "the same fields in the same order"
    assert first.pop("logger") == f"{logs.ACCESS_LOGGER}.direct"
    assert second.pop("logger") == f"{logs.ACCESS_LOGGER}.filtered"
    for entry in (first, second):
        assert isinstance(entry.pop("time"), float)
        assert isinstance(entry.pop("latency_ms"), float)
    assert first == second
    assert first == {
        "level": "info",
        "message": "request",
        "method": "GET",
        "route": "/things/{id}",
        "status": 200,
        "request_id": "req-1",
    }


def test_the_access_log_is_off_below_its_level_and_indirect_elsewhere(
    handler: logs.JsonLinesHandler,
) -> None:
    quiet = own_logger("quiet", handler, logging.WARNING)
    assert not logs.JsonAccessLogger(quiet, "").enabled, "aiohttp then skips the call"
    assert logs.direct_sink(quiet) is None
    plain = own_logger("plain", logging.StreamHandler(io.StringIO()))
    assert logs.JsonAccessLogger(plain, "").enabled
    assert logs.JsonAccessLogger(plain, "").sink is None, "another handler: through logging"
    two = own_logger("two", handler)
    two.addHandler(logging.NullHandler())
    assert logs.direct_sink(two) is None, "two handlers: through logging"


def test_lines_logged_on_the_loop_wait_for_the_end_of_its_iteration(
    handler: logs.JsonLinesHandler, stream: io.StringIO
) -> None:
    async def main() -> None:
        handler.write_line("a")
        handler.write_line("b")
        assert stream.getvalue() == "", "waiting for the end of the iteration"
        await asyncio.sleep(0)
        assert stream.getvalue() == "a\nb\n", "both in one write"
        handler.write_line("c")
        await asyncio.sleep(0)
        assert stream.getvalue() == "a\nb\nc\n"

    asyncio.run(main())


def test_a_line_logged_off_the_loop_comes_at_once_after_those_waiting(
    handler: logs.JsonLinesHandler, stream: io.StringIO
) -> None:
    async def main() -> None:
        handler.write_line("on the loop")
        thread = threading.Thread(target=handler.write_line, args=("off the loop",))
        thread.start()
        thread.join()  # the loop's iteration has not ended
        assert stream.getvalue() == "on the loop\noff the loop\n"

    asyncio.run(main())
    handler.write_line("no loop")
    assert stream.getvalue().endswith("off the loop\nno loop\n")


def test_many_waiting_characters_are_written_before_the_iteration_ends(
    handler: logs.JsonLinesHandler, stream: io.StringIO
) -> None:
    line = "x" * 1000

    async def main() -> None:
        for _ in range(logs.JsonLinesHandler.BATCH_CHARS_MAX // len(line) + 1):
            handler.write_line(line)
        assert len(stream.getvalue()) >= logs.JsonLinesHandler.BATCH_CHARS_MAX

    asyncio.run(main())


# Logs a line in the loop's last iteration and exits: the line's flush is never run by the loop.
LAST_LINE = """
import asyncio, logging
from instapay.http import logs
logs.configure()
loop = asyncio.new_event_loop()
loop.call_soon(logging.getLogger("instapay.test").info, "the last line")
loop.call_soon(loop.stop)
loop.run_forever()
"""


def test_no_line_is_lost_at_exit() -> None:
    finished = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, "-c", LAST_LINE], capture_output=True, text=True, check=True, timeout=60
    )
    [line] = finished.stderr.splitlines()
    assert orjson.loads(line)["message"] == "the last line"
