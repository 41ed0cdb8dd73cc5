"""The end of every load run: an audit through the API that nothing acknowledged was lost or
charged twice.

- Every payment answered 2xx is read back (`GET /v1/payments/{id}`, signed, its answer's
  signature checked) and must have the same status, amount, order and payer.
- Every replay (a resent request with its idempotency key) got the original's payments again,
  marked replayed (checked as the answers came, by the workers).
- With an admin token: each touched payer's balance moved by exactly minus its succeeded
  payments, and the merchant's settlement account by plus all of them. This assumes the load
  harness is the only client while it runs.

A server that cannot be reached (down, or died during the run) fails the audit with that reason,
never with a traceback: the run's figures are still reported.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from instapay.client import ApiError, Client
from instapay.load.plan import Plan, Target
from instapay.load.worker import Acknowledged

READS_IN_FLIGHT = 64
# What a server that is down or gone looks like to a client.
UNREACHABLE_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
# Problems listed in full; beyond, only counted.
PROBLEMS_SHOWN_MAX = 20


@dataclass
class AuditResult:
    payments_checked: int = 0
    balances_checked: int = 0
    # Payments sent without an answer, and how many of them the server had applied.
    unanswered_checked: int = 0
    unanswered_applied: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    skipped: list[str] = field(default_factory=list)
    # Why the server could not be reached, if it could not: nothing could be checked.
    unreachable: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem_count == 0 and self.unreachable is None

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < PROBLEMS_SHOWN_MAX:
            self.problems.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "payments_checked": self.payments_checked,
            "balances_checked": self.balances_checked,
            "unanswered_checked": self.unanswered_checked,
            "unanswered_applied": self.unanswered_applied,
            "problem_count": self.problem_count,
            "problems": self.problems,
            "skipped": self.skipped,
            "unreachable": self.unreachable,
        }


def unreachable_reason(target: Target, error: BaseException) -> str:
    detail = f": {error}" if str(error) else ""
    return f"{target.base_url}: {type(error).__name__}{detail}"


async def before_run(plan: Plan) -> tuple[Plan, dict[str, int] | None]:
    """The plan with its merchant's settlement account, and the balances before the run (None
    without an admin token). Raises UNREACHABLE_ERRORS when the server cannot be reached."""
    plan = dataclasses.replace(plan, target=await with_settlement_account(plan.target))
    return plan, await balances(plan.target, touched_accounts(plan))


async def _all(coroutines: list[Any]) -> list[Any]:
    """Runs them all to the end; then raises the first error, if any (an early raise would leave
    the others running against a closed session)."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def with_settlement_account(target: Target) -> Target:
    """The target with its merchant's settlement account, read through the admin API (without
    an admin token there is no balance check, and no need for it)."""
    if target.admin_token is None:
        return target
    headers = {"Authorization": f"Bearer {target.admin_token}"}
    url = f"{target.base_url.rstrip('/')}/v1/admin/merchants/{target.merchant_id}"
    async with aiohttp.ClientSession(headers=headers) as session, session.get(url) as response:
        payload = await response.read()
        if response.status != 200:
            raise ApiError(response.status, "merchant_unreadable", payload[:200].decode(), None)
    return dataclasses.replace(
        target, settlement_account=orjson.loads(payload)["settlement_account"]
    )


async def balances(target: Target, accounts: list[str]) -> dict[str, int] | None:
    """The accounts' balances through the admin API; None without an admin token."""
    if target.admin_token is None:
        return None
    headers = {"Authorization": f"Bearer {target.admin_token}"}
    base = target.base_url.rstrip("/")
    limit = asyncio.Semaphore(READS_IN_FLIGHT)

    async def one(session: aiohttp.ClientSession, account: str) -> tuple[str, int]:
        async with limit, session.get(f"{base}/v1/admin/accounts/{account}") as response:
            payload = await response.read()
            if response.status != 200:
                raise ApiError(response.status, "balance_unreadable", payload[:200].decode(), None)
            return account, int(orjson.loads(payload)["balance"])

    async with aiohttp.ClientSession(headers=headers) as session:
        return dict(await _all([one(session, account) for account in accounts]))


def touched_accounts(plan: Plan) -> list[str]:
    return [plan.payer(n) for n in range(plan.payers)] + [plan.target.settlement_account]


async def audit(
    plan: Plan,
    acknowledged: list[Acknowledged],
    replays: tuple[int, list[str]],
    before: dict[str, int] | None,
    unanswered: list[tuple[str, str, int]],
    *,
    unreachable_before: str | None = None,
) -> AuditResult:
    """`replays`: how many replays did not get the stored result, and some examples.
    `unanswered`: new payments whose request got no answer; those the server applied anyway
    count in the balances (found by order id; more than one for an order is a problem).
    `unreachable_before`: why the balances could not be read before the run."""
    result = AuditResult()
    mismatched, examples = replays
    for example in examples:
        result.problem(f"replay: {example}")
    result.problem_count += mismatched - len(examples)
    if unreachable_before is not None:
        result.skipped.append("balances: the server could not be reached before the run")
    try:
        await _check_through_the_api(plan, acknowledged, before, unanswered, result)
    except UNREACHABLE_ERRORS as error:
        result.unreachable = unreachable_reason(plan.target, error)
    except ApiError as error:  # a lookup or a balance refused: the check is incomplete
        result.problem(f"the server refused a check: {error}")
    if result.unreachable is None and unreachable_before is not None:
        result.unreachable = f"before the run, {unreachable_before}"
    return result


async def _check_through_the_api(
    plan: Plan,
    acknowledged: list[Acknowledged],
    before: dict[str, int] | None,
    unanswered: list[tuple[str, str, int]],
    result: AuditResult,
) -> None:
    await _read_back(plan.target, acknowledged, result)
    acknowledged = acknowledged + await _applied_unanswered(plan.target, unanswered, result)
    if before is None:
        if not result.skipped:  # not for want of a server
            result.skipped.append(
                "balances: no admin token (--admin-token or INSTAPAY_ADMIN_TOKEN), not checked"
            )
    else:
        after = await balances(plan.target, touched_accounts(plan))
        _check_balances(plan, acknowledged, before, after or {}, result)


async def _read_back(target: Target, acknowledged: list[Acknowledged], result: AuditResult) -> None:
    limit = asyncio.Semaphore(READS_IN_FLIGHT)
    async with Client(target.base_url, target.merchant_id, target.kid, target.secret) as client:

        async def one(payment: Acknowledged) -> None:
            async with limit:
                try:
                    read = await client.get_payment(payment.payment_id)
                except ApiError as error:
                    result.problem(f"{payment.payment_id} was answered 2xx, now: {error}")
                    return
            seen = (read["status"], read["amount"], read["order_id"], read["payer"])
            expected = (payment.status, payment.amount, payment.order_id, payment.payer)
            if seen != expected:
                result.problem(f"{payment.payment_id} was answered {expected}, reads {seen}")

        await _all([one(payment) for payment in acknowledged])
    result.payments_checked = len(acknowledged)


async def _applied_unanswered(
    target: Target, unanswered: list[tuple[str, str, int]], result: AuditResult
) -> list[Acknowledged]:
    limit = asyncio.Semaphore(READS_IN_FLIGHT)
    applied: list[Acknowledged] = []
    async with Client(target.base_url, target.merchant_id, target.kid, target.secret) as client:

        async def one(order_id: str, payer: str, amount: int) -> None:
            async with limit:
                found = await client.payments_for_order(order_id)
            if len(found) > 1:
                result.problem(f"order {order_id} was sent once and has {len(found)} payments")
            applied.extend(
                Acknowledged(p["id"], order_id, payer, amount, p["status"]) for p in found
            )

        await _all([one(*payment) for payment in unanswered])
    result.unanswered_checked = len(unanswered)
    result.unanswered_applied = len(applied)
    return applied


def _check_balances(
    plan: Plan,
    acknowledged: list[Acknowledged],
    before: dict[str, int],
    after: dict[str, int],
    result: AuditResult,
) -> None:
    paid: Counter[str] = Counter()
    for payment in acknowledged:
        if payment.status == "succeeded":
            paid[payment.payer] += payment.amount
    expected = {payer: -amount for payer, amount in paid.items()}
    expected[plan.target.settlement_account] = sum(paid.values())
    for account in touched_accounts(plan):
        moved = after[account] - before[account]
        if moved != expected.get(account, 0):
            result.problem(
                f"balance of {account} moved by {moved}, the acknowledged payments say "
                f"{expected.get(account, 0)}"
            )
    result.balances_checked = len(before)
