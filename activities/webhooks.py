"""Outgoing webhooks: queueing events for an account's URL, and the activity that makes one HTTP call."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx
from prometheus_client import Counter, Histogram
from temporalio import activity

from domain.config import Config
from domain.contracts import ACTIVITY_CALL_WEBHOOK, HookAttemptResult, HookState
from domain.webhooks import (
    IN_PROGRESS,
    RESPONSE_KEEP,
    SUCCESS_STATUS,
    Event,
    Outgoing,
    failure_text,
    is_final,
    retry_delay,
    subscribed,
)
from store import hooks
from store.db import Conn, Pool

REQUEST_DURATION = Histogram(
    "tempost_webhook_request_duration_seconds",
    "Duration of each webhook HTTP call.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 20, 30),
)
RESULTS = Counter(
    "tempost_webhook_results_total",
    "Webhook call outcomes by HTTP status (Nxx for nonstandard statuses, error for transport errors).",
    ["code"],
)
QUEUED = Counter("tempost_webhook_queued_total", "Webhooks queued, by event.", ["event"])
SUPERSEDED = Counter("tempost_webhook_superseded_total", "Pending webhooks replaced by a newer event.")


try:
    _VERSION = version("tempost")
except PackageNotFoundError:  # running from a source tree without installation
    _VERSION = "dev"
USER_AGENT = f"tempost/{_VERSION} (webhook)"


def _now() -> datetime:
    return datetime.now(UTC)


def status_label(status: int) -> str:
    """The `code` label of a reply: the status itself when it is a standard one, else its class."""
    try:
        HTTPStatus(status)
    except ValueError:
        return f"{status // 100}xx"
    return str(status)


@dataclass(frozen=True)
class HookControl:
    """How queued hooks reach their workflows; given by the worker, which owns the Temporal client."""

    start: Callable[[int, str], Awaitable[None]]  # hook id, summary
    stop: Callable[[int], Awaitable[None]]


class WebhookQueue:
    """Queues outgoing events for accounts that subscribed to them, then starts their workflows."""

    def __init__(self, pool: Pool, config: Config, control: HookControl | None) -> None:
        self._pool = pool
        self._config = config
        self._control = control

    def keep(self, account: str) -> timedelta:
        """How long the account keeps retired hooks."""
        return self._config.retired_webhook_keep(account)

    def wants(self, account: str, event: Event) -> bool:
        """Whether the account has a webhook subscribed to the event."""
        acc = self._config.account(account)
        return bool(acc and acc.outgoing_webhook and subscribed(acc.outgoing_webhook.events, event))

    async def queue(
        self, conn: Conn, account: str, out: Outgoing, *, incoming_msg_id: str = ""
    ) -> hooks.Queued | None:
        """Insert the event's hook in the caller's transaction; None when the account does not want it."""
        hook = hooks.event_hook(self._config, account, out, incoming_msg_id=incoming_msg_id)
        if hook is None:
            return None
        queued = await hooks.insert(conn, hook, out.queued, self.keep(account))
        QUEUED.labels(out.event.value).inc()
        return queued

    async def started(self, queued: Sequence[hooks.Queued | None]) -> None:
        """After commit: start the new hooks' workflows and stop the ones they superseded.

        Failures are logged, not raised: the worker's sweeper starts unstarted hooks, and a superseded
        workflow finds its row gone at its next call.
        """
        if self._control is None:
            return
        for q in queued:
            if q is None:
                continue
            if q.superseded:
                SUPERSEDED.inc()
                try:
                    await self._control.stop(q.superseded)
                except Exception:  # noqa: BLE001 - see docstring
                    activity.logger.warning("stopping superseded hook %d", q.superseded, exc_info=True)
            try:
                await self._control.start(q.id, f"hook {q.id}")
            except Exception:  # noqa: BLE001 - see docstring
                activity.logger.warning("starting hook %d", q.id, exc_info=True)


class WebhookActivities:
    """The HTTP side of webhooks, bound to one PostgreSQL pool and configuration."""

    def __init__(self, pool: Pool, config: Config, queue: WebhookQueue) -> None:
        self._pool = pool
        self._config = config
        self._queue = queue
        self._http: httpx.AsyncClient | None = None

    def all(self) -> list:
        """The activity callables to register on a worker."""
        return [self.call_webhook]

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # Few idle connections kept briefly: hooks to one URL are serial anyway (spec 03 §3.5).
            self._http = httpx.AsyncClient(
                timeout=self._config.webhooks.timeout.total_seconds(),
                follow_redirects=True,
                limits=httpx.Limits(max_keepalive_connections=2, keepalive_expiry=5),
            )
        return self._http

    @activity.defn(name=ACTIVITY_CALL_WEBHOOK)
    async def call_webhook(self, hook_id: int) -> HookAttemptResult:
        """Make one call of a hook and record it; retire the hook on success or its last failure."""
        row = await hooks.get(self._pool, hook_id)
        if row is None:
            return HookAttemptResult(state=HookState.GONE)
        cfg = self._config.webhooks
        now = _now()
        url = row["url"]
        ttl = cfg.timeout + timedelta(seconds=30)
        if not await hooks.acquire_lease(self._pool, url, hook_id, now, cfg.max_concurrent, ttl):
            return HookAttemptResult(state=HookState.BUSY, attempts=row["attempts"])
        try:
            jitter = random.uniform(-0.01, 0.0099)
            next_attempt = now + retry_delay(row["attempts"], cfg.first_retry, jitter)
            placeholder = hooks.result_entry(
                now, now, url=row["url"], success=False, code=0, error=IN_PROGRESS, response=""
            )
            row = await hooks.begin_attempt(self._pool, hook_id, next_attempt, placeholder)
            if row is None:
                return HookAttemptResult(state=HookState.GONE)
            attempt = row["attempts"]
            start = _now()
            code, error, response = await self._post(row, attempt)
            end = _now()
            success = code == SUCCESS_STATUS
            result = hooks.result_entry(
                start, end, url=row["url"], success=success, code=code, error=error, response=response
            )
            state = await hooks.finish_attempt(
                self._pool,
                hook_id,
                result,
                final=is_final(attempt, success),
                keep=self._queue.keep(row["account"]),
                now=end,
            )
        finally:
            await hooks.release_lease(self._pool, url, hook_id)
        if state == "gone":
            return HookAttemptResult(state=HookState.GONE, attempts=attempt, code=code)
        if state == "retired":
            return HookAttemptResult(state=HookState.DONE, attempts=attempt, code=code)
        return HookAttemptResult(
            state=HookState.RETRY, attempts=attempt, code=code, next_attempt=next_attempt
        )

    async def _post(self, row: dict[str, Any], attempt: int) -> tuple[int, str, str]:
        """POST the payload; (HTTP status or 0, error text, start of the response body)."""
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json; charset=utf-8",
            "X-Mox-Webhook-ID": str(row["id"]),
            "X-Mox-Webhook-Attempt": str(attempt),
        }
        if row["auth_header"]:
            headers["Authorization"] = row["auth_header"]
        t0 = time.monotonic()
        try:
            async with self._client().stream(
                "POST", row["url"], content=row["payload"].encode(), headers=headers
            ) as resp:
                body = b""
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) >= RESPONSE_KEEP:
                        break
                text = body[:RESPONSE_KEEP].decode(errors="replace")
                RESULTS.labels(status_label(resp.status_code)).inc()
                if resp.status_code == SUCCESS_STATUS:
                    return resp.status_code, "", text
                return resp.status_code, failure_text(resp.status_code, resp.reason_phrase), text
        except httpx.HTTPError as err:
            RESULTS.labels("error").inc()
            return 0, f"http transact: {err or type(err).__name__}", ""
        finally:
            REQUEST_DURATION.observe(time.monotonic() - t0)
