"""Fuzzing of the webapi and the admin API with hypothesis-generated hostile bodies and query strings,
against the real app, PostgreSQL and Temporal: never a server error, and every error a JSON
`{"Code", "Message"}` with a string Code (spec 04 §3, spec 03 §5.3).

Every admin route of the app is fuzzed, found by walking its routes, so a new route is covered without
changing this file. Examples are derandomized and bounded, so the module runs in about a minute.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.webapi import METHODS
from tests.conftest import ADMIN_TOKEN, PASSWORD, SENDER, Stack

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# Text that has broken parsers before: out-of-range numbers and durations, NUL, replacement characters,
# over-long names, separators and time forms.
HOSTILE = [
    "",
    "0",
    "-1",
    "99999999999999999999",
    "1e308",
    "NaN",
    "<99999999999h",
    ">99999999999999h",
    "<now",
    ">-1h30m",
    "99999999999999h",
    "\0",
    "a\0b",
    "\ufffd",
    "true",
    "maybe",
    ",,,",
    "1,2,x",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2026-01-01T00:00:00Z",
    "a" * 65 + "@example.org",
    "x@" + "b" * 64 + ".org",
    "b\ufffdob@example.org",
    "alice@example.org",
    "bob@example.com",
    "example.org",
]
text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=30),
)
FIELDS = [
    "Filter", "Set", "Add", "Transport", "RequireTLS", "Account", "SenderDomain", "RecipientDomain",
    "EmailAddress", "Manual", "Reason", "IDs", "Max", "Hold", "Submitted", "NextAttempt", "LastActivity",
    "From", "To", "CC", "BCC", "Text", "HTML", "Subject", "Extra", "Headers", "QueueMsgID", "MailFrom",
    "RcptTo", "FutureRelease", "AttachedFiles", "InlineFiles", "AlternativeFiles", "ContentType", "Address",
    "Name", "Data", "Event",
]  # fmt: skip
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), text), inner, max_size=5),
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5)
# Raw bodies: JSON objects, any JSON, deep nesting, invalid UTF-8 and plain bytes.
raw_bodies = st.one_of(
    json_objects.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b'{"Filter": {"Account": "\xff"}}', b'{"a": "\\ud800"}', b"{", b"", b"\0", b"NaN"]),
    st.binary(max_size=100),
)
QUERY_NAMES = [
    "ids", "account", "from", "to", "hold", "submitted", "nextattempt", "lastactivity", "transport",
    "success", "max", "sort", "asc", "lastid", "last", "event", "day", "domain", "rcpt", "mailfrom",
    "address",
]  # fmt: skip
# A query value percent-encoded, or one of the raw escapes that do not decode (invalid UTF-8, NUL).
query_values = st.one_of(
    text.map(lambda v: quote(v, safe="")), st.sampled_from(["%FF", "%00", "%C3", "%", "%zz"])
)
query_strings = st.lists(
    st.tuples(st.one_of(st.sampled_from(QUERY_NAMES), text.map(lambda v: quote(v, safe=""))), query_values),
    max_size=6,
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
path_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["hold", "release", "fail", "drop", "kick", "count", "raw", "nextattempt", "transport"]),
    text.filter(lambda v: v not in ("", ".", "..")).map(lambda v: quote(v, safe="")),
)


def admin_routes(stack: Stack) -> list[tuple[str, str]]:
    """(method, path template) of every admin route the app serves, from its OpenAPI document."""
    app = stack.http._transport.app  # type: ignore[attr-defined]
    return sorted(
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/admin/")
        for method in operations
    )


def assert_api_answer(r: httpx.Response) -> None:
    """Never a server error; an error is JSON with a string Code that is not `server`."""
    assert r.status_code < 500, (r.request.method, str(r.request.url)[:200], r.status_code, r.text[:300])
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body.get("Code"), str) and body["Code"] != "server", body
        assert isinstance(body.get("Message"), str), body


@pytest.fixture
async def stack(stack_factory) -> Stack:
    return await stack_factory()


async def test_every_admin_route_is_fuzzed(stack: Stack) -> None:
    routes = admin_routes(stack)
    # Sanity: the walk finds the routes of every admin module.
    for expected in ("/admin/v0/queue", "/admin/v0/hooks", "/admin/v0/holdrules", "/admin/v0/suppressions"):
        assert any(path == expected for _, path in routes), routes
    assert len(routes) >= 20


@FUZZ
@given(data=st.data())
async def test_admin_api_answers_hostile_input_with_4xx_json(stack: Stack, data: st.DataObject) -> None:
    method, template = data.draw(st.sampled_from(admin_routes(stack)), label="route")
    path = re.sub(r"\{[^}]+\}", lambda _: data.draw(path_values, label="path value"), template)
    query = data.draw(query_strings, label="query")
    body = data.draw(raw_bodies, label="body") if method in ("POST", "PUT", "PATCH") else b""
    r = await stack.http.request(
        method,
        path + ("?" + query if query else ""),
        content=body,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    assert_api_answer(r)


def encode_call(encoding: str, request_text: str | bytes) -> dict[str, Any]:
    """httpx arguments carrying a webapi request in one of the encodings the API takes."""
    if encoding == "json":
        return {"content": request_text, "headers": {"Content-Type": "application/json"}}
    if isinstance(request_text, bytes):
        return {
            "content": b"request=" + request_text,
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        }
    if encoding == "multipart":
        return {"data": {"request": request_text}, "files": {"message": ("m.eml", b"From: x\r\n\r\nhi\r\n")}}
    return {"data": {"request": request_text}}


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    encoding=st.sampled_from(["urlencoded", "multipart", "json"]),
    request_text=st.one_of(json_objects.map(json.dumps), raw_bodies),
)
async def test_webapi_answers_hostile_input_with_4xx_json(
    stack: Stack, method: str, encoding: str, request_text: str | bytes
) -> None:
    r = await stack.http.post(
        f"/webapi/v0/{method}", auth=(SENDER, PASSWORD), **encode_call(encoding, request_text)
    )
    assert_api_answer(r)


@FUZZ
@given(query=query_strings, body=raw_bodies)
async def test_bounce_intake_answers_hostile_input_with_4xx_json(
    stack: Stack, query: str, body: bytes
) -> None:
    r = await stack.admin("POST", "/bounces?" + query, content=body)
    assert_api_answer(r)
