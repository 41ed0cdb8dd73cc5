"""Bodies are taken as sent (issue 12, section 6c): a transfer coding other than plain
`chunked` (`gzip, chunked`) is refused 501 and a compressed body 415, in the JSON error
format, before anything reads the body, and the connection is closed after the answer (its
framing cannot be trusted). Plain chunked bodies still pay."""

from pathlib import Path

import orjson

from attack import closed_by_server, connect, head, read_response, wait_until_closed
from instapay.demo import DemoMerchant
from instapay.signing import SIGNATURE_HEADER
from servers import free_port, start


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def test_codings_we_do_not_implement_are_refused_and_plain_chunked_pays(tmp_path: Path) -> None:
    port = free_port()
    server = start(tmp_path, port)
    demo = DemoMerchant.load_or_create(tmp_path)
    refusals = [
        ({"Transfer-Encoding": "gzip, chunked"}, 501, "unsupported_transfer_coding"),
        ({"Transfer-Encoding": "deflate,chunked"}, 501, "unsupported_transfer_coding"),
        (
            {"Transfer-Encoding": "chunked", "Content-Encoding": "gzip"},
            415,
            "unsupported_content_coding",
        ),
    ]
    for number, (codings, status_expected, code) in enumerate(refusals):
        payment = demo.payment(f"coded-{number}", demo.payer(0), 100)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: payment.header or ""}
        with connect(port) as sock:
            sock.sendall(head("POST", payment.path, {**headers, **codings}) + chunked(payment.body))
            status, _, body = read_response(sock)
            assert (status, orjson.loads(body)["error"]["code"]) == (status_expected, code)
            assert not wait_until_closed([sock]), "the connection is closed after the refusal"

    payment = demo.payment("plain-chunked", demo.payer(0), 100)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: payment.header or "",
        "Transfer-Encoding": "chunked",
    }
    with connect(port) as sock:
        sock.sendall(head("POST", payment.path, headers) + chunked(payment.body))
        status, _, body = read_response(sock)
        assert (status, orjson.loads(body)["status"]) == (200, "succeeded")
        assert not closed_by_server(sock), "kept alive"
    assert server.stop()[0] == 0


def test_a_chunked_body_over_the_limit_is_refused_whether_whole_or_arriving(
    tmp_path: Path,
) -> None:
    """No Content-Length to refuse it by: the bytes are counted as they are read, sent at once
    (taken whole from the buffer) or in two parts (read chunk by chunk as they arrive)."""
    port = free_port()
    server = start(tmp_path, port)
    demo = DemoMerchant.load_or_create(tmp_path)
    payment = demo.payment("chunked-too-large", demo.payer(0), 100)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: payment.header or "",
        "Transfer-Encoding": "chunked",
    }
    parts = b"".join(chunked(b" " * 1024)[:-5] for _ in range(65)) + b"0\r\n\r\n"
    for split_at in (len(parts), len(parts) // 2):
        with connect(port) as sock:
            sock.sendall(head("POST", payment.path, headers) + parts[:split_at])
            sock.sendall(parts[split_at:])
            status, _, body = read_response(sock)
            assert (status, orjson.loads(body)["error"]["code"]) == (413, "body_too_large")
    assert server.stop()[0] == 0
