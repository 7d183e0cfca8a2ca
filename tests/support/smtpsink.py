"""A real SMTP server on loopback (aiosmtpd) that records every transaction and can refuse on purpose."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from activities.tlsbinding import channel_binding
from deploy.embedded import free_port


@dataclass
class Transaction:
    """One accepted DATA: the envelope the sink saw."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    # Which connection carried it (id of the aiosmtpd session), to count transactions per connection.
    session: int = 0
    # Whether MAIL FROM carried REQUIRETLS.
    requiretls: bool = False
    # time.monotonic() when the sink accepted DATA (for latency in bench/).
    accepted_at: float = field(default_factory=time.monotonic)
    # The EHLO name the client gave (which worker delivered, when workers have their own hostnames).
    helo: str = ""


@dataclass
class SinkBehaviour:
    """How the sink answers; tests change it between attempts."""

    # Recipient address -> reply to RCPT TO (e.g. "550 5.1.1 no such user").
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # Reply to DATA instead of accepting; "" accepts.
    data_reply: str = ""
    # Refuse this many DATA commands with data_reply_temp first, then accept.
    temp_failures: int = 0
    temp_reply: str = "451 4.3.0 try again later"
    # Reply to MAIL FROM instead of accepting; "" accepts.
    mail_reply: str = ""
    # More recipients than this in one transaction get 452 (0: no limit).
    max_rcpts_per_transaction: int = 0
    # Extra EHLO lines, e.g. "LIMITS RCPTMAX=1".
    ehlo_extra: list[str] = field(default_factory=list)
    # EHLO keywords to leave out, e.g. "8BITMIME", "SMTPUTF8".
    ehlo_without: list[str] = field(default_factory=list)
    # Reply to EHLO instead of the capability list, e.g. "500 5.5.1 command unrecognized".
    ehlo_reply: str = ""
    # Seconds DATA takes before the reply, so concurrent deliveries overlap visibly.
    data_delay: float = 0.0
    # Reply to STARTTLS instead of starting TLS, e.g. "502 5.5.1 command not implemented".
    starttls_reply: str = ""


class _SMTP(SMTP):
    """aiosmtpd with REQUIRETLS (RFC 8689 §3) understood in MAIL FROM when the test announces it."""

    async def smtp_MAIL(self, arg: str) -> None:  # noqa: N802
        assert self.session is not None
        words = (arg or "").split(" ")
        if any(w.upper() == "REQUIRETLS" for w in words):
            self.session.requiretls = True  # type: ignore[attr-defined]
            arg = " ".join(w for w in words if w.upper() != "REQUIRETLS")
        await super().smtp_MAIL(arg)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again over TLS after STARTTLS; only the TCP connection counts.
        new = self._original_transport is None
        super().connection_made(transport)
        if new:
            sink = self.event_handler.sink
            with sink.lock:
                sink.connections += 1
                sink.open.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        sink = self.event_handler.sink
        with sink.lock:
            sink.open.discard(self)
        super().connection_lost(error)

    async def smtp_QUIT(self, arg: str) -> None:  # noqa: N802
        sink = self.event_handler.sink
        with sink.lock:
            sink.quits += 1
        await super().smtp_QUIT(arg)

    async def smtp_RSET(self, arg: str) -> None:  # noqa: N802
        sink = self.event_handler.sink
        with sink.lock:
            sink.rsets += 1
        await super().smtp_RSET(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802
        reply = self.event_handler.sink.behaviour.starttls_reply
        if reply:
            await self.push(reply)
            return
        await super().smtp_STARTTLS(arg)


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)


class _Handler:
    def __init__(self, sink: SMTPSink) -> None:
        self.sink = sink

    # AUTH mechanisms beyond aiosmtpd's PLAIN/LOGIN, server side, for relay tests (RFC 2195, RFC 5802).
    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        challenge = f"<{os.urandom(8).hex()}@sink>".encode()
        answer = await server.challenge_auth(challenge)
        if not isinstance(answer, bytes):
            return AuthResult(success=False)
        user, _, digest = answer.decode().partition(" ")
        password = self.sink.auth_users.get(user)
        ok = password is not None and hmac.compare_digest(
            digest, hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        )
        return self._result("CRAM-MD5", user, ok)

    async def auth_SCRAM__SHA__256(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._scram(server, args, "sha256", "SCRAM-SHA-256")

    async def auth_SCRAM__SHA__1(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._scram(server, args, "sha1", "SCRAM-SHA-1")

    async def auth_SCRAM__SHA__256__PLUS(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._scram(server, args, "sha256", "SCRAM-SHA-256-PLUS")

    async def auth_SCRAM__SHA__1__PLUS(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._scram(server, args, "sha1", "SCRAM-SHA-1-PLUS")

    @staticmethod
    def _binding(server: SMTP, session: Session) -> tuple[str, bytes] | None:
        """The server's own view of the channel binding, to compare with what the client sent."""
        obj = (session.ssl or {}).get("ssl_object") if isinstance(session.ssl, dict) else None
        if obj is None and server.transport is not None:
            obj = server.transport.get_extra_info("ssl_object")
        return channel_binding(obj)

    async def _scram(self, server: SMTP, args: list[str], hash_name: str, mech: str) -> AuthResult:
        first = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth("")
        if not isinstance(first, bytes):
            return AuthResult(success=False)
        flag, _authz, bare = first.decode().split(",", 2)
        # RFC 5802 §6: the client repeats its GS2 header and, for -PLUS, the binding data in "c=".
        assert server.session is not None
        binding = self._binding(server, server.session) if mech.endswith("-PLUS") else None
        if mech.endswith("-PLUS") and (binding is None or flag != f"p={binding[0]}"):
            return self._result(mech, "", False)
        expected_cbind = f"{flag},{_authz},".encode() + (binding[1] if binding else b"")
        attrs = dict(a.split("=", 1) for a in bare.split(","))
        user, cnonce = attrs["n"], attrs["r"]
        password = self.sink.auth_users.get(user, "")
        salt, iterations, snonce = os.urandom(16), 4096, attrs["r"] + "sink"
        server_first = f"r={snonce},s={base64.b64encode(salt).decode()},i={iterations}"
        final = await server.challenge_auth(server_first)
        if not isinstance(final, bytes):
            return AuthResult(success=False)
        without_proof, _, proof = final.decode().rpartition(",p=")
        final_attrs = dict(a.split("=", 1) for a in without_proof.split(","))
        if base64.b64decode(final_attrs.get("c", "")) != expected_cbind:
            return self._result(mech, user, False)
        salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hash_name).digest()
        auth = f"{bare},{server_first},{without_proof}".encode()
        sig = hmac.new(hashlib.new(hash_name, client_key).digest(), auth, hash_name).digest()
        ok = (
            bool(password)
            and cnonce
            and hmac.compare_digest(
                bytes(a ^ b for a, b in zip(base64.b64decode(proof), sig, strict=False)), client_key
            )
        )
        if not ok:
            return self._result(mech, user, False)
        server_sig = hmac.new(hmac.new(salted, b"Server Key", hash_name).digest(), auth, hash_name).digest()
        await server.challenge_auth("v=" + base64.b64encode(server_sig).decode())
        self.sink.scram_flags.append(flag)
        return self._result(mech, user, True)

    def _result(self, mech: str, user: str, ok: bool) -> AuthResult:
        if ok:
            self.sink.authenticated.append((mech, user))
            return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        b = self.sink.behaviour
        if b.ehlo_reply:
            return [b.ehlo_reply]
        session.host_name = hostname
        # Like most receiving servers, announce pipelining and enhanced status codes unless told not to.
        extra = [f"250-{x}" for x in ["PIPELINING", "ENHANCEDSTATUSCODES", *b.ehlo_extra]]
        lines = responses[:-1] + extra + responses[-1:]
        drop = {w.upper() for w in b.ehlo_without}
        kept = [line for line in lines if line[4:].split(" ")[0].upper() not in drop]
        # The last line of a multi-line reply has a space after the code (RFC 5321 §4.2.1).
        return [line.replace("250 ", "250-", 1) for line in kept[:-1]] + [kept[-1].replace("250-", "250 ", 1)]

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.sink.behaviour.mail_reply:
            return self.sink.behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:  # noqa: N802
        self.sink.rcpts_seen.append(address)
        reply = self.sink.behaviour.rcpt_replies.get(address)
        if reply:
            return reply
        limit = self.sink.behaviour.max_rcpts_per_transaction
        if limit and len(envelope.rcpt_tos) >= limit:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        b = self.sink.behaviour
        if b.data_delay:
            domains = {str(r).rpartition("@")[2].lower() for r in envelope.rcpt_tos}
            with self.sink.lock:
                for d in domains:
                    self.sink.active[d] = self.sink.active.get(d, 0) + 1
                    self.sink.max_overlap[d] = max(self.sink.max_overlap.get(d, 0), self.sink.active[d])
                self.sink.max_overlap_total = max(self.sink.max_overlap_total, sum(self.sink.active.values()))
            await asyncio.sleep(b.data_delay)
            with self.sink.lock:
                for d in domains:
                    self.sink.active[d] -= 1
        with self.sink.lock:
            if envelope.mail_from not in ("", "<>"):
                # DSNs (null reverse path) are left out, so tests count the messages they sent.
                self.sink.data_commands += 1
            if b.temp_failures > 0:
                b.temp_failures -= 1
                return b.temp_reply
            if b.data_reply:
                return b.data_reply
            transport = server.transport
            if session.ssl is not None or (transport and transport.get_extra_info("ssl_object") is not None):
                self.sink.tls_sessions += 1
            data = envelope.original_content or envelope.content or b""
            if isinstance(data, str):
                data = data.encode()
            self.sink.transactions.append(
                Transaction(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    bytes(data),
                    id(session),
                    getattr(session, "requiretls", False),
                    helo=str(session.host_name or ""),
                )
            )
        return "250 2.0.0 queued as sink"


class SMTPSink:
    """Start with start(), read `transactions`, stop with stop()."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        tls_context: ssl.SSLContext | None = None,
        port: int | None = None,
        data_size_limit: int = 0,
        auth_users: dict[str, str] | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        auth_exclude: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        # Sessions that completed STARTTLS, for tests of TLS policy.
        self.tls_sessions = 0
        self.behaviour = SinkBehaviour()
        self.transactions: list[Transaction] = []
        self.data_commands = 0
        # Every RCPT TO address the sink was asked for, accepted or not.
        self.rcpts_seen: list[str] = []
        # With behaviour.data_delay: DATA commands in progress per recipient domain, and the most seen.
        self.active: dict[str, int] = {}
        self.max_overlap: dict[str, int] = {}
        self.max_overlap_total = 0
        self.lock = threading.Lock()
        # TCP connections accepted, QUIT and RSET commands received, and the connections open now.
        self.connections = 0
        self.quits = 0
        self.rsets = 0
        self.open: set[SMTP] = set()
        extra: dict[str, object] = {"tls_context": tls_context} if tls_context is not None else {}
        if data_size_limit:
            extra["data_size_limit"] = data_size_limit
        # With users, AUTH is offered (also without TLS) and every mechanism records who logged in.
        self.auth_users = auth_users or {}
        self.authenticated: list[tuple[str, str]] = []
        self.scram_flags: list[str] = []
        if auth_users:
            extra["authenticator"] = self._authenticate
            extra["auth_require_tls"] = False
            extra["auth_exclude_mechanism"] = ["LOGIN", *auth_exclude]
        if implicit_tls is not None:
            # TLS from the first byte (submissions, RFC 8314 §3.3).
            extra["ssl_context"] = implicit_tls
        self._controller = _Controller(
            _Handler(self), hostname=host, port=self.port, decode_data=False, enable_SMTPUTF8=True, **extra
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.auth_users.get(data.login.decode()) == data.password.decode()
        )
        if ok:
            assert isinstance(data, LoginPassword)
            self.authenticated.append((mechanism, data.login.decode()))
        return AuthResult(success=ok, handled=False)

    def start(self) -> SMTPSink:
        self._controller.start()
        with self.lock:
            # aiosmtpd connected once to see the server up; that connection is not a client's.
            self.connections = 0
            self.open.clear()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def drop_connections(self) -> None:
        """Close every open connection without a word, as a server does to clients idle too long."""
        with self.lock:
            protocols = list(self.open)
        for p in protocols:
            if p.transport is not None:
                self._controller.loop.call_soon_threadsafe(p.transport.close)

    def delivered_to(self) -> list[str]:
        """Every recipient that has a message (DSNs left out), in order of acceptance."""
        with self.lock:
            return [r for t in self.transactions if t.mail_from not in ("", "<>") for r in t.rcpt_tos]

    def messages(self) -> list[Transaction]:
        """Transactions of ordinary messages (DSNs left out)."""
        with self.lock:
            return [t for t in self.transactions if t.mail_from not in ("", "<>")]

    def dsns(self) -> list[Transaction]:
        """Transactions with the null reverse path: delivery status notifications."""
        with self.lock:
            return [t for t in self.transactions if t.mail_from in ("", "<>")]
