"""PKIX findings for TLS reports of opportunistic sessions (spec 02 §2.4 step 2, §6)."""

from __future__ import annotations

import datetime as dt

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from domain.pkix import finding, load_anchors

NOW = dt.datetime.now(dt.UTC)


def _chain(ca: trustme.CA, name: str, **kw: object) -> list[bytes]:
    cert = ca.issue_cert(name, **kw)  # type: ignore[arg-type]
    return [
        x509.load_pem_x509_certificate(b.bytes()).public_bytes(Encoding.DER) for b in cert.cert_chain_pems
    ]


def test_trusted_chain_for_the_name_has_no_finding() -> None:
    ca = trustme.CA()
    anchors = load_anchors([ca.cert_pem.bytes()])
    assert finding(_chain(ca, "mx.example.com"), "mx.example.com", anchors, NOW) is None


def test_unknown_authority_wrong_name_expired_and_no_roots() -> None:
    ca, other = trustme.CA(), trustme.CA()
    chain = _chain(ca, "mx.example.com")
    anchors = load_anchors([other.cert_pem.bytes()])
    assert finding(chain, "mx.example.com", anchors, NOW) == ("certificate-not-trusted", "")
    assert finding(chain, "other.example.com", load_anchors([ca.cert_pem.bytes()]), NOW) == (
        "certificate-host-mismatch",
        "",
    )
    later = dt.datetime(3001, 1, 1, tzinfo=dt.UTC)  # trustme certificates run to the year 3000
    assert finding(chain, "mx.example.com", load_anchors([ca.cert_pem.bytes()]), later) == (
        "certificate-expired",
        "",
    )
    assert finding(chain, "mx.example.com", [], NOW) == ("certificate-not-trusted", "no-system-roots")
    assert finding([], "mx.example.com", anchors, NOW) == ("certificate-not-trusted", "")
