"""Idempotency keys of the webapi (spec 04 §1): what a valid key is and what makes two requests the same."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import timedelta

from domain.errors import WebAPIError

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 200
WINDOW = timedelta(hours=24)
"""How long a key answers with its first response; older keys are free for reuse."""


def check_key(value: str) -> str:
    """The key itself, or `badIdempotencyKey` when it is empty, too long or not printable ASCII."""
    if not value:
        raise WebAPIError("badIdempotencyKey", f"{HEADER} header is empty")
    if len(value) > MAX_KEY_LENGTH:
        raise WebAPIError("badIdempotencyKey", f"{HEADER} is longer than {MAX_KEY_LENGTH} characters")
    if any(not (" " <= c <= "~") for c in value):
        raise WebAPIError("badIdempotencyKey", f"{HEADER} must be printable ASCII")
    return value


def request_hash(method: str, parts: Iterable[bytes]) -> str:
    """A digest of a call's method and request parts, each length-prefixed so boundaries cannot shift."""
    h = hashlib.sha256(method.encode())
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()
