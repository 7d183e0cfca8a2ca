"""mox's Go webapi client on the wire, kept under test in Python: what it posts and what arrives at the MX.

The client (mox v0.0.15 and later, webapi/client.go) marshals the whole request struct to JSON with Go's
encoder (every field present, nil lists as null, <, > and & escaped as \\u003c ...), puts it in the form
field `request` of an `application/x-www-form-urlencoded` POST, files base64-encoded inside it, and logs
in with HTTP basic auth, an email address as the user name. These tests build that body by hand, send it
to the API served on a loopback port, and read the message the SMTP sink received.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import httpx
import pytest

from api.app import create_app
from tests.conftest import PASSWORD, SENDER, Stack
from tests.support.served import serving
from tests.support.smtpsink import Transaction

TEXT = "Hello Bob,\n\nthe report is attached.\n"
HTML = '<p>Hello Bob,</p>\n<p>the report is attached &amp; <img src="cid:logo@example.org"></p>\n'
LOGO = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
# Every byte value, and more than one base64 line's worth, ending in a short line.
REPORT = bytes(range(256)) * 4 + b"\x00\xff\r\n"
CALENDAR = (
    b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tempost test//EN\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n"
    b"UID:planning-1@example.org\r\nDTSTART:20270105T100000Z\r\nSUMMARY:Planning\r\nEND:VEVENT\r\n"
    b"END:VCALENDAR\r\n"
)


@pytest.fixture
async def served(stack_factory: Any) -> AsyncIterator[tuple[Stack, str]]:
    """The API on a loopback port, as mox's client reaches it, with a worker relaying to the sink."""
    stack = await stack_factory()
    async with serving(create_app(stack.config, stack.client, stack.pool)) as url:
        yield stack, f"{url}/webapi/v0/"


def go_json(value: Any) -> str:
    """JSON as Go's json.Marshal writes it: compact, with HTML characters and line separators escaped."""
    out = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for c in "<>&\u2028\u2029":
        out = out.replace(c, f"\\u{ord(c):04x}")
    return out


def send_request(**fields: Any) -> dict[str, Any]:
    """A webapi.SendRequest as the Go client marshals it: every field, in struct order, zero values set."""
    req: dict[str, Any] = {
        "From": None,
        "To": None,
        "CC": None,
        "BCC": None,
        "ReplyTo": None,
        "MessageID": "",
        "References": None,
        "Date": None,
        "Subject": "",
        "Text": "",
        "HTML": "",
        "Extra": None,
        "Headers": None,
        "AlternativeFiles": None,
        "InlineFiles": None,
        "AttachedFiles": None,
        "RequireTLS": None,
        "FutureRelease": None,
        "SaveSent": False,
    }
    assert set(fields) <= set(req)
    req.update(fields)
    return req


def file(name: str, content_type: str, data: bytes, content_id: str = "") -> dict[str, str]:
    return {"Name": name, "ContentType": content_type, "ContentID": content_id, "Data": b64(data)}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def post_like_mox(base_url: str, method: str, request: dict[str, Any]) -> httpx.Response:
    """One call as webapi.Client makes it: url.Values{"request": json}.Encode(), SetBasicAuth."""
    body = urllib.parse.urlencode({"request": go_json(request)}).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": "Basic " + b64(f"{SENDER}:{PASSWORD}".encode()),
    }
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(base_url + method, content=body, headers=headers)


async def delivered(stack: Stack, queue_msg_id: int) -> Transaction:
    """The message the sink accepted for the submission, once its workflow is done."""
    status = await stack.finished(queue_msg_id)
    assert status is not None
    [tx] = stack.sink.messages()
    return tx


def assert_send_result(r: httpx.Response, recipient: str) -> int:
    """The response shape mox's client decodes (webapi.SendResult); returns the QueueMsgID."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    result = r.json()
    assert set(result) == {"MessageID", "Submissions"}
    assert re.fullmatch(r"<[^<>@\s]+@tempost\.test>", result["MessageID"]), result["MessageID"]
    [sub] = result["Submissions"]
    assert set(sub) == {"Address", "QueueMsgID", "FromID"}
    assert sub["Address"] == recipient and sub["FromID"] == ""
    assert isinstance(sub["QueueMsgID"], int) and sub["QueueMsgID"] > 0
    return int(sub["QueueMsgID"])


def assert_parts_end_in_crlf(data: bytes) -> None:
    """RFC 2046 §5.1.1, as mox writes it: each part ends in its own CRLF and every delimiter brings its
    own, so each delimiter line follows an empty line's worth of CRLFs."""
    boundaries = re.findall(rb'boundary="([^"]+)"', data)
    assert boundaries
    for b in boundaries:
        starts = [m.start() for m in re.finditer(re.escape(b"--" + b), data)]
        assert starts
        for i in starts:
            assert data[i - 4 : i] == b"\r\n\r\n", data[i - 60 : i + 20]
    assert b"\n" not in data.replace(b"\r\n", b"")


def parse(tx: Transaction) -> EmailMessage:
    msg = message_from_bytes(tx.data, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(part: Any) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


async def test_go_client_send_with_text_html_inline_and_attached_file(served: tuple[Stack, str]) -> None:
    stack, base_url = served
    request = send_request(
        To=[{"Name": "Bob", "Address": "bob@example.com"}],
        Subject="Report & logo <weekly>",
        Text=TEXT,
        HTML=HTML,
        InlineFiles=[file("logo.png", "image/png", LOGO, "<logo@example.org>")],
        AttachedFiles=[file("report.bin", "application/octet-stream", REPORT)],
    )
    # What the client puts on the wire: Go's escapes survive form encoding, null stays null.
    assert "\\u003cp\\u003e" in go_json(request) and '"AlternativeFiles":null' in go_json(request)
    queue_msg_id = assert_send_result(await post_like_mox(base_url, "Send", request), "bob@example.com")

    tx = await delivered(stack, queue_msg_id)
    assert tx.mail_from == SENDER and tx.rcpt_tos == ["bob@example.com"]
    msg = parse(tx)
    assert msg["Subject"] == "Report & logo <weekly>" and msg.get_content_type() == "multipart/mixed"
    related, report = msg.get_payload()  # type: ignore[misc]
    alternative, logo = related.get_payload()
    plain, rich = alternative.get_payload()
    assert text_of(plain) == TEXT and text_of(rich) == HTML
    assert logo["Content-ID"] == "<logo@example.org>" and logo.get_payload(decode=True) == LOGO
    assert report.get_filename() == "report.bin" and report.get_payload(decode=True) == REPORT
    # Byte for byte at the MX: the text part's last CRLF is its own, the delimiter has another.
    assert b"the report is attached.\r\n\r\n--" in tx.data
    assert b'<img src="cid:logo@example.org"></p>\r\n\r\n--' in tx.data
    assert_parts_end_in_crlf(tx.data)


async def test_go_client_send_with_a_calendar_invitation(served: tuple[Stack, str]) -> None:
    stack, base_url = served
    request = send_request(
        To=[{"Name": "", "Address": "carol@example.com"}],
        Subject="Planning",
        Text="You are invited to Planning.\n",
        HTML="<p>You are invited to <b>Planning</b>.</p>\n",
        AlternativeFiles=[file("invite.ics", "text/calendar; method=REQUEST; charset=utf-8", CALENDAR)],
        AttachedFiles=[file("agenda.txt", "text/plain; charset=utf-8", b"1. dates\n2. budget\n")],
    )
    queue_msg_id = assert_send_result(await post_like_mox(base_url, "Send", request), "carol@example.com")

    tx = await delivered(stack, queue_msg_id)
    msg = parse(tx)
    assert msg.get_content_type() == "multipart/mixed"
    alternative, agenda = msg.get_payload()  # type: ignore[misc]
    assert alternative.get_content_type() == "multipart/alternative"
    plain, rich, calendar = alternative.get_payload()
    assert text_of(plain) == "You are invited to Planning.\n"
    assert text_of(rich) == "<p>You are invited to <b>Planning</b>.</p>\n"
    assert calendar.get_content_type() == "text/calendar" and calendar.get_param("method") == "REQUEST"
    assert calendar.get_filename() == "invite.ics" and calendar.get_payload(decode=True) == CALENDAR
    assert agenda.get_payload(decode=True) == b"1. dates\n2. budget\n"
    assert_parts_end_in_crlf(tx.data)


async def test_go_client_bad_alternative_file_gets_the_user_code(served: tuple[Stack, str]) -> None:
    stack, base_url = served
    request = send_request(
        To=[{"Name": "", "Address": "carol@example.com"}],
        Text="x",
        AlternativeFiles=[
            {"Name": "", "ContentType": "text/calendar\r\nBcc: x@y", "ContentID": "", "Data": ""}
        ],
    )
    r = await post_like_mox(base_url, "Send", request)
    assert r.status_code == 400 and r.json()["Code"] == "user", r.text
    assert (await stack.admin("GET", "/queue/count")).json() == {"Count": 0}
