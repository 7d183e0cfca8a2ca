"""DKIM rules: selector configuration, key loading, which selectors sign, the signature's tags, DNS records,
and the Received field of a submission."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import ValidationError

from deploy.dev import dev_keys, write_dev_config
from deploy.dkimcli import generate_key
from domain.addresses import parse_address
from domain.config import Config, load_config
from domain.dkim import Keyring, Selector, keyring, record_problem, record_value, sign, txt_strings
from domain.send import received_header
from store.dkimkeys import KeyFileError, load_keyring, parse_private_key

ED = parse_private_key(generate_key("ed25519-sha256"), "ed25519-sha256")
RS = parse_private_key(generate_key("rsa-sha256"), "rsa-sha256")
MSG = (
    b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\nDate: 1 Jan 2027 00:00:00 +0000\r\n"
    b"Message-Id: <1@example.org>\r\n\r\nhello\r\n"
)


def config(selectors: dict[str, Any], sign_: list[str], domain: str = "example.org") -> Config:
    return Config.model_validate({"domains": {domain: {"dkim": {"selectors": selectors, "sign": sign_}}}})


def selector(key: Any = ED, name: str = "s", **kw: Any) -> Selector:
    base: dict[str, Any] = dict(
        domain="example.org",
        name=name,
        key=key,
        headers=("From", "To", "Subject", "Date", "Message-Id", "List-Unsubscribe"),
        seal_headers=True,
        canonicalization="relaxed/relaxed",
        expiration=timedelta(0),
        signing=True,
    )
    base.update(kw)
    return Selector(**base)


def verify(message: bytes, selectors: list[Selector], idx: int = 0) -> bool:
    records = {f"{s.record_name}.".encode(): s.record_value.encode() for s in selectors}
    return bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=lambda name, timeout=5: records.get(name)))


def tags(message: bytes, idx: int = 0) -> dict[str, str]:
    fields = re.findall(rb"(?ms)^DKIM-Signature:(.*?)\r\n(?! )", message)
    return {
        k.strip(): "".join(v.split())
        for k, _, v in (p.partition("=") for p in fields[idx].decode().split(";"))
    }


@pytest.mark.parametrize(
    ("sel", "problem"),
    [
        ({"headers": ["To", "Subject"]}, "From must be signed"),
        ({"headers": ["From", "Received"]}, "must not be signed"),
        ({"headers": ["From", "from"]}, "listed twice"),
        ({"headers": ["From", "Bad Name"]}, "not a header field name"),
        ({"algorithm": "rsa-sha1"}, "algorithm"),
        ({"expiration": "-1h"}, "negative"),
    ],
)
def test_selector_settings_are_checked(sel: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        config({"s": {"algorithm": "ed25519-sha256", "private_key_file": "k", **sel}}, ["s"])


def test_sign_names_configured_selectors_and_selector_names_are_dns_labels() -> None:
    with pytest.raises(ValidationError, match="unknown selector 'x'"):
        config({"s": {"algorithm": "ed25519-sha256", "private_key_file": "k"}}, ["x"])
    with pytest.raises(ValidationError, match="DNS labels"):
        config({"a_b": {"algorithm": "ed25519-sha256", "private_key_file": "k"}}, [])
    c = config({"s": {"algorithm": "ed25519-sha256", "private_key_file": "k"}}, ["s"])
    headers = c.domains["example.org"].dkim.selectors["s"].headers
    # RFC 8058 §4: one-click unsubscribe fields must be covered.
    assert {"From", "List-Unsubscribe", "List-Unsubscribe-Post", "Content-Type"} <= set(headers)


def test_keys_are_refused_when_too_small_of_another_algorithm_or_not_keys(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyFileError, match="1024 bits, at least 2048"):
        parse_private_key(weak, "rsa-sha256")
    with pytest.raises(KeyFileError, match="needs an Ed25519 key"):
        parse_private_key(generate_key("rsa-sha256"), "ed25519-sha256")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        parse_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "ed25519-sha256")
    # PKCS#1 RSA keys (openssl genrsa's) are read as well as PKCS#8.
    pkcs1 = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert parse_private_key(pkcs1, "rsa-sha256").bits == 2048
    # Every bad key is named at once, and no key material is in the message or a key's repr.
    (tmp_path / "ed.pem").write_bytes(generate_key("ed25519-sha256"))
    c = config(
        {
            "a": {"algorithm": "rsa-sha256", "private_key_file": str(tmp_path / "ed.pem")},
            "b": {"algorithm": "ed25519-sha256", "private_key_file": str(tmp_path / "missing.pem")},
        },
        [],
    )
    with pytest.raises(KeyFileError) as err:
        load_keyring(c)
    assert "selector a of example.org" in str(err.value) and "selector b of example.org" in str(err.value)
    assert "PRIVATE" not in str(err.value)
    seed = ED.signer.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert "signer" not in repr(ED) and base64.b64encode(seed).decode() not in repr(ED)


def test_signers_are_the_from_domains_or_its_nearest_parents_signing_selectors() -> None:
    ring = Keyring(
        [
            selector(name="a"),
            selector(name="old", signing=False),
            selector(RS, name="b"),
            selector(domain="sub.example.org", name="x", signing=False),
        ]
    )
    assert [s.name for s in ring.signers("example.org")] == ["a", "b"]
    # A subdomain without signing selectors of its own signs with d= its parent (mox does the same).
    assert [s.name for s in ring.signers("Mail.Sub.Example.org.")] == ["a", "b"]
    assert ring.signers("example.com") == [] and ring.signers("org") == []


def test_keyring_orders_a_domains_signatures_as_sign_lists_them() -> None:
    c = config(
        {
            "ed": {"algorithm": "ed25519-sha256", "private_key_file": "k"},
            "rs": {"algorithm": "rsa-sha256", "private_key_file": "k"},
            "off": {"algorithm": "ed25519-sha256", "private_key_file": "k"},
        },
        ["rs", "ed"],
        domain="Bücher.example",
    )
    ring = keyring(c, {("xn--bcher-kva.example", n): (RS if n == "rs" else ED) for n in ("ed", "rs", "off")})
    assert [s.name for s in ring.signers("bücher.example")] == ["rs", "ed"]
    assert [s.domain for s in ring.selectors] == ["xn--bcher-kva.example"] * 3


def test_signatures_seal_headers_carry_x_and_verify() -> None:
    sels = [selector(name="e", expiration=timedelta(hours=72)), selector(RS, name="r", seal_headers=False)]
    out = sign(MSG, sels)
    signed = out + MSG
    assert out.count(b"DKIM-Signature:") == 2 and out.endswith(b"\r\n")
    ed, rs = tags(signed, 0), tags(signed, 1)
    assert (
        ed["a"] == "ed25519-sha256"
        and ed["s"] == "e"
        and ed["d"] == "example.org"
        and ed["c"] == "relaxed/relaxed"
    )
    # Sealed: each listed field once more than it occurs; an absent one (List-Unsubscribe) once.
    assert ed["h"] == "from:from:to:to:subject:subject:date:date:message-id:message-id:list-unsubscribe"
    assert rs["h"] == "from:to:subject:date:message-id" and "x" not in rs
    assert int(ed["x"]) - int(ed["t"]) == 72 * 3600
    assert verify(signed, sels, 0) and verify(signed, sels, 1)
    # A Subject added on top breaks the sealed signature only.
    added = out + b"Subject: urgent, pay now\r\n" + MSG
    assert not verify(added, sels, 0) and verify(added, sels, 1)


def test_rsa_signature_verifies_with_dkimpy_and_with_openssl_and_one_body_byte_breaks_it() -> None:
    sel = selector(RS, name="r")
    field = sign(MSG, [sel])
    signed = field + MSG
    assert verify(signed, [sel])
    # Independently of dkimpy's verifier: RFC 6376 §3.7's header hash, checked by OpenSSL against the public
    # key as published. The hashed data is the signed fields (relaxed, in h= order, sealed ones absent) and
    # this field with b= empty and no trailing CRLF.
    t = tags(signed)
    relaxed = [(n.lower(), " ".join(v.replace("\r\n", "").split())) for n, v in _fields(MSG)]
    relaxed.reverse()
    hashed = ""
    for name in t["h"].split(":"):
        found = next((f for f in relaxed if f[0] == name), None)
        if found:
            relaxed.remove(found)
            hashed += f"{found[0]}:{found[1]}\r\n"
    own = " ".join(field.decode().partition(":")[2].replace("\r\n", "").split())
    hashed += "dkim-signature:" + re.sub(r"b=[A-Za-z0-9+/= ]+$", "b=", own)
    public = serialization.load_der_public_key(RS.public)
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(base64.b64decode(t["b"]), hashed.encode(), padding.PKCS1v15(), hashes.SHA256())
    # The body hash covers the body: one byte changed breaks the signature.
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        verify(field + MSG.replace(b"hello", b"hellO"), [sel])
    assert not verify(field + MSG.replace(b"Subject: hi", b"Subject: ho"), [sel])


def _fields(message: bytes) -> list[tuple[str, str]]:
    head = message.decode().split("\r\n\r\n", 1)[0]
    return [(n, v) for n, _, v in (f.partition(":") for f in re.split(r"\r\n(?![ \t])", head))]


def test_records_and_their_comparison_with_dns() -> None:
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", record_value(ED))
    value = record_value(RS)
    parts = txt_strings(value)
    assert len(parts) == 2 and all(len(p) <= 255 for p in parts) and "".join(parts) == value
    assert record_problem([value], RS) == ""
    assert record_problem(["v=spf1 -all", value.replace("; ", ";")], RS) == ""
    assert record_problem([], RS) == "no TXT record"
    assert record_problem([record_value(ED)], RS) == "k=ed25519, the key is rsa"
    assert record_problem(["v=DKIM1; k=rsa; p="], RS) == "p= is empty: the key is revoked"
    other = parse_private_key(generate_key("rsa-sha256"), "rsa-sha256")
    assert record_problem([record_value(other)], RS) == "p= is another public key"


def test_received_names_client_and_login_and_the_recipient_only_when_alone() -> None:
    now = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
    bob, carol = parse_address("bob@example.com"), parse_address("carol@example.com")
    kw: dict[str, Any] = dict(
        hostname="mail.example.org", protocol="HTTPS", trace_id="42", smtputf8=False, now=now
    )
    one = received_header(client_ip="192.0.2.1", login="alice@example.org", recipients=[bob], **kw)
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", one)
    assert unfolded == (
        b"Received: from [192.0.2.1] (login alice@example.org) by mail.example.org (tempost) with HTTPS id 42"
        b" for <bob@example.com>; 2 Jan 2027 03:04:05 +0000\r\n"
    )
    assert all(len(line) <= 78 for line in one.split(b"\r\n"))
    two = received_header(client_ip="2001:db8::1", login="we(i)rd@example.org", recipients=[bob, carol], **kw)
    assert b"from [IPv6:2001:db8::1] (login we\\(i\\)rd@example.org)" in re.sub(rb"\r\n[ \t]+", b" ", two)
    assert b"for <" not in two


def test_dev_keys_are_made_once_and_configured_to_sign(tmp_path: Path) -> None:
    dev_keys(tmp_path)
    first = {p.name: p.read_bytes() for p in (tmp_path / "dkim").iterdir()}
    dev_keys(tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "dkim").iterdir()} == first
    assert set(first) == {"ed25519.pem", "rsa.pem"}
    write_dev_config(tmp_path / "tempost.toml", tmp_path, 8025)
    ring = load_keyring(load_config(tmp_path / "tempost.toml"))
    assert [(s.name, s.key.algorithm) for s in ring.signers("localhost")] == [
        ("ed25519", "ed25519-sha256"),
        ("rsa", "rsa-sha256"),
    ]
