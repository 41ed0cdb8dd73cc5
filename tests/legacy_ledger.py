"""The ledger of an engine snapshot as versions before the native ledger wrote it: a JSON object
of positional rows inside the snapshot's JSON state. Built from a ledger's read views, so tests
can check that such snapshots still load, and forge broken ones (the native state itself cannot
be changed by hand from Python)."""

from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import orjson

from instapay.engine import SNAPSHOT_STATE_LEN
from instapay.engine.results import Results
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


def legacy_results(results: Results) -> list[list[Any]]:
    """The results as the snapshot's JSON state held them before they were native: each result's
    fields but `replayed`, in log order."""
    return [list(result[:-1]) for result in results.values()]


@dataclass(frozen=True)
class Snapshot:
    """The parts of the directory's one snapshot, as the engine writes it now."""

    lsn: int
    path: Path
    state: dict[str, Any]
    ledger: bytes
    results: bytes
    index: bytes

    @classmethod
    def of(cls, directory: Path) -> "Snapshot":
        [(lsn, path)] = snapshots.snapshot_paths(directory)
        payload = snapshots.read_snapshot(path, lsn)
        at = 0
        sections = []
        for _ in range(3):  # the JSON state, the ledger, the results
            (length,) = SNAPSHOT_STATE_LEN.unpack_from(payload, at)
            at += SNAPSHOT_STATE_LEN.size
            sections.append(payload[at : at + length])
            at += length
        state, ledger, results = sections
        return cls(lsn, path, orjson.loads(state), ledger, results, payload[at:])

    def replace(self, directory: Path, *sections: bytes) -> None:
        """Writes this snapshot's state (as edited), then `sections`, in its place."""
        encoded = orjson.dumps(self.state)
        self.path.unlink()
        payload = b"".join((SNAPSHOT_STATE_LEN.pack(len(encoded)), encoded, *sections))
        snapshots.write_snapshot(directory, self.lsn, payload)


def rewrite_snapshot_as_legacy(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrites the directory's one snapshot in the format written before the ledger was native
    (the results JSON rows too), its ledger as `legacy_state` gives it, after `change` edited
    that."""
    snapshot = Snapshot.of(directory)
    ledger = Ledger.from_snapshot(snapshot.ledger)
    state = snapshot.state
    state["results"] = legacy_results(Results.from_snapshot(snapshot.results))
    # A result row's id, then its fields; a payment's status is its seventh.
    paid = [
        row[0]
        for row in state["results"]
        if row[0].startswith(PAYMENT_ID_PREFIX) and row[6] == Status.SUCCEEDED
    ]
    state["ledger"] = legacy_state(ledger, paid)
    change(state["ledger"])
    snapshot.replace(directory, snapshot.index)


def rewrite_snapshot_with_json_results(directory: Path) -> None:
    """Rewrites the directory's one snapshot in the format written before the results were
    native: their JSON rows in the JSON state, the native ledger after it, no results section."""
    snapshot = Snapshot.of(directory)
    snapshot.state["results"] = legacy_results(Results.from_snapshot(snapshot.results))
    ledger = SNAPSHOT_STATE_LEN.pack(len(snapshot.ledger)) + snapshot.ledger
    snapshot.replace(directory, ledger, snapshot.index)
