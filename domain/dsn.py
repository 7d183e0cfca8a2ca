"""Delivery status notifications about outgoing messages (spec 03 §1; RFC 3464, RFC 6522, RFC 6533).

Pure composition: one DSN per queue message (recipient), failure or delayed, with a human-readable part,
the machine-readable delivery status and the original message's header section.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from domain.send import format_date

# RFC 3464 §2.3.7: how long a delayed message may still be retried, as mox states it.
WILL_RETRY_FOR = timedelta(hours=28)


class DSNKind(StrEnum):
    """Which notice: the message failed for good, or is late."""

    FAILED = "failed"
    DELAYED = "delayed"


class DSNError(Exception):
    """The DSN cannot be composed (spec 03 §1.2, §1.6)."""


@dataclass(frozen=True)
class DSNInput:
    """What the notice reports about one queue message."""

    kind: DSNKind
    hostname: str
    sender_path: str  # MAIL FROM of the original, "" for the null sender
    recipient: str  # RCPT TO path, ASCII domain
    recipient_unicode: str
    message_id: str  # with <>
    queued: datetime
    last_attempt: datetime
    error: str
    secode: str = ""  # enhanced code without class digit
    smtp_response: Sequence[str] = ()  # the remote's reply lines, when there was one
    remote_mta: str = ""
    original_headers: bytes = b""
    smtputf8: bool = False
    future_release_request: str = ""
    next_attempts: Sequence[datetime] = ()  # delayed: when the remaining attempts are due


def header_section(message: bytes) -> bytes:
    """The header section of a message, up to and including the CRLF ending its last header line."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        raise DSNError("message has no header/body separator")
    return message[: end + 2]


def message_id_of(message: bytes) -> str:
    """The Message-ID (with <>) in a message's header section, "" when it has none."""
    head = message.split(b"\r\n\r\n", 1)[0]
    m = re.search(rb"(?im)^message-id:[ \t]*(<[^>\r\n]*>)", head)
    return m.group(1).decode(errors="replace") if m else ""


def xtext_address(addr: str) -> str:
    """An address in RFC 6533 §3 "utf-8-addr-xtext": characters outside 0x21–0x7E, `\\`, `+`, `=` escaped."""
    local, at, domain = addr.rpartition("@")
    out = "".join(c if 0x21 <= ord(c) <= 0x7E and c not in "\\+=" else f"\\x{{{ord(c):x}}}" for c in local)
    return f"{out}{at}{domain}"


def _human(inp: DSNInput, recipient: str) -> str:
    if inp.kind == DSNKind.FAILED:
        text = (
            "\nYour message could not be delivered to this recipient, and Tempost has given up on it:\n\n"
            f"\t{recipient}\n\n"
            "No further delivery attempts will be made. The last attempt ended with this error:\n\n"
            f"\t{inp.error}\n"
        )
    else:
        when = ", ".join(format_date(t) for t in inp.next_attempts) or "later"
        text = (
            "\nDelivery of your message to this recipient is taking longer than usual:\n\n"
            f"\t{recipient}\n\n"
            f"Tempost will try again at: {when}.\n"
            "If those attempts fail too, you will get another notice.\n"
            "The last attempt ended with this error:\n\n"
            f"\t{inp.error}\n"
        )
    if inp.smtp_response:
        text += "\nThe receiving server's full response:\n\n" + "".join(
            f"\t{line}\n" for line in inp.smtp_response
        )
    return text.replace("\n", "\r\n")


def _status(inp: DSNInput, utf8: bool) -> str:
    klass = "5" if inp.kind == DSNKind.FAILED else "4"
    lines = [f"Reporting-MTA: dns; {inp.hostname}", f"Arrival-Date: {format_date(inp.queued)}"]
    if inp.future_release_request:
        lines.append(f"Future-Release-Request: {inp.future_release_request}")
    lines.append("")
    rcpt = f"utf-8;{inp.recipient_unicode}" if utf8 else f"rfc822;{xtext_address(inp.recipient)}"
    lines += [
        f"Final-Recipient: {rcpt}",
        f"Action: {inp.kind.value}",
        f"Status: {klass}.{inp.secode or '0.0'} ({inp.error})",
    ]
    if inp.remote_mta:
        lines.append(f"Remote-MTA: dns;{inp.remote_mta}")
    if inp.smtp_response:
        lines.append("Diagnostic-Code: smtp; " + " ".join(inp.smtp_response))
    lines.append(f"Last-Attempt-Date: {format_date(inp.last_attempt)}")
    if inp.kind == DSNKind.DELAYED:
        lines.append(f"Will-Retry-Until: {format_date(inp.last_attempt + WILL_RETRY_FOR)}")
    return "\r\n".join(lines) + "\r\n"


def compose_dsn(inp: DSNInput, *, now: datetime, random_token: Callable[[], str]) -> bytes:
    """The DSN message (RFC 3464 §2, RFC 6522 §3), in the global variant when the original needed SMTPUTF8."""
    if not inp.message_id:
        raise DSNError("original message has no message-id")
    utf8 = inp.smtputf8
    boundary = "dsn-" + "".join(c for c in random_token() if c.isalnum())
    recipient = inp.recipient_unicode if utf8 else inp.recipient
    hdr = [
        f"From: <postmaster@{inp.hostname}>",
        f"To: <{inp.sender_path}>",
        f"Subject: mail delivery {'failed' if inp.kind == DSNKind.FAILED else 'delayed'}",
        f"Message-Id: <{random_token()}@{inp.hostname}>",
        f"References: {inp.message_id}",
        f"Date: {format_date(now)}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="delivery-status"; boundary="{boundary}"',
    ]
    if utf8:
        parts = [
            ("text/plain; charset=utf-8", "8BIT", _human(inp, recipient).encode()),
            ("message/global-delivery-status", "8BIT", _status(inp, True).encode()),
            ("message/global-headers", "8BIT", inp.original_headers),
        ]
    else:
        parts = [
            ("text/plain", "7BIT", _human(inp, recipient).encode()),
            ("message/delivery-status", "7BIT", _status(inp, False).encode()),
            ("text/rfc822-headers", "7BIT", inp.original_headers),
        ]
        if not inp.original_headers.isascii():
            # UTF-8 headers to an ASCII-only path: base64, never raw 8-bit bytes in a 7BIT part (the third
            # rendering of spec 03 §1.3, lines of 76 as at mox's HEAD).
            encoded = base64.encodebytes(inp.original_headers).replace(b"\n", b"\r\n")
            parts[2] = ("text/rfc822-headers; charset=utf-8", "BASE64", encoded)
    if not inp.original_headers:
        # Nothing of the original to show: the optional third part is left out (RFC 3464 §2).
        parts = parts[:2]
    body = (
        b"\r\n".join(h.encode() for h in hdr)
        + b"\r\n\r\nThis is a MIME multipart delivery status report.\r\n"
    )
    for ctype, cte, data in parts:
        body += (
            f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode()
            + data
            + (b"" if data.endswith(b"\r\n") else b"\r\n")
        )
    return body + f"--{boundary}--\r\n".encode()
