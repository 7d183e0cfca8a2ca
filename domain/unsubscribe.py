"""One-click unsubscribe (RFC 8058 with RFC 2369): the signed token, the two header fields, the POST body.

A token names the account, the recipient and the queued message, and carries an HMAC-SHA256 over them with
a server secret, so it cannot be forged or altered, and the link keeps working after the message itself is
long gone from the database. Pure: the caller passes the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

# RFC 8058 §3.1: the exact value of List-Unsubscribe-Post, and §3.2: the body of the one-click POST.
POST_FIELD = "List-Unsubscribe"
POST_VALUE = "One-Click"
PATH_PREFIX = "/unsubscribe/"
# 128 bits of MAC: forging one takes 2^128 tries on average, far beyond any rate limit.
_MAC_SIZE = 16
_VERSION = 1
# Separates these MACs from any other use the same secret might be put to.
_MAC_LABEL = b"tempost one-click unsubscribe\0"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
# RFC 5322 §2.1.1: a line is at most 998 characters; the URL in angle brackets cannot be folded
# (RFC 2369 §2 asks MTAs not to insert whitespace there).
MAX_LINE = 998
# Longer tokens are refused before decoding: the longest account name and address fit well within this.
MAX_TOKEN_LENGTH = 2048
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class Unsubscribe:
    """Who asked to be taken off whose list, by which message."""

    account: str
    recipient: str
    msg_id: int


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, _MAC_LABEL + body, hashlib.sha256).digest()[:_MAC_SIZE]


def _field(s: str) -> bytes:
    b = s.encode()
    if len(b) > 0xFFFF:
        raise ValueError("token field too long")
    return struct.pack(">H", len(b)) + b


def make_token(secret: bytes, sub: Unsubscribe) -> str:
    """The URL-safe token (base64url, no padding) naming `sub`, signed with `secret`."""
    if not secret:
        raise ValueError("an unsubscribe token needs a secret")
    body = struct.pack(">BQ", _VERSION, sub.msg_id) + _field(sub.account) + _field(sub.recipient)
    return base64.urlsafe_b64encode(body + _mac(secret, body)).rstrip(b"=").decode()


def read_token(secret: bytes, token: str) -> Unsubscribe | None:
    """What a token names, or None when it is malformed or its MAC does not match `secret`."""
    if not secret or len(token) > MAX_TOKEN_LENGTH or not _BASE64URL.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    # Only the canonical spelling: the last character may carry unused bits that decode the same.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token or len(raw) < 9 + 4 + _MAC_SIZE:
        return None
    body, mac = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
    if not hmac.compare_digest(mac, _mac(secret, body)):
        return None
    version, msg_id = struct.unpack(">BQ", body[:9])
    if version != _VERSION:
        return None
    fields: list[str] = []
    rest = body[9:]
    for _ in range(2):
        if len(rest) < 2:
            return None
        (n,) = struct.unpack(">H", rest[:2])
        if len(rest) < 2 + n:
            return None
        try:
            fields.append(rest[2 : 2 + n].decode())
        except UnicodeDecodeError:
            return None
        rest = rest[2 + n :]
    if rest:
        return None
    return Unsubscribe(account=fields[0], recipient=fields[1], msg_id=msg_id)


def check_public_url(url: str) -> str:
    """The public base URL without a trailing slash; ValueError unless it is an absolute http(s) URL that
    can stand in a header field unchanged (ASCII, no whitespace, no angle brackets, no query)."""
    if not url.isascii() or any(c.isspace() or c in '<>"' for c in url):
        raise ValueError("api.public_url: ASCII without spaces, quotes or angle brackets (punycode a name)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"api.public_url {url!r}: want an absolute URL such as https://mail.example.com")
    if parts.query or parts.fragment:
        raise ValueError(f"api.public_url {url!r}: no query or fragment")
    return url.rstrip("/")


def unsubscribe_url(public_url: str, token: str) -> str:
    """Where the token's POST (and GET) go."""
    return public_url.rstrip("/") + PATH_PREFIX + token


def header_fields(url: str) -> bytes:
    """The two header fields of RFC 8058 §3.1, CRLF-terminated; ValueError when the URL makes a line
    longer than RFC 5322 allows."""
    line = f"List-Unsubscribe: <{url}>"
    if len(line) > MAX_LINE:
        raise ValueError(f"List-Unsubscribe line would be {len(line)} characters, over {MAX_LINE}")
    return f"{line}\r\nList-Unsubscribe-Post: {POST_FIELD}={POST_VALUE}\r\n".encode()


def add_header_fields(message: bytes, fields: bytes) -> bytes:
    """The message with `fields` appended to its header section (before the empty line ending it)."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        # A message that is all header section ends with its last CRLF.
        return message + fields if message.endswith(b"\r\n") else message + b"\r\n" + fields
    return message[: end + 2] + fields + message[end + 2 :]


def one_click_body(fields: list[tuple[str, str]]) -> bool:
    """Whether a POST's form fields are the one-click request of RFC 8058 §3.2."""
    return any(k == POST_FIELD and v == POST_VALUE for k, v in fields)


def reason(msg_id: int) -> str:
    """The suppression entry's reason text."""
    return f"one-click unsubscribe (RFC 8058) from message {msg_id}"
