"""DKIM signing of the mail Tempost queues (RFC 6376; Ed25519 per RFC 8463) and the DNS records of its keys.

Pure: keys come in as objects loaded once at process start (store/dkimkeys.py reads the files).
dkimpy parses the header section, canonicalizes, selects the signed fields and folds; the signature itself
is made by `cryptography` (OpenSSL) with the key parsed at start. `sign` returns only the DKIM-Signature
header fields; the caller stores them in the submission's prefix, in front of the message, which is never
rewritten.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from domain.config import Config

ED25519 = "ed25519-sha256"
RSA = "rsa-sha256"
# The k= tag of each algorithm's key record (RFC 6376 §3.6.1, RFC 8463 §4.2).
KEY_TYPES = {ED25519: "ed25519", RSA: "rsa"}
# RFC 8301 §3.2 requires at least 1024 bits and recommends 2048; big receivers treat less as unsigned.
MIN_RSA_BITS = 2048
# One character-string of a TXT record holds at most 255 bytes (RFC 1035 §3.3.14).
TXT_STRING_MAX = 255
# The configuration already refuses signing the fields that cannot survive transit; a Selector built any
# other way is held to the same rule.
_NEVER_SIGNED = {b"return-path", b"received", b"dkim-signature"}
_FIELD_NAME = b"DKIM-Signature"


class SigningError(Exception):
    """A message could not be signed (malformed header section, unusable key)."""


@dataclass(frozen=True)
class PrivateKey:
    """A loaded private key: the parsed key that signs (kept out of repr, so it is never logged) and the
    public half that goes into DNS."""

    algorithm: str
    # Parsed once, when the key file is read: signing then costs only the private-key operation.
    signer: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey = field(repr=False)
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


def sign(message: bytes, selectors: Sequence[Selector]) -> bytes:
    """The DKIM-Signature header fields, one per selector in order, for a CRLF message (RFC 6376 §5).

    Each listed header field is signed as often as it occurs, plus once more with seal_headers, so a copy
    added later (or a field that was absent, added) breaks the signature (RFC 6376 §5.4.2, §8.15).
    """
    if not selectors:
        return b""
    try:
        headers, body = dkim.rfc822_parse(message)
    except dkim.DKIMException as err:
        raise SigningError(f"message: {err}") from None
    except IndexError:
        # dkimpy's parser, on a header section whose first line is a continuation line.
        raise SigningError("message: the header section starts with a folded line") from None
    present: dict[bytes, int] = {}
    for name, _ in headers:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    # Selectors side by side usually share canonicalization: the body is canonicalized and hashed, and the
    # header section canonicalized, once per canonicalization rather than once per selector.
    body_hashes: dict[bytes, bytes] = {}
    canonical_headers: dict[bytes, list[tuple[bytes, bytes]]] = {}
    signed_at = int(time.time())
    out = []
    for sel in selectors:
        where = f"selector {sel.name} of {sel.domain}"
        include: list[bytes] = []
        for h in sel.headers:
            name = h.lower().encode()
            include += [name] * (present.get(name, 0) + (1 if sel.seal_headers else 0))
        if b"from" not in include:
            raise SigningError(f"{where}: From must be signed (RFC 6376 §5.4)")
        if refused := _NEVER_SIGNED.intersection(include):
            raise SigningError(f"{where}: {b', '.join(sorted(refused)).decode()} must not be signed")
        try:
            policy = dkim.CanonicalizationPolicy.from_c_value(sel.canonicalization.encode())
        except dkim.InvalidCanonicalizationPolicyError as err:
            raise SigningError(f"{where}: canonicalization {err}") from None
        c = policy.to_c_value()
        if c not in canonical_headers:
            canonical_headers[c] = policy.canonicalize_headers(headers)
        body_c = c.partition(b"/")[2]
        if body_c not in body_hashes:
            body_hashes[body_c] = hashlib.sha256(policy.canonicalize_body(body)).digest()
        tags = [
            (b"v", b"1"),
            (b"a", sel.key.algorithm.encode()),
            (b"c", c),
            (b"d", sel.domain.encode()),
            (b"i", b"@" + sel.domain.encode()),
            (b"q", b"dns/txt"),
            (b"s", sel.name.encode()),
            (b"t", str(signed_at).encode()),
        ]
        if lifetime := int(sel.expiration.total_seconds()):
            tags.append((b"x", str(signed_at + lifetime).encode()))
        tags += [
            (b"h", b" : ".join(include)),
            (b"bh", base64.b64encode(body_hashes[body_c])),
            # A placeholder as long as a signature folds b= onto lines of its own, so filling it in does not
            # refold (and so change) the tags hashed before it.
            (b"b", b"0" * 60),
        ]
        # RFC 6376 §3.7: the signature covers the selected fields, then this field with b= empty and without
        # its trailing CRLF; dkimpy's hash_headers does the selection and that last step.
        unsigned = dkim.RE_BTAG.sub(rb"\1", _folded(tags, b""))
        digest = hashlib.sha256()
        dkim.hash_headers(digest, policy, canonical_headers[c], include, (_FIELD_NAME, b" " + unsigned), None)
        tags[-1] = (b"b", base64.b64encode(_signature(sel.key, digest.digest(), where)))
        out.append(_FIELD_NAME + b": " + _folded(tags, b"\r\n"))
    return b"".join(out)


def _folded(tags: list[tuple[bytes, bytes]], end: bytes) -> bytes:
    """The tag list as a field value, folded as dkimpy folds it (lines of at most 72 characters)."""
    return bytes(dkim.fold(b"; ".join(b"=".join(t) for t in tags) + end, namelen=len(_FIELD_NAME)))


def _signature(key: PrivateKey, digest: bytes, where: str) -> bytes:
    """The signature of a SHA-256 header hash: RSASSA-PKCS1-v1_5 (RFC 6376 §3.3.1, RFC 8017 §8.2) or
    Ed25519 over the hash itself (RFC 8463 §3)."""
    if key.algorithm == RSA and isinstance(key.signer, rsa.RSAPrivateKey):
        return key.signer.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    if key.algorithm == ED25519 and isinstance(key.signer, ed25519.Ed25519PrivateKey):
        return key.signer.sign(digest)
    raise SigningError(f"{where}: the key is not an {key.algorithm} key")
