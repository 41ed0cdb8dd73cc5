"""A submitted request (or control change) waiting in the engine's queue, and the answers of
one submit call."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from instapay.engine.ops import Applied, ControlOp
from instapay.model import EngineFailedError, Merchant, Overloaded, RequestError
from instapay.signing import SignedRequest

Answer = Applied | RequestError | Overloaded | EngineFailedError


class Answers:
    """The answers of one submit call, and the one future that wakes the caller when the last
    arrives: cheaper than a future per request. A caller that stopped waiting is ignored."""

    __slots__ = ("future", "pending", "values")

    def __init__(self, count: int) -> None:
        self.values: list[Answer | None] = [None] * count
        self.pending = count
        self.future: asyncio.Future[list[Answer | None]] = (
            asyncio.get_running_loop().create_future()
        )

    def put(self, index: int, value: Answer) -> None:
        if self.values[index] is not None:
            return
        self.values[index] = value
        self.pending -= 1
        if self.pending == 0 and not self.future.done():
            self.future.set_result(self.values)


@dataclass(slots=True)
class Job:
    answers: Answers
    index: int
    request: SignedRequest | None = None
    control: ControlOp | None = None
    # Set for a payment whose signature the caller checked (one signature over a whole batch).
    merchant: Merchant | None = None
    # A refund's payment, pinned in memory until the job is staged (engine/hot.py).
    pinned: int | None = None

    def answer(self, value: Answer) -> None:
        self.answers.put(self.index, value)
