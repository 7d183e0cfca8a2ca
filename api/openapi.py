"""The OpenAPI 3.1 document at /openapi.json and the API docs at /docs and /redoc, served without a CDN.

The handlers read their requests themselves (bodies streamed under a size bound, api/body.py), so FastAPI
cannot see the request shapes: each route names the pydantic model its handler validates with, through
the helpers here, and the document takes the model's JSON schema from pydantic. Responses are FastAPI's
`response_model`s, validated on the way out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

# Swagger UI 5 and ReDoc 2 as shipped in the fastapi-offline wheel (Apache-2.0 and MIT).
_ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/static/docs"
_REF = "#/components/schemas/{model}"
# Request models named by routes, added to the document's components.
_MODELS: dict[str, type[BaseModel]] = {}

WEBAPI_SECURITY = "webapiBasic"
ADMIN_SECURITY = "adminBearer"


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to `model`'s schema in the document's components."""
    known = _MODELS.setdefault(model.__name__, model)
    if known is not model:
        raise ValueError(f"two request models named {model.__name__}")
    return {"$ref": _REF.format(model=model.__name__)}


def webapi_body(
    model: type[BaseModel], files: dict[str, str] | None = None, example: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A webapi method's requestBody: the request object as the form field `request` (url-encoded, as
    mox's client sends it, or multipart with file parts `files`), or as a JSON body (Tempost extension)."""
    ref = schema_ref(model)
    request_field: dict[str, Any] = {
        "type": "string",
        "description": f"The {model.__name__} object as JSON text.",
        "contentMediaType": "application/json",
        "contentSchema": ref,
    }
    if example is not None:
        request_field["examples"] = [json.dumps(example)]
    multipart: dict[str, Any] = {"request": request_field}
    for name, description in (files or {}).items():
        multipart[name] = {
            "type": "array",
            "items": {"type": "string", "contentMediaType": "application/octet-stream"},
            "description": description,
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["request"],
                        "properties": {"request": request_field},
                    }
                },
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["request"], "properties": multipart}
                },
                "application/json": {"schema": ref, **({"example": example} if example is not None else {})},
            },
        }
    }


def json_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """An admin route's JSON requestBody."""
    return {
        "requestBody": {"required": required, "content": {"application/json": {"schema": schema_ref(model)}}}
    }


def query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """An optional query parameter of an admin route."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def error(model: type[BaseModel], description: str) -> dict[str, Any]:
    """A `responses` entry for an error answered as JSON `{"Code","Message"}`."""
    return {"model": model, "description": description}


TEXT_401 = {
    "description": 'Missing or wrong credentials (plain text; `WWW-Authenticate: Basic realm="webapi"`).',
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
TEXT_429 = {
    "description": "Too many failed logins from the caller's address (plain text, as mox answers).",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def _add_security_and_errors(doc: dict[str, Any], admin_error: dict[str, Any]) -> None:
    """Security requirements by API, and the admin API's common errors, on every operation."""
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            # FastAPI's own 422 for path parameters never happens: a bad path value is our 400 badRequest.
            responses.pop("422", None)
            if path.startswith("/webapi/"):
                op["security"] = [{WEBAPI_SECURITY: []}]
            elif path.startswith("/admin/"):
                op["security"] = [{ADMIN_SECURITY: []}]
                wanted = {
                    "400": "Bad input: badRequest, badFilter, badAddress, badDomain, missingBody.",
                    "401": "Missing or wrong bearer token: unauthorized.",
                    "429": "Too many failed authentications from the caller's address: tooManyAuthAttempts.",
                    "503": "PostgreSQL or Temporal unreachable: unavailable.",
                }
                if "{" in path:
                    wanted["404"] = "No such record: notFound."
                if method in ("post", "put", "patch"):
                    wanted["413"] = "Body over the limit: requestTooLarge (bounces: messageTooLarge)."
                for status, description in wanted.items():
                    responses.setdefault(
                        status,
                        {
                            "description": description,
                            "content": {"application/json": {"schema": admin_error}},
                        },
                    )


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI 3.1 document, built once."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        summary="Durable outgoing mail: mox webapi v0 (with extensions) and the admin API",
        description=(
            "`/webapi/v0/*` is mox's webapi v0: every method takes its request object in the form field "
            "`request` (url-encoded or multipart) or as a JSON body, and answers HTTP 400 with "
            '`{"Code","Message"}` on errors. `/admin/v0/*` needs the admin bearer token.'
        ),
        routes=app.routes,
        tags=[
            {"name": "webapi", "description": "mox webapi v0 methods, HTTP basic auth (address, password)."},
            {"name": "admin", "description": "Queue administration, `Authorization: Bearer <admin token>`."},
            {"name": "unsubscribe", "description": "One-click unsubscribe links (RFC 8058), no login."},
            {"name": "process", "description": "Health and metrics."},
        ],
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _, extra = models_json_schema([(m, "validation") for m in _MODELS.values()], ref_template=_REF)
    for name, schema in extra.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    components["securitySchemes"] = {
        WEBAPI_SECURITY: {
            "type": "http",
            "scheme": "basic",
            "description": "One of the account's email addresses and its password.",
        },
        ADMIN_SECURITY: {"type": "http", "scheme": "bearer", "description": "The admin token."},
    }
    _add_security_and_errors(doc, {"$ref": _REF.format(model="AdminErrorResponse")})
    # FastAPI's validation error shapes are never answered (see above).
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = doc
    return doc


def install(app: FastAPI) -> None:
    """Serve the document and the docs pages; the pages load their scripts from this app only."""
    app.openapi = lambda: document(app)  # type: ignore[method-assign]
    # Not API: the docs pages and their assets are left out of the document.
    app.mount(ASSETS_URL, StaticFiles(directory=_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=None,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
