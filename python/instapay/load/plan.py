"""What a load run does: the target, the traffic (open or closed loop), its size, and how each
payment is made (payers, amounts, replays, batches)."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Literal

Mode = Literal["open", "closed"]

# Beyond these the run is a mistake, not a load test.
RATE_PER_S_MAX = 1_000_000
CONCURRENCY_MAX = 100_000
WORKERS_MAX = 64
BATCH_LEN_MAX = 10_000


class PlanError(ValueError):
    """A load plan that cannot run; the message names the option."""


@dataclass(frozen=True)
class Amounts:
    """A distribution of payment amounts in minor units: `1999` (fixed), `100-5000` (uniform),
    or `lognormal:1999:0.8` (median and sigma)."""

    kind: Literal["fixed", "uniform", "lognormal"]
    low: int
    high: int = 0
    sigma: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Amounts:
        # [0-9], not \d: \d and int() take any Unicode digit.
        if re.fullmatch(r"[0-9]+", text):
            return cls("fixed", _positive("--amounts", int(text)))
        if match := re.fullmatch(r"([0-9]+)-([0-9]+)", text):
            low, high = int(match[1]), int(match[2])
            if not 1 <= low <= high:
                raise PlanError("--amounts: a range is LOW-HIGH with 1 <= LOW <= HIGH")
            return cls("uniform", low, high)
        if match := re.fullmatch(r"lognormal:([0-9]+):([0-9.]+)", text):
            return cls("lognormal", _positive("--amounts", int(match[1])), sigma=float(match[2]))
        raise PlanError(f"--amounts: {text!r} is not N, LOW-HIGH or lognormal:MEDIAN:SIGMA")

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.low
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        return max(1, round(self.low * math.exp(rng.gauss(0.0, self.sigma))))


@dataclass(frozen=True)
class Target:
    base_url: str
    merchant_id: str
    kid: str
    secret: bytes = b""
    currency: str = "EUR"
    # Reads balances for the audit; without it the balance check is skipped (and says so).
    admin_token: str | None = None
    # The merchant's settlement account, read from the admin API before a run.
    settlement_account: str = ""


@dataclass(frozen=True)
class Plan:
    target: Target
    mode: Mode
    # Open loop: requests per second, scheduled on a timeline. Closed loop: requests in flight.
    rate_per_s: float = 0.0
    concurrency: int = 0
    duration_s: float = 10.0
    # When set, the run ends after this many requests instead of after `duration_s`.
    requests: int | None = None
    warmup_s: float = 0.0
    payers: int = 1000
    amounts: Amounts = Amounts("fixed", 100)
    # The share of requests that resend an earlier one with its idempotency key.
    replay_ratio: float = 0.0
    # Payments per request: 1 is POST /v1/payments, more is the NDJSON batch endpoint.
    batch: int = 1
    workers: int = 1
    # Open loop: requests in flight at most (wrk2's connections); when reached, the next due
    # request waits, and its latency, counted from when it was due, shows the wait.
    in_flight_max: int = 20_000
    payer_prefix: str = "payer-"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode == "open" and not 0 < self.rate_per_s <= RATE_PER_S_MAX:
            raise PlanError(f"--rate: from above 0 to {RATE_PER_S_MAX} per second")
        if self.mode == "closed" and not 1 <= self.concurrency <= CONCURRENCY_MAX:
            raise PlanError(f"--concurrency: 1 to {CONCURRENCY_MAX}")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise PlanError("--duration must be above 0 and --warmup at least 0")
        if self.requests is not None and self.requests < 1:
            raise PlanError("--requests: at least 1")
        if not 0 <= self.replay_ratio < 1:
            raise PlanError("--replay-ratio: at least 0 and below 1")
        if not 1 <= self.batch <= BATCH_LEN_MAX:
            raise PlanError(f"--batch: 1 to {BATCH_LEN_MAX} payments per request")
        if not 1 <= self.workers <= WORKERS_MAX:
            raise PlanError(f"--workers: 1 to {WORKERS_MAX}")
        if self.mode == "closed" and self.concurrency < self.workers:
            raise PlanError("--concurrency must be at least --workers")
        if self.payers < 1:
            raise PlanError("--payers: at least 1")
        if not self.workers <= self.in_flight_max <= CONCURRENCY_MAX:
            raise PlanError(f"--in-flight-max: from --workers to {CONCURRENCY_MAX}")

    def share(self, worker: int) -> WorkerShare:
        """What one of the `workers` generator processes sends."""
        count = self.workers
        requests = None
        if self.requests is not None:
            requests = self.requests // count + (worker < self.requests % count)
        return WorkerShare(
            worker=worker,
            rate_per_s=self.rate_per_s / count,
            concurrency=self.concurrency // count + (worker < self.concurrency % count),
            requests=requests,
            in_flight_max=self.in_flight_max // count,
        )

    def payer(self, number: int) -> str:
        return f"{self.payer_prefix}{number % self.payers}"


@dataclass(frozen=True)
class WorkerShare:
    worker: int
    rate_per_s: float
    concurrency: int
    requests: int | None
    in_flight_max: int


def _positive(option: str, value: int) -> int:
    if value < 1:
        raise PlanError(f"{option}: amounts are at least 1 (minor units)")
    return value
