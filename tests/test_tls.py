"""`instapay serve --tls-cert FILE --tls-key FILE` (issue 12, section 7): HTTPS on loopback with
a self-signed certificate made by the `openssl` command, a payment made with the SDK over it,
and files that cannot be used refused in one line before anything is created."""

import asyncio
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from attack import connect, head, read_response, serve_limited, wait_until_closed
from instapay.cli import serve_command
from instapay.client import Client
from instapay.demo import DemoMerchant
from servers import free_port, start


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM, unencrypted), valid for a day."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(  # noqa: S603 (a fixed command line)
        [  # noqa: S607 (openssl from PATH, as an operator would run it)
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_a_payment_over_https_with_the_sdk(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    data = tmp_path / "data"
    server = start(data, port, "--tls-cert", str(cert), "--tls-key", str(key))
    demo = DemoMerchant.load_or_create(data)
    trusted = ssl.create_default_context(cafile=cert)

    async def pay() -> dict[str, object]:
        base_url = f"https://127.0.0.1:{port}"
        async with Client(
            base_url, demo.merchant_id, demo.kid, demo.secret, ssl_context=trusted
        ) as client:
            return await client.create_payment(
                order_id="tls-1", payer=demo.payer(0), amount=1999, currency=demo.currency
            )

    payment = asyncio.run(pay())
    assert payment["status"] == "succeeded"
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection(("127.0.0.1", port)) as plain,
    ):
        ssl.create_default_context().wrap_socket(plain, server_hostname="127.0.0.1")
    assert server.stop()[0] == 0


def test_unusable_tls_files_are_refused_in_one_line(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other_cert, _ = self_signed(tmp_path / "other")
    cases = [
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (
            ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)],
            "missing.pem: no such file",
        ),
        (["--tls-cert", str(key), "--tls-key", str(key)], "not a usable certificate and key"),
        (
            ["--tls-cert", str(other_cert), "--tls-key", str(key)],
            "not a usable certificate and key",
        ),
    ]
    for number, (flags, message) in enumerate(cases):
        data = tmp_path / f"data-{number}"
        finished = subprocess.run(  # noqa: S603 (this interpreter and our entry point)
            serve_command(data, free_port(), *flags),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert finished.returncode == 2
        [line] = finished.stderr.splitlines()
        assert message in line
        assert not data.exists(), "nothing is created"


def test_over_https_connections_beyond_the_cap_get_the_503_inside_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    server = serve_limited(
        tmp_path, port, peer_connections_max=2, tls_cert=str(cert), tls_key=str(key)
    )
    trusted = ssl.create_default_context(cafile=cert)
    held = [
        trusted.wrap_socket(connect(port, "127.0.0.2"), server_hostname="127.0.0.1")
        for _ in range(2)
    ]
    assert https_healthz(port, cert, "127.0.0.2") == 503
    assert https_healthz(port, cert, "127.0.0.3") == 200, "another client is served"
    for sock in held:
        sock.close()
    assert server.stop()[0] == 0


def test_a_handshake_that_never_starts_is_cut_off_at_the_idle_timeout(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    server = serve_limited(tmp_path, port, idle_timeout_s=2.0, tls_cert=str(cert), tls_key=str(key))
    silent = [connect(port, "127.0.0.2") for _ in range(20)]
    assert https_healthz(port, cert) == 200
    assert not wait_until_closed(silent)
    for sock in silent:
        sock.close()
    assert server.stop()[0] == 0


def test_connections_in_their_tls_handshake_count_against_the_caps(tmp_path: Path) -> None:
    """Strangers that open TLS connections and never send a hello hold slots like any other:
    the caps hold, others are served, the sockets beyond a cap are closed within seconds, and a
    handshake abandoned or failed gives its slot back."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    server = serve_limited(
        tmp_path,
        port,
        connections_max=20,
        peer_connections_max=10,
        tls_cert=str(cert),
        tls_key=str(key),
    )
    abandoned = [connect(port, "127.0.0.2") for _ in range(10)]
    assert https_healthz(port, cert, "127.0.0.2") == 503, "the peer cap holds"
    beyond = [connect(port, "127.0.0.2") for _ in range(30)]
    assert https_healthz(port, cert, "127.0.0.3") == 200, "another client is served"
    failing = [connect(port, "127.0.0.4") for _ in range(10)]
    assert https_healthz(port, cert, "127.0.0.5") == 503, "the server cap holds"
    assert not wait_until_closed(beyond), "those beyond the cap are closed"
    for sock in abandoned:
        sock.close()  # before a hello
    assert https_healthz_once_freed(port, cert, "127.0.0.2") == 200, "abandoned: given back"
    for sock in failing:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")  # not a hello: the handshake fails
    assert not wait_until_closed(failing)
    assert https_healthz(port, cert, "127.0.0.5") == 200, "failed: given back"
    for sock in failing + beyond:
        sock.close()
    assert server.stop()[0] == 0


def https_healthz_once_freed(port: int, cert: Path, source: str) -> int:
    """/healthz once the server has seen connections close (503 until then)."""
    for _ in range(100):
        status = https_healthz(port, cert, source)
        if status != 503:
            return status
        time.sleep(0.1)
    return 503


def https_healthz(port: int, cert: Path, source: str = "127.0.0.3") -> int:
    trusted = ssl.create_default_context(cafile=cert)
    with trusted.wrap_socket(connect(port, source), server_hostname="127.0.0.1") as tls:
        tls.sendall(head("GET", "/healthz", {"Connection": "close"}))
        return read_response(tls)[0]
