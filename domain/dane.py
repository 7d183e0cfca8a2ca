"""DANE for SMTP (RFC 7672): which TLSA records are usable, and whether a certificate chain matches.

Pure: the chain arrives as DER bytes (leaf first) from the TLS layer, the records from DNS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

DANE_TA, DANE_EE = 2, 3


@dataclass(frozen=True)
class TLSA:
    """One TLSA record (RFC 6698 §2.1)."""

    usage: int
    selector: int
    matching: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching} {self.data.hex()}"


def parse_tlsa(text: str) -> TLSA:
    """A record from its presentation form, e.g. `3 1 1 0a1b...`."""
    usage, selector, matching, *hexdata = text.split()
    return TLSA(int(usage), int(selector), int(matching), bytes.fromhex("".join(hexdata)))


def usable(r: TLSA) -> bool:
    """Whether SMTP can use a record (spec 02 §2.4, RFC 7672 §3.1): DANE-TA/EE, known selector and matching.

    PKIX-TA and PKIX-EE are unusable for SMTP (RFC 7672 §3.1.3); exact-match data must parse.
    """
    if r.usage not in (DANE_TA, DANE_EE) or r.selector not in (0, 1):
        return False
    if r.matching == 1:
        return len(r.data) == 32
    if r.matching == 2:
        return len(r.data) == 64
    if r.matching == 0:
        try:
            if r.selector == 0:
                x509.load_der_x509_certificate(r.data)
            else:
                load_der_public_key(r.data)
        except ValueError:
            return False
        return True
    return False


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(Encoding.DER)
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _matches(cert: x509.Certificate, r: TLSA) -> bool:
    data = _selected(cert, r.selector)
    if r.matching == 1:
        data = hashlib.sha256(data).digest()
    elif r.matching == 2:
        data = hashlib.sha512(data).digest()
    return data == r.data


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(
                cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
            )
        elif isinstance(key, ec.EllipticCurvePublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except Exception:  # noqa: BLE001 - any verification failure means "not signed by"
        return False
    return True


def name_matches(cert: x509.Certificate, names: Sequence[str]) -> bool:
    """RFC 6125 DNS-ID matching with one left-most wildcard label, as RFC 7672 §3.2.3 asks for DANE-TA."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns_names = []
    for want in (n.lower().rstrip(".") for n in names):
        for have in dns_names:
            if have == want:
                return True
            if have.startswith("*.") and "." in want and want.split(".", 1)[1] == have[2:]:
                return True
    return False


@dataclass(frozen=True)
class DANEResult:
    """Whether the chain is verified by a record, and which one (or why not)."""

    verified: bool
    record: TLSA | None = None
    reason: str = ""


def verify(
    chain_der: Sequence[bytes], records: Sequence[TLSA], names: Sequence[str], now: datetime
) -> DANEResult:
    """Verify a server's chain (leaf first) against usable TLSA records (RFC 7672 §3.1).

    DANE-EE matches the leaf only, ignoring names and validity dates (RFC 7672 §3.1.1). DANE-TA matches a
    certificate of the chain as trust anchor; the leaf must chain up to it, be within its validity, and
    carry one of the allowed names (RFC 7672 §3.1.2, §3.2.3).
    """
    if not chain_der:
        return DANEResult(False, reason="no certificate presented")
    chain = [x509.load_der_x509_certificate(d) for d in chain_der]
    leaf = chain[0]
    good = [r for r in records if usable(r)]
    for r in good:
        if r.usage == DANE_EE and _matches(leaf, r):
            return DANEResult(True, r)
    for r in good:
        if r.usage != DANE_TA:
            continue
        candidates = list(chain)
        if r.selector == 0 and r.matching == 0:
            # The record is the anchor itself, so a server that leaves it out of its chain still verifies.
            candidates.append(x509.load_der_x509_certificate(r.data))
        for i, anchor in enumerate(candidates):
            if not _matches(anchor, r):
                continue
            path = candidates[: i + 1]
            if not all(signed_by(path[k], path[k + 1]) for k in range(len(path) - 1)):
                continue
            if not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc):
                return DANEResult(False, reason="certificate expired or not yet valid")
            if not name_matches(leaf, names):
                return DANEResult(False, reason="certificate name does not match")
            return DANEResult(True, r)
    return DANEResult(False, reason="no tlsa record matches the certificate chain")


def allowed_names(
    *,
    have_mx: bool,
    next_hop_authentic: bool,
    host_authentic: bool,
    recipient: str,
    next_hop_expanded: str,
    host: str,
    base: str,
) -> list[str]:
    """Names a DANE-TA certificate may carry, the first being the TLS server name (spec 02 §2.5).

    recipient (R) is the recipient domain, next_hop_expanded (E) the name its CNAMEs led to, host (H) the
    MX host and base (B) the TLSA base domain (H or the name H's CNAMEs led to).
    """
    if not have_mx:
        return [host] if not host_authentic or base == host else [base, host]
    if not next_hop_authentic:
        return [recipient]
    names = [base] if host_authentic else []
    if base != host or not host_authentic:
        names.append(host)
    names.append(recipient)
    if next_hop_expanded != recipient:
        names.append(next_hop_expanded)
    return names
