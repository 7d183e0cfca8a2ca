"""PKIX evaluation of a presented chain, for TLS reports of opportunistic sessions (spec 02 §2.4 step 2).

Opportunistic STARTTLS does not enforce WebPKI, but its result is still reported (RFC 8460): the chain the
server presented is verified against the trust anchors afterwards and the finding is recorded, while the
session goes on. Pure computation over certificates; the caller loads the anchors.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from domain.dane import name_matches, signed_by

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
# Longest chain of intermediates followed from the leaf to an anchor.
_MAX_DEPTH = 8


def load_anchors(pem_blobs: Sequence[bytes]) -> list[x509.Certificate]:
    """Trust anchors from PEM bundles, one certificate at a time, so one bad entry costs only itself."""
    anchors: list[x509.Certificate] = []
    for blob in pem_blobs:
        for block in _PEM_BLOCK.findall(blob):
            with warnings.catch_warnings():
                # Some system roots carry non-positive serial numbers; they are still roots.
                warnings.simplefilter("ignore")
                try:
                    anchors.append(x509.load_pem_x509_certificate(block))
                except ValueError:
                    continue
    return anchors


def finding(
    chain_der: Sequence[bytes], hostname: str, anchors: Sequence[x509.Certificate], now: datetime
) -> tuple[str, str] | None:
    """The TLS-report (result type, reason) of a chain that would fail PKIX for hostname; None if it passes.

    Result types as spec 02 §6: certificate-expired, certificate-host-mismatch, certificate-not-trusted
    (reason "no-system-roots" when there are no anchors at all).
    """
    if not chain_der:
        return ("certificate-not-trusted", "")
    try:
        chain = [x509.load_der_x509_certificate(d) for d in chain_der]
    except ValueError:
        return ("certificate-not-trusted", "")
    leaf = chain[0]
    # The simple, unambiguous findings first: they do not depend on the anchors.
    if not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc):
        return ("certificate-expired", "")
    if not name_matches(leaf, [hostname]):
        return ("certificate-host-mismatch", "")
    if not anchors:
        return ("certificate-not-trusted", "no-system-roots")
    if not _chains_to_anchor(leaf, chain[1:], anchors, now):
        return ("certificate-not-trusted", "")
    return None


def _valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _chains_to_anchor(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
) -> bool:
    """Whether signatures lead from the leaf through presented intermediates to an anchor.

    Deliberately lenient about extensions (this only reports; it never refuses a session), unlike a
    CA/Browser-Forum profile verifier, which calls common, working mail server certificates untrusted.
    """
    current = leaf
    for _ in range(_MAX_DEPTH):
        if any(signed_by(current, a) and _valid_at(a, now) for a in anchors):
            return True
        issuer = next((c for c in intermediates if signed_by(current, c) and _valid_at(c, now)), None)
        if issuer is None or issuer == current:
            return False
        current = issuer
    return False
