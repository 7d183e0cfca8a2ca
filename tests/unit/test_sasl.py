"""SASL clients against the RFC examples (RFC 5802 §5, RFC 7677 §3, RFC 2195 §2, RFC 4616)."""

from __future__ import annotations

import pytest

from domain.sasl import CramMD5, Plain, SASLError, Scram, choose_mechanism


def test_scram_sha1_rfc5802_example() -> None:
    c = Scram("sha1", "user", "pencil", nonce=lambda: "fyko+d2lbbFgONRv9qkxdawL")
    assert c.start() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    final = c.step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    assert final == b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    assert c.step(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=") == b"" and c.done


def test_scram_sha256_rfc7677_example() -> None:
    c = Scram("sha256", "user", "pencil", nonce=lambda: "rOprNGfwEbeRWgbNEkqO")
    c.start()
    final = c.step(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    c.step(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert c.done


def test_scram_rejects_a_server_that_does_not_know_the_password() -> None:
    c = Scram("sha1", "user", "pencil", nonce=lambda: "fyko+d2lbbFgONRv9qkxdawL")
    c.start()
    c.step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(SASLError):
        c.step(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA=")


def test_scram_rejects_a_nonce_that_does_not_extend_ours() -> None:
    c = Scram("sha256", "user", "pencil", nonce=lambda: "abc")
    c.start()
    with pytest.raises(SASLError):
        c.step(b"r=xyz123,s=QSXCR+Q6sek8bf92,i=4096")


def test_scram_plus_binds_the_channel_and_signals_binding_when_downgraded() -> None:
    plus = Scram("sha256", "u", "p", channel_binding=("tls-unique", b"\x01\x02"), nonce=lambda: "n")
    assert plus.start().startswith(b"p=tls-unique,,") and plus.name == "SCRAM-SHA-256-PLUS"
    assert Scram("sha1", "u", "p", client_supports_binding=True, nonce=lambda: "n").start().startswith(b"y,,")


def test_cram_md5_rfc2195_example() -> None:
    c = CramMD5("tim", "tanstaaftanstaaf")
    assert c.start() is None
    assert c.step(b"<1896.697170952@postoffice.reston.mci.net>") == b"tim b913a602c7eda7a495b4e6e7334d3890"


def test_plain() -> None:
    assert Plain("tim", "tanstaaf").start() == b"\0tim\0tanstaaf"


DEFAULT = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "CRAM-MD5"]


def test_mechanism_choice_follows_configuration_order() -> None:
    assert choose_mechanism(DEFAULT, ["PLAIN", "CRAM-MD5", "SCRAM-SHA-1"], tls=True, binding=None) == (
        "SCRAM-SHA-1",
        False,
    )
    # PLAIN only when configured.
    assert choose_mechanism(DEFAULT, ["PLAIN", "LOGIN"], tls=True, binding=None) is None
    assert choose_mechanism(["PLAIN"], ["PLAIN"], tls=True, binding=None) == ("PLAIN", False)


def test_plus_variants_need_tls_and_binding_data() -> None:
    offered = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert choose_mechanism(DEFAULT, offered, tls=True, binding=("tls-unique", b"x")) == (
        "SCRAM-SHA-256-PLUS",
        False,
    )
    assert choose_mechanism(DEFAULT, offered, tls=False, binding=None) == ("SCRAM-SHA-256", False)
    # TLS with binding data but the server stripped -PLUS: the plain SCRAM says "y" (downgrade detection).
    assert choose_mechanism(DEFAULT, ["SCRAM-SHA-256"], tls=True, binding=("tls-unique", b"x")) == (
        "SCRAM-SHA-256",
        True,
    )
