"""An SMTP listener for bounces: accepts messages to FromID addresses and hands them to the Bounce workflow.

Only recipients on a domain with a catch-all separator whose localpart carries one are accepted; every
other recipient is refused at RCPT, so the listener never becomes a relay or a mailbox.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP, Envelope, Session
from temporalio.client import Client

from domain.addresses import AddressError, parse_address
from domain.config import Config
from domain.fromid import from_id_of
from store import bounces
from store.db import Pool
from workflows.client import start_bounce

log = logging.getLogger("tempost.bounces")

# Bounces carry at most the original's headers as mox composes them; real ones may quote the message.
MAX_SIZE = 10 * 1024 * 1024


class BounceHandler:
    """aiosmtpd handler: RCPT checks the FromID form, DATA stores the message and starts its matching."""

    def __init__(self, config: Config, pool: Pool, client: Client) -> None:
        self._config = config
        self._pool = pool
        self._client = client

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
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
            ids = [
                await bounces.store(self._pool, envelope.mail_from or "", rcpt, data)
                for rcpt in envelope.rcpt_tos
            ]
        except Exception:  # noqa: BLE001 - the sender retries a temporary failure
            log.exception("storing an incoming bounce")
            return "451 4.3.0 cannot store the message now, try again later"
        for bounce_id in ids:
            try:
                await start_bounce(self._client, self._config.temporal.task_queue, bounce_id)
            except Exception:  # noqa: BLE001 - stored: the worker's sweeper starts it later
                log.warning("starting the matching of bounce %d; the sweeper will", bounce_id, exc_info=True)
        return "250 2.0.0 bounce received"


async def start_listener(config: Config, pool: Pool, client: Client, host: str, port: int) -> asyncio.Server:
    """Serve SMTP on host:port on the running event loop (where the pool and the client live)."""
    handler = BounceHandler(config, pool, client)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(handler, hostname=config.hostname, data_size_limit=MAX_SIZE), host=host, port=port
    )
