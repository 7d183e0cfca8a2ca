"""Rules for untrusted API input: how large a request body may be, and JSON and query strings decoded
strictly, so malformed input is refused with a clear error instead of failing deeper down."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

MIB = 1024 * 1024
# Bodies of admin calls that carry JSON (filters, rules): small objects, a list of ids at most.
ADMIN_JSON_LIMIT = 4 * MIB
# Fields of a form or query string; a webapi call needs three, an admin listing about a dozen.
MAX_FIELDS = 100


class InputError(ValueError):
    """Input that is not well-formed: invalid UTF-8, a NUL byte, JSON nested too deeply and the like."""


def request_body_limit(max_message_size: int) -> int:
    """How many bytes a request carrying a message of at most `max_message_size` bytes may have.

    The composed message holds its attachments base64-encoded, as the request does, so the request's
    own overhead is small: a url-encoded form (mox's client) percent-encodes base64's `+` and `/` into
    three bytes each (about 6 %), JSON escapes quotes and control characters, and text bodies may need
    escaping; half the message size again covers that, and one MiB covers the request's other fields.
    """
    return max_message_size * 3 // 2 + MIB


def _refuse_constant(name: str) -> Any:
    raise InputError(f"{name} is not a JSON number (RFC 8259 §6)")


# A lone surrogate can only come from a \uD800-\uDFFF escape; it is not a character and cannot be stored.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def load_json(text: str | bytes | bytearray) -> Any:
    """Decode JSON text (RFC 8259) strictly: UTF-8, no NaN or Infinity, no lone surrogates, and nesting
    too deep for the decoder refused instead of overflowing the stack. Raises InputError."""
    if not isinstance(text, str):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"not valid UTF-8 at byte {err.start}") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InputError("JSON nested too deeply") from None
    except InputError:
        raise
    except ValueError as err:
        raise InputError(f"invalid JSON: {err}") from None
    if _SURROGATE_ESCAPE.search(text) and _has_surrogate(value):
        raise InputError("JSON string with a lone surrogate (\\uD800-\\uDFFF), not a character")
    return value


def parse_form(body: bytes | bytearray) -> list[tuple[str, str]]:
    """The fields of an application/x-www-form-urlencoded body, percent-decoded as strict UTF-8."""
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise InputError("form is not valid UTF-8") from None
    except ValueError as err:
        raise InputError(f"form: {err}") from None


def query_string_problem(raw: bytes) -> str | None:
    """Why a URL's query string cannot be taken (invalid UTF-8, a NUL byte, too many fields), or None.

    PostgreSQL text cannot hold NUL, and replacing undecodable bytes would change what a filter means.
    """
    if not raw:
        return None
    try:
        fields = parse_form(raw)
    except InputError as err:
        return f"query string: {err}"
    if any("\0" in k or "\0" in v for k, v in fields):
        return "query string contains a NUL byte"
    return None
