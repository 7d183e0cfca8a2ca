"""Direct delivery: find the recipient domain's mail servers and deliver to the first that takes it.

The host loop of spec 02 §1.4 with the deliver-to-host steps of §1.5: MX lookup (CNAMEs, null MX,
implicit MX, IP literals), per-host address lookup ordered by the DialedIPs memory, opportunistic
STARTTLS with the plaintext fallback, then transactions with per-recipient replies.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from python_socks import ProxyError
from python_socks.async_.asyncio import Proxy as SocksProxy

from activities.conncache import ConnectionCache, SessionKey
from activities.dns import DNSError, DNSNotFound, DNSTemporary, Resolver
from activities.metrics import (
    CONNECTIONS,
    DANE_GATHER_ERRORS,
    DANE_REQUIRED,
    DANE_STARTTLS_UNVERIFIED,
    DELIVERY_DURATION,
    DESTINATIONS,
    DESTINATIONS_AUTHENTIC,
    PLAINTEXT_FALLBACK,
    REQUIRETLS_UNSUPPORTED,
    SESSIONS_OPENED,
    TLSREQUIREDNO_IGNORED,
    delivery_result,
)
from activities.mtasts import MTASTSDNSError, MTASTSLookup
from activities.smtpclient import (
    Envelope,
    OnAccepted,
    RcptReply,
    SessionError,
    SMTPConnection,
    TLSMode,
    open_session,
    peer_chain,
    transact,
)
from domain.config import DirectConfig
from domain.dane import TLSA as TLSARecord
from domain.dane import allowed_names, parse_tlsa, usable
from domain.dane import verify as dane_verify
from domain.mtasts import Mode, Policy
from domain.nexthop import Host, NextHopError, destination_hosts, order_ips
from domain.pkix import finding as pkix_finding
from domain.pkix import load_anchors
from domain.tlsrpt import (
    NO_POLICY,
    STS,
    TLSA,
    FailureDetail,
    TLSResult,
    classify_tls_error,
    dns_extended_error_reason,
    tlsa_extended_error_reason,
)

log = logging.getLogger("tempost.direct")

# Per host: address lookup and all dials share one budget (spec 02 §1.6).
_HOST_BUDGET = 30.0


@dataclass(frozen=True)
class _NextHop:
    """The recipient domain's destination hosts and what DANE needs to know about how they were found."""

    hosts: list[Host]
    # Every answer on the way to the MX names was DNSSEC-authentic (DANE may apply).
    authentic: bool
    have_mx: bool
    # The name the recipient domain's CNAMEs led to, and whether that chain was authentic.
    expanded: str
    expanded_authentic: bool


@dataclass
class _TLSTrack:
    """TLS results gathered during one attempt: the recipient domain's and one per host tried."""

    rcpt: TLSResult
    hosts: list[TLSResult] = field(default_factory=list)

    def results(self) -> list[TLSResult]:
        # The domain's no-policy-found result is left out when the domain itself was a DANE host
        # (delivery without MX records), as mox does.
        out = list(self.hosts)
        if not (
            self.rcpt.policy_type == NO_POLICY
            and any(h.policy_type == TLSA and h.policy_domain == self.rcpt.policy_domain for h in self.hosts)
        ):
            out.insert(0, self.rcpt)
        return out


class DirectTransport:
    """Delivers to the recipient domain's MX hosts (RFC 5321 §5) under its TLS policy (spec 02 §2)."""

    def __init__(
        self,
        cfg: DirectConfig,
        ehlo_hostname: str,
        resolver: Resolver | None = None,
        mtasts: MTASTSLookup | None = None,
        *,
        ipv4: bool = True,
        ipv6: bool = True,
        name: str = "",
        socks: str = "",
        tls_store: Callable[[str, list[TLSResult]], Awaitable[None]] | None = None,
        connections: ConnectionCache | None = None,
    ) -> None:
        self._connections = connections or ConnectionCache(idle_limit=0)
        self._tls_store = tls_store
        self._name = name
        # host:port of a SOCKS5 proxy every connection goes through (spec 02 §5.5).
        self._socks = socks
        self._cfg = cfg
        self._ipv4, self._ipv6 = ipv4, ipv6
        self._ehlo = ehlo_hostname
        self._resolver = resolver or Resolver(cfg.resolvers)
        self._mtasts = mtasts
        self._random = random.SystemRandom()
        self._anchor_cache: list[x509.Certificate] | None = None

    def _anchors(self) -> list[x509.Certificate]:
        """The system's trust anchors plus the configured ones, read once."""
        if self._anchor_cache is None:
            blobs: list[bytes] = []
            paths = ssl.get_default_verify_paths()
            files = [p for p in (paths.cafile, paths.openssl_cafile) if p and os.path.isfile(p)]
            capath = paths.capath
            if not files and capath and os.path.isdir(capath):
                files = [os.path.join(capath, n) for n in os.listdir(capath) if n.endswith(".pem")]
            if self._cfg.ca_file:
                files.append(self._cfg.ca_file)
            for f in dict.fromkeys(os.path.realpath(x) for x in files):
                try:
                    with open(f, "rb") as fh:
                        blobs.append(fh.read())
                except OSError:
                    continue
            self._anchor_cache = load_anchors(blobs)
        return self._anchor_cache

    @functools.cache  # noqa: B019 - one per transport, which lives as long as the worker
    def _tls_context(self, verify: bool) -> ssl.SSLContext:
        """The TLS client context, built once: loading the system's trust store costs ~25 ms of CPU."""
        ctx = ssl.create_default_context()
        if self._cfg.ca_file:
            ctx.load_verify_locations(self._cfg.ca_file)
        if not verify:
            # Opportunistic TLS does not enforce PKIX (spec 02 §2.1): encryption without authentication
            # still beats plaintext, and refusing would only push the session back to plaintext.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def deliver(self, env: Envelope, on_accepted: OnAccepted) -> list[RcptReply]:
        """Deliver env to env.domain; env.dialed (host -> IPs connected on earlier attempts) is updated."""
        track = _TLSTrack(TLSResult(NO_POLICY, env.domain))
        try:
            return await self._deliver(env, on_accepted, track)
        finally:
            if self._tls_store is not None and not env.domain.startswith("["):
                try:
                    await self._tls_store(env.domain, track.results())
                except Exception:  # noqa: BLE001 - reporting data must never fail a delivery
                    log.exception("storing tls results for %s", env.domain)

    async def _deliver(self, env: Envelope, on_accepted: OnAccepted, track: _TLSTrack) -> list[RcptReply]:
        fail = len(env.recipients)
        try:
            hop = await self._hosts(env.domain, track.rcpt)
            hosts = hop.hosts
        except NextHopError as err:
            return [RcptReply(False, err.permanent, 0, "", str(err))] * fail
        policy: Policy | None = None
        if self._mtasts is not None and not hosts[0].is_ip:
            try:
                found = await self._mtasts.lookup(env.domain, datetime.now(UTC))
                policy = found.policy
                if found.result_type:
                    # A policy that could not be had is still reported, as an STS result with what went
                    # wrong (spec 02 §2.3 items 2–5).
                    track.rcpt.policy_type = STS
                    track.rcpt.add_failure(FailureDetail(found.result_type, failure_reason_code=found.reason))
            except MTASTSDNSError as err:
                # Reported as an STS result whether or not the attempt goes on (spec 02 §2.3 item 2).
                track.rcpt.policy_type = STS
                track.rcpt.add_failure(
                    FailureDetail(
                        "sts-policy-fetch-error", failure_reason_code=err.reason, failed_session_count=1
                    )
                )
                # Spec 02 §1.3: without knowing the policy, only a TLS-Required: No message may go on.
                if env.require_tls is not False:
                    track.rcpt.failure += 1
                    return [RcptReply(False, False, 0, "", f"mta-sts policy lookup: {err}")] * fail
                TLSREQUIREDNO_IGNORED.labels("mtastspolicy").inc()
        if policy is not None and policy.mode != Mode.NONE:
            track.rcpt.policy_type = STS
            track.rcpt.policy_strings = policy.lines()
            track.rcpt.mx_hosts = list(policy.mx)
        enforced = policy is not None and policy.mode == Mode.ENFORCE
        last: SessionError | None = None
        missing_requiretls = 0
        for host in hosts:
            if policy is not None and policy.mode != Mode.NONE and not policy.matches(host.name):
                if enforced and env.require_tls is False:
                    TLSREQUIREDNO_IGNORED.labels("mtastsmx").inc()
                elif enforced:
                    track.rcpt.failure += 1
                    track.rcpt.add_failure(
                        FailureDetail("validation-failure", host.name, "", "mtasts-policy-mx-mismatch", 1)
                    )
                    last = SessionError(
                        f"mx host {host.name} does not match enforced mta-sts policy with hosts "
                        + ", ".join(policy.mx)
                    )
                    continue
            # PKIX is enforced only under an enforced MTA-STS policy, and never for TLS-Required: No.
            pkix = enforced and env.require_tls is not False
            mode: TLSMode = "requiredstarttls" if enforced or env.require_tls else "opportunistic"
            try:
                return await self._deliver_to_host(host, env, on_accepted, mode, pkix, hop, track)
            except SessionError as err:
                # Spec 02 §1.4 step 5: a TLS-class failure retries the same host once in plaintext only
                # where TLS was opportunistic: never under MTA-STS enforce or REQUIRETLS (mode
                # requiredstarttls) nor on a host with TLSA records (err.dane), except for a TLS-Required:
                # No message (RFC 8689 §5).
                opportunistic = mode == "opportunistic" and not err.dane
                if err.tls and (opportunistic or env.require_tls is False):
                    PLAINTEXT_FALLBACK.inc()
                    try:
                        return await self._deliver_to_host(host, env, on_accepted, "skip", False, None, None)
                    except SessionError as err2:
                        err = err2
                last = err
                if err.secode == "7.30":
                    missing_requiretls += 1
                if err.permanent:
                    break
        if hosts and missing_requiretls == len(hosts):
            return [
                RcptReply(False, True, 554, "7.30", "destination servers do not support requiretls")
            ] * fail
        assert last is not None
        return [last.reply()] * fail

    async def _hosts(self, domain: str, rcpt: TLSResult) -> _NextHop:
        """Destination hosts, and how authentic the answers were (needed for DANE).

        A DNSSEC failure of the lookup is recorded on rcpt, the recipient domain's TLS result.
        """
        if domain.startswith("["):
            return _NextHop(
                destination_hosts(domain, None, self._random.shuffle), False, False, domain, False
            )
        try:
            mx = await self._resolver.mx(domain)
        except DNSNotFound as err:
            # No MX: the name the CNAMEs led to is the implicit MX (spec 02 §1.2).
            expanded = err.expanded or domain
            hosts = destination_hosts(expanded, None, self._random.shuffle)
            return _NextHop(hosts, err.authentic, False, expanded, err.authentic)
        except DNSTemporary as err:
            if err.ede is not None and err.ede.authentication:
                # Spec 02 §1.2 step 3: a validation-failure, not dnssec-invalid, which RFC 8460 defines for
                # DANE; reported in the hope the zone is fixed before the report goes out.
                reason = dns_extended_error_reason(err.ede.code, err.ede.name)
                rcpt.failure += 1
                rcpt.add_failure(
                    FailureDetail("validation-failure", failure_reason_code=reason, failed_session_count=1)
                )
            raise NextHopError(f"looking up mx records: {err}", permanent=False) from None
        records = [(r.preference, r.host) for r in mx.records]
        hosts = destination_hosts(domain, records, self._random.shuffle)
        # DANE needs the whole way to the MX names authentic, CNAMEs included (spec 02 §1.2).
        authentic = mx.authentic and mx.authentic_expanded
        return _NextHop(hosts, authentic, True, mx.expanded, mx.authentic_expanded)

    async def _tlsa(self, host: str) -> list[TLSARecord] | None:
        """TLSA records for host when DNSSEC says so (spec 02 §2.4); None: DANE does not apply.

        Raises DNSTemporary when the records cannot be looked up.
        """
        try:
            texts, authentic = await self._resolver.tlsa(f"_25._tcp.{host}")
        except DNSNotFound:
            return None
        if not authentic or not texts:
            return None
        out: list[TLSARecord] = []
        for t in texts:
            try:
                out.append(parse_tlsa(t))
            except ValueError:
                continue
        return out

    async def _deliver_to_host(
        self,
        host: Host,
        env: Envelope,
        on_accepted: OnAccepted,
        mode: TLSMode,
        pkix: bool,
        hop: _NextHop | None,
        track: _TLSTrack | None,
    ) -> list[RcptReply]:
        """One host: addresses, DANE, the REQUIRETLS gate, dialing, then the transactions (spec 02 §1.5)."""
        start = time.monotonic()
        label: str = mode
        err: BaseException | None = None
        replies: list[RcptReply] | None = None
        # None: DANE does not apply; a list, even an empty one: DANE is required (spec 02 §2.4).
        dane: list[TLSARecord] | None = None
        try:
            DESTINATIONS.inc()
            ips, dualstack, ip_authentic, host_expanded, host_expanded_authentic = await self._addresses(
                host, track
            )
            tlsa_error: DNSTemporary | None = None
            # The TLSA base domain: the name whose records were used, else the last one asked.
            base = host.name
            if hop is not None and hop.authentic and ip_authentic and not host.is_ip and mode != "skip":
                DESTINATIONS_AUTHENTIC.inc()
                # A host reached through secure CNAMEs is looked up under its final name first (spec 02 §2.4).
                secure = hop.expanded_authentic and host_expanded_authentic
                candidates = (
                    [host_expanded, host.name] if secure and host_expanded != host.name else [host.name]
                )
                try:
                    for base in candidates:
                        dane = await self._tlsa(base)
                        if dane is not None:
                            break
                except DNSTemporary as lookup_err:
                    # DANE counts as required when its records cannot be looked up: no downgrade by DNS
                    # trouble.
                    DANE_GATHER_ERRORS.inc()
                    dane, tlsa_error = [], lookup_err
            usable_dane = [r for r in dane or [] if usable(r)]
            if dane is not None:
                DANE_REQUIRED.inc()
            if dane is not None and tlsa_error is None:
                if not usable_dane:
                    DANE_STARTTLS_UNVERIFIED.inc()
                # Any TLSA record makes STARTTLS mandatory; only usable ones can verify (RFC 7672 §2.2).
                mode = "requiredstarttls"
            label = mode + ("+mtasts" if pkix else "") + ("+dane" if dane is not None else "")
            host_result: TLSResult | None = None
            if track is not None and not host.is_ip:
                # The plaintext fallback try (track None) records nothing (spec 02 §1.4 step 5).
                host_result = TLSResult(
                    TLSA if dane is not None else NO_POLICY,
                    base,
                    sorted(str(r) for r in usable_dane),
                    is_host=True,
                )
                if tlsa_error is not None:
                    _record_tlsa_error(tlsa_error, host_result, track.rcpt)
                elif dane is not None and not usable_dane:
                    host_result.add_failure(
                        FailureDetail("tlsa-invalid", host.name, "", "all-unusable-records+ignored", 0)
                    )
                track.hosts.append(host_result)
            if tlsa_error is not None:
                if env.require_tls is not False:
                    raise SessionError(f"looking up tlsa records for {base}: {tlsa_error}")
                # TLS-Required: No: go on without DANE verification (spec 02 §1.5 step 3).
                TLSREQUIREDNO_IGNORED.labels("badtlsa").inc()
            if env.require_tls and not (pkix or usable_dane):
                # RFC 8689 §4.1: REQUIRETLS needs an authenticated TLS policy for the next hop.
                REQUIRETLS_UNSUPPORTED.labels("nopolicy").inc()
                raise SessionError("missing required tls verification mechanism", code=554, secode="7.30")
            names = [host.name]
            if hop is not None:
                names = allowed_names(
                    have_mx=hop.have_mx,
                    next_hop_authentic=hop.expanded_authentic,
                    host_authentic=host_expanded_authentic,
                    recipient=env.domain,
                    next_hop_expanded=hop.expanded,
                    host=host.name,
                    base=base,
                )
            check = None
            if usable_dane:

                def check(chain: list[bytes]) -> str | None:
                    res = dane_verify(chain, usable_dane, names, datetime.now(UTC))
                    if res.verified:
                        return None
                    if env.require_tls is False:
                        TLSREQUIREDNO_IGNORED.labels("badtls").inc()
                        return None
                    return f"dane verification failed: {res.reason}"

            sessions = [r for r in (track.rcpt if track else None, host_result) if r is not None]
            # The whole TLS decision for this host: a cached session serves only the same one.
            policy = (
                mode,
                "pkix" if pkix else "",
                "dane" if dane is not None else "",
                *sorted(str(r) for r in usable_dane),
                " ".join(names) if usable_dane else "",
                "tls-required-no" if env.require_tls is False else "",
            )

            def key(ip: str) -> SessionKey:
                port = self._cfg.smtp_port
                return SessionKey(self._name, host.name, ip, port, self._ehlo, policy, proxy=self._socks)

            client, ip = await self._cached(host, ips, env, key)
            if client is None:
                client, ip = await self._dial(host, ips, dualstack, env, mode, pkix, check, sessions)
            done = False
            try:
                replies = await transact(client, env, on_accepted)
                done = True
            except SessionError as e:
                if e.secode == "7.30":
                    REQUIRETLS_UNSUPPORTED.labels("norequiretls").inc()
                raise
            finally:
                if done:
                    await self._connections.give_back(key(ip), client)
                else:
                    await client.close()
            return replies
        except SessionError as e:
            # Whatever failed, TLS or not, happened on a host DANE applies to: once its TLSA records are
            # known (usable or not), the host may only be used over TLS, so the host loop must not retry it
            # in plaintext (RFC 7672 §2.2; spec 02 §1.4 step 5).
            e.dane = dane is not None
            err = e
            raise
        except BaseException as e:
            err = e
            raise
        finally:
            result = delivery_result(err, replies)
            DELIVERY_DURATION.labels(str(env.attempt), self._name, label, result).observe(
                time.monotonic() - start
            )

    async def _addresses(
        self, host: Host, track: _TLSTrack | None
    ) -> tuple[list[str], bool, bool, str, bool]:
        """The host's IPs, whether it is dual-stack, whether the answer was DNSSEC-authentic, and the name
        its CNAMEs led to with whether that chain was authentic.

        A DNSSEC failure of the lookup is recorded on track (spec 02 §1.5 step 3).
        """
        if host.is_ip:
            return [host.name], False, False, host.name, False
        try:
            res = await asyncio.wait_for(
                self._resolver.ips(host.name, ipv4=self._ipv4, ipv6=self._ipv6), _HOST_BUDGET
            )
        except (DNSNotFound, DNSTemporary, TimeoutError) as err:
            ede = err.ede if isinstance(err, DNSError) else None
            if track is not None and ede is not None and ede.authentication:
                # A TLSA result for the host, although no TLSA lookup happened: DANE was made impossible.
                host_result = TLSResult(TLSA, host.name, is_host=True, failure=1)
                reason = dns_extended_error_reason(ede.code, ede.name)
                host_result.add_failure(
                    FailureDetail("validation-failure", failure_reason_code=reason, failed_session_count=1)
                )
                track.hosts.append(host_result)
                track.rcpt.failure += 1
            raise SessionError(f"dialing smtp server: looking up {host.name}: {err}") from None
        return res.ips, res.dualstack, res.authentic, res.expanded, res.authentic_expanded

    async def _cached(
        self, host: Host, ips: list[str], env: Envelope, key: Callable[[str], SessionKey]
    ) -> tuple[SMTPConnection | None, str]:
        """An idle session to one of the host's current addresses under the same policy, if the cache has
        one that still answers RSET, and its address.

        A reused session records no TLS result: TLS reports count negotiated sessions (RFC 8460 §4.3), and
        this one was counted when it was set up.
        """
        if not self._connections.enabled:
            return None, ""
        for ip in order_ips(ips, env.dialed.get(host.name, [])):
            client = await self._connections.take(key(ip))
            if client is not None:
                env.dialed.setdefault(host.name, []).append(ip)
                return client, ip
        return None, ""

    async def _dial(
        self,
        host: Host,
        ips: list[str],
        dualstack: bool,
        env: Envelope,
        mode: TLSMode,
        pkix: bool,
        check: Callable[[list[bytes]], str | None] | None,
        sessions: list[TLSResult],
    ) -> tuple[SMTPConnection, str]:
        """A fresh session to the first of the host's addresses that answers, and that address."""
        deadline = time.monotonic() + _HOST_BUDGET
        ordered = order_ips(ips, env.dialed.get(host.name, []))
        errors: list[str] = []
        for n, ip in enumerate(ordered):
            per_ip = max(0.5, (deadline - time.monotonic()) / (len(ordered) - n))
            try:
                sock = None
                if self._socks:
                    proxy = SocksProxy.from_url(f"socks5://{self._socks}")
                    sock = await proxy.connect(ip, self._cfg.smtp_port, timeout=per_ip)
                client = await open_session(
                    ip,
                    self._cfg.smtp_port,
                    ehlo=self._ehlo,
                    mode=mode,
                    tls_context=self._tls_context(pkix),
                    server_name=None if host.is_ip else host.name,
                    connect_timeout=per_ip,
                    command_timeout=self._cfg.command_timeout.total_seconds(),
                    verify_chain=check,
                    sock=sock,
                )
            except TimeoutError as err:
                CONNECTIONS.labels("timeout").inc()
                errors.append(f"{ip}: {type(err).__name__}: {err}")
                continue
            except (OSError, ProxyError) as err:
                CONNECTIONS.labels("error").inc()
                errors.append(f"{ip}: {err}")
                continue
            except SessionError as err:
                CONNECTIONS.labels("ok").inc()
                env.dialed.setdefault(host.name, []).append(ip)
                if err.tls:
                    result_type, reason = classify_tls_error(str(err))
                    for r in sessions:
                        r.failure += 1
                        r.add_failure(
                            FailureDetail(
                                result_type, host.name, ip, reason, 1, err.local_ip, err.remote_helo
                            )
                        )
                # Attempt-1 rule (spec 02 §1.5 step 8): a policy block on one address family may not
                # apply to the other, so a permanent 7.x on a dual-stack host is not final yet.
                if err.permanent and dualstack and err.secode.startswith("7.") and env.attempt == 1:
                    err.permanent = False
                raise
            CONNECTIONS.labels("ok").inc()
            SESSIONS_OPENED.inc()
            env.dialed.setdefault(host.name, []).append(ip)
            if client.ssl_object is not None:
                for r in sessions:
                    r.success += 1
                if not pkix and check is None and not host.is_ip:
                    # PKIX is always evaluated and reported, even when not enforced (spec 02 §2.4).
                    found = pkix_finding(peer_chain(client), host.name, self._anchors(), datetime.now(UTC))
                    if found is not None:
                        for r in sessions:
                            if not r.is_host:
                                r.add_failure(
                                    FailureDetail(
                                        found[0],
                                        host.name,
                                        ip,
                                        found[1],
                                        0,
                                        client.local_ip,
                                        client.remote_helo,
                                    )
                                )
            elif mode == "opportunistic":
                for r in sessions:
                    r.add_failure(
                        FailureDetail(
                            "starttls-not-supported",
                            host.name,
                            ip,
                            "",
                            0,
                            client.local_ip,
                            client.remote_helo,
                        )
                    )
            return client, ip
        raise SessionError(f"dialing smtp server {host.name}: " + "; ".join(errors))


def _record_tlsa_error(err: DNSTemporary, host_result: TLSResult, rcpt: TLSResult) -> None:
    """Report a failed TLSA lookup on the host's result (spec 02 §1.5 step 3).

    The reason names the resolver's Extended DNS Error if it sent one; a DNSSEC failure is dnssec-invalid
    and counts as a failed session on both results.
    """
    detail = FailureDetail("tlsa-invalid", failed_session_count=1)
    if err.ede is not None:
        detail.failure_reason_code = tlsa_extended_error_reason(err.ede.code, err.ede.name)
        if err.ede.authentication:
            detail.result_type = "dnssec-invalid"
            host_result.failure += 1
            rcpt.failure += 1
    host_result.add_failure(detail)
