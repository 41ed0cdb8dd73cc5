"""The ``instapay`` command."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import ssl
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson

from instapay import __version__, config
from instapay.ascii_digits import argument_int
from instapay.demo import DEMO_BALANCE, DEMO_FILE, DEMO_PAYERS, DemoMerchant
from instapay.engine import Engine, records
from instapay.engine.records import redacted
from instapay.http import ServerSettings, server
from instapay.http.tls import TlsError, TlsFiles, tls_files
from instapay.load import options as load_options
from instapay.storage import datadir, snapshots, wal
from instapay.storage.datadir import DataDirectoryInUseError
from instapay.storage.history import export, history_path
from instapay.storage.history.reads import HistoryUnavailableError

ADMIN_TOKEN_ENV = "INSTAPAY_ADMIN_TOKEN"  # noqa: S105 (the name of a variable, not a token)
# What can stop the engine from starting on a data directory (the lock, damage, the disk, a log
# the configuration no longer fits): one line for the operator, no traceback.
STARTUP_FAILURES = (DataDirectoryInUseError, wal.WalCorruptError, OSError, ValueError)
# `wal dump | head`: the reader went away; the exit status of a tool that stops writing there.
EXIT_BROKEN_PIPE = 1


def port_argument(text: str) -> int:
    """`--port`: a TCP port in ASCII digits."""
    port = argument_int(text)
    if port not in config.PORTS:
        raise argparse.ArgumentTypeError(
            f"{port} is not a port from {config.PORTS.start} to {config.PORTS.stop - 1}"
        )
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instapay", description="instapay payment engine")
    parser.add_argument("--version", action="version", version=f"instapay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the HTTP payment server (no options: the demo in ./var)"
    )
    serve.add_argument("--config", type=Path, help="TOML file (see instapay.config)")
    serve.add_argument("--data-dir", type=Path, help="default: var, or the config's")
    serve.add_argument("--host", help="default: 127.0.0.1, or the config's")
    serve.add_argument("--port", type=port_argument, help="default: 8080, or the config's")
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate: HTTPS")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM key of --tls-cert")
    wal_parser = commands.add_parser("wal", help="inspect a data directory's write-ahead log")
    wal_commands = wal_parser.add_subparsers(dest="wal_command", required=True, metavar="ACTION")
    verify = wal_commands.add_parser("verify", help="check snapshots and log, change nothing")
    verify.add_argument("data_dir", type=Path)
    dump = wal_commands.add_parser("dump", help="print every record, one per line")
    dump.add_argument("data_dir", type=Path)
    add_history_parser(commands)
    load_options.add_parser(commands)
    return parser


def add_history_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = commands.add_parser("history", help="read a data directory's history database")
    actions = history.add_subparsers(dest="history_command", required=True, metavar="ACTION")
    exporting = actions.add_parser(
        "export",
        help="every payment and refund of a time window, for reconciliation (while serving too)",
    )
    exporting.add_argument("data_dir", type=Path)
    moment = "unix seconds or ISO 8601 (UTC unless it says otherwise)"
    exporting.add_argument("--since", required=True, help=f"from then on (inclusive): {moment}")
    exporting.add_argument("--until", required=True, help=f"before then (exclusive): {moment}")
    exporting.add_argument("--format", choices=export.FORMATS, default="csv")
    exporting.add_argument("--merchant", help="one merchant's rows only")
    exporting.add_argument("--output", type=Path, metavar="FILE", help="default: stdout (0600)")


def configured_settings(configured: config.ServeConfig, directory: Path) -> ServerSettings:
    """What `serve --config` runs: the file's engine, storage, limits and index settings."""
    return ServerSettings(
        directory,
        configured.engine,
        fsync=configured.fsync,
        admin_token=configured.admin_token,
        delivery=configured.delivery,
        limits=configured.limits,
        idempotency_capacity=configured.idempotency_capacity,
        history=configured.history,
        history_policy=configured.history_policy,
    )


def serve_configured(arguments: argparse.Namespace) -> int:
    """`serve --config FILE`: the configured merchants; flags override the file."""
    try:
        configured = config.load(arguments.config)
        tls = tls_context(arguments, configured.tls)
    except (config.ConfigError, TlsError) as error:
        print(f"instapay serve: {error}", file=sys.stderr)
        return 2
    directory = arguments.data_dir or configured.data_dir
    host = arguments.host or configured.host
    port = arguments.port or configured.port
    if problem := serving_problem(directory, host, port):
        return refuse_to_serve(problem)
    settings = configured_settings(configured, directory)

    def ready(base_url: str) -> None:
        print(f"instapay serving on {base_url}, data in {directory}", flush=True)

    return run_server(settings, host, port, ready, tls)


def tls_context(
    arguments: argparse.Namespace, configured: TlsFiles | None
) -> ssl.SSLContext | None:
    """HTTPS with the flags' files, else the configuration's; None for plain HTTP. `TlsError`
    for a file that cannot be used, before anything is created."""
    files = tls_files(arguments.tls_cert, arguments.tls_key) or configured
    return None if files is None else files.context()


def serve_demo(arguments: argparse.Namespace, directory: Path, host: str, port: int) -> int:
    """The embedded default: the demo merchant, its key and funded payers in `directory`."""
    try:
        tls = tls_context(arguments, None)
    except TlsError as error:
        print(f"instapay serve: {error}", file=sys.stderr)
        return 2
    if problem := serving_problem(directory, host, port):
        return refuse_to_serve(problem)
    try:
        demo = DemoMerchant.load_or_create(directory)
    except (OSError, ValueError, KeyError) as error:  # not a directory, not writable, damaged
        return refuse_to_serve(f"cannot keep the demo merchant in {directory}: {error}")

    async def fund(engine: Engine) -> None:
        await demo.set_up(engine, DEMO_PAYERS, DEMO_BALANCE)
        print(
            f"created {DEMO_PAYERS} demo payers with {DEMO_BALANCE} {demo.currency} (minor units)"
        )

    def ready(base_url: str) -> None:
        print(f"instapay serving on {base_url}, data in {directory}")
        secret_file = directory / DEMO_FILE
        print(f"demo merchant {demo.merchant_id!r}, key id {demo.kid!r}, secret in {secret_file}")
        print(f"try:\n{demo.example_curl(base_url)}", flush=True)

    admin_token = os.environ.get(ADMIN_TOKEN_ENV) or secrets.token_urlsafe(24)

    def ready_with_admin(base_url: str) -> None:
        ready(base_url)
        if ADMIN_TOKEN_ENV not in os.environ:
            print(f"admin token for this run (set {ADMIN_TOKEN_ENV} to choose one): {admin_token}")

    settings = ServerSettings(
        directory, demo.config(), on_first_start=fund, admin_token=admin_token
    )
    return run_server(settings, host, port, ready_with_admin, tls)


def serving_problem(directory: Path, host: str, port: int) -> str | None:
    """Why `serve` cannot start on `directory` and `host:port`, found before anything is
    created (the port case must not leave a new data directory behind); None if it can."""
    try:
        datadir.check_not_in_use(directory)
        check_port_free(host, port)
    except DataDirectoryInUseError as error:
        return str(error)
    except OSError as error:
        return cannot_listen(host, port, error)
    return None


def check_port_free(host: str, port: int) -> None:
    """Binds every address `host` stands for, as the server will, and lets go; OSError if one
    is taken (or `host` is not an address of this machine)."""
    for family, kind, protocol, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, protocol) as probe:
            # As asyncio's server does: a port whose last connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def cannot_listen(host: str, port: int, error: OSError) -> str:
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


def refuse_to_serve(problem: str) -> int:
    print(f"instapay serve: {problem}", file=sys.stderr)
    return 1


def run_server(
    settings: ServerSettings,
    host: str,
    port: int,
    on_ready: Callable[[str], None],
    tls: ssl.SSLContext | None,
) -> int:
    """`server.run`, with the failures an operator can fix as one line and exit status 1: the
    checks before start-up cannot rule out another process taking the port or the directory
    in between."""
    try:
        return server.run(settings, host, port, on_ready, tls)
    except OSError as error:
        return refuse_to_serve(cannot_listen(host, port, error))
    except RuntimeError as error:
        if isinstance(error.__cause__, STARTUP_FAILURES):
            return refuse_to_serve(f"the engine could not start: {error.__cause__}")
        raise


def data_dir_problem(directory: Path) -> str | None:
    """Why `directory` is not a data directory `wal verify` and `wal dump` can read, if so."""
    if not directory.exists():
        return f"{directory}: no such directory"
    if not directory.is_dir():
        return f"{directory}: not a directory"
    if not wal.segment_paths(directory / "wal") and not snapshots.snapshot_paths(directory):
        return f"{directory}: not a data directory (no log segments, no snapshots)"
    return None


def wal_action(action: str, report: Callable[[Path], int], directory: Path) -> int:
    """Runs a `wal` action's report on a data directory: 2 if it is none, and a quiet stop when
    the reader of its output goes away (`wal dump | head`)."""
    if problem := data_dir_problem(directory):
        print(f"instapay wal {action}: {problem}", file=sys.stderr)
        return 2
    return to_stdout(lambda: report(directory))


def to_stdout(report: Callable[[], int]) -> int:
    """Runs a report that prints; a quiet stop when the reader of stdout goes away (`| head`)."""
    try:
        status = report()
        sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # Nothing more reaches the reader; nor may the flush at exit raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


def verify_data_dir(directory: Path) -> int:
    """Prints what a recovery of `directory` would find; 0 if it would succeed, 1 if not."""
    valid_lsns = []
    for lsn, path in snapshots.snapshot_paths(directory):
        try:
            size = len(snapshots.read_snapshot(path, lsn))
        except (OSError, ValueError) as error:
            print(f"{path.name}: DAMAGED ({error}); recovery falls back to an older snapshot")
            continue
        valid_lsns.append(lsn)
        print(f"{path.name}: ok, LSN {lsn}, {size} bytes")
    lsn_reached = snapshots.newest_snapshot_lsn(directory)
    try:
        for scan in wal.scan_log(directory, min(valid_lsns, default=0), lsn_reached):
            last = scan.lsn_next - 1
            print(
                f"{scan.path.name}: ok, {len(scan.records)} records, LSN {scan.first_lsn}..{last}"
            )
            if scan.torn_at is not None:
                print(f"{scan.path.name}: torn tail at byte offset {scan.torn_at}, cut off on open")
    except wal.WalCorruptError as error:
        print(f"CORRUPT: {error}")
        return 1
    return 0


def dump_data_dir(directory: Path) -> int:
    """Prints the records the log holds (from its oldest segment), one per line, fields by
    name, secrets redacted."""
    segments = wal.segment_paths(directory / "wal")
    lsn_after = segments[0][0] - 1 if segments else 0
    try:
        for scan in wal.scan_log(directory, lsn_after, snapshots.newest_snapshot_lsn(directory)):
            for record in scan.records:
                kind, fields = records.decode(record.type, record.payload)
                print(f"{record.lsn} {kind.name} {orjson.dumps(redacted(fields)).decode()}")
    except wal.WalCorruptError as error:
        print(f"CORRUPT: {error}")
        return 1
    return 0


def export_window(arguments: argparse.Namespace) -> export.ExportWindow:
    """The window `history export` asked for; ValueError saying what is wrong with it."""
    since_s = export.unix_seconds(arguments.since)
    until_s = export.unix_seconds(arguments.until)
    if since_s >= until_s:
        raise ValueError(f"--since ({arguments.since}) must be before --until ({arguments.until})")
    return export.ExportWindow(since_s, until_s, arguments.merchant)


def export_history(arguments: argparse.Namespace) -> int:
    """`history export`: 2 for a bad window or no database; the rows to --output or stdout."""
    try:
        window = export_window(arguments)
        rows = export.export_rows(history_path(arguments.data_dir), window)
    except (ValueError, HistoryUnavailableError) as error:
        print(f"instapay history export: {error}", file=sys.stderr)
        return 2
    return to_stdout(lambda: write_rows(arguments.format, rows, arguments.output))


def write_rows(form: str, rows: Iterator[export.ExportRow], output: Path | None) -> int:
    """Writes the rows as `form` to `output` (created owner-only) or stdout; 0."""
    if output is None:
        if form == "csv":
            export.write_csv(rows, sys.stdout)
        else:
            export.write_ndjson(rows, sys.stdout.buffer)
        return 0
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # a file that was there keeps its mode otherwise
    if form == "csv":
        with open(descriptor, "w", newline="", encoding="utf-8") as text:
            export.write_csv(rows, text)
    else:
        with open(descriptor, "wb") as binary:
            export.write_ndjson(rows, binary)
    return 0


def serve_command(directory: Path, port: int, *arguments: str) -> list[str]:
    """The command that runs `instapay serve` with this interpreter (tests, `make demo`)."""
    return [
        sys.executable,
        "-c",
        "from instapay.cli import main; raise SystemExit(main())",
        "serve",
        "--data-dir",
        str(directory),
        "--port",
        str(port),
        *arguments,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "serve" and arguments.config is not None:
        return serve_configured(arguments)
    if arguments.command == "serve":
        directory = arguments.data_dir or Path("var")
        return serve_demo(
            arguments, directory, arguments.host or "127.0.0.1", arguments.port or 8080
        )
    if arguments.command == "load":
        return load_options.main(arguments)
    if arguments.command == "history":
        return export_history(arguments)
    if arguments.wal_command == "verify":
        return wal_action("verify", verify_data_dir, arguments.data_dir)
    return wal_action("dump", dump_data_dir, arguments.data_dir)
