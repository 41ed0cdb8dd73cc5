"""The batch endpoint's load: pre-signed NDJSON batches sent over a few connections, a fixed
amount of work timed end to end (payments/s = lines answered / wall time).

An aiohttp client rather than wrk: each batch is a megabyte or so of body and of answer, so the
client's cost per payment is a memcpy, and a fixed count (not a duration) means no pre-signed
batch can ever be sent twice. Every answer line is checked: each payment must have succeeded.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp

from benches.http.presign import BATCH_PATH, NDJSON_TYPE
from instapay.signing import SIGNATURE_HEADER

SUCCEEDED = b'"status":"succeeded"'
TIMEOUT_S = 120


@dataclass(frozen=True)
class BatchResult:
    payments: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    """Latency of a whole batch: from sending its first byte to reading its last answer line."""
    cpu_s: float
    """CPU time the client used (it runs alone in this process while it is timed)."""

    @property
    def payments_per_s(self) -> float:
        return self.payments / self.duration_s


async def send_all(
    session: aiohttp.ClientSession, url: str, batches: Iterator[tuple[str, bytes]]
) -> list[tuple[float, int]]:
    """Sends batches taken from `batches` (shared by all the senders) one after another; the
    latency in s and the payments that succeeded of each."""
    answers = []
    for header, body in batches:
        started_s = time.perf_counter()
        headers = {"Content-Type": NDJSON_TYPE, SIGNATURE_HEADER: header}
        async with session.post(url, data=body, headers=headers) as response:
            response.raise_for_status()
            answer = await response.read()
        answers.append((time.perf_counter() - started_s, answer.count(SUCCEEDED)))
    return answers


async def run_batches(
    address: str, batches: list[tuple[str, bytes]], connections: int
) -> BatchResult:
    """Sends every batch once, at most `connections` at a time, and checks every answer."""
    shared = iter(batches)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        url = f"http://{address}{BATCH_PATH}"
        cpu_started_s, started_s = time.process_time(), time.perf_counter()
        senders = [send_all(session, url, shared) for _ in range(connections)]
        answers = [answer for sent in await asyncio.gather(*senders) for answer in sent]
        duration_s = time.perf_counter() - started_s
        cpu_s = time.process_time() - cpu_started_s
    latencies_ms = [latency_s * 1e3 for latency_s, _ in answers]
    percentiles = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    succeeded = sum(count for _, count in answers)
    expected = sum(body.count(b"\n") for _, body in batches)
    if succeeded != expected:
        raise AssertionError(f"{succeeded} of {expected} batch payments succeeded")
    return BatchResult(succeeded, duration_s, percentiles[49], percentiles[98], cpu_s)
