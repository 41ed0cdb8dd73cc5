"""The memory probe of benches/test_bench_history.py: a history of payments built in a fresh
process (earlier allocations stay out of it), and how much the process RSS grew per payment.

`python -m benches.history_workload instapay|naive PAYMENTS DIRECTORY` funds the 10 000 demo
payers, then sends PAYMENTS payments (instapay: `submit_many`, batches of 1000, four in flight,
fsync="off": durability costs time, not memory; no automatic snapshot, whose transient copy
is not history; naive: `NaiveEngine.extend`, the checked payments without their signatures) and
prints JSON: the RSS growth per payment after a first chunk of WARM_UP_PAYMENTS (the figure), the
growth and the peak (VmHWM) from before the first payment, per payment, and the payments' rate.
"""

import asyncio
import gc
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from benches.engine_workload import (
    ACCOUNTS,
    DEMO,
    FUNDS,
    SIGN_CHUNK_LEN,
    add_history,
    add_naive_history,
    funded_naive_engine,
    open_engine,
)
from instapay.http.server import freeze_survivors_of_full_collections

AddHistory = Callable[[str, int], None]
"""Adds this many payments, their order ids starting with this prefix."""
WARM_UP_PAYMENTS = SIGN_CHUNK_LEN


def status_bytes(field: str) -> int:
    """A size line of /proc/self/status (VmRSS, VmHWM), in bytes."""
    status = Path("/proc/self/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


@contextmanager
def instapay_history(directory: Path, payments: int) -> Iterator[AddHistory]:
    """An engine with room for `payments` and the funded payers; yields what adds payments."""
    freeze_survivors_of_full_collections()  # as `instapay serve` does
    opened = open_engine(directory, payments, fsync="off", snapshot_on_close=False)
    with asyncio.Runner() as runner:
        engine = runner.run(opened.__aenter__())
        runner.run(DEMO.set_up(engine, ACCOUNTS, FUNDS))
        yield lambda prefix, count: runner.run(add_history(engine, prefix, count))
        runner.run(opened.__aexit__(None, None, None))


@contextmanager
def naive_history(directory: Path, payments: int) -> Iterator[AddHistory]:
    naive = funded_naive_engine(directory / "naive.log")
    yield lambda prefix, count: add_naive_history(naive, prefix, count)
    naive.close()


HISTORIES: dict[str, Callable[[Path, int], AbstractContextManager[AddHistory]]] = {
    "instapay": instapay_history,
    "naive": naive_history,
}


def probe_memory(implementation: str, payments: int, directory: Path) -> dict[str, float]:
    """The RSS growth per payment from the end of the first chunk of payments to the last, and
    from before the first: the first chunk also pays for what is allocated once (memory pools,
    thread arenas and the like), which a longer history spreads thinner."""
    with HISTORIES[implementation](directory, payments) as add:
        gc.collect()
        rss_before = status_bytes("VmRSS")
        add("warm-up-", WARM_UP_PAYMENTS)
        gc.collect()
        rss_warm = status_bytes("VmRSS")
        started_s = time.perf_counter()
        add("history-", payments - WARM_UP_PAYMENTS)
        elapsed_s = time.perf_counter() - started_s
        gc.collect()
        rss_after, peak = status_bytes("VmRSS"), status_bytes("VmHWM")
    return {
        "bytes_per_payment": (rss_after - rss_warm) / (payments - WARM_UP_PAYMENTS),
        "rss_total_bytes_per_payment": (rss_after - rss_before) / payments,
        "rss_peak_bytes_per_payment": (peak - rss_before) / payments,
        "payments_per_s": (payments - WARM_UP_PAYMENTS) / elapsed_s,
    }


if __name__ == "__main__":
    print(json.dumps(probe_memory(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))))
