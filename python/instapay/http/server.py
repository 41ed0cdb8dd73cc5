"""`instapay serve`: the application on uvloop, with a graceful shutdown on SIGTERM and SIGINT
(stop accepting, finish the requests in flight, drain the engine, snapshot, exit 0)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import resource
import signal
import ssl
from collections.abc import Callable
from typing import Any

import uvloop
from aiohttp import web

from instapay.http import logs
from instapay.http.app import HEADER_LIMITS, REQUEST_IDS, RUNTIME, ServerSettings, create_app
from instapay.http.limits import ConnectionGate, Limits, bound_pipelining

log = logging.getLogger(__name__)

# Requests in flight get this long to finish once a shutdown begins.
SHUTDOWN_TIMEOUT_S = 30.0
# After an answer sent before its request's body was read (a 401, a 413), the rest of the body
# is read and dropped for at most this long, then the connection is closed (aiohttp's default).
LINGER_S = 10.0
# Connections waiting to be accepted (aiohttp's default).
BACKLOG = 128
# Descriptors the server needs besides its connections: log segments, snapshots, the history
# database, webhook deliveries (64 by default), the listening socket, standard streams.
DESCRIPTORS_RESERVED = 256


def freeze_survivors_of_full_collections() -> None:
    """After each full (generation 2) collection, moves its survivors to the permanent
    generation, out of the collector's sight.

    The engine keeps every result for the life of the process, so without this each full
    collection walks the whole heap: pauses of 20 to 160 ms under load, growing with the heap, that
    stall every request in flight. Survivors of a full collection are reachable by definition;
    refcounting still frees frozen objects. What it costs: objects of the requests in flight
    during a full collection that later become cyclic garbage are never collected (a review
    measured about 7 % of them with 2000 in flight); full collections come after the heap grew
    by a quarter, so that is a small share of one collection's in-flight requests each time.
    """
    if _freeze_after_full_collection not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full_collection)


def _freeze_after_full_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def protocol_options(limits: Limits) -> dict[str, Any]:
    """aiohttp's per-connection settings: the header limits, the idle timeout (which also bounds
    the wait for a complete request head), and bodies taken as sent (`auto_decompress` off: a
    compressed body is refused, never inflated)."""
    return {
        **HEADER_LIMITS,
        "keepalive_timeout": limits.idle_timeout_s,
        "lingering_time": LINGER_S,
        "auto_decompress": False,
    }


def fit_descriptor_limit(limits: Limits) -> Limits:
    """Raises the soft descriptor limit to hold the connection cap and the server's own files;
    where the hard limit is too low, lowers the cap instead (and says so), so that a full
    house of connections never leaves the log or the listening socket without a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.connections_max + DESCRIPTORS_RESERVED
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return limits
    connections_max = max(1, soft - DESCRIPTORS_RESERVED)
    log.warning(
        "the descriptor limit (%d) holds only %d connections: connections_max lowered from %d",
        soft,
        connections_max,
        limits.connections_max,
    )
    return dataclasses.replace(
        limits,
        connections_max=connections_max,
        peer_connections_max=min(limits.peer_connections_max, connections_max),
    )


async def listen(
    runner: web.AppRunner, limits: Limits, host: str, port: int, tls: ssl.SSLContext | None
) -> asyncio.AbstractServer:
    """What `web.TCPSite` does, with the `ConnectionGate` in front of aiohttp's protocol
    factory (a site cannot take one). The gate speaks TLS itself (the listener is plain TCP), so
    the caps count a TLS connection from its first byte, its handshake included."""
    if runner.server is None:
        raise RuntimeError("runner.setup() comes first")
    limits = fit_descriptor_limit(limits)
    gate = ConnectionGate(runner.server, limits, lambda: next(REQUEST_IDS), tls)
    return await asyncio.get_running_loop().create_server(
        gate, host, port, backlog=BACKLOG, reuse_address=True
    )


async def serve(
    settings: ServerSettings,
    host: str,
    port: int,
    on_ready: Callable[[str], None],
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT (over TLS with a `tls` context); `on_ready` gets the base
    URL once requests are taken."""
    logs.configure()
    freeze_survivors_of_full_collections()
    bound_pipelining()
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log_class=logs.JsonAccessLogger,
        access_log=logging.getLogger(logs.ACCESS_LOGGER),
        **protocol_options(settings.limits),
    )
    await runner.setup()  # starts recovery in the background
    listener: asyncio.AbstractServer | None = None
    try:
        # /healthz and /readyz answer from here on
        listener = await listen(runner, settings.limits, host, port, tls)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await app[RUNTIME].ready()
        on_ready(f"{'http' if tls is None else 'https'}://{host}:{port}")
        await stop.wait()
    finally:
        if listener is not None:
            listener.close()  # stop accepting; the runner then ends the connections
        await runner.cleanup()


def run(
    settings: ServerSettings,
    host: str,
    port: int,
    on_ready: Callable[[str], None],
    tls: ssl.SSLContext | None = None,
) -> int:
    uvloop.run(serve(settings, host, port, on_ready, tls))
    return 0
