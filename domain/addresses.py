"""Email addresses as SMTP sees them (RFC 5321 §4.1.2), with internationalised domains (RFC 5890)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

# RFC 5322 §3.2.3 atext, extended by RFC 6532 §3.2 with any non-ASCII character.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class AddressError(ValueError):
    """An address that cannot be used in an SMTP envelope."""


@dataclass(frozen=True)
class Address:
    """A parsed mailbox: localpart as given, domain in ASCII (A-labels, lowercase) and Unicode form."""

    localpart: str
    domain: str
    domain_unicode: str

    @property
    def ascii(self) -> str:
        """The address with the A-label domain, for SMTP without SMTPUTF8."""
        return f"{self.localpart}@{self.domain}"

    @property
    def unicode(self) -> str:
        """The address as people read it."""
        return f"{self.localpart}@{self.domain_unicode}"

    @property
    def needs_smtputf8(self) -> bool:
        """Whether the localpart is non-ASCII; an IDN domain can go as A-labels (RFC 6531 §3.2)."""
        return not self.localpart.isascii()

    def __str__(self) -> str:
        return self.unicode


def _localpart(s: str) -> str:
    if _DOT_ATOM.fullmatch(s):
        return s
    # RFC 5321 §4.1.2 quoted-string: printable characters, with backslash escapes.
    if len(s) >= 2 and s[0] == s[-1] == '"':
        out, escaped = [], False
        for c in s[1:-1]:
            if escaped:
                out.append(c)
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"' or (ord(c) < 0x20 or ord(c) == 0x7F):
                raise AddressError(f"invalid character {c!r} in quoted localpart")
            else:
                out.append(c)
        if escaped:
            raise AddressError("quoted localpart ends in a backslash")
        inner = "".join(out)
        if not inner:
            raise AddressError("empty localpart")
        # Canonical form: unquoted when the content is a valid dot-atom, else quoted minimally.
        if _DOT_ATOM.fullmatch(inner):
            return inner
        return '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise AddressError(f"invalid localpart {s!r}")


def _domain(s: str) -> tuple[str, str]:
    if s.startswith("[") and s.endswith("]"):
        # RFC 5321 §4.1.3 address literal.
        inner = s[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                ip6 = ipaddress.IPv6Address(inner[5:])
                lit = f"[IPv6:{ip6.compressed}]"
            else:
                lit = f"[{ipaddress.IPv4Address(inner)}]"
        except ValueError:
            raise AddressError(f"invalid address literal {s!r}") from None
        return lit, lit
    if not s:
        raise AddressError("empty domain")
    name = s.rstrip(".")
    try:
        ascii_ = idna.encode(name, uts46=True).decode().lower()
        unicode_ = idna.decode(ascii_)
    except idna.IDNAError as err:
        # Names registered under IDNA 2003 (symbols such as ☺) still exist and receive mail; accept them
        # the way lenient resolvers do, through Python's IDNA 2003 codec.
        try:
            ascii_ = name.encode("idna").decode().lower()
            unicode_ = ascii_.encode().decode("idna")
        except UnicodeError:
            raise AddressError(f"invalid domain {s!r}: {err}") from None
    labels = ascii_.split(".")
    if len(ascii_) > 253 or len(labels) < 1 or not all(_LABEL.fullmatch(x) for x in labels):
        raise AddressError(f"invalid domain {s!r}")
    return ascii_, unicode_


# RFC 5321 §4.5.3.1.1 and §4.5.3.1.3: a localpart has at most 64 octets, a path at most 256 including
# its angle brackets; RFC 6531 §3.3 keeps these limits in octets of UTF-8 for internationalised addresses.
MAX_LOCALPART = 64
MAX_ADDRESS = 254


def parse_address(s: str) -> Address:
    """Parse `localpart@domain` as an SMTP forward or reverse path takes it (no display name, no <>)."""
    try:
        octets = len(s.encode())
    except UnicodeEncodeError:
        raise AddressError("address is not valid Unicode (a lone surrogate)") from None
    if octets > MAX_ADDRESS + 2:
        raise AddressError(f"address longer than {MAX_ADDRESS} octets")
    if "\ufffd" in s:
        # U+FFFD stands for bytes that failed to decode somewhere upstream; no mailbox is named so.
        raise AddressError("address contains U+FFFD, the replacement character of a decoding error")
    local, at, domain = s.rpartition("@")
    if not at or not local:
        raise AddressError(f"invalid address {s!r}: expected localpart@domain")
    d_ascii, d_unicode = _domain(domain)
    localpart = _localpart(local)
    if len(localpart.encode()) > MAX_LOCALPART:
        raise AddressError(f"localpart longer than {MAX_LOCALPART} octets (RFC 5321 §4.5.3.1.1)")
    if len(localpart.encode()) + 1 + len(d_ascii) > MAX_ADDRESS:
        raise AddressError(f"address longer than {MAX_ADDRESS} octets (RFC 5321 §4.5.3.1.3)")
    return Address(localpart, d_ascii, d_unicode)


def parse_domain(s: str) -> tuple[str, str]:
    """A domain name (or address literal) as (ASCII, Unicode) forms; AddressError when it is not one."""
    if len(s) > 1024:
        raise AddressError("domain too long")
    return _domain(s)


def envelope_path(localpart: str, domain: str) -> str:
    """An SMTP path from its stored parts; the null reverse path (a DSN's sender) is ""."""
    return f"{localpart}@{domain}" if localpart or domain else ""
