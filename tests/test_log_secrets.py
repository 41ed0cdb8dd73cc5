"""Nothing a client sends reaches a log line (issue 12, section 5a): requests that make aiohttp
log "Error handling request" (a header too long, a control character in a header, a bad request
line) carry the admin token, a request MAC and a query string; none of them appears in what the
server writes to stdout or stderr."""

import signal
from pathlib import Path

from attack import connect
from servers import free_port, start

TOKEN = "admin-token-that-must-not-leak-4f9c"  # noqa: S105 (a test's token)
MAC = "9f" * 32
MAC_V2 = "7e" * 32
KEY = "idempotency-key-that-must-not-leak-2b8e"
QUERY = "order_id=private-order-7c1d"


def attacks() -> list[bytes]:
    line = f"GET /v1/payments?{QUERY} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    secrets = (
        f"Authorization: Bearer {TOKEN}\r\nInstapay-Signature: t=1,kid=demo.k1,v1={MAC}\r\n"
        f"Instapay-Signature: t=1,kid=demo.k1,v2={MAC_V2}\r\nIdempotency-Key: {KEY}\r\n"
    )
    return [
        (line + secrets + "X-Bad: a\x01b\r\n\r\n").encode(),
        (line + f"Authorization: Bearer {TOKEN}\x7f\r\n\r\n").encode(),
        (line + f"Instapay-Signature: t=1,kid=demo.k1,v1={MAC}\x00\r\n\r\n").encode(),
        (line + f"Instapay-Signature: t=1,kid=demo.k1,v2={MAC_V2}\x00\r\n\r\n").encode(),
        (line + f"Idempotency-Key: {KEY}\x01\r\n\r\n").encode(),
        (line + f"Idempotency-Key: {KEY}{'d' * 9000}\r\n\r\n").encode(),
        (line + secrets + "X-Long: " + "a" * 9000 + "\r\n\r\n").encode(),
        (line + f"Authorization: Bearer {TOKEN}{'b' * 9000}\r\n\r\n").encode(),
        (f"GET /v1/payments?{QUERY}{'c' * 9000} HTTP/1.1\r\n" + secrets + "\r\n").encode(),
        (f"GET /v1/payments?{QUERY}\x01 HTTP/1.1\r\n" + secrets + "\r\n").encode(),
        (f"G\x01T /?{QUERY} HTTP/1.1\r\n" + secrets + "\r\n").encode(),
        (line + secrets + "Transfer-Encoding: chunked, gzip\r\n\r\n").encode(),
        (line + secrets + "Content-Length: 1\r\nContent-Length: 2\r\n\r\n").encode(),
        (line + secrets + "Connection: close\r\n\r\n").encode(),  # well-formed: the access log
    ]


def test_no_token_mac_or_query_reaches_stdout_or_stderr(tmp_path: Path) -> None:
    port = free_port()
    server = start(tmp_path, port, admin_token=TOKEN)
    for raw in attacks():
        with connect(port) as sock:
            sock.sendall(raw)
            while sock.recv(65536):  # the answer, until the server closes
                pass
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    assert server.process.stdout is not None
    stdout = server.process.stdout.read()
    _, logs = server.stop()
    errors = [line for line in logs if line["level"] == "error"]
    assert errors, "the attacks were logged (without their bytes)"
    assert "Unhandled exception" not in [line["message"] for line in errors]
    refused = [line for line in logs if line["logger"] == "instapay.access"]
    assert {line["route"] for line in refused if line["status"] == 400} == {"unmatched"}
    written = stdout + "".join(server.log_lines)
    for secret in (TOKEN, MAC, MAC_V2, KEY, QUERY, "private-order"):
        assert secret not in written
