"""A client that never reads its batch's answer cannot keep the batch's share of the body budget
for ever: a merchant's four non-reading 16 MiB batches held the whole 64 MiB budget, and every
other merchant's payments were refused `503 server_busy`, for as long as the connections stayed
open. The answer write timeout cuts such a client off and gives its share back."""

import socket
import time
from pathlib import Path

from attack import DEADLINE_S, KID, SECRET, head, request, serve_limited
from instapay.signing import sign_request
from servers import free_port

BATCH_LINES = 10_000
# Each line an error whose answer quotes the unknown field: an answer of many MiB, more than
# the socket buffers of a client that does not read hold.
FIELD = b"u" * 1500
# Room left in the body budget beside the batch: less than the payment below.
ROOM_BYTES = 200


def signed(path: str, body: bytes) -> str:
    return sign_request(
        kid=KID, secret=SECRET, method="POST", path=path, body=body, timestamp_s=int(time.time())
    )


def payment_status(port: int, order_id: str) -> int:
    body = b'{"merchant_id":"shop","order_id":"%s","payer":"p","amount":1,"currency":"EUR",'
    body = (body % order_id.encode()) + b'"metadata":{"k":"%s"}}' % (b"v" * 500)
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Instapay-Signature": signed("/v1/payments", body),
        "Connection": "close",
    }
    status, _ = request(port, head("POST", "/v1/payments", headers) + body, source="127.0.0.3")
    return status


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sent before it closed the connection (or reset it)."""
    sock.settimeout(DEADLINE_S)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_a_batch_whose_answer_is_never_read_gives_its_budget_back(tmp_path: Path) -> None:
    body = b"".join(b'{"%s":%d}\n' % (FIELD, n) for n in range(BATCH_LINES))
    port = free_port()
    server = serve_limited(
        tmp_path, port, body_bytes_in_flight_max=len(body) + ROOM_BYTES, answer_write_timeout_s=1.0
    )
    with socket.socket() as reader_of_nothing:
        reader_of_nothing.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader_of_nothing.connect(("127.0.0.1", port))
        headers = {
            "Content-Type": "application/x-ndjson",
            "Content-Length": str(len(body)),
            "Instapay-Signature": signed("/v1/payments/batch", body),
        }
        reader_of_nothing.sendall(head("POST", "/v1/payments/batch", headers) + body)
        deadline = time.monotonic() + DEADLINE_S
        statuses = [payment_status(port, "while-held")]
        while statuses[-1] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            statuses.append(payment_status(port, f"attempt-{len(statuses)}"))
        assert statuses[-1] == 200, "the batch's share came back"
        assert set(statuses[:-1]) <= {503}
        answer = read_until_closed(reader_of_nothing)
        assert b'"object":"signature"' not in answer, "cut off: the answer ends unsigned"
    assert server.stop()[0] == 0
