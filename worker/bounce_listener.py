"""An SMTP listener for bounces: accepts messages to FromID addresses and hands them to the Bounce workflow.

Only recipients on a domain with a catch-all separator whose localpart carries one are accepted; every
other recipient is refused at RCPT, so the listener never becomes a relay or a mailbox. A message is
stored once, however many of its recipients are FromIDs, and each recipient is matched by its own
workflow reading that copy.

The listener faces the internet, so everything a peer can make it hold is bounded: connections, their
lifetime and idle time, commands and transactions per connection, recipients per transaction, line length
and message size. The message is read as it streams and dropped, not buffered, once it is over the limit.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax
from temporalio.client import Client

from domain.addresses import AddressError, parse_address
from domain.config import Config
from domain.fromid import from_id_of
from store import bounces
from store.db import Pool
from workflows.client import start_bounce

log = logging.getLogger("tempost.bounces")

# Bounces rarely quote much of the original: Postfix returns at most 50 kB of it, Exim 100 kB.
MAX_SIZE = 10 * 1024 * 1024
# mox's limit of recipients in one transaction; more get 452 (RFC 5321 §4.5.3.1.8, §4.5.3.1.10).
MAX_RECIPIENTS = 1000
# Connections served at once; more are told to come back later (421) and closed. With the size limit
# this bounds the memory the listener can be made to hold.
MAX_CONNECTIONS = 20
# RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next command (and for a DATA to end).
IDLE_TIMEOUT = 300.0
# However busy, a connection is ended after this long, so a trickling peer cannot keep a slot forever.
MAX_CONNECTION_TIME = 30 * 60.0
# Commands per connection (aiosmtpd answers 421 and hangs up beyond them): 100 transactions, RCPTs for a
# few of them at the recipient limit (refused ones count too), 20 of any other command.
COMMAND_LIMITS = {"MAIL": 100, "DATA": 100, "RSET": 100, "RCPT": 10 * MAX_RECIPIENTS, "*": 20}
# Text lines, CRLF included (RFC 5321 §4.5.3.1.6); aiosmtpd reads with this limit.
MAX_LINE = 1000
# Workflow starts in flight for one message's recipients.
_STARTS_AT_ONCE = 16


class BounceHandler:
    """aiosmtpd handler: RCPT checks the FromID form, DATA stores the message and starts its matching."""

    def __init__(self, config: Config, pool: Pool, client: Client) -> None:
        self._config = config
        self._pool = pool
        self._client = client

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        try:
            addr = parse_address(address)
        except AddressError:
            return "501 5.1.3 bad recipient address"
        if not from_id_of(addr.localpart, self._config.separator(addr.domain)):
            return "550 5.1.1 no such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        data = envelope.original_content or b""
        try:
            ids = await bounces.store_message(self._pool, envelope.mail_from or "", envelope.rcpt_tos, data)
        except Exception:  # noqa: BLE001 - the sender retries a temporary failure
            log.exception("storing an incoming bounce")
            return "451 4.3.0 cannot store the message now, try again later"
        slots = asyncio.Semaphore(_STARTS_AT_ONCE)

        async def start(bounce_id: int) -> None:
            async with slots:
                try:
                    await start_bounce(self._client, self._config.temporal.task_queue, bounce_id)
                except Exception:  # noqa: BLE001 - stored: the worker's sweeper starts it later
                    log.warning(
                        "starting the matching of bounce %d; the sweeper will", bounce_id, exc_info=True
                    )

        await asyncio.gather(*(start(i) for i in ids))
        return "250 2.0.0 bounce received"


class _BounceSMTP(SMTP):
    """aiosmtpd with a DATA that keeps at most MAX_SIZE of a message and a limit on connection lifetime."""

    line_length_limit = MAX_LINE

    def __init__(
        self, handler: BounceHandler, open_connections: weakref.WeakSet[_BounceSMTP], **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        # Counted from creation, so a burst of accepts cannot overshoot the limit; a protocol whose
        # connection never came up is garbage and leaves the weak set by itself.
        self._open = open_connections
        self._open.add(self)
        self._lifetime: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._lifetime = self.loop.call_later(MAX_CONNECTION_TIME, self._too_long)

    def connection_lost(self, error: Exception | None) -> None:
        self._open.discard(self)
        if self._lifetime is not None:
            self._lifetime.cancel()
        super().connection_lost(error)

    def _too_long(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"421 4.4.2 connection open too long, closing\r\n")  # type: ignore[attr-defined]
            self.transport.close()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's command method name
        """DATA (RFC 5321 §4.1.1.4), read line by line; what is over a limit is counted, not kept.

        aiosmtpd's own DATA keeps the pieces of an over-long line until its end, so a line that never
        ends would grow without bound.
        """
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 syntax: DATA")
            return
        await self.push("354 end data with <CR><LF>.<CR><LF>")
        kept: list[bytes] = []
        size = 0
        too_big = line_too_long = in_long_line = False
        while True:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as err:
                # No CRLF within the line limit: drop what was read; the rest of this line is dropped too.
                size += len(await self._reader.read(err.consumed))
                line_too_long = in_long_line = True
                continue
            except asyncio.IncompleteReadError:
                return  # the peer hung up; aiosmtpd ends the session
            if line == b".\r\n" and not in_long_line:
                break
            in_long_line = False
            size += len(line)
            too_big = too_big or size > MAX_SIZE
            if too_big or line_too_long:
                kept.clear()
                continue
            # RFC 5321 §4.5.2: a leading dot was added by the sender.
            kept.append(line[1:] if line.startswith(b".") else line)
        if too_big:
            # RFC 5321 §4.5.3.1.10: the reply to the end of data, once all of it has been read.
            await self.push(f"552 5.3.4 message too big (over {MAX_SIZE} bytes)")
        elif line_too_long:
            await self.push(f"500 5.5.2 line too long (over {MAX_LINE} bytes, RFC 5321 4.5.3.1.6)")
        else:
            self.envelope.original_content = self.envelope.content = b"".join(kept)
            kept.clear()
            status = await self._call_handler_hook("DATA")
            await self.push("250 OK" if status is MISSING else status)
        self._set_post_data_state()


class _Busy(asyncio.Protocol):
    """Answers a connection over the limit with 421 (RFC 5321 §3.8) and closes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"421 4.3.2 too many connections, try again later\r\n")  # type: ignore[attr-defined]
        transport.close()


async def start_listener(config: Config, pool: Pool, client: Client, host: str, port: int) -> asyncio.Server:
    """Serve SMTP on host:port on the running event loop (where the pool and the client live)."""
    handler = BounceHandler(config, pool, client)
    open_connections: weakref.WeakSet[_BounceSMTP] = weakref.WeakSet()

    def connection() -> asyncio.Protocol:
        if len(open_connections) >= MAX_CONNECTIONS:
            return _Busy()
        return _BounceSMTP(
            handler,
            open_connections,
            hostname=config.hostname,
            data_size_limit=MAX_SIZE,
            timeout=IDLE_TIMEOUT,
            command_call_limit=COMMAND_LIMITS,
        )

    return await asyncio.get_running_loop().create_server(connection, host=host, port=port)
