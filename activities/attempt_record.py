"""Recording a delivery attempt: the journal of accepted DATA, then its whole outcome in one transaction.

The deliver activity (activities/delivery.py) leases the domain, sends, and plans each message's fate
(domain/attempt.py). This module writes it: DSNs are composed first (pure), then one PostgreSQL
transaction remembers the dialed IPs, retires the delivered messages with their webhook rows, records the
deferred results and their `delayed` webhooks, adds automatic suppressions, stores and queues the failure
and delayed DSNs, retires the failed and suppressed messages with their webhook rows, and records every
message's outcome for this attempt number. Only after the commit do the DSN submissions' and webhooks'
workflows start (best effort: the worker's sweeper starts what is left unstarted).

What a retry of the same attempt sees, by where the earlier try died (DESIGN §5):
- before the next hop's 250 for DATA: nothing journaled or recorded; it sends again, and nobody got a copy
  (a reply lost in flight after the 250 is SMTP's own window, which no client can close);
- after the 250, before the journal: the same; the journal write is retried for up to RETRY_FOR (never past
  half the attempt's remaining time) so a PostgreSQL blip does not widen this window. If it still fails,
  the acceptance lives on in memory and the outcome transaction is its record, retried the same way;
- after the journal, before the outcome commit (or the transaction failed, rolling all of it back):
  journaled messages are delivered without sending; the others had no copy accepted and are attempted
  again, their earlier replies never recorded;
- after the outcome commit, before the workflow heard: every message of the attempt has its recorded
  outcome; the retry returns those and sends nothing. DSNs and webhooks were queued in the commit, so the
  sweeper starts any the dead try did not. Only the mail-log lines of that try can be missing.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import psycopg
from temporalio import activity

from activities.suppressing import REFUSED as SUPPRESSION_REFUSED
from activities.suppressing import suppress_after_failure
from activities.webhooks import WebhookQueue
from domain.addresses import envelope_path
from domain.attempt import AttemptPlan, RcptReply
from domain.backoff import backoff
from domain.config import Config
from domain.contracts import AttemptMsg, RetireEvent
from domain.dkim import Keyring, SigningError
from domain.dkim import sign as dkim_sign
from domain.dsn import DSNError, DSNInput, DSNKind, compose_dsn, header_section, message_id_of
from domain.holdrules import holds_new
from domain.webhooks import Event, Outgoing
from store import attempts, dsns, holdrules, hooks
from store import queue as q
from store.db import Conn, Pool

T = TypeVar("T")

# How long a write whose failure would mean a duplicate copy is retried before the activity gives up.
RETRY_FOR = timedelta(seconds=45)
_FIRST_PAUSE = 0.25
_LONGEST_PAUSE = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


def _retry_deadline() -> float:
    """The monotonic time until which a write is retried: RETRY_FOR, at most half the attempt's time left."""
    budget = RETRY_FOR.total_seconds()
    info = activity.info()
    if info.start_to_close_timeout:
        left = (info.started_time + info.start_to_close_timeout - _now()).total_seconds()
        budget = min(budget, left / 2)
    return time.monotonic() + max(budget, 0.0)


async def retrying(what: str, op: Callable[[], Awaitable[T]]) -> T:
    """Run a database write, retrying it with backoff on database errors until the retry deadline.

    Each retry is logged. The activity keeps heartbeating meanwhile (activities/heartbeat.py), so Temporal
    does not take the attempt for lost.
    """
    deadline = _retry_deadline()
    pause = _FIRST_PAUSE
    tries = 1
    while True:
        try:
            return await op()
        except psycopg.Error as err:
            if time.monotonic() + pause > deadline:
                raise
            activity.logger.warning("%s failed (try %d), retrying in %.2f s: %s", what, tries, pause, err)
        await asyncio.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE)
        tries += 1


def _is_dsn(r: q.Row) -> bool:
    """A message with the null reverse path is a DSN of ours: the application hears of the original only."""
    return not r["sender_localpart"] and not r["sender_domain"]


@dataclass(frozen=True)
class Fate:
    """What an event about one message reports: the reply, the error, a new suppression."""

    code: int = 0
    secode: str = ""
    error: str = ""
    suppressing: bool = False


@dataclass(frozen=True)
class _Report:
    """A DSN composed before the transaction that stores and queues it."""

    row: q.Row
    kind: DSNKind
    data: bytes
    sender_path: str
    # DKIM-Signature fields of the host's domain, sent before the DSN.
    prefix: bytes = b""


@dataclass
class _Written:
    """What the transaction queued that needs a workflow started after the commit."""

    hooks: list[hooks.Queued | None]
    dsn_submissions: list[int]


class OutcomeRecorder:
    """Writes delivery outcomes to PostgreSQL and starts the workflows they queue, after the commit."""

    def __init__(
        self,
        pool: Pool,
        config: Config,
        webhooks: WebhookQueue,
        start_submission: Callable[[int], Awaitable[None]] | None,
        dkim: Keyring,
    ) -> None:
        self._pool = pool
        # DSNs come from postmaster@<hostname>: signed by the hostname's domain (or its parent's) keys.
        self._dsn_signers = dkim.signers(config.hostname)
        self._config = config
        self._webhooks = webhooks
        # Given by the worker, which owns the Temporal client; without it the sweeper starts DSNs.
        self._start_submission = start_submission

    async def journal(self, ids: Sequence[int], reply: str) -> bool:
        """Journal that the next hop accepted DATA for these messages; False when PostgreSQL never took it.

        A failure here is a duplicate copy if the activity is retried, so the write is retried first.
        """
        try:
            await retrying(
                "journaling accepted DATA", lambda: q.record_accepted(self._pool, ids, reply, _now())
            )
            return True
        except psycopg.Error:
            activity.logger.exception(
                "journal of accepted DATA for messages %s failed; the outcome transaction must record it",
                list(ids),
            )
            return False

    async def record_attempt(
        self,
        rows: Mapping[int, q.Row],
        msgs: Mapping[int, AttemptMsg],
        plan: AttemptPlan,
        body: bytes | None,
        now: datetime,
        *,
        dialed: tuple[list[int], dict[str, list[str]]] | None,
        holds_unjournaled: bool,
    ) -> None:
        """Record everything the attempt's plan decides in one transaction, then start what it queued.

        holds_unjournaled says the transaction is the only record of an accepted DATA (its journal write
        failed): it is then retried like the journal, since failing would mean sending again.
        """
        reports = [
            *self._compose(rows, plan.suppressed, DSNKind.FAILED, body, now),
            *self._compose(rows, plan.failed, DSNKind.FAILED, body, now),
            *self._compose(
                rows, {i: plan.deferred[i] for i in plan.delayed_dsn}, DSNKind.DELAYED, body, now, msgs
            ),
        ]

        async def write() -> _Written:
            async with self._pool.connection() as conn, conn.transaction():
                return await self._write_attempt(conn, rows, msgs, plan, reports, now, dialed)

        if holds_unjournaled:
            written = await retrying("recording an attempt with unjournaled accepted DATA", write)
        else:
            written = await write()
        SUPPRESSION_REFUSED.inc(len(plan.suppressed))
        await self._started(written)

    async def _write_attempt(
        self,
        conn: Conn,
        rows: Mapping[int, q.Row],
        msgs: Mapping[int, AttemptMsg],
        plan: AttemptPlan,
        reports: list[_Report],
        now: datetime,
        dialed: tuple[list[int], dict[str, list[str]]] | None,
    ) -> _Written:
        """The attempt's outcome transaction, in the order the rules need (see the module docstring)."""
        out = _Written([], [])
        if dialed is not None:
            # First, so the retired rows keep them too.
            await q.record_dialed(conn, *dialed)
        if plan.delivered:
            # The delivered event carries the next hop's reply code (spec 03 §3.3 notes mox sends 0).
            out.hooks += await self._retire(
                conn,
                {i: _entry(now, rep) for i, rep in plan.delivered.items()},
                RetireEvent.DELIVERED,
                {i: Fate(rep.code, rep.secode) for i, rep in plan.delivered.items()},
                now,
            )
        if plan.suppressed:
            suppressed_reports = [r for r in reports if r.row["id"] in plan.suppressed]
            out.dsn_submissions += await self._store_dsns(conn, suppressed_reports, now)
            out.hooks += await self._retire(
                conn,
                {i: _entry(now, rep) for i, rep in plan.suppressed.items()},
                RetireEvent.SUPPRESSED,
                {i: Fate(error=rep.error) for i, rep in plan.suppressed.items()},
                now,
            )
        if plan.deferred:
            await q.record_results(conn, {i: _entry(now, rep) for i, rep in plan.deferred.items()})
            deferred_rows = [rows[i] for i in plan.deferred]
            out.hooks += await self._delayed_events(conn, deferred_rows, plan.deferred, now)
        if plan.failed:
            # Suppression additions are decided before retiring (the history rule must not see the
            # message itself).
            suppressing = await self._auto_suppress(conn, [rows[i] for i in plan.failed], plan.failed)
            failed_reports = [r for r in reports if r.kind == DSNKind.FAILED and r.row["id"] in plan.failed]
            out.dsn_submissions += await self._store_dsns(conn, failed_reports, now)
            out.hooks += await self._retire(
                conn,
                {i: _entry(now, rep) for i, rep in plan.failed.items()},
                RetireEvent.FAILED,
                {
                    i: Fate(rep.code, rep.secode, rep.error, i in suppressing)
                    for i, rep in plan.failed.items()
                },
                now,
            )
        if plan.delayed_dsn:
            out.dsn_submissions += await self._store_dsns(
                conn, [r for r in reports if r.kind == DSNKind.DELAYED], now
            )
        await attempts.record(
            conn, {i: (msgs[i].attempt, o.model_dump(mode="json")) for i, o in plan.outcomes.items()}, now
        )
        return out

    async def retire(
        self,
        entries: Mapping[int, dict | None],
        event: RetireEvent,
        fates: Mapping[int, Fate],
        now: datetime,
        *,
        failure_dsns: Mapping[int, RcptReply] | None = None,
        rows: Mapping[int, q.Row] | None = None,
        body: bytes | None = None,
    ) -> list[q.Row]:
        """Retire messages the workflow ended itself, with their webhook rows and failure DSNs (for the
        messages in failure_dsns, about the given rows), in one transaction; returns the rows retired."""
        reports = self._compose(rows or {}, failure_dsns or {}, DSNKind.FAILED, body, now)
        async with self._pool.connection() as conn, conn.transaction():
            written = _Written([], await self._store_dsns(conn, reports, now))
            retired: list[q.Row] = []
            written.hooks += await self._retire(conn, entries, event, fates, now, retired)
        await self._started(written)
        return retired

    async def _started(self, written: _Written) -> None:
        """After the commit: start the workflows of the DSNs and webhooks it queued."""
        if self._start_submission is not None:
            for base_id in written.dsn_submissions:
                try:
                    await self._start_submission(base_id)
                except Exception:  # noqa: BLE001 - the sweeper starts it later; the DSN is queued
                    activity.logger.exception("starting DSN delivery %d", base_id)
        await self._webhooks.started(written.hooks)

    async def _retire(
        self,
        conn: Conn,
        entries: Mapping[int, dict | None],
        event: RetireEvent,
        fates: Mapping[int, Fate],
        now: datetime,
        retired: list[q.Row] | None = None,
    ) -> list[hooks.Queued | None]:
        """Retire messages and queue their webhook events in the caller's transaction."""
        queued: list[hooks.Queued | None] = []

        async def on_retired(conn: Conn, rows: list[q.Row]) -> None:
            for r in rows:
                if _is_dsn(r):
                    continue
                fate = fates.get(r["id"], Fate())
                out = _outgoing(r, Event(event.value), fate, now)
                queued.append(await self._webhooks.queue(conn, r["sender_account"], out))

        rows = await q.retire_rows(conn, entries, event.value, self._keep(), now, on_retired=on_retired)
        if retired is not None:
            retired += rows
        return queued

    def _keep(self) -> dict[str, timedelta]:
        return {a.name: a.keep_retired_period for a in self._config.accounts}

    async def _delayed_events(
        self, conn: Conn, rows: list[q.Row], replies: Mapping[int, RcptReply], now: datetime
    ) -> list[hooks.Queued | None]:
        """Queue a `delayed` event for every temporary failure that is not final (spec 03 §3.2)."""
        if not rows or not self._webhooks.wants(rows[0]["sender_account"], Event.DELAYED):
            return []
        queued = []
        for r in rows:
            if _is_dsn(r):
                continue
            rep = replies[r["id"]]
            out = _outgoing(r, Event.DELAYED, Fate(rep.code, rep.secode, rep.error), now)
            queued.append(await self._webhooks.queue(conn, r["sender_account"], out))
        return queued

    async def _auto_suppress(
        self, conn: Conn, rows: list[q.Row], replies: Mapping[int, RcptReply]
    ) -> set[int]:
        """Add failed recipients to the suppression list by spec 03 §2.3 (only failures with an SMTP code).

        Returns the messages whose failure created a new entry (their `failed` event is "suppressing").
        """
        added: set[int] = set()
        for r in rows:
            rep = replies[r["id"]]
            if await suppress_after_failure(
                conn,
                account=r["sender_account"],
                recipient=f"{r['recipient_localpart']}@{r['recipient_domain']}",
                history_address=q.recipient_address(r),
                code=rep.code,
                secode=rep.secode,
                permanent=rep.permanent,
                msg_id=r["id"],
                source="queue",
            ):
                added.add(r["id"])
        return added

    def _compose(
        self,
        rows: Mapping[int, q.Row],
        replies: Mapping[int, RcptReply],
        kind: DSNKind,
        body: bytes | None,
        now: datetime,
        msgs: Mapping[int, AttemptMsg] | None = None,
    ) -> list[_Report]:
        """Compose one DSN per message to its sender (spec 03 §1, DESIGN §7), before any transaction."""
        if body is None or not replies:
            return []
        try:
            headers = header_section(body)
        except DSNError:
            activity.logger.warning("no DSN: original message has no header section")
            return []
        reports = []
        for i, rep in replies.items():
            r = rows[i]
            response = [rep.error[4:]] if rep.code and rep.error[:3].isdigit() else []
            sender_path = envelope_path(r["sender_localpart"], r["sender_domain"])
            inp = DSNInput(
                kind=kind,
                hostname=self._config.hostname,
                sender_path=sender_path,
                recipient=envelope_path(r["recipient_localpart"], r["recipient_domain"]),
                recipient_unicode=q.recipient_address(r),
                message_id=r["message_id"],
                queued=r["queued"],
                last_attempt=now,
                error=rep.error or "delivery failed",
                secode=rep.secode,
                smtp_response=response,
                original_headers=headers,
                smtputf8=r["smtputf8"],
                future_release_request=r["future_release_request"],
                next_attempts=self._upcoming(msgs[i]) if msgs is not None and kind == DSNKind.DELAYED else [],
            )
            try:
                data = compose_dsn(inp, now=now, random_token=lambda: secrets.token_urlsafe(16))
            except DSNError as err:
                activity.logger.warning("no DSN for message %d: %s", i, err)
                continue
            try:
                prefix = dkim_sign(data, self._dsn_signers)
            except SigningError as err:
                # Unsigned is better than no DSN at all: the sender still learns its mail failed.
                activity.logger.error("DSN for message %d left unsigned: %s", i, err)
                prefix = b""
            reports.append(_Report(r, kind, data, sender_path, prefix))
        return reports

    def _upcoming(self, m: AttemptMsg) -> list[datetime]:
        """When the remaining attempts are due, without jitter (for the delayed DSN's text)."""
        times = [m.next_attempt]
        for n in range(m.attempt, self._config.queue.max_attempts - 1):
            times.append(times[-1] + backoff(n, self._config.queue.backoff_base, 0))
        return times

    async def _store_dsns(self, conn: Conn, reports: list[_Report], now: datetime) -> list[int]:
        """Store and queue composed DSNs in the caller's transaction; the BaseIDs of the new submissions."""
        if not reports:
            return []
        rules = await holdrules.list_rules(conn)
        started = []
        for rep in reports:
            r = rep.row
            delivery = None
            # Hold rules apply to DSNs as to any message queued (spec 01 §4.2).
            hold = any(holds_new(rule, r["sender_account"], "", r["sender_domain_str"]) for rule in rules)
            if rep.sender_path:
                # A DSN about a DSN (null sender) is stored but never sent (RFC 3461 §6.2).
                delivery = q.NewMsg(
                    sender_localpart="",
                    sender_domain="",
                    sender_domain_str="",
                    recipient_localpart=r["sender_localpart"],
                    recipient_domain=r["sender_domain"],
                    recipient_domain_str=r["sender_domain_str"],
                    next_attempt=now,
                    size=len(rep.data),
                    message_id=message_id_of(rep.data),
                    subject=f"mail delivery {rep.kind.value}",
                    has8bit=not rep.data.isascii(),
                    smtputf8=r["smtputf8"],
                    hold=hold,
                )
            base_id = await dsns.store_and_queue(
                conn,
                account=r["sender_account"],
                msg_id=r["id"],
                kind=rep.kind.value,
                sender=rep.sender_path,
                recipient=q.recipient_address(r),
                data=rep.data,
                prefix=rep.prefix,
                now=now,
                delivery=delivery,
            )
            if base_id is not None:
                started.append(base_id)
        return started


def _entry(now: datetime, rep: RcptReply) -> dict:
    """The attempt's result entry for one message."""
    return q.outcome_entry(now, success=rep.success, code=rep.code, secode=rep.secode, error=rep.error)


def _outgoing(r: q.Row, event: Event, fate: Fate, now: datetime) -> Outgoing:
    return Outgoing(
        event=event,
        queue_msg_id=r["id"],
        from_id=r["from_id"],
        message_id=r["message_id"],
        subject=r["subject"],
        queued=now,
        suppressing=fate.suppressing,
        smtp_code=fate.code,
        secode=fate.secode,
        error=fate.error,
        extra=r["extra"] or {},
    )
