"""The webapi as a mox client sees it: authentication, request encodings and Send's error codes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from tests.conftest import PASSWORD, SENDER, Stack


@pytest.fixture
async def api(stack_factory) -> Stack:
    # No worker: these tests look at what is accepted and queued, not at delivery.
    return await stack_factory(worker=False)


async def test_47_wrong_password_gets_401(api: Stack) -> None:
    r = await api.send({"To": [{"Address": "bob@example.com"}], "Text": "x"}, auth=(SENDER, "wrong"))
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic realm=")
    assert "use http basic auth" in r.text


async def test_46_missing_credentials_get_401(api: Stack) -> None:
    r = await api.http.post("/webapi/v0/Send", data={"request": "{}"})
    assert r.status_code == 401


async def test_47_repeated_bad_passwords_get_429_even_with_the_right_one(api: Stack) -> None:
    req = {"To": [{"Address": "bob@example.com"}], "Text": "x"}
    # The limiter counts in fixed one-minute windows of the wall clock: start well inside one, so the
    # failures below are not split across two windows on a slow machine.
    left = 60 - datetime.now(UTC).timestamp() % 60
    if left < 10:
        await asyncio.sleep(left + 0.1)
    for _ in range(10):
        assert (await api.send(req, auth=(SENDER, "guess"))).status_code == 401
    r = await api.send(req, auth=(SENDER, PASSWORD))
    assert r.status_code == 429 and r.text == "429 - too many auth attempts"
    # Asking without credentials is not an attempt: still the plain 401.
    assert (await api.http.post("/webapi/v0/Send", data={"request": "{}"})).status_code == 401


async def test_unknown_address_gets_401(api: Stack) -> None:
    r = await api.send(
        {"To": [{"Address": "bob@example.com"}], "Text": "x"}, auth=("nobody@example.org", PASSWORD)
    )
    assert r.status_code == 401


@pytest.mark.parametrize(
    "request_obj,code",
    [
        ({"To": [{"Address": "bob@example.com"}]}, "missingBody"),
        (
            {
                "From": [{"Address": SENDER}, {"Address": "alias@example.org"}],
                "To": [{"Address": "b@x.example"}],
                "Text": "x",
            },
            "multipleFrom",
        ),
        (
            {"From": [{"Address": "mallory@example.org"}], "To": [{"Address": "b@x.example"}], "Text": "x"},
            "badFrom",
        ),
        ({"Text": "x"}, "noRecipients"),
        ({"To": [{"Address": "not an address"}], "Text": "x"}, "badAddress"),
        (
            {"To": [{"Address": "b@x.example"}], "Text": "x", "MessageID": "no-brackets@x"},
            "malformedMessageID",
        ),
        ({"To": [{"Address": "b@x.example"}], "Text": "x", "Subject": "bad\x01subject"}, "user"),
        ({"To": [{"Address": "b@x.example"}], "Text": "x", "Bogus": 1}, "protocol"),
        (
            {
                "To": [{"Address": "b@x.example"}],
                "Text": "x",
                "FutureRelease": (datetime.now(UTC) + timedelta(days=61)).isoformat(),
            },
            "user",
        ),
        (
            {
                "To": [{"Address": "b@x.example"}],
                "Text": "x",
                "AttachedFiles": [{"Name": "a.bin", "Data": "not base64!"}],
            },
            "user",
        ),
    ],
)
async def test_52_send_validation_errors(api: Stack, request_obj: dict, code: str) -> None:
    r = await api.send(request_obj)
    assert r.status_code == 400, r.text
    assert r.json()["Code"] == code
    assert r.json()["Message"]
    # Nothing was queued.
    assert (await api.admin("GET", "/queue/count")).json() == {"Count": 0}


async def test_49_missing_request_field_is_protocol_error(api: Stack) -> None:
    r = await api.http.post("/webapi/v0/Send", data={"other": "x"}, auth=(SENDER, PASSWORD))
    assert r.status_code == 400 and r.json()["Code"] == "protocol"


async def test_message_too_large(stack_factory) -> None:
    api = await stack_factory(worker=False)
    api.config = api.config.model_copy(
        update={"api": api.config.api.model_copy(update={"max_message_size": 500})}
    )
    api.http._transport.app.state.tempost.config = api.config  # type: ignore[attr-defined]
    r = await api.send({"To": [{"Address": "b@x.example"}], "Text": "x" * 1000})
    assert r.status_code == 400 and r.json()["Code"] == "messageTooLarge"


async def test_json_body_is_accepted(api: Stack) -> None:
    r = await api.http.post(
        "/webapi/v0/Send",
        content=json.dumps({"To": [{"Address": "bob@example.com"}], "Text": "hi"}),
        headers={"Content-Type": "application/json"},
        auth=(SENDER, PASSWORD),
    )
    assert r.status_code == 200, r.text
    assert r.json()["Submissions"][0]["Address"] == "bob@example.com"


async def test_multipart_upload_and_queue_row(api: Stack) -> None:
    req = {
        "From": [{"Name": "Alice A.", "Address": "alias@example.org"}],
        "To": [{"Address": "bob@example.com"}],
        "CC": [{"Address": "carol@example.com"}],
        "BCC": [{"Address": "dave@example.net"}],
        "Subject": "report ☺",
        "Text": "see attachment",
        "Extra": {"order": "42"},
        "RequireTLS": False,
    }
    r = await api.http.post(
        "/webapi/v0/Send",
        data={"request": json.dumps(req)},
        files={"attachedfile": ("r.csv", b"a,b\n1,2\n", "text/csv")},
        auth=(SENDER, PASSWORD),
    )
    assert r.status_code == 200, r.text
    subs = r.json()["Submissions"]
    assert [s["Address"] for s in subs] == ["bob@example.com", "carol@example.com", "dave@example.net"]
    rows = (await api.admin("GET", "/queue", params={"sort": "queued", "asc": "true"})).json()["Messages"]
    assert [m["ID"] for m in rows] == [s["QueueMsgID"] for s in subs]
    first = rows[0]
    assert first["SenderLocalpart"] == "alias" and first["Extra"] == {"order": "42"}
    assert first["RequireTLS"] is False and first["Subject"] == "report ☺"
    assert first["BaseID"] == subs[0]["QueueMsgID"] == rows[2]["BaseID"]
    raw = (await api.admin("GET", f"/queue/{first['ID']}/raw")).content
    msg = message_from_bytes(raw, policy=default_policy)
    assert msg["Subject"] == "report ☺" and "dave" not in str(msg["Cc"]) and msg["Bcc"] is None
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "r.csv" and att.get_content() in ("a,b\n1,2\n", b"a,b\n1,2\n")


async def test_46_webapi_index_and_unknown_method(api: Stack) -> None:
    r = await api.http.get("/webapi/")
    assert r.status_code == 303 and r.headers["location"] == "/webapi/v0/"
    r = await api.http.post("/webapi/v0/Nope", auth=(SENDER, PASSWORD))
    assert r.status_code == 404
