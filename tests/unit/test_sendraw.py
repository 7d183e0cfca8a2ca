"""SendRaw's checks and Idempotency-Key rules (spec 04 §1), without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.errors import WebAPIError
from domain.idempotency import check_key, request_hash
from domain.send import AccountIdentity
from domain.sendraw import (
    SendRawRequest,
    check_send_raw,
    decode_send_raw_request,
    normalize_line_endings,
    parse_header_section,
)

NOW = datetime(2026, 11, 24, 10, 30, 0, tzinfo=UTC)
ACCOUNT = AccountIdentity(name="alice", full_name="Alice", addresses=["alice@example.org"])
MESSAGE = b"From: Alice <alice@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"


def check(req: SendRawRequest, message: bytes = MESSAGE, size: int = 10_000):
    return check_send_raw(
        req, message, login_address="alice@example.org", account=ACCOUNT, now=NOW, max_message_size=size
    )


def code_of(req: SendRawRequest, message: bytes = MESSAGE, size: int = 10_000) -> str:
    with pytest.raises(WebAPIError) as err:
        check(req, message, size)
    return err.value.code


def test_request_keys_are_case_insensitive_and_strict() -> None:
    req = decode_send_raw_request(
        '{"mailfrom": "alice@example.org", "rcptto": ["b@x.example"], "extra": null}'
    )
    assert req.MailFrom == "alice@example.org" and req.RcptTo == ["b@x.example"] and req.Extra == {}
    for raw in ('{"RcptTo": "b@x.example"}', '{"Nope": 1}', "[]", '{"FutureRelease": "2026-11-24T10:00:00"}'):
        with pytest.raises(WebAPIError) as err:
            decode_send_raw_request(raw)
        assert err.value.code == "protocol"


def test_line_endings() -> None:
    assert normalize_line_endings(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    with pytest.raises(WebAPIError) as err:
        normalize_line_endings(b"a\rb\r\n")
    assert err.value.code == "malformedMessage"


def test_header_section_is_unfolded_and_headers_only_messages_pass() -> None:
    fields = parse_header_section(b"Subject: one\r\n two\r\nFrom: a@b.example\r\n")
    assert [(f.name, f.value) for f in fields] == [("Subject", "one two"), ("From", "a@b.example")]


def test_a_checked_message_keeps_its_bytes_and_takes_its_message_id() -> None:
    msg = check(SendRawRequest(RcptTo=["b@x.example"], FutureRelease=NOW + timedelta(hours=1)), MESSAGE)
    assert msg.data == MESSAGE and msg.sender.ascii == "alice@example.org" and msg.message_id == ""
    assert msg.future_release == NOW + timedelta(hours=1) and msg.future_release_request.startswith("until;")
    assert not msg.has8bit and not msg.smtputf8 and msg.subject == "hi"
    with_id = check(SendRawRequest(RcptTo=["b@x.example"]), b"Message-ID: <m@x>\r\n" + MESSAGE)
    assert with_id.message_id == "<m@x>"


@pytest.mark.parametrize(
    "req,message,code",
    [
        (SendRawRequest(MailFrom="eve@example.org", RcptTo=["b@x.example"]), MESSAGE, "badFrom"),
        (SendRawRequest(RcptTo=["b@x.example"]), MESSAGE.replace(b"alice@", b"eve@"), "badFrom"),
        (SendRawRequest(RcptTo=["b@x.example"]), b"Subject: x\r\n\r\nbody\r\n", "malformedMessage"),
        (
            SendRawRequest(RcptTo=["b@x.example"]),
            b"From: alice@example.org\r\nno colon\r\n\r\n",
            "malformedMessage",
        ),
        (
            SendRawRequest(RcptTo=["b@x.example"]),
            b"From: alice@example.org, b@x.example\r\n\r\n",
            "multipleFrom",
        ),
        (SendRawRequest(RcptTo=[]), MESSAGE, "noRecipients"),
        (SendRawRequest(RcptTo=[f"r{i}@x.example" for i in range(10_001)]), MESSAGE, "tooManyRecipients"),
        (SendRawRequest(RcptTo=["@@"]), MESSAGE, "badAddress"),
        (SendRawRequest(RcptTo=["b@x.example"], FutureRelease=NOW + timedelta(days=61)), MESSAGE, "user"),
    ],
)
def test_refusals(req: SendRawRequest, message: bytes, code: str) -> None:
    assert code_of(req, message) == code


def test_size_limit_counts_the_normalized_message() -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    assert code_of(SendRawRequest(RcptTo=["b@x.example"]), lf, size=len(lf)) == "messageTooLarge"


def test_idempotency_keys() -> None:
    assert check_key("order-42 / retry") == "order-42 / retry"
    for bad in ("", "x" * 201, "tab\t", "é"):
        with pytest.raises(WebAPIError) as err:
            check_key(bad)
        assert err.value.code == "badIdempotencyKey"
    assert request_hash("Send", [b"ab", b"c"]) != request_hash("Send", [b"a", b"bc"])
    assert request_hash("Send", [b"x"]) != request_hash("SendRaw", [b"x"])
