"""/openapi.json is a valid OpenAPI 3.1 document that names every route of the app with its shapes, and
/docs works without any other site: checked on the app itself, without a database or Temporal."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from openapi_spec_validator import validate
from starlette.routing import Mount

from api import adminmodels
from api.app import create_app
from api.webapi import METHODS
from domain import webapimodels
from domain.send import SendRequest
from domain.sendraw import SendRawRequest
from tests.conftest import make_config

ROOT = Path(__file__).resolve().parents[2]

# Routes deliberately left out of the document, because they are not API: HTML pages for people and the
# docs and the document themselves, and the catch-alls that only answer 404 for names that do not exist.
HIDDEN = {
    ("GET", "/webapi"),
    ("GET", "/webapi/"),
    ("GET", "/webapi/v0/"),
    ("POST", "/webapi/v0/"),
    ("HEAD", "/webapi/v0/"),
    ("GET", "/webapi/v0/{method}"),
    ("POST", "/webapi/v0/{method}"),
    ("POST", "/admin/v0/queue/{op}"),
    ("POST", "/admin/v0/queue/{msg_id}/{op}"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/openapi.json"),
    ("HEAD", "/openapi.json"),
}


class _Sink:
    host, port = "127.0.0.1", 25


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(make_config("postgresql://127.0.0.1:1/none", _Sink()))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_every_route_is_documented_or_deliberately_hidden(app: FastAPI, document: dict[str, Any]) -> None:
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    served = set()
    # FastAPI's own walk over the app's routes, through included routers, as get_openapi does.
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            continue  # the docs' static assets, checked below
        assert route.methods, route.path
        served |= {(m, route.path) for m in route.methods}
    assert served - documented - HIDDEN == set()
    assert documented <= served
    assert HIDDEN <= served, "a hidden route no longer exists: drop it from HIDDEN"


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("method", METHODS)
def test_every_webapi_method_has_its_operation_with_both_encodings(
    document: dict[str, Any], method: str
) -> None:
    op = document["paths"][f"/webapi/v0/{method}"]["post"]
    assert op["operationId"] == method
    assert op["security"] == [{"webapiBasic": []}]
    content = op["requestBody"]["content"]
    ref = content["application/json"]["schema"]["$ref"]
    for form in ("application/x-www-form-urlencoded", "multipart/form-data"):
        field = content[form]["schema"]["properties"]["request"]
        assert content[form]["schema"]["required"] == ["request"]
        assert field["contentMediaType"] == "application/json" and field["contentSchema"]["$ref"] == ref
    assert set(op["responses"]) >= {"200", "400", "401"}
    assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/WebAPIErrorResponse"
    )


def test_webapi_request_schemas_are_the_models_the_handlers_decode_with(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    models = {
        "Send": SendRequest,
        "SendRaw": SendRawRequest,
        "MessageStatus": webapimodels.MessageStatusRequest,
        "SuppressionList": webapimodels.SuppressionListRequest,
        "SuppressionAdd": webapimodels.SuppressionAddRequest,
        "SuppressionRemove": webapimodels.SuppressionAddressRequest,
        "SuppressionPresent": webapimodels.SuppressionAddressRequest,
    }
    for method, model in models.items():
        op = document["paths"][f"/webapi/v0/{method}"]["post"]
        name = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert name == model.__name__
        assert set(schemas[name]["properties"]) == set(model.model_fields)
        assert schemas[name]["additionalProperties"] is False
    assert "multipart/form-data" in document["paths"]["/webapi/v0/Send"]["post"]["requestBody"]["content"]
    send_parts = document["paths"]["/webapi/v0/Send"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert {"inlinefile", "attachedfile"} <= set(send_parts["schema"]["properties"])


def test_admin_routes_have_bearer_security_parameters_and_shapes(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["webapiBasic"] == {**schemes["webapiBasic"], "type": "http", "scheme": "basic"}
    assert schemes["adminBearer"] == {**schemes["adminBearer"], "type": "http", "scheme": "bearer"}
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            assert "422" not in op["responses"], (method, path)
            if path.startswith("/admin/"):
                assert op["security"] == [{"adminBearer": []}], path
                assert "401" in op["responses"] and "200" in op["responses"] or "204" in op["responses"]
                if method == "post" and path != "/admin/v0/bounces" and "{" not in path:
                    assert "application/json" in op["requestBody"]["content"], path
    listing = document["paths"]["/admin/v0/queue"]["get"]
    assert {"account", "to", "hold", "sort", "lastid"} <= {p["name"] for p in listing["parameters"]}
    assert listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Messages")
    nextattempt = document["paths"]["/admin/v0/queue/nextattempt"]["post"]["requestBody"]
    assert nextattempt["content"]["application/json"]["schema"]["$ref"].endswith("/NextAttemptChange")


def _codes(pattern: str) -> set[str]:
    found = set()
    for path in [*ROOT.glob("api/*.py"), *ROOT.glob("domain/*.py")]:
        found |= set(re.findall(pattern, path.read_text()))
    return found


def test_error_codes_in_the_document_are_every_code_the_code_answers_with() -> None:
    webapi = _codes(r'WebAPIError\(\s*"([a-zA-Z]+)"') | {"serverBusy", "unavailable"}
    assert webapi == set(webapimodels.ERROR_CODES)
    admin = _codes(r'AdminError\(\s*\d+,\s*"([a-zA-Z]+)"') | _codes(r'_error\(\s*\d+,\s*"([a-zA-Z]+)"')
    admin |= {"methodNotAllowed"}  # the app's answer to a wrong method (api/app.py _HTTP_CODES)
    assert admin <= set(adminmodels.ERROR_CODES)


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_load_everything_from_the_app_itself(app: FastAPI, page: str) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tempost.test"
    ) as http:
        r = await http.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        parser = _Assets()
        parser.feed(r.text)
        # The scripts named in inline JavaScript too (Swagger UI's url: '/openapi.json').
        urls = parser.urls + re.findall(r"""url:\s*'([^']+)'""", r.text)
        assert any(u.endswith(".js") for u in urls), urls
        assert "cdn" not in r.text.lower()
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            asset = await http.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100, url
