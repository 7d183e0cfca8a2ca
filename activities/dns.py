"""DNS lookups for delivery through a configurable resolver, keeping the AD bit (spec 02 §1.2).

Like mox, Tempost does not validate DNSSEC itself: it trusts the AD bit of its configured, validating
recursive resolver, so the resolver must be one the operator trusts (ideally on the same host).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

# CNAMEs followed for one name at most (spec 02 §1.2: the 16th is an error).
MAX_CNAMES = 16


class DNSError(Exception):
    """A lookup that did not produce records."""


class DNSNotFound(DNSError):
    """The name or the record type does not exist (NXDOMAIN or NODATA)."""

    def __init__(self, message: str, authentic: bool = False, expanded: str = "") -> None:
        super().__init__(message)
        self.authentic = authentic
        # For MX lookups: the name after CNAMEs, which is the implicit MX (spec 02 §1.2).
        self.expanded = expanded


class DNSTemporary(DNSError):
    """SERVFAIL, timeout or another failure that may pass."""


@dataclass(frozen=True)
class MX:
    """One mail exchanger."""

    preference: int
    host: str


@dataclass(frozen=True)
class MXResult:
    """The MX records of a domain after following CNAMEs, with the AD bits along the way."""

    expanded: str
    records: list[MX]
    authentic: bool
    authentic_expanded: bool

    @property
    def null_mx(self) -> bool:
        """RFC 7505 §3: a single MX with the root as target says the domain accepts no mail."""
        return len(self.records) == 1 and self.records[0].host in ("", ".")


@dataclass(frozen=True)
class IPResult:
    """Addresses of a host (A and AAAA), after CNAMEs."""

    expanded: str
    ips: list[str]
    authentic: bool
    authentic_expanded: bool = True
    dualstack: bool = field(default=False)


def _nameserver(spec: str) -> dns.nameserver.Nameserver:
    host, port = spec, 53
    if spec.count(":") == 1:
        host, p = spec.split(":")
        port = int(p)
    elif spec.startswith("[") and "]:" in spec:
        host, p = spec[1:].split("]:")
        port = int(p)
    return dns.nameserver.Do53Nameserver(host, port)


class Resolver:
    """Async lookups with the DNSSEC "authentic" flag of each answer."""

    def __init__(self, nameservers: list[str], timeout: float = 30.0) -> None:
        if nameservers:
            self._r = dns.asyncresolver.Resolver(configure=False)
            self._r.nameservers = [_nameserver(s) for s in nameservers]
        else:
            self._r = dns.asyncresolver.Resolver()
        # Ask for DNSSEC-aware answers (RFC 6840 §5.7: AD in the query asks the resolver to report it).
        self._r.use_edns(0, dns.flags.DO, 1232)
        self._r.flags = dns.flags.RD | dns.flags.AD
        self._r.lifetime = timeout
        self._r.timeout = min(timeout, 5.0)
        self._r.cache = None

    async def _query(self, name: str, rdtype: str) -> tuple[list[str], bool, str]:
        """Records as text, the AD bit, and the final owner name after CNAMEs."""
        try:
            ans = await self._r.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as err:
            raise DNSNotFound(f"{name}: no such domain", _ad_of(err)) from None
        except dns.resolver.NoAnswer as err:
            resp = err.kwargs.get("response")
            ad = bool(resp is not None and resp.flags & dns.flags.AD)
            raise DNSNotFound(f"{name}: no {rdtype} records", ad) from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.LifetimeTimeout) as err:
            raise DNSTemporary(f"{name} {rdtype}: {err}") from None
        except dns.exception.DNSException as err:
            raise DNSTemporary(f"{name} {rdtype}: {err}") from None
        authentic = bool(ans.response.flags & dns.flags.AD)
        return [r.to_text() for r in ans], authentic, ans.canonical_name.to_text().rstrip(".")

    async def _cname(self, name: str) -> tuple[str | None, bool]:
        """The CNAME target of name (None when it has none) and whether the answer was authentic."""
        try:
            texts, ad, _ = await self._query(name, "CNAME")
        except DNSNotFound as err:
            return None, err.authentic
        return (texts[0].rstrip(".").lower() if texts else None), ad

    async def mx(self, domain: str) -> MXResult:
        """MX records of domain after following CNAMEs explicitly (spec 02 §1.2).

        Raises DNSNotFound (carrying the expanded name, the implicit MX of RFC 5321 §5.1) when there are
        none, DNSTemporary on a CNAME loop or a chain of 16 CNAMEs. `authentic` is the AD bit of the
        first name's answers; `authentic_expanded` that of every answer along the chain.
        """
        expanded = domain.rstrip(".").lower()
        seen: set[str] = set()
        authentic_orig = authentic_expanded = True
        first = True
        hops = 0
        while True:
            if expanded in seen:
                raise DNSTemporary(f"{domain}: cname loop")
            if hops >= MAX_CNAMES:
                raise DNSTemporary(f"{domain}: too many cname records")
            seen.add(expanded)
            target, ad = await self._cname(expanded)
            if first:
                authentic_orig = authentic_orig and ad
            authentic_expanded = authentic_expanded and ad
            if target is None or target == expanded:
                break
            expanded, first, hops = target, False, hops + 1
        try:
            texts, ad, _ = await self._query(expanded, "MX")
        except DNSNotFound as err:
            # Authentic only when every answer on the way was.
            authentic = authentic_orig and authentic_expanded and err.authentic
            raise DNSNotFound(str(err), authentic, expanded) from None
        if first:
            authentic_orig = authentic_orig and ad
        authentic_expanded = authentic_expanded and ad
        records: list[MX] = []
        for t in texts:
            pref, _, host = t.partition(" ")
            records.append(MX(int(pref), host.rstrip(".").lower()))
        return MXResult(expanded, records, authentic_orig, authentic_expanded)

    async def ips(self, host: str, *, ipv4: bool = True, ipv6: bool = True) -> IPResult:
        """A and AAAA addresses of host; raises DNSNotFound when it has neither."""
        ips: list[str] = []
        authentic = True
        expanded = host
        v4 = v6 = False
        errors: list[DNSError] = []
        for rdtype, wanted in (("AAAA", ipv6), ("A", ipv4)):
            if not wanted:
                continue
            try:
                texts, ad, expanded = await self._query(host, rdtype)
            except DNSNotFound as err:
                authentic = authentic and err.authentic
                continue
            except DNSTemporary as err:
                errors.append(err)
                continue
            authentic = authentic and ad
            ips += texts
            v4 = v4 or rdtype == "A"
            v6 = v6 or rdtype == "AAAA"
        if not ips:
            if errors:
                raise errors[0]
            raise DNSNotFound(f"{host}: no addresses", authentic)
        # Resolver order within a family; IPv6 first like Go's resolver.
        return IPResult(expanded.lower(), ips, authentic, authentic, dualstack=v4 and v6)

    async def tlsa(self, name: str) -> tuple[list[str], bool]:
        """TLSA records of name (e.g. `_25._tcp.mx.example.com`) and whether the answer was authentic."""
        texts, authentic, _ = await self._query(name, "TLSA")
        return texts, authentic

    async def txt(self, name: str) -> list[str]:
        """TXT records of name, each joined from its strings."""
        try:
            ans = await self._r.resolve(name, "TXT", search=False)
        except dns.resolver.NXDOMAIN:
            raise DNSNotFound(f"{name}: no such domain") from None
        except dns.resolver.NoAnswer:
            raise DNSNotFound(f"{name}: no TXT records") from None
        except dns.exception.DNSException as err:
            raise DNSTemporary(f"{name} TXT: {err}") from None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in ans]  # type: ignore[attr-defined]


def _ad_of(err: dns.resolver.NXDOMAIN) -> bool:
    try:
        responses = err.responses()
    except Exception:  # noqa: BLE001 - older shapes of the exception carry nothing
        return False
    return any(isinstance(r, dns.message.Message) and r.flags & dns.flags.AD for r in responses.values())
