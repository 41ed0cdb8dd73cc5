"""The query parameters of the list endpoints, read by one rule each: a bad one is refused
(400) with a message naming it, before anything is read."""

from __future__ import annotations

from collections.abc import Callable, Collection

from multidict import MultiMapping

from instapay.ascii_digits import ascii_int
from instapay.model import RequestError, Status
from instapay.rules import check_id
from instapay.storage.history.reads import (
    SQLITE_INTEGER_MAX,
    Cursors,
    HistoryQueryError,
    PaymentFilters,
)

# Stripe's page of a list: 10 items unless `limit` says otherwise, at most 100.
LIST_LEN_DEFAULT = 10
LIST_LEN_MAX = 100
CURSOR_NAMES = ("starting_after", "ending_before")
PAYMENT_FILTER_NAMES = ("status", "payer", "created_gte", "created_lt")
PAYMENT_LIST_NAMES = ("limit", *CURSOR_NAMES, *PAYMENT_FILTER_NAMES)

Query = MultiMapping[str]


def invalid(name: str, message: str) -> RequestError:
    return RequestError("invalid_request", f"{name}: {message}")


def only(query: Query, names: Collection[str]) -> None:
    """Refuses a parameter the endpoint does not take: a misspelt filter would list everything."""
    for name in query:
        if name not in names:
            raise invalid(name, f"not a parameter of this list (it takes {', '.join(names)})")


def value(query: Query, name: str) -> str | None:
    """A parameter given at most once (None when absent): which of two would count is a choice
    two readers of the request could make differently."""
    values = query.getall(name, ())
    if len(values) > 1:
        raise invalid(name, "given more than once")
    return values[0] if values else None


def page_len(query: Query, default: int = LIST_LEN_DEFAULT, maximum: int = LIST_LEN_MAX) -> int:
    text = value(query, "limit")
    limit = default if text is None else ascii_int(text)
    if limit is None or not 1 <= limit <= maximum:
        raise invalid("limit", f"an integer from 1 to {maximum}")
    return limit


def cursors(query: Query, lsn_of: Callable[[str], int | None], kind: str) -> Cursors:
    """`starting_after` / `ending_before` as LSNs: each an id `lsn_of` reads (a `kind` id),
    never both."""
    lsns: dict[str, int | None] = {}
    for name in CURSOR_NAMES:
        text = value(query, name)
        lsn = None if text is None else lsn_of(text)
        if text is not None and lsn is None:
            raise invalid(name, f"not {kind} id: {text!r}")
        lsns[name] = lsn
    try:
        return Cursors(**lsns)
    except HistoryQueryError as error:
        raise RequestError("invalid_request", str(error)) from None


def unix_s(query: Query, name: str) -> int | None:
    text = value(query, name)
    seconds = None if text is None else ascii_int(text)
    if text is not None and (seconds is None or seconds > SQLITE_INTEGER_MAX):
        raise invalid(name, f"unix seconds in ASCII digits (at most {SQLITE_INTEGER_MAX})")
    return seconds


def payment_filters(query: Query) -> PaymentFilters:
    status_text = value(query, "status")
    if status_text is not None and status_text not in tuple(Status):
        raise invalid("status", f"one of {', '.join(tuple(Status))}, not {status_text!r}")
    payer = value(query, "payer")
    if payer is not None:
        check_id("payer", payer)
    return PaymentFilters(
        status=None if status_text is None else Status(status_text),
        payer=payer,
        created_gte=unix_s(query, "created_gte"),
        created_lt=unix_s(query, "created_lt"),
    )
