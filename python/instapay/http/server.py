"""`instapay serve`: the application on uvloop, with a graceful shutdown on SIGTERM and SIGINT
(stop accepting, finish the requests in flight, drain the engine, snapshot, exit 0)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import uvloop
from aiohttp import web

from instapay.http import logs
from instapay.http.app import RUNTIME, ServerSettings, create_app

# Requests in flight get this long to finish once a shutdown begins.
SHUTDOWN_TIMEOUT_S = 30.0


async def serve(
    settings: ServerSettings, host: str, port: int, on_ready: Callable[[str], None]
) -> None:
    """Serves until SIGTERM or SIGINT; `on_ready` gets the base URL once requests are taken."""
    logs.configure()
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log_class=logs.JsonAccessLogger,
        access_log=logging.getLogger(logs.ACCESS_LOGGER),
    )
    await runner.setup()  # starts recovery in the background
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()  # /healthz and /readyz answer from here on
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await app[RUNTIME].ready()
        on_ready(f"http://{host}:{port}")
        await stop.wait()
    finally:
        await runner.cleanup()


def run(settings: ServerSettings, host: str, port: int, on_ready: Callable[[str], None]) -> int:
    uvloop.run(serve(settings, host, port, on_ready))
    return 0
