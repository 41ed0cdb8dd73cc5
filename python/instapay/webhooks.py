"""For merchants: checking the signature of a webhook (or any instapay response) before trusting it.

The scheme is Stripe's: ``Instapay-Signature: t=<unix s>,v1=<hex>[,v1=...]`` with
``v1 = HMAC-SHA256(secret, "<t>." + body)``, so existing verifiers work too.
"""

from __future__ import annotations

from instapay.signing import TOLERANCE_S_DEFAULT, verify_payload


def verify(
    body: bytes, header: str | None, secret: bytes, tolerance_s: int = TOLERANCE_S_DEFAULT
) -> int:
    """Returns the signature's timestamp; raises `instapay.signing.SignatureError` (a ValueError)
    when the header is missing, malformed, older or newer than `tolerance_s`, or does not match."""
    return verify_payload(body, header, [secret], tolerance_s=tolerance_s)
