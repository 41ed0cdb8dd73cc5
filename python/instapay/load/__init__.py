"""`instapay load`: the load harness. Runs generator processes (`worker`), shows live progress,
merges their histograms into one summary (`report`), and ends with an audit through the API
(`audit`). The exit status is 0 only if every worker finished and the audit found nothing.

A server that is down, or dies during the run, gets the same end: the summary of what was
measured (the requests without an answer counted), an audit that says it could not reach the
server, exit status 1."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from instapay.client import ApiError
from instapay.load import worker
from instapay.load.audit import (
    UNREACHABLE_ERRORS,
    audit,
    before_run,
    unreachable_reason,
)
from instapay.load.plan import Amounts, Plan, PlanError, Target
from instapay.load.report import Summary, print_summary, write_json, write_plot
from instapay.load.stats import Counts, Second, merged, new_histogram, percentiles_ms

__all__ = ["Amounts", "Plan", "PlanError", "Summary", "Target", "run"]

# Workers start together this long after the last one is ready.
START_DELAY_S = 0.3
READY_TIMEOUT_S = 120.0


class Collector:
    """The parent's side: what the workers report, merged."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.timeline: dict[int, Second] = {}
        self.done: list[worker.Done] = []
        self.crashed: list[str] = []
        self.failed = 0

    def take(self, message: worker.Message) -> None:
        if isinstance(message, worker.Tick):
            second = self.timeline.setdefault(message.second, Second())
            second.add_encoded(
                message.histogram,
                message.requests_ok,
                message.requests_failed,
                message.payments_ok,
            )
            self.failed += message.requests_failed
        elif isinstance(message, worker.Done):
            self.done.append(message)
        elif isinstance(message, worker.Crashed):
            self.crashed.append(f"worker {message.worker}: {message.message}")

    @property
    def finished(self) -> int:
        return len(self.done) + len(self.crashed)

    def latest(self) -> tuple[int, float]:
        """The latest second's answers and p99 (ms), for the progress line."""
        if not self.timeline:
            return 0, 0.0
        second = self.timeline[max(self.timeline)]
        return second.requests_ok, percentiles_ms(second.histogram)["p99"]

    def summary(self) -> Summary:
        counts = Counts()
        for done in self.done:
            counts.add(done.counts)
        latency = new_histogram()
        for one in self.timeline.values():
            latency.add(one.histogram)
        window_s = max((done.last_done_s for done in self.done), default=0.0) - self.plan.warmup_s
        return Summary(
            self.plan,
            max(window_s, 0.0),
            counts,
            latency,
            merged([done.send_lag for done in self.done]),
            sum(done.cpu_s for done in self.done),
            self.timeline,
            crashed=self.crashed,
        )


def _generate(plan: Plan, console: Console, show_progress: bool) -> Collector:
    context = multiprocessing.get_context("spawn")
    messages: Any = context.Queue()
    go = context.Event()
    start_at: Any = context.Value("d", 0.0)
    processes = [
        context.Process(
            target=worker.main,
            args=(plan, plan.share(n), messages, go, start_at),
            name=f"instapay-load-{n}",
            daemon=True,
        )
        for n in range(plan.workers)
    ]
    for process in processes:
        process.start()
    collector = Collector(plan)
    try:
        _wait_ready(messages, collector, plan.workers)
        if not collector.crashed:
            start_at.value = time.time() + START_DELAY_S
            go.set()
            _collect(messages, collector, processes, console, show_progress)
    finally:
        if not go.is_set():
            start_at.value = worker.ABORT  # the workers that are ready leave without sending
            go.set()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return collector


def _wait_ready(messages: Any, collector: Collector, count: int) -> None:
    ready = 0
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    while ready + len(collector.crashed) < count:
        try:
            message = messages.get(timeout=max(0.1, deadline_s - time.monotonic()))
        except queue.Empty:
            collector.crashed.append(f"{count - ready} workers not ready in {READY_TIMEOUT_S} s")
            return
        if isinstance(message, worker.Ready):
            ready += 1
        else:
            collector.take(message)


def _collect(
    messages: Any,
    collector: Collector,
    processes: list[Any],
    console: Console,
    show: bool,
) -> None:
    plan = collector.plan
    total = plan.requests if plan.requests is not None else plan.warmup_s + plan.duration_s
    unit = "requests" if plan.requests is not None else "s"
    columns = (
        TextColumn("[bold]load"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TimeElapsedColumn(),
        TextColumn(
            "{task.fields[rate]:,} answered/s  p99 {task.fields[p99]:.1f} ms  "
            "no answer {task.fields[failed]:,}"
        ),
    )
    started_s = time.monotonic()
    with Progress(*columns, console=console, disable=not show, transient=True) as progress:
        task = progress.add_task("load", total=total, rate=0, p99=0.0, failed=0)
        while collector.finished < plan.workers:
            try:
                collector.take(messages.get(timeout=0.25))
            except queue.Empty:
                if not any(process.is_alive() for process in processes):
                    # Exited without a last word (killed): what they sent is what there is.
                    missing = plan.workers - collector.finished
                    collector.crashed.append(f"{missing} workers exited without reporting")
                    return
            rate, p99 = collector.latest()
            done = (
                sum(s.requests_ok + s.requests_failed for s in collector.timeline.values())
                if plan.requests is not None
                else min(total, time.monotonic() - started_s)
            )
            progress.update(task, completed=done, rate=rate, p99=p99, failed=collector.failed)


def run(
    plan: Plan,
    *,
    console: Console | None = None,
    show_progress: bool = True,
    report_path: Path | None = None,
    plot_path: Path | None = None,
) -> int:
    """Runs the plan, prints the summary and the audit, writes the report and the plot; the
    exit status: 0 if every worker finished and the audit passed, 1 otherwise, 2 when the admin
    API refuses the audit's first reads (nothing is sent then)."""
    console = console or Console()
    before: dict[str, int] | None = None
    unreachable_before = None
    try:
        plan, before = asyncio.run(before_run(plan))
    except UNREACHABLE_ERRORS as error:
        unreachable_before = unreachable_reason(plan.target, error)
        console.print(f"[red]the server cannot be reached:[/red] {unreachable_before}")
    except ApiError as error:
        console.print(f"[red]instapay load: the admin API refused the audit's reads:[/red] {error}")
        return 2
    collector = _generate(plan, console, show_progress)
    summary = collector.summary()
    acknowledged = [payment for done in collector.done for payment in done.acknowledged]
    mismatches = [mismatch for done in collector.done for mismatch in done.mismatches]
    unanswered = [payment for done in collector.done for payment in done.unanswered]
    replays = (summary.counts.replays_mismatched, mismatches)
    console.print(f"auditing {len(acknowledged):,} acknowledged payments through the API ...")
    summary.audit = asyncio.run(
        audit(
            plan, acknowledged, replays, before, unanswered, unreachable_before=unreachable_before
        )
    )
    print_summary(summary, console)
    if report_path is not None:
        write_json(summary, report_path)
    if plot_path is not None:
        write_plot(summary, plot_path)
    return 0 if summary.audit.passed and not collector.crashed else 1
