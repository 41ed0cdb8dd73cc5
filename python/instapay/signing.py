"""The ``Instapay-Signature`` header: build it, parse it, verify it.

Two schemes share the header:

* Requests from merchants carry ``t=<unix seconds>,kid=<key id>,v1=<hex>`` with
  ``v1 = HMAC-SHA256(secret, "<t>\\n<METHOD>\\n<path>\\n" + body)``. The path is the request
  target as sent, query string included, so a signed ``GET`` cannot be replayed with another
  query. Keys rotate by kid: the old and the new kid are valid side by side.
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
from typing import ClassVar, Final

from instapay import _core

SIGNATURE_HEADER: Final = "Instapay-Signature"
TOLERANCE_S_DEFAULT: Final = 300
HEADER_LEN_MAX: Final = 1024
V1_COUNT_MAX: Final = 8
TIMESTAMP_DIGITS_MAX: Final = 12

_TIMESTAMP_PATTERN: Final = re.compile(rf"[0-9]{{1,{TIMESTAMP_DIGITS_MAX}}}")
# Signature schemes other than v1 (Stripe's test scheme v0, future ones) are skipped, so a sender
# may add a scheme before every verifier knows it.
_OTHER_SCHEME_PATTERN: Final = re.compile(r"v(?!1\Z)[0-9]+")
_METHOD_PATTERN: Final = re.compile(r"[A-Z]+")
_VERIFY_NAMES_BY_STATUS: Final = {
    _core.VERIFY_WRONG_LENGTH: "a v1 signature must be 64 hex characters",
    _core.VERIFY_NOT_HEX: "a v1 signature must be hexadecimal",
}


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


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    timestamp_s: int
    kid: str | None
    v1: tuple[str, ...]
    """The hex MACs as sent, checked by the verifier, not the parser."""


@dataclass(frozen=True, slots=True)
class RequestSignature:
    """A parsed request header: one kid, one hex MAC."""

    timestamp_s: int
    kid: str
    v1: str


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a request signature covers, with the header as received (None when absent)."""

    header: str | None
    method: str
    path: str
    body: bytes


def request_message(timestamp_s: int, method: str, path: str, body: bytes) -> bytes:
    """The bytes a request signature covers."""
    return f"{timestamp_s}\n{method}\n{path}\n".encode("utf-8", "surrogateescape") + body


def payload_message(timestamp_s: int, body: bytes) -> bytes:
    """The bytes a response or webhook signature covers."""
    return f"{timestamp_s}.".encode() + body


def sign_request(
    *, kid: str, secret: bytes, method: str, path: str, body: bytes, timestamp_s: int
) -> str:
    """The header value for a merchant request; ValueError for a target no server would see."""
    _check_timestamp_value(timestamp_s)
    if not _METHOD_PATTERN.fullmatch(method):
        raise ValueError(f"method must be upper-case letters, not {method!r}")
    if not path.startswith("/") or not path.isascii() or not path.isprintable() or " " in path:
        raise ValueError(
            f"path must start with '/' and be printable ASCII without spaces: {path!r}"
        )
    mac = _core.hmac_sha256(secret, request_message(timestamp_s, method, path, body))
    return f"t={timestamp_s},kid={kid},v1={mac.hex()}"


def sign_payload(secrets: Sequence[bytes], body: bytes, timestamp_s: int) -> str:
    """The header value for a response or webhook: one v1 per live secret (rotation)."""
    _check_timestamp_value(timestamp_s)
    if not 1 <= len(secrets) <= V1_COUNT_MAX:
        raise ValueError(f"sign with 1 to {V1_COUNT_MAX} secrets, not {len(secrets)}")
    message = payload_message(timestamp_s, body)
    v1s = "".join(f",v1={_core.hmac_sha256(secret, message).hex()}" for secret in secrets)
    return f"t={timestamp_s}{v1s}"


def parse_header(header: str) -> SignatureHeader:
    """Reads ``t``, an optional ``kid`` and the v1 values; strict about everything else."""
    if len(header) > HEADER_LEN_MAX:
        raise _malformed(f"header is {len(header)} characters long, over {HEADER_LEN_MAX}")
    fields: dict[str, str] = {}
    v1: list[str] = []
    for part in header.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals or not name or not value:
            raise _malformed(f"{part!r} is not a name=value pair")
        if name == "v1":
            v1.append(value)
        elif name in {"t", "kid"}:
            if name in fields:
                raise _malformed(f"{name!r} appears more than once")
            fields[name] = value
        elif not _OTHER_SCHEME_PATTERN.fullmatch(name):
            raise _malformed(f"unknown field {name!r}")
    if "t" not in fields:
        raise _malformed("the timestamp 't' is missing")
    if not _TIMESTAMP_PATTERN.fullmatch(fields["t"]):
        raise _malformed(f"the timestamp 't' must be 1 to {TIMESTAMP_DIGITS_MAX} decimal digits")
    if not 1 <= len(v1) <= V1_COUNT_MAX:
        raise _malformed(f"expected 1 to {V1_COUNT_MAX} v1 signatures, got {len(v1)}")
    return SignatureHeader(timestamp_s=int(fields["t"]), kid=fields.get("kid"), v1=tuple(v1))


def parse_request_header(header: str | None) -> RequestSignature:
    """A request header: exactly one kid and one v1."""
    if header is None:
        raise _malformed("the header is missing")
    parsed = parse_header(header)
    if parsed.kid is None:
        raise _malformed("the key id 'kid' is missing")
    if len(parsed.v1) != 1:
        raise _malformed(f"a request carries exactly one v1 signature, got {len(parsed.v1)}")
    return RequestSignature(timestamp_s=parsed.timestamp_s, kid=parsed.kid, v1=parsed.v1[0])


def parse_payload_header(header: str | None) -> SignatureHeader:
    """A response or webhook header: no kid, one v1 per live secret."""
    if header is None:
        raise _malformed("the header is missing")
    parsed = parse_header(header)
    if parsed.kid is not None:
        raise _malformed("a response or webhook signature has no 'kid'")
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

    Headers are parsed here and all MACs checked in one native batch; one bad request never
    affects the others.
    """
    results: list[str | SignatureError] = []
    pending: list[int] = []
    kids: list[str] = []
    messages: list[bytes] = []
    macs: list[str] = []
    for request in requests:
        try:
            parsed = parse_request_header(request.header)
            check_timestamp(parsed.timestamp_s, now_s, tolerance_s)
            message = request_message(
                parsed.timestamp_s, request.method, request.path, request.body
            )
        except SignatureError as error:
            results.append(error)
            continue
        pending.append(len(results))
        results.append(parsed.kid)
        kids.append(parsed.kid)
        messages.append(message)
        macs.append(parsed.v1)
    statuses = ring.verify_batch_hex(kids, messages, macs)
    for index, kid, status in zip(pending, kids, statuses, strict=True):
        if status != _core.VERIFY_VALID:
            results[index] = _verify_error(status, kid)
    return results


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


def _verify_error(status: int, kid: str) -> SignatureError:
    if status == _core.VERIFY_UNKNOWN_KID:
        return UnknownKeyError(f"unknown key id {kid!r}")
    if status == _core.VERIFY_MISMATCH:
        return SignatureMismatchError("the v1 signature does not match the request")
    return _malformed(_VERIFY_NAMES_BY_STATUS[status])


def _malformed(problem: str) -> MalformedSignatureError:
    return MalformedSignatureError(f"{SIGNATURE_HEADER}: {problem}")


def _check_timestamp_value(timestamp_s: int) -> None:
    if not 0 <= timestamp_s < 10**TIMESTAMP_DIGITS_MAX:
        raise ValueError(
            f"timestamp_s must be 0 to {TIMESTAMP_DIGITS_MAX} digits, not {timestamp_s}"
        )
