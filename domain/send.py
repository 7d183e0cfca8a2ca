"""The webapi Send method's pure half: decode the request, check it, compose the message (spec 03 §5.4).

Nothing here touches the network or the database; the API handler queues what `compose_send` returns.
"""

from __future__ import annotations

import base64
import binascii
import quopri
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.header import Header
from email.utils import encode_rfc2231
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from domain.addresses import Address, AddressError, parse_address
from domain.apiinput import InputError, load_json
from domain.errors import WebAPIError

FUTURE_RELEASE_MAX = timedelta(days=60)
USER_AGENT = "tempost"
# RFC 5322 §2.1.1: lines are at most 998 characters; longer text lines need quoted-printable.
_MAX_LINE = 998


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NameAddress(_Strict):
    """A display name and an email address, as in From, To, CC, BCC and ReplyTo."""

    Name: str = ""
    Address: str = ""


class File(_Strict):
    """A file to attach, inline or add as an alternative body, its contents in standard base64."""

    Name: str = ""
    ContentType: str = ""
    ContentID: str = ""
    Data: str = ""


class SendRequest(_Strict):
    """The Send request object; the message fields sit at the top level, as in mox's webapi."""

    From: list[NameAddress] = []
    To: list[NameAddress] = []
    CC: list[NameAddress] = []
    BCC: list[NameAddress] = []
    ReplyTo: list[NameAddress] = []
    MessageID: str = ""
    References: list[str] = []
    Date: datetime | None = None
    Subject: str = ""
    Text: str = ""
    HTML: str = ""
    Extra: dict[str, str] = {}
    Headers: list[list[str]] = []
    # Further alternative bodies beside Text and HTML, e.g. a text/calendar invitation (later mox versions).
    AlternativeFiles: list[File] = []
    InlineFiles: list[File] = []
    AttachedFiles: list[File] = []
    RequireTLS: bool | None = None
    FutureRelease: datetime | None = None
    SaveSent: bool = False
    # Tempost extension: one-click unsubscribe headers (RFC 8058) for this submission; null follows the
    # account's list_unsubscribe setting.
    ListUnsubscribe: bool | None = None


@dataclass(frozen=True)
class UploadedFile:
    """A file sent as a multipart form part (`inlinefile` or `attachedfile`)."""

    name: str
    content_type: str
    content_id: str
    data: bytes


@dataclass(frozen=True)
class AccountIdentity:
    """What composition needs to know about the sending account."""

    name: str
    full_name: str
    addresses: list[str]


@dataclass
class ComposedMessage:
    """A message ready to queue: its bytes once, and one entry per recipient in To, CC, BCC order."""

    data: bytes
    message_id: str
    subject: str
    sender: Address
    recipients: list[tuple[str, Address]]
    has8bit: bool
    smtputf8: bool
    require_tls: bool | None
    future_release: datetime | None
    future_release_request: str
    extra: dict[str, str] = field(default_factory=dict)
    # The From header's domain, whose DKIM selectors sign the message; "" leaves it unsigned.
    dkim_domain: str = ""


# --- Decoding ---------------------------------------------------------------------------------------


def _fold_keys(value: Any, model: type[BaseModel]) -> Any:
    """Map JSON keys to field names case-insensitively, as Go's decoder does; unknown keys stay to fail."""
    if not isinstance(value, dict):
        return value
    by_lower = {name.lower(): name for name in model.model_fields}
    out: dict[str, Any] = {}
    for k, v in value.items():
        name: str = by_lower.get(str(k).lower(), str(k))
        if v is None:
            continue  # null is the zero value
        if name in ("From", "To", "CC", "BCC", "ReplyTo") and isinstance(v, list):
            v = [_fold_keys(x, NameAddress) for x in v]
        elif name in ("AlternativeFiles", "InlineFiles", "AttachedFiles") and isinstance(v, list):
            v = [_fold_keys(x, File) for x in v]
        out[name] = v
    return out


def _json_object(raw: str) -> dict[str, Any]:
    try:
        obj = load_json(raw)
    except InputError as err:
        raise WebAPIError("protocol", f"parsing request: {err}") from None
    if not isinstance(obj, dict):
        raise WebAPIError("protocol", "request must be a JSON object")
    return obj


def decode_object(raw: str, fields: set[str]) -> dict[str, Any]:
    """Decode a small request object as strictly as Send's: keys case-insensitive, unknown keys refused."""
    obj = _json_object(raw)
    by_lower = {f.lower(): f for f in fields}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = by_lower.get(str(k).lower())
        if name is None:
            raise WebAPIError("protocol", f"parsing request: unknown field {k!r}")
        if v is not None:
            out[name] = v
    return out


def decode_send_request(raw: str) -> SendRequest:
    """Decode the JSON request strictly: an object, no unknown fields, keys matched case-insensitively."""
    obj = _json_object(raw)
    try:
        req = SendRequest.model_validate(_fold_keys(obj, SendRequest))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise WebAPIError("protocol", f"parsing request: {where}: {first['msg']}") from None
    for t in (req.Date, req.FutureRelease):
        if t is not None and t.tzinfo is None:
            raise WebAPIError("protocol", "times need a time zone offset (RFC 3339)")
    return req


# --- Checks -----------------------------------------------------------------------------------------


def _check_text(what: str, s: str) -> None:
    if any(ord(c) < 0x20 for c in s):
        raise WebAPIError("user", f"{what} contains control characters")


def _parse(na: NameAddress, what: str) -> Address:
    _check_text(f"{what} name", na.Name)
    try:
        return parse_address(na.Address)
    except AddressError as err:
        raise WebAPIError("badAddress", f"{what} address {na.Address!r}: {err}") from None


def check_own_address(address: Address, account: AccountIdentity) -> None:
    """Refuse, with `badFrom`, a sender address that is not one of the account's."""
    own = set()
    for a in account.addresses:
        try:
            own.add(parse_address(a).ascii.lower())
        except AddressError:
            continue
    if address.ascii.lower() not in own:
        raise WebAPIError("badFrom", "from-address does not belong to this account")


# Most recipients of one submission. Its workflow carries every recipient's id (and, continued as new,
# each one's schedule) in its input, and Temporal refuses payloads over 2 MB; 10,000 stays near 1.3 MB.
MAX_RECIPIENTS = 10_000


def check_recipient_count(n: int) -> None:
    """Refuse a submission with more recipients than one workflow carries (MAX_RECIPIENTS)."""
    if n > MAX_RECIPIENTS:
        raise WebAPIError(
            "tooManyRecipients", f"{n} recipients, at most {MAX_RECIPIENTS} per submission: split the mail"
        )


def check_extra(extra: dict[str, str]) -> None:
    """Refuse, with `user`, Extra keys or values with NUL: they are stored as JSON in PostgreSQL (jsonb),
    which cannot hold it, and passed on in webhooks."""
    if any("\0" in k or "\0" in v for k, v in extra.items()):
        raise WebAPIError("user", "Extra keys and values must not contain NUL")


def check_future_release(requested: datetime | None, now: datetime) -> tuple[datetime | None, str]:
    """The first attempt time (None: now) and the DSN `until;` value of a FutureRelease (spec 03 §5.4, 12)."""
    if requested is None:
        return None, ""
    if requested - now > FUTURE_RELEASE_MAX:
        raise WebAPIError("user", "future release too far in the future (at most 60 days)")
    return (requested if requested > now else None), "until;" + _rfc3339(requested)


# --- Header formatting ------------------------------------------------------------------------------

_SPECIALS = set('()<>[]:;@\\,."')


def _encode_words(s: str, smtputf8: bool, header_name: str = "") -> str:
    """ASCII text as is; other text raw under SMTPUTF8 (RFC 6532 §3.2), else RFC 2047 encoded-words."""
    if s.isascii() or smtputf8:
        return s
    return Header(s, "utf-8", header_name=header_name).encode(linesep="\r\n", maxlinelen=77)


def _display_name(name: str, smtputf8: bool) -> str:
    if not name.isascii() and not smtputf8:
        return _encode_words(name, False)
    if any(c in _SPECIALS for c in name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def _mailbox(name: str, addr: Address, smtputf8: bool) -> str:
    text = addr.unicode if smtputf8 else addr.ascii
    if not name:
        return f"<{text}>"
    return f"{_display_name(name, smtputf8)} <{text}>"


def _fold(name: str, value: str) -> str:
    """A header line folded at whitespace to about 77 columns (RFC 5322 §2.2.3)."""
    line = f"{name}: "
    out: list[str] = []
    for word in value.split(" "):
        if len(line) + len(word) > 77 and line.strip() and not line.endswith(": "):
            out.append(line.rstrip(" "))
            line = " "
        line += word + " "
    out.append(line.rstrip(" "))
    return "\r\n".join(out) + "\r\n"


def _address_header(name: str, boxes: list[str]) -> str:
    return f"{name}: " + ",\r\n\t".join(boxes) + "\r\n"


def format_date(t: datetime) -> str:
    """RFC 5322 §3.3 date in the time's own zone, without the optional day of week."""
    off = t.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    mins = abs(int(off.total_seconds())) // 60
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")[t.month - 1]
    return f"{t.day} {month} {t.year} {t:%H:%M:%S} {sign}{mins // 60:02d}{mins % 60:02d}"


# --- Body parts -------------------------------------------------------------------------------------


@dataclass
class _Part:
    headers: list[tuple[str, str]]
    body: bytes


def _text_part(text: str, subtype: str, smtputf8: bool) -> _Part:
    text = text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    raw = text.encode()
    charset = "us-ascii" if text.isascii() else "utf-8"
    long_lines = any(len(line) > _MAX_LINE for line in raw.split(b"\n"))
    if long_lines or "\r" in text or "\0" in text:
        body = quopri.encodestring(raw).replace(b"\n", b"\r\n")
        cte = "quoted-printable"
    else:
        body = raw.replace(b"\n", b"\r\n")
        cte = "7bit" if text.isascii() and not smtputf8 else "8bit"
    return _Part(
        [("Content-Type", f"text/{subtype}; charset={charset}"), ("Content-Transfer-Encoding", cte)], body
    )


def _sniff(data: bytes) -> str:
    """A content type from the first bytes, for files sent without one."""
    head = data[:512]
    magic = [
        (b"%PDF-", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"PK\x03\x04", "application/zip"),
        (b"\x1f\x8b", "application/gzip"),
    ]
    for prefix, ctype in magic:
        if head.startswith(prefix):
            return ctype
    try:
        text = head.decode()
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c >= " " or c in "\t\r\n" for c in text):
        if text.lstrip().lower().startswith(("<!doctype html", "<html")):
            return "text/html; charset=utf-8"
        return "text/plain; charset=utf-8"
    # mox leaves the header empty here (spec 03 §5.4 quirk); the generic type is what it means.
    return "application/octet-stream"


def _file_part(name: str, ctype: str, cid: str, data: bytes, disposition: str) -> _Part:
    _check_text("file name", name)
    _check_text("content-id", cid)
    # A line break here would end the header and start another of the caller's choosing.
    _check_text("content-type", ctype)
    headers = [("Content-Type", ctype or _sniff(data))]
    if name:
        # RFC 2231 §4 for names that are not plain ASCII.
        if name.isascii() and '"' not in name and "\\" not in name:
            headers.append(("Content-Disposition", f'{disposition}; filename="{name}"'))
        else:
            headers.append(
                ("Content-Disposition", f"{disposition}; filename*={encode_rfc2231(name, 'utf-8')}")
            )
    else:
        headers.append(("Content-Disposition", disposition))
    if cid:
        headers.append(("Content-ID", cid))
    headers.append(("Content-Transfer-Encoding", "base64"))
    # RFC 2045 §6.8: lines of at most 76 characters, each ending in CRLF; an empty file has no line.
    b64 = base64.b64encode(data)
    body = b"".join(b64[i : i + 76] + b"\r\n" for i in range(0, len(b64), 76))
    return _Part(headers, body)


def _decode_file(f: File) -> bytes:
    try:
        return base64.b64decode(f.Data, validate=True)
    except (binascii.Error, ValueError):
        raise WebAPIError("user", f"file {f.Name!r}: data is not valid base64") from None


def _multipart(subtype: str, parts: list[_Part], boundary: str) -> _Part:
    """A multipart entity whose parts keep their content whole, as mox's (Go's multipart writer) do.

    RFC 2046 §5.1.1: the CRLF before a delimiter line belongs to the delimiter, not to the part before it.
    Every part's body ends in CRLF (text, base64 lines, a nested multipart's close), so each delimiter
    after the first, and the close, brings a CRLF of its own.
    """
    body = b""
    for i, p in enumerate(parts):
        body += b"\r\n" if i else b""
        body += f"--{boundary}\r\n".encode() + _render_headers(p.headers) + b"\r\n" + p.body
    body += f"\r\n--{boundary}--\r\n".encode()
    return _Part([("Content-Type", f'multipart/{subtype}; boundary="{boundary}"')], body)


def _render_headers(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers).encode()


# --- Composition ------------------------------------------------------------------------------------


def compose_send(
    req: SendRequest,
    *,
    login_address: str,
    account: AccountIdentity,
    hostname: str,
    now: datetime,
    max_message_size: int,
    random_token: Callable[[], str],
    inline_uploads: list[UploadedFile],
    attached_uploads: list[UploadedFile],
) -> ComposedMessage:
    """Check a Send request and compose its message, in the order and with the errors of spec 03 §5.4."""
    # 1. A body.
    if not req.Text and not req.HTML:
        raise WebAPIError("missingBody", "text and/or html body required")
    # 2. From defaults to the login address with the account's name.
    froms = req.From or [NameAddress(Name=account.full_name, Address=login_address)]
    if len(froms) > 1:
        raise WebAPIError("multipleFrom", "multiple from addresses not allowed")
    # 3. Parse addresses.
    sender = _parse(froms[0], "from")
    to = [(na, _parse(na, "to")) for na in req.To]
    cc = [(na, _parse(na, "cc")) for na in req.CC]
    bcc = [(na, _parse(na, "bcc")) for na in req.BCC]
    # 4. From must be the account's.
    check_own_address(sender, account)
    # 5. Recipients.
    recipients = [(na.Address, a) for na, a in to + cc + bcc]
    if not recipients:
        raise WebAPIError("noRecipients", "no recipients")
    check_recipient_count(len(recipients))
    # 6. Rate limits: mox counts only SMTP submissions, which Tempost does not take, so none apply here.
    # 7. SMTPUTF8 when any localpart is non-ASCII.
    reply_to = [(na, _parse(na, "reply-to")) for na in req.ReplyTo]
    smtputf8 = any(a.needs_smtputf8 for a in [sender, *(a for _, a in to + cc + bcc + reply_to)])

    # Checks that do not depend on composition come first, so nothing half-built leaks out.
    _check_text("subject", req.Subject)
    _check_text("message-id", req.MessageID)
    for r in req.References:
        _check_text("references", r)
    if req.MessageID and not (req.MessageID.startswith("<") and req.MessageID.endswith(">")):
        raise WebAPIError("malformedMessageID", "message-id must start with < and end with >")
    for h in req.Headers:
        if len(h) != 2:
            raise WebAPIError("user", "each custom header must be a [name, value] pair")
        name, value = h
        if not name or any(c == ":" or not ("!" <= c <= "~") for c in name):
            raise WebAPIError("user", f"invalid header name {name!r}")
        _check_text(f"header {name}", value)
    future_release, future_release_request = check_future_release(req.FutureRelease, now)
    check_extra(req.Extra)
    # mox marks alternative bodies inline: they are shown, not saved.
    alternative_files = [
        _file_part(f.Name, f.ContentType, f.ContentID, _decode_file(f), "inline")
        for f in req.AlternativeFiles
    ]
    inline = [
        _file_part(f.Name, f.ContentType, f.ContentID, _decode_file(f), "inline") for f in req.InlineFiles
    ] + [_file_part(u.name, u.content_type, u.content_id, u.data, "inline") for u in inline_uploads]
    attached = [
        _file_part(f.Name, f.ContentType, f.ContentID, _decode_file(f), "attachment")
        for f in req.AttachedFiles
    ] + [_file_part(u.name, u.content_type, u.content_id, u.data, "attachment") for u in attached_uploads]

    # 8. Headers, in mox's order.
    message_id = req.MessageID or f"<{random_token()}@{hostname}>"
    hdr = ""
    hdr += _address_header("From", [_mailbox(froms[0].Name, sender, smtputf8)])
    if reply_to:
        hdr += _address_header("Reply-To", [_mailbox(na.Name, a, smtputf8) for na, a in reply_to])
    if to:
        hdr += _address_header("To", [_mailbox(na.Name, a, smtputf8) for na, a in to])
    if cc:
        hdr += _address_header("Cc", [_mailbox(na.Name, a, smtputf8) for na, a in cc])
    if req.Subject:
        subject = _encode_words(req.Subject, smtputf8, "Subject")
        hdr += _fold("Subject", subject) if subject == req.Subject else f"Subject: {subject}\r\n"
    hdr += f"Date: {format_date(req.Date or now)}\r\n"
    hdr += f"Message-Id: {message_id}\r\n"
    if req.References:
        hdr += "References: " + "\r\n\t".join(req.References) + "\r\n"
        hdr += f"In-Reply-To: {req.References[-1]}\r\n"
    hdr += "MIME-Version: 1.0\r\n"
    for name, value in req.Headers:
        hdr += f"{name}: {value}\r\n"
    if not any(name.lower() in ("user-agent", "x-mailer") for name, _ in req.Headers):
        hdr += f"User-Agent: {USER_AGENT}\r\n"

    # 9. Body structure: mixed ⊃ related ⊃ alternative ⊃ text, html, alternative files.
    bodies = [_text_part(t, sub, smtputf8) for t, sub in ((req.Text, "plain"), (req.HTML, "html")) if t]
    bodies += alternative_files
    entity = bodies[0] if len(bodies) == 1 else _multipart("alternative", bodies, _boundary(random_token))
    if inline:
        entity = _multipart("related", [entity, *inline], _boundary(random_token))
    if attached:
        entity = _multipart("mixed", [entity, *attached], _boundary(random_token))

    # 11 and 12, DKIM-Signature and Received, go into the submission's prefix when it is queued.
    data = hdr.encode() + _render_headers(entity.headers) + b"\r\n" + entity.body
    if len(data) > max_message_size:
        raise WebAPIError("messageTooLarge", f"message too large, {len(data)} > {max_message_size} bytes")
    return ComposedMessage(
        data=data,
        message_id=message_id,
        subject=req.Subject,
        sender=sender,
        recipients=recipients,
        has8bit=not data.isascii(),
        smtputf8=smtputf8,
        require_tls=req.RequireTLS,
        future_release=future_release,
        future_release_request=future_release_request,
        extra=dict(req.Extra),
        dkim_domain=sender.domain,
    )


def received_header(
    *,
    hostname: str,
    client_ip: str,
    login: str,
    protocol: str,
    trace_id: str,
    recipients: list[Address],
    smtputf8: bool,
    now: datetime,
) -> bytes:
    """The Received trace field of a webapi submission (RFC 5321 §4.4, spec 03 §5.4 step 12).

    It names the client's address and, in a comment, the login that authenticated. The "for" clause
    appears only for a submission with one recipient: the field is stored once for all of them.
    """
    if ":" in client_ip:
        client = f"[IPv6:{client_ip}]"
    elif client_ip:
        client = f"[{client_ip}]"
    else:
        client = "unknown"
    try:
        who = parse_address(login)
        login = who.unicode if smtputf8 else who.ascii
    except AddressError:
        pass
    comment = "".join("\\" + c if c in "()\\" else c for c in login if c >= " ")
    value = f"from {client} (login {comment}) by {hostname} ({USER_AGENT}) with {protocol} id {trace_id}"
    if len(recipients) == 1:
        value += f" for <{recipients[0].unicode if smtputf8 else recipients[0].ascii}>"
    return _fold("Received", f"{value}; {format_date(now)}").encode()


def _boundary(random_token: Callable[[], str]) -> str:
    return "tempost-" + "".join(c for c in random_token() if c.isalnum())


def _rfc3339(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")
