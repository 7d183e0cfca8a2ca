"""Ways to hand a message to the next hop: the simulated localserve hop and an SMTP relay.

A transport answers per recipient and calls `on_accepted` the moment the next hop has accepted DATA,
before anything else happens, so the caller can journal the acceptance (DESIGN §5).
"""

from __future__ import annotations

import functools
import ssl
import time
from typing import Protocol

from activities.conncache import ConnectionCache, SessionKey
from activities.metrics import CONNECTIONS, DELIVERY_DURATION, SESSIONS_OPENED, delivery_result
from activities.smtpclient import (
    Envelope,
    OnAccepted,
    RcptReply,
    SessionError,
    SMTPConnection,
    TLSMode,
    authenticate,
    open_session,
    transact,
)
from domain.config import FailTransport, SMTPTransport
from domain.localserve import simulate


class Transport(Protocol):
    """Delivers an envelope and reports one reply per recipient, in envelope order."""

    async def deliver(self, env: Envelope, on_accepted: OnAccepted) -> list[RcptReply]: ...


class LocalserveTransport:
    """Never leaves the machine: special recipient localparts simulate failures, the rest succeeds."""

    async def deliver(self, env: Envelope, on_accepted: OnAccepted) -> list[RcptReply]:
        replies = []
        for rcpt in env.recipients:
            sim = simulate(rcpt.rsplit("@", 1)[0])
            replies.append(RcptReply(sim.success, sim.permanent, sim.code, "", sim.error))
        accepted = [i for i, r in enumerate(replies) if r.success]
        if accepted:
            await on_accepted(accepted, "250 simulated delivery")
        return replies


_RELAY_MODES: dict[str, TLSMode] = {
    "required": "requiredstarttls",
    "opportunistic": "opportunistic",
    "none": "skip",
}


class SMTPRelayTransport:
    """Relays every message to one configured SMTP server, over a cached session when one is idle."""

    def __init__(
        self,
        cfg: SMTPTransport,
        ehlo_hostname: str,
        name: str = "",
        *,
        connections: ConnectionCache | None = None,
    ) -> None:
        self._cfg = cfg
        self._ehlo = ehlo_hostname
        self._name = name
        self._connections = connections or ConnectionCache(idle_limit=0)

    @functools.cache  # noqa: B019 - one per transport, which lives as long as the worker
    def _tls_context(self) -> ssl.SSLContext:
        """The TLS client context, built once: loading the system's trust store costs ~25 ms of CPU."""
        ctx = ssl.create_default_context()
        if self._cfg.ca_file:
            ctx.load_verify_locations(self._cfg.ca_file)
        if not self._cfg.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def deliver(self, env: Envelope, on_accepted: OnAccepted) -> list[RcptReply]:
        cfg = self._cfg
        if env.require_tls and not cfg.verifies_tls:
            # Spec 02 §5.1 step 1: REQUIRETLS cannot be honoured over an unverified hop; no point retrying.
            msg = "message requires verified tls but transport does not verify tls"
            return [RcptReply(False, True, 554, "7.30", msg)] * len(env.recipients)
        mode = "immediate" if cfg.type == "submissions" else _RELAY_MODES[cfg.starttls]
        start = time.monotonic()
        replies = await self._deliver(env, on_accepted, mode)
        failed = [r for r in replies if not r.success]
        result = delivery_result(None, replies)
        if len(failed) == len(replies):
            result = "permerror" if all(r.permanent for r in failed) else "temperror"
        DELIVERY_DURATION.labels(str(env.attempt), self._name, mode, result).observe(time.monotonic() - start)
        return replies

    async def _deliver(self, env: Envelope, on_accepted: OnAccepted, mode: TLSMode) -> list[RcptReply]:
        cfg = self._cfg
        # The relay is dialed by name; its TLS policy is the transport's, fixed by the configuration.
        verify = "verify" if cfg.tls_verify else "noverify"
        login = cfg.auth.username if cfg.auth is not None else ""
        key = SessionKey(self._name, cfg.host, "", cfg.effective_port, self._ehlo, (mode, verify), login)
        client = await self._connections.take(key)
        fresh = client is None
        if client is None:
            try:
                client = await self._open(mode)
            except SessionError as err:
                CONNECTIONS.labels("error").inc()
                return [err.reply()] * len(env.recipients)
            except (OSError, TimeoutError) as err:
                CONNECTIONS.labels("timeout" if isinstance(err, TimeoutError) else "error").inc()
                # Connection trouble is never permanent: the next attempt may find the relay back.
                return [RcptReply(False, False, 0, "", f"{type(err).__name__}: {err}")] * len(env.recipients)
            CONNECTIONS.labels("ok").inc()
            SESSIONS_OPENED.inc()
        done = False
        try:
            if fresh and cfg.auth is not None:
                await authenticate(client, cfg.auth.username, cfg.auth.password(), cfg.auth.mechanisms)
            replies = await transact(client, env, on_accepted)
            done = True
            return replies
        except SessionError as err:
            return [err.reply()] * len(env.recipients)
        finally:
            if done:
                await self._connections.give_back(key, client)
            else:
                await client.close()

    async def _open(self, mode: TLSMode) -> SMTPConnection:
        cfg = self._cfg
        return await open_session(
            cfg.host,
            cfg.effective_port,
            ehlo=self._ehlo,
            mode=mode,
            tls_context=self._tls_context(),
            server_name=cfg.host,
            connect_timeout=cfg.connect_timeout.total_seconds(),
            command_timeout=cfg.command_timeout.total_seconds(),
        )


class FailingTransport:
    """Fails every message at once with the configured reply, without connecting (spec 01 §7.4, Fail)."""

    def __init__(self, cfg: FailTransport) -> None:
        self._cfg = cfg

    async def deliver(self, env: Envelope, on_accepted: OnAccepted) -> list[RcptReply]:
        code = self._cfg.smtp_code
        reply = RcptReply(False, code >= 500, code, "7.0", f"{code} {self._cfg.smtp_message}")
        return [reply] * len(env.recipients)
