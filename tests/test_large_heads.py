"""Request heads being received are bounded: a head is held whole until it is complete, outside
the body budget, so aiohttp's default of 128 headers of 8190 bytes let 100 connections, each
holding a 1 MiB head that never ends, grow the server by 198 MiB (2 GiB over the 1000
connections of the cap). The server takes 32 headers."""

import socket
from pathlib import Path

from attack import healthz, rss_bytes, serve_limited, settled_rss_bytes
from instapay.http.app import HEADER_LIMITS
from servers import free_port

MIB = 1024 * 1024
CONNECTIONS = 100  # one client address's cap
HEADER_VALUE = b"a" * 8000
# 48 MiB with 32 headers (heads of 31 headers of 8000 bytes), 198 MiB with 128.
RSS_GROWTH_BYTES_MAX = 96 * MIB


def test_heads_that_never_end_stay_within_a_bound_while_others_are_served(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = serve_limited(tmp_path, port)
    pid = server.process.pid
    assert healthz(port) == 200
    before = rss_bytes(pid)
    headers = range(HEADER_LIMITS["max_headers"] - 1)  # the most the parser takes, and no end
    unfinished = b"GET /healthz HTTP/1.1\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (n, HEADER_VALUE) for n in headers
    )
    socks = []
    for _ in range(CONNECTIONS):
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(unfinished)
        socks.append(sock)
    grown = settled_rss_bytes(pid) - before
    assert healthz(port, "127.0.0.3") == 200, "others are served meanwhile"
    print(f"RSS grew {grown / MIB:.0f} MiB over {CONNECTIONS} unfinished heads")
    assert grown <= RSS_GROWTH_BYTES_MAX
    for sock in socks:
        sock.close()
    assert server.stop()[0] == 0
