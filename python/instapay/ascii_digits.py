"""Numbers read from requests and file names: ASCII digits only, the one place the rule lives.

`str.isdigit` and `int()` accept any Unicode digit: `"²".isdigit()` is true and `int("²")` then
raises (a 500), and `int("٢٠٠٢")` reads 2002, so `pay_٢٠٠٢` would name `pay_2002`.
"""

from __future__ import annotations

import argparse

from instapay import _core

# An LSN (a u64) has at most 20 digits.
DIGITS_MAX_DEFAULT = 20


def ascii_int(text: str, digits_max: int = DIGITS_MAX_DEFAULT) -> int | None:
    """The integer `text` writes in 1 to `digits_max` ASCII digits (no sign, no space), or None."""
    if not 1 <= len(text) <= digits_max or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def number_in_id(text: str, prefix: str) -> int | None:
    """The number of an id such as `pay_12`, written as the server writes it (the prefix, then
    ASCII digits without a leading zero), or None: one id never has two spellings. The rule is
    the native one (`state::lsn_in_id`, which the batch stage routes refunds by); an id whose
    number is above any LSN (a u64) names none."""
    return _core.lsn_in_id(text, prefix)


def argument_int(text: str) -> int:
    """An argparse type: a count or a number in ASCII digits (`--port ٨٠٨٠` is refused, not
    read as 8080)."""
    number = ascii_int(text)
    if number is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in ASCII digits")
    return number
