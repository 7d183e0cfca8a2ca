"""Activities of the Delivery workflow: one delivery attempt, retirement and state projection."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.attempt_record import Fate, OutcomeRecorder
from activities.conncache import ConnectionCache
from activities.direct import DirectTransport
from activities.dns import Resolver
from activities.heartbeat import heartbeating
from activities.maillog import log_attempt
from activities.mtasts import MTASTSLookup
from activities.transports import (
    Envelope,
    FailingTransport,
    LocalserveTransport,
    SMTPRelayTransport,
    Transport,
)
from activities.webhooks import WebhookQueue
from domain.addresses import AddressError, envelope_path, parse_address
from domain.attempt import RcptReply, plan_attempt
from domain.config import DIRECT, LOCALSERVE, Config, FailTransport, SocksTransport
from domain.config import SMTPTransport as SMTPTransportConfig
from domain.contracts import (
    ACTIVITY_DELIVER,
    ACTIVITY_PROJECT,
    ACTIVITY_RETIRE,
    WORKER_STOPPED,
    AttemptRequest,
    AttemptResult,
    Outcome,
    ProjectRequest,
    RecipientOutcome,
    RetireEvent,
    RetireRequest,
)
from domain.dkim import Keyring
from domain.routes import select_transport
from domain.suppression import (
    SUPPRESSED_ERROR,
    base_address,
)
from domain.tlsrpt import TLSResult
from store import leases, suppressions, tlsresults
from store import queue as q
from store.db import Pool

# A third of the Delivery workflow's heartbeat timeout: two beats may be late before Temporal gives up.
HEARTBEAT_EVERY = timedelta(seconds=20)
# A first attempt (a local activity) refused the domain's lease waits this long in the worker for a lease
# another attempt of this worker frees, before answering BUSY and waiting for a wake-up signal. A hand-over
# inside the process skips the signal, workflow task and activity start per message that mail to one busy
# domain otherwise costs. Well under the workflow task timeout (10 s), which the wait holds open.
LOCAL_LEASE_WAIT = 3.0
# At most this many first attempts per domain wait in the worker; more would hold local activity slots that
# other domains' first attempts need. Enough to keep the domain's next delivery ready.
LOCAL_WAITERS = 8


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Sent:
    """What the SMTP part of an attempt learned, for the bookkeeping after it."""

    replies: dict[int, RcptReply] = field(default_factory=dict)
    # The server that answered for a recipient, for the mail log.
    relays: dict[int, str] = field(default_factory=dict)
    # (message ids, IPs per host) when direct delivery dialed differently from what the rows remember.
    dialed: tuple[list[int], dict[str, list[str]]] | None = None
    # Messages whose accepted DATA the journal could not record.
    unjournaled: set[int] = field(default_factory=set)


class DeliveryActivities:
    """Side effects of delivery, bound to one PostgreSQL pool and configuration."""

    def __init__(
        self,
        pool: Pool,
        config: Config,
        start_submission: Callable[[int], Awaitable[None]] | None = None,
        webhooks: WebhookQueue | None = None,
        wake: Callable[[str, list[str]], Awaitable[None]] | None = None,
        dkim: Keyring | None = None,
        connections: ConnectionCache | None = None,
    ) -> None:
        # Idle SMTP sessions every SMTP transport of this worker shares; the worker closes it at shutdown.
        self.connections = connections or ConnectionCache.from_config(config.queue)
        self._webhooks = webhooks or WebhookQueue(pool, config, None)
        # Signals a workflow waiting for a delivery lease; given by the worker, which owns the client.
        self._wake = wake
        # start_submission starts the delivery of a submission queued here (a DSN); given by the worker,
        # which owns the Temporal client. Without it the worker's sweeper starts the submission later.
        self._recorder = OutcomeRecorder(pool, config, self._webhooks, start_submission, dkim or Keyring())
        self._pool = pool
        self._config = config
        # Per domain, the first attempts of this worker waiting for its lease, oldest first.
        self._lease_turns: dict[str, deque[tuple[str, asyncio.Future[None]]]] = {}
        resolver = Resolver(config.direct.resolvers)
        mtasts = MTASTSLookup(
            resolver, pool, https_port=config.direct.mtasts_port, ca_file=config.direct.ca_file
        )
        self._transports: dict[str, Transport] = {
            LOCALSERVE: LocalserveTransport(),
            DIRECT: DirectTransport(
                config.direct,
                config.hostname,
                resolver,
                mtasts,
                tls_store=self._store_tls,
                connections=self.connections,
            ),
        }
        for name, t in config.transports.items():
            if isinstance(t, SMTPTransportConfig):
                self._transports[name] = SMTPRelayTransport(
                    t, config.hostname, name, connections=self.connections
                )
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
                    connections=self.connections,
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
                    connections=self.connections,
                )

    async def _store_tls(self, recipient_domain: str, results: list[TLSResult]) -> None:
        # Reports go out for every attempt's results: Tempost sends no DMARC or TLS reports itself.
        await tlsresults.record(self._pool, recipient_domain, results, _now(), send_report=True)

    def all(self) -> list:
        """The activity callables to register on a worker."""
        return [self.deliver_attempt, self.retire_messages, self.project_state]

    @activity.defn(name=ACTIVITY_DELIVER)
    async def deliver_attempt(self, req: AttemptRequest) -> AttemptResult:
        """Deliver one recipient group in one SMTP transaction and record each recipient's outcome.

        The domain's delivery lease comes first (spec 01 §3: one delivery per recipient domain, a global cap,
        across every worker). Without it nothing is counted and the group comes back BUSY.
        """
        if not activity.info().is_local:
            return await self._deliver_attempt(req)
        # Temporal cancels a regular activity when its worker stops, after the grace period, and retries it
        # elsewhere; a local activity it lets run, holding the worker's shutdown for as long as the attempt
        # takes. So a first attempt still running when the grace period is over is abandoned here, and the
        # workflow hands the same attempt to the task queue on WORKER_STOPPED, for another worker. The
        # journal keeps that from sending twice what the next hop already accepted.
        work = asyncio.ensure_future(self._deliver_attempt(req))
        stop = asyncio.ensure_future(self._stopped_for(self._config.worker.shutdown_grace))
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if work.done():
            return work.result()
        work.cancel()
        try:
            await work
        except BaseException:  # noqa: BLE001 - its outcome is the next worker's to find out
            pass
        # Benign: the SDK logs it without a traceback; it is a hand-over, not an error.
        raise ApplicationError(
            "the worker stopped during the attempt",
            type=WORKER_STOPPED,
            non_retryable=True,
            category=ApplicationErrorCategory.BENIGN,
        )

    @staticmethod
    async def _stopped_for(grace: timedelta) -> None:
        await activity.wait_for_worker_shutdown()
        await asyncio.sleep(grace.total_seconds())

    async def _deliver_attempt(self, req: AttemptRequest) -> AttemptResult:
        info = activity.info()
        # Stable across retries of this attempt, so a retry after a crash takes over its own lease.
        workflow_id = info.workflow_id or ""
        holder = f"{workflow_id}/{info.activity_id}"
        grant = await self._acquire(req, holder, workflow_id)
        if grant.granted is False and info.is_local and grant.retry_at is None and not grant.global_cap:
            grant = await self._wait_in_worker(req, holder, workflow_id)
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
        released = False

        async def release() -> None:
            nonlocal released
            if released:
                return
            woken = await leases.release(self._pool, req.domain, holder, _now())
            released = True
            waiting_here = self._pass_turn(req.domain)
            if self._wake is not None:
                for waiter, freed in woken.items():
                    if waiter in waiting_here and freed == [req.domain]:
                        # Its attempt waits in this worker and tries again by itself (_wait_in_worker).
                        continue
                    try:
                        await self._wake(waiter, freed)
                    except Exception:  # noqa: BLE001 - a waiter not woken retries on its own timer
                        activity.logger.warning("waking %s", waiter, exc_info=True)

        async def release_early() -> None:
            # The lease covers the SMTP session only: the bookkeeping after it needs none, and the
            # domain's next delivery (often waiting in this worker) starts meanwhile. A failure here must
            # not lose the attempt's outcome: the release is tried again once the outcome is recorded.
            try:
                await release()
            except Exception:  # noqa: BLE001
                activity.logger.warning("releasing the lease of %s early", req.domain, exc_info=True)

        try:
            async with heartbeating(HEARTBEAT_EVERY):
                return await self._deliver_leased(req, release_early)
        finally:
            await release()

    async def _acquire(self, req: AttemptRequest, holder: str, workflow_id: str) -> leases.Grant:
        q_cfg = self._config.queue
        per_minute = q_cfg.attempts_per_minute(req.domain)
        return await leases.acquire(
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

    async def _wait_in_worker(self, req: AttemptRequest, holder: str, workflow_id: str) -> leases.Grant:
        """Wait (bounded) for an attempt of this worker to free the domain's lease, then ask again.

        Every way out asks PostgreSQL last: a refusal there keeps the caller a registered waiter, so the
        release that skipped signalling it (it was waiting here) is never a lost wake-up.
        """
        turns = self._lease_turns.setdefault(req.domain, deque())
        if len(turns) >= LOCAL_WAITERS:
            return leases.Grant(False)
        deadline = asyncio.get_running_loop().time() + LOCAL_LEASE_WAIT
        while True:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (workflow_id, turn)
            turns.append(entry)
            try:
                left = deadline - asyncio.get_running_loop().time()
                await asyncio.wait_for(asyncio.shield(turn), max(left, 0))
            except TimeoutError:
                pass
            finally:
                if entry in turns:
                    turns.remove(entry)
            grant = await self._acquire(req, holder, workflow_id)
            if grant.granted or not turn.done() or grant.retry_at is not None or grant.global_cap:
                return grant
            if asyncio.get_running_loop().time() >= deadline:
                return grant

    def _pass_turn(self, domain: str) -> set[str]:
        """Wake the oldest attempt of this worker waiting for the domain's lease; returns the workflows whose
        attempts wait here (no signal needed for them)."""
        turns = self._lease_turns.get(domain)
        if not turns:
            return set()
        waiting = {w for w, _ in turns}
        _, first = turns.popleft()
        if not first.done():
            first.set_result(None)
        return waiting

    async def _deliver_leased(
        self, req: AttemptRequest, release: Callable[[], Awaitable[None]]
    ) -> AttemptResult:
        """The attempt under the lease: what is left to send goes out, the lease is given back, then the
        outcome is recorded."""
        started = _now()
        msgs = {m.id: m for m in req.msgs}
        schedule = {m.id: (m.attempt, m.next_attempt) for m in req.msgs}
        begun = await q.begin_attempt(self._pool, schedule, started)
        # An earlier try of this attempt recorded these: they stand, and nothing is sent to them again.
        recorded = {i: RecipientOutcome.model_validate(o) for i, o in begun.recorded.items()}
        rows = {r["id"]: r for r in begun.rows if r["id"] not in recorded}
        # The journal next: a recipient whose DATA was accepted by an earlier try is delivered, whatever
        # happened after.
        journaled = {i: r["accepted_reply"] or "" for i, r in rows.items() if r["accepted_at"] is not None}
        pending = [r for i, r in rows.items() if i not in journaled]
        # Every recipient is checked, not only the first of the batch (spec 03 §2.5 rewrite).
        suppressed = await self._suppressed(pending) if pending else {}
        pending = [r for r in pending if r["id"] not in suppressed]
        sent = _Sent()
        if pending and begun.body is not None:
            sent = await self._send(pending, begun.body, max(m.attempt for m in req.msgs))
        await release()
        plan = plan_attempt(msgs, journaled=journaled, suppressed=suppressed, replies=sent.replies)
        await self._recorder.record_attempt(
            rows,
            msgs,
            plan,
            begun.body,
            _now(),
            dialed=sent.dialed,
            holds_unjournaled=bool(sent.unjournaled),
        )
        log_attempt(rows, msgs, plan.outcomes, sent.relays, started, _now())
        outcomes = {**recorded, **plan.outcomes}
        return AttemptResult(
            outcomes=[outcomes.get(i) or RecipientOutcome(msg_id=i, outcome=Outcome.GONE) for i in msgs]
        )

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

    async def _send(self, rows: list[q.Row], body: bytes, attempt: int) -> _Sent:
        """One SMTP transaction (or as few as the next hop allows) for the rows, journaling accepted DATA."""
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
            refusal = RcptReply(False, False, 0, "", f'cannot find transport "{name}"')
            return _Sent(replies={r["id"]: refusal for r in rows})
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

        sent = _Sent()

        async def on_accepted(indices: list[int], reply: str) -> None:
            ids = [rows[i]["id"] for i in indices]
            if not await self._recorder.journal(ids, reply):
                sent.unjournaled.update(ids)

        replies = await transport.deliver(env, on_accepted)
        sent.replies = {r["id"]: rep for r, rep in zip(rows, replies, strict=True)}
        sent.relays = {r["id"]: rep.relay for r, rep in zip(rows, replies, strict=True) if rep.relay}
        if env.dialed != (first["dialed_ips"] or {}):
            sent.dialed = ([r["id"] for r in rows], env.dialed)
        return sent

    @activity.defn(name=ACTIVITY_RETIRE)
    async def retire_messages(self, req: RetireRequest) -> int:
        """Retire messages the workflow ended itself (admin fail/drop, an attempt that could not run)."""
        now = _now()
        entry = q.result_entry(now, now, code=req.code, secode=req.secode, error=req.error)
        entries = {i: (entry if req.append_result else None) for i in req.msg_ids}
        rows: dict[int, q.Row] = {}
        body = None
        if req.event == RetireEvent.FAILED:
            # Admin fail and lost attempts send a failure DSN; drop (canceled) sends none (spec 03 §1.1).
            rows = {i: r for i in req.msg_ids if (r := await q.get_msg(self._pool, i)) is not None}
            if rows:
                body = await q.raw_message(self._pool, next(iter(rows)))
        failure = RcptReply(False, True, req.code, req.secode, req.error)
        fates = {i: Fate(req.code, req.secode, req.error) for i in req.msg_ids}
        retired = await self._recorder.retire(
            entries, req.event, fates, now, failure_dsns=dict.fromkeys(rows, failure), rows=rows, body=body
        )
        return len(retired)

    @activity.defn(name=ACTIVITY_PROJECT)
    async def project_state(self, req: ProjectRequest) -> None:
        """Write hold and next-attempt changes into the queue rows the admin API lists."""
        if req.states:
            await q.project_versioned(
                self._pool, [(s.id, s.hold, s.next_attempt, s.version) for s in req.states]
            )
        if req.msg_ids:
            await q.project(self._pool, req.msg_ids, req.hold, req.next_attempt)
