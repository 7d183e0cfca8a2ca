"""A real SMTP server on loopback (aiosmtpd) that records every transaction and can refuse on purpose."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from deploy.embedded import free_port


@dataclass
class Transaction:
    """One accepted DATA: the envelope the sink saw."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    # time.monotonic() when the sink accepted DATA (for latency in bench/).
    accepted_at: float = field(default_factory=time.monotonic)


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


class _Handler:
    def __init__(self, sink: SMTPSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:  # noqa: N802
        reply = self.sink.behaviour.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        b = self.sink.behaviour
        with self.sink.lock:
            self.sink.data_commands += 1
            if b.temp_failures > 0:
                b.temp_failures -= 1
                return b.temp_reply
            if b.data_reply:
                return b.data_reply
            if session.ssl is not None:
                self.sink.tls_sessions += 1
            data = envelope.original_content or envelope.content or b""
            if isinstance(data, str):
                data = data.encode()
            self.sink.transactions.append(
                Transaction(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(data))
            )
        return "250 2.0.0 queued as sink"


class SMTPSink:
    """Start with start(), read `transactions`, stop with stop()."""

    def __init__(
        self, host: str = "127.0.0.1", *, tls_context: ssl.SSLContext | None = None, port: int | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        # Sessions that completed STARTTLS, for tests of TLS policy.
        self.tls_sessions = 0
        self.behaviour = SinkBehaviour()
        self.transactions: list[Transaction] = []
        self.data_commands = 0
        self.lock = threading.Lock()
        extra = {"tls_context": tls_context} if tls_context is not None else {}
        self._controller = Controller(
            _Handler(self), hostname=host, port=self.port, decode_data=False, enable_SMTPUTF8=True, **extra
        )

    def start(self) -> SMTPSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def delivered_to(self) -> list[str]:
        """Every recipient that has a message, in order of acceptance."""
        with self.lock:
            return [r for t in self.transactions for r in t.rcpt_tos]
