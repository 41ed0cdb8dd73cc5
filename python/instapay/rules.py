"""The input rules of DESIGN.md for what admins and embedders pass the engine in Python: ids
and currencies by the one definition in the native core (`_core.is_id`, `_core.is_currency`,
which the body parser and the key ring use too), amounts by its `AMOUNT_MAX`. Each check raises
the RequestError an HTTP client gets."""

from __future__ import annotations

import yarl

from instapay import _core
from instapay.model import RequestError


def is_id(text: str) -> bool:
    """DESIGN.md's id rule (`_core.is_id`). A str with lone surrogates, which Rust cannot take,
    is not ASCII: refused here first, never an exception in the pipeline."""
    return text.isascii() and _core.is_id(text)


def is_currency(text: str) -> bool:
    """DESIGN.md's currency rule (`_core.is_currency`), with `is_id`'s guard."""
    return text.isascii() and _core.is_currency(text)


# Long enough for any real endpoint, short enough to keep the log and snapshots small.
WEBHOOK_URL_LEN_MAX = 2048


def check_id(name: str, value: str) -> None:
    if not is_id(value):
        raise RequestError(
            "invalid_request", f"{name}: 1 to 255 printable ASCII characters without spaces"
        )


def check_client_key(key: str) -> None:
    """The rule the native batch stage applies to signed requests (`_core.client_key_problem`,
    rust/machine/route.rs), for the keys admins send."""
    problem = _core.client_key_problem(key)
    if problem is not None:
        raise RequestError("invalid_request", problem)


def check_webhook_url(url: str) -> None:
    try:
        parsed = yarl.URL(url)
        host = parsed.host
    except (TypeError, ValueError):  # UnicodeError too: a host that is not valid IDNA
        parsed, host = None, None
    if (
        parsed is None
        or len(url) > WEBHOOK_URL_LEN_MAX
        or parsed.scheme not in ("http", "https")
        or not host
        or not url.isascii()
        or not url.isprintable()
    ):
        raise RequestError(
            "invalid_request",
            f"webhook_url: an absolute http(s) URL of at most {WEBHOOK_URL_LEN_MAX} characters",
        )


def check_account(account_id: str, currency: str) -> None:
    check_id("account id", account_id)
    if not is_currency(currency):
        raise RequestError("invalid_request", "currency: an ISO 4217 code of 3 uppercase letters")


def check_amount(amount: int, name: str = "amount") -> None:
    if (
        isinstance(amount, bool)
        or not isinstance(amount, int)
        or not 1 <= amount <= _core.AMOUNT_MAX
    ):
        raise RequestError("invalid_request", f"{name}: an integer from 1 to 10^15 (minor units)")
