"""A client that knows only /openapi.json can Send and list the queue: every request below is built from
the document (operation ids, paths, methods, request encodings, field names, security schemes, the
documented example) and every answer is checked against the document's response schemas, against the
real stack. A wrong path, field, encoding, scheme or schema in the document fails this test."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from tests.conftest import ADMIN_TOKEN, PASSWORD, SENDER, Stack


class DocumentClient:
    """Calls operations by id, the way a generated client does, knowing nothing but the document."""

    def __init__(self, stack: Stack, document: dict[str, Any]) -> None:
        self.stack, self.document = stack, document
        self.operations = {
            op["operationId"]: (method.upper(), path, op)
            for path, ops in document["paths"].items()
            for method, op in ops.items()
        }

    def validate(self, schema: dict[str, Any], instance: Any) -> None:
        """`instance` against a schema of the document, its references resolved in the document."""
        root = {**schema, "components": self.document["components"]}
        jsonschema.Draft202012Validator(root).validate(instance)

    def credentials(self, op: dict[str, Any]) -> dict[str, str]:
        """The Authorization header the operation's security scheme asks for."""
        (name,) = op["security"][0]
        scheme = self.document["components"]["securitySchemes"][name]
        assert scheme["type"] == "http"
        if scheme["scheme"] == "basic":
            return {"Authorization": "Basic " + base64.b64encode(f"{SENDER}:{PASSWORD}".encode()).decode()}
        assert scheme["scheme"] == "bearer"
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(
        self,
        operation_id: str,
        *,
        body: dict[str, Any] | None = None,
        encoding: str = "application/json",
        query: dict[str, str] | None = None,
        path: dict[str, str] | None = None,
    ) -> Any:
        """Call an operation; the answer's JSON, checked against the documented 200 response."""
        method, url, op = self.operations[operation_id]
        for p in op.get("parameters", []):
            if p["in"] == "path":
                url = url.replace("{" + p["name"] + "}", (path or {})[p["name"]])
        kwargs: dict[str, Any] = {"headers": self.credentials(op)}
        if query:
            known = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
            assert set(query) <= known, (operation_id, known)
            kwargs["params"] = query
        if body is not None:
            content = op["requestBody"]["content"][encoding]
            if encoding == "application/json":
                self.validate(content["schema"], body)
                kwargs["json"] = body
            else:
                # The request object travels as JSON text in the form field the document requires.
                (field,) = content["schema"]["required"]
                self.validate(content["schema"]["properties"][field]["contentSchema"], body)
                form = {field: json.dumps(body)}
                kwargs["data" if encoding.endswith("urlencoded") else "files"] = (
                    form
                    if encoding.endswith("urlencoded")
                    else {field: (None, form[field], "application/json")}
                )
        r = await self.stack.http.request(method, url, **kwargs)
        assert r.status_code == 200, (operation_id, r.status_code, r.text)
        answer = r.json()
        self.validate(op["responses"]["200"]["content"]["application/json"]["schema"], answer)
        return answer


@pytest.mark.parametrize(
    "encoding", ["application/x-www-form-urlencoded", "multipart/form-data", "application/json"]
)
async def test_a_client_built_from_the_document_sends_and_lists_the_queue(
    stack_factory: Any, encoding: str
) -> None:
    stack: Stack = await stack_factory()
    r = await stack.http.get("/openapi.json")
    assert r.status_code == 200
    client = DocumentClient(stack, r.json())

    # The documented example of Send, as the document's encoding carries it.
    _, _, send = client.operations["Send"]
    example = send["requestBody"]["content"]["application/json"]["example"]
    # Released in an hour, so it is still queued for the listing.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    request = {**example, "Subject": "built from the document", "FutureRelease": later}
    sent = await client.call("Send", body=request, encoding=encoding)
    (submission,) = sent["Submissions"]

    listed = await client.call("list_queue", query={"account": "alice"})
    assert [(m["ID"], m["Subject"]) for m in listed["Messages"]] == [
        (submission["QueueMsgID"], "built from the document")
    ]
    assert (await client.call("count_queue", query={"account": "alice"}))["Count"] == 1
    one = await client.call("get_msg", path={"msg_id": str(submission["QueueMsgID"])})
    assert one["ID"] == submission["QueueMsgID"] and one["Hold"] is False
    status = await client.call(
        "MessageStatus", body={"QueueMsgID": submission["QueueMsgID"]}, encoding=encoding
    )
    assert status == {"State": "queued", "Attempts": 0, "NextAttempt": status["NextAttempt"], "Results": []}
    assert datetime.fromisoformat(status["NextAttempt"]) > datetime.now(UTC) + timedelta(minutes=50)
