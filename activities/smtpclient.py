"""One SMTP client session (spec 02 §3) over aiosmtplib, shared by relay and direct delivery.

`open_session` connects, says EHLO, and applies the TLS mode; `transact` runs transactions for a batch of
recipients with per-recipient replies, splitting by the server's LIMITS RCPTMAX and retrying recipients
refused with 452/552 in a new transaction. Errors that end a session are `SessionError`s that say whether
they are permanent and whether they are TLS-class (which decides the plaintext fallback).
"""

from __future__ import annotations

import _ssl
import base64
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from domain.sasl import SASLError, Scram, choose_mechanism, make_client

TLSMode = Literal["immediate", "requiredstarttls", "opportunistic", "skip"]


@dataclass(frozen=True)
class Envelope:
    """One message for one recipient domain: reverse path, forward paths and the bytes."""

    mail_from: str
    recipients: list[str]
    data: bytes
    has8bit: bool = False
    smtputf8: bool = False
    # The recipient domain in ASCII (or an address literal), for direct delivery.
    domain: str = ""
    # 1 for the first attempt; some rules only apply then (spec 02 §1.5 step 8).
    attempt: int = 1
    # The RequireTLS tri-state (spec 02 §2.2): True demands verified TLS and REQUIRETLS (RFC 8689),
    # False is `TLS-Required: No` (RFC 8689 §5), None applies the domain's policies.
    require_tls: bool | None = None
    # Direct delivery's memory of connected IPs per host (spec 02 §1.5); updated in place.
    dialed: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RcptReply:
    """The next hop's verdict on one recipient."""

    success: bool
    permanent: bool = False
    code: int = 0
    secode: str = ""
    error: str = ""


OnAccepted = Callable[[list[int], str], Awaitable[None]]


class SessionError(Exception):
    """A failure that ends a session or transaction for every recipient still in it."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        code: int = 0,
        secode: str = "",
        tls: bool = False,
        dane: bool = False,
    ) -> None:
        super().__init__(message)
        self.permanent, self.code, self.secode, self.tls = permanent, code, secode, tls
        # Raised where DANE applied: no plaintext fallback then (RFC 7672 §2.2).
        self.dane = dane

    def reply(self) -> RcptReply:
        """The same failure as a recipient's reply."""
        return RcptReply(False, self.permanent, self.code, self.secode, str(self))


_ENHANCED = re.compile(r"^([245])\.(\d{1,3}\.\d{1,3})\b\s*")


def split_enhanced(text: str, code: int = 0) -> tuple[str, str]:
    """Split an RFC 3463 enhanced status code off a reply text: ("1.1", rest), without the class digit.

    The class digit must equal the reply's first digit when a code is given (spec 02 §3.6).
    """
    m = _ENHANCED.match(text)
    if not m or (code and m.group(1) != str(code)[0]):
        return "", text
    return m.group(2), text[m.end() :]


def reply_error(code: int, text: str, *, permanent: bool | None = None, tls: bool = False) -> SessionError:
    """A SessionError from an SMTP reply; permanent iff 5xx unless told otherwise."""
    secode, _ = split_enhanced(text, code)
    perm = 500 <= code < 600 if permanent is None else permanent
    return SessionError(f"{code} {text}".strip(), permanent=perm, code=code, secode=secode, tls=tls)


def rcpt_max(client: aiosmtplib.SMTP) -> int:
    """RCPTMAX from the LIMITS extension (RFC 9422 §5), or 0 for no limit; a malformed list counts as none."""
    raw = client.esmtp_extensions.get("limits", "")
    seen: dict[str, str] = {}
    for pair in raw.split():
        name, eq, value = pair.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or ";" in value or name.upper() in seen:
            return 0
        seen[name.upper()] = value
    v = seen.get("RCPTMAX", "")
    return int(v) if v.isdigit() and len(v) <= 6 and int(v) > 0 else 0


async def open_session(
    host: str,
    port: int,
    *,
    ehlo: str,
    mode: TLSMode,
    tls_context: ssl.SSLContext,
    server_name: str | None,
    connect_timeout: float,
    command_timeout: float,
    verify_chain: Callable[[list[bytes]], str | None] | None = None,
    sock: socket.socket | None = None,
) -> aiosmtplib.SMTP:
    """Connect to host (an IP or name) and get the session ready for transactions in the given TLS mode.

    `server_name` is the TLS SNI and the name verified when the context checks names.
    """
    client = aiosmtplib.SMTP(
        hostname=None if sock is not None and mode != "immediate" else host,
        port=None if sock is not None else port,
        sock=sock,
        local_hostname=ehlo,
        timeout=command_timeout,
        use_tls=mode == "immediate",
        start_tls=False,
        tls_context=tls_context if mode == "immediate" else None,
        validate_certs=tls_context.verify_mode != ssl.CERT_NONE,
    )
    try:
        await client.connect(timeout=connect_timeout)
    except aiosmtplib.SMTPConnectResponseError as err:
        raise reply_error(err.code, err.message) from None
    except ssl.SSLError as err:
        raise SessionError(f"tls handshake: {err}", tls=True) from None
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError as err:
        if err.code not in (500, 501, 502, 503, 504):
            _close(client)
            raise reply_error(err.code, err.message) from None
        try:
            await client.helo()
        except aiosmtplib.SMTPHeloError as err2:
            _close(client)
            raise reply_error(err2.code, err2.message) from None
    if mode == "requiredstarttls" or (mode == "opportunistic" and client.supports_extension("starttls")):
        if not client.supports_extension("starttls"):
            # Required TLS is asked for even when not announced, as mox does (spec 02 §10 scenario 40): a
            # server may support it without saying so, and a refusal is then a clear reply.
            client.esmtp_extensions["starttls"] = ""
        try:
            await client.starttls(tls_context=tls_context, server_hostname=server_name)
        except aiosmtplib.SMTPResponseException as err:
            _close(client)
            # A refused STARTTLS is TLS-class; permanent only for a 5xx (spec 02 §2.1).
            raise reply_error(err.code, err.message, tls=True) from None
        except aiosmtplib.SMTPException as err:
            _close(client)
            if "not supported" in str(err).lower():
                raise SessionError("server does not offer STARTTLS", tls=True) from None
            raise SessionError(f"starttls: {err}", tls=True) from None
        except (ssl.SSLError, ssl.CertificateError) as err:
            _close(client)
            raise SessionError(f"tls handshake: {err}", tls=True) from None
        except (OSError, TimeoutError) as err:
            _close(client)
            cause = err.__cause__ or err.__context__
            if isinstance(cause, ssl.SSLError) or isinstance(err, ssl.SSLError):
                raise SessionError(f"tls handshake: {cause or err}", tls=True) from None
            raise SessionError(f"starttls: {type(err).__name__}: {err}", tls=True) from None
        if verify_chain is not None:
            problem = verify_chain(peer_chain(client))
            if problem:
                _close(client)
                raise SessionError(problem, tls=True, dane=True)
        await client.ehlo()
    return client


def peer_chain(client: aiosmtplib.SMTP) -> list[bytes]:
    """The certificates the server presented, leaf first, as DER."""
    ssl_object = client.get_transport_info("ssl_object")
    if ssl_object is None:
        return []
    # Python 3.11 exposes the presented chain only on the private object (public from 3.13).
    inner = getattr(ssl_object, "_sslobj", None)
    getter = getattr(inner, "get_unverified_chain", None)
    if getter is not None:
        chain = getter() or []
        return [c.public_bytes(_ssl.ENCODING_DER) for c in chain]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _close(client: aiosmtplib.SMTP) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001, S110 - closing a broken connection may fail in any way
        pass


async def close_session(client: aiosmtplib.SMTP) -> None:
    """QUIT politely when the connection is still usable, then close it."""
    if client.is_connected:
        try:
            await client.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            _close(client)


def _channel_binding(client: aiosmtplib.SMTP) -> tuple[str, bytes] | None:
    """tls-unique data for SCRAM -PLUS on TLS 1.2; TLS 1.3's tls-exporter is not reachable from Python."""
    ssl_object = client.get_transport_info("ssl_object")
    if ssl_object is None:
        return None
    data = ssl_object.get_channel_binding("tls-unique") if ssl_object.version() != "TLSv1.3" else None
    return ("tls-unique", data) if data else None


async def authenticate(client: aiosmtplib.SMTP, username: str, password: str, mechanisms: list[str]) -> None:
    """AUTH with the first configured mechanism the server offers (spec 02 §5.2, RFC 4954)."""
    tls = client.get_transport_info("ssl_object") is not None
    binding = _channel_binding(client)
    offered = client.esmtp_extensions.get("auth", "").split()
    chosen = choose_mechanism(mechanisms, offered, tls=tls, binding=binding)
    if chosen is None:
        raise SessionError(
            f"no common authentication mechanism (server offers {' '.join(offered)})", permanent=True
        )
    mech, signal = chosen
    sasl = make_client(mech, username, password, binding=binding, signal_binding=signal)
    first = sasl.start()
    cmd = [b"AUTH", mech.encode()]
    if first is not None:
        cmd.append(base64.b64encode(first) or b"=")
    resp = await client.execute_command(*cmd)
    while resp.code == 334:
        try:
            challenge = base64.b64decode(resp.message, validate=True)
            answer = sasl.step(challenge)
        except (ValueError, SASLError) as err:
            abort = await client.execute_command(b"*")
            raise SessionError(f"authentication aborted: {err} ({abort.code} {abort.message})") from None
        resp = await client.execute_command(base64.b64encode(answer) if answer else b"")
    if resp.code != 235:
        raise reply_error(resp.code, resp.message)
    if isinstance(sasl, Scram) and not sasl.done:
        # RFC 5802 §3: success without the server's proof would let an impostor through.
        raise SessionError("authentication: server did not prove it knows the password")


def _check_capabilities(client: aiosmtplib.SMTP, env: Envelope) -> list[str]:
    """MAIL FROM parameters, after the pre-transaction checks of spec 02 §3.3."""
    options: list[str] = []
    size_ext = client.esmtp_extensions.get("size")
    eightbit = client.supports_extension("8bitmime")
    if env.has8bit and not eightbit:
        raise SessionError("next hop does not support 8BITMIME, which the message needs")
    if env.smtputf8 and not client.supports_extension("smtputf8"):
        # RFC 6531 §3.4: without SMTPUTF8 at the next hop the message cannot be sent as is.
        raise SessionError("next hop does not support SMTPUTF8, which the message needs")
    if env.require_tls and not client.supports_extension("requiretls"):
        raise SessionError("next hop does not support REQUIRETLS", code=554, secode="7.30")
    if size_ext is not None:
        limit = int(size_ext) if size_ext.strip().isdigit() else 0
        if limit > 0 and len(env.data) > limit:
            raise SessionError(
                f"message too large for next hop ({len(env.data)} > {limit} bytes)", permanent=True
            )
        options.append(f"SIZE={len(env.data)}")
    if eightbit:
        options.append("BODY=8BITMIME" if env.has8bit else "BODY=7BIT")
    if env.smtputf8:
        options.append("SMTPUTF8")
    if env.require_tls:
        options.append("REQUIRETLS")
    return options


async def _one_transaction(
    client: aiosmtplib.SMTP, env: Envelope, rcpts: list[int], options: list[str], on_accepted: OnAccepted
) -> tuple[dict[int, RcptReply], list[int]]:
    """One MAIL/RCPT.../DATA; returns replies by recipient index and the indices to retry in a new one."""
    try:
        await client.mail(env.mail_from, options=options, encoding="utf-8" if env.smtputf8 else "ascii")
    except aiosmtplib.SMTPResponseException as err:
        raise reply_error(err.code, err.message) from None
    replies: dict[int, RcptReply] = {}
    accepted: list[int] = []
    retry: list[int] = []
    for n, i in enumerate(rcpts):
        try:
            await client.rcpt(env.recipients[i], encoding="utf-8" if env.smtputf8 else "ascii")
            accepted.append(i)
        except aiosmtplib.SMTPRecipientRefused as err:
            if err.code in (452, 552) and n > 0:
                # RFC 5321 §4.5.3.1.10: too many recipients for this transaction; the rest go in a new one.
                retry = rcpts[n:]
                break
            # 552 on RCPT is temporary (RFC 5321 §4.5.3.1.10), other 5xx permanent.
            replies[i] = reply_error(
                err.code, err.message, permanent=500 <= err.code < 600 and err.code != 552
            ).reply()
    if not accepted:
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        if len(rcpts) == 1 or replies:
            return replies, retry
        raise SessionError("no recipients accepted")
    try:
        resp = await client.data(env.data)
    except aiosmtplib.SMTPDataError as err:
        fail = reply_error(err.code, err.message).reply()
        return {**replies, **dict.fromkeys(accepted, fail)}, retry
    # Journal before anything else can go wrong (DESIGN §5).
    await on_accepted(accepted, f"{resp.code} {resp.message}")
    secode, _ = split_enhanced(resp.message, resp.code)
    ok = RcptReply(True, False, resp.code, secode, "")
    return {**replies, **dict.fromkeys(accepted, ok)}, retry


async def transact(client: aiosmtplib.SMTP, env: Envelope, on_accepted: OnAccepted) -> list[RcptReply]:
    """Deliver env over a ready session: as many transactions as RCPTMAX and 452 replies need.

    Raises SessionError when the first transaction fails as a whole (the caller may try another host);
    later transaction-level failures become the replies of their recipients.
    """
    options = _check_capabilities(client, env)
    limit = rcpt_max(client)
    pending = list(range(len(env.recipients)))
    replies: dict[int, RcptReply] = {}
    first = True
    while pending:
        n = min(len(pending), limit) if limit else len(pending)
        batch, rest = pending[:n], pending[n:]
        try:
            got, retry = await _one_transaction(client, env, batch, options, on_accepted)
        except SessionError as err:
            if first and not rest:
                raise
            got, retry = dict.fromkeys(batch, err.reply()), []
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            failure = RcptReply(False, False, 0, "", f"{type(err).__name__}: {err}")
            if first and not rest and not replies:
                raise SessionError(str(failure.error)) from None
            for i in pending:
                replies.setdefault(i, failure)
            break
        replies.update(got)
        first = False
        if retry and len(retry) == len(batch):
            # Nothing moved: do not loop forever on a server that refuses every recipient with 452.
            for i in retry:
                replies[i] = RcptReply(False, False, 452, "", "452 too many recipients")
            retry = []
        pending = retry + rest
    return [replies[i] for i in range(len(env.recipients))]
