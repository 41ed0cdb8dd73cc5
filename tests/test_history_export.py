"""`instapay history export` through the real CLI (a subprocess): the window, the fields, both
formats, the file it writes, and the refusals (exit 2). On a database written by hand to the
schema here; on a real engine's, while its server runs: tests/test_history_reads.py."""

import csv
import io
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from history_rows import HistoryRows
from instapay.storage.history import history_path

MAIN = "from instapay.cli import main; raise SystemExit(main())"
# 2023-11-14T22:13:20Z
T0 = 1_700_000_000


def instapay(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (this interpreter and our own entry point)
        [sys.executable, "-c", MAIN, *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    rows = HistoryRows(history_path(tmp_path))
    rows.payment(1, created=T0 - 1)
    rows.payment(2, created=T0, order_id="o-2", payer="bob", amount=500)
    rows.payment(3, "other", created=T0 + 5)
    rows.refund(4, 2, amount=200)  # created T0 + 100
    rows.payment(5, created=T0 + 3600, status="failed")
    rows.connection.execute(
        "INSERT INTO refunds VALUES (6, 'pay_3', 'shop', 0, 'EUR', 'failed',"
        " 'payment_not_found', NULL, ?)",
        (T0 + 200,),
    )
    return tmp_path


def export_json(*arguments: str | Path) -> list[dict[str, object]]:
    done = instapay("history", "export", *arguments, "--format", "ndjson")
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


def test_the_window_is_since_inclusive_until_exclusive_in_log_order(data_dir: Path) -> None:
    rows = export_json(data_dir, "--since", str(T0), "--until", str(T0 + 3600))
    assert [row["id"] for row in rows] == ["pay_2", "pay_3", "re_4", "re_6"]
    iso = export_json(data_dir, "--since", "2023-11-14T22:13:20Z", "--until", "2023-11-14T23:13:20")
    assert iso == rows
    one = export_json(
        data_dir, "--since", "2023-11-14", "--until", str(T0 + 1), "--merchant", "shop"
    )
    assert [row["id"] for row in one] == ["pay_1", "pay_2"]


def test_a_row_holds_what_a_merchant_reconciles_on(data_dir: Path) -> None:
    rows = export_json(
        data_dir, "--since", str(T0), "--until", str(T0 + 3600), "--merchant", "shop"
    )
    payment, refund, declined = rows
    assert payment == {
        "type": "payment",
        "id": "pay_2",
        "payment_id": None,
        "merchant_id": "shop",
        "order_id": "o-2",
        "payer": "bob",
        "amount": 500,
        "amount_refunded": 200,
        "currency": "EUR",
        "status": "succeeded",
        "failure_code": None,
        "created": T0,
        "created_at": "2023-11-14T22:13:20Z",
        "description": "payment 2",
        "reason": None,
    }
    assert refund == {
        "type": "refund",
        "id": "re_4",
        "payment_id": "pay_2",
        "merchant_id": "shop",
        "order_id": "o-2",
        "payer": "bob",
        "amount": 200,
        "amount_refunded": None,
        "currency": "EUR",
        "status": "succeeded",
        "failure_code": None,
        "created": T0 + 100,
        "created_at": "2023-11-14T22:15:00Z",
        "description": None,
        "reason": "asked",
    }
    # A declined refund naming another merchant's payment learns nothing of it.
    assert (declined["id"], declined["order_id"], declined["payer"]) == ("re_6", None, None)


def test_csv_has_a_header_and_the_same_rows_written_owner_only(data_dir: Path) -> None:
    output = data_dir.parent / "export.csv"
    output.write_text("old")
    output.chmod(0o644)
    window = ("--since", str(T0), "--until", str(T0 + 3600))
    done = instapay("history", "export", data_dir, *window, "--output", output)
    assert (done.returncode, done.stdout) == (0, "")
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    with output.open(newline="") as text:
        table = list(csv.DictReader(text))
    assert [row["id"] for row in table] == [row["id"] for row in export_json(data_dir, *window)]
    assert (table[0]["payment_id"], table[0]["amount"]) == ("", "500")
    printed = instapay("history", "export", data_dir, *window, "--format", "csv")
    assert list(csv.DictReader(io.StringIO(printed.stdout, newline=""))) == table


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--since", "yesterday", "--until", "1"), "'yesterday' is neither unix seconds nor"),
        (("--since", "5", "--until", "5"), "--since (5) must be before --until (5)"),
        (("--since", "2024-01-02", "--until", "2024-01-01"), "must be before --until"),
        (("--since", "0", "--until", "9" * 20), "is past any time"),
    ],
)
def test_a_bad_window_exits_2_saying_why(
    data_dir: Path, arguments: tuple[str, ...], message: str
) -> None:
    done = instapay("history", "export", data_dir, *arguments)
    assert (done.returncode, done.stdout) == (2, "")
    assert message in done.stderr


def test_a_missing_database_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    done = instapay("history", "export", tmp_path, "--since", "0", "--until", "1")
    assert done.returncode == 2
    assert "no history database" in done.stderr
    assert list(tmp_path.iterdir()) == []
