"""The ``instapay`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from instapay import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instapay", description="instapay payment engine")
    parser.add_argument("--version", action="version", version=f"instapay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the HTTP payment server")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "serve":
        # The engine and its HTTP front arrive with issues #4 and #5; say so rather than pretend.
        print("instapay serve: not yet — the HTTP server is not built yet.", file=sys.stderr)
        return 1
    return 0
