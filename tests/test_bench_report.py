"""benches/report.py, which turns a `make bench` run into BENCHMARKS.md: figures where lower is
better (seconds, milliseconds, bytes) compare and meet their targets the right way round, and a
row's costs are set against its baselines'. Built on small hand-written pytest-benchmark reports.
"""

from typing import Any

from benches import report

HISTORY = "benches/test_bench_history.py"


def bench(name: str, extra_info: dict[str, Any], median_s: float = 1.0) -> dict[str, Any]:
    return {
        "group": "g",
        "name": name,
        "fullname": f"{HISTORY}::{name}",
        "extra_info": extra_info,
        "stats": {"median": median_s},
    }


def rows(*benches: dict[str, Any]) -> dict[str, report.Row]:
    """The rows of one run holding `benches`, by name."""
    run = {"benchmarks": list(benches), "environment": {}}
    return {row.name: row for row in report.rows_of(run)}


def test_seconds_compare_lower_is_better_and_meet_an_at_most_target() -> None:
    naive = bench(
        "test_naive_reopen_from_snapshot", {"seconds": 2.0, "unit": "s", "baseline": True}
    )
    fast = bench("test_reopen_from_snapshot", {"seconds": 0.5, "unit": "s", "baseline": False})
    slow = {**fast, "extra_info": {**fast["extra_info"], "seconds": 4.0}}
    row = rows(naive, fast)["test_reopen_from_snapshot"]
    assert row.figure == 0.5
    assert [(c.baseline, c.ratio) for c in row.comparisons] == [
        ("test_naive_reopen_from_snapshot", 4.0)
    ]
    assert [v.outcome for v in row.verdicts] == ["met"]
    assert [v.outcome for v in rows(naive, slow)["test_reopen_from_snapshot"].verdicts] == [
        "not met"
    ]


def test_the_pause_figure_is_in_milliseconds_not_items_per_round() -> None:
    gap = bench("test_gap_between_batches", {"milliseconds": 2.0, "unit": "ms", "baseline": True})
    pause = bench("test_snapshot_pause", {"milliseconds": 3300.0, "unit": "ms", "baseline": False})
    row = rows(gap, pause)["test_snapshot_pause"]
    assert row.figure == 3300.0
    assert row.comparisons[0].ratio == 2.0 / 3300.0
    assert [v.outcome for v in row.verdicts] == ["not met"]
    assert report.quantity(row.figure, row.unit) == "3300.0 ms"
    assert report.ratio_text(row.comparisons[0].ratio) == "0.06%"


def test_a_rate_is_still_higher_is_better() -> None:
    naive = bench("test_naive_recovery", {"items": 100, "unit": "records/s", "baseline": True})
    ours = bench("test_recovery", {"items": 100, "unit": "records/s", "baseline": False}, 0.25)
    row = rows(naive, ours)["test_recovery"]
    assert row.figure == 400.0
    assert row.comparisons[0].ratio == 4.0


def test_costs_are_set_against_the_baselines_costs() -> None:
    cost = "server_cpu_us_per_request"
    bare = bench("test_bare", {"rate_per_s": 10.0, "unit": "req/s", "baseline": True, cost: 50.0})
    ours = bench("test_ours", {"rate_per_s": 5.0, "unit": "req/s", "baseline": False, cost: 150.0})
    by_name = rows(bare, ours)
    assert by_name["test_ours"].costs == [report.Cost(cost, 150.0, {"test_bare": 50.0})]
    assert "server CPU 150 µs/request (3.00x `test_bare`'s)" in report.details(by_name["test_ours"])
    assert by_name["test_bare"].costs == [report.Cost(cost, 50.0, {})]
