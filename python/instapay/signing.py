"""The ``Instapay-Signature`` header: build it, parse it, verify it.

The header carries these schemes:

* Requests from merchants carry ``t=<unix seconds>,kid=<key id>,v2=<hex>`` with
  ``v2 = HMAC-SHA256(secret, "v2\\n<t>\\n<METHOD>\\n<path>\\n<Idempotency-Key>\\n" + body)``,
  the key line empty when the request sends no ``Idempotency-Key``. The path is the request
  target as sent, query string included, so a signed ``GET`` cannot be replayed with another
  query, and a captured request cannot be replayed under a fresh key. Keys rotate by kid: the
  old and the new kid are valid side by side.
* ``v1 = HMAC-SHA256(secret, "<t>\\n<METHOD>\\n<path>\\n" + body)`` in place of ``v2``, the first
  scheme, stays valid for requests without an ``Idempotency-Key`` only: it does not cover one,
  so a v1 request that sends a key is refused (``idempotency_key_unsigned``). A request carries
  one MAC, a v1 or a v2.
* Responses and webhooks from instapay carry ``t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` with
  ``v1 = HMAC-SHA256(secret, "<t>." + body)``: Stripe's scheme, so existing verifiers work.
  While a secret rotates, the sender signs with each live secret and any one v1 may match.

Every problem raises a ``SignatureError`` subclass whose ``code`` the HTTP layer puts in its
error body and whose message says what is wrong. MACs are compared in constant time.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

from instapay import _core

# The headers a signature covers, defined in instapay.protocol and named here too (`X as X`:
# an explicit re-export) for the callers that sign and verify.
from instapay.protocol import IDEMPOTENCY_HEADER as IDEMPOTENCY_HEADER  # noqa: PLC0414
from instapay.protocol import SIGNATURE_HEADER as SIGNATURE_HEADER  # noqa: PLC0414

TOLERANCE_S_DEFAULT: Final = 300
HEADER_LEN_MAX: Final = 1024
V1_COUNT_MAX: Final = 8
TIMESTAMP_DIGITS_MAX: Final = 12

_METHOD_PATTERN: Final = re.compile(r"[A-Z]+")


class SignatureError(ValueError):
    """The signature of a request, response or webhook is not acceptable."""

    code: ClassVar[str] = "signature_invalid"


class MalformedSignatureError(SignatureError):
    code = "signature_malformed"


class StaleSignatureError(SignatureError):
    """The signed timestamp is too far from the clock: a replay, or a badly skewed clock."""

    code = "signature_expired"


class UnknownKeyError(SignatureError):
    code = "unknown_key"


class SignatureMismatchError(SignatureError):
    code = "signature_mismatch"


class IdempotencyKeyUnsignedError(SignatureError):
    """A v1 signature with an ``Idempotency-Key``: the key could have been swapped in transit."""

    code = "idempotency_key_unsigned"


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    timestamp_s: int
    kid: str | None
    v1: tuple[str, ...]
    """The hex MACs as sent, checked by the verifier, not the parser."""
    v2: str | None = None
    """A request's v2 MAC, as sent."""


@dataclass(frozen=True, slots=True)
class RequestSignature:
    """A parsed request header: one kid, one hex MAC and its scheme (``"v1"`` or ``"v2"``)."""

    timestamp_s: int
    kid: str
    scheme: Literal["v1", "v2"]
    mac: str


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a request signature covers, with the header and the ``Idempotency-Key`` as received
    (None when absent)."""

    header: str | None
    method: str
    path: str
    body: bytes
    idempotency_key: str | None = None


def request_message(timestamp_s: int, method: str, path: str, body: bytes) -> bytes:
    """The bytes a v1 request signature covers (no ``Idempotency-Key``)."""
    return f"{timestamp_s}\n{method}\n{path}\n".encode("utf-8", "surrogateescape") + body


def request_message_v2(
    timestamp_s: int, method: str, path: str, idempotency_key: str | None, body: bytes
) -> bytes:
    """The bytes a v2 request signature covers: the key line is empty when none is sent."""
    lines = f"v2\n{timestamp_s}\n{method}\n{path}\n{idempotency_key or ''}\n"
    return lines.encode("utf-8", "surrogateescape") + body


def payload_message(timestamp_s: int, body: bytes) -> bytes:
    """The bytes a response or webhook signature covers."""
    return f"{timestamp_s}.".encode() + body


def sign_request(
    *,
    kid: str,
    secret: bytes,
    method: str,
    path: str,
    body: bytes,
    timestamp_s: int,
    idempotency_key: str | None = None,
) -> str:
    """The v2 header value for a merchant request that sends ``idempotency_key`` (or none);
    ValueError for a target or key no server would see."""
    _check_timestamp_value(timestamp_s)
    if not _METHOD_PATTERN.fullmatch(method):
        raise ValueError(f"method must be upper-case letters, not {method!r}")
    if not path.startswith("/") or not _is_printable_ascii(path):
        raise ValueError(
            f"path must start with '/' and be printable ASCII without spaces: {path!r}"
        )
    if idempotency_key is not None and not _is_printable_ascii(idempotency_key):
        raise ValueError(
            f"idempotency_key must be printable ASCII without spaces: {idempotency_key!r}"
        )
    message = request_message_v2(timestamp_s, method, path, idempotency_key, body)
    return f"t={timestamp_s},kid={kid},v2={_core.hmac_sha256(secret, message).hex()}"


def sign_payload(secrets: Sequence[bytes], body: bytes, timestamp_s: int) -> str:
    """The header value for a response or webhook: one v1 per live secret (rotation)."""
    _check_timestamp_value(timestamp_s)
    if not 1 <= len(secrets) <= V1_COUNT_MAX:
        raise ValueError(f"sign with 1 to {V1_COUNT_MAX} secrets, not {len(secrets)}")
    return _core.payload_signature(secrets, timestamp_s, body)


def parse_header(header: str) -> SignatureHeader:
    """Reads ``t``, an optional ``kid`` and the v1 values; strict about everything else.

    The parser is native (rust/signature.rs), shared with the engine's batch verification.
    """
    problem, detail, timestamp_s, kid, v1, v2 = _core.parse_signature_header(header)
    if problem != _core.PROBLEM_NONE:
        raise _problem_error(problem, detail)
    return SignatureHeader(timestamp_s=timestamp_s, kid=kid, v1=tuple(v1), v2=v2)


def parse_request_header(header: str | None) -> RequestSignature:
    """A request header: exactly one kid and one MAC, a v1 or a v2."""
    if header is None:
        raise _malformed("the header is missing")
    parsed = parse_header(header)
    if parsed.kid is None:
        raise _malformed("the key id 'kid' is missing")
    if parsed.v2 is not None and parsed.v1:
        raise _problem_error(_core.PROBLEM_TWO_SCHEMES, "")
    if parsed.v2 is not None:
        return RequestSignature(parsed.timestamp_s, parsed.kid, "v2", parsed.v2)
    if len(parsed.v1) != 1:
        raise _problem_error(_core.PROBLEM_REQUEST_V1_COUNT, str(len(parsed.v1)))
    return RequestSignature(parsed.timestamp_s, parsed.kid, "v1", parsed.v1[0])


def parse_payload_header(header: str | None) -> SignatureHeader:
    """A response or webhook header: no kid, one v1 per live secret. A v2 is skipped, as other
    schemes are (it is a request scheme), so a later payload scheme cannot break this verifier."""
    if header is None:
        raise _malformed("the header is missing")
    parsed = parse_header(header)
    if parsed.kid is not None:
        raise _malformed("a response or webhook signature has no 'kid'")
    if not parsed.v1:
        raise _malformed("a response or webhook signature carries at least one v1")
    return parsed


def check_timestamp(timestamp_s: int, now_s: int, tolerance_s: int = TOLERANCE_S_DEFAULT) -> None:
    """Rejects timestamps more than ``tolerance_s`` away from ``now_s``, past or future."""
    skew_s = timestamp_s - now_s
    if abs(skew_s) > tolerance_s:
        direction = "ahead of" if skew_s > 0 else "behind"
        raise StaleSignatureError(
            f"timestamp {timestamp_s} is {abs(skew_s)} s {direction} the server clock "
            f"(tolerance {tolerance_s} s)"
        )


def verify_requests(
    ring: _core.KeyRing,
    requests: Sequence[SignedRequest],
    *,
    now_s: int,
    tolerance_s: int = TOLERANCE_S_DEFAULT,
) -> list[str | SignatureError]:
    """Per request, the authenticated kid or why the request is refused.

    Headers are parsed and all MACs checked in one native call; one bad request never affects
    the others.
    """
    verdicts = ring.verify_requests(
        [request.header for request in requests],
        [request.method for request in requests],
        [request.path for request in requests],
        [request.idempotency_key for request in requests],
        [request.body for request in requests],
        now_s,
        tolerance_s,
    )
    return [
        verdict if isinstance(verdict, str) else _problem_error(*verdict, now_s, tolerance_s)
        for verdict in verdicts
    ]


def verify_request(
    ring: _core.KeyRing,
    request: SignedRequest,
    *,
    now_s: int,
    tolerance_s: int = TOLERANCE_S_DEFAULT,
) -> str:
    """The authenticated kid of one request; raises the ``SignatureError`` that refuses it."""
    [result] = verify_requests(ring, [request], now_s=now_s, tolerance_s=tolerance_s)
    if isinstance(result, SignatureError):
        raise result
    return result


def verify_payload(
    body: bytes,
    header: str | None,
    secrets: Sequence[bytes],
    *,
    now_s: int | None = None,
    tolerance_s: int = TOLERANCE_S_DEFAULT,
) -> int:
    """Checks a response or webhook signature against the live secrets; returns its timestamp.

    ``now_s`` defaults to the local clock.
    """
    parsed = parse_payload_header(header)
    check_timestamp(parsed.timestamp_s, int(time.time()) if now_s is None else now_s, tolerance_s)
    message = payload_message(parsed.timestamp_s, body)
    expected = [_core.hmac_sha256(secret, message).hex().encode() for secret in secrets]
    # Every pair is compared, so the time taken does not depend on which one matched.
    matches = [
        hmac.compare_digest(want, given.encode("utf-8", "surrogatepass"))
        for want in expected
        for given in parsed.v1
    ]
    if not any(matches):
        raise SignatureMismatchError("no v1 signature matches the body")
    return parsed.timestamp_s


# Malformed-header messages by native problem code; `{}` is the problem's detail.
_MALFORMED_FORMATS: Final = {
    _core.PROBLEM_MISSING: "the header is missing",
    _core.PROBLEM_TOO_LONG: f"header is {{}} characters long, over {HEADER_LEN_MAX}",
    _core.PROBLEM_NOT_PAIR: "{!r} is not a name=value pair",
    _core.PROBLEM_DUPLICATE: "{!r} appears more than once",
    _core.PROBLEM_UNKNOWN_FIELD: "unknown field {!r}",
    _core.PROBLEM_NO_TIMESTAMP: "the timestamp 't' is missing",
    _core.PROBLEM_BAD_TIMESTAMP: (
        f"the timestamp 't' must be 1 to {TIMESTAMP_DIGITS_MAX} decimal digits"
    ),
    _core.PROBLEM_V1_COUNT: f"expected a v2 or 1 to {V1_COUNT_MAX} v1 signatures, got {{}} v1",
    _core.PROBLEM_NO_KID: "the key id 'kid' is missing",
    _core.PROBLEM_REQUEST_V1_COUNT: "a request carries exactly one v1 signature, got {}",
    _core.PROBLEM_WRONG_LENGTH: "a signature must be 64 hex characters",
    _core.PROBLEM_NOT_HEX: "a signature must be hexadecimal",
    _core.PROBLEM_TWO_SCHEMES: "a request carries one signature, a v1 or a v2, not both",
}


def _problem_error(
    problem: int, detail: str, now_s: int = 0, tolerance_s: int = TOLERANCE_S_DEFAULT
) -> SignatureError:
    """The exception for a problem code of the native parser and verifier."""
    if problem == _core.PROBLEM_STALE:
        timestamp_s = int(detail)
        try:
            check_timestamp(timestamp_s, now_s, tolerance_s)
        except StaleSignatureError as stale:
            return stale
        raise ValueError(f"timestamp {timestamp_s} was reported stale but is not")
    if problem == _core.PROBLEM_UNKNOWN_KID:
        return UnknownKeyError(f"unknown key id {detail!r}")
    if problem == _core.PROBLEM_MISMATCH:
        return SignatureMismatchError("the signature does not match the request")
    if problem == _core.PROBLEM_KEY_UNSIGNED:
        return IdempotencyKeyUnsignedError(
            "the request sends an Idempotency-Key, which a v1 signature does not cover: "
            "sign it with v2"
        )
    if problem not in _MALFORMED_FORMATS:
        raise ValueError(f"unknown signature problem {problem} ({detail!r})")
    return _malformed(_MALFORMED_FORMATS[problem].format(detail))


def _malformed(problem: str) -> MalformedSignatureError:
    return MalformedSignatureError(f"{SIGNATURE_HEADER}: {problem}")


def _is_printable_ascii(text: str) -> bool:
    """What an HTTP request line or header can carry unchanged: no spaces, no controls."""
    return bool(text) and text.isascii() and text.isprintable() and " " not in text


def _check_timestamp_value(timestamp_s: int) -> None:
    if not 0 <= timestamp_s < 10**TIMESTAMP_DIGITS_MAX:
        raise ValueError(
            f"timestamp_s must be 0 to {TIMESTAMP_DIGITS_MAX} digits, not {timestamp_s}"
        )
