"""DNS lookups for delivery through a configurable resolver, keeping the AD bit (spec 02 §1.2).

Like mox, Tempost does not validate DNSSEC itself: it trusts the AD bit of its configured, validating
recursive resolver, so the resolver must be one the operator trusts (ideally on the same host).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.asyncresolver
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

# CNAMEs followed for one name at most (spec 02 §1.2: the 16th is an error).
MAX_CNAMES = 16

# RFC 8914 §4.2–4.3 and §4.6–4.13: the info codes that say DNSSEC validation failed (spec 02 §1.2 step 3).
_AUTHENTICATION_CODES = frozenset({1, 2, 5, 6, 7, 8, 9, 10, 11, 12})

# The registered name of each info code (RFC 8914 §5.2), lowercase with dashes, e.g. 6 -> "dnssec-bogus".
_EDE_NAMES = {int(code): code.name.lower().replace("_", "-") for code in dns.edns.EDECode}


@dataclass(frozen=True)
class ExtendedError:
    """An Extended DNS Error the resolver attached to its response (RFC 8914, EDNS0 option 15)."""

    code: int
    extra_text: str = ""

    @property
    def name(self) -> str:
        """The info code's registered name, lowercase with dashes; "unknown" for unregistered codes."""
        return _EDE_NAMES.get(self.code, "unknown")

    @property
    def authentication(self) -> bool:
        """Whether the resolver reports a failed DNSSEC validation rather than another trouble."""
        return self.code in _AUTHENTICATION_CODES

    def __str__(self) -> str:
        extra = f": {self.extra_text}" if self.extra_text else ""
        return f"extended dns error {self.code} {self.name}{extra}"


class DNSError(Exception):
    """A lookup that did not produce records, with the resolver's Extended DNS Error when it sent one."""

    def __init__(self, message: str, ede: ExtendedError | None = None) -> None:
        super().__init__(message)
        self.ede = ede


class DNSNotFound(DNSError):
    """The name or the record type does not exist (NXDOMAIN or NODATA)."""

    def __init__(
        self, message: str, authentic: bool = False, expanded: str = "", ede: ExtendedError | None = None
    ) -> None:
        super().__init__(message, ede)
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

    async def _resolve(self, name: str, rdtype: str) -> dns.resolver.Answer:
        """The answer for name and rdtype; failures become DNSNotFound or DNSTemporary with the AD bit and
        the Extended DNS Error of the responses that came back."""
        try:
            return await self._r.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as err:
            responses = _responses(err)
            authentic = any(r.flags & dns.flags.AD for r in responses)
            what = "no such domain" if isinstance(err, dns.resolver.NXDOMAIN) else f"no {rdtype} records"
            raise DNSNotFound(f"{name}: {what}", authentic, ede=_extended_error(responses)) from None
        except dns.exception.DNSException as err:
            # A validating resolver answers SERVFAIL when DNSSEC validation fails; its EDE says why.
            ede = _extended_error(_responses(err))
            raise DNSTemporary(f"{name} {rdtype}: {err}" + (f" ({ede})" if ede else ""), ede) from None

    async def _query(self, name: str, rdtype: str) -> tuple[list[str], bool, str]:
        """Records as text, the AD bit, and the final owner name after CNAMEs."""
        ans = await self._resolve(name, rdtype)
        authentic = bool(ans.response.flags & dns.flags.AD)
        return [r.to_text() for r in ans], authentic, ans.canonical_name.to_text().rstrip(".")

    async def _cname(self, name: str) -> tuple[str | None, bool]:
        """The CNAME target of name (None when it has none) and whether the answer was authentic."""
        try:
            texts, ad, _ = await self._query(name, "CNAME")
        except DNSNotFound as err:
            return None, err.authentic
        return (texts[0].rstrip(".").lower() if texts else None), ad

    async def _expand(self, name: str) -> tuple[str, bool, bool, bool]:
        """Follow name's CNAMEs explicitly: the final name, the AD bit of name's own answer, whether every
        answer on the way had it, and whether name had no CNAME at all.

        Raises DNSTemporary on a CNAME loop or a chain of MAX_CNAMES.
        """
        expanded = name.rstrip(".").lower()
        seen: set[str] = set()
        authentic_orig = authentic_all = True
        hops = 0
        while True:
            if expanded in seen:
                raise DNSTemporary(f"{name}: cname loop")
            if hops >= MAX_CNAMES:
                raise DNSTemporary(f"{name}: too many cname records")
            seen.add(expanded)
            target, ad = await self._cname(expanded)
            if hops == 0:
                authentic_orig = ad
            authentic_all = authentic_all and ad
            if target is None or target == expanded:
                return expanded, authentic_orig, authentic_all, hops == 0
            expanded, hops = target, hops + 1

    async def mx(self, domain: str) -> MXResult:
        """MX records of domain after following CNAMEs explicitly (spec 02 §1.2).

        Raises DNSNotFound (carrying the expanded name, the implicit MX of RFC 5321 §5.1) when there are
        none, DNSTemporary on a CNAME loop or a chain of 16 CNAMEs. `authentic` is the AD bit of the
        first name's answers; `authentic_expanded` that of every answer along the chain.
        """
        expanded, authentic_orig, authentic_expanded, first = await self._expand(domain)
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
        """A and AAAA addresses of host, IPv4 first (spec 02 §10 scenario 48), each family in resolver order.

        Raises DNSNotFound when the host has neither. When one family fails (SERVFAIL, timeout) and the
        other answers, the answer is used only if it is not DNSSEC-authentic: a few unsigned name servers
        still fail AAAA queries, and mail to them must not bounce for it (Go's default resolver keeps such
        partial answers too), but in a signed zone an unverifiable half may be an attacker's, and using the
        other half would skip DANE's checks, so the host fails (DNSTemporary) as spec 02 §1.5 step 2 says.
        """
        # CNAMEs are followed explicitly so the first hop's AD bit is known on its own: DANE applies when
        # that hop and the addresses are authentic, with the TLSA records of the original name when a later
        # hop is not (spec 02 §1.5 step 2, §2.4; RFC 7672 §2.2.2).
        expanded, first_authentic, chain_authentic, _ = await self._expand(host)
        ips: list[str] = []
        authentic = True
        v4 = v6 = False
        failure: DNSTemporary | None = None
        for rdtype, wanted in (("A", ipv4), ("AAAA", ipv6)):
            if not wanted:
                continue
            try:
                texts, ad, _ = await self._query(expanded, rdtype)
            except DNSNotFound as err:
                authentic = authentic and err.authentic
                continue
            except DNSTemporary as err:
                failure = failure or err
                continue
            authentic = authentic and ad
            ips += texts
            v4 = v4 or rdtype == "A"
            v6 = v6 or rdtype == "AAAA"
        if failure is not None and (not ips or authentic or (failure.ede and failure.ede.authentication)):
            raise failure
        if not ips:
            raise DNSNotFound(f"{host}: no addresses", authentic and chain_authentic)
        return IPResult(
            expanded, ips, first_authentic and authentic, chain_authentic and authentic, dualstack=v4 and v6
        )

    async def tlsa(self, name: str) -> tuple[list[str], bool]:
        """TLSA records of name (e.g. `_25._tcp.mx.example.com`) and whether the answer was authentic."""
        texts, authentic, _ = await self._query(name, "TLSA")
        return texts, authentic

    async def txt(self, name: str) -> list[str]:
        """TXT records of name, each joined from its strings."""
        ans = await self._resolve(name, "TXT")
        return [b"".join(r.strings).decode("utf-8", "replace") for r in ans]  # type: ignore[attr-defined]


def _responses(err: dns.exception.DNSException) -> list[dns.message.Message]:
    """The responses a failed lookup received, where dnspython keeps them on its exception.

    NXDOMAIN keeps one per name tried; NoAnswer the one response; NoNameservers (SERVFAIL and other
    rcodes) and LifetimeTimeout one error tuple per server try, whose last item is the response if any.
    """
    found: list[object] = [err.kwargs.get("response")]
    if isinstance(err, dns.resolver.NXDOMAIN):
        found += err.kwargs.get("responses", {}).values()
    found += [e[-1] for e in err.kwargs.get("errors", [])]
    return [r for r in found if isinstance(r, dns.message.Message)]


def _extended_error(responses: list[dns.message.Message]) -> ExtendedError | None:
    """The Extended DNS Error of the responses; a DNSSEC failure wins, as it decides the TLS report.

    RFC 8914 allows several EDE options in one response.
    """
    found = [ExtendedError(int(o.code), o.text or "") for r in responses for o in r.extended_errors()]
    return next((e for e in found if e.authentication), found[0] if found else None)
