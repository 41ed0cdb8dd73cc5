"""Numbers on the command line and in the configuration are ASCII digits and in range (issue 12,
section 6): `int()` reads `--port ٨٠٨٠` as 8080, and `--port 99999` served on 34463 (the port
modulo 65536) while announcing 99999."""

from pathlib import Path

import pytest

from instapay import cli, config
from instapay.load import demo


@pytest.mark.parametrize(
    ("port", "problem"),
    [
        ("٨٠٨٠", "'٨٠٨٠' is not a number in ASCII digits"),
        ("8080²", "is not a number in ASCII digits"),
        ("-5", "is not a number in ASCII digits"),
        ("99999", "99999 is not a port from 1 to 65535"),
        ("0", "0 is not a port from 1 to 65535"),
    ],
)
def test_serve_refuses_a_port_that_is_not_one(
    capsys: pytest.CaptureFixture[str], port: str, problem: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        cli.build_parser().parse_args(["serve", "--port", port])
    assert refused.value.code == 2
    assert problem in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--requests", "--concurrency", "--payers", "--batch", "--seed"])
def test_load_counts_are_ascii_digits(capsys: pytest.CaptureFixture[str], option: str) -> None:
    with pytest.raises(SystemExit) as refused:
        cli.build_parser().parse_args(["load", option, "٣"])
    assert refused.value.code == 2
    assert "'٣' is not a number in ASCII digits" in capsys.readouterr().err


def test_the_demo_load_refuses_a_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        demo.main(["--port", "70000"])
    assert "70000 is not a port from 1 to 65535" in capsys.readouterr().err


@pytest.mark.parametrize("port", [0, 65536, 99999])
def test_the_configuration_refuses_a_port_out_of_range(tmp_path: Path, port: int) -> None:
    path = tmp_path / "instapay.toml"
    merchant = '[[merchants]]\nid = "a"\nsettlement_account = "b"\n'
    merchant += f'keys = {{ k = {{ secret_hex = "{"00" * 16}" }} }}\n'
    path.write_text(f"[server]\nport = {port}\n{merchant}")
    with pytest.raises(config.ConfigError, match=r"server\.port must be from 1 to 65535"):
        config.load(path)
