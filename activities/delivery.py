"""Activities of the Delivery workflow: one delivery attempt, retirement and state projection."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio import activity

from activities.direct import DirectTransport
from activities.dns import Resolver
from activities.heartbeat import heartbeating
from activities.maillog import log_attempt
from activities.mtasts import MTASTSLookup
from activities.suppressing import REFUSED as SUPPRESSION_REFUSED
from activities.suppressing import suppress_after_failure
from activities.transports import (
    Envelope,
    FailingTransport,
    LocalserveTransport,
    RcptReply,
    SMTPRelayTransport,
    Transport,
)
from activities.webhooks import WebhookQueue
from domain.addresses import AddressError, envelope_path, parse_address
from domain.backoff import DELAYED_DSN_ATTEMPT, backoff
from domain.config import DIRECT, LOCALSERVE, Config, FailTransport, SocksTransport
from domain.config import SMTPTransport as SMTPTransportConfig
from domain.contracts import (
    ACTIVITY_DELIVER,
    ACTIVITY_PROJECT,
    ACTIVITY_RETIRE,
    AttemptMsg,
    AttemptRequest,
    AttemptResult,
    Outcome,
    ProjectRequest,
    RecipientOutcome,
    RetireEvent,
    RetireRequest,
)
from domain.dsn import DSNError, DSNInput, DSNKind, compose_dsn, header_section, message_id_of
from domain.holdrules import holds_new
from domain.routes import select_transport
from domain.suppression import (
    SUPPRESSED_ERROR,
    base_address,
)
from domain.tlsrpt import TLSResult
from domain.webhooks import Event, Outgoing
from store import dsns, holdrules, leases, suppressions, tlsresults
from store import queue as q
from store.db import Conn, Pool

# A third of the Delivery workflow's heartbeat timeout: two beats may be late before Temporal gives up.
HEARTBEAT_EVERY = timedelta(seconds=20)


def _now() -> datetime:
    return datetime.now(UTC)


def _reply_secode(reply: str) -> str:
    """The enhanced code of a reply line like "250 2.0.0 Ok", without its class digit."""
    parts = reply.split()
    if len(parts) > 1 and parts[1][:2] in ("2.", "4.", "5.") and parts[1].count(".") == 2:
        return parts[1][2:]
    return ""


def _is_dsn(r: q.Row) -> bool:
    """A message with the null reverse path is a DSN of ours: the application hears of the original only."""
    return not r["sender_localpart"] and not r["sender_domain"]


@dataclass(frozen=True)
class _Fate:
    """What an event about one message reports: the reply, the error, a new suppression."""

    code: int = 0
    secode: str = ""
    error: str = ""
    suppressing: bool = False


class DeliveryActivities:
    """Side effects of delivery, bound to one PostgreSQL pool and configuration."""

    def __init__(
        self,
        pool: Pool,
        config: Config,
        start_submission: Callable[[int], Awaitable[None]] | None = None,
        webhooks: WebhookQueue | None = None,
        wake: Callable[[str, list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._webhooks = webhooks or WebhookQueue(pool, config, None)
        # Signals a workflow waiting for a delivery lease; given by the worker, which owns the client.
        self._wake = wake
        # Starts the delivery of a submission queued here (a DSN); given by the worker, which owns the
        # Temporal client. Without it the worker's sweeper starts the submission a little later.
        self._start_submission = start_submission
        self._pool = pool
        self._config = config
        resolver = Resolver(config.direct.resolvers)
        mtasts = MTASTSLookup(
            resolver, pool, https_port=config.direct.mtasts_port, ca_file=config.direct.ca_file
        )
        self._transports: dict[str, Transport] = {
            LOCALSERVE: LocalserveTransport(),
            DIRECT: DirectTransport(
                config.direct, config.hostname, resolver, mtasts, tls_store=self._store_tls
            ),
        }
        for name, t in config.transports.items():
            if isinstance(t, SMTPTransportConfig):
                self._transports[name] = SMTPRelayTransport(t, config.hostname, name)
            elif isinstance(t, FailTransport):
                self._transports[name] = FailingTransport(t)
            elif isinstance(t, SocksTransport):
                self._transports[name] = DirectTransport(
                    config.direct,
                    t.remote_hostname,
                    resolver,
                    mtasts,
                    name=name,
                    socks=t.address,
                    tls_store=self._store_tls,
                )
            else:
                self._transports[name] = DirectTransport(
                    config.direct,
                    config.hostname,
                    resolver,
                    mtasts,
                    ipv4=not t.disable_ipv4,
                    ipv6=not t.disable_ipv6,
                    name=name,
                    tls_store=self._store_tls,
                )

    async def _store_tls(self, recipient_domain: str, results: list[TLSResult]) -> None:
        # Reports go out for every attempt's results: Tempost sends no DMARC or TLS reports itself.
        await tlsresults.record(self._pool, recipient_domain, results, _now(), send_report=True)

    def _keep(self) -> dict[str, timedelta]:
        return {a.name: a.keep_retired_period for a in self._config.accounts}

    def all(self) -> list:
        """The activity callables to register on a worker."""
        return [self.deliver_attempt, self.retire_messages, self.project_state]

    @activity.defn(name=ACTIVITY_DELIVER)
    async def deliver_attempt(self, req: AttemptRequest) -> AttemptResult:
        """Deliver one recipient group in one SMTP transaction and record each recipient's outcome.

        The domain's delivery lease comes first (spec 01 §3: one delivery per recipient domain, a global cap,
        across every worker). Without it nothing is counted and the group comes back BUSY.
        """
        info = activity.info()
        # Stable across retries of this attempt, so a retry after a crash takes over its own lease.
        workflow_id = info.workflow_id or ""
        holder = f"{workflow_id}/{info.activity_id}"
        q_cfg = self._config.queue
        per_minute = q_cfg.attempts_per_minute(req.domain)
        grant = await leases.acquire(
            self._pool,
            req.domain,
            holder,
            workflow_id,
            _now(),
            cap=q_cfg.max_concurrent_deliveries,
            ttl=q_cfg.attempt_timeout + timedelta(seconds=60),
            per_domain=q_cfg.concurrency(req.domain),
            min_interval=timedelta(minutes=1) / per_minute if per_minute > 0 else timedelta(0),
            keep_global_wait=req.others_waiting,
        )
        if not grant.granted:
            return AttemptResult(
                outcomes=[
                    RecipientOutcome(
                        msg_id=m.id,
                        outcome=Outcome.BUSY,
                        retry_at=grant.retry_at,
                        busy_global=grant.global_cap,
                    )
                    for m in req.msgs
                ]
            )
        try:
            async with heartbeating(HEARTBEAT_EVERY):
                return await self._deliver_leased(req)
        finally:
            woken = await leases.release(self._pool, req.domain, holder, _now())
            if self._wake is not None:
                for workflow_id, freed in woken.items():
                    try:
                        await self._wake(workflow_id, freed)
                    except Exception:  # noqa: BLE001 - a waiter not woken retries on its own timer
                        activity.logger.warning("waking %s", workflow_id, exc_info=True)

    async def _deliver_leased(self, req: AttemptRequest) -> AttemptResult:
        now = _now()
        plan = {m.id: m for m in req.msgs}
        rows, body = await q.begin_attempt(
            self._pool, {m.id: (m.attempt, m.next_attempt) for m in req.msgs}, now
        )
        by_id = {r["id"]: r for r in rows}
        outcomes: dict[int, RecipientOutcome] = {
            i: RecipientOutcome(msg_id=i, outcome=Outcome.GONE) for i in plan if i not in by_id
        }
        # The journal first: a recipient whose DATA was accepted by an earlier try of this activity is
        # delivered, whatever happened after.
        journaled = [r for r in rows if r["accepted_at"] is not None]
        pending = [r for r in rows if r["accepted_at"] is None]
        if journaled:
            await self._retire_delivered(
                journaled, {r["id"]: (250, _reply_secode(r["accepted_reply"] or "")) for r in journaled}
            )
            for r in journaled:
                outcomes[r["id"]] = RecipientOutcome(msg_id=r["id"], outcome=Outcome.DELIVERED, code=250)
        if pending:
            # Every recipient is checked, not only the first of the batch (spec 03 §2.5 rewrite).
            suppressed = await self._suppressed(pending)
            if suppressed:
                end = _now()
                entries = {
                    i: q.outcome_entry(end, success=False, code=0, secode="", error=err)
                    for i, err in suppressed.items()
                }
                gone = [r for r in pending if r["id"] in suppressed]
                errors = {i: RcptReply(False, True, 0, "", err) for i, err in suppressed.items()}
                await self._notify(gone, DSNKind.FAILED, errors, body, end)
                SUPPRESSION_REFUSED.inc(len(suppressed))
                fates = {i: _Fate(error=err) for i, err in suppressed.items()}
                await self._retire(entries, RetireEvent.SUPPRESSED, fates, end)
                for i, err in suppressed.items():
                    outcomes[i] = RecipientOutcome(msg_id=i, outcome=Outcome.FAILED, error=err)
                pending = [r for r in pending if r["id"] not in suppressed]
        relays: dict[int, str] = {}
        if pending and body is not None:
            replies = await self._send(pending, body, max(m.attempt for m in req.msgs))
            relays = {r["id"]: rep.relay for r, rep in zip(pending, replies, strict=True) if rep.relay}
            delivered = {
                r["id"]: (rep.code, rep.secode)
                for r, rep in zip(pending, replies, strict=True)
                if rep.success
            }
            if delivered:
                await self._retire_delivered([r for r in pending if r["id"] in delivered], delivered)
            failed: dict[int, dict] = {}
            deferred: dict[int, dict] = {}
            replies_by_id = {r["id"]: rep for r, rep in zip(pending, replies, strict=True)}
            end = _now()
            for r, rep in zip(pending, replies, strict=True):
                if rep.success:
                    outcomes[r["id"]] = RecipientOutcome(
                        msg_id=r["id"], outcome=Outcome.DELIVERED, code=rep.code
                    )
                    continue
                entry = q.outcome_entry(end, success=False, code=rep.code, secode=rep.secode, error=rep.error)
                final = rep.permanent or plan[r["id"]].final
                (failed if final else deferred)[r["id"]] = entry
                outcomes[r["id"]] = RecipientOutcome(
                    msg_id=r["id"],
                    outcome=Outcome.FAILED if final else Outcome.DEFERRED,
                    code=rep.code,
                    secode=rep.secode,
                    error=rep.error[:1000],
                )
            if deferred:
                await q.record_results(self._pool, deferred)
                await self._delayed([r for r in pending if r["id"] in deferred], replies_by_id, end)
            if failed:
                # Suppression additions are decided before retiring (the history rule must not see
                # the message itself). Hook point: failure DSNs join here.
                failed_rows = [r for r in pending if r["id"] in failed]
                suppressing = await self._auto_suppress(failed_rows, replies_by_id)
                await self._notify(failed_rows, DSNKind.FAILED, replies_by_id, body, end)
                fates = {
                    i: _Fate(rep.code, rep.secode, rep.error, i in suppressing)
                    for i, rep in replies_by_id.items()
                    if i in failed
                }
                await self._retire(failed, RetireEvent.FAILED, fates, end)
            late = [
                r for r in pending if r["id"] in deferred and plan[r["id"]].attempt == DELAYED_DSN_ATTEMPT
            ]
            if late:
                # The delayed DSN goes out after the fifth failed attempt (spec 03 §1.1).
                await self._notify(late, DSNKind.DELAYED, replies_by_id, body, end, plan)
        log_attempt(by_id, plan, outcomes, relays, now, _now())
        return AttemptResult(outcomes=[outcomes[i] for i in plan])

    async def _notify(
        self,
        rows: list[q.Row],
        kind: DSNKind,
        replies: dict[int, RcptReply],
        body: bytes | None,
        now: datetime,
        plan: dict[int, AttemptMsg] | None = None,
    ) -> None:
        """Compose, store and queue one DSN per message to its sender (spec 03 §1, DESIGN §7)."""
        if body is None:
            return
        try:
            headers = header_section(body)
        except DSNError:
            activity.logger.warning("no DSN: original message has no header section")
            return
        started: list[int] = []
        async with self._pool.connection() as conn, conn.transaction():
            rules = await holdrules.list_rules(conn)
            for r in rows:
                rep = replies[r["id"]]
                secode = rep.secode
                response = [rep.error[4:]] if rep.code and rep.error[:3].isdigit() else []
                sender_path = envelope_path(r["sender_localpart"], r["sender_domain"])
                rcpt = q.recipient_address(r)
                upcoming: list[datetime] = []
                if plan is not None and kind == DSNKind.DELAYED:
                    upcoming = self._upcoming(plan[r["id"]])
                inp = DSNInput(
                    kind=kind,
                    hostname=self._config.hostname,
                    sender_path=sender_path,
                    recipient=envelope_path(r["recipient_localpart"], r["recipient_domain"]),
                    recipient_unicode=rcpt,
                    message_id=r["message_id"],
                    queued=r["queued"],
                    last_attempt=now,
                    error=rep.error or "delivery failed",
                    secode=secode,
                    smtp_response=response,
                    original_headers=headers,
                    smtputf8=r["smtputf8"],
                    future_release_request=r["future_release_request"],
                    next_attempts=upcoming,
                )
                try:
                    data = compose_dsn(inp, now=now, random_token=lambda: secrets.token_urlsafe(16))
                except DSNError as err:
                    activity.logger.warning("no DSN for message %d: %s", r["id"], err)
                    continue
                delivery = None
                if sender_path:
                    # A DSN about a DSN (null sender) is stored but never sent (RFC 3461 §6.2).
                    delivery = q.NewMsg(
                        sender_localpart="",
                        sender_domain="",
                        sender_domain_str="",
                        recipient_localpart=r["sender_localpart"],
                        recipient_domain=r["sender_domain"],
                        recipient_domain_str=r["sender_domain_str"],
                        next_attempt=now,
                        size=len(data),
                        message_id=message_id_of(data),
                        subject=f"mail delivery {kind.value}",
                        has8bit=not data.isascii(),
                        smtputf8=r["smtputf8"],
                        # Hold rules apply to DSNs as to any message queued (spec 01 §4.2).
                        hold=any(
                            holds_new(rule, r["sender_account"], "", r["sender_domain_str"]) for rule in rules
                        ),
                    )
                base_id = await dsns.store_and_queue(
                    conn,
                    account=r["sender_account"],
                    msg_id=r["id"],
                    kind=kind.value,
                    sender=sender_path,
                    recipient=rcpt,
                    data=data,
                    now=now,
                    delivery=delivery,
                )
                if base_id is not None:
                    started.append(base_id)
        if self._start_submission is not None:
            for base_id in started:
                try:
                    await self._start_submission(base_id)
                except Exception:  # noqa: BLE001 - the sweeper starts it later; the DSN is queued
                    activity.logger.exception("starting DSN delivery %d", base_id)

    def _upcoming(self, m: AttemptMsg) -> list[datetime]:
        """When the remaining attempts are due, without jitter (for the delayed DSN's text)."""
        times = [m.next_attempt]
        for n in range(m.attempt, self._config.queue.max_attempts - 1):
            times.append(times[-1] + backoff(n, self._config.queue.backoff_base, 0))
        return times

    async def _suppressed(self, rows: list[q.Row]) -> dict[int, str]:
        """Recipients on their sender account's suppression list, with the error text to record."""
        bases: dict[int, str] = {}
        for r in rows:
            try:
                addr = parse_address(f"{r['recipient_localpart']}@{r['recipient_domain']}")
            except AddressError:
                continue
            bases[r["id"]] = base_address(addr)
        listed = await suppressions.listed(self._pool, rows[0]["sender_account"], list(bases.values()))
        return {
            r["id"]: SUPPRESSED_ERROR.format(addr=q.recipient_address(r))
            for r in rows
            if bases.get(r["id"]) in listed
        }

    async def _auto_suppress(self, rows: list[q.Row], replies: dict[int, RcptReply]) -> set[int]:
        """Add failed recipients to the suppression list by spec 03 §2.3 (only failures with an SMTP code).

        Returns the messages whose failure created a new entry (their `failed` event is "suppressing").
        """
        added: set[int] = set()
        async with self._pool.connection() as conn, conn.transaction():
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

    async def _send(self, rows: list[q.Row], body: bytes, attempt: int) -> list[RcptReply]:
        first = rows[0]
        name = select_transport(
            self._config,
            explicit=first["transport"],
            account=first["sender_account"],
            sender_domain=first["sender_domain"],
            recipient_domain=first["recipient_domain"],
            attempts_before=attempt - 1,
        )
        transport = self._transports.get(name)
        if transport is None:
            # An explicit transport that does not exist is a temporary failure (spec 01 §7.5), so an
            # admin can fix the configuration or the message's transport before attempts run out.
            return [RcptReply(False, False, 0, "", f'cannot find transport "{name}"')] * len(rows)
        env = Envelope(
            mail_from=envelope_path(first["sender_localpart"], first["sender_domain"]),
            recipients=[envelope_path(r["recipient_localpart"], r["recipient_domain"]) for r in rows],
            data=body,
            has8bit=first["has8bit"],
            smtputf8=any(r["smtputf8"] for r in rows),
            domain=first["recipient_domain"],
            attempt=attempt,
            require_tls=first["require_tls"],
            dialed={k: list(v) for k, v in (first["dialed_ips"] or {}).items()},
        )

        async def on_accepted(indices: list[int], reply: str) -> None:
            await q.record_accepted(self._pool, [rows[i]["id"] for i in indices], reply, _now())

        try:
            return await transport.deliver(env, on_accepted)
        finally:
            if env.dialed != (first["dialed_ips"] or {}):
                await q.record_dialed(self._pool, [r["id"] for r in rows], env.dialed)

    async def _retire_delivered(self, rows: list[q.Row], replies: dict[int, tuple[int, str]]) -> None:
        end = _now()
        entries = {
            r["id"]: q.outcome_entry(
                end, success=True, code=replies[r["id"]][0], secode=replies[r["id"]][1], error=""
            )
            for r in rows
        }
        # The delivered event carries the next hop's reply code (spec 03 §3.3 notes mox sends 0).
        fates = {i: _Fate(code, secode) for i, (code, secode) in replies.items()}
        await self._retire(entries, RetireEvent.DELIVERED, fates, end)

    async def _retire(
        self,
        entries: Mapping[int, dict | None],
        event: RetireEvent,
        fates: Mapping[int, _Fate],
        now: datetime,
    ) -> list[q.Row]:
        """Retire messages and queue their webhook events in the same transaction."""
        queued: list = []

        async def on_retired(conn: Conn, rows: list[q.Row]) -> None:
            for r in rows:
                if _is_dsn(r):
                    continue
                fate = fates.get(r["id"], _Fate())
                out = self._outgoing(r, Event(event.value), fate, now)
                queued.append(await self._webhooks.queue(conn, r["sender_account"], out))

        rows = await q.retire(self._pool, entries, event.value, self._keep(), now, on_retired=on_retired)
        await self._webhooks.started(queued)
        return rows

    async def _delayed(self, rows: list[q.Row], replies: Mapping[int, RcptReply], now: datetime) -> None:
        """Queue a `delayed` event for every temporary failure that is not final (spec 03 §3.2)."""
        if not rows or not self._webhooks.wants(rows[0]["sender_account"], Event.DELAYED):
            return
        queued = []
        async with self._pool.connection() as conn, conn.transaction():
            for r in rows:
                if _is_dsn(r):
                    continue
                rep = replies[r["id"]]
                out = self._outgoing(r, Event.DELAYED, _Fate(rep.code, rep.secode, rep.error), now)
                queued.append(await self._webhooks.queue(conn, r["sender_account"], out))
        await self._webhooks.started(queued)

    @staticmethod
    def _outgoing(r: q.Row, event: Event, fate: _Fate, now: datetime) -> Outgoing:
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

    @activity.defn(name=ACTIVITY_RETIRE)
    async def retire_messages(self, req: RetireRequest) -> int:
        """Retire messages the workflow ended itself (admin fail/drop, an attempt that could not run)."""
        now = _now()
        entry = q.result_entry(now, now, code=req.code, secode=req.secode, error=req.error)
        entries = {i: (entry if req.append_result else None) for i in req.msg_ids}
        if req.event == RetireEvent.FAILED:
            # Admin fail and lost attempts send a failure DSN; drop (canceled) sends none (spec 03 §1.1).
            rows = [r for i in req.msg_ids if (r := await q.get_msg(self._pool, i)) is not None]
            if rows:
                body = await q.raw_message(self._pool, rows[0]["id"])
                errors = {r["id"]: RcptReply(False, True, req.code, req.secode, req.error) for r in rows}
                await self._notify(rows, DSNKind.FAILED, errors, body, now)
        fates = {i: _Fate(req.code, req.secode, req.error) for i in req.msg_ids}
        rows = await self._retire(entries, req.event, fates, now)
        return len(rows)

    @activity.defn(name=ACTIVITY_PROJECT)
    async def project_state(self, req: ProjectRequest) -> None:
        """Write hold and next-attempt changes into the queue rows the admin API lists."""
        if req.states:
            await q.project_versioned(
                self._pool, [(s.id, s.hold, s.next_attempt, s.version) for s in req.states]
            )
        if req.msg_ids:
            await q.project(self._pool, req.msg_ids, req.hold, req.next_attempt)
