"""The crash test's victim: runs the engine under a stream of payments and refunds, and prints one
JSON line per acknowledged result, flushed, until it is killed. Small segments and frequent
snapshots put segment roll-over, snapshot writes and segment deletion in the kill zone too, and
small history transactions (their size drawn from the seed) keep the history projector
mid-transaction most of the time.

With HOT_RESULTS_MAX, memory keeps that many results (the bounded hot state): refunds then
name payments memory forgot, which are read back from history.db before they are queued.

Usage: python tests/crash/child.py DATA_DIR SECRET_HEX SEED [HOT_RESULTS_MAX]
"""

import asyncio
import random
import sys
from dataclasses import replace
from pathlib import Path

import orjson

from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.model import PaymentResult, RefundResult
from instapay.storage.history.projector import HistoryPolicy

PAYERS = 20
BATCH_LEN = 200
BATCHES_IN_FLIGHT = 3
SEGMENT_BYTES_MAX = 64 * 1024
SNAPSHOT_EVERY_RECORDS = 1500
HISTORY_TRANSACTION_RECORDS = range(5, 400)


def report(result: PaymentResult | RefundResult) -> None:
    line = {"kind": type(result).__name__, **result.to_json(), "replayed": result.replayed}
    sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
    sys.stdout.buffer.flush()


async def stream(engine: Engine, demo: DemoMerchant, rng: random.Random, seed: int) -> None:
    paid: list[str] = []
    batch_number = 0

    async def one_batch(number: int) -> None:
        requests = []
        for n in range(BATCH_LEN):
            if paid and rng.random() < 0.05:
                requests.append(demo.refund(rng.choice(paid), rng.randint(1, 50)))
            else:
                amount = rng.randint(1, 5_000)
                requests.append(
                    demo.payment(
                        f"s{seed}-b{number}-{n}", demo.payer(rng.randrange(PAYERS)), amount
                    )
                )
        for answer in await engine.submit_many(requests):
            if isinstance(answer, PaymentResult | RefundResult):
                report(answer)
                if isinstance(answer, PaymentResult):
                    paid.append(answer.id)

    while True:
        batch_number += BATCHES_IN_FLIGHT
        await asyncio.gather(*(one_batch(batch_number + k) for k in range(BATCHES_IN_FLIGHT)))


async def main(directory: Path, secret: bytes, seed: int, hot_results_max: int | None) -> None:
    demo = DemoMerchant(secret=secret)
    rng = random.Random(seed)
    history = HistoryPolicy(transaction_records_max=rng.choice(HISTORY_TRANSACTION_RECORDS))
    if hot_results_max is not None:
        history = replace(history, hot_results_max=hot_results_max)
    async with Engine.open(
        directory,
        config=demo.config(),
        segment_bytes_max=SEGMENT_BYTES_MAX,
        snapshot_every_records=SNAPSHOT_EVERY_RECORDS,
        history_policy=history,
    ) as engine:
        await stream(engine, demo, rng, seed)


if __name__ == "__main__":
    window = int(sys.argv[4]) if len(sys.argv) > 4 else None
    asyncio.run(main(Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3]), window))
