"""DKIM signing of the mail Tempost queues (RFC 6376; Ed25519 per RFC 8463) and the DNS records of its keys.

Pure: keys come in as objects loaded once at process start (store/dkimkeys.py reads the files), and the
signing itself is dkimpy's. `sign` returns only the DKIM-Signature header fields; the caller stores them in
the submission's prefix, in front of the message, which is never rewritten.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import dkim

from domain.config import Config

ED25519 = "ed25519-sha256"
RSA = "rsa-sha256"
# The k= tag of each algorithm's key record (RFC 6376 §3.6.1, RFC 8463 §4.2).
KEY_TYPES = {ED25519: "ed25519", RSA: "rsa"}
# RFC 8301 §3.2 requires at least 1024 bits and recommends 2048; big receivers treat less as unsigned.
MIN_RSA_BITS = 2048
# One character-string of a TXT record holds at most 255 bytes (RFC 1035 §3.3.14).
TXT_STRING_MAX = 255
# dkimpy refuses some fields RFC 6376 allows (Bcc, Keywords); the configuration already refuses the ones
# that cannot survive transit, so only those stay refused.
_NEVER_SIGNED = {b"return-path", b"received", b"dkim-signature"}


class SigningError(Exception):
    """A message could not be signed (malformed header section, unusable key)."""


@dataclass(frozen=True)
class PrivateKey:
    """A loaded private key: the form dkimpy signs with (kept out of repr, so it is never logged) and the
    public half that goes into DNS."""

    algorithm: str
    # RSA: PKCS#1 PEM; Ed25519: the 32-byte seed in base64 (what dkimpy and PyNaCl take).
    signing_form: bytes = field(repr=False)
    # RSA: DER SubjectPublicKeyInfo; Ed25519: the raw 32-byte public key (RFC 8463 §4.2).
    public: bytes
    bits: int


@dataclass(frozen=True)
class Selector:
    """A configured selector of a domain with its loaded key."""

    domain: str
    name: str
    key: PrivateKey
    headers: tuple[str, ...]
    seal_headers: bool
    canonicalization: str
    expiration: timedelta
    signing: bool

    @property
    def record_name(self) -> str:
        """Where the public key is published (RFC 6376 §3.6.2.1)."""
        return f"{self.name}._domainkey.{self.domain}"

    @property
    def record_value(self) -> str:
        """The whole TXT value to publish, as one string."""
        return record_value(self.key)


class Keyring:
    """Every configured selector with its key; answers which ones sign mail from a domain."""

    def __init__(self, selectors: Iterable[Selector] = ()) -> None:
        self.selectors = list(selectors)

    def signers(self, domain: str) -> list[Selector]:
        """The selectors that sign mail from `domain`: the domain's own, else the nearest parent domain's
        that has signing selectors (as mox does, so mail from a subdomain is signed with d= its parent,
        aligned under DMARC's relaxed mode, RFC 7489 §3.1.1). Empty when none signs."""
        name = ascii_domain(domain)
        while name:
            found = [s for s in self.selectors if s.domain == name and s.signing]
            if found:
                return found
            name = name.partition(".")[2]
        return []


def ascii_domain(domain: str) -> str:
    """The lower-case A-label form of a domain, as d= and record names carry it."""
    try:
        return domain.rstrip(".").encode("idna").decode().lower()
    except UnicodeError:
        return domain.rstrip(".").lower()


def keyring(config: Config, keys: dict[tuple[str, str], PrivateKey]) -> Keyring:
    """The configured selectors with their keys, keyed by (ASCII domain, selector name)."""
    out = []
    for domain, dk in config.dkim_domains():
        for name, sel in dk.selectors.items():
            out.append(
                Selector(
                    domain=domain,
                    name=name,
                    key=keys[(domain, name)],
                    headers=tuple(sel.headers),
                    seal_headers=sel.seal_headers,
                    canonicalization=sel.canonicalization,
                    expiration=sel.expiration,
                    signing=name in dk.sign,
                )
            )
    # Within a domain, signatures come in the order `sign` lists them.
    order = {(d, n): i for d, dk in config.dkim_domains() for i, n in enumerate(dk.sign)}
    out.sort(key=lambda s: (s.domain, order.get((s.domain, s.name), len(order))))
    return Keyring(out)


def record_value(key: PrivateKey) -> str:
    """The DKIM key record's TXT value (RFC 6376 §3.6.1): version, key type and public key."""
    return f"v=DKIM1; k={KEY_TYPES[key.algorithm]}; p={base64.b64encode(key.public).decode()}"


def txt_strings(value: str) -> list[str]:
    """A TXT value split into character-strings of at most 255 bytes, to publish as one record."""
    return [value[i : i + TXT_STRING_MAX] for i in range(0, len(value), TXT_STRING_MAX)] or [""]


def record_problem(published: Sequence[str], key: PrivateKey) -> str:
    """Why the published TXT records do not carry this key ("" when one of them does)."""
    if not published:
        return "no TXT record"
    problems = []
    for value in published:
        tags = _tags(value)
        if tags.get("v", "DKIM1") != "DKIM1":
            problems.append(f"v={tags['v']}, not DKIM1")
        elif tags.get("k", "rsa") != KEY_TYPES[key.algorithm]:
            problems.append(f"k={tags.get('k', 'rsa')}, the key is {KEY_TYPES[key.algorithm]}")
        elif not tags.get("p"):
            problems.append("p= is empty: the key is revoked")
        elif "".join(tags["p"].split()) != base64.b64encode(key.public).decode():
            problems.append("p= is another public key")
        else:
            return ""
    return "; ".join(problems)


def _tags(value: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 §3.2)."""
    out = {}
    for part in value.split(";"):
        name, eq, v = part.partition("=")
        if eq:
            out[name.strip()] = v.strip()
    return out


class _DKIM(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's signer, with the x= tag it cannot write."""

    lifetime = 0

    def gen_header(self, fields, include_headers, canon_policy, header_name, pk, standardize=False):  # type: ignore[no-untyped-def]  # noqa: E501
        if self.lifetime:
            signed_at = int(dict(fields)[b"t"])
            at = [name for name, _ in fields].index(b"h")
            fields.insert(at, (b"x", str(signed_at + self.lifetime).encode()))
        return super().gen_header(fields, include_headers, canon_policy, header_name, pk, standardize)


def sign(message: bytes, selectors: Sequence[Selector]) -> bytes:
    """The DKIM-Signature header fields, one per selector in order, for a CRLF message.

    Each listed header field is signed as often as it occurs, plus once more with seal_headers, so a copy
    added later (or a field that was absent, added) breaks the signature (RFC 6376 §5.4.2, §8.15).
    """
    if not selectors:
        return b""
    try:
        signer = _DKIM(message, logger=_QUIET)
    except dkim.DKIMException as err:
        raise SigningError(f"message: {err}") from None
    signer.should_not_sign = set(_NEVER_SIGNED)
    signer.frozen_sign = set()
    present: dict[bytes, int] = {}
    for name, _ in signer.headers:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    out = []
    for sel in selectors:
        include: list[bytes] = []
        for h in sel.headers:
            name = h.lower().encode()
            include += [name] * (present.get(name, 0) + (1 if sel.seal_headers else 0))
        header_canon, _, body_canon = sel.canonicalization.partition("/")
        signer.lifetime = int(sel.expiration.total_seconds())
        try:
            out.append(
                signer.sign(
                    sel.name.encode(),
                    sel.domain.encode(),
                    sel.key.signing_form,
                    signature_algorithm=sel.key.algorithm.encode(),
                    canonicalize=(header_canon.encode(), body_canon.encode()),
                    include_headers=include,
                )
            )
        except (dkim.DKIMException, ValueError) as err:
            raise SigningError(f"selector {sel.name} of {sel.domain}: {err}") from None
    return b"".join(out)


class _Quiet:
    """A logger that drops dkimpy's debug output (it may log header contents)."""

    def debug(self, *args: object, **kwargs: object) -> None:
        pass

    info = warning = error = debug

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - the logging.Logger method dkimpy calls
        return False


_QUIET = _Quiet()
