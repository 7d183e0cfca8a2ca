"""DANE TLSA usability and chain verification (RFC 7672; spec 02 §10 scenario 57)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from domain.dane import TLSA, allowed_names, parse_tlsa, usable, verify

NOW = datetime.now(UTC)
# Past the end of trustme certificates' validity.
FAR_FUTURE = datetime(3100, 1, 1, tzinfo=UTC)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def _spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.fixture(scope="module")
def pki() -> tuple[bytes, bytes, bytes]:
    """(leaf, intermediate, root) DER for mx.example.com, issued through an intermediate CA."""
    root = trustme.CA()
    inter = root.create_child_ca()
    leaf = inter.issue_cert("mx.example.com")
    pems = [b.bytes() for b in leaf.cert_chain_pems]
    return _der(pems[0]), _der(pems[1]), _der(root.cert_pem.bytes())


def test_57_dane_ee_spki_sha256_sha512_and_exact(pki: tuple[bytes, bytes, bytes]) -> None:
    leaf, inter, _ = pki
    for rec in (
        TLSA(3, 1, 1, hashlib.sha256(_spki(leaf)).digest()),
        TLSA(3, 1, 2, hashlib.sha512(_spki(leaf)).digest()),
        TLSA(3, 0, 0, leaf),
    ):
        assert verify([leaf, inter], [rec], ["other.example"], NOW).verified  # names do not matter for EE


def test_57_dane_ee_ignores_expiry(pki: tuple[bytes, bytes, bytes]) -> None:
    leaf, inter, _ = pki
    rec = TLSA(3, 1, 1, hashlib.sha256(_spki(leaf)).digest())
    assert verify([leaf, inter], [rec], [], FAR_FUTURE).verified


def test_57_dane_ta_on_the_intermediate_checks_chain_name_and_dates(pki: tuple[bytes, bytes, bytes]) -> None:
    leaf, inter, _ = pki
    rec = TLSA(2, 1, 1, hashlib.sha256(_spki(inter)).digest())
    assert verify([leaf, inter], [rec], ["mx.example.com"], NOW).verified
    assert not verify([leaf, inter], [rec], ["mismatch.example"], NOW).verified
    assert not verify([leaf, inter], [rec], ["mx.example.com"], FAR_FUTURE).verified


def test_57_dane_ta_exact_record_verifies_when_the_server_omits_the_ca(
    pki: tuple[bytes, bytes, bytes],
) -> None:
    leaf, inter, _ = pki
    assert verify([leaf], [TLSA(2, 0, 0, inter)], ["mx.example.com"], NOW).verified


def test_57_mismatching_records_do_not_verify(pki: tuple[bytes, bytes, bytes]) -> None:
    leaf, inter, root = pki
    assert not verify([leaf, inter], [TLSA(3, 1, 1, b"\0" * 32)], ["mx.example.com"], NOW).verified
    # A TA that the server did not present (and the record is only a hash) cannot anchor the chain.
    rec = TLSA(2, 1, 1, hashlib.sha256(_spki(root)).digest())
    assert not verify([leaf, inter], [rec], ["mx.example.com"], NOW).verified


def test_usable_records() -> None:
    assert usable(TLSA(3, 1, 1, b"\1" * 32)) and usable(TLSA(2, 0, 2, b"\1" * 64))
    assert not usable(TLSA(1, 1, 1, b"\1" * 32))  # PKIX-EE is not for SMTP
    assert not usable(TLSA(0, 1, 1, b"\1" * 32))
    assert not usable(TLSA(3, 2, 1, b"\1" * 32))
    assert not usable(TLSA(3, 1, 1, b"\1" * 31))
    assert not usable(TLSA(3, 0, 0, b"not a certificate"))
    assert parse_tlsa("3 1 1 0A0b") == TLSA(3, 1, 1, b"\x0a\x0b")


def test_51_allowed_names_follow_the_mx_and_cname_authenticity_table() -> None:
    """R = recipient, E = its expansion, H = MX host, B = TLSA base domain (spec 02 §2.5)."""

    def names(have_mx: bool, na: bool, ha: bool) -> list[str]:
        return allowed_names(
            have_mx=have_mx,
            next_hop_authentic=na,
            host_authentic=ha,
            recipient="r.example",
            next_hop_expanded="e.example",
            host="h.example",
            base="b.example",
        )

    assert names(False, False, False) == ["h.example"]
    assert names(False, True, True) == ["b.example", "h.example"]
    assert names(True, True, True) == ["b.example", "h.example", "r.example", "e.example"]
    assert names(True, True, False) == ["h.example", "r.example", "e.example"]
    assert names(True, False, True) == ["r.example"]
    # Without a CNAME anywhere the list has no repeats.
    plain = allowed_names(
        have_mx=True,
        next_hop_authentic=True,
        host_authentic=True,
        recipient="r.example",
        next_hop_expanded="r.example",
        host="mx.r.example",
        base="mx.r.example",
    )
    assert plain == ["mx.r.example", "r.example"]
