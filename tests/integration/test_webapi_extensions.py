"""Tempost's webapi extensions (spec 04 §1): SendRaw, MessageStatus and the Idempotency-Key header."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from domain.contracts import MsgState
from tests.conftest import PASSWORD, SENDER, Stack

BOB = ("bob@example.net", "bobs-password")

# A message as an application might hand it over, DKIM-signed: the bytes must arrive untouched.
SIGNED = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=app; c=relaxed/relaxed;\r\n"
    b"\th=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=c2lnbmF0dXJl\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: <ok@example.com>\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n"
    b"Message-ID: <raw-1@app.example.org>\r\n"
    b"\r\n"
    b"Body line one.\r\n"
    b".leading dot survives dot-stuffing\r\n"
)


async def send_raw(
    stack: Stack,
    request: dict[str, Any],
    message: bytes,
    *,
    auth: tuple[str, str] = (SENDER, PASSWORD),
    key: str | None = None,
) -> httpx.Response:
    """Call SendRaw as documented: a form field `request` and a file part `message`."""
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await stack.http.post(
        "/webapi/v0/SendRaw",
        data={"request": json.dumps(request)},
        files={"message": ("message.eml", message, "message/rfc822")},
        auth=auth,
        headers=headers,
    )


async def call(
    stack: Stack, method: str, request: dict[str, Any], auth: tuple[str, str] = (SENDER, PASSWORD)
) -> httpx.Response:
    return await stack.http.post(f"/webapi/v0/{method}", data={"request": json.dumps(request)}, auth=auth)


async def queue_count(stack: Stack) -> int:
    return (await stack.admin("GET", "/queue/count")).json()["Count"]


@pytest.fixture
async def api(stack_factory) -> Stack:
    # No worker: what is accepted and queued, not delivery.
    return await stack_factory(worker=False)


# --- SendRaw -----------------------------------------------------------------------------------------


async def test_sendraw_delivers_the_message_byte_for_byte(stack: Stack) -> None:
    r = await send_raw(stack, {"MailFrom": SENDER, "RcptTo": ["ok@example.com"], "Extra": {"o": "1"}}, SIGNED)
    assert r.status_code == 200, r.text
    body = r.json()
    [sub] = body["Submissions"]
    assert body["MessageID"] == "<raw-1@app.example.org>"
    assert sub["Address"] == "ok@example.com" and sub["FromID"] == ""
    row = (await stack.admin("GET", f"/queue/{sub['QueueMsgID']}")).json()
    assert row["Subject"] == "café report" and row["Extra"] == {"o": "1"}
    assert row["MessageID"] == "<raw-1@app.example.org>" and not row["Has8bit"]
    status = await stack.finished(sub["QueueMsgID"])
    assert [m.state for m in status.msgs] == [MsgState.DELIVERED]
    [tx] = stack.sink.messages()
    assert tx.mail_from == SENDER and tx.rcpt_tos == ["ok@example.com"]
    assert_received_then(tx.data, SIGNED)


def assert_received_then(data: bytes, message: bytes) -> None:
    """The message as given, after one Received field (no DKIM configured: no signature of ours)."""
    assert data.endswith(message)
    assert re.fullmatch(rb"Received: [^\r]*(\r\n[ \t][^\r]*)*\r\n", data[: -len(message)]), data[:300]


async def test_sendraw_converts_lf_line_endings_to_crlf(stack: Stack) -> None:
    lf = SIGNED.replace(b"\r\n", b"\n")
    r = await send_raw(stack, {"MailFrom": SENDER, "RcptTo": ["ok@example.com"]}, lf)
    assert r.status_code == 200, r.text
    await stack.finished(r.json()["Submissions"][0]["QueueMsgID"])
    [tx] = stack.sink.messages()
    assert_received_then(tx.data, SIGNED)


async def test_sendraw_marks_8bit_and_smtputf8_like_send(api: Stack) -> None:
    msg = "From: alice@example.org\r\nSubject: grüße\r\n\r\nbody ☺\r\n".encode()
    r = await send_raw(api, {"RcptTo": ["ok@example.com"]}, msg)
    assert r.status_code == 200, r.text
    # MailFrom defaults to the login address; no Message-ID in the message gives an empty one.
    assert r.json()["MessageID"] == ""
    row = (await api.admin("GET", f"/queue/{r.json()['Submissions'][0]['QueueMsgID']}")).json()
    assert row["Has8bit"] and row["SMTPUTF8"] and row["Subject"] == "grüße"
    assert row["SenderLocalpart"] == "alice"


@pytest.mark.parametrize(
    "request_obj,message,code",
    [
        ({"MailFrom": "mallory@example.org", "RcptTo": ["ok@example.com"]}, SIGNED, "badFrom"),
        (
            {"MailFrom": SENDER, "RcptTo": ["ok@example.com"]},
            SIGNED.replace(b"alice@example.org", b"mallory@example.org"),
            "badFrom",
        ),
        (
            {"MailFrom": SENDER, "RcptTo": ["ok@example.com"]},
            b"To: <ok@example.com>\r\nSubject: no from\r\n\r\nbody\r\n",
            "malformedMessage",
        ),
        (
            {"MailFrom": SENDER, "RcptTo": ["ok@example.com"]},
            b"just a body, no headers\r\n",
            "malformedMessage",
        ),
        ({"MailFrom": SENDER, "RcptTo": ["ok@example.com"]}, SIGNED + b"bare\rCR\r\n", "malformedMessage"),
        ({"MailFrom": SENDER, "RcptTo": []}, SIGNED, "noRecipients"),
        ({"MailFrom": SENDER, "RcptTo": ["not an address"]}, SIGNED, "badAddress"),
        ({"MailFrom": SENDER, "RcptTo": ["ok@example.com"], "Bogus": 1}, SIGNED, "protocol"),
    ],
)
async def test_sendraw_refusals(api: Stack, request_obj: dict, message: bytes, code: str) -> None:
    r = await send_raw(api, request_obj, message)
    assert r.status_code == 400, r.text
    assert r.json()["Code"] == code and r.json()["Message"]
    assert await queue_count(api) == 0


async def test_sendraw_without_message_part_is_protocol_error(api: Stack) -> None:
    r = await call(api, "SendRaw", {"MailFrom": SENDER, "RcptTo": ["ok@example.com"]})
    assert r.status_code == 400 and r.json()["Code"] == "protocol"


async def test_sendraw_message_too_large(stack_factory) -> None:
    api = await stack_factory(worker=False)
    api.http._transport.app.state.tempost.config = api.config.model_copy(  # type: ignore[attr-defined]
        update={"api": api.config.api.model_copy(update={"max_message_size": 100})}
    )
    r = await send_raw(api, {"RcptTo": ["ok@example.com"]}, SIGNED)
    assert r.status_code == 400 and r.json()["Code"] == "messageTooLarge"


async def test_sendraw_suppressed_recipient_fails_like_send(stack: Stack) -> None:
    await call(stack, "SuppressionAdd", {"EmailAddress": "bob@example.com"})
    r = await send_raw(stack, {"MailFrom": SENDER, "RcptTo": ["ok@example.com", "Bob+x@example.com"]}, SIGNED)
    assert r.status_code == 200, r.text
    ok_id, bob_id = (s["QueueMsgID"] for s in r.json()["Submissions"])
    status = await stack.finished(ok_id)
    assert {m.id: m.state for m in status.msgs} == {ok_id: MsgState.DELIVERED, bob_id: MsgState.FAILED}
    assert stack.sink.delivered_to() == ["ok@example.com"]
    failed = (await call(stack, "MessageStatus", {"QueueMsgID": bob_id})).json()
    assert failed["State"] == "failed" and "suppression list" in failed["Results"][-1]["Error"]


async def test_sendraw_is_held_by_hold_rules_and_gets_fromids(stack_factory) -> None:
    api = await stack_factory(
        worker=False,
        accounts={"alice": {"fromid_login_addresses": [SENDER]}},
        domains={"example.org": {"localpart_catchall_separator": "+"}},
    )
    assert (await api.admin("POST", "/holdrules", json={"Account": "alice"})).status_code == 200
    r = await send_raw(api, {"RcptTo": ["ok@example.com"]}, SIGNED)
    assert r.status_code == 200, r.text
    [sub] = r.json()["Submissions"]
    assert sub["FromID"]
    row = (await api.admin("GET", f"/queue/{sub['QueueMsgID']}")).json()
    assert row["Hold"] and row["SenderLocalpart"] == f"alice+{sub['FromID']}"
    status = (await call(api, "MessageStatus", {"QueueMsgID": sub["QueueMsgID"]})).json()
    assert status["State"] == "held"


async def test_sendraw_method_page_has_a_file_field(api: Stack) -> None:
    r = await api.http.get("/webapi/v0/SendRaw")
    assert r.status_code == 200 and 'name="message"' in r.text and "RcptTo" in r.text
    index = (await api.http.get("/webapi/v0/")).text
    assert "SendRaw" in index and "MessageStatus" in index


# --- MessageStatus -----------------------------------------------------------------------------------


async def test_message_status_of_a_queued_message(api: Stack) -> None:
    resp = await api.send_ok({"To": [{"Address": "ok@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    r = await call(api, "MessageStatus", {"QueueMsgID": msg_id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["State"] == "queued" and body["Attempts"] == 0
    assert body["NextAttempt"] is not None and body["Results"] == []


async def test_message_status_of_a_delivered_message(stack: Stack) -> None:
    resp = await stack.send_ok({"To": [{"Address": "ok@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    await stack.finished(msg_id)
    body = (await call(stack, "MessageStatus", {"QueueMsgID": msg_id})).json()
    assert body["State"] == "delivered" and body["Attempts"] == 1 and body["NextAttempt"] is None
    [result] = body["Results"]
    assert result["Success"] and result["Code"] == 250


async def test_message_status_hides_other_accounts_messages(api: Stack) -> None:
    resp = await api.send_ok({"To": [{"Address": "ok@example.com"}], "Text": "x"})
    msg_id = resp["Submissions"][0]["QueueMsgID"]
    other = await call(api, "MessageStatus", {"QueueMsgID": msg_id}, auth=BOB)
    unknown = await call(api, "MessageStatus", {"QueueMsgID": msg_id + 999})
    for r in (other, unknown):
        assert r.status_code == 400 and r.json()["Code"] == "messageNotFound"
    # The two answers are alike, so an id reveals nothing about another account.
    assert other.json()["Message"].replace(str(msg_id), "") == unknown.json()["Message"].replace(
        str(msg_id + 999), ""
    )


# --- Idempotency-Key ---------------------------------------------------------------------------------

SEND = {"To": [{"Address": "ok@example.com"}], "Text": "once"}


async def send_with_key(stack: Stack, key: str, request: dict[str, Any] = SEND) -> httpx.Response:
    return await stack.http.post(
        "/webapi/v0/Send",
        data={"request": json.dumps(request)},
        auth=(SENDER, PASSWORD),
        headers={"Idempotency-Key": key},
    )


async def test_same_key_twice_returns_the_first_response_and_delivers_once(stack: Stack) -> None:
    first = await send_with_key(stack, "order-42")
    again = await send_with_key(stack, "order-42")
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    await stack.finished(first.json()["Submissions"][0]["QueueMsgID"])
    assert stack.sink.delivered_to() == ["ok@example.com"]
    # Keys are per account: bob's identical key queues his own message.
    bobs = await stack.http.post(
        "/webapi/v0/Send",
        data={"request": json.dumps(SEND)},
        auth=BOB,
        headers={"Idempotency-Key": "order-42"},
    )
    assert bobs.status_code == 200 and bobs.json() != first.json()


async def test_sendraw_honours_the_key_too(api: Stack) -> None:
    req = {"RcptTo": ["ok@example.com"]}
    first = await send_raw(api, req, SIGNED, key="raw-1")
    again = await send_raw(api, req, SIGNED, key="raw-1")
    assert first.status_code == 200 and again.json() == first.json()
    other = await send_raw(api, req, SIGNED + b"changed\r\n", key="raw-1")
    assert other.status_code == 409 and other.json()["Code"] == "idempotencyKeyReused"
    assert await queue_count(api) == 1


async def test_same_key_different_request_is_409(api: Stack) -> None:
    assert (await send_with_key(api, "k")).status_code == 200
    r = await send_with_key(api, "k", {"To": [{"Address": "ok@example.com"}], "Text": "other"})
    assert r.status_code == 409
    assert r.json()["Code"] == "idempotencyKeyReused" and r.json()["Message"]
    assert await queue_count(api) == 1


async def test_concurrent_calls_with_one_key_queue_one_set(api: Stack) -> None:
    rcpts = {"To": [{"Address": "a@example.com"}, {"Address": "b@example.com"}], "Text": "race"}
    responses = await asyncio.gather(*(send_with_key(api, "race", rcpts) for _ in range(5)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert await queue_count(api) == 2


async def test_expired_key_can_be_reused(api: Stack) -> None:
    first = await send_with_key(api, "old")
    async with api.pool.connection() as conn:
        await conn.execute("UPDATE idempotency_keys SET created = created - interval '25 hours'")
    again = await send_with_key(api, "old", {"To": [{"Address": "ok@example.com"}], "Text": "new"})
    assert again.status_code == 200, again.text
    assert again.json() != first.json() and await queue_count(api) == 2


@pytest.mark.parametrize("key", ["x" * 201, "tab\there", "ünïcode", ""])
async def test_invalid_keys_are_refused(api: Stack, key: str) -> None:
    r = await api.http.post(
        "/webapi/v0/Send",
        data={"request": json.dumps(SEND)},
        auth=(SENDER, PASSWORD),
        headers={"Idempotency-Key": key.encode("utf-8")},  # type: ignore[dict-item]
    )
    assert r.status_code == 400 and r.json()["Code"] == "badIdempotencyKey"
    assert await queue_count(api) == 0


async def test_a_refused_request_does_not_use_up_the_key(api: Stack) -> None:
    bad = await send_with_key(api, "k2", {"To": [], "Text": "x"})
    assert bad.json()["Code"] == "noRecipients"
    assert (await send_with_key(api, "k2")).status_code == 200
