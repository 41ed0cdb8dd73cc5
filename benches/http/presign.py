"""Signed traffic for the HTTP benchmark, built before the clock starts: single payments as raw
HTTP requests in files for wrk (`replay.lua`), and NDJSON batch bodies for the batch client; and
signed payments for the engine in-process (benches/test_bench_history.py).

Every payment has its own order id, so none is an idempotent replay, and the payers take turns
(amount 1 each), so no payer account is hot. Signatures stay valid for 300 s after `now_s`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import orjson

from instapay import _core
from instapay.demo import DEMO_PAYERS, DemoMerchant
from instapay.engine import PAYMENTS_PATH
from instapay.signing import SIGNATURE_HEADER, SignedRequest, request_message

BATCH_PATH = f"{PAYMENTS_PATH}/batch"
NDJSON_TYPE = "application/x-ndjson"
AMOUNT = 1
# A native batch takes at most 2^20 items; chunks also keep the signed messages' copies small.
SIGN_CHUNK_LEN = 65_536


def payment_bodies(
    demo: DemoMerchant, prefix: str, count: int, payers: int = DEMO_PAYERS
) -> Iterator[bytes]:
    for number in range(count):
        body = {
            "merchant_id": demo.merchant_id,
            "order_id": f"{prefix}-{number}",
            "payer": demo.payer(number % payers),
            "amount": AMOUNT,
            "currency": demo.currency,
        }
        yield orjson.dumps(body)


def signature_headers(demo: DemoMerchant, path: str, bodies: list[bytes], now_s: int) -> list[str]:
    ring = _core.KeyRing()
    ring.insert(demo.kid, demo.secret)
    headers: list[str] = []
    for start in range(0, len(bodies), SIGN_CHUNK_LEN):
        chunk = bodies[start : start + SIGN_CHUNK_LEN]
        messages = [request_message(now_s, "POST", path, body) for body in chunk]
        macs = ring.sign_batch([demo.kid] * len(chunk), messages)
        headers.extend(f"t={now_s},kid={demo.kid},v1={mac.hex()}" for mac in macs)
    return headers


def signed_payments(
    demo: DemoMerchant, prefix: str, count: int, *, payers: int, now_s: int
) -> list[SignedRequest]:
    """`count` payments for the engine in-process, the payers in turn, signed in native batches:
    a few µs each where `DemoMerchant.payment` takes about 13, which would dominate building a
    history of millions."""
    bodies = list(payment_bodies(demo, prefix, count, payers))
    headers = signature_headers(demo, PAYMENTS_PATH, bodies, now_s)
    return [
        SignedRequest(header, "POST", PAYMENTS_PATH, body)
        for header, body in zip(headers, bodies, strict=True)
    ]


def raw_request(address: str, path: str, content_type: str, header: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: {content_type}\r\n"
        f"{SIGNATURE_HEADER}: {header}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def write_single_payments(
    demo: DemoMerchant, address: str, prefix: Path, *, count: int, threads: int, now_s: int
) -> None:
    """`count` signed `POST /v1/payments` requests, dealt round-robin into `<prefix>.<thread>`
    (one file per wrk thread), each preceded by its length and a newline."""
    bodies = list(payment_bodies(demo, prefix.name, count))
    headers = signature_headers(demo, PAYMENTS_PATH, bodies, now_s)
    with ExitStack() as files:
        outputs = [
            files.enter_context(Path(f"{prefix}.{thread}").open("wb")) for thread in range(threads)
        ]
        for number, (header, body) in enumerate(zip(headers, bodies, strict=True)):
            request = raw_request(address, PAYMENTS_PATH, "application/json", header, body)
            outputs[number % threads].write(b"%d\n%s" % (len(request), request))


def batches(
    demo: DemoMerchant, prefix: str, count: int, lines: int, now_s: int
) -> list[tuple[str, bytes]]:
    """`count` signed NDJSON batch bodies of `lines` payments each: (signature header, body)."""
    bodies = list(payment_bodies(demo, prefix, count * lines))
    ndjson = [
        b"\n".join(bodies[start : start + lines]) + b"\n" for start in range(0, len(bodies), lines)
    ]
    return list(zip(signature_headers(demo, BATCH_PATH, ndjson, now_s), ndjson, strict=True))
