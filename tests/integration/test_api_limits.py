"""Request size limits that follow `api.max_message_size`, in every encoding the webapi takes (spec 04 §1):
a message up to the limit is accepted, a larger request is refused with `messageTooLarge` while it streams
in, without the API buffering much more than the limit."""

from __future__ import annotations

import base64
import json
import os
import tracemalloc
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from typing import Any

import pytest

from domain.apiinput import request_body_limit
from domain.contracts import MsgState
from tests.conftest import PASSWORD, SENDER, Stack

MIB = 1024 * 1024
AUTH = (SENDER, PASSWORD)


def limit_messages_to(stack: Stack, size: int) -> None:
    """Set the stack's api.max_message_size."""
    st = stack.http._transport.app.state.tempost  # type: ignore[attr-defined]
    st.config = st.config.model_copy(
        update={"api": st.config.api.model_copy(update={"max_message_size": size})}
    )


def send_request(attachment: bytes) -> dict[str, Any]:
    return {
        "To": [{"Address": "bob@example.com"}],
        "Subject": "report",
        "Text": "see attachment",
        "AttachedFiles": [
            {
                "Name": "data.bin",
                "ContentType": "application/octet-stream",
                "Data": base64.b64encode(attachment),
            }
        ],
    }


def json_text(obj: dict[str, Any]) -> str:
    return json.dumps(obj, default=lambda b: b.decode())


def attachment_of(data: bytes) -> bytes:
    msg = message_from_bytes(data, policy=default_policy)
    [part] = [p for p in msg.walk() if isinstance(p, Message) and p.get_filename() == "data.bin"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


@pytest.fixture
async def api(stack_factory) -> Stack:
    stack = await stack_factory(worker=False)
    limit_messages_to(stack, 5 * MIB)
    return stack


async def test_mox_client_attachment_over_one_mib_is_accepted_and_delivered_intact(stack: Stack) -> None:
    limit_messages_to(stack, 5 * MIB)
    attachment = os.urandom(MIB + 12345)
    # mox's Go client: a url-encoded form whose `request` field holds the JSON, attachments base64 inside.
    r = await stack.http.post(
        "/webapi/v0/Send", data={"request": json_text(send_request(attachment))}, auth=AUTH
    )
    assert r.status_code == 200, r.text
    status = await stack.finished(r.json()["Submissions"][0]["QueueMsgID"])
    assert [m.state for m in status.msgs] == [MsgState.DELIVERED]
    [tx] = stack.sink.messages()
    assert attachment_of(tx.data) == attachment


# An attachment whose composed message (base64 with line breaks, headers) is just under 5 MiB.
AT_LIMIT = int(5 * MIB / (4 / 3 * 78 / 76)) - 4096


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart-field", "multipart-file", "json"])
async def test_a_message_at_the_limit_is_accepted_in_every_encoding(api: Stack, encoding: str) -> None:
    attachment = os.urandom(AT_LIMIT)
    url = "/webapi/v0/Send"
    if encoding == "urlencoded":
        r = await api.http.post(url, data={"request": json_text(send_request(attachment))}, auth=AUTH)
    elif encoding == "multipart-field":
        r = await api.http.post(
            url, data={"request": json_text(send_request(attachment))}, files={"x": ("", b"")}, auth=AUTH
        )
    elif encoding == "multipart-file":
        req = send_request(b"")
        req["AttachedFiles"] = []
        r = await api.http.post(
            url,
            data={"request": json.dumps(req)},
            files={"attachedfile": ("data.bin", attachment, "application/octet-stream")},
            auth=AUTH,
        )
    else:
        r = await api.http.post(
            url,
            content=json_text(send_request(attachment)),
            headers={"Content-Type": "application/json"},
            auth=AUTH,
        )
    assert r.status_code == 200, r.text[:300]
    raw = await api.admin("GET", f"/queue/{r.json()['Submissions'][0]['QueueMsgID']}/raw")
    assert 4.9 * MIB < len(raw.content) <= 5 * MIB
    assert attachment_of(raw.content) == attachment


async def test_sendraw_message_at_the_limit_is_accepted(api: Stack) -> None:
    message = b"From: <alice@example.org>\r\nTo: <bob@example.com>\r\nSubject: big\r\n\r\n" + (
        b"x" * 998 + b"\r\n"
    ) * (5 * MIB // 1000 - 1)
    assert len(message) <= 5 * MIB
    r = await api.http.post(
        "/webapi/v0/SendRaw",
        data={"request": json.dumps({"RcptTo": ["bob@example.com"]})},
        files={"message": ("m.eml", message, "message/rfc822")},
        auth=AUTH,
    )
    assert r.status_code == 200, r.text
    raw = await api.admin("GET", f"/queue/{r.json()['Submissions'][0]['QueueMsgID']}/raw")
    # The message as sent, after the one Received field Tempost adds.
    assert raw.content.endswith(message) and raw.content.startswith(b"Received: ")
    assert raw.content[: -len(message)].count(b"\r\n") <= 3


def too_large(api: Stack) -> bytes:
    """An attachment whose request is larger than the 5 MiB limit allows."""
    return b"\0" * request_body_limit(5 * MIB)


async def test_over_limit_json_body_is_refused(api: Stack) -> None:
    r = await api.http.post(
        "/webapi/v0/Send",
        content=json_text(send_request(too_large(api))),
        headers={"Content-Type": "application/json"},
        auth=AUTH,
    )
    assert r.status_code == 400 and r.json()["Code"] == "messageTooLarge"


async def test_over_limit_urlencoded_form_is_refused(api: Stack) -> None:
    r = await api.http.post(
        "/webapi/v0/Send", data={"request": json_text(send_request(too_large(api)))}, auth=AUTH
    )
    assert r.status_code == 400 and r.json()["Code"] == "messageTooLarge"


async def test_over_limit_multipart_file_is_refused(api: Stack) -> None:
    r = await api.http.post(
        "/webapi/v0/SendRaw",
        data={"request": json.dumps({"RcptTo": ["bob@example.com"]})},
        files={"message": ("m.eml", too_large(api), "message/rfc822")},
        auth=AUTH,
    )
    assert r.status_code == 400 and r.json()["Code"] == "messageTooLarge"


async def test_content_length_over_the_limit_is_refused_before_reading(api: Stack) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 65536
            yield b"x" * 65536

    declared = str(request_body_limit(5 * MIB) + 1)
    r = await api.http.post(
        "/webapi/v0/Send",
        content=body(),
        headers={"Content-Type": "application/json", "Content-Length": declared},
        auth=AUTH,
    )
    assert r.status_code == 400 and r.json()["Code"] == "messageTooLarge"
    assert sent <= 65536


async def test_chunked_body_without_length_is_cut_off_at_the_limit(stack_factory) -> None:
    api = await stack_factory(worker=False)
    limit_messages_to(api, MIB)
    bound = request_body_limit(MIB)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"To": [{"Address": "bob@example.com"}], "Text": "'
        # 50 MiB in all, with no Content-Length: the API must stop reading at the bound.
        for _ in range(50 * 16):
            sent += 65536
            yield b"x" * 65536

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        r = await api.http.post(
            "/webapi/v0/Send", content=body(), headers={"Content-Type": "application/json"}, auth=AUTH
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "content-length" not in r.request.headers
    assert r.status_code == 400 and r.json()["Code"] == "messageTooLarge"
    assert sent <= bound + 65536
    # Everything the request allocated, the test's side included, stays within a few times the bound.
    assert peak < 4 * bound, peak


async def test_admin_bounce_body_is_bounded_too(api: Stack) -> None:
    r = await api.admin(
        "POST",
        "/bounces",
        params={"rcpt": "alice+x@example.org"},
        content=b"x" * (request_body_limit(5 * MIB) + 1),
    )
    assert r.status_code == 413 and r.json()["Code"] == "messageTooLarge"


async def test_multipart_with_invalid_utf8_field_is_refused(api: Stack) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="request"\r\n\r\n'.encode()
        + b'{"To": [{"Address": "b\xffob@example.com"}], "Text": "x"}'
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = await api.http.post(
        "/webapi/v0/Send",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        auth=AUTH,
    )
    assert r.status_code == 400 and r.json()["Code"] == "protocol"


@pytest.mark.parametrize(
    "content,ctype",
    [
        (b"request=%7B%22To%22%3A%5B%7B%22Address%22%3A%22b%FFob%40example.com%22%7D%5D%7D", "form"),
        (b"request=" + '{"To":[{"Address":"bob@example.com"}],"Text":"\xff"}'.encode("latin-1"), "form"),
        (b'{"To":[{"Address":"b\xffob@example.com"}],"Text":"x"}', "json"),
        (b'{"To":[{"Address":"b\\udc80ob@example.com"}],"Text":"x"}', "json"),
    ],
)
async def test_invalid_utf8_is_refused_not_replaced(api: Stack, content: bytes, ctype: str) -> None:
    headers = {"Content-Type": "application/json" if ctype == "json" else "application/x-www-form-urlencoded"}
    r = await api.http.post("/webapi/v0/Send", content=content, headers=headers, auth=AUTH)
    assert r.status_code == 400 and r.json()["Code"] == "protocol", r.text
    assert (await api.admin("GET", "/queue/count")).json()["Count"] == 0
