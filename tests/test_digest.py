"""SHA-256 and HMAC-SHA256 of the native core against the standards and Python's stdlib."""

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instapay import _core

# Lengths around the SHA-256 padding boundaries: 55 bytes is the longest message whose padding
# fits in its last block, 64 is one whole block.
BOUNDARY_LENGTHS = [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129]

FIPS_180_4_VECTORS = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    (
        b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopq"
        b"klmnopqrlmnopqrsmnopqrstnopqrstu",
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
    ),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
]

_LONG_KEY = b"\xaa" * 131
# RFC 4231 section 4, test cases 1 to 7; case 5 is compared on its 128-bit truncation.
RFC_4231_VECTORS = [
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    (b"\x0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
    (
        _LONG_KEY,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        _LONG_KEY,
        b"This is a test using a larger than block-size key and a larger than block-size data. "
        b"The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]

messages = st.one_of(
    st.binary(max_size=4096),
    st.sampled_from(BOUNDARY_LENGTHS).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)


@pytest.mark.parametrize(("message", "expected"), FIPS_180_4_VECTORS)
def test_sha256_matches_fips_180_4(message: bytes, expected: str) -> None:
    assert _core.sha256(message).hex() == expected


@pytest.mark.parametrize(("key", "message", "expected"), RFC_4231_VECTORS)
def test_hmac_sha256_matches_rfc_4231(key: bytes, message: bytes, expected: str) -> None:
    assert _core.hmac_sha256(key, message).hex()[: len(expected)] == expected


@given(message=messages)
def test_sha256_agrees_with_hashlib(message: bytes) -> None:
    assert _core.sha256(message) == hashlib.sha256(message).digest()


@given(key=st.binary(max_size=200), message=messages)
def test_hmac_sha256_agrees_with_stdlib_hmac(key: bytes, message: bytes) -> None:
    assert _core.hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


@given(items=st.lists(messages, max_size=64))
def test_sha256_batch_equals_one_call_per_item(items: list[bytes]) -> None:
    assert _core.sha256_batch(items) == [hashlib.sha256(item).digest() for item in items]


def test_sha256_batch_large_enough_to_run_in_parallel_keeps_order() -> None:
    items = [i.to_bytes(4, "big") * 300 for i in range(4000)]
    assert _core.sha256_batch(items) == [hashlib.sha256(item).digest() for item in items]


def test_sha256_batch_accepts_tuples_and_bytearrays() -> None:
    assert _core.sha256_batch((b"a", bytearray(b"b"))) == [
        hashlib.sha256(b"a").digest(),
        hashlib.sha256(b"b").digest(),
    ]


def test_sha256_of_a_message_large_enough_to_release_the_gil() -> None:
    message = bytes(range(256)) * 4096
    assert _core.sha256(message) == hashlib.sha256(message).digest()


def test_sha256_batch_rejects_a_bare_bytes_object() -> None:
    with pytest.raises(TypeError, match="items must be a sequence of bytes, not bytes"):
        _core.sha256_batch(b"abc")  # type: ignore[arg-type]


def test_sha256_batch_names_the_item_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"items\[1\] must be bytes, not str"):
        _core.sha256_batch([b"ok", "text"])  # type: ignore[list-item]


def test_sha256_rejects_text() -> None:
    with pytest.raises(TypeError):
        _core.sha256("text")  # type: ignore[arg-type]


def test_parallelism_can_be_capped_and_restored() -> None:
    available = _core.parallelism()
    try:
        _core.set_parallelism(1)
        assert _core.parallelism() == 1
        assert (
            _core.sha256_batch([b"x" * 1000] * 2000)[1999] == hashlib.sha256(b"x" * 1000).digest()
        )
    finally:
        _core.set_parallelism(available)


@pytest.mark.parametrize("threads", [0, 10_000])
def test_parallelism_outside_the_available_cores_is_a_value_error(threads: int) -> None:
    with pytest.raises(ValueError, match="parallelism must be between 1 and"):
        _core.set_parallelism(threads)


def test_parallelism_is_never_negative() -> None:
    with pytest.raises(OverflowError):
        _core.set_parallelism(-1)
