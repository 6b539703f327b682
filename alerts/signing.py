"""Webhook signatures: HMAC-SHA256 over ``<timestamp>.<body>``.

Headers of every POST::

    X-Driftline-Timestamp: 1795341600          (unix seconds)
    X-Driftline-Signature: sha256=<hex>        (HMAC-SHA256 of b"<timestamp>." + body)
    Idempotency-Key: <CloudEvent id>

Receivers verify the signature with the shared secret (constant-time compare) and refuse
timestamps outside a tolerance window, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from alerts.errors import AlertsError

SIGNATURE = "X-Driftline-Signature"
TIMESTAMP = "X-Driftline-Timestamp"
IDEMPOTENCY = "Idempotency-Key"
DEFAULT_TOLERANCE_S = 300


class SignatureError(AlertsError):
    """A request whose signature or timestamp does not verify."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def signed_headers(
    secret: bytes, body: bytes, event_id: str, now: float | None = None
) -> dict[str, str]:
    ts = int(time.time() if now is None else now)
    return {
        "Content-Type": "application/cloudevents+json",
        TIMESTAMP: str(ts),
        SIGNATURE: sign(secret, ts, body),
        IDEMPOTENCY: event_id,
    }


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Raises SignatureError (with a reason that reveals nothing secret) unless valid."""
    lowered = {k.lower(): v for k, v in headers.items()}
    given = lowered.get(SIGNATURE.lower())
    stamp = lowered.get(TIMESTAMP.lower())
    if not given or not stamp:
        raise SignatureError("missing signature or timestamp header")
    # plain ASCII digits only: int() would also take " +1_795_341_600 ", and a
    # thousand-digit number overflows the float comparison below
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise SignatureError("timestamp header is not an integer of unix seconds")
    ts = int(stamp)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError(f"timestamp outside the {tolerance_s} s window (replay or clock skew)")
    # compare_digest refuses non-ASCII str with a TypeError: such a header is no signature
    if not given.isascii() or not hmac.compare_digest(given, sign(secret, ts, body)):
        raise SignatureError("signature does not match the body")
