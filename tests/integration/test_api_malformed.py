"""Malformed input, one example of each class found by hostile trials: always a 4xx with a stable
`{"Code", "Message"}`, never a 500 and never the `server` code (spec 04 §3, spec 03 §5.3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import PASSWORD, SENDER, Stack

NESTED = "[" * 100_000 + "]" * 100_000
SEND = {"To": [{"Address": "bob@example.com"}], "Text": "x"}


WEBAPI = [
    ("Send", NESTED, "protocol"),
    ("Send", json.dumps({**SEND, "Extra": {"k": "a\0b"}}), "user"),
    ("Send", json.dumps({**SEND, "To": [{"Address": "a" * 65 + "@example.com"}]}), "badAddress"),
    ("Send", json.dumps({**SEND, "To": [{"Address": "a@" + "b" * 64 + ".com"}]}), "badAddress"),
    ("Send", json.dumps({**SEND, "To": [{"Address": "a@" + ".".join(["b" * 63] * 5)}]}), "badAddress"),
    ("MessageStatus", json.dumps({"QueueMsgID": 99999999999999999999}), "messageNotFound"),
    ("MessageStatus", json.dumps({"QueueMsgID": -1}), "messageNotFound"),
    ("SuppressionAdd", json.dumps({"EmailAddress": "x@example.com", "Reason": ["no"]}), "protocol"),
    ("SuppressionAdd", json.dumps({"EmailAddress": "x@example.com", "Reason": "a\0b"}), "user"),
    ("SuppressionAdd", json.dumps({"EmailAddress": "x@example.com", "Manual": "yes"}), "protocol"),
    ("SuppressionPresent", json.dumps({"EmailAddress": 5}), "protocol"),
    ("SuppressionPresent", NESTED, "protocol"),
]


@pytest.mark.parametrize("method,request_text,code", WEBAPI)
async def test_webapi_malformed_requests(api: Stack, method: str, request_text: str, code: str) -> None:
    r = await api.http.post(f"/webapi/v0/{method}", data={"request": request_text}, auth=(SENDER, PASSWORD))
    assert r.status_code == 400 and r.json()["Code"] == code, r.text[:300]


ADMIN: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("GET", "/queue?max=99999999999999999999", {}, 400, "badFilter"),
    ("GET", "/queue?ids=1,99999999999999999999", {}, 400, "badFilter"),
    ("GET", "/queue?lastid=99999999999999999999&last=2026-01-01T00:00:00Z", {}, 400, "badFilter"),
    ("GET", "/queue?submitted=<99999999999h", {}, 400, "badFilter"),
    ("GET", "/queue?account=a%00b", {}, 400, "badRequest"),
    ("GET", "/queue?account=%FF", {}, 400, "badRequest"),
    ("GET", "/queue/count?nextattempt=>99999999999999h", {}, 400, "badFilter"),
    ("GET", "/retired?max=99999999999999999999", {}, 400, "badFilter"),
    ("GET", "/retired?lastactivity=<99999999999h", {}, 400, "badFilter"),
    ("GET", "/hooks?submitted=<99999999999h", {}, 400, "badFilter"),
    ("GET", "/hooks?max=99999999999999999999", {}, 400, "badFilter"),
    ("GET", "/hooks?lastid=1&last=0001-01-01T00:00:00%2B14:00", {}, 400, "badFilter"),
    ("GET", "/queue/99999999999999999999", {}, 400, "badRequest"),
    ("GET", "/queue/abc", {}, 400, "badRequest"),
    ("GET", "/retired/99999999999999999999", {}, 400, "badRequest"),
    ("GET", "/hooks/99999999999999999999", {}, 400, "badRequest"),
    ("GET", "/dsns/99999999999999999999/raw", {}, 400, "badRequest"),
    ("DELETE", "/holdrules/99999999999999999999", {}, 400, "badRequest"),
    ("GET", "/queue/12345", {}, 404, "notFound"),
    ("GET", "/no/such/route", {}, 404, "notFound"),
    ("PUT", "/queue/count", {}, 405, "methodNotAllowed"),
    ("POST", "/queue/hold", {"content": NESTED}, 400, "badRequest"),
    ("POST", "/queue/hold", {"json": {"Filter": [1, 2]}}, 400, "badFilter"),
    ("POST", "/queue/hold", {"json": {"Filter": 5}}, 400, "badFilter"),
    ("POST", "/queue/hold", {"json": {"Filter": {"IDs": 5}}}, 400, "badFilter"),
    ("POST", "/queue/hold", {"json": {"Filter": {"Max": 1e300}}}, 400, "badFilter"),
    ("POST", "/queue/hold", {"content": b'{"Filter": {"Account": "\xff"}}'}, 400, "badRequest"),
    ("POST", "/queue/nextattempt", {"json": {"Filter": {}, "Add": "99999999999999h"}}, 400, "badRequest"),
    ("POST", "/queue/nextattempt", {"json": {"Filter": {}, "Add": 5}}, 400, "badRequest"),
    ("POST", "/queue/nextattempt", {"json": {"Set": "0001-01-01T00:00:00+14:00"}}, 400, "badRequest"),
    ("POST", "/hooks/kick", {"json": {"Filter": [1]}}, 400, "badFilter"),
    ("POST", "/hooks/cancel", {"json": {"Filter": 3}}, 400, "badFilter"),
    ("POST", "/hooks/nextattempt", {"json": {"Add": "99999999999999h"}}, 400, "badRequest"),
    ("POST", "/holdrules", {"json": {"Account": ["x"]}}, 400, "badRequest"),
    ("POST", "/holdrules", {"json": {"SenderDomain": 5}}, 400, "badDomain"),
    ("POST", "/holdrules", {"json": {"SenderDomain": "b" * 64 + ".com"}}, 400, "badDomain"),
    (
        "POST",
        "/suppressions",
        {"json": {"Account": "alice", "EmailAddress": "x@y.org", "Reason": 5}},
        400,
        "badRequest",
    ),
    ("POST", "/suppressions", {"json": {"Account": 5, "EmailAddress": "x@y.org"}}, 400, "badRequest"),
    ("POST", "/suppressions", {"json": {"Account": "alice", "EmailAddress": ["x@y.org"]}}, 400, "badAddress"),
    ("POST", "/suppressions", {"json": {"Account": "a\u0000", "EmailAddress": "x@y.org"}}, 400, "badRequest"),
    ("GET", "/suppressions?account=alice&address=" + "a" * 65 + "@y.org", {}, 400, "badAddress"),
    ("POST", "/bounces?rcpt=b%EF%BF%BDob@example.org", {"content": b"x"}, 400, "badAddress"),
]


@pytest.mark.parametrize("method,path,kw,status,code", ADMIN)
async def test_admin_malformed_requests(
    api: Stack, method: str, path: str, kw: dict[str, Any], status: int, code: str
) -> None:
    r = await api.admin(method, path, **kw)
    assert r.status_code == status and r.json()["Code"] == code, r.text[:300]


@pytest.fixture
async def api(stack_factory) -> Stack:
    return await stack_factory(worker=False)


async def test_admin_answers_503_json_while_postgresql_is_unreachable(api: Stack) -> None:
    await api.pool.close()
    r = await api.admin("GET", "/queue")
    assert r.status_code == 503 and r.json()["Code"] == "unavailable", r.text
