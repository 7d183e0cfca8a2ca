"""schemathesis against /openapi.json: every operation of the webapi, the admin API, the unsubscribe links
and the process endpoints is called with requests generated from the document, over real HTTP against the
real stack (PostgreSQL, Temporal, a worker relaying to an SMTP sink), with the test accounts' credentials.
Every answer must be no server error, and its status, content type and body must be the ones the document
declares.

The run is bounded (30 examples per operation, 15 for Send and SendRaw; derandomized) to under a minute.
Operations that queue mail run on the test's own database and sink, so generated mail goes nowhere else;
bulk fail and drop act on the test's own few messages.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_TOKEN, PASSWORD, SENDER, Stack
from tests.support.served import serving

# The bounce intake takes the raw message as the body; schemathesis sends generated text as is.
schemathesis.serializer.alias("message/rfc822", "text/plain")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 30
# Operations that queue mail for delivery get fewer examples: each accepted one is a real delivery.
QUEUEING_EXAMPLES = 15


def _credentials(path: str) -> dict[str, str]:
    if path.startswith("/admin/"):
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if path.startswith("/webapi/"):
        return {"Authorization": "Basic " + base64.b64encode(f"{SENDER}:{PASSWORD}".encode()).decode()}
    return {}


def _run_operation(operation: Any, base_url: str, session: requests.Session) -> int:
    """Call one operation with generated requests; raises on the first failing check (shrunk), else
    returns how many calls were made."""
    path = operation.path
    calls: list[Any] = []
    examples = QUEUEING_EXAMPLES if path.endswith(("/Send", "/SendRaw")) else EXAMPLES

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        calls.append(case)
        response = case.call(base_url=base_url, session=session, headers=_credentials(path), timeout=60)
        case.validate_response(response, checks=CHECKS)

    run()
    return len(calls)


def run_schemathesis(document: dict[str, Any], base_url: str, only: Callable[[str], bool]) -> list[str]:
    """Every operation of the document whose path `only` selects; the failures, one line each."""
    schema = schemathesis.openapi.from_dict(document)
    failures = []
    operations = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if not only(operation.path):
                continue
            operations += 1
            try:
                if _run_operation(operation, base_url, session) == 0:
                    failures.append(f"{operation.method.upper()} {operation.path}: no request generated")
            except Exception as err:  # noqa: BLE001 - collected, all reported at the end
                failures.append(f"{operation.method.upper()} {operation.path}: {err}"[:3000])
    assert operations > 0
    return failures


@pytest.fixture
async def served(stack_factory: Any) -> Any:
    """The stack's app served over HTTP on loopback, in this event loop (schemathesis calls it from a
    thread, so the loop keeps serving)."""
    stack: Stack = await stack_factory()
    app = stack.http._transport.app  # type: ignore[attr-defined]
    async with serving(app, lifespan="off", access_log=False) as url:
        yield stack, url, app.openapi()


@pytest.mark.timeout(600)
async def test_webapi_conforms_to_its_document(served: Any) -> None:
    stack, base_url, document = served
    failures = await asyncio.to_thread(
        run_schemathesis, document, base_url, lambda p: not p.startswith("/admin/")
    )
    assert not failures, "\n\n".join(failures)


@pytest.mark.timeout(600)
async def test_admin_api_conforms_to_its_document(served: Any) -> None:
    stack, base_url, document = served
    # Messages in the queue, so listings, single-message operations and bulk operations have rows to act on.
    for i in range(3):
        await stack.send_ok({"To": [{"Address": f"rcpt{i}@example.com"}], "Subject": f"m{i}", "Text": "hi"})
    failures = await asyncio.to_thread(
        run_schemathesis, document, base_url, lambda p: p.startswith("/admin/")
    )
    assert not failures, "\n\n".join(failures)
