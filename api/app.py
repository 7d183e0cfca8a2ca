"""The HTTP API process: webapi, admin API, health and metrics on one ASGI app."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api import (
    admin,
    admin_bounces,
    admin_bulk,
    admin_dkim,
    admin_holdrules,
    admin_hooks,
    admin_suppressions,
    openapi,
    unsubscribe,
    webapi,
)
from api import metrics as queue_metrics
from api.adminmodels import Ready
from api.auth import Authenticator
from api.state import AppState, NotConnected
from domain.apiinput import query_string_problem
from domain.config import Config
from domain.ratelimit import RequestLimiter
from store.db import Pool
from store.dkimkeys import load_keyring

log = logging.getLogger("tempost.api")


_HTTP_CODES = {404: "notFound", 405: "methodNotAllowed", 413: "requestTooLarge"}
# Temporal's answers when its frontend cannot be reached or is not serving yet.
_TEMPORAL_DOWN = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)


def _json_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message}, status_code=status)


class _StrictQueryString:
    """Refuses, before any handler runs, a query string with invalid UTF-8 or a NUL byte: Starlette would
    hand handlers replacement characters, and PostgreSQL cannot store NUL."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = query_string_problem(scope.get("query_string", b""))
            if problem is not None:
                await _json_error(400, "badRequest", problem)(scope, receive, send)
                return
        await self._app(scope, receive, send)


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(config: Config, client: Client | None = None, pool: Pool | None = None) -> FastAPI:
    """An API app; a missing client or pool is handed over later, once reachable (`AppState`)."""
    app = FastAPI(
        title="Tempost",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        # Operation ids are the handlers' names (webapi: the method names), unique across the app.
        generate_unique_id_function=_operation_id,
    )
    state = AppState(
        config,
        Authenticator(config),
        client,
        pool,
        unsubscribe_secret=unsubscribe.load_secret(config),
        unsubscribe_limiter=RequestLimiter(config.api.unsubscribe_per_minute),
        dkim=load_keyring(config),
    )
    app.state.tempost = state
    app.include_router(webapi.router)
    app.include_router(unsubscribe.router)
    app.include_router(admin_bulk.router)
    app.include_router(admin.router)
    app.include_router(admin_hooks.router)
    app.include_router(admin_holdrules.router)
    app.include_router(admin_bounces.router)
    app.include_router(admin_suppressions.router)
    app.include_router(admin_dkim.router)

    @app.exception_handler(admin.AdminError)
    async def _admin_error(request: Request, err: admin.AdminError) -> JSONResponse:
        return admin.error_response(err)

    @app.exception_handler(NotConnected)
    async def _not_connected(request: Request, err: NotConnected) -> JSONResponse:
        return JSONResponse({"Code": err.code, "Message": err.message}, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        # Unknown routes (404), wrong methods (405) and the like, in the API's error shape.
        code = _HTTP_CODES.get(err.status_code, "badRequest" if err.status_code < 500 else "server")
        return JSONResponse(
            {"Code": code, "Message": str(err.detail)}, status_code=err.status_code, headers=err.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _json_error(400, "badRequest", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _database_down(request: Request, err: Exception) -> JSONResponse:
        log.warning("%s %s: postgresql unreachable: %s", request.method, request.url.path, type(err).__name__)
        return _json_error(503, "unavailable", "postgresql is unreachable; try again")

    @app.exception_handler(RPCError)
    async def _temporal_error(request: Request, err: RPCError) -> JSONResponse:
        if err.status not in _TEMPORAL_DOWN:
            raise err
        log.warning("%s %s: temporal unreachable: %s", request.method, request.url.path, err.status)
        return _json_error(503, "unavailable", "temporal is unreachable; try again")

    app.add_middleware(_StrictQueryString)

    openapi.install(app)

    @app.get(
        "/healthz",
        tags=["process"],
        response_class=PlainTextResponse,
        responses={
            200: {"description": "The process is alive.", "content": {"text/plain": {"example": "ok"}}}
        },
    )
    async def healthz() -> Response:
        return PlainTextResponse("ok")

    @app.get(
        "/readyz",
        tags=["process"],
        response_model=Ready,
        responses={503: {"model": Ready, "description": "Not ready: Problems names what is missing."}},
    )
    async def readyz() -> Response:
        """200 once Send would be accepted: PostgreSQL answers and Temporal's frontend is serving."""
        problems = []
        if state.connected_pool is None:
            problems.append("postgresql: not reachable yet")
        else:
            try:
                async with asyncio.timeout(3):
                    async with state.connected_pool.connection() as conn:
                        await conn.execute("SELECT 1 FROM submissions LIMIT 1")
            except Exception as err:  # noqa: BLE001
                problems.append(f"postgresql: {type(err).__name__}")
        if state.connected_client is None:
            problems.append("temporal: not reachable yet")
        else:
            try:
                async with asyncio.timeout(3):
                    await state.connected_client.service_client.check_health()
            except Exception as err:  # noqa: BLE001
                problems.append(f"temporal: {type(err).__name__}")
        if problems:
            return JSONResponse({"Ready": False, "Problems": problems}, status_code=503)
        return JSONResponse({"Ready": True})

    @app.get(
        "/metrics",
        tags=["process"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text format.",
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics() -> Response:
        if state.connected_pool is not None:
            try:
                await queue_metrics.refresh(state.connected_pool)
            except Exception:  # noqa: BLE001 - the process metrics still answer while PostgreSQL is away
                log.warning("refreshing queue gauges", exc_info=True)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
