"""Instapay-Signature headers: the documented formulas, parsing, tolerance, rotation, errors."""

import hashlib
import hmac
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instapay import _core, signing
from instapay.signing import (
    IdempotencyKeyUnsignedError,
    MalformedSignatureError,
    SignatureMismatchError,
    SignedRequest,
    StaleSignatureError,
    UnknownKeyError,
)

NOW_S = 1_790_000_000
KID = "demo-merchant.k1"
SECRET = b"whsec_demo_0123456789abcdef0123456789"
BODY = b'{"merchant_id":"m1","order_id":"o1","payer":"p1","amount":1999,"currency":"EUR"}'


@pytest.fixture
def ring() -> _core.KeyRing:
    ring = _core.KeyRing()
    ring.insert(KID, SECRET)
    return ring


def signed_post(
    body: bytes = BODY,
    timestamp_s: int = NOW_S,
    path: str = "/v1/payments",
    idempotency_key: str | None = None,
) -> SignedRequest:
    header = signing.sign_request(
        kid=KID,
        secret=SECRET,
        method="POST",
        path=path,
        body=body,
        timestamp_s=timestamp_s,
        idempotency_key=idempotency_key,
    )
    return SignedRequest(header, "POST", path, body, idempotency_key)


def v1_post(idempotency_key: str | None = None) -> SignedRequest:
    """A request as clients signed it before v2: the MAC covers no Idempotency-Key."""
    mac = hmac.new(SECRET, f"{NOW_S}\nPOST\n/v1/payments\n".encode() + BODY, hashlib.sha256)
    header = f"t={NOW_S},kid={KID},v1={mac.hexdigest()}"
    return SignedRequest(header, "POST", "/v1/payments", BODY, idempotency_key)


@pytest.mark.parametrize(("key", "key_line"), [("order-1-try-2", "order-1-try-2"), (None, "")])
def test_request_signature_follows_the_documented_v2_formula(
    key: str | None, key_line: str
) -> None:
    header = signed_post(idempotency_key=key).header
    message = f"v2\n{NOW_S}\nPOST\n/v1/payments\n{key_line}\n".encode() + BODY
    expected = hmac.new(SECRET, message, hashlib.sha256)
    assert header == f"t={NOW_S},kid={KID},v2={expected.hexdigest()}"


def test_a_v1_request_without_an_idempotency_key_still_verifies(ring: _core.KeyRing) -> None:
    assert signing.verify_request(ring, v1_post(), now_s=NOW_S) == KID


def test_a_v1_request_with_an_idempotency_key_is_refused_as_unsigned(ring: _core.KeyRing) -> None:
    """The replay attack: a captured v1 payment re-sent under fresh keys would pay each time."""
    for fresh_key in ("replay-1", "replay-2"):
        with pytest.raises(IdempotencyKeyUnsignedError, match="sign it with v2") as raised:
            signing.verify_request(ring, v1_post(fresh_key), now_s=NOW_S)
        assert raised.value.code == "idempotency_key_unsigned"


@pytest.mark.parametrize(
    ("signed_key", "sent_key"),
    [("attempt-1", "attempt-2"), ("attempt-1", None), (None, "attempt-1")],
    ids=["swapped", "removed", "added"],
)
def test_a_v2_signature_covers_the_idempotency_key(
    ring: _core.KeyRing, signed_key: str | None, sent_key: str | None
) -> None:
    request = signed_post(idempotency_key=signed_key)
    assert signing.verify_request(ring, request, now_s=NOW_S) == KID
    resent = SignedRequest(request.header, "POST", request.path, BODY, sent_key)
    with pytest.raises(SignatureMismatchError):
        signing.verify_request(ring, resent, now_s=NOW_S)


def test_a_request_carrying_a_v1_and_a_v2_is_malformed(ring: _core.KeyRing) -> None:
    v1, v2 = v1_post().header, signed_post().header
    assert v1 is not None
    assert v2 is not None
    both = f"{v2},{v1.rpartition(',')[2]}"
    with pytest.raises(MalformedSignatureError, match="a v1 or a v2, not both"):
        signing.verify_request(ring, SignedRequest(both, "POST", "/v1/payments", BODY), now_s=NOW_S)
    with pytest.raises(MalformedSignatureError, match="a v1 or a v2, not both"):
        signing.parse_request_header(both)


def test_a_request_header_parses_to_its_scheme() -> None:
    v1, v2 = v1_post().header, signed_post().header
    assert signing.parse_request_header(v1).scheme == "v1"
    assert signing.parse_request_header(v2).scheme == "v2"


def test_payload_signature_follows_stripes_formula() -> None:
    header = signing.sign_payload([SECRET], BODY, NOW_S)
    expected = hmac.new(SECRET, f"{NOW_S}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW_S},v1={expected}"


def test_a_signed_request_verifies_to_its_kid(ring: _core.KeyRing) -> None:
    assert signing.verify_request(ring, signed_post(), now_s=NOW_S) == KID


@given(body=st.binary(max_size=2000), skew_s=st.integers(-300, 300))
def test_any_body_signed_within_tolerance_verifies(body: bytes, skew_s: int) -> None:
    ring = _core.KeyRing()
    ring.insert(KID, SECRET)
    request = signed_post(body=body, timestamp_s=NOW_S + skew_s)
    assert signing.verify_request(ring, request, now_s=NOW_S) == KID


@pytest.mark.parametrize("skew_s", [-301, 301, -10_000])
def test_timestamps_more_than_300_s_away_are_stale(ring: _core.KeyRing, skew_s: int) -> None:
    with pytest.raises(StaleSignatureError, match=r"tolerance 300 s") as raised:
        signing.verify_request(ring, signed_post(timestamp_s=NOW_S + skew_s), now_s=NOW_S)
    assert raised.value.code == "signature_expired"


def test_the_query_string_is_signed(ring: _core.KeyRing) -> None:
    request = signed_post(path="/v1/payments?order_id=o1")
    tampered = SignedRequest(request.header, "POST", "/v1/payments?order_id=o2", request.body)
    assert signing.verify_request(ring, request, now_s=NOW_S) == KID
    with pytest.raises(SignatureMismatchError):
        signing.verify_request(ring, tampered, now_s=NOW_S)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: SignedRequest(r.header, r.method, r.path, r.body + b" "),
        lambda r: SignedRequest(r.header, "PUT", r.path, r.body),
        lambda r: SignedRequest(r.header, r.method, "/v1/payments/batch", r.body),
        lambda r: SignedRequest(
            r.header.replace(f"t={NOW_S}", f"t={NOW_S + 1}"), r.method, r.path, r.body
        ),
    ],
    ids=["body", "method", "path", "timestamp"],
)
def test_changing_anything_signed_is_a_mismatch(ring: _core.KeyRing, tamper) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SignatureMismatchError, match="does not match") as raised:
        signing.verify_request(ring, tamper(signed_post()), now_s=NOW_S)
    assert raised.value.code == "signature_mismatch"


def test_an_unknown_kid_is_named(ring: _core.KeyRing) -> None:
    request = signed_post()
    assert request.header is not None
    renamed = SignedRequest(request.header.replace(KID, "retired-key"), "POST", request.path, BODY)
    with pytest.raises(UnknownKeyError, match="unknown key id 'retired-key'"):
        signing.verify_request(ring, renamed, now_s=NOW_S)


def test_old_and_new_kid_are_valid_side_by_side_during_rotation(ring: _core.KeyRing) -> None:
    ring.insert("demo-merchant.k2", b"the next secret, 32 bytes or more")
    old = signed_post()
    new_header = signing.sign_request(
        kid="demo-merchant.k2",
        secret=b"the next secret, 32 bytes or more",
        method="POST",
        path="/v1/payments",
        body=BODY,
        timestamp_s=NOW_S,
    )
    new = SignedRequest(new_header, "POST", "/v1/payments", BODY)
    assert signing.verify_requests(ring, [old, new], now_s=NOW_S) == [KID, "demo-merchant.k2"]


def test_one_bad_request_in_a_batch_spoils_nothing_else(ring: _core.KeyRing) -> None:
    good = signed_post()
    results = signing.verify_requests(
        ring,
        [good, SignedRequest(None, "POST", "/v1/payments", BODY), good, signed_post(timestamp_s=0)],
        now_s=NOW_S,
    )
    assert results[0] == KID
    assert isinstance(results[1], MalformedSignatureError)
    assert results[2] == KID
    assert isinstance(results[3], StaleSignatureError)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "the header is missing"),
        ("", "'' is not a name=value pair"),
        (f"t={NOW_S},kid={KID}", "expected a v2 or 1 to 8 v1 signatures, got 0 v1"),
        (f"t={NOW_S},kid={KID},v2={'0' * 64},v2={'0' * 64}", "'v2' appears more than once"),
        (f"t={NOW_S},kid={KID},v2={'0' * 62}", "must be 64 hex characters"),
        (f"kid={KID},v1={'0' * 64}", "the timestamp 't' is missing"),
        (f"t={NOW_S},v1={'0' * 64}", "the key id 'kid' is missing"),
        (f"t=+{NOW_S},kid={KID},v1={'0' * 64}", "must be 1 to 12 decimal digits"),
        (f"t=1_000,kid={KID},v1={'0' * 64}", "must be 1 to 12 decimal digits"),
        (f"t={NOW_S}0000,kid={KID},v1={'0' * 64}", "must be 1 to 12 decimal digits"),
        (f"t={NOW_S},t={NOW_S},kid={KID},v1={'0' * 64}", "'t' appears more than once"),
        (f"t={NOW_S},kid={KID},kid=x,v1={'0' * 64}", "'kid' appears more than once"),
        (f"t={NOW_S},kid={KID},v1={'0' * 64},v1={'1' * 64}", "exactly one v1 signature, got 2"),
        (f"t={NOW_S},kid={KID},sig={'0' * 64}", "unknown field 'sig'"),
        (f"t={NOW_S},kid={KID},v1=", "is not a name=value pair"),
        (f"t={NOW_S},kid={KID},v1={'0' * 63}", "must be hexadecimal"),
        (f"t={NOW_S},kid={KID},v1={'0' * 62}", "must be 64 hex characters"),
        (f"t={NOW_S},kid={KID},v1={'x' * 64}", "must be hexadecimal"),
        ("t=1," + "x" * 2000, "over 1024"),
    ],
)
def test_malformed_request_headers_say_what_is_wrong(
    ring: _core.KeyRing, header: str | None, problem: str
) -> None:
    request = SignedRequest(header, "POST", "/v1/payments", BODY)
    with pytest.raises(MalformedSignatureError, match=f"Instapay-Signature: .*{problem}") as raised:
        signing.verify_request(ring, request, now_s=NOW_S)
    assert raised.value.code == "signature_malformed"


def test_other_signature_schemes_are_skipped(ring: _core.KeyRing) -> None:
    request = signed_post()
    with_v0 = SignedRequest(f"{request.header},v0=abc", "POST", "/v1/payments", BODY)
    assert signing.verify_request(ring, with_v0, now_s=NOW_S) == KID


def test_spaces_around_fields_are_tolerated(ring: _core.KeyRing) -> None:
    request = signed_post()
    assert request.header is not None
    spaced = SignedRequest(request.header.replace(",", ", "), "POST", "/v1/payments", BODY)
    assert signing.verify_request(ring, spaced, now_s=NOW_S) == KID


def test_a_payload_verifies_against_any_live_secret_during_rotation() -> None:
    new_secret = b"whsec_next_secret_after_rotation_000"
    header = signing.sign_payload([SECRET, new_secret], BODY, NOW_S)
    assert signing.verify_payload(BODY, header, [SECRET], now_s=NOW_S) == NOW_S
    assert signing.verify_payload(BODY, header, [new_secret], now_s=NOW_S) == NOW_S
    with pytest.raises(SignatureMismatchError, match="no v1 signature matches the body"):
        signing.verify_payload(BODY, header, [b"some other secret"], now_s=NOW_S)


def test_a_tampered_payload_is_a_mismatch() -> None:
    header = signing.sign_payload([SECRET], BODY, NOW_S)
    with pytest.raises(SignatureMismatchError):
        signing.verify_payload(BODY + b"\n", header, [SECRET], now_s=NOW_S)


def test_a_stale_payload_is_refused() -> None:
    header = signing.sign_payload([SECRET], BODY, NOW_S - 301)
    with pytest.raises(StaleSignatureError, match="301 s behind the server clock"):
        signing.verify_payload(BODY, header, [SECRET], now_s=NOW_S)


def test_payload_verification_defaults_to_the_local_clock() -> None:
    now_s = int(time.time())
    header = signing.sign_payload([SECRET], BODY, now_s)
    assert signing.verify_payload(BODY, header, [SECRET]) == now_s


def test_a_payload_header_with_a_kid_is_malformed() -> None:
    header = f"t={NOW_S},kid={KID},v1={'0' * 64}"
    with pytest.raises(MalformedSignatureError, match="has no 'kid'"):
        signing.verify_payload(BODY, header, [SECRET], now_s=NOW_S)


def test_a_payload_is_verified_by_its_v1_and_a_v2_is_skipped() -> None:
    v1 = signing.sign_payload([SECRET], BODY, NOW_S)
    assert signing.verify_payload(BODY, f"{v1},v2={'0' * 64}", [SECRET], now_s=NOW_S) == NOW_S
    with pytest.raises(MalformedSignatureError, match="carries at least one v1"):
        signing.verify_payload(BODY, f"t={NOW_S},v2={'0' * 64}", [SECRET], now_s=NOW_S)


def test_a_payload_header_with_non_ascii_v1_is_a_mismatch_not_a_crash() -> None:
    header = f"t={NOW_S},v1={'é' * 64}"
    with pytest.raises(SignatureMismatchError):
        signing.verify_payload(BODY, header, [SECRET], now_s=NOW_S)


@pytest.mark.parametrize(
    ("method", "path", "problem"),
    [
        ("post", "/v1/payments", "method must be upper-case letters"),
        ("POST", "v1/payments", "path must start with '/'"),
        ("POST", "/v1/pay ments", "path must start with '/'"),
        ("POST", "/v1/payments\n", "path must start with '/'"),
    ],
)
def test_signing_refuses_targets_no_server_would_see(method: str, path: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        signing.sign_request(
            kid=KID, secret=SECRET, method=method, path=path, body=BODY, timestamp_s=NOW_S
        )


@pytest.mark.parametrize("key", ["", "with space", "line\nbreak", "clé"])
def test_signing_refuses_keys_no_server_would_see(key: str) -> None:
    with pytest.raises(ValueError, match="idempotency_key must be printable ASCII"):
        signed_post(idempotency_key=key)


@pytest.mark.parametrize("timestamp_s", [-1, 10**12])
def test_signing_refuses_timestamps_the_header_cannot_carry(timestamp_s: int) -> None:
    with pytest.raises(ValueError, match="timestamp_s must be"):
        signing.sign_payload([SECRET], BODY, timestamp_s)


@pytest.mark.parametrize("count", [0, 9])
def test_payloads_are_signed_with_one_to_eight_secrets(count: int) -> None:
    with pytest.raises(ValueError, match="sign with 1 to 8 secrets"):
        signing.sign_payload([SECRET] * count, BODY, NOW_S)


@given(
    header=st.text(max_size=300)
    | st.builds(lambda s: f"t={NOW_S},kid={KID},v1={s}", st.text())
    | st.builds(lambda s: f"t={NOW_S},kid={KID},v2={s}", st.text()),
    key=st.none() | st.text(max_size=20),
)
def test_any_header_is_refused_or_accepted_never_crashes(header: str, key: str | None) -> None:
    ring = _core.KeyRing()
    ring.insert(KID, SECRET)
    [verdict] = signing.verify_requests(
        ring, [SignedRequest(header, "POST", "/v1/payments", BODY, key)], now_s=NOW_S
    )
    assert isinstance(verdict, signing.SignatureError)
