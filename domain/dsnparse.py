"""Parsing and classifying incoming delivery status notifications (spec 03 §1.9, §4.3; RFC 3464, 6522, 6533).

Pure functions over the raw message bytes. Parsing is lenient where real DSNs from Postfix, Exim and Gmail
differ from what mox composes (spec 03 §1.9 recommendation): dates go through an RFC 5322 parser that
tolerates a weekday and trailing comments, any diagnostic type is accepted, and the first and optional third
part of the report may have any content type. Kept strict: a multipart/report with 2 or 3 parts whose second
part is message/delivery-status or message/global-delivery-status, a per-message block with a `dns`
Reporting-MTA, per-recipient blocks with Final-Recipient, Action and Status, each field at most once per
block, and an Action that is one of the five RFC 3464 values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import parsedate_to_datetime

_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


class DSNParseError(Exception):
    """The message is not a delivery status notification this module can decode."""


@dataclass(frozen=True)
class RecipientStatus:
    """What one per-recipient block of a DSN reports about one recipient (RFC 3464 §2.3)."""

    final_recipient: str  # address, \x{HEX} escapes decoded
    original_recipient: str  # "" when absent
    action: str  # lowercase, one of _ACTIONS
    status: str  # e.g. "5.1.1", comment removed
    diagnostic_code: str  # raw field value, e.g. "smtp; 550 5.1.1 unknown user"; "" when absent
    remote_mta: str  # raw field value, "" when absent
    last_attempt_date: datetime | None
    will_retry_until: datetime | None


@dataclass(frozen=True)
class ParsedDSN:
    """A decoded delivery-status part: the reporting MTA and one entry per recipient block."""

    reporting_mta: str  # the name after "dns;"
    recipients: list[RecipientStatus]
    global_: bool  # True for message/global-delivery-status (RFC 6533)


@dataclass(frozen=True)
class Classification:
    """How bounce ingestion treats an incoming message sent to a FromID address (spec 03 §4.3 steps 1–4)."""

    event: str  # failed, delayed, delivered, relayed, expanded or unrecognized
    dsn: bool
    code: int
    secode: str
    error: str  # result error text for unrecognized messages, "" otherwise
    recipient: str  # the final recipient, "" when unrecognized


def _head_and_body(data: bytes) -> tuple[Message, bytes]:
    """The header section of an entity and its body with the transfer encoding undone."""
    msg = BytesParser(policy=compat32).parsebytes(data, headersonly=True)
    body = msg.get_payload(decode=True)
    return msg, body if isinstance(body, bytes) else b""


def _split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The body parts of a multipart body (RFC 2046 §5.1.1); an unterminated last part runs to the end."""
    delimiter = b"--" + boundary.encode("ascii")
    parts: list[bytes] = []
    current: list[bytes] | None = None  # None while in the preamble
    lines = body.split(b"\n")
    for i, raw in enumerate(lines):
        line = raw + b"\n" if i < len(lines) - 1 else raw
        bare = raw.rstrip(b"\r")
        if bare.startswith(delimiter):
            rest = bare[len(delimiter) :]
            closing = rest.startswith(b"--")
            if closing or not rest.strip(b" \t"):
                if current is not None:
                    parts.append(_drop_final_newline(b"".join(current)))
                if closing:
                    return parts
                current = []
                continue
        if current is not None:
            current.append(line)
    if current is not None:
        parts.append(b"".join(current))
    return parts


def _drop_final_newline(data: bytes) -> bytes:
    """The part content without the line break that belongs to the following delimiter."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def _report_parts(message: bytes) -> list[tuple[str, bytes]]:
    """Content type and decoded body of each part of a top-level multipart/report."""
    top, body = _head_and_body(message)
    ctype = top.get_content_type()
    if ctype != "multipart/report":
        raise DSNParseError(f"message is {ctype}, not multipart/report")
    boundary = top.get_boundary()
    if not boundary:
        raise DSNParseError("multipart/report without boundary")
    if not boundary.isascii():
        raise DSNParseError("multipart/report boundary is not ASCII")
    out = []
    for part in _split_multipart(body, boundary):
        head, part_body = _head_and_body(part)
        out.append((head.get_content_type(), part_body))
    return out


def is_report(message: bytes) -> bool:
    """Whether the message is a multipart/report whose second part is a delivery status (§4.3 step 1)."""
    try:
        parts = _report_parts(message)
    except DSNParseError:
        return False
    return len(parts) >= 2 and parts[1][0] in _STATUS_TYPES


def _strip_comments(value: str) -> str:
    """The value without parenthesised (possibly nested) comments, outside quoted strings, trimmed."""
    out: list[str] = []
    depth = 0
    quoted = False
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and (depth or quoted) and i + 1 < len(value):
            if not depth:
                out.append(value[i : i + 2])
            i += 2
            continue
        if quoted:
            out.append(c)
            quoted = c != '"'
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(c)
            quoted = c == '"'
        i += 1
    return "".join(out).strip()


def _blocks(text: str) -> list[list[tuple[str, str]]]:
    """The header blocks of a delivery-status body as (lowercase name, unfolded value) pairs."""
    blocks: list[list[tuple[str, str]]] = []
    current: list[list[str]] = []  # [name, value] pairs of the block being read
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append([(name, value.strip()) for name, value in current])
                current = []
        elif line[0] in " \t":
            if not current:
                raise DSNParseError(f"continuation line without a field: {line.strip()!r}")
            current[-1][1] += line
        else:
            name, colon, value = line.partition(":")
            name = name.strip()
            if not colon or not name or " " in name:
                raise DSNParseError(f"malformed line in delivery status: {line!r}")
            current.append([name.lower(), value])
    if current:
        blocks.append([(name, value.strip()) for name, value in current])
    return blocks


def _fields(block: list[tuple[str, str]], where: str) -> dict[str, str]:
    """The block's fields by lowercase name; a repeated field is an error."""
    fields: dict[str, str] = {}
    for name, value in block:
        if name in fields:
            raise DSNParseError(f"{where}: duplicate field {name}")
        fields[name] = value
    return fields


def _typed(value: str, field: str) -> tuple[str, str]:
    """A `type; value` field split into its lowercase type and its comment-free value."""
    typ, semicolon, rest = _strip_comments(value).partition(";")
    if not semicolon:
        raise DSNParseError(f"{field}: missing type in {value!r}")
    return typ.strip().lower(), rest.strip()


def _dns_name(value: str, field: str) -> str:
    """The host name of a `dns; NAME` field."""
    typ, name = _typed(value, field)
    if typ != "dns":
        raise DSNParseError(f"{field}: type {typ!r}, expected dns")
    if not name:
        raise DSNParseError(f"{field}: empty name")
    return name


def _unescape(local: str) -> str:
    """A localpart with RFC 6533 `\\x{HEX}` escapes decoded."""

    def repl(m: re.Match[str]) -> str:
        cp = int(m.group(1), 16)
        if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
            raise DSNParseError(f"invalid escape {m.group(0)!r} in address")
        return chr(cp)

    return _ESCAPE.sub(repl, local)


def _address(value: str, field: str, global_: bool) -> str:
    """The address of an `rfc822;ADDR` (or, in the global variant, `utf-8;ADDR`) field."""
    typ, addr = _typed(value, field)
    if typ != "rfc822" and not (typ == "utf-8" and global_):
        raise DSNParseError(f"{field}: unsupported address type {typ!r}")
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if not addr:
        raise DSNParseError(f"{field}: empty address")
    if not global_ and not addr.isascii():
        raise DSNParseError(f"{field}: non-ASCII address outside a global DSN")
    local, at, domain = addr.rpartition("@")
    if not at:
        return _unescape(addr)
    return f"{_unescape(local)}@{domain}"


def _date(value: str, field: str) -> datetime:
    """A date in any RFC 5322 form, comments removed; a time without zone (-0000) is taken as UTC."""
    text = _strip_comments(value)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError) as e:
        raise DSNParseError(f"{field}: unparsable date {value!r}") from e
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _recipient(fields: dict[str, str], where: str, global_: bool) -> RecipientStatus:
    """One per-recipient block decoded."""
    for required in ("final-recipient", "action", "status"):
        if required not in fields:
            raise DSNParseError(f"{where}: missing {required}")
    action = _strip_comments(fields["action"]).lower()
    if action not in _ACTIONS:
        raise DSNParseError(f"{where}: unknown action {fields['action']!r}")
    status = _strip_comments(fields["status"]).split()
    if not status:
        raise DSNParseError(f"{where}: empty status")
    original = fields.get("original-recipient")
    last_attempt = fields.get("last-attempt-date")
    retry_until: datetime | None = None
    if "will-retry-until" in fields:
        try:
            retry_until = _date(fields["will-retry-until"], "Will-Retry-Until")
        except DSNParseError:
            retry_until = None  # spec 03 §1.9: ignored when unparsable
    return RecipientStatus(
        final_recipient=_address(fields["final-recipient"], f"{where}: Final-Recipient", global_),
        original_recipient=(
            _address(original, f"{where}: Original-Recipient", global_) if original is not None else ""
        ),
        action=action,
        status=status[0],
        diagnostic_code=fields.get("diagnostic-code", ""),
        remote_mta=fields.get("remote-mta", ""),
        last_attempt_date=(
            _date(last_attempt, f"{where}: Last-Attempt-Date") if last_attempt is not None else None
        ),
        will_retry_until=retry_until,
    )


def parse_dsn(message: bytes) -> ParsedDSN:
    """Decode a DSN into its reporting MTA and recipient statuses; DSNParseError says what is wrong."""
    parts = _report_parts(message)
    if len(parts) not in (2, 3):
        raise DSNParseError(f"multipart/report has {len(parts)} parts, expected 2 or 3")
    ctype, body = parts[1]
    if ctype not in _STATUS_TYPES:
        raise DSNParseError(f"second part is {ctype}, expected message/delivery-status")
    global_ = ctype == "message/global-delivery-status"
    blocks = _blocks(body.decode("utf-8", errors="replace"))
    if not blocks:
        raise DSNParseError("empty delivery-status part")
    per_message = _fields(blocks[0], "per-message block")
    if "reporting-mta" not in per_message:
        raise DSNParseError("per-message block: missing reporting-mta")
    reporting_mta = _dns_name(per_message["reporting-mta"], "Reporting-MTA")
    for name, label in (("dsn-gateway", "DSN-Gateway"), ("received-from-mta", "Received-From-MTA")):
        if name in per_message:
            _dns_name(per_message[name], label)
    if "arrival-date" in per_message:
        _date(per_message["arrival-date"], "Arrival-Date")
    recipients = [
        _recipient(_fields(block, f"recipient block {i}"), f"recipient block {i}", global_)
        for i, block in enumerate(blocks[1:], start=1)
    ]
    return ParsedDSN(reporting_mta=reporting_mta, recipients=recipients, global_=global_)


def _is_code(token: str) -> bool:
    """Whether a token is a three-digit SMTP reply code."""
    return len(token) == 3 and all(c in "0123456789" for c in token)


def reply_codes(r: RecipientStatus) -> tuple[int, str]:
    """The SMTP reply code and enhanced code without class digit claimed for a recipient (§4.3 step 3)."""
    code, secode = 0, ""
    typ, semicolon, text = r.diagnostic_code.partition(";")
    tokens = (text if semicolon else typ).split()
    if tokens and _is_code(tokens[0]):
        code = int(tokens[0])
        if len(tokens) >= 2 and tokens[1].startswith(("4.", "5.")):
            secode = tokens[1][2:]
    if code == 0 and r.status.startswith(("4.", "5.")):
        code = 400 if r.status.startswith("4.") else 500
        secode = r.status[2:]
    return code, secode


def classify(message: bytes) -> Classification:
    """Classify an incoming message to a FromID address as a DSN event or unrecognized (§4.3 steps 1–4)."""
    if not is_report(message):
        return Classification("unrecognized", False, 0, "", "incoming message not a dsn", "")
    try:
        dsn = parse_dsn(message)
    except DSNParseError as e:
        return Classification("unrecognized", True, 0, "", f"parsing incoming dsn: {e}", "")
    if len(dsn.recipients) != 1:
        error = f"incoming dsn has {len(dsn.recipients)} recipients, expecting 1"
        return Classification("unrecognized", True, 0, "", error, "")
    r = dsn.recipients[0]
    code, secode = reply_codes(r)
    return Classification(r.action, True, code, secode, "", r.final_recipient)
