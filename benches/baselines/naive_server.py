"""The naive HTTP server instapay's single-payment POST is also measured against: what a first
version in plain Python would be. Per `POST /v1/payments`, the naive engine's work
(`benches/baselines/naive_engine.py`: the signature checked with the stdlib `hmac`, the body
parsed with `json`, dict balances, one line appended to a log and fdatasync'ed), then a 200 with
the result as JSON. No batching anywhere: one fdatasync per payment.

Fair to it: aiohttp on uvloop in one process, started and logging exactly like the bare handler
(`bare_aiohttp.serve`), the same demo merchant and funded payers as `instapay serve`'s embedded
demo (its key read from the data directory the benchmark signs with). The write and fdatasync
run in a worker thread, as aiohttp advises for blocking calls, so the event loop takes the next
requests meanwhile: 3.2-3.4 k requests/s against 2.4-2.5 k with the calls in the handler, and a
p99 of 28-30 ms against 35-42 ms (15 s runs of the benchmark on the idle 2-core machine).

A replay that arrives while its first request is still being written gets its answer before
that is on disk: a naive server's race, never hit here (each payment is sent once).

Usage: python -m benches.baselines.naive_server PORT DATA_DIR (prints "... serving on URL" when
ready, appends to DATA_DIR/payments.log, stops on SIGTERM or SIGINT).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import uvloop
from aiohttp import web

from benches.baselines.bare_aiohttp import serve
from benches.baselines.naive_engine import NaiveEngine
from instapay.demo import DEMO_BALANCE, DEMO_PAYERS, DemoMerchant
from instapay.engine import PAYMENTS_PATH
from instapay.signing import SIGNATURE_HEADER, SignedRequest

LOG_FILE = "payments.log"
ENGINE = web.AppKey("engine", NaiveEngine)


async def pay(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    signed = SignedRequest(
        request.headers.get(SIGNATURE_HEADER), request.method, request.path_qs, await request.read()
    )
    try:
        result, line = engine.apply(signed)
    except (ValueError, KeyError) as error:
        return web.json_response({"error": {"message": str(error)}}, status=400)
    if line is not None:
        await asyncio.to_thread(engine.persist, line)
    return web.Response(body=orjson.dumps(result), content_type="application/json")


def naive_app(directory: Path) -> web.Application:
    demo = DemoMerchant.load_or_create(directory)
    balances = {demo.payer(number): DEMO_BALANCE for number in range(DEMO_PAYERS)}
    engine = NaiveEngine(directory / LOG_FILE, {demo.kid: demo.secret}, balances)
    app = web.Application()
    app[ENGINE] = engine
    app.router.add_post(PAYMENTS_PATH, pay)

    async def close(_: web.Application) -> None:
        engine.close()

    app.on_cleanup.append(close)
    return app


if __name__ == "__main__":
    uvloop.run(serve(naive_app(Path(sys.argv[2])), int(sys.argv[1]), "naive server"))
