"""A client that pipelines requests cannot make the server buffer their bodies outside the body
budget. aiohttp parses up to 32 requests ahead of the one being handled, each with its body (up
to 128 KiB read before it stops), and nothing counts those bytes: 50 connections pipelining
120 KB bodies (each a 413 that leaves its body unread) grew the server by 177 to 373 MiB,
2 to 4 MiB each: 2 to 4 GiB over the 1000 connections of the cap. The server takes one
request ahead of the one it is answering (`instapay.http.limits.PIPELINED_REQUESTS_MAX`)."""

import re
import socket
import time
from pathlib import Path

from attack import connect, head, healthz, rss_bytes, serve_limited, settled_rss_bytes
from servers import free_port

MIB = 1024 * 1024
CONNECTIONS = 100  # one client address's cap
BODY_BYTES = 120_000  # over a payment's 64 KiB (a 413 that leaves the body unread)
PIPELINED = 40
# Sending stops once the server has taken nothing for this long (a wait for the server to take
# what it will, not a measurement).
SETTLE_S = 1.0
# What 100 such connections may add to the server's RSS: 46 to 47 MiB with one request read
# ahead (a body, what aiohttp reads with it, the allocator's slack), 177 to 373 MiB with 32.
RSS_GROWTH_BYTES_MAX = 96 * MIB


def client(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.2", 0))
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def send_until_stalled(socks: list[socket.socket], data: bytes) -> None:
    """Sends `data` on every socket, as fast as the server takes it, until all of it is sent or
    the server has taken nothing for SETTLE_S."""
    sent = dict.fromkeys(socks, 0)
    taken_s = time.monotonic()
    while time.monotonic() - taken_s < SETTLE_S:
        unsent = [sock for sock in socks if sent[sock] < len(data)]
        if not unsent:
            return
        for sock in unsent:
            try:
                sent[sock] += sock.send(data[sent[sock] : sent[sock] + 65536])
                taken_s = time.monotonic()
            except BlockingIOError:
                pass
            except OSError:
                sent[sock] = len(data)  # closed by the server: it holds nothing of it
        time.sleep(0.001)


def test_pipelined_bodies_stay_within_a_bound_while_others_are_served(tmp_path: Path) -> None:
    port = free_port()
    server = serve_limited(tmp_path, port)
    pid = server.process.pid
    assert healthz(port) == 200
    before = rss_bytes(pid)
    headers = {"Content-Type": "application/json", "Content-Length": str(BODY_BYTES)}
    pipelined = (head("POST", "/v1/payments", headers) + b"x" * BODY_BYTES) * PIPELINED
    socks = [client(port) for _ in range(CONNECTIONS)]
    send_until_stalled(socks, pipelined)
    grown = settled_rss_bytes(pid) - before
    assert healthz(port, "127.0.0.3") == 200, "others are served meanwhile"
    print(f"RSS grew {grown / MIB:.0f} MiB over {CONNECTIONS} pipelining connections")
    assert grown <= RSS_GROWTH_BYTES_MAX
    for sock in socks:
        sock.close()
    assert server.stop()[0] == 0


def test_pipelined_requests_are_all_answered_in_order(tmp_path: Path) -> None:
    port = free_port()
    server = serve_limited(tmp_path, port)
    paths = ["/healthz", "/v1/nowhere", "/readyz", "/healthz"]
    answers = b""
    with connect(port) as sock:
        sock.sendall(b"".join(head("GET", path, {}) for path in paths[:-1]))
        sock.sendall(head("GET", paths[-1], {"Connection": "close"}))
        while chunk := sock.recv(65536):
            answers += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d+) ", answers)
    assert statuses == [b"200", b"404", b"200", b"200"]
    assert server.stop()[0] == 0
