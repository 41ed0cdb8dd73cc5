"""What one client may hold of the server: connections, time and body bytes (README, "Limits and
timeouts"). Each limit is defined here once; `[server]` in the TOML configuration sets them.

aiohttp closes a connection that waits longer than its `keepalive_timeout` for a complete request
head, counted from the connection's start or its previous response, and it sees no body read
timeout, no connection cap and no budget for the bodies being read: the caps are the
`ConnectionGate` in front of aiohttp's protocol factory, the body limits live in
`instapay.http.bodies`.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, cast

import orjson
import uvloop
from aiohttp import web_protocol


@dataclass(frozen=True)
class Limits:
    # A connection must deliver a complete request head within this long of opening or of its
    # previous response, or it is closed: the idle keep-alive limit and the header read timeout
    # in one (a slow-loris head trickling in is cut off at the same deadline as an idle one).
    idle_timeout_s: float = 15.0
    # A request body must have arrived completely this long after its handler began reading it,
    # or the request is answered 408 (a body trickled byte by byte cannot hold a slot longer).
    body_read_timeout_s: float = 30.0
    # Open connections beyond this many are answered 503 and closed at once; kept well under the
    # process's descriptor limit, so /healthz and the log files always get a descriptor.
    connections_max: int = 1000
    # Open connections from one peer address beyond this many are refused the same way: one
    # client cannot take the slots of the others. Behind a reverse proxy every connection has
    # the proxy's address: raise it to connections_max there (and cap per client at the proxy).
    peer_connections_max: int = 100
    # Bytes of request bodies being read or handled at once, server-wide; a body that would go
    # beyond is refused 503 with Retry-After before it is read (4 batches of the largest size).
    body_bytes_in_flight_max: int = 64 * 1024 * 1024
    # A streamed answer (a batch's) the client has not taken this long after a part of it was
    # written is abandoned and the connection closed: a client that never reads cannot keep its
    # batch's share of the body budget, and the lines it holds, for ever.
    answer_write_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for limit in fields(self):
            value = getattr(self, limit.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{limit.name} must be a positive number, not {value!r}")


# Requests aiohttp parses, with their bodies, ahead of the one being handled (its default: 32).
# Those bodies are outside the body budget: 32 of up to 128 KiB each on every connection let 100
# pipelining connections hold 180 to 370 MiB; with one, under 50 MiB.
PIPELINED_REQUESTS_MAX = 1


def bound_pipelining() -> None:
    """Sets aiohttp's read-ahead to PIPELINED_REQUESTS_MAX for the connections made from now on.
    aiohttp takes it from a module constant when it makes a connection's protocol and parser,
    with no parameter to pass it by."""
    web_protocol.MAX_MSG_QUEUE_SIZE = PIPELINED_REQUESTS_MAX


# After a refusal is written, the refused client gets this long to read it before the socket is
# closed (closing with its request still unread would reset the connection and lose the answer).
REFUSAL_LINGER_S = 1.0
REFUSAL_RETRY_AFTER_S = 1


def refusal(message: str, request_id: str) -> bytes:
    """A complete HTTP/1.1 503 in the API's error format, written before any request is read."""
    body = orjson.dumps(
        {"error": {"code": "too_many_connections", "message": message, "request_id": request_id}}
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {REFUSAL_RETRY_AFTER_S}\r\n"
        f"X-Request-Id: {request_id}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGate:
    """The protocol factory given to the event loop in front of aiohttp's: counts the open
    connections, in all and per peer address, and answers those beyond a cap with a 503.

    aiohttp has no connection cap, and its protocol factory (`web.Server`) cannot refuse one,
    so each connection gets a small protocol of ours that either hands every event on to
    aiohttp's, or writes the refusal and closes. Over TLS (`tls`) the listener is plain TCP and
    the gate puts the TLS layer on each connection itself, once counted: a connection in its
    handshake holds a slot like any other, so strangers that never finish theirs cannot open
    sockets beyond the caps. The handshake must end within the idle timeout; one beyond a cap
    gets REFUSAL_HANDSHAKE_TIMEOUT_S to take its 503 inside TLS.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        limits: Limits,
        request_ids: Callable[[], str],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.factory = factory
        self.limits = limits
        self.request_ids = request_ids
        self.tls = tls
        self.open = 0
        self.open_by_peer: Counter[str] = Counter()
        self.refused = 0

    def __call__(self) -> GatedConnection:
        return GatedConnection(self)

    def refusal_reason(self, peer: str) -> str | None:
        if self.open >= self.limits.connections_max:
            return f"the server holds its maximum of {self.limits.connections_max} connections"
        if self.open_by_peer[peer] >= self.limits.peer_connections_max:
            return f"at most {self.limits.peer_connections_max} connections per client address"
        return None

    def admit(self, peer: str) -> None:
        self.open += 1
        self.open_by_peer[peer] += 1

    def release(self, peer: str) -> None:
        self.open -= 1
        self.open_by_peer[peer] -= 1
        if not self.open_by_peer[peer]:
            del self.open_by_peer[peer]  # the counter holds only the peers connected now


def tls_layer(loop: asyncio.AbstractEventLoop) -> Any:
    """The TLS protocol class of the loop's own TLS servers: on uvloop its SSLProtocol (the
    Cython original of asyncio's; 60 to 120 µs less a request over HTTPS here), else asyncio's.
    uvloop does not export it in its stubs, nor asyncio in its documentation: both are what
    their `create_server(ssl=...)` and `start_tls` use, with the same constructor."""
    if isinstance(loop, uvloop.Loop):
        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    return sslproto.SSLProtocol


# How long a TLS connection beyond a cap may take over its handshake before it is closed: long
# enough to read its 503, short enough that refused handshakes hold few sockets at once.
REFUSAL_HANDSHAKE_TIMEOUT_S = 2.0


class GatedConnection(asyncio.Protocol):
    """One connection: aiohttp's protocol once admitted, or a refusal; over TLS, either once the
    handshake is done (the TLS layer then calls `connection_made` again, with its transport)."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self.peer = ""
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        # Holds a slot of the caps (given back once, however the connection ends).
        self.admitted = False
        self.refusal_reason: str | None = None
        self.handshaking = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport (uvloop's does not subclass asyncio.Transport).
        transport = cast(asyncio.Transport, transport)
        if self.handshaking:  # the TLS layer's transport, its handshake done
            self.handshaking = False
            self.serve(transport)
            return
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple) else str(peername)
        self.refusal_reason = self.gate.refusal_reason(self.peer)
        if self.refusal_reason is None:
            self.gate.admit(self.peer)
            self.admitted = True
        if self.gate.tls is None:
            self.serve(transport)
        else:
            self.start_tls(transport, self.gate.tls)

    def start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        """Puts the TLS layer between the socket and this protocol, before a byte is read:
        `loop.start_tls` would come a loop iteration late, after uvloop has started reading
        (and handed the client's hello to this protocol)."""
        self.handshaking = True
        loop = asyncio.get_running_loop()
        handshake_over = loop.create_future()
        limits = self.gate.limits
        timeout_s = limits.idle_timeout_s if self.admitted else REFUSAL_HANDSHAKE_TIMEOUT_S
        layer = tls_layer(loop)(
            loop,
            self,
            context,
            handshake_over,
            server_side=True,
            ssl_handshake_timeout=timeout_s,
        )
        transport.set_protocol(layer)
        layer.connection_made(transport)
        handshake_over.add_done_callback(self.handshake_over)

    def handshake_over(self, done: asyncio.Future[None]) -> None:
        """A handshake that failed, timed out or was abandoned: the TLS layer has closed the
        socket, and tells this protocol nothing more; its slot is given back here."""
        if not done.cancelled():
            done.exception()  # the reason is the TLS layer's to log, not the future's
        if self.handshaking:
            self.handshaking = False
            self.release()

    def serve(self, transport: asyncio.Transport) -> None:
        if self.refusal_reason is not None:
            self.refuse(transport, self.refusal_reason)
            return
        self.inner = self.gate.factory()
        self.inner.connection_made(transport)

    def refuse(self, transport: asyncio.Transport, reason: str) -> None:
        self.gate.refused += 1
        self.transport = transport
        transport.write(refusal(reason, self.gate.request_ids()))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        if self.transport is not None:
            self.transport.close()  # the refused client has read its answer and gone
        return None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def release(self) -> None:
        if self.admitted:
            self.admitted = False
            self.gate.release(self.peer)
