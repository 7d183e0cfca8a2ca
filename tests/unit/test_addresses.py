"""Address parsing as SMTP paths need it (RFC 5321 §4.1.2, RFC 5890)."""

from __future__ import annotations

import pytest

from domain.addresses import AddressError, parse_address


def test_domain_is_lowercased_localpart_kept() -> None:
    a = parse_address("Bob.Smith@Example.COM")
    assert (a.localpart, a.domain, a.domain_unicode) == ("Bob.Smith", "example.com", "example.com")
    assert not a.needs_smtputf8


def test_idn_domain_has_both_forms_and_needs_no_smtputf8() -> None:
    a = parse_address("info@Bücher.de")
    assert a.domain == "xn--bcher-kva.de" and a.domain_unicode == "bücher.de"
    assert a.ascii == "info@xn--bcher-kva.de" and a.unicode == "info@bücher.de"
    assert not a.needs_smtputf8


def test_non_ascii_localpart_needs_smtputf8() -> None:
    assert parse_address("δοκιμή@example.com").needs_smtputf8


def test_quoted_localpart_is_canonicalised() -> None:
    assert parse_address('"plain"@x.org').localpart == "plain"
    assert parse_address('"with space"@x.org').localpart == '"with space"'
    assert parse_address('"a\\"b"@x.org').localpart == '"a\\"b"'


def test_address_literals() -> None:
    assert parse_address("x@[192.0.2.1]").domain == "[192.0.2.1]"
    assert parse_address("x@[IPv6:2001:db8:0::1]").domain == "[IPv6:2001:db8::1]"


@pytest.mark.parametrize(
    "bad",
    [
        "not an address",
        "a@",
        "@b.example",
        "a b@x.org",
        "a@-x.org",
        "a@x..org",
        "a@[300.1.1.1]",
        "a..b@x.org",
        "a@" + "x" * 64 + ".org",
        '"unterminated@x.org',
    ],
)
def test_invalid_addresses_are_rejected(bad: str) -> None:
    with pytest.raises(AddressError):
        parse_address(bad)
