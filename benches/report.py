"""Turns a pytest-benchmark JSON file into the README's table: items/s and same-run ratios.

Usage: python benches/report.py .benchmarks/latest.json
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
}


def items_per_s(bench: dict[str, Any]) -> float:
    return float(bench["extra_info"]["items"]) / float(bench["stats"]["median"])


def target_of(group: str, name: str) -> str:
    return next(
        (t for (prefix, n), t in TARGETS.items() if group.startswith(prefix) and n == name), ""
    )


def render(report: dict[str, Any]) -> str:
    machine = report["machine_info"]
    lines = [
        f"Machine: {machine['cpu']['brand_raw']}, {machine['cpu']['count']} cores, "
        f"Python {machine['python_version']}; median of each benchmark.",
        "",
        "| group | implementation | items/s | vs Python | target |",
        "|---|---|---:|---:|---|",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"], []).append(bench)
    for group, benches in groups.items():
        baseline = next(b for b in benches if b["extra_info"].get("baseline"))
        base_rate = items_per_s(baseline)
        for bench in sorted(benches, key=items_per_s):
            rate = items_per_s(bench)
            lines.append(
                f"| {group} | `{bench['name']}` | {rate / 1e6:.2f} M | {rate / base_rate:.1f}x "
                f"| {target_of(group, bench['name'])} |"
            )
    return "\n".join(lines)


def main(path: str) -> None:
    print(render(json.loads(Path(path).read_text())))


if __name__ == "__main__":
    main(*sys.argv[1:])
