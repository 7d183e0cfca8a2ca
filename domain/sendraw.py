"""The webapi SendRaw method's pure half: decode the request and check a ready-made message (spec 04 §1).

The message is queued as the application made it (it may carry a DKIM signature), so nothing here rewrites
it beyond line endings; the API handler queues what `check_send_raw` returns exactly as it queues a Send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.header import decode_header, make_header
from email.utils import getaddresses

from pydantic import BaseModel, ConfigDict, ValidationError

from domain.addresses import Address, AddressError, parse_address
from domain.errors import WebAPIError
from domain.send import (
    AccountIdentity,
    ComposedMessage,
    check_extra,
    check_future_release,
    check_own_address,
    check_recipient_count,
    decode_object,
)

_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"(?<!\r)\n")
# RFC 5322 §2.2: a field name is printable ASCII except the colon.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:(.*)", re.DOTALL)


class SendRawRequest(BaseModel):
    """The SendRaw request object; the message itself travels as the multipart file part `message`."""

    model_config = ConfigDict(extra="forbid")

    MailFrom: str = ""
    RcptTo: list[str] = []
    RequireTLS: bool | None = None
    FutureRelease: datetime | None = None
    Extra: dict[str, str] = {}
    # Tempost signs with the From domain's DKIM selectors, when it has any, above any signature the
    # message carries; false queues the message without Tempost's signature.
    DKIMSign: bool = True


@dataclass(frozen=True)
class HeaderField:
    """One header field of a message: its name as written and its unfolded value."""

    name: str
    value: str


def decode_send_raw_request(raw: str) -> SendRawRequest:
    """Decode the JSON request as strictly as Send's: an object, no unknown fields, keys case-insensitive."""
    obj = decode_object(raw, set(SendRawRequest.model_fields))
    try:
        req = SendRawRequest.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise WebAPIError("protocol", f"parsing request: {where}: {first['msg']}") from None
    if req.FutureRelease is not None and req.FutureRelease.tzinfo is None:
        raise WebAPIError("protocol", "times need a time zone offset (RFC 3339)")
    return req


def normalize_line_endings(message: bytes) -> bytes:
    """The message with CRLF line endings: bare LFs become CRLF, a bare CR is refused.

    Tempost's SMTP client refuses to send a bare CR or LF (servers read them differently), so a message
    written with LF line endings (common when an application builds it) is converted here. A DKIM signature
    survives: signers canonicalize LF-terminated lines as CRLF lines (RFC 6376 §3.4), so the signed hashes
    are those of the converted message. A bare CR has no such reading; guessing would alter signed content.
    """
    if _BARE_CR.search(message):
        raise WebAPIError("malformedMessage", "message has a bare CR; use CRLF (or LF) line endings")
    return _BARE_LF.sub(b"\r\n", message)


def parse_header_section(message: bytes) -> list[HeaderField]:
    """The header fields of a CRLF message, unfolded; refuses a message that does not start with one."""
    head, sep, _ = message.partition(b"\r\n\r\n")
    if not sep and message.endswith(b"\r\n"):
        head = message[:-2]  # a message of headers only
    elif not sep:
        raise WebAPIError("malformedMessage", "message has no header section ending in an empty line")
    if b"\0" in head:
        raise WebAPIError("malformedMessage", "NUL byte in the header section (RFC 5322 §2.2)")
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        m = _FIELD.fullmatch(line)
        if m is None:
            shown = line[:40].decode("utf-8", "replace")
            raise WebAPIError("malformedMessage", f"not a header field in the header section: {shown!r}")
        fields.append((m.group(1), m.group(2)))
    # RFC 6532 allows UTF-8 in header values; other bytes are only shown, never written back.
    return [HeaderField(n.decode("ascii"), v.decode("utf-8", "replace").strip()) for n, v in fields]


def _header(fields: list[HeaderField], name: str) -> list[str]:
    return [f.value for f in fields if f.name.lower() == name]


def _decoded(value: str) -> str:
    """A header value with RFC 2047 encoded-words decoded, for display (the queue's Subject column)."""
    try:
        decoded = str(make_header(decode_header(value)))
    except (ValueError, LookupError):
        return value
    # An encoded-word can hold any byte; the queue's text column cannot hold NUL.
    return decoded.replace("\0", "")


def _header_from(fields: list[HeaderField]) -> Address:
    values = _header(fields, "from")
    if not values:
        raise WebAPIError("malformedMessage", "message has no From header")
    if len(values) > 1:
        raise WebAPIError("multipleFrom", "message has more than one From header")
    mailboxes = [addr for _, addr in getaddresses(values) if addr]
    if len(mailboxes) != 1:
        raise WebAPIError("multipleFrom", "the From header must name exactly one address")
    try:
        return parse_address(mailboxes[0])
    except AddressError as err:
        raise WebAPIError("badAddress", f"message From address {mailboxes[0]!r}: {err}") from None


def _parse(given: str, what: str) -> Address:
    try:
        return parse_address(given)
    except AddressError as err:
        raise WebAPIError("badAddress", f"{what} address {given!r}: {err}") from None


def check_send_raw(
    req: SendRawRequest,
    message: bytes,
    *,
    login_address: str,
    account: AccountIdentity,
    now: datetime,
    max_message_size: int,
) -> ComposedMessage:
    """Check a SendRaw request and its message, returning what to queue; errors are Send's codes.

    MailFrom defaults to the login address, as Send's From does; it and the message's From header must be
    the account's, so a raw message cannot claim another sender than Send could.
    """
    if len(message) > max_message_size:
        raise WebAPIError("messageTooLarge", f"message too large, {len(message)} > {max_message_size} bytes")
    sender = _parse(req.MailFrom or login_address, "MailFrom")
    check_own_address(sender, account)
    if not req.RcptTo:
        raise WebAPIError("noRecipients", "no recipients")
    check_recipient_count(len(req.RcptTo))
    recipients = [(given, _parse(given, "RcptTo")) for given in req.RcptTo]
    future_release, future_release_request = check_future_release(req.FutureRelease, now)
    check_extra(req.Extra)
    data = normalize_line_endings(message)
    if len(data) > max_message_size:
        raise WebAPIError("messageTooLarge", f"message too large, {len(data)} > {max_message_size} bytes")
    fields = parse_header_section(data)
    header_from = _header_from(fields)
    check_own_address(header_from, account)
    message_ids = _header(fields, "message-id")
    subjects = _header(fields, "subject")
    head = data.partition(b"\r\n\r\n")[0]
    # Like Send: SMTPUTF8 for non-ASCII localparts in the envelope, and for UTF-8 headers (RFC 6532),
    # which only an SMTPUTF8 server may be given.
    smtputf8 = not head.isascii() or any(a.needs_smtputf8 for a in [sender, *(a for _, a in recipients)])
    return ComposedMessage(
        data=data,
        message_id=message_ids[0] if message_ids else "",
        subject=_decoded(subjects[0]) if subjects else "",
        sender=sender,
        recipients=recipients,
        has8bit=not data.isascii(),
        smtputf8=smtputf8,
        require_tls=req.RequireTLS,
        future_release=future_release,
        future_release_request=future_release_request,
        extra=dict(req.Extra),
        dkim_domain=header_from.domain if req.DKIMSign else "",
    )
