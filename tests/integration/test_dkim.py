"""DKIM-signed mail through the real stack, verified by OpenDKIM (not the dkimpy that signed it) with the
public keys published by the records `GET /admin/v0/dkim` returns, served by the tests' DNS server."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from deploy.dkimcli import generate_key
from domain.dkim import PrivateKey, Selector, SigningError
from domain.dkim import sign as dkim_sign
from store.dkimkeys import parse_private_key
from tests.conftest import SENDER, Stack
from tests.integration.test_webhooks import until
from tests.support.opendkim import OpenDKIMVerifier, signatures, unavailable

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "")

RCPT = "bob@example.com"


@pytest.fixture(scope="module")
def verifier() -> Iterator[OpenDKIMVerifier]:
    v = OpenDKIMVerifier()
    yield v
    v.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Key files: an Ed25519 and an RSA key for example.org, and one of each for the host's domain."""
    d = tmp_path_factory.mktemp("dkim")
    out = {}
    for name, algorithm in (
        ("ed", "ed25519-sha256"),
        ("rs", "rsa-sha256"),
        ("host-ed", "ed25519-sha256"),
        ("app", "rsa-sha256"),
    ):
        out[name] = d / f"{name}.pem"
        out[name].write_bytes(generate_key(algorithm))
    return out


def dkim_domains(keys: dict[str, Path]) -> dict[str, Any]:
    return {
        "example.org": {
            "dkim": {
                "selectors": {
                    "ed": {"algorithm": "ed25519-sha256", "private_key_file": str(keys["ed"])},
                    "rs": {"algorithm": "rsa-sha256", "private_key_file": str(keys["rs"])},
                    # Configured, published, not signing: a selector being rotated in.
                    "next": {"algorithm": "ed25519-sha256", "private_key_file": str(keys["host-ed"])},
                },
                "sign": ["ed", "rs"],
            }
        },
        # DSNs come from postmaster@tempost.test.
        "tempost.test": {
            "dkim": {
                "selectors": {
                    "host": {"algorithm": "ed25519-sha256", "private_key_file": str(keys["host-ed"])}
                },
                "sign": ["host"],
            }
        },
    }


async def publish(stack: Stack, verifier: OpenDKIMVerifier) -> list[dict[str, Any]]:
    """Publish every record the admin API lists, as an operator would."""
    r = await stack.admin("GET", "/dkim")
    assert r.status_code == 200, r.text
    for rec in r.json():
        verifier.publish(rec["RecordName"], rec["RecordValue"])
    return r.json()


def verdicts(verifier: OpenDKIMVerifier, message: bytes) -> dict[str, bool]:
    return {f"{v.selector}@{v.domain}": v.ok for v in verifier.verify_each(message)}


@pytest.fixture
async def signing_stack(stack_factory: Any, keys: dict[str, Path], verifier: OpenDKIMVerifier) -> Stack:
    stack: Stack = await stack_factory(domains=dkim_domains(keys))
    await publish(stack, verifier)
    return stack


async def test_admin_dkim_lists_every_selector_with_its_record(signing_stack: Stack) -> None:
    r = await signing_stack.admin("GET", "/dkim")
    by_name = {(x["Domain"], x["Selector"]): x for x in r.json()}
    assert set(by_name) == {
        ("example.org", "ed"),
        ("example.org", "rs"),
        ("example.org", "next"),
        ("tempost.test", "host"),
    }
    ed, rs, nxt = by_name["example.org", "ed"], by_name["example.org", "rs"], by_name["example.org", "next"]
    assert ed["RecordName"] == "ed._domainkey.example.org" and ed["Algorithm"] == "ed25519-sha256"
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", ed["RecordValue"])
    assert rs["RecordValue"].startswith("v=DKIM1; k=rsa; p=MIIBIjAN") and len(rs["RecordValue"]) > 255
    assert ed["Signing"] and rs["Signing"] and not nxt["Signing"]
    # The admin token is needed.
    assert (await signing_stack.http.get("/admin/v0/dkim")).status_code == 401


async def test_send_is_signed_ed25519_and_rsa_and_verifies_at_the_sink(
    signing_stack: Stack, verifier: OpenDKIMVerifier
) -> None:
    stack = signing_stack
    out = await stack.send_ok({"To": [{"Address": RCPT}], "Subject": "signed", "Text": "hello\nsecond line"})
    base_id = out["Submissions"][0]["QueueMsgID"]
    await stack.finished(base_id)
    [t] = stack.sink.messages()
    data = t.data
    # The prefix comes first: Received, naming the client, the login and the one recipient, then ours.
    head = data.split(b"\r\n\r\n")[0].decode()
    received = re.sub(r"\r\n[ \t]+", " ", head.split("\r\nDKIM-Signature:")[0])
    assert re.fullmatch(
        rf"Received: from \[127\.0\.0\.1\] \(login {SENDER}\) by tempost\.test \(tempost\) with HTTP id"
        rf" {base_id} for <{RCPT}>; \d+ \w+ \d{{4}} [\d:]+ \+0000",
        received,
    ), received
    assert head.index("Received:") < head.index("DKIM-Signature:") < head.index("From:")
    assert verdicts(verifier, data) == {"ed@example.org": True, "rs@example.org": True}

    # Any signed header changed, a header copy added, or one byte of the body changed: both fail.
    tampered = [
        data.replace(b"Subject: signed", b"Subject: signet"),
        data.replace(b"\r\nFrom: ", b"\r\nFrom: Mallory <m@evil.example>\r\nFrom: ", 1),
        data.replace(b"\r\nDate: ", b"\r\nTo: another@example.com\r\nDate: ", 1),
        data.replace(b"hello", b"hellp"),
        data.replace(b"second line", b"second  line!"),
    ]
    for bad in tampered:
        assert bad != data
        assert verdicts(verifier, bad) == {"ed@example.org": False, "rs@example.org": False}, bad[:600]
    # What relays may do and relaxed canonicalization allows: a trace field on top, refolded whitespace.
    relayed = b"Received: from relay.example by mx.example.com; 1 Jan 2027 00:00:00 +0000\r\n" + data
    assert verdicts(verifier, relayed.replace(b"Subject: signed", b"Subject:   signed")) == {
        "ed@example.org": True,
        "rs@example.org": True,
    }


async def test_raw_shows_the_exact_bytes_sent_prefix_included(
    signing_stack: Stack, verifier: OpenDKIMVerifier
) -> None:
    stack = signing_stack
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    out = await stack.send_ok(
        {
            "To": [{"Address": RCPT}, {"Address": "carol@example.com"}],
            "Subject": "two",
            "Text": "x",
            "FutureRelease": later,
        }
    )
    ids = [s["QueueMsgID"] for s in out["Submissions"]]
    raws = [(await stack.admin("GET", f"/queue/{i}/raw")).content for i in ids]
    # One prefix per submission: both recipients' copies are the same bytes, with no "for" clause.
    assert raws[0] == raws[1] and b"for <" not in raws[0].split(b"DKIM-Signature")[0]
    assert raws[0].startswith(b"Received: from [127.0.0.1] (login alice@example.org)")
    assert len(signatures(raws[0])) == 2
    assert verdicts(verifier, raws[0]) == {"ed@example.org": True, "rs@example.org": True}
    row = (await stack.admin("GET", f"/queue/{ids[0]}")).json()
    assert row["Size"] == len(raws[0])
    r = await stack.admin("POST", "/queue/kick", json={"Filter": {"IDs": ids}})
    assert r.status_code == 200, r.text
    await stack.finished(ids[0])
    [t] = stack.sink.messages()
    assert t.data == raws[0]


def app_signed(keys: dict[str, Path], verifier: OpenDKIMVerifier) -> bytes:
    """A message an application signed itself, with its own selector of example.org."""
    app_key = parse_private_key(keys["app"].read_bytes(), "rsa-sha256")
    verifier.publish("app._domainkey.example.org", f"v=DKIM1; k=rsa; p={_b64(app_key)}")
    msg = (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: raw\r\n"
        b"Date: 1 Jan 2027 00:00:00 +0000\r\nMessage-Id: <raw@example.org>\r\n\r\nraw body\r\n"
    )
    # dkimpy's own signer reads PKCS#1 PEM only.
    pkcs1 = app_key.signer.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    sig = dkim.sign(msg, b"app", b"example.org", pkcs1, canonicalize=(b"relaxed", b"relaxed"))
    return sig + msg


def _b64(key: PrivateKey) -> str:
    import base64

    return base64.b64encode(key.public).decode()


async def send_raw(stack: Stack, message: bytes, **request: Any) -> dict[str, Any]:
    r = await stack.http.post(
        "/webapi/v0/SendRaw",
        data={"request": json.dumps({"RcptTo": [RCPT], **request})},
        files={"message": ("m.eml", message, "message/rfc822")},
        auth=(SENDER, "s3cret-test-password"),
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_send_raw_keeps_the_application_signature_and_adds_ours_above(
    signing_stack: Stack, keys: dict[str, Path], verifier: OpenDKIMVerifier
) -> None:
    stack = signing_stack
    message = app_signed(keys, verifier)
    out = await send_raw(stack, message)
    await stack.finished(out["Submissions"][0]["QueueMsgID"])
    [t] = stack.sink.messages()
    assert t.data.endswith(message)
    sigs = signatures(t.data)
    assert [re.search(rb"s=(\w+)", s).group(1) for s in sigs] == [b"ed", b"rs", b"app"]  # type: ignore[union-attr]
    assert verdicts(verifier, t.data) == {
        "ed@example.org": True,
        "rs@example.org": True,
        "app@example.org": True,
    }


async def test_send_raw_with_dkim_sign_false_adds_no_signature(
    signing_stack: Stack, keys: dict[str, Path], verifier: OpenDKIMVerifier
) -> None:
    stack = signing_stack
    message = app_signed(keys, verifier)
    out = await send_raw(stack, message, DKIMSign=False)
    await stack.finished(out["Submissions"][0]["QueueMsgID"])
    [t] = stack.sink.messages()
    assert t.data.startswith(b"Received: ") and t.data.endswith(message)
    assert verdicts(verifier, t.data) == {"app@example.org": True}


async def test_dsn_is_signed_with_the_host_domain_key(
    signing_stack: Stack, verifier: OpenDKIMVerifier
) -> None:
    stack = signing_stack
    stack.sink.behaviour.rcpt_replies["nobody@example.com"] = "550 5.1.1 no such user"
    out = await stack.send_ok(
        {"To": [{"Address": "nobody@example.com"}], "Subject": "will fail", "Text": "x"}
    )
    await stack.finished(out["Submissions"][0]["QueueMsgID"])
    await until(lambda: stack.sink.dsns(), timeout=30)
    [dsn] = stack.sink.dsns()
    assert dsn.data.startswith(b"DKIM-Signature: ") and b"From: <postmaster@tempost.test>" in dsn.data
    assert verdicts(verifier, dsn.data) == {"host@tempost.test": True}
    # The DSN quotes the original's header section as sent: its Received and signatures included.
    assert dsn.data.count(b"DKIM-Signature:") == 3 and b"(login alice@example.org)" in dsn.data


async def test_a_signing_failure_is_the_server_error_and_queues_nothing(signing_stack: Stack) -> None:
    stack = signing_stack
    app = stack.http._transport.app  # type: ignore[attr-defined]
    ring = app.state.tempost.dkim
    # A key that cannot sign for its selector (an RSA key where Ed25519 is configured).
    rsa_key = parse_private_key(generate_key("rsa-sha256"), "rsa-sha256")
    broken = Selector(
        "example.org",
        "ed",
        PrivateKey("ed25519-sha256", rsa_key.signer, b"", 256),
        ("From",),
        True,
        "relaxed/relaxed",
        timedelta(0),
        True,
    )
    with pytest.raises(SigningError):
        dkim_sign(b"From: a@example.org\r\n\r\nx\r\n", [broken])
    ring.selectors.insert(0, broken)
    try:
        r = await stack.send({"To": [{"Address": RCPT}], "Subject": "x", "Text": "x"})
    finally:
        ring.selectors.remove(broken)
    assert r.status_code == 400 and r.json()["Code"] == "server", r.text
    assert (await stack.admin("GET", "/queue/count")).json()["Count"] == 0


def tempost(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args], capture_output=True, text=True, timeout=120, **kw
    )


def test_dkim_gen_writes_a_private_key_and_a_record_that_verifies(
    tmp_path: Path, verifier: OpenDKIMVerifier
) -> None:
    for algorithm, expected in (("ed25519", "ed25519-sha256"), ("rsa", "rsa-sha256")):
        out = tmp_path / f"{algorithm}.pem"
        r = tempost(
            "dkim",
            "gen",
            "--domain",
            "gen.example",
            "--selector",
            algorithm,
            "--algorithm",
            algorithm,
            "--out",
            str(out),
        )
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        line = next(x for x in r.stdout.splitlines() if "._domainkey." in x)
        name, _, rest = line.partition(". IN TXT ")
        strings = re.findall(r'"([^"]*)"', rest)
        assert name == f"{algorithm}._domainkey.gen.example" and all(len(s) <= 255 for s in strings)
        verifier.publish(name, "".join(strings))
        key = parse_private_key(out.read_bytes(), expected)
        sel = Selector(
            "gen.example", algorithm, key, ("From", "Subject"), True, "relaxed/relaxed", timedelta(0), True
        )
        # OpenDKIM refuses messages without the fields RFC 5322 §3.6 requires (From and Date).
        msg = b"From: x@gen.example\r\nDate: 1 Jan 2027 00:00:00 +0000\r\nSubject: gen\r\n\r\nbody\r\n"
        assert verdicts(verifier, dkim_sign(msg, [sel]) + msg) == {f"{algorithm}@gen.example": True}
        # Never overwrites a key.
        again = tempost("dkim", "gen", "--domain", "gen.example", "--selector", "s", "--out", str(out))
        assert again.returncode != 0 and "exists" in again.stderr
    small = tempost(
        "dkim",
        "gen",
        "--domain",
        "d.example",
        "--selector",
        "s",
        "--algorithm",
        "rsa",
        "--bits",
        "1024",
        "--out",
        str(tmp_path / "small.pem"),
    )
    assert small.returncode != 0 and "2048" in small.stderr and not (tmp_path / "small.pem").exists()


def _config(tmp_path: Path, algorithm: str, key: Path, resolvers: str = "") -> Path:
    cfg = tmp_path / "tempost.toml"
    cfg.write_text(
        f"""[direct]
resolvers = [{resolvers}]
[domains."check.example".dkim]
sign = ["s1"]
[domains."check.example".dkim.selectors.s1]
algorithm = "{algorithm}"
private_key_file = "{key}"
"""
    )
    return cfg


def test_config_check_refuses_small_rsa_keys_and_wrong_algorithms(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = tmp_path / "weak.pem"
    weak.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    r = tempost("config", "check", str(_config(tmp_path, "rsa-sha256", weak)))
    assert r.returncode != 0 and "1024 bits" in r.stderr and "2048" in r.stderr
    ed = tmp_path / "ed.pem"
    ed.write_bytes(generate_key("ed25519-sha256"))
    r = tempost("config", "check", str(_config(tmp_path, "rsa-sha256", ed)))
    assert r.returncode != 0 and "needs an RSA key" in r.stderr
    r = tempost("config", "check", str(_config(tmp_path, "ed25519-sha256", tmp_path / "missing.pem")))
    assert r.returncode != 0 and "cannot read" in r.stderr
    r = tempost("config", "check", str(_config(tmp_path, "ed25519-sha256", ed)))
    assert r.returncode == 0 and "1 dkim selectors" in r.stdout, r.stderr
    # The key never appears in what the commands print.
    assert ed.read_text().splitlines()[1] not in r.stdout + r.stderr


def test_dkim_records_and_check_compare_dns_with_the_keys(tmp_path: Path, verifier: OpenDKIMVerifier) -> None:
    key = tmp_path / "s1.pem"
    key.write_bytes(generate_key("rsa-sha256"))
    cfg = _config(tmp_path, "rsa-sha256", key, f'"{verifier.dns.host}:53"')
    records = tempost("dkim", "records", "-c", str(cfg))
    assert records.returncode == 0, records.stderr
    line = next(x for x in records.stdout.splitlines() if x.startswith("s1._domainkey.check.example. IN TXT"))
    value = "".join(re.findall(r'"([^"]*)"', line))
    verifier.dns.remove("s1._domainkey.check.example", "TXT")
    missing = tempost("dkim", "check", "-c", str(cfg))
    assert missing.returncode == 1 and "MISMATCH" in missing.stdout
    verifier.publish("s1._domainkey.check.example", value)
    ok = tempost("dkim", "check", "-c", str(cfg))
    assert ok.returncode == 0 and "s1._domainkey.check.example: ok" in ok.stdout, ok.stdout + ok.stderr
    other = parse_private_key(generate_key("rsa-sha256"), "rsa-sha256")
    verifier.publish("s1._domainkey.check.example", f"v=DKIM1; k=rsa; p={_b64(other)}")
    bad = tempost("dkim", "check", "-c", str(cfg))
    assert bad.returncode == 1 and "another public key" in bad.stdout


async def test_signatures_survive_a_relay_through_postfix(
    stack_factory: Any, keys: dict[str, Path], verifier: OpenDKIMVerifier, sink: Any
) -> None:
    from deploy.embedded import free_port
    from tests.support.postfix import PostfixInstance, skip_reason

    if skip_reason():
        pytest.skip(skip_reason() or "")
    # Postfix relays everything to the sink; Tempost hands the mail to Postfix.
    postfix = PostfixInstance(free_port(), relay_port=sink.port, bounce_port=free_port()).start()
    try:
        stack: Stack = await stack_factory(
            domains=dkim_domains(keys),
            transports={
                "postfix": {"type": "smtp", "host": postfix.host, "port": postfix.port, "starttls": "none"}
            },
            default_transport="postfix",
        )
        await publish(stack, verifier)
        text = "Grüße over Postfix\n" + "a long line " * 100 + "\n.leading dot\n"
        await stack.send_ok({"To": [{"Address": RCPT}], "Subject": "via postfix ☺", "Text": text})
        try:
            await until(lambda: stack.sink.messages(), timeout=60)
        except TimeoutError:
            pytest.fail(f"Postfix relayed nothing; its log:\n{postfix.maillog()}")
    finally:
        postfix.stop()
    [t] = stack.sink.messages()
    assert b"postfix.test" in t.data.split(b"DKIM-Signature")[0]  # Postfix's own Received field on top
    assert verdicts(verifier, t.data) == {"ed@example.org": True, "rs@example.org": True}
