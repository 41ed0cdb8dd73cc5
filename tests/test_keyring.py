"""KeyRing: batch signing and verification against Python's hmac, statuses, limits, threads."""

import hmac
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instapay import _core

KIDS = ["merchant-a.2026", "merchant-b.2026", "merchant-c.2025"]
SECRETS = {kid: f"secret-of-{kid}".encode() * 3 for kid in KIDS}


def python_mac(kid: str, message: bytes) -> bytes:
    return hmac.digest(SECRETS[kid], message, "sha256")


@pytest.fixture
def ring() -> _core.KeyRing:
    ring = _core.KeyRing()
    for kid, secret in SECRETS.items():
        ring.insert(kid, secret)
    return ring


requests = st.lists(st.tuples(st.sampled_from(KIDS), st.binary(max_size=600)), max_size=40)


@given(secret=st.binary(min_size=1, max_size=200), message=st.binary(max_size=4096))
def test_sign_batch_agrees_with_stdlib_hmac_for_any_key(secret: bytes, message: bytes) -> None:
    ring = _core.KeyRing()
    ring.insert("k", secret)
    assert ring.sign_batch(["k"], [message]) == [hmac.digest(secret, message, "sha256")]


@given(batch=requests)
def test_mixed_kid_batches_answer_like_single_calls(batch: list[tuple[str, bytes]]) -> None:
    ring = _core.KeyRing()
    for kid, secret in SECRETS.items():
        ring.insert(kid, secret)
    kids = [kid for kid, _ in batch]
    messages = [message for _, message in batch]
    macs = ring.sign_batch(kids, messages)
    assert macs == [python_mac(kid, message) for kid, message in batch]
    assert macs == [ring.sign_batch([kid], [message])[0] for kid, message in batch]
    assert ring.verify_batch(kids, messages, macs) == [_core.VERIFY_VALID] * len(batch)
    hex_macs = [mac.hex() for mac in macs]
    assert ring.verify_batch_hex(kids, messages, hex_macs) == [_core.VERIFY_VALID] * len(batch)


@given(message=st.binary(min_size=1, max_size=300), data=st.data())
def test_tampering_with_any_byte_of_message_or_mac_is_a_mismatch(
    message: bytes, data: st.DataObject
) -> None:
    ring = _core.KeyRing()
    ring.insert("k", b"secret")
    [mac] = ring.sign_batch(["k"], [message])
    at = data.draw(st.integers(0, len(message) - 1), label="message byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    forged_message = message[:at] + bytes([message[at] ^ flip]) + message[at + 1 :]
    mac_at = data.draw(st.integers(0, 31), label="mac byte")
    forged_mac = mac[:mac_at] + bytes([mac[mac_at] ^ flip]) + mac[mac_at + 1 :]
    assert ring.verify_batch(["k", "k"], [forged_message, message], [mac, forged_mac]) == [
        _core.VERIFY_MISMATCH,
        _core.VERIFY_MISMATCH,
    ]
    assert ring.verify_batch_hex(["k"], [message], [forged_mac.hex()]) == [_core.VERIFY_MISMATCH]


def test_verify_batch_reports_each_status(ring: _core.KeyRing) -> None:
    kid = KIDS[0]
    mac = python_mac(kid, b"body")
    statuses = ring.verify_batch(
        [kid, kid, "unknown-kid", kid, kid],
        [b"body", b"other body", b"body", b"body", b"body"],
        [mac, mac, mac, mac[:31], mac + b"\x00"],
    )
    assert statuses == [
        _core.VERIFY_VALID,
        _core.VERIFY_MISMATCH,
        _core.VERIFY_UNKNOWN_KID,
        _core.VERIFY_WRONG_LENGTH,
        _core.VERIFY_WRONG_LENGTH,
    ]
    assert statuses == [0, 1, 2, 3, 3]


def test_verify_batch_hex_reports_each_status(ring: _core.KeyRing) -> None:
    kid = KIDS[0]
    mac = python_mac(kid, b"body").hex()
    statuses = ring.verify_batch_hex(
        [kid, kid, kid, "unknown-kid", kid, kid, kid, kid],
        [b"body"] * 8,
        [mac, mac.upper(), "0" * 64, mac, mac[:62], mac[:63], "g" * 64, "é" * 64],
    )
    assert statuses == [0, 0, 1, 2, 3, 4, 4, 4]


def test_an_unknown_kid_is_reported_before_a_malformed_mac(ring: _core.KeyRing) -> None:
    assert ring.verify_batch_hex(["unknown-kid"], [b"body"], ["not hex"]) == [
        _core.VERIFY_UNKNOWN_KID
    ]


def test_a_kid_that_is_not_even_utf8_is_unknown_and_spoils_nothing(ring: _core.KeyRing) -> None:
    kid = KIDS[0]
    mac = python_mac(kid, b"body")
    statuses = ring.verify_batch(["\udcff", kid], [b"body", b"body"], [mac, mac])
    assert statuses == [_core.VERIFY_UNKNOWN_KID, _core.VERIFY_VALID]


def test_empty_messages_are_signed_and_verified(ring: _core.KeyRing) -> None:
    kid = KIDS[1]
    assert ring.sign_batch([kid], [b""]) == [python_mac(kid, b"")]
    assert ring.verify_batch([kid], [b""], [python_mac(kid, b"")]) == [0]


def test_empty_batches_give_empty_results(ring: _core.KeyRing) -> None:
    assert ring.sign_batch([], []) == []
    assert ring.verify_batch([], [], []) == []
    assert ring.verify_batch_hex([], [], []) == []


def test_a_batch_large_enough_to_run_in_parallel_gives_the_same_answers(
    ring: _core.KeyRing,
) -> None:
    kids = [KIDS[i % 3] for i in range(3000)]
    messages = [i.to_bytes(4, "big") * 64 for i in range(3000)]
    macs = ring.sign_batch(kids, messages)
    assert macs == [python_mac(kid, message) for kid, message in zip(kids, messages, strict=True)]
    macs[1234] = bytes(32)
    expected = [_core.VERIFY_VALID] * 3000
    expected[1234] = _core.VERIFY_MISMATCH
    assert ring.verify_batch(kids, messages, macs) == expected


def test_verify_batch_from_four_threads_at_once(ring: _core.KeyRing) -> None:
    kids = [KIDS[i % 3] for i in range(2000)]
    messages = [bytes([i % 251]) * 300 for i in range(2000)]
    macs = ring.sign_batch(kids, messages)
    forged = [bytes(32) if i % 7 == 0 else mac for i, mac in enumerate(macs)]
    expected = [_core.VERIFY_MISMATCH if i % 7 == 0 else _core.VERIFY_VALID for i in range(2000)]
    results: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def verify() -> None:
        try:
            start.wait()
            results.extend(ring.verify_batch(kids, messages, forged) for _ in range(20))
        except BaseException as error:  # reported below, never swallowed
            errors.append(error)

    threads = [threading.Thread(target=verify) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 80
    assert all(result == expected for result in results)


def test_rotating_keys_while_other_threads_verify_never_breaks_a_batch(
    ring: _core.KeyRing,
) -> None:
    kid = KIDS[0]
    messages = [bytes([i % 251]) * 200 for i in range(3000)]
    macs = [python_mac(kid, message) for message in messages]
    stop = threading.Event()

    def rotate() -> None:
        for round_number in range(2000):
            ring.insert(f"rotating-{round_number % 5}", b"fresh secret")
            ring.remove(f"rotating-{(round_number + 3) % 5}")
        stop.set()

    rotator = threading.Thread(target=rotate)
    rotator.start()
    verified = 0
    while not stop.is_set() or verified == 0:
        assert ring.verify_batch([kid] * 3000, messages, macs) == [0] * 3000
        verified += 1
    rotator.join()


def test_insert_replace_remove_contains_len(ring: _core.KeyRing) -> None:
    assert len(ring) == 3
    assert KIDS[0] in ring
    assert "nope" not in ring
    assert 42 not in ring
    ring.insert(KIDS[0], b"replacement")
    assert len(ring) == 3
    assert ring.sign_batch([KIDS[0]], [b"m"]) == [hmac.digest(b"replacement", b"m", "sha256")]
    assert ring.remove(KIDS[0]) is True
    assert ring.remove(KIDS[0]) is False
    assert KIDS[0] not in ring
    assert ring.kids() == sorted(KIDS[1:])


def test_secrets_never_show_in_repr_or_errors(ring: _core.KeyRing) -> None:
    text = repr(ring)
    assert text == "<KeyRing with 3 keys>"
    with pytest.raises(KeyError) as raised:
        ring.sign_batch([KIDS[0], "missing"], [b"a", b"b"])
    for secret in SECRETS.values():
        assert secret.decode() not in text
        assert secret.decode() not in str(raised.value)


def test_sign_batch_names_the_unknown_kid_and_its_index(ring: _core.KeyRing) -> None:
    with pytest.raises(KeyError, match='unknown key id "missing" at index 1'):
        ring.sign_batch([KIDS[0], "missing"], [b"a", b"b"])


@pytest.mark.parametrize(
    ("kid", "problem"),
    [
        ("", "must be 1 to 255 characters long"),
        ("k" * 256, "must be 1 to 255 characters long"),
        ("has space", "must be printable ASCII without spaces"),
        ("clé", "must be printable ASCII without spaces"),
        ("new\nline", "must be printable ASCII without spaces"),
    ],
)
def test_invalid_kids_are_refused(kid: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"invalid key id: {problem}"):
        _core.KeyRing().insert(kid, b"secret")


def test_the_longest_kid_is_accepted() -> None:
    ring = _core.KeyRing()
    ring.insert("k" * _core.KID_LEN_MAX, b"secret")
    assert "k" * 255 in ring


@pytest.mark.parametrize(
    ("secret", "problem"),
    [(b"", "must not be empty"), (b"x" * 1025, "must be at most 1024 bytes")],
)
def test_invalid_secrets_are_refused(secret: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=f"invalid secret: {problem}"):
        _core.KeyRing().insert("k", secret)


def test_a_secret_longer_than_a_block_is_hashed_first() -> None:
    ring = _core.KeyRing()
    secret = bytes(range(200))
    ring.insert("k", secret)
    assert ring.sign_batch(["k"], [b"m"]) == [hmac.digest(secret, b"m", "sha256")]


def test_the_ring_is_bounded() -> None:
    ring = _core.KeyRing()
    for number in range(_core.KEYS_MAX):
        ring.insert(f"k{number}", b"s")
    with pytest.raises(ValueError, match=r"key ring is full \(65536 keys\)"):
        ring.insert("one-more", b"s")
    ring.insert("k0", b"replacing an existing kid still works")
    assert len(ring) == _core.KEYS_MAX


def test_lists_of_unequal_length_are_a_value_error(ring: _core.KeyRing) -> None:
    with pytest.raises(ValueError, match=r"kids, messages and macs must have the same length"):
        ring.verify_batch([KIDS[0]], [b"a", b"b"], [bytes(32)])
    with pytest.raises(ValueError, match=r"kids and messages must have the same length"):
        ring.sign_batch([KIDS[0], KIDS[0]], [b"a"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((KIDS[0], [b"a"], [bytes(32)]), "kids must be a sequence of str, not str"),
        (([7], [b"a"], [bytes(32)]), r"kids\[0\] must be str, not int"),
        (([KIDS[0]], ["a"], [bytes(32)]), r"messages\[0\] must be bytes, not str"),
        (([KIDS[0]], [b"a"], [bytes(32).hex()]), r"macs\[0\] must be bytes, not str"),
        (([KIDS[0]], [b"a"], None), "macs must be a sequence of MACs, not NoneType"),
    ],
)
def test_wrong_argument_types_are_a_type_error_that_names_the_argument(
    ring: _core.KeyRing, arguments: tuple[object, object, object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        ring.verify_batch(*arguments)  # type: ignore[arg-type]


def test_hex_macs_must_be_str(ring: _core.KeyRing) -> None:
    with pytest.raises(TypeError, match=r"macs\[0\] must be str, not bytes"):
        ring.verify_batch_hex([KIDS[0]], [b"a"], [bytes(64)])  # type: ignore[list-item]


def test_a_batch_over_the_limit_is_refused_before_any_work(ring: _core.KeyRing) -> None:
    too_many = _core.BATCH_LEN_MAX + 1
    with pytest.raises(ValueError, match="over the limit"):
        ring.sign_batch([KIDS[0]] * too_many, [b""] * too_many)


def test_verify_requests_takes_one_idempotency_key_or_none_per_request(
    ring: _core.KeyRing,
) -> None:
    with pytest.raises(ValueError, match=r"idempotency_keys and bodies must have the same length"):
        ring.verify_requests([None], ["POST"], ["/v1/payments"], [], [b""], 0, 300)
    with pytest.raises(TypeError, match=r"idempotency_keys\[0\] must be str, not bytes"):
        ring.verify_requests([None], ["POST"], ["/"], [b"k"], [b""], 0, 300)  # type: ignore[list-item]
    [missing] = ring.verify_requests([None], ["POST"], ["/v1/payments"], ["k"], [b""], 0, 300)
    assert missing == (_core.PROBLEM_MISSING, "")
