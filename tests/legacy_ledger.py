"""The ledger of an engine snapshot as versions before the native ledger wrote it: a JSON object
of positional rows inside the snapshot's JSON state. Built from a ledger's read views, so tests
can check that such snapshots still load, and forge broken ones (the native state itself cannot
be changed by hand from Python)."""

from collections.abc import Callable, Iterable
from dataclasses import astuple
from pathlib import Path
from typing import Any

import orjson

from instapay.engine import SNAPSHOT_STATE_LEN
from instapay.ledger import Ledger
from instapay.mandates import MandateGrant, mandate_lsn
from instapay.model import Status
from instapay.protocol import PAYMENT_ID_PREFIX
from instapay.storage import snapshots

# The header of the mandate rows, as mandates.py wrote it.
MANDATE_FIELDS = ["id", *MandateGrant._fields, "revoked_s", "spent_day", "spent"]


def legacy_state(ledger: Ledger, payment_ids: Iterable[str]) -> dict[str, Any]:
    """The ledger as `Ledger.to_snapshot` returned it before the ledger was native, holding the
    payments of these ids (in log order): the ledger does not list its payments."""
    accounts = ledger.accounts()
    net_inflow: dict[str, int] = {}
    for account in accounts:  # the balances sum to the net inflows while the invariants hold
        net_inflow[account.currency] = net_inflow.get(account.currency, 0) + account.balance
    mandates = sorted(
        (mandate for account in accounts for mandate in ledger.mandates_of(account.id)),
        key=lambda mandate: mandate_lsn(mandate.id) or 0,
    )
    payments = []
    for payment_id in payment_ids:
        entry = ledger.payment(payment_id)
        assert entry is not None, payment_id
        payments.append([payment_id, *astuple(entry)])
    return {
        "accounts": [[a.id, a.currency, a.overdraft, a.balance, a.owner.value] for a in accounts],
        "payments": payments,
        "net_inflow": net_inflow,
        "mandates": {
            "fields": MANDATE_FIELDS,
            "rows": [[m.id, *m.terms, m.revoked_s, m.spent_day, m.spent] for m in mandates],
        },
    }


def rewrite_snapshot_as_legacy(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrites the directory's one snapshot in the format written before the ledger was native,
    its ledger as `legacy_state` gives it, after `change` edited that."""
    [(lsn, path)] = snapshots.snapshot_paths(directory)
    payload = snapshots.read_snapshot(path, lsn)
    (length,) = SNAPSHOT_STATE_LEN.unpack_from(payload)
    at = SNAPSHOT_STATE_LEN.size
    state = orjson.loads(payload[at : at + length])
    at += length
    (length,) = SNAPSHOT_STATE_LEN.unpack_from(payload, at)
    at += SNAPSHOT_STATE_LEN.size
    ledger = Ledger.from_snapshot(payload[at : at + length])
    # A result row's id, then its fields; a payment's status is its seventh.
    paid = [
        row[0]
        for row in state["results"]
        if row[0].startswith(PAYMENT_ID_PREFIX) and row[6] == Status.SUCCEEDED
    ]
    state["ledger"] = legacy_state(ledger, paid)
    change(state["ledger"])
    encoded = orjson.dumps(state)
    index = payload[at + length :]
    path.unlink()
    snapshots.write_snapshot(
        directory, lsn, SNAPSHOT_STATE_LEN.pack(len(encoded)) + encoded + index
    )
