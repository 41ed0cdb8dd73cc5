"""The results of a load run: the figures, the printed summary, the JSON report and the plot. The
printed table and the JSON come from the same `figures()`, so they cannot disagree."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

from instapay.load.audit import AuditResult
from instapay.load.plan import Plan
from instapay.load.stats import Counts, Second, new_histogram, percentiles_ms

# The generator is behind its schedule when requests leave this late (open loop)...
SEND_LAG_MS_MAX = 10.0
# ...or when it reached less than this share of the asked rate.
ACHIEVED_SHARE_MIN = 0.95


@dataclass
class Summary:
    plan: Plan
    window_s: float
    counts: Counts
    latency: HdrHistogram
    send_lag: HdrHistogram
    generator_cpu_s: float
    timeline: dict[int, Second] = field(default_factory=dict)
    audit: AuditResult | None = None
    crashed: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        measured = self.latency.get_total_count()
        window_s = max(self.window_s, 1e-9)
        payments_ok = sum(self.counts.payments.values())
        return {
            "mode": self.plan.mode,
            "asked_per_s": self.plan.rate_per_s if self.plan.mode == "open" else None,
            "concurrency": self.plan.concurrency if self.plan.mode == "closed" else None,
            "window_s": round(self.window_s, 3),
            # Answered requests (any status) and new payments acknowledged, after the warm-up.
            "requests_per_s": round(measured / window_s, 1),
            "payments_per_s": round(self.counts.acknowledged_measured / window_s, 1),
            "latency_ms": {k: round(v, 3) for k, v in percentiles_ms(self.latency).items()},
            "sent": self.counts.sent,
            "answered": self.counts.answered,
            "failed": self.counts.failed,
            "payments_acknowledged": payments_ok,
            "send_lag_p99_ms": round(percentiles_ms(self.send_lag)["p99"], 3),
            "generator_cpu_s": round(self.generator_cpu_s, 2),
        }

    def warnings(self) -> list[str]:
        """What makes the figures suspect: a generator that could not keep its schedule."""
        figures = self.figures()
        notes = []
        asked = figures["asked_per_s"]
        if asked and figures["requests_per_s"] < ACHIEVED_SHARE_MIN * asked:
            notes.append(
                f"achieved {figures['requests_per_s']:,.0f} requests/s of the {asked:,.0f}/s asked"
            )
        if self.plan.mode == "open" and figures["send_lag_p99_ms"] > SEND_LAG_MS_MAX:
            notes.append(
                f"the load generator fell behind its schedule (send lag p99 "
                f"{figures['send_lag_p99_ms']:.1f} ms): the latencies include its own delay; "
                "add --workers or lower --rate"
            )
        return notes

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": _plan_json(self.plan),
            "figures": self.figures(),
            "counts": self.counts.to_json(),
            "warnings": self.warnings(),
            "audit": None if self.audit is None else self.audit.to_json(),
            "crashed_workers": self.crashed,
            # The merged latency histogram (HdrHistogram's compressed encoding, in µs).
            "histogram_us": base64.b64encode(self.latency.encode()).decode(),
            "timeline": [
                {
                    "second": second,
                    "requests_ok": one.requests_ok,
                    "requests_failed": one.requests_failed,
                    "payments_ok": one.payments_ok,
                    **{f"{k}_ms": v for k, v in percentiles_ms(one.histogram).items()},
                }
                for second, one in sorted(self.timeline.items())
            ],
        }


def _plan_json(plan: Plan) -> dict[str, Any]:
    target = plan.target
    return {
        "base_url": target.base_url,
        "merchant_id": target.merchant_id,
        "kid": target.kid,
        "mode": plan.mode,
        "rate_per_s": plan.rate_per_s,
        "concurrency": plan.concurrency,
        "duration_s": plan.duration_s,
        "requests": plan.requests,
        "warmup_s": plan.warmup_s,
        "payers": plan.payers,
        "amounts": [plan.amounts.kind, plan.amounts.low, plan.amounts.high, plan.amounts.sigma],
        "replay_ratio": plan.replay_ratio,
        "batch": plan.batch,
        "workers": plan.workers,
        "in_flight_max": plan.in_flight_max,
    }


def summary_rows(summary: Summary) -> list[tuple[str, str]]:
    """The printed summary: (label, value) rows, all from `figures()`."""
    figures = summary.figures()
    latency = figures["latency_ms"]
    load = (
        f"open loop, {figures['asked_per_s']:,.0f} requests/s asked"
        if summary.plan.mode == "open"
        else f"closed loop, {figures['concurrency']} in flight"
    )
    rows = [
        ("load", load),
        ("measured for", f"{figures['window_s']:.1f} s"),
        ("throughput", f"{figures['requests_per_s']:,.1f} requests/s"),
    ]
    if summary.plan.batch > 1:
        rows.append(("payments", f"{figures['payments_per_s']:,.1f} payments/s"))
    rows += [(name, f"{value:.3f} ms") for name, value in latency.items()]
    counts = summary.counts
    rows += [
        ("sent", f"{figures['sent']}"),
        ("answered", f"{figures['answered']}"),
        ("no answer", f"{figures['failed']} {_counter(counts.failures)}".rstrip()),
        ("statuses", _counter(counts.statuses) or "none"),
        ("payments", _counter(counts.payments) or "none"),
        ("error codes", _counter(counts.error_codes) or "none"),
        (
            "replays",
            f"{counts.replays_matched} returned the stored result, "
            f"{counts.replays_mismatched} did not",
        ),
        (
            "generator",
            f"send lag p99 {figures['send_lag_p99_ms']:.3f} ms, "
            f"{figures['generator_cpu_s']:.2f} CPU s",
        ),
    ]
    return rows


def _counter(counter: Any) -> str:
    return ", ".join(f"{key}: {n}" for key, n in sorted(counter.items(), key=lambda kv: str(kv[0])))


def print_summary(summary: Summary, console: Console) -> None:
    table = Table(title="instapay load", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for label, value in summary_rows(summary):
        table.add_row(label, value)
    console.print(table)
    for warning in summary.warnings():
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for crash in summary.crashed:
        console.print(f"[red]worker crashed:[/red] {crash}")
    if summary.audit is not None:
        _print_audit(summary.audit, console)


def _print_audit(audit: AuditResult, console: Console) -> None:
    verdict = "[green]passed[/green]" if audit.passed else "[red]FAILED[/red]"
    if audit.unreachable is not None:
        verdict += f", the server could not be reached ({audit.unreachable})"
    console.print(
        f"audit {verdict}: {audit.payments_checked} payments read back, "
        f"{audit.balances_checked} balances checked, {audit.problem_count} problems"
    )
    if audit.unanswered_checked:
        console.print(
            f"  {audit.unanswered_checked} payments got no answer; looked up by order id, "
            f"{audit.unanswered_applied} had been applied (counted in the balances)"
        )
    for note in audit.skipped:
        console.print(f"  skipped {note}")
    for problem in audit.problems:
        console.print(f"  [red]{problem}[/red]")
    if audit.problem_count > len(audit.problems):
        console.print(f"  ... and {audit.problem_count - len(audit.problems)} more")


def write_json(summary: Summary, path: Path) -> None:
    path.write_bytes(orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2))


def write_plot(summary: Summary, path: Path) -> None:
    """Latency percentiles over time (log scale) above throughput over time."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 (optional: `pip install instapay[plot]`)
    except ImportError as error:
        raise RuntimeError("--plot needs matplotlib: pip install 'instapay[plot]'") from error
    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    seconds = sorted(summary.timeline)
    # A second without measured answers (the warm-up) is a gap, not a zero.
    rows = [
        percentiles_ms(summary.timeline[s].histogram)
        if summary.timeline[s].histogram.get_total_count()
        else dict.fromkeys(("p50", "p90", "p99", "max"), float("nan"))
        for s in seconds
    ]
    figure, (latency, throughput) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name in ("p50", "p90", "p99", "max"):
        latency.plot(seconds, [row[name] for row in rows], label=name, marker=".")
    latency.set_yscale("log")
    origin = "the scheduled send" if summary.plan.mode == "open" else "the send"
    latency.set_ylabel(f"latency (ms, from {origin})")
    if summary.plan.warmup_s:
        for axes in (latency, throughput):
            axes.axvspan(0, summary.plan.warmup_s, color="grey", alpha=0.15, label="warm-up")
    latency.legend(loc="upper left")
    latency.grid(True, which="both", alpha=0.3)
    unit = "payments" if summary.plan.batch > 1 else "requests"
    ok = [
        summary.timeline[s].payments_ok
        if summary.plan.batch > 1
        else summary.timeline[s].requests_ok
        for s in seconds
    ]
    throughput.plot(seconds, ok, label=f"{unit} answered / s")
    throughput.plot(
        seconds, [summary.timeline[s].requests_failed for s in seconds], label="no answer / s"
    )
    throughput.set_xlabel("seconds since the start")
    throughput.set_ylabel("per second")
    throughput.legend(loc="upper left")
    throughput.grid(True, alpha=0.3)
    figures = summary.figures()
    figure.suptitle(
        f"instapay load: {figures['requests_per_s']:,.0f} requests/s, "
        f"p99 {figures['latency_ms']['p99']:.1f} ms"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def empty_summary(plan: Plan) -> Summary:
    return Summary(plan, 0.0, Counts(), new_histogram(), new_histogram(), 0.0)
