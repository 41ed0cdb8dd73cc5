"""Raw sockets against a real `instapay serve`: what an attacker sends, byte by byte, and the
configuration with lowered limits that lets the attacks finish in seconds."""

import contextlib
import select
import socket
import time
from pathlib import Path

import orjson

from instapay.signing import sign_request
from servers import Server, start

KID = "shop.k1"
SECRET = b"a shop's key secret, 32 bytes..."
# Waits for something the server must do (close, answer): generous, never a measured time.
DEADLINE_S = 60.0


def serve_limited(
    directory: Path, port: int, descriptors_max: int | None = None, **server: float | str
) -> Server:
    """`instapay serve --config` with one merchant and these `[server]` keys (limits, TLS),
    under a descriptor limit of `descriptors_max` (soft and hard) if given."""
    server_keys = "".join(f"{name} = {value!r}\n" for name, value in server.items())
    path = directory / "instapay.toml"
    path.write_text(
        f"[server]\n{server_keys}\n"
        '[[merchants]]\nid = "shop"\nsettlement_account = "shop.settlement"\n'
        f'keys = {{ "{KID}" = {{ secret_hex = "{SECRET.hex()}" }} }}\n'
    )
    return start(directory / "data", port, "--config", str(path), descriptors_max=descriptors_max)


def rss_bytes(pid: int) -> int:
    """The resident memory of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# The RSS is read once it has not changed for this long: the server has read what it will (a
# wait, not a measurement).
RSS_SETTLE_S = 1.0


def settled_rss_bytes(pid: int) -> int:
    """The RSS of process `pid` once it has stopped changing for RSS_SETTLE_S."""
    rss = rss_bytes(pid)
    while True:
        time.sleep(RSS_SETTLE_S)
        rss, previous = rss_bytes(pid), rss
        if rss == previous:
            return rss


def signature(path: str, body: bytes = b"", kid: str = KID, age_s: int = 0) -> str:
    """A well-formed header for a known key (its MAC covers `body`)."""
    return sign_request(
        kid=kid,
        secret=SECRET,
        method="POST",
        path=path,
        body=body,
        timestamp_s=int(time.time()) - age_s,
    )


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection from `source` (any 127.x.y.z is loopback: a client address of its own)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE_S)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def request(port: int, raw: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, object]]:
    """Sends `raw` on a new connection; the status and the JSON body of the answer."""
    with connect(port, source) as sock:
        sock.sendall(raw)
        status, _, body = read_response(sock)
        return status, orjson.loads(body) if body.startswith(b"{") else {}


def healthz(port: int, source: str = "127.0.0.1") -> int:
    status, _ = request(port, head("GET", "/healthz", {"Connection": "close"}), source)
    return status


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (an end of stream or a reset); never blocks."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def wait_until_closed(socks: list[socket.socket], trickle: bytes = b"") -> list[socket.socket]:
    """Waits (sending `trickle` on each socket every half second, a slow loris) until the server
    has closed every socket, or the deadline; the sockets still open."""
    deadline = time.monotonic() + DEADLINE_S
    open_socks = list(socks)
    while open_socks and time.monotonic() < deadline:
        for sock in open_socks:
            if trickle:
                with contextlib.suppress(OSError):  # closed: the next check sees it
                    sock.send(trickle)
        time.sleep(0.5)
        open_socks = [sock for sock in open_socks if not closed_by_server(sock)]
    return open_socks
