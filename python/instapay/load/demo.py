"""`make demo`: the embedded default server in a process of its own, 15 s of open-loop load at a
rate this machine sustains, the summary and the plot, then a clean stop (SIGTERM: drain,
snapshot, exit 0).

    python -m instapay.load.demo [--rate 2000/s] [--duration 15s] [--port 8081]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

from instapay.cli import port_argument, serve_command
from instapay.demo import DEMO_PAYERS, DemoMerchant
from instapay.load import Plan, Target, run
from instapay.load.options import duration_s, rate_per_s

STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def start_server(data_dir: Path, port: int, admin_token: str) -> subprocess.Popen[str]:
    """`instapay serve` on the embedded default, once it answers."""
    server = subprocess.Popen(  # noqa: S603 (this interpreter and our own entry point)
        serve_command(data_dir, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "INSTAPAY_ADMIN_TOKEN": admin_token},
    )
    if server.stdout is None:
        raise RuntimeError("the server's output is not readable")
    deadline_s = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline_s:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited with {server.wait()} before serving")
        print(line, end="")
        if line.startswith("instapay serving on"):
            return server
    server.kill()
    raise RuntimeError("the server did not start in time")


def stop_server(server: subprocess.Popen[str]) -> int:
    server.send_signal(signal.SIGTERM)
    status = server.wait(timeout=STOP_TIMEOUT_S)
    if server.stdout is not None:
        server.stdout.close()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instapay.load.demo")
    parser.add_argument("--rate", type=rate_per_s, default=2000.0)
    parser.add_argument("--duration", type=duration_s, default=15.0)
    parser.add_argument("--port", type=port_argument, default=8081)
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo-load"))
    parser.add_argument("--plot", type=Path, default=Path("demo-load.png"))
    parser.add_argument("--report", type=Path, default=Path("demo-load.json"))
    arguments = parser.parse_args(argv)
    admin_token = secrets.token_urlsafe(16)
    server = start_server(arguments.data_dir, arguments.port, admin_token)
    try:
        demo = DemoMerchant.load_or_create(arguments.data_dir)
        target = Target(
            f"http://127.0.0.1:{arguments.port}",
            demo.merchant_id,
            demo.kid,
            demo.secret,
            demo.currency,
            admin_token,
        )
        plan = Plan(
            target,
            "open",
            rate_per_s=arguments.rate,
            duration_s=arguments.duration,
            warmup_s=1.0,
            payers=DEMO_PAYERS,
        )
        status = run(plan, report_path=arguments.report, plot_path=arguments.plot)
    finally:
        server_status = stop_server(server)
    print(f"plot: {arguments.plot}, report: {arguments.report}; server stopped ({server_status})")
    return status or server_status


if __name__ == "__main__":
    raise SystemExit(main())
