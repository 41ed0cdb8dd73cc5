"""Turns a pytest-benchmark JSON file into the README's tables: items/s and same-run ratios, bytes
per key for the memory benchmarks (those that record `bytes_per_key`), and rates with latencies
for the HTTP benchmarks (those that record `rate_per_s`: one run each, measured by wrk or the
batch client, so pytest-benchmark's own timing of them is not used).

Usage: python benches/report.py .benchmarks/test_bench_*.json (one file per suite, merged)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# DESIGN.md's targets, by group prefix and benchmark name.
TARGETS: dict[tuple[str, str], str] = {
    ("verify 1024", "test_verify_batch[1 thread]"): ">= 3 M/s on one core, >= 7x",
    ("verify 1024", "test_verify_batch[2 threads]"): ">= 7x the Python loop",
    ("verify hex", "test_verify_batch_hex[1 thread]"): ">= 3 M/s on one core, >= 7x",
    ("reserve", "test_reserve_fresh_keys[IdempotencyIndex]"): ">= 5 M/s, >= 5x the dict",
    ("reserve", "test_reserve_replays[IdempotencyIndex]"): ">= 5 M/s, >= 5x the dict",
    ("memory", "test_memory[IdempotencyIndex 10M keys]"): "<= 64 B per key at 10 M keys",
    ("engine: durable", "test_engine_submit_many[always]"): ">= 300 k/s, >= 50x the naive engine",
    ("engine: recovery", "test_recovery"): ">= 1 M records/s",
    ("http: single", "test_instapay_single_payment"): ">= 85% of the bare handler",
    ("http: batch", "test_instapay_batch"): ">= 200 k payments/s",
    ("webhooks", "test_payments_while_webhooks_go_out[slow receiver]"): "no slowdown beyond noise",
}


def items_per_s(bench: dict[str, Any]) -> float:
    return float(bench["extra_info"]["items"]) / float(bench["stats"]["median"])


def target_of(group: str, name: str) -> str:
    return next(
        (t for (prefix, n), t in TARGETS.items() if group.startswith(prefix) and n == name), ""
    )


def by_group(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"], []).append(bench)
    return groups


def baseline_of(benches: list[dict[str, Any]]) -> dict[str, Any]:
    return next(b for b in benches if b["extra_info"].get("baseline"))


def is_memory(benches: list[dict[str, Any]]) -> bool:
    return "bytes_per_key" in benches[0]["extra_info"]


def is_http(benches: list[dict[str, Any]]) -> bool:
    return "rate_per_s" in benches[0]["extra_info"]


def throughput_rows(group: str, benches: list[dict[str, Any]]) -> list[str]:
    base_rate = items_per_s(baseline_of(benches))
    return [
        f"| {group} | `{bench['name']}` | {items_per_s(bench) / 1e6:.2f} M "
        f"| {items_per_s(bench) / base_rate:.1f}x | {target_of(group, bench['name'])} |"
        for bench in sorted(benches, key=items_per_s)
    ]


def memory_rows(group: str, benches: list[dict[str, Any]]) -> list[str]:
    base_bytes = float(baseline_of(benches)["extra_info"]["bytes_per_key"])
    rows = []
    for bench in benches:
        info = bench["extra_info"]
        rows.append(
            f"| `{bench['name']}` | {info['items'] / 1e6:g} M | {info['bytes_per_key']:.1f} "
            f"| {info['rss_bytes_per_key']:.1f} | {base_bytes / info['bytes_per_key']:.1f}x "
            f"| {target_of(group, bench['name'])} |"
        )
    return rows


def http_rows(group: str, benches: list[dict[str, Any]]) -> list[str]:
    """Rate, latency, the ratio to the group's baseline (if it has one) and the cores kept busy by
    the server, the load generator and the rest of the machine (which should be near zero)."""
    baseline = next((b for b in benches if b["extra_info"].get("baseline")), None)
    base_rate = baseline["extra_info"]["rate_per_s"] if baseline else None
    rows = []
    for bench in benches:
        info = bench["extra_info"]
        ratio = f"{info['rate_per_s'] / base_rate:.0%}" if base_rate else ""
        rows.append(
            f"| {group} | `{bench['name']}` | {info['rate_per_s'] / 1e3:.1f} k {info['unit']} "
            f"| {info['p50_ms']:.1f} ms | {info['p99_ms']:.1f} ms | {ratio} "
            f"| {info['server_cores']:.2f} / {info['generator_cores']:.2f} "
            f"/ {info['rest_cores']:.2f} "
            f"| {target_of(group, bench['name'])} |"
        )
    return rows


THROUGHPUT_HEADER = (
    "| group | implementation | items/s | vs Python | target |",
    "|---|---|---:|---:|---|",
)
MEMORY_HEADER = (
    "| memory | keys | bytes/key | RSS growth/key | dict bytes / these | target |",
    "|---|---:|---:|---:|---:|---|",
)
HTTP_HEADER = (
    "| http | implementation | rate | p50 | p99 | vs bare aiohttp | cores: server / load / rest "
    "| target |",
    "|---|---|---:|---:|---:|---:|---:|---|",
)


def table(header: tuple[str, str], rows: list[str]) -> list[str]:
    """A blank line, then the table; nothing when no suite of this kind ran."""
    return ["", *header, *rows] if rows else []


def render(report: dict[str, Any]) -> str:
    machine = report["machine_info"]
    throughput: list[str] = []
    memory: list[str] = []
    http: list[str] = []
    for group, benches in by_group(report).items():
        if is_memory(benches):
            memory.extend(memory_rows(group, benches))
        elif is_http(benches):
            http.extend(http_rows(group, benches))
        else:
            throughput.extend(throughput_rows(group, benches))
    heading = (
        f"Machine: {machine['cpu']['brand_raw']}, {machine['cpu']['count']} cores, "
        f"Python {machine['python_version']}; median of each benchmark."
    )
    return "\n".join(
        [
            heading,
            *table(THROUGHPUT_HEADER, throughput),
            *table(MEMORY_HEADER, memory),
            *table(HTTP_HEADER, http),
        ]
    )


def merged(paths: list[str]) -> dict[str, Any]:
    reports = [json.loads(Path(path).read_text()) for path in paths]
    benchmarks = [bench for report in reports for bench in report["benchmarks"]]
    return {"machine_info": reports[0]["machine_info"], "benchmarks": benchmarks}


def main(paths: list[str]) -> None:
    print(render(merged(paths)))


if __name__ == "__main__":
    main(sys.argv[1:])
