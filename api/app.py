"""The HTTP API process: webapi, admin API, health and metrics on one ASGI app."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from temporalio.client import Client

from api import (
    admin,
    admin_bounces,
    admin_bulk,
    admin_holdrules,
    admin_hooks,
    admin_suppressions,
    webapi,
)
from api import metrics as queue_metrics
from api.auth import Authenticator
from api.state import AppState, NotConnected
from domain.config import Config
from store.db import Pool

log = logging.getLogger("tempost.api")


def create_app(config: Config, client: Client | None = None, pool: Pool | None = None) -> FastAPI:
    """An API app; a missing client or pool is handed over later, once reachable (`AppState`)."""
    app = FastAPI(title="Tempost", version="0.1.0")
    state = AppState(config, Authenticator(config), client, pool)
    app.state.tempost = state
    app.include_router(webapi.router)
    app.include_router(admin_bulk.router)
    app.include_router(admin.router)
    app.include_router(admin_hooks.router)
    app.include_router(admin_holdrules.router)
    app.include_router(admin_bounces.router)
    app.include_router(admin_suppressions.router)

    @app.exception_handler(admin.AdminError)
    async def _admin_error(request: Request, err: admin.AdminError) -> JSONResponse:
        return admin.error_response(err)

    @app.exception_handler(NotConnected)
    async def _not_connected(request: Request, err: NotConnected) -> JSONResponse:
        return JSONResponse({"Code": err.code, "Message": err.message}, status_code=err.status)

    @app.exception_handler(psycopg.OperationalError)
    async def _postgres_unreachable(request: Request, err: psycopg.OperationalError) -> JSONResponse:
        # A connection that failed or none to be had in time: PostgreSQL is away, the caller retries.
        log.warning("%s %s: PostgreSQL unreachable: %s", request.method, request.url.path, type(err).__name__)
        message = "PostgreSQL is not reachable; try again later"
        return JSONResponse({"Code": "unavailable", "Message": message}, status_code=503)

    @app.get("/healthz")
    async def healthz() -> Response:
        return PlainTextResponse("ok")

    @app.get("/readyz")
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

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.connected_pool is not None:
            try:
                await queue_metrics.refresh(state.connected_pool)
            except Exception:  # noqa: BLE001 - the process metrics still answer while PostgreSQL is away
                log.warning("refreshing queue gauges", exc_info=True)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
