"""Direct delivery: find the recipient domain's mail servers and deliver to the first that takes it.

The host loop of spec 02 §1.4 with the deliver-to-host steps of §1.5: MX lookup (CNAMEs, null MX,
implicit MX, IP literals), per-host address lookup ordered by the DialedIPs memory, opportunistic
STARTTLS with the plaintext fallback, then transactions with per-recipient replies.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time

import aiosmtplib

from activities.dns import DNSNotFound, DNSTemporary, Resolver
from activities.smtpclient import (
    Envelope,
    OnAccepted,
    RcptReply,
    SessionError,
    TLSMode,
    close_session,
    open_session,
    transact,
)
from domain.config import DirectConfig
from domain.nexthop import Host, NextHopError, destination_hosts, order_ips

# Per host: address lookup and all dials share one budget (spec 02 §1.6).
_HOST_BUDGET = 30.0


class DirectTransport:
    """Delivers to the recipient domain's MX hosts (RFC 5321 §5)."""

    def __init__(self, cfg: DirectConfig, ehlo_hostname: str, resolver: Resolver | None = None) -> None:
        self._cfg = cfg
        self._ehlo = ehlo_hostname
        self._resolver = resolver or Resolver(cfg.resolvers)
        self._random = random.SystemRandom()

    def _tls_context(self) -> ssl.SSLContext:
        # Opportunistic TLS does not enforce PKIX (spec 02 §2.1): encryption without authentication
        # still beats plaintext, and refusing would only push the session back to plaintext.
        ctx = ssl.create_default_context(cafile=self._cfg.ca_file or None)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def deliver(
        self, env: Envelope, on_accepted: OnAccepted, dialed: dict[str, list[str]] | None = None
    ) -> list[RcptReply]:
        """Deliver env to env.domain; `dialed` (host -> IPs connected on earlier attempts) is updated."""
        dialed = dialed if dialed is not None else {}
        try:
            hosts = await self._hosts(env.domain)
        except NextHopError as err:
            return [RcptReply(False, err.permanent, 0, "", str(err))] * len(env.recipients)
        last: SessionError | None = None
        for host in hosts:
            mode: TLSMode = "opportunistic"
            try:
                return await self._deliver_to_host(host, env, on_accepted, dialed, mode)
            except SessionError as err:
                if err.tls and mode == "opportunistic":
                    # Spec 02 §1.4 step 5: a TLS-class failure under opportunistic TLS retries the same
                    # host once in plaintext.
                    try:
                        return await self._deliver_to_host(host, env, on_accepted, dialed, "skip")
                    except SessionError as err2:
                        err = err2
                last = err
                if err.permanent:
                    break
        assert last is not None
        return [last.reply()] * len(env.recipients)

    async def _hosts(self, domain: str) -> list[Host]:
        try:
            mx = await self._resolver.mx(domain)
            records: list[tuple[int, str]] | None = [(r.preference, r.host) for r in mx.records]
        except DNSNotFound:
            records = None
        except DNSTemporary as err:
            raise NextHopError(f"looking up mx records: {err}", permanent=False) from None
        if domain.startswith("["):
            records = None
        return destination_hosts(domain, records, self._random.shuffle)

    async def _dial(
        self, host: Host, dialed: dict[str, list[str]], mode: TLSMode, attempt: int
    ) -> aiosmtplib.SMTP:
        deadline = time.monotonic() + _HOST_BUDGET
        if host.is_ip:
            ips, dualstack = [host.name], False
        else:
            try:
                res = await asyncio.wait_for(self._resolver.ips(host.name), _HOST_BUDGET)
            except (DNSNotFound, DNSTemporary, TimeoutError) as err:
                raise SessionError(f"dialing smtp server: looking up {host.name}: {err}") from None
            ips, dualstack = res.ips, res.dualstack
        ordered = order_ips(ips, dialed.get(host.name, []))
        errors: list[str] = []
        for n, ip in enumerate(ordered):
            per_ip = max(0.5, (deadline - time.monotonic()) / (len(ordered) - n))
            try:
                client = await open_session(
                    ip,
                    self._cfg.smtp_port,
                    ehlo=self._ehlo,
                    mode=mode,
                    tls_context=self._tls_context(),
                    server_name=None if host.is_ip else host.name,
                    connect_timeout=per_ip,
                    command_timeout=self._cfg.command_timeout.total_seconds(),
                )
            except aiosmtplib.SMTPConnectError as err:
                errors.append(f"{ip}: {err}")
                continue
            except (OSError, TimeoutError, aiosmtplib.SMTPTimeoutError) as err:
                errors.append(f"{ip}: {type(err).__name__}: {err}")
                continue
            except SessionError as err:
                # Attempt-1 rule (spec 02 §1.5 step 8): a policy block on one address family may not
                # apply to the other, so a permanent 7.x on a dual-stack host is not final yet.
                dialed.setdefault(host.name, []).append(ip)
                if err.permanent and dualstack and err.secode.startswith("7.") and attempt == 1:
                    err.permanent = False
                raise
            dialed.setdefault(host.name, []).append(ip)
            return client
        raise SessionError(f"dialing smtp server {host.name}: " + "; ".join(errors))

    async def _deliver_to_host(
        self, host: Host, env: Envelope, on_accepted: OnAccepted, dialed: dict[str, list[str]], mode: TLSMode
    ) -> list[RcptReply]:
        client = await self._dial(host, dialed, mode, env.attempt)
        try:
            return await transact(client, env, on_accepted)
        finally:
            await close_session(client)
