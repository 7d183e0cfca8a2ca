"""MTA-STS policy lookup for direct delivery: TXT record, HTTPS fetch and the PostgreSQL cache.

Follows spec 02 §1.3 and §2.3: a cached policy is used while its TXT id is unchanged; a failed fetch is
cached as a five-minute back-off; a DNS failure on a first fetch aborts the attempt (temporarily).
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from dataclasses import dataclass
from datetime import datetime

import httpx

from activities.dns import DNSNotFound, DNSTemporary, Resolver
from domain.mtasts import (
    MAX_POLICY_SIZE,
    Mode,
    Policy,
    PolicySyntaxError,
    Record,
    RecordSyntaxError,
    is_sts_record,
    parse_policy,
    parse_record,
)
from domain.tlsrpt import classify_tls_error, dns_extended_error_reason
from store import mtasts as cache
from store.db import Pool

BACKOFF_SECONDS = 300
FETCH_TIMEOUT = 60.0
# A refetch after the record's id changed has less time: a cached policy stands by (spec 02 §2.3 item 4).
REFETCH_TIMEOUT = 30.0
FALLBACK = "+fallback-to-cached-policy"


class MTASTSDNSError(Exception):
    """The TXT record could not be looked up; the caller decides whether that stops the attempt."""

    @property
    def reason(self) -> str:
        """The TLS-report failure reason code, which leads the message (spec 02 §2.3 item 5)."""
        return str(self).split(":", 1)[0]


class _FetchError(Exception):
    pass


class _Unreachable(Exception):
    """No connection to one address of the policy host."""


class PolicyFetchError(Exception):
    """The policy could not be fetched or does not parse; the message starts with the spec's reason."""


@dataclass(frozen=True)
class PolicyLookup:
    """The policy to apply (None: none), whether it is fresh, and what went wrong on the way.

    result_type and reason are the TLS-report failure detail of what went wrong (spec 02 §2.3 item 5).
    """

    policy: Policy | None
    fresh: bool
    error: str = ""
    result_type: str = ""
    reason: str = ""


def _failed(policy: Policy | None, error: str) -> PolicyLookup:
    """A lookup that went wrong; with a cached policy (not mode none) that policy stands in."""
    if error.startswith("sts-webpki-invalid"):
        tls_type, tls_reason = classify_tls_error(error)
        result_type, reason = "sts-webpki-invalid", tls_type + (f"+{tls_reason}" if tls_reason else "")
    elif error.startswith("policy-syntax-error"):
        result_type, reason = "sts-policy-invalid", "policy-syntax-error"
    else:
        result_type, reason = "sts-policy-fetch-error", error.split(":", 1)[0]
    if policy is not None and policy.mode != Mode.NONE:
        error, reason = error + FALLBACK, reason + FALLBACK
    return PolicyLookup(policy, False, error, result_type, reason)


class MTASTSLookup:
    """Looks up and caches MTA-STS policies."""

    def __init__(self, resolver: Resolver, pool: Pool, *, https_port: int = 443, ca_file: str = "") -> None:
        self._resolver = resolver
        self._pool = pool
        self._port = https_port
        self._ctx = ssl.create_default_context()
        if ca_file:
            self._ctx.load_verify_locations(ca_file)

    async def lookup(self, domain: str, now: datetime) -> PolicyLookup:
        """The policy for domain (RFC 8461 §5)."""
        row = await cache.get(self._pool, domain, now)
        if row is not None and row["backoff"]:
            return _failed(None, "back-off-after-recent-fetch-error")
        if row is not None:
            cached = Policy(Mode(row["mode"]), tuple(row["mx"]), row["max_age"])
            try:
                record = await self._record(domain)
            except (MTASTSDNSError, RecordSyntaxError) as err:
                return _failed(cached, str(err))
            if record is None:
                return _failed(cached, "no-mta-sts-dns-txt-record")
            if record.id == row["record_id"]:
                return PolicyLookup(cached, True)
            try:
                policy, text = await self._fetch(domain, REFETCH_TIMEOUT)
            except (_FetchError, PolicySyntaxError) as err:
                return _failed(cached, str(err))
            if policy is None:
                return _failed(cached, "no-policy-served")
            await self._store(domain, now, record, policy, text)
            return PolicyLookup(policy, True)

        try:
            record = await self._record(domain)
        except RecordSyntaxError as err:
            return _failed(None, str(err))
        if record is None:
            return PolicyLookup(None, True)
        try:
            policy, text = await self._fetch(domain)
            if policy is None:
                raise _FetchError("no-policy-served")
        except (_FetchError, PolicySyntaxError) as err:
            await cache.put(
                self._pool,
                domain,
                now,
                record_id=record.id,
                mode=Mode.NONE.value,
                mx=[],
                max_age=BACKOFF_SECONDS,
                policy_text="",
                backoff=True,
            )
            return _failed(None, str(err))
        await self._store(domain, now, record, policy, text)
        return PolicyLookup(policy, True)

    async def published_record(self, domain: str) -> Record | None:
        """The STS record published now, None when there is none, bypassing the cache (for the refresher).

        Raises MTASTSDNSError when the lookup failed and RecordSyntaxError for a broken or doubled record.
        """
        return await self._record(domain)

    async def served_policy(self, domain: str) -> tuple[Policy | None, str]:
        """The policy served now and its text (None: none served), bypassing the cache (for the refresher).

        Raises PolicyFetchError.
        """
        try:
            return await self._fetch(domain)
        except (_FetchError, PolicySyntaxError) as err:
            raise PolicyFetchError(str(err)) from None

    async def _store(self, domain: str, now: datetime, record: Record, policy: Policy, text: str) -> None:
        await cache.put(
            self._pool,
            domain,
            now,
            record_id=record.id,
            mode=policy.mode.value,
            mx=list(policy.mx),
            max_age=policy.max_age,
            policy_text=text,
        )

    async def _record(self, domain: str) -> Record | None:
        """The STS record, None when there is none (RFC 8461 §3.1)."""
        try:
            txts = await self._resolver.txt(f"_mta-sts.{domain}")
        except DNSNotFound:
            return None
        except DNSTemporary as err:
            reason = "dns-lookup"
            if err.ede is not None and err.ede.authentication:
                # The report names the DNSSEC failure the resolver reported (spec 02 §2.3 item 5).
                reason = dns_extended_error_reason(err.ede.code, err.ede.name)
            raise MTASTSDNSError(f"{reason}: {err}") from None
        sts = [t for t in txts if is_sts_record(t)]
        if not sts:
            return None
        if len(sts) > 1:
            raise RecordSyntaxError("multiple-mta-sts-records")
        try:
            return parse_record(sts[0])
        except RecordSyntaxError as err:
            raise RecordSyntaxError(f"record-syntax-error: {err}") from None

    async def _fetch(self, domain: str, timeout: float = FETCH_TIMEOUT) -> tuple[Policy | None, str]:
        """GET the policy over HTTPS with WebPKI checks, no redirects (RFC 8461 §3.3); None: none served."""
        host = f"mta-sts.{domain}"
        try:
            ips = (await self._resolver.ips(host)).ips
        except DNSNotFound:
            return None, ""
        except DNSTemporary as err:
            raise _FetchError(f"cannot-fetch-policy: {err}") from None
        deadline = time.monotonic() + timeout
        unreachable: list[str] = []
        for n, ip in enumerate(ips):
            # Like dialing MX hosts: the remaining time is shared by the addresses still to try.
            budget = max(1.0, (deadline - time.monotonic()) / (len(ips) - n))
            try:
                found = await self._get(host, ip, budget)
            except _Unreachable as err:
                unreachable.append(f"{ip}: {err}")
                continue
            if found is None:
                return None, ""
            body = found
            break
        else:
            raise _FetchError("cannot-fetch-policy: " + "; ".join(unreachable))
        text = body.decode("utf-8", "replace")
        try:
            return parse_policy(text), text
        except PolicySyntaxError as err:
            raise PolicySyntaxError(f"policy-syntax-error: {err}") from None

    async def _get(self, host: str, ip: str, timeout: float) -> bytes | None:
        """The policy file from one address of the policy host; None: it serves none (404).

        Raises _Unreachable when no connection could be made, so the next address is tried.
        """
        netloc = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
        port = "" if self._port == 443 else f":{self._port}"
        url = f"https://{netloc}:{self._port}/.well-known/mta-sts.txt"
        try:
            # Connect to the address our resolver gave, while TLS (SNI, certificate name) and the Host
            # header use the policy host's name.
            async with httpx.AsyncClient(verify=self._ctx, timeout=timeout, follow_redirects=False) as http:
                async with http.stream(
                    "GET", url, headers={"Host": host + port}, extensions={"sni_hostname": host}
                ) as resp:
                    if resp.status_code == 404:
                        return None
                    if resp.status_code != 200:
                        raise _FetchError(f"cannot-fetch-policy: http status {resp.status_code}")
                    body = b""
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_POLICY_SIZE:
                            raise PolicySyntaxError("policy-syntax-error: larger than 64 KiB")
                    return body
        except httpx.ConnectError as err:
            cause = err.__cause__ or err.__context__
            if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(err):
                raise _FetchError(f"sts-webpki-invalid: {err}") from None
            raise _Unreachable(str(err)) from None
        except httpx.ConnectTimeout as err:
            raise _Unreachable(f"timeout: {err}") from None
        except httpx.HTTPError as err:
            raise _FetchError(f"cannot-fetch-policy: {type(err).__name__}: {err}") from None
