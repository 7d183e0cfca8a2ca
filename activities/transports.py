"""Ways to hand a message to the next hop: the simulated localserve hop and an SMTP relay.

A transport answers per recipient and calls `on_accepted` the moment the next hop has accepted DATA,
before anything else happens, so the caller can journal the acceptance (DESIGN §5).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from domain.config import SMTPTransport
from domain.localserve import simulate


@dataclass(frozen=True)
class Envelope:
    """One SMTP transaction's worth: reverse path, forward paths and the message bytes."""

    mail_from: str
    recipients: list[str]
    data: bytes
    has8bit: bool = False
    smtputf8: bool = False


@dataclass(frozen=True)
class RcptReply:
    """The next hop's verdict on one recipient."""

    success: bool
    permanent: bool = False
    code: int = 0
    secode: str = ""
    error: str = ""


OnAccepted = Callable[[list[int], str], Awaitable[None]]


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


_ENHANCED = re.compile(r"^([245])\.(\d{1,3}\.\d{1,3})\b\s*")


def split_enhanced(text: str) -> tuple[str, str]:
    """Split an RFC 3463 enhanced status code off a reply text: ("1.1", rest), without the class digit."""
    m = _ENHANCED.match(text)
    if not m:
        return "", text
    return m.group(2), text[m.end() :]


def _reply_failure(code: int, text: str) -> RcptReply:
    secode, rest = split_enhanced(text)
    return RcptReply(False, 500 <= code < 600, code, secode, f"{code} {text}".strip())


class SMTPRelayTransport:
    """Relays every message to one configured SMTP server with aiosmtplib."""

    def __init__(self, cfg: SMTPTransport, ehlo_hostname: str) -> None:
        self._cfg = cfg
        self._ehlo = ehlo_hostname

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self._cfg.ca_file or None)
        if not self._cfg.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def deliver(self, env: Envelope, on_accepted: OnAccepted) -> list[RcptReply]:
        cfg = self._cfg
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            local_hostname=self._ehlo,
            timeout=cfg.command_timeout.total_seconds(),
            start_tls=False,
            use_tls=False,
        )
        try:
            return await self._transaction(client, env, on_accepted)
        except aiosmtplib.SMTPResponseException as err:
            return [_reply_failure(err.code, err.message)] * len(env.recipients)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            # Connection trouble is never permanent: the next attempt may find the server back.
            return [RcptReply(False, False, 0, "", f"{type(err).__name__}: {err}")] * len(env.recipients)
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()

    async def _transaction(
        self, client: aiosmtplib.SMTP, env: Envelope, on_accepted: OnAccepted
    ) -> list[RcptReply]:
        cfg = self._cfg
        await client.connect(timeout=cfg.connect_timeout.total_seconds())
        await client.ehlo()
        if cfg.starttls != "none":
            if client.supports_extension("starttls"):
                await client.starttls(tls_context=self._tls_context())
                await client.ehlo()
            elif cfg.starttls == "required":
                return [
                    RcptReply(False, False, 0, "", "relay does not offer STARTTLS, which is required")
                ] * len(env.recipients)
        options = []
        if env.smtputf8:
            if not client.supports_extension("smtputf8"):
                # RFC 6531 §3.4: without SMTPUTF8 at the next hop the message cannot be sent.
                return [RcptReply(False, True, 0, "", "next hop does not support SMTPUTF8")] * len(
                    env.recipients
                )
            options.append("SMTPUTF8")
        if env.has8bit and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        await client.mail(env.mail_from, options=options)
        replies: list[RcptReply | None] = []
        for rcpt in env.recipients:
            try:
                await client.rcpt(rcpt)
                replies.append(None)
            except aiosmtplib.SMTPRecipientRefused as err:
                replies.append(_reply_failure(err.code, err.message))
        accepted = [i for i, r in enumerate(replies) if r is None]
        if not accepted:
            await client.rset()
            return [r for r in replies if r is not None]
        try:
            resp = await client.data(env.data)
        except aiosmtplib.SMTPDataError as err:
            fail = _reply_failure(err.code, err.message)
            return [fail if r is None else r for r in replies]
        await on_accepted(accepted, f"{resp.code} {resp.message}")
        secode, _ = split_enhanced(resp.message)
        ok = RcptReply(True, False, resp.code, secode, "")
        return [ok if r is None else r for r in replies]
