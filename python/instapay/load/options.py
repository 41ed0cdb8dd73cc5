"""The `instapay load` command line: options, their units, and the defaults that point at
`make run`'s demo server."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from instapay.ascii_digits import argument_int
from instapay.demo import DEMO_FILE, DEMO_PAYERS, DemoMerchant
from instapay.load import run
from instapay.load.plan import Amounts, Plan, PlanError, Target

ADMIN_TOKEN_ENV = "INSTAPAY_ADMIN_TOKEN"  # noqa: S105 (the name of a variable, not a token)
DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_s(text: str) -> float:
    """`15s`, `500ms`, `2m`, `1h`, or a number of seconds."""
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)(ms|s|m|h)?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 15s, 500ms or 2m")
    return float(match[1]) * DURATION_UNITS_S[match[2] or "s"]


def rate_per_s(text: str) -> float:
    """`20000/s`, `20000`, or `1200/m`."""
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)(?:/(s|m))?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 20000/s")
    return float(match[1]) / (60.0 if match[2] == "m" else 1.0)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    load = commands.add_parser(
        "load",
        help="load-test an instapay server (defaults: the demo of `make run`)",
        description="Open loop (--rate, latency from each scheduled send) or closed loop "
        "(--concurrency); ends with an audit through the API; exit 1 if it finds anything.",
    )
    target = load.add_argument_group("target")
    target.add_argument("--url", default="http://127.0.0.1:8080")
    target.add_argument("--merchant", default=None, help="default: the demo's")
    target.add_argument("--kid", default=None, help="default: the demo's")
    target.add_argument("--secret-hex", default=None, help="default: the demo's, from --data-dir")
    target.add_argument("--data-dir", type=Path, default=Path("var"), help="where the demo is")
    target.add_argument("--currency", default="EUR")
    target.add_argument(
        "--admin-token",
        default=os.environ.get(ADMIN_TOKEN_ENV),
        help=f"default: ${ADMIN_TOKEN_ENV}",
    )
    traffic = load.add_mutually_exclusive_group()
    traffic.add_argument("--rate", type=rate_per_s, help="open loop: requests per second")
    traffic.add_argument(
        "--concurrency", type=argument_int, help="closed loop: in flight (default 64)"
    )
    load.add_argument("--duration", type=duration_s, default=10.0, help="default 10s")
    load.add_argument("--requests", type=argument_int, help="stop after this many instead")
    load.add_argument("--warmup", type=duration_s, default=0.0, help="not measured; default 0s")
    load.add_argument("--payers", type=argument_int, default=DEMO_PAYERS)
    load.add_argument(
        "--amounts",
        type=Amounts.parse,
        default=Amounts("fixed", 100),
        help="N, LOW-HIGH or lognormal:MEDIAN:SIGMA (minor units); default 100",
    )
    load.add_argument(
        "--replay-ratio",
        type=float,
        default=0.0,
        help="share of requests resent with their idempotency key",
    )
    load.add_argument(
        "--batch", type=argument_int, default=1, help="payments per request (NDJSON batch)"
    )
    load.add_argument("--workers", type=argument_int, default=1, help="generator processes")
    load.add_argument(
        "--in-flight-max",
        type=argument_int,
        default=20_000,
        help="open loop: requests in flight at most (a late one counts its wait)",
    )
    load.add_argument("--seed", type=argument_int, default=0)
    load.add_argument("--report", type=Path, help="write every figure and the histogram as JSON")
    load.add_argument("--plot", type=Path, help="write latency and throughput over time (PNG)")
    load.add_argument("--no-progress", action="store_true", help="no live progress bar")


def _target(arguments: argparse.Namespace) -> Target:
    merchant, kid, secret_hex = arguments.merchant, arguments.kid, arguments.secret_hex
    if secret_hex is None:
        demo_file = arguments.data_dir / DEMO_FILE
        if not demo_file.exists():
            raise PlanError(f"--secret-hex is needed: no demo merchant in {demo_file}")
        demo = DemoMerchant.load_or_create(arguments.data_dir)
        merchant, kid, secret_hex = merchant or demo.merchant_id, kid or demo.kid, demo.secret.hex()
    if merchant is None or kid is None:
        raise PlanError("--merchant and --kid go with --secret-hex")
    try:
        secret = bytes.fromhex(secret_hex)
    except ValueError as error:
        raise PlanError("--secret-hex is not hex") from error
    return Target(arguments.url, merchant, kid, secret, arguments.currency, arguments.admin_token)


def plan_of(arguments: argparse.Namespace) -> Plan:
    closed = arguments.rate is None
    return Plan(
        _target(arguments),
        "closed" if closed else "open",
        rate_per_s=arguments.rate or 0.0,
        concurrency=(arguments.concurrency or 64) if closed else 0,
        duration_s=arguments.duration,
        requests=arguments.requests,
        warmup_s=arguments.warmup,
        payers=arguments.payers,
        amounts=arguments.amounts,
        replay_ratio=arguments.replay_ratio,
        batch=arguments.batch,
        workers=arguments.workers,
        in_flight_max=arguments.in_flight_max,
        seed=arguments.seed,
    )


def main(arguments: argparse.Namespace) -> int:
    try:
        plan = plan_of(arguments)
    except PlanError as error:
        print(f"instapay load: {error}", file=sys.stderr)
        return 2
    return run(
        plan,
        show_progress=not arguments.no_progress,
        report_path=arguments.report,
        plot_path=arguments.plot,
    )
