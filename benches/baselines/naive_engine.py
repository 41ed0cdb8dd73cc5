"""The naive payment engine the real one is measured against: what a first version in plain
Python would do. Per request: parse the signature header, check its age and the HMAC with the
stdlib, parse the body with `json`, update dict balances, append a JSON line and fdatasync it,
then answer. `benches/baselines/naive_server.py` serves it over HTTP.

Its history, the baseline of benches/test_bench_history.py: recovery reads the log back line by
line and applies each payment again (no signature to check: it was checked before it was logged);
a snapshot is its balances and orders as one JSON document.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from instapay.signing import (
    SignedRequest,
    check_timestamp,
    parse_request_header,
    request_message,
    request_message_v2,
)


class NaiveEngine:
    def __init__(self, path: Path, secrets: dict[str, bytes], balances: dict[str, int]) -> None:
        self.path = path
        self.secrets = secrets
        self.balances = dict(balances)
        self.orders: dict[tuple[str, str], dict[str, object]] = {}
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def submit(self, request: SignedRequest) -> dict[str, object]:
        """Checks, applies and logs one payment."""
        result, line = self.apply(request)
        if line is not None:
            self.persist(line)
        return result

    def apply(self, request: SignedRequest) -> tuple[dict[str, object], bytes | None]:
        """Checks and applies one payment: its result, and the log line that makes it durable
        (None for a replay, already logged). Raises ValueError (KeyError for an unknown key or
        payer) for a request it refuses."""
        return self.apply_body(self.verified_body(request))

    def verified_body(self, request: SignedRequest) -> dict[str, Any]:
        """The parsed body of a request whose signature holds; ValueError or KeyError if not."""
        signature = parse_request_header(request.header)
        check_timestamp(signature.timestamp_s, int(time.time()))
        # Idempotency is by order id only here, so a v1 (which covers no key) is enough.
        signed = (signature.timestamp_s, request.method, request.path)
        if signature.scheme == "v2":
            message = request_message_v2(*signed, request.idempotency_key, request.body)
        else:
            message = request_message(*signed, request.body)
        mac = hmac.new(self.secrets[signature.kid], message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, signature.mac):
            raise ValueError("bad signature")
        body: dict[str, Any] = json.loads(request.body)
        return body

    def apply_body(self, body: dict[str, Any]) -> tuple[dict[str, object], bytes | None]:
        """Applies a checked payment: its result and its log line (None for a replay)."""
        key = (body["merchant_id"], body["order_id"])
        if key in self.orders:
            return self.orders[key], None
        payer, amount = body["payer"], body["amount"]
        settlement = f"{body['merchant_id']}.settlement"
        if self.balances[payer] >= amount:
            self.balances[payer] -= amount
            self.balances[settlement] = self.balances.get(settlement, 0) + amount
            result: dict[str, object] = {"order_id": body["order_id"], "status": "succeeded"}
        else:
            result = {"order_id": body["order_id"], "status": "failed"}
        self.orders[key] = result
        return result, json.dumps({"request": body, "result": result}).encode() + b"\n"

    def extend(self, bodies: Iterable[dict[str, Any]]) -> None:
        """Applies and logs checked payments with one fdatasync for all: how a benchmark gives
        the engine a history quickly."""
        lines = [line for body in bodies if (line := self.apply_body(body)[1]) is not None]
        self.persist(b"".join(lines))

    def recover(self) -> int:
        """Applies every payment of its log again (balances start as given): the records read."""
        records = 0
        with self.path.open("rb") as log:
            for line in log:
                self.apply_body(json.loads(line)["request"])
                records += 1
        return records

    def snapshot(self, path: Path) -> None:
        """Its balances and orders as one JSON document."""
        orders = [[*key, result] for key, result in self.orders.items()]
        path.write_text(json.dumps({"balances": self.balances, "orders": orders}))

    def restore(self, path: Path) -> None:
        """The state of a snapshot (the log it reopens on holds nothing after it)."""
        state = json.loads(path.read_text())
        self.balances = state["balances"]
        self.orders = {(merchant, order): result for merchant, order, result in state["orders"]}

    def persist(self, line: bytes) -> None:
        """Appends one line to the log and waits until it is on disk."""
        os.write(self.fd, line)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
