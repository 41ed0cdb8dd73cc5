"""`make run PORT=...` starts the demo server on that port (issue 12, section 7)."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_run_commands(*variables: str) -> list[str]:
    """What `make run` would run (`make -n` prints the commands, runs none)."""
    finished = subprocess.run(  # noqa: S603 (a fixed command line)
        ["make", "--no-print-directory", "-n", "run", *variables],  # noqa: S607 (make from PATH)
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return finished.stdout.splitlines()


def test_make_run_passes_the_port_through() -> None:
    assert make_run_commands("PORT=9123")[-1].endswith("instapay serve --port 9123")
    assert make_run_commands()[-1].endswith("instapay serve --port 8080")
