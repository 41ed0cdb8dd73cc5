"""Native batch hashing, signing and verification against the Python loops they replace.

Every group measures the native call and its Python baseline in the same run; `benches/report.py`
turns the JSON into BENCHMARKS.md (messages/s and the ratio to the baseline).
"""

import hashlib
import hmac

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benches.conftest import random_messages, threads
from instapay import _core

BATCH_LEN = 1024
MESSAGE_LEN = 256
KID = "bench-merchant.k1"
SECRET = b"bench secret of thirty-two bytes"

MESSAGES = random_messages(BATCH_LEN, MESSAGE_LEN)
KIDS = [KID] * BATCH_LEN
RING = _core.KeyRing()
RING.insert(KID, SECRET)
MACS = RING.sign_batch(KIDS, MESSAGES)
HEX_MACS = [mac.hex() for mac in MACS]
ALL_VALID = [_core.VERIFY_VALID] * BATCH_LEN
VERIFY_GROUP = f"verify {BATCH_LEN} x {MESSAGE_LEN} B"
VERIFY_HEX_GROUP = f"verify hex {BATCH_LEN} x {MESSAGE_LEN} B"
SIGN_GROUP = f"sign {BATCH_LEN} x {MESSAGE_LEN} B"
SHA256_GROUP = f"sha256 {BATCH_LEN} x {MESSAGE_LEN} B"


def measure(benchmark: BenchmarkFixture, run: object, *, baseline: bool = False) -> object:
    benchmark.extra_info.update(items=BATCH_LEN, unit="messages/s", baseline=baseline)
    assert callable(run)
    return benchmark(run)


def python_verify() -> list[int]:
    return [
        _core.VERIFY_VALID
        if hmac.compare_digest(hmac.digest(SECRET, message, "sha256"), mac)
        else _core.VERIFY_MISMATCH
        for message, mac in zip(MESSAGES, MACS, strict=True)
    ]


def python_verify_hex() -> list[int]:
    return [
        _core.VERIFY_VALID
        if hmac.compare_digest(hmac.digest(SECRET, message, "sha256"), bytes.fromhex(mac))
        else _core.VERIFY_MISMATCH
        for message, mac in zip(MESSAGES, HEX_MACS, strict=True)
    ]


@pytest.mark.benchmark(group=VERIFY_GROUP)
def test_python_hmac_loop(benchmark: BenchmarkFixture) -> None:
    assert measure(benchmark, python_verify, baseline=True) == ALL_VALID


@pytest.mark.benchmark(group=VERIFY_HEX_GROUP)
def test_python_hmac_loop_hex(benchmark: BenchmarkFixture) -> None:
    assert measure(benchmark, python_verify_hex, baseline=True) == ALL_VALID


@pytest.mark.benchmark(group=VERIFY_GROUP)
@pytest.mark.parametrize("thread_count", [1, 2], ids=["1 thread", "2 threads"])
def test_verify_batch(benchmark: BenchmarkFixture, thread_count: int) -> None:
    with threads(thread_count):
        result = measure(benchmark, lambda: RING.verify_batch(KIDS, MESSAGES, MACS))
    assert result == ALL_VALID


@pytest.mark.benchmark(group=VERIFY_HEX_GROUP)
@pytest.mark.parametrize("thread_count", [1, 2], ids=["1 thread", "2 threads"])
def test_verify_batch_hex(benchmark: BenchmarkFixture, thread_count: int) -> None:
    with threads(thread_count):
        result = measure(benchmark, lambda: RING.verify_batch_hex(KIDS, MESSAGES, HEX_MACS))
    assert result == ALL_VALID


@pytest.mark.benchmark(group=SIGN_GROUP)
def test_python_hmac_sign_loop(benchmark: BenchmarkFixture) -> None:
    run = lambda: [hmac.digest(SECRET, message, "sha256") for message in MESSAGES]  # noqa: E731
    assert measure(benchmark, run, baseline=True) == MACS


@pytest.mark.benchmark(group=SIGN_GROUP)
@pytest.mark.parametrize("thread_count", [1, 2], ids=["1 thread", "2 threads"])
def test_sign_batch(benchmark: BenchmarkFixture, thread_count: int) -> None:
    with threads(thread_count):
        assert measure(benchmark, lambda: RING.sign_batch(KIDS, MESSAGES)) == MACS


@pytest.mark.benchmark(group=SHA256_GROUP)
def test_hashlib_loop(benchmark: BenchmarkFixture) -> None:
    run = lambda: [hashlib.sha256(message).digest() for message in MESSAGES]  # noqa: E731
    measure(benchmark, run, baseline=True)


@pytest.mark.benchmark(group=SHA256_GROUP)
@pytest.mark.parametrize("thread_count", [1, 2], ids=["1 thread", "2 threads"])
def test_sha256_batch(benchmark: BenchmarkFixture, thread_count: int) -> None:
    expected = [hashlib.sha256(message).digest() for message in MESSAGES]
    with threads(thread_count):
        assert measure(benchmark, lambda: _core.sha256_batch(MESSAGES)) == expected
