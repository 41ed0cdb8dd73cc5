"""Pages of a list, by Stripe's conventions: newest first, `limit` items, `starting_after` (the
last id of the previous page: older ones) or `ending_before` (the first id of the previous page:
newer ones), and whether there are more beyond the page in that direction."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import NamedTuple


class Page(NamedTuple):
    """The page's items, newest first, and whether more lie beyond them."""

    items: list[int]
    has_more: bool


def newest_first(
    ordered: Sequence[int],
    limit: int,
    *,
    starting_after: int | None = None,
    ending_before: int | None = None,
) -> Page:
    """A page of `ordered` (ascending, oldest first), as its items newest first. A cursor is an
    item of `ordered`; ValueError for one that is not, or for both cursors at once."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if starting_after is not None and ending_before is not None:
        raise ValueError("starting_after and ending_before exclude each other")
    if ending_before is not None:
        start = _position(ordered, ending_before) + 1
        end = min(start + limit, len(ordered))
        return Page(list(reversed(ordered[start:end])), end < len(ordered))
    end = len(ordered) if starting_after is None else _position(ordered, starting_after)
    start = max(end - limit, 0)
    return Page(list(reversed(ordered[start:end])), start > 0)


def _position(ordered: Sequence[int], item: int) -> int:
    at = bisect.bisect_left(ordered, item)
    if at == len(ordered) or ordered[at] != item:
        raise ValueError(f"{item} is not in the list")
    return at
