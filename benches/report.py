"""Turns the pytest-benchmark JSON of a `make bench` run (one file per suite) into BENCHMARKS.md
and BENCHMARKS.json: each figure with its baselines from the same run and the ratios, the
targets of DESIGN.md (met or not where they are numbers), the machine, and the command that
reproduces each row.

A row's figure: the first `FIGURE_KEYS` entry its `extra_info` holds (for the HTTP rows the
rate wrk or the batch client measured: pytest-benchmark only timed the run's length; for the
memory rows bytes per key or per payment, for the reopen and pause rows seconds or milliseconds,
lower is better), for the others `extra_info["items"]` per median round; its unit in
`extra_info["unit"]`. Its baselines are the rows of its group marked `extra_info["baseline"]`.

Usage: python benches/report.py [--write DIR] .benchmarks/test_bench_*.json
prints BENCHMARKS.md; with --write, also writes it and BENCHMARKS.json into DIR.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

Bench = dict[str, Any]
"""One benchmark of pytest-benchmark's JSON."""


@dataclass(frozen=True)
class Comparison:
    baseline: str
    baseline_figure: float
    ratio: float
    """How many times better than the baseline: figure / baseline's, or the inverse when lower
    is better."""


@dataclass(frozen=True)
class Target:
    text: str
    bound: float | None = None
    """None: a target in words, for the reader to judge from the figures."""
    versus: str | None = None
    """The bound is on the ratio to this baseline (of the same group), not on the figure."""
    at_most: bool = False

    def outcome(self, figure: float, comparisons: list[Comparison]) -> str:
        if self.bound is None:
            return "not a number: see the figures"
        value = figure if self.versus is None else ratio_to(self.versus, comparisons)
        if value is None:
            return "its baseline is not in this run"
        met = value <= self.bound if self.at_most else value >= self.bound
        return "met" if met else "not met"


@dataclass(frozen=True)
class Verdict:
    target: str
    outcome: str
    """"met", "not met", or why it cannot be said."""


@dataclass(frozen=True)
class Cost:
    """A cost a row reports besides its figure (`COSTS`), and the same cost of each baseline of
    its group."""

    key: str
    value: float
    baselines: dict[str, float]


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    figure: float
    unit: str
    is_baseline: bool
    comparisons: list[Comparison]
    verdicts: list[Verdict]
    costs: list[Cost]
    command: str
    extra_info: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """What the header says about the run as a whole."""

    command: str
    quick: bool
    date: str
    commit: str
    dirty: bool
    cpu: str
    cores: int
    python: str
    rustc: str


# DESIGN.md's "Performance targets" (the ratios to a baseline come from the issues), by row.
TARGETS: dict[str, tuple[Target, ...]] = {
    "benches/test_bench_crypto.py::test_verify_batch[1 thread]": (
        Target(">= 3 M/s on one core", 3e6),
        Target(">= 7x the Python hmac loop", 7, versus="test_python_hmac_loop"),
    ),
    "benches/test_bench_crypto.py::test_verify_batch[2 threads]": (
        Target(">= 7x the Python hmac loop", 7, versus="test_python_hmac_loop"),
    ),
    "benches/test_bench_crypto.py::test_verify_batch_hex[1 thread]": (
        Target(">= 3 M/s on one core", 3e6),
        Target(">= 7x the Python hmac loop", 7, versus="test_python_hmac_loop_hex"),
    ),
    "benches/test_bench_idempotency.py::test_reserve_fresh_keys[IdempotencyIndex]": (
        Target(">= 5 M reserve/s", 5e6),
        Target(">= 5x the dict", 5, versus="test_reserve_fresh_keys[dict]"),
    ),
    "benches/test_bench_idempotency.py::test_reserve_replays[IdempotencyIndex]": (
        Target(">= 5 M reserve/s", 5e6),
        Target(">= 5x the dict", 5, versus="test_reserve_replays[dict]"),
    ),
    "benches/test_bench_idempotency.py::test_memory[IdempotencyIndex 10M keys]": (
        Target("<= 64 B per key at 10 M keys", 64, at_most=True),
    ),
    "benches/test_bench_engine.py::test_engine_submit_many[always]": (
        Target(">= 500 k payments/s", 5e5),
        Target(">= 30x the naive engine", 30, versus="test_naive_engine"),
    ),
    "benches/test_bench_history.py::test_recovery": (Target(">= 2 M records/s", 2e6),),
    "benches/test_bench_history.py::test_reopen_from_snapshot": (
        Target("< 1 s for 1 M payments of history", 1.0, at_most=True),
    ),
    "benches/test_bench_history.py::test_snapshot_pause": (
        Target("<= 10 ms at 1 M payments of history", 10, at_most=True),
    ),
    "benches/test_bench_history.py::test_rss_per_payment[instapay]": (
        Target("<= 64 B per payment at 10 M payments (size measured: details)", 64, at_most=True),
    ),
    **{
        f"benches/test_bench_reads.py::{row}": (
            Target(
                "p99 <= 10 ms with 10 M payments stored (size stored: details)", 10, at_most=True
            ),
        )
        for row in (
            "test_reader[list of 100]",
            "test_reader[oldest payment]",
            "test_http_list",
        )
    },
    "benches/test_bench_hot_state.py::test_rss_growth": (
        Target("<= 10 % from 1 M to 10 M payments of history (sizes: details)", 10, at_most=True),
    ),
    "benches/test_bench_hot_state.py::test_snapshot[large]": (
        Target("size and time independent of history (sizes: details)"),
    ),
    "benches/test_bench_hot_state.py::test_restart": (
        Target("<= 2 s to ready with 10 M payments of history (size: details)", 2.0, at_most=True),
    ),
    "benches/test_bench_projector.py::test_sustained_payments[with projector]": (
        Target(
            ">= 80% of the same engine without the projector",
            0.8,
            versus="test_sustained_payments[without]",
        ),
    ),
    "benches/test_bench_http.py::test_instapay_single_payment": (
        Target(
            ">= 70% of the bare handler (DESIGN.md's goal: 85%)", 0.7, versus="test_bare_aiohttp"
        ),
    ),
    "benches/test_bench_http.py::test_instapay_batch": (Target(">= 300 k payments/s", 3e5),),
    "benches/test_bench_webhooks.py::test_payments_while_webhooks_go_out[slow receiver]": (
        Target("no slowdown beyond noise"),
    ),
}
# More than this many cores busy with other work during an HTTP row makes the run suspect.
BUSY_CORES = 0.25
# What the details column shows of a row's extra_info, in this order, when the row has it.
DETAILS: dict[str, str] = {
    "fsync": "fsync {}",
    "p50_ms": "p50 {:.1f} ms",
    "p99_ms": "p99 {:.1f} ms",
    "server_cores": "cores: server {:.2f}",
    "generator_cores": "load {:.2f}",
    "rest_cores": "rest of the machine {:.2f}",
    "rss_bytes_per_key": "RSS growth {:.1f} B/key",
    "history_payments": "{:,} payments of history",
    "history_rows_per_s": "projector {:,.0f} rows/s",
    "rss_total_bytes_per_payment": "with the first chunk {:.1f} B/payment",
    "rss_peak_bytes_per_payment": "peak {:.1f} B/payment",
    "gap_p50_ms": "gaps: p50 {:.1f} ms",
    "gap_max_ms": "longest {:.1f} ms",
    "snapshots_taken": "snapshots taken: {}",
    "bytes_per_account": "{:.1f} B/account",
    "webhooks_pending": "{} deliveries pending at the end",
    "alternating_ratio": "{:.2f}x the baseline in alternating rounds",
    "snapshot_bytes": "snapshot {:,} B",
    "hot_results_max": "window {:,} results",
    "results_held_large": "{:,} results held",
    "rss_small_bytes": "RSS {:,} B at the small history",
    "rss_large_bytes": "{:,} B at the large",
}


# The extra_info keys that hold a row's figure when it is not items per median round, first
# match wins, and whether lower is better for each.
FIGURE_KEYS: dict[str, bool] = {
    "rate_per_s": False,
    "bytes_per_key": True,
    "bytes_per_payment": True,
    "seconds": True,
    "milliseconds": True,
    "percent": True,
}
# Figures besides a row's own, compared with the same figure of its group's baselines in the
# details column (lower is better): what the row costs, not what it achieves.
COSTS: dict[str, str] = {"server_cpu_us_per_request": "server CPU {:.0f} µs/request"}


def ratio_to(baseline: str, comparisons: list[Comparison]) -> float | None:
    return next((c.ratio for c in comparisons if c.baseline == baseline), None)


def figure_key(bench: Bench) -> str | None:
    return next((key for key in FIGURE_KEYS if key in bench["extra_info"]), None)


def figure_of(bench: Bench) -> float:
    info, key = bench["extra_info"], figure_key(bench)
    if key is not None:
        return float(info[key])
    return float(info["items"]) / float(bench["stats"]["median"])


def lower_is_better(bench: Bench) -> bool:
    key = figure_key(bench)
    return key is not None and FIGURE_KEYS[key]


def compare(bench: Bench, baseline: Bench) -> Comparison:
    mine, theirs = figure_of(bench), figure_of(baseline)
    ratio = theirs / mine if lower_is_better(bench) else mine / theirs
    return Comparison(baseline["name"], theirs, ratio)


def is_baseline(bench: Bench) -> bool:
    return bool(bench["extra_info"].get("baseline"))


def reproduce(bench: Bench, environment: dict[str, str]) -> str:
    assignments = [f"{name}={shlex.quote(value)}" for name, value in environment.items()]
    command = [".venv/bin/pytest", shlex.quote(bench["fullname"]), "--benchmark-only"]
    return " ".join([*assignments, *command])


def costs_of(bench: Bench, baselines: list[Bench]) -> list[Cost]:
    info = bench["extra_info"]
    return [
        Cost(key, float(info[key]), {b["name"]: float(b["extra_info"][key]) for b in baselines})
        for key in COSTS
        if key in info and all(key in b["extra_info"] for b in baselines)
    ]


def row_of(bench: Bench, baselines: list[Bench], environment: dict[str, str]) -> Row:
    figure = figure_of(bench)
    compared = [] if is_baseline(bench) else baselines
    comparisons = [compare(bench, b) for b in compared]
    targets = TARGETS.get(bench["fullname"], ())
    return Row(
        group=bench["group"],
        name=bench["name"],
        figure=figure,
        unit=bench["extra_info"]["unit"],
        is_baseline=is_baseline(bench),
        comparisons=comparisons,
        verdicts=[Verdict(t.text, t.outcome(figure, comparisons)) for t in targets],
        costs=costs_of(bench, compared),
        command=reproduce(bench, environment),
        extra_info=bench["extra_info"],
    )


def group_rows(benches: list[Bench], environment: dict[str, str]) -> list[Row]:
    """A group's baselines first, then the rest in the order they ran."""
    baselines = [bench for bench in benches if is_baseline(bench)]
    others = [bench for bench in benches if not is_baseline(bench)]
    return [row_of(bench, baselines, environment) for bench in baselines + others]


def rows_of(report: dict[str, Any]) -> list[Row]:
    groups: dict[str, list[Bench]] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"], []).append(bench)
    return [
        row for benches in groups.values() for row in group_rows(benches, report["environment"])
    ]


def not_measured(report: dict[str, Any]) -> dict[str, list[str]]:
    """The targets of the suites in this report whose row is missing (deselected or skipped)."""
    suites = {bench["fullname"].split("::")[0] for bench in report["benchmarks"]}
    measured = {bench["fullname"] for bench in report["benchmarks"]}
    return {
        name: [target.text for target in targets]
        for name, targets in TARGETS.items()
        if name.split("::")[0] in suites and name not in measured
    }


def run_of(report: dict[str, Any]) -> Run:
    machine, commit = report["machine_info"], report["commit_info"]
    started = datetime.fromisoformat(report["datetime"])
    return Run(
        command="make bench-quick" if report["quick"] else "make bench",
        quick=report["quick"],
        date=f"{started:%Y-%m-%d %H:%M %Z}",
        commit=commit.get("id", "unknown"),
        dirty=bool(commit.get("dirty")),
        cpu=machine["cpu"]["brand_raw"],
        cores=machine["cpu"]["count"],
        python=f"{machine['python_implementation']} {machine['python_version']}",
        rustc=machine.get("rustc", "unknown"),
    )


def quantity(value: float, unit: str) -> str:
    """3.55 M messages/s, 14.2 k req/s, 58.7 B/key, 0.412 s."""
    if not unit.endswith("/s"):
        return f"{value:.1f} {unit}" if value >= 1 else f"{value:.3g} {unit}"
    scale, prefix = next(((s, p) for s, p in ((1e6, "M "), (1e3, "k ")) if value >= s), (1, ""))
    return f"{value / scale:.3g} {prefix}{unit}"


def ratio_text(ratio: float) -> str:
    """Below 1 as a share of the baseline (as DESIGN.md words its HTTP target), above as times."""
    if ratio < 0.01:
        return f"{ratio:.2%}"
    return f"{ratio:.0%}" if ratio < 1 else f"{ratio:.1f}x"


def cost_text(cost: Cost) -> str:
    """server CPU 120 µs/request (3.00x `test_bare_aiohttp`'s)"""
    own = COSTS[cost.key].format(cost.value)
    theirs = [f"{cost.value / value:.2f}x `{name}`'s" for name, value in cost.baselines.items()]
    return f"{own} ({', '.join(theirs)})" if theirs else own


def details(row: Row) -> str:
    info = row.extra_info
    facts = [form.format(info[key]) for key, form in DETAILS.items() if key in info]
    return ", ".join(facts + [cost_text(cost) for cost in row.costs])


def emphasis(outcome: str) -> str:
    """A missed target stands out in the table."""
    return f"**{outcome}**" if outcome == "not met" else outcome


def baseline_cell(row: Row) -> str:
    if row.is_baseline:
        return "(baseline)"
    figures = [f"`{c.baseline}`: {quantity(c.baseline_figure, row.unit)}" for c in row.comparisons]
    return "<br>".join(figures) or "none"


def markdown_row(row: Row) -> str:
    cells = [
        row.group,
        f"`{row.name}`",
        quantity(row.figure, row.unit),
        baseline_cell(row),
        "<br>".join(ratio_text(c.ratio) for c in row.comparisons),
        "; ".join(f"{v.target}: {emphasis(v.outcome)}" for v in row.verdicts),
        details(row),
        f"`{row.command}`",
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = [
    "| group | implementation | figure | same-run baseline | ratio | target | details "
    "| reproduce |",
    "|---|---|---:|---|---:|---|---|---|",
]


def header(run: Run) -> list[str]:
    dirty = " with uncommitted changes" if run.dirty else ""
    quick = [
        "> **Quick run** (`make bench-quick`, as CI runs it): smaller sizes and shorter runs, to"
        " show that every benchmark works and roughly where it stands. Its figures are not"
        " comparable to a full run's (`make bench`).",
        "",
    ]
    return [
        "# Benchmarks",
        "",
        "<!-- Written by benches/report.py at the end of `make bench`; edits are overwritten. -->",
        "",
        *(quick if run.quick else []),
        f"Command: `{run.command}`; {run.date}; commit `{run.commit[:12]}`{dirty}.  ",
        f"Machine: {run.cpu}, {run.cores} cores; {run.python}; {run.rustc}.",
        "",
        "Every ratio compares two figures measured in this same run on this machine, never"
        " figures from different runs. Above 1 it says how many times better than the baseline"
        " the row is (rate / baseline rate; where lower is better, as for bytes or seconds, the"
        " baseline's figure / this one); below 1 it is the row's share of the baseline. Figures:"
        " the median round of each micro benchmark; one timed run for the HTTP rows (wrk, or the"
        " batch client), recovery, reopening, the snapshot pause and memory. Targets:"
        " DESIGN.md's, with the ratios the issues ask for. Each command reruns its row alone"
        " after `make build` (add `--benchmark-json=F`, then `.venv/bin/python benches/report.py"
        " F` shows it as here). The same rows as numbers,"
        " for tooling: BENCHMARKS.json next to this file.",
        "",
    ]


def busy_lines(rows: list[Row]) -> list[str]:
    """A caution when other work shared the machine during a run that measured it (the HTTP
    rows): their figures are then suspect."""
    busiest = max((float(row.extra_info.get("rest_cores", 0)) for row in rows), default=0.0)
    if busiest <= BUSY_CORES:
        return []
    return [
        f"> **Caution:** other work kept up to {busiest:.2f} cores of this machine busy during"
        ' the HTTP rows ("rest of the machine" in their details): their figures are suspect.'
        " Rerun on an idle machine.",
        "",
    ]


def not_measured_lines(missing: dict[str, list[str]]) -> list[str]:
    if not missing:
        return []
    lines = [f"- `{name}`: {'; '.join(targets)}" for name, targets in missing.items()]
    return ["", "Targets without a row in this run:", "", *lines]


def render(run: Run, rows: list[Row], missing: dict[str, list[str]]) -> str:
    table = [markdown_row(row) for row in rows]
    lines = [*header(run), *busy_lines(rows), *TABLE_HEADER, *table, *not_measured_lines(missing)]
    return "\n".join(lines) + "\n"


def merged(paths: list[str]) -> dict[str, Any]:
    """The suites' reports as one: the first one's run facts, every benchmark."""
    reports = [json.loads(Path(path).read_text()) for path in paths]
    quick = {report.get("quick", False) for report in reports}
    if len(quick) > 1:
        raise SystemExit("these files mix quick and full runs: their figures do not compare")
    first = reports[0]
    return {
        **{key: first.get(key, {}) for key in ("machine_info", "commit_info", "environment")},
        "datetime": first["datetime"],
        "quick": quick.pop(),
        "benchmarks": [bench for report in reports for bench in report["benchmarks"]],
    }


def write(directory: Path, markdown: str, run: Run, rows: list[Row], missing: object) -> None:
    summary = {"run": asdict(run), "rows": [asdict(row) for row in rows], "not_measured": missing}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "BENCHMARKS.md").write_text(markdown)
    (directory / "BENCHMARKS.json").write_text(json.dumps(summary, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="BENCHMARKS.md from pytest-benchmark JSON")
    parser.add_argument("--write", type=Path, metavar="DIR", help="write BENCHMARKS.md/.json here")
    parser.add_argument("reports", nargs="+", help="pytest-benchmark JSON files, one per suite")
    arguments = parser.parse_args()
    report = merged(arguments.reports)
    run, rows, missing = run_of(report), rows_of(report), not_measured(report)
    markdown = render(run, rows, missing)
    print(markdown, end="")
    if arguments.write is not None:
        write(arguments.write, markdown, run, rows, missing)


if __name__ == "__main__":
    main()
