"""Bounce ingestion (spec 03 §4): match an incoming message to the retired message of its FromID, record
it there, add a suppression on a permanent failure, and queue the outgoing event as a webhook."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import activity

from activities.suppressing import suppress_after_failure
from activities.webhooks import WebhookQueue
from domain.config import Config
from domain.contracts import ACTIVITY_INGEST_BOUNCE, BounceResult
from domain.dsn import message_id_of
from domain.dsnparse import classify
from domain.fromid import from_id_of
from domain.webhooks import Event, Outgoing
from store import bounces
from store import queue as q
from store.db import Pool

# The result recorded on the retired message before the bounce is understood (spec 03 §4.3).
INCOMING = "incoming message"
_SUCCESS_ACTIONS = ("delivered", "relayed", "expanded")
# How long a bounce about a still-queued message waits for that message to be retired.
PENDING_FOR = timedelta(hours=48)


class BounceActivities:
    """Side effects of bounce ingestion, bound to one PostgreSQL pool and configuration."""

    def __init__(self, pool: Pool, config: Config, webhooks: WebhookQueue) -> None:
        self._pool = pool
        self._config = config
        self._webhooks = webhooks

    def all(self) -> list:
        """The activity callables to register on a worker."""
        return [self.ingest_bounce]

    @activity.defn(name=ACTIVITY_INGEST_BOUNCE)
    async def ingest_bounce(self, bounce_id: int) -> BounceResult:
        """Match and record one stored bounce; a processed bounce returns what it was taken for."""
        row = await bounces.get(self._pool, bounce_id)
        if row is None:
            return BounceResult(bounce_id=bounce_id, matched=False, detail="no such bounce")
        if row["processed"] is not None:
            return BounceResult(
                bounce_id=bounce_id,
                matched=row["queue_msg_id"] > 0,
                event=row["event"],
                queue_msg_id=row["queue_msg_id"],
                detail=row["detail"],
            )
        local, _, domain = row["rcpt_to"].rpartition("@")
        from_id = from_id_of(local, self._config.separator(domain))
        data = bytes(row["data"])
        now = datetime.now(UTC)
        queued = None
        async with self._pool.connection() as conn, conn.transaction():
            retired = await bounces.retired_by_from_id(conn, from_id) if from_id else None
            fresh = now - row["received"] < PENDING_FOR
            if retired is None and from_id and fresh and await bounces.queued_with_from_id(conn, from_id):
                return BounceResult(
                    bounce_id=bounce_id,
                    from_id=from_id,
                    matched=False,
                    pending=True,
                    detail="message still queued",
                )
            if retired is None:
                # Not about a message we still know: nothing to report (mox delivers it as ordinary mail).
                detail = "no retired message with this fromid" if from_id else "recipient has no fromid"
                await bounces.mark(conn, bounce_id, now, "", 0, detail)
                return BounceResult(bounce_id=bounce_id, matched=False, from_id=from_id, detail=detail)
            c = classify(data)
            result = q.result_entry(
                now,
                now,
                success=c.event in _SUCCESS_ACTIONS,
                code=c.code,
                secode=c.secode,
                error=c.error or INCOMING,
            )
            await bounces.record_on_retired(conn, retired["id"], now, result)
            suppressing = False
            if c.event == "failed":
                suppressing = await suppress_after_failure(
                    conn,
                    account=retired["sender_account"],
                    recipient=retired["recipient_address"],
                    history_address=retired["recipient_address"],
                    code=c.code,
                    secode=c.secode,
                    permanent=c.code >= 500,
                    msg_id=retired["id"],
                    source="DSN",
                )
            out = Outgoing(
                event=Event(c.event),
                queue_msg_id=retired["id"],
                from_id=from_id,
                message_id=retired["message_id"],
                subject=retired["subject"],
                queued=now,
                dsn=c.dsn,
                suppressing=suppressing,
                smtp_code=c.code,
                secode=c.secode,
                extra=retired["extra"] or {},
            )
            queued = await self._webhooks.queue(
                conn, retired["sender_account"], out, incoming_msg_id=message_id_of(data)
            )
            await bounces.mark(conn, bounce_id, now, c.event, retired["id"], c.error)
        await self._webhooks.started([queued])
        return BounceResult(
            bounce_id=bounce_id,
            matched=True,
            event=c.event,
            queue_msg_id=retired["id"],
            from_id=from_id,
            dsn=c.dsn,
            code=c.code,
            secode=c.secode,
            suppressing=suppressing,
            detail=c.error,
        )
