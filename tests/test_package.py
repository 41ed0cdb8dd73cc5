"""The package as users install it: version, typed marker, command line."""

import subprocess
import sys
from importlib import resources

import instapay
from instapay import _core


def test_native_and_python_versions_agree() -> None:
    assert instapay.__version__ == _core.__version__


def test_package_ships_its_type_information() -> None:
    package = resources.files("instapay")
    assert package.joinpath("py.typed").is_file()
    assert package.joinpath("_core.pyi").is_file()


def test_the_instapay_command_reports_its_version() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from instapay.cli import main; raise SystemExit(main())",
            "--version",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0
    assert completed.stdout.strip() == f"instapay {instapay.__version__}"
