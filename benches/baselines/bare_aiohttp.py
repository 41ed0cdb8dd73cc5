"""The HTTP baseline instapay's single-payment POST is measured against: a bare aiohttp handler on
uvloop that reads the body and answers 200, nothing else. For the batch endpoint, one that reads
the NDJSON body and answers each line with the same JSON line of a succeeded payment, as long as
instapay's: what moving the batch and its answer over HTTP costs, no payment work.

Fair to it, and to us: one process, like `instapay serve`, started the same way (`AppRunner` +
`TCPSite` under `uvloop.run`) and with the same access log (`instapay.http.logs`: one JSON line
per request to stderr), so the gap between the two is the payment work, not the logging.

Usage: python -m benches.baselines.bare_aiohttp PORT (prints "... serving on URL" when ready,
stops on SIGTERM or SIGINT).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop
from aiohttp import web

from benches.http.presign import BATCH_PATH, NDJSON_TYPE
from instapay.engine import PAYMENTS_PATH
from instapay.http import logs

HOST = "127.0.0.1"


# The line instapay answers a batch payment with (`http/app.py`'s `batch_line`), same fields.
BATCH_ANSWER_LINE = (
    b'{"id":"pay_1000000","object":"payment","merchant_id":"demo","order_id":"batch-1000000",'
    b'"payer":"payer-999","amount":1,"amount_refunded":0,"currency":"EUR","status":"succeeded",'
    b'"failure_code":null,"created":1796000000,"description":null,"metadata":{},"line":9999,'
    b'"replayed":false}\n'
)


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response()


async def ok_batch(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=BATCH_ANSWER_LINE * body.count(b"\n"), content_type=NDJSON_TYPE)


async def serve(app: web.Application, port: int, name: str) -> None:
    """Serves `app` as `instapay serve` does, until SIGTERM or SIGINT (shared by the baselines)."""
    logs.configure()
    runner = web.AppRunner(
        app,
        access_log_class=logs.JsonAccessLogger,
        access_log=logging.getLogger(logs.ACCESS_LOGGER),
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"{name} serving on http://{HOST}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    bare = web.Application()
    bare.router.add_post(PAYMENTS_PATH, ok)
    bare.router.add_post(BATCH_PATH, ok_batch)
    uvloop.run(serve(bare, int(sys.argv[1]), "bare aiohttp"))
