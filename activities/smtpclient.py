"""One SMTP client session (spec 02 §3) on asyncio streams, shared by relay and direct delivery.

`open_session` connects, reads the greeting, says EHLO and applies the TLS mode; `transact` runs the
transactions for a batch of recipients with per-recipient replies, pipelined when the server announces
PIPELINING (RFC 2920), split by the server's LIMITS RCPTMAX, and retrying recipients refused with 452/552
in a new transaction on the same connection. Every failure is a `SessionError` that says whether it is
permanent and whether it is TLS-class (which decides the plaintext fallback).

Tempost speaks SMTP itself rather than through a library because a pipelined burst has to be written at
once and its replies read in order from one buffer, and because spec 02 §3.6 fixes how strictly replies
are parsed and when a connection is too confused to send even QUIT.
"""

from __future__ import annotations

import _ssl
import asyncio
import base64
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from activities.tlsbinding import channel_binding
from domain.attempt import RcptReply
from domain.sasl import SASLError, Scram, choose_mechanism, make_client

TLSMode = Literal["immediate", "requiredstarttls", "opportunistic", "skip"]

# Spec 02 §1.6: a TLS handshake may take a minute; the QUIT reply is awaited 5 s at most.
_HANDSHAKE_TIMEOUT = 60.0
_QUIT_TIMEOUT = 5.0
# A reply longer than this is not a reply but a peer that never ends its lines.
_MAX_REPLY_LINES = 256
_MAX_LINE = 64 * 1024
# DATA is written in pieces so the write timeout bounds each piece, not the whole message.
_DATA_CHUNK = 64 * 1024


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
        command: str = "",
    ) -> None:
        super().__init__(message)
        self.permanent, self.code, self.secode, self.tls = permanent, code, secode, tls
        # Raised for a host DANE applies to: no plaintext fallback then (RFC 7672 §2.2). Set by direct
        # delivery, which alone knows the host's TLSA records.
        self.dane = False
        # The command whose reply this is ("mailfrom", "rcptto", "data", ...), for operators.
        self.command = command
        # Set by open_session for failures after connecting, for TLS reports (spec 02 §6).
        self.local_ip = ""
        self.remote_helo = ""

    def reply(self) -> RcptReply:
        """The same failure as a recipient's reply."""
        return RcptReply(False, self.permanent, self.code, self.secode, str(self))


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: the code and the text of each line without the code."""

    code: int
    lines: list[str]
    # The enhanced status code without its class digit ("1.1"), when the server announces them; the
    # first line still starts with it.
    secode: str = ""

    @property
    def text(self) -> str:
        """The reply as one string, as reported to operators and in DSNs."""
        return f"{self.code} {' '.join(self.lines)}".strip()

    def error(self, command: str, *, permanent: bool | None = None, tls: bool = False) -> SessionError:
        """This reply as a failure of `command`: permanent iff 5xx unless told otherwise."""
        perm = 500 <= self.code < 600 if permanent is None else permanent
        return SessionError(
            self.text, permanent=perm, code=self.code, secode=self.secode, tls=tls, command=command
        )


_ENHANCED = re.compile(r"^([245])\.(\d{1,3}\.\d{1,3})\b\s*")


def split_enhanced(text: str, code: int = 0) -> tuple[str, str]:
    """Split an RFC 3463 enhanced status code off a reply text: ("1.1", rest), without the class digit.

    The class digit must equal the reply's first digit when a code is given (spec 02 §3.6).
    """
    m = _ENHANCED.match(text)
    if not m or (code and m.group(1) != str(code)[0]):
        return "", text
    return m.group(2), text[m.end() :]


def parse_rcpt_max(limits: str) -> int:
    """RCPTMAX from a LIMITS parameter list (RFC 9422 §5), or 0 for none; a malformed list counts as none."""
    seen: dict[str, str] = {}
    for pair in limits.split():
        name, eq, value = pair.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or ";" in value or name.upper() in seen:
            return 0
        seen[name.upper()] = value
    v = seen.get("RCPTMAX", "")
    return int(v) if v.isdigit() and len(v) <= 6 and int(v) > 0 else 0


_REPLY_LINE = re.compile(rb"^(\d{3})([ -]|$)(.*)$", re.DOTALL)
_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class SMTPConnection:
    """A client connection to one SMTP server, from greeting to QUIT.

    After a read or write failure or a malformed reply the connection is *botched* (spec 02 §3.6): the
    server's state is unknown, so no further command, not even QUIT, is sent.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, command_timeout: float
    ) -> None:
        self._reader, self._writer = reader, writer
        self._timeout = command_timeout
        # EHLO keywords, uppercased, with their parameters.
        self.extensions: dict[str, str] = {}
        # What the greeting said after its code, kept for TLS reports.
        self.remote_helo = ""
        self.botched = False
        # A MAIL FROM was accepted and its transaction has not ended: RSET before the next one.
        self.needs_rset = False
        # TLS has just been started and nothing read over it yet.
        self._fresh_tls = False
        # The name the connection was made for (an MX host, a relay); set by open_session.
        self.remote_name = ""
        # For the connection cache's limits (activities/conncache.py): when the session was set up and how
        # many times it has been taken from the cache for another transaction.
        self.opened_at = time.monotonic()
        self.reuses = 0
        # The server said 421: it is closing the channel (RFC 5321 §3.8), whatever else it still answers.
        self.server_closing = False
        # A transaction failed as a whole (DATA refused, a later transaction's error): the server's view of
        # the session is in doubt, so it carries no other message.
        self.transaction_failed = False

    @property
    def local_ip(self) -> str:
        """Our address on this connection."""
        sockname = self._writer.get_extra_info("sockname")
        return str(sockname[0]) if sockname else ""

    @property
    def relay(self) -> str:
        """Who we are talking to, as a mail log names it: "name[ip]:port", then the TLS version if any."""
        peer = self._writer.get_extra_info("peername")
        ip, port = (str(peer[0]), peer[1]) if peer else ("", 0)
        name = self.remote_name if self.remote_name and self.remote_name != ip else ""
        where = f"{name}[{ip}]:{port}" if name else f"[{ip}]:{port}"
        tls = self.ssl_object.version() if self.ssl_object is not None else None
        return f"{where} {tls}" if tls else where

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS state once TLS is active, else None."""
        obj = self._writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    @property
    def reusable(self) -> bool:
        """Whether the session may carry another transaction: every reply read, nothing refused as a whole,
        no 421, no error; the cache takes only such sessions."""
        failed = self.botched or self.server_closing or self.transaction_failed
        return not failed and not self._writer.is_closing()

    def supports(self, keyword: str) -> bool:
        """Whether the last EHLO announced the extension."""
        return keyword.upper() in self.extensions

    # Reading and writing. Every failure botches the connection.

    async def _read_line(self, command: str) -> bytes:
        try:
            line = await asyncio.wait_for(self._reader.readuntil(b"\n"), self._timeout)
        except asyncio.IncompleteReadError as err:
            self.botched = True
            what = "unexpected eof" if not err.partial else "connection closed mid-line"
            raise SessionError(f"reading reply to {command}: {what}", command=command) from None
        except asyncio.LimitOverrunError:
            self.botched = True
            raise SessionError(f"reading reply to {command}: line too long", command=command) from None
        except TimeoutError:
            self.botched = True
            raise SessionError(f"reading reply to {command}: timeout", command=command) from None
        except ssl.SSLError as err:
            self.botched = True
            # A server that rejects the TLS session after the handshake (e.g. wanting a client certificate
            # under TLS 1.3) says so in its first record: that is a TLS failure, with the plaintext
            # fallback rules of one (spec 02 §3.1 step 5). Later TLS errors are plain read errors.
            tls = self._fresh_tls and err.reason != "SSLV3_ALERT_CLOSE_NOTIFY"
            raise SessionError(f"reading reply to {command}: {err}", command=command, tls=tls) from None
        except OSError as err:
            self.botched = True
            raise SessionError(f"reading reply to {command}: {err}", command=command) from None
        self._fresh_tls = False
        return line.rstrip(b"\r\n")

    async def read_reply(self, command: str, *, enhanced: bool = True) -> Reply:
        """Read one possibly multi-line reply, strictly as spec 02 §3.6 says.

        Enhanced status codes are taken only when the server announced ENHANCEDSTATUSCODES, and never for
        the greeting or EHLO/HELO (`enhanced=False`).
        """
        code = 0
        lines: list[str] = []
        while True:
            raw = await self._read_line(command)
            m = _REPLY_LINE.match(raw)
            if m is None or (code and int(m.group(1)) != code) or len(lines) >= _MAX_REPLY_LINES:
                self.botched = True
                shown = raw[:200].decode("utf-8", "replace")
                raise SessionError(f"malformed reply to {command}: {shown!r}", command=command)
            code = int(m.group(1))
            lines.append(m.group(3).decode("utf-8", "replace").strip())
            if m.group(2) != b"-":
                break
        if code == 421:
            self.server_closing = True
        secode = ""
        if enhanced and self.supports("ENHANCEDSTATUSCODES"):
            # The text keeps the enhanced code: operators and DSNs show the reply as the server wrote it.
            secode, _ = split_enhanced(lines[0], code)
        return Reply(code, lines, secode)

    async def write(self, data: bytes, command: str) -> None:
        """Write and flush, within the write timeout (spec 02 §1.6, applied after STARTTLS too)."""
        if self.botched:
            raise SessionError("connection botched by an earlier error", command=command)
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self._timeout)
        except TimeoutError:
            self.botched = True
            raise SessionError(f"writing {command}: timeout", command=command) from None
        except (OSError, ssl.SSLError, RuntimeError) as err:
            self.botched = True
            raise SessionError(f"writing {command}: {err}", command=command) from None

    async def command(self, line: str, command: str, *, enhanced: bool = True, utf8: bool = False) -> Reply:
        """Send one command line and read its reply."""
        await self.write(line.encode("utf-8" if utf8 else "ascii") + b"\r\n", command)
        return await self.read_reply(command, enhanced=enhanced)

    # Session setup.

    async def greeting(self) -> None:
        """Read the server's greeting, which must be 220 (spec 02 §3.1 step 2)."""
        reply = await self.read_reply("greeting", enhanced=False)
        if reply.code != 220:
            raise reply.error("greeting")
        self.remote_helo = reply.lines[0]

    async def hello(self, name: str, *, helo_fallback: bool) -> None:
        """EHLO, falling back to HELO where the server does not know EHLO (RFC 5321 §3.2)."""
        reply = await self.command(f"EHLO {name}", "ehlo", enhanced=False)
        if reply.code in (500, 501, 502, 503, 504) and helo_fallback:
            reply = await self.command(f"HELO {name}", "helo", enhanced=False)
            if reply.code != 250:
                raise reply.error("helo")
            self.extensions = {}
            return
        if reply.code != 250:
            raise reply.error("ehlo")
        # Capabilities are those of the latest EHLO only; what a server said before STARTTLS may have been
        # injected by an attacker (spec 02 §9 recommends resetting them).
        self.extensions = {}
        for ext in reply.lines[1:]:
            keyword, _, params = ext.strip().partition(" ")
            keyword = keyword.upper()
            if keyword == "SIZE" and not params:
                continue  # spec 02 §3.1 step 4: a bare SIZE is not recognized
            self.extensions[keyword] = params.strip()

    async def starttls(self, context: ssl.SSLContext, server_name: str | None) -> None:
        """STARTTLS (RFC 3207) and the handshake; a refusal or handshake failure is TLS-class."""
        reply = await self.command("STARTTLS", "starttls")
        if reply.code != 220:
            # A refused STARTTLS is TLS-class; permanent only for a 5xx (spec 02 §2.1).
            raise reply.error("starttls", tls=True)
        try:
            await self._writer.start_tls(
                context, server_hostname=server_name or "", ssl_handshake_timeout=_HANDSHAKE_TIMEOUT
            )
            self._fresh_tls = True
        except (ssl.SSLError, ssl.CertificateError) as err:
            self.botched = True
            raise SessionError(f"tls handshake: {err}", tls=True, command="starttls") from None
        except (OSError, TimeoutError) as err:
            self.botched = True
            raise SessionError(
                f"tls handshake: {type(err).__name__}: {err}", tls=True, command="starttls"
            ) from None

    async def reset(self, timeout: float) -> None:
        """RSET within `timeout`, requiring 250 (RFC 5321 §4.1.1.5): how a session taken from the cache
        shows it is still alive and in sync before it carries a transaction, as Postfix checks."""
        saved, self._timeout = self._timeout, min(self._timeout, timeout)
        try:
            reply = await self.command("RSET", "rset")
        finally:
            self._timeout = saved
        if reply.code != 250:
            raise reply.error("rset")
        self.needs_rset = False

    # Ending.

    async def close(self) -> None:
        """QUIT when the connection is still in a known state, then close the TCP connection.

        The socket is aborted rather than shut down through TLS, so a peer that never answers the
        close-notify cannot hold the worker (spec 02 §3.6).
        """
        if not self.botched and not self._writer.is_closing():
            try:
                self._writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self._writer.drain(), _QUIT_TIMEOUT)
                await asyncio.wait_for(self._reader.readuntil(b"\n"), _QUIT_TIMEOUT)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection without a word, for a session that failed while being set up."""
        self.botched = True
        self._writer.transport.abort()


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
) -> SMTPConnection:
    """Connect to host (an IP or name) and get the session ready for transactions in the given TLS mode.

    `server_name` is the TLS SNI and the name verified when the context checks names. Failing to reach the
    server raises OSError or TimeoutError; everything after the TCP connection is a SessionError.
    """
    immediate = mode == "immediate"
    try:
        if sock is not None:
            opened = asyncio.open_connection(
                sock=sock,
                ssl=tls_context if immediate else None,
                server_hostname=(server_name or "") if immediate else None,
                limit=_MAX_LINE,
            )
        else:
            opened = asyncio.open_connection(
                host,
                port,
                ssl=tls_context if immediate else None,
                server_hostname=(server_name or "") if immediate else None,
                limit=_MAX_LINE,
            )
        reader, writer = await asyncio.wait_for(opened, connect_timeout)
    except (ssl.SSLError, ssl.CertificateError) as err:
        # Implicit TLS (relay only): a handshake failure is a plain temporary error (spec 02 §5.1 step 3).
        raise SessionError(f"tls handshake: {err}", tls=True) from None
    conn = SMTPConnection(reader, writer, command_timeout=command_timeout)
    conn.remote_name = server_name or host
    try:
        await conn.greeting()
        await conn.hello(ehlo, helo_fallback=True)
        if mode == "requiredstarttls" or (mode == "opportunistic" and conn.supports("STARTTLS")):
            # Required TLS is asked for even when not announced, as mox does (spec 02 §10 scenario 40): a
            # server may support it without saying so, and a refusal is then a clear reply.
            await conn.starttls(tls_context, server_name)
            if verify_chain is not None:
                problem = verify_chain(peer_chain(conn))
                if problem:
                    raise SessionError(problem, tls=True)
            await conn.hello(ehlo, helo_fallback=False)
    except SessionError as err:
        err.local_ip, err.remote_helo = conn.local_ip, conn.remote_helo
        conn.abort()
        raise
    except BaseException:
        conn.abort()
        raise
    return conn


def peer_chain(conn: SMTPConnection) -> list[bytes]:
    """The certificates the server presented, leaf first, as DER."""
    ssl_object = conn.ssl_object
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


async def authenticate(conn: SMTPConnection, username: str, password: str, mechanisms: list[str]) -> None:
    """AUTH with the first configured mechanism the server offers (spec 02 §5.2, RFC 4954)."""
    binding = channel_binding(conn.ssl_object)
    offered = conn.extensions.get("AUTH", "").split()
    chosen = choose_mechanism(mechanisms, offered, tls=conn.ssl_object is not None, binding=binding)
    if chosen is None:
        raise SessionError(
            f"no common authentication mechanism (server offers {' '.join(offered)})", permanent=True
        )
    mech, signal = chosen
    sasl = make_client(mech, username, password, binding=binding, signal_binding=signal)
    first = sasl.start()
    line = f"AUTH {mech}"
    if first is not None:
        line += " " + (base64.b64encode(first).decode() or "=")
    # Credentials never appear in errors: only replies are quoted.
    reply = await conn.command(line, "auth")
    while reply.code == 334:
        try:
            if len(reply.lines) != 1:
                raise SASLError("multi-line challenge")
            challenge = base64.b64decode(reply.lines[0], validate=True)
            answer = sasl.step(challenge)
        except (ValueError, SASLError) as err:
            abort = await conn.command("*", "auth")
            raise SessionError(f"authentication aborted: {err} ({abort.text})", command="auth") from None
        reply = await conn.command(base64.b64encode(answer).decode() if answer else "", "auth")
    if reply.code != 235:
        raise reply.error("auth")
    if isinstance(sasl, Scram) and not sasl.done:
        # RFC 5802 §3: success without the server's proof would let an impostor through.
        raise SessionError("authentication: server did not prove it knows the password", command="auth")


def _check_capabilities(conn: SMTPConnection, env: Envelope) -> list[str]:
    """MAIL FROM parameters, after the pre-transaction checks of spec 02 §3.3 (in its order)."""
    if env.has8bit and not conn.supports("8BITMIME"):
        raise SessionError("next hop does not support 8BITMIME, which the message needs")
    if env.smtputf8 and not conn.supports("SMTPUTF8"):
        # RFC 6531 §3.4: without SMTPUTF8 at the next hop the message cannot be sent as is.
        raise SessionError("next hop does not support SMTPUTF8, which the message needs")
    if env.require_tls and not conn.supports("REQUIRETLS"):
        raise SessionError("next hop does not support REQUIRETLS", code=554, secode="7.30")
    options: list[str] = []
    if conn.supports("SIZE"):
        raw = conn.extensions["SIZE"].split()[0] if conn.extensions["SIZE"] else ""
        # An unparsable limit means "SIZE supported, no limit" (spec 02 §3.1 step 4).
        limit = int(raw) if raw.isdigit() else 0
        if limit > 0 and len(env.data) > limit:
            raise SessionError(
                f"message too large for next hop ({len(env.data)} > {limit} bytes)", permanent=True
            )
        options.append(f"SIZE={len(env.data)}")
    if conn.supports("8BITMIME"):
        options.append("BODY=8BITMIME" if env.has8bit else "BODY=7BIT")
    if env.smtputf8:
        options.append("SMTPUTF8")
    if env.require_tls:
        options.append("REQUIRETLS")
    return options


def _wire_data(data: bytes) -> bytes:
    """The message as DATA content (RFC 5321 §4.5.2): dot-stuffed and ending in CRLF "." CRLF.

    A bare CR or LF would be read differently by different servers, so such a message is refused before
    the transaction starts. A missing final CRLF is added, which changes no DKIM body hash (RFC 6376 §3.4).
    """
    if _BARE_CR_OR_LF.search(data):
        raise SessionError("message has a bare CR or LF; only CRLF line endings can be sent", permanent=True)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = re.sub(rb"(?m)^\.", b"..", data)
    return stuffed + b".\r\n"


def _rcpt_reply(reply: Reply) -> RcptReply:
    """A refused recipient: permanent iff 5xx, except 552, which RFC 5321 §4.5.3.1.10 makes temporary."""
    err = reply.error("rcptto", permanent=500 <= reply.code < 600 and reply.code != 552)
    return err.reply()


_ACCEPTED = (250, 251)
_TOO_MANY = (452, 552)


@dataclass
class _Transaction:
    """What one MAIL…DATA exchange yields: replies by recipient index and the indices for a new one."""

    replies: dict[int, RcptReply] = field(default_factory=dict)
    retry: list[int] = field(default_factory=list)


async def _send_data(
    conn: SMTPConnection, wire: bytes, accepted: list[int], on_accepted: OnAccepted, out: _Transaction
) -> None:
    """The content and the final reply; the transaction ends here whatever the reply."""
    for start in range(0, len(wire), _DATA_CHUNK):
        await conn.write(wire[start : start + _DATA_CHUNK], "data")
    reply = await conn.read_reply("data")
    conn.needs_rset = False
    if reply.code != 250:
        conn.transaction_failed = True
        fail = reply.error("data").reply()
        out.replies.update(dict.fromkeys(accepted, fail))
        return
    # Journal before anything else can go wrong (DESIGN §5).
    await on_accepted(accepted, reply.text)
    ok = RcptReply(True, False, reply.code, reply.secode, "")
    out.replies.update(dict.fromkeys(accepted, ok))


async def _begin(conn: SMTPConnection) -> None:
    """Get the connection ready for a new transaction (spec 02 §3.3 step 1)."""
    if conn.botched:
        raise SessionError("connection botched by an earlier error")
    if conn.needs_rset:
        reply = await conn.command("RSET", "rset")
        if reply.code != 250:
            raise reply.error("rset")
        conn.needs_rset = False


async def _pipelined(
    conn: SMTPConnection,
    env: Envelope,
    rcpts: list[int],
    mail: str,
    wire: bytes,
    on_accepted: OnAccepted,
) -> _Transaction:
    """MAIL, every RCPT and DATA in one burst, then their replies in order (RFC 2920 §3.1)."""
    utf8 = "utf-8" if env.smtputf8 else "ascii"
    burst = [mail] + [f"RCPT TO:<{env.recipients[i]}>" for i in rcpts] + ["DATA"]
    await conn.write(("\r\n".join(burst) + "\r\n").encode(utf8), "mailfrom")
    reply = await conn.read_reply("mailfrom")
    if reply.code != 250:
        # The reply decides even if the server hangs up after it (spec 02 §3.5). What follows in the burst
        # is answered in a state we cannot know, so the connection is not used again.
        conn.botched = True
        raise reply.error("mailfrom")
    conn.needs_rset = True
    out = _Transaction()
    accepted: list[int] = []
    for n, i in enumerate(rcpts):
        reply = await conn.read_reply("rcptto")
        if reply.code in _ACCEPTED:
            accepted.append(i)
        elif reply.code in _TOO_MANY and n > 0:
            # RFC 5321 §4.5.3.1.10: too many recipients for this transaction; they go in a new one.
            out.retry.append(i)
        else:
            out.replies[i] = _rcpt_reply(reply)
    try:
        data_reply = await conn.read_reply("data")
    except SessionError:
        if accepted:
            raise
        # Every recipient was refused and the server hung up instead of answering DATA: the refusals are
        # the news, not the closed connection (as mox does since 09fcc49).
        return out
    if not accepted:
        if data_reply.code == 354:
            # The server took DATA without recipients; an empty message resynchronizes it, but a server
            # that errs like this gets no further transaction from the cache.
            conn.transaction_failed = True
            await conn.write(b".\r\n", "data")
            await conn.read_reply("data")
            conn.needs_rset = False
        # Each recipient keeps its own refusal rather than a shared "no recipients accepted" (spec 02 §9).
        return out
    if data_reply.code != 354:
        conn.transaction_failed = True
        out.replies.update(dict.fromkeys(accepted, data_reply.error("data").reply()))
        return out
    await _send_data(conn, wire, accepted, on_accepted, out)
    return out


async def _lockstep(
    conn: SMTPConnection,
    env: Envelope,
    rcpts: list[int],
    mail: str,
    wire: bytes,
    on_accepted: OnAccepted,
) -> _Transaction:
    """MAIL, RCPT and DATA one at a time, each waiting for its reply."""
    utf8 = env.smtputf8
    reply = await conn.command(mail, "mailfrom", utf8=utf8)
    if reply.code != 250:
        raise reply.error("mailfrom")
    conn.needs_rset = True
    out = _Transaction()
    accepted: list[int] = []
    for n, i in enumerate(rcpts):
        reply = await conn.command(f"RCPT TO:<{env.recipients[i]}>", "rcptto", utf8=utf8)
        if reply.code in _ACCEPTED:
            accepted.append(i)
        elif reply.code in _TOO_MANY and n > 0:
            # RFC 5321 §4.5.3.1.10: too many recipients for this transaction; the rest go in a new one.
            out.retry = rcpts[n:]
            break
        else:
            out.replies[i] = _rcpt_reply(reply)
    if not accepted:
        # DATA is not sent; the RSET before the next transaction closes this one (spec 02 §3.3 step 1).
        # Each recipient keeps its own refusal rather than a shared "no recipients accepted" (spec 02 §9).
        return out
    reply = await conn.command("DATA", "data")
    if reply.code != 354:
        conn.transaction_failed = True
        out.replies.update(dict.fromkeys(accepted, reply.error("data").reply()))
        return out
    await _send_data(conn, wire, accepted, on_accepted, out)
    return out


async def transact(conn: SMTPConnection, env: Envelope, on_accepted: OnAccepted) -> list[RcptReply]:
    """Deliver env over a ready session: as many transactions as RCPTMAX and 452 replies need.

    Raises SessionError when the first transaction fails as a whole (the caller may try another host);
    later transaction-level failures become the replies of their recipients.
    """
    options = _check_capabilities(conn, env)
    wire = _wire_data(env.data)
    mail = f"MAIL FROM:<{env.mail_from}>" + "".join(f" {o}" for o in options)
    run = _pipelined if conn.supports("PIPELINING") else _lockstep
    limit = parse_rcpt_max(conn.extensions.get("LIMITS", ""))
    pending = list(range(len(env.recipients)))
    replies: dict[int, RcptReply] = {}
    while pending:
        n = min(len(pending), limit) if limit else len(pending)
        batch, rest = pending[:n], pending[n:]
        try:
            await _begin(conn)
            got = await run(conn, env, batch, mail, wire, on_accepted)
        except SessionError as err:
            conn.transaction_failed = True
            if not replies and not rest:
                raise
            # A broken connection fails everyone still waiting; otherwise only this transaction's recipients.
            for i in pending if conn.botched else batch:
                replies.setdefault(i, err.reply())
            pending = [] if conn.botched else rest
            continue
        replies.update(got.replies)
        retry = got.retry
        if retry and len(retry) == len(batch):
            # Nothing moved: do not loop forever on a server that refuses every recipient with 452.
            for i in retry:
                replies[i] = RcptReply(False, False, 452, "", "452 too many recipients")
            retry = []
        pending = retry + rest
    relay = conn.relay
    return [replace(replies[i], relay=relay) for i in range(len(env.recipients))]
