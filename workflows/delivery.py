"""The Delivery workflow: one per submission (BaseID), owning attempts, backoff timers and hold state.

The message body never enters this workflow: it works on message ids, and the deliver activity reads the
body from PostgreSQL. Each recipient domain is a group delivered in one SMTP transaction per attempt;
groups run concurrently inside the workflow.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import searchattrs

with workflow.unsafe.imports_passed_through():
    from domain.backoff import DELAYED_DSN_ATTEMPT, JITTER_MAX, JITTER_MIN, backoff
    from domain.contracts import (
        ACTIVITY_DELIVER,
        ACTIVITY_PROJECT,
        ACTIVITY_RETIRE,
        WORKER_STOPPED,
        WORKFLOW_DELIVERY,
        AdminOp,
        AttemptMsg,
        AttemptRequest,
        AttemptResult,
        BulkOp,
        DeliveryInput,
        DeliveryStatus,
        MsgProjection,
        MsgState,
        MsgStatus,
        Outcome,
        ProjectRequest,
        RecipientOutcome,
        RetireEvent,
        RetireRequest,
        SignalTargets,
    )

# Retries of an activity cover infrastructure trouble (PostgreSQL restart, worker crash), not SMTP
# outcomes: those come back as data and the workflow's own backoff handles them.
_INFRA_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
_DELIVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=5
)
_IO_TIMEOUT = timedelta(seconds=60)
_DELIVER_HEARTBEAT = timedelta(seconds=60)
# Longest wait for a busy domain when no wake-up signal comes.
_LEASE_FALLBACK = timedelta(seconds=60)
ADMIN_CANCEL_ERROR = "delivery canceled by admin"
# A timer may fire a hair before the instant the workflow computed; treat that as due.
_DUE_SLACK = timedelta(milliseconds=5)
# Bulk operations remembered, so that one signalled twice is applied once.
_SEEN_OPS = 256
# Most recipients a first attempt carries as a local activity (revision 1). A local activity runs inside the
# workflow task: no activity task round trip, no second and third workflow task on the happy path. Larger
# groups, retries and big submissions keep the regular activity, whose heartbeats suit long sessions.
_LOCAL_BATCH = 50
# Most recipients one attempt carries in a big submission: an attempt's input and result travel through
# history, and an SMTP transaction takes at most this many RCPT TO anyway (mox's limit).
MAX_BATCH = 1000


@dataclass
class _Msg:
    id: int
    domain: str
    attempts: int
    next_attempt: datetime
    hold: bool
    busy: bool = False
    done: MsgState | None = None
    # Waiting for the domain's delivery lease (another delivery runs): woken by the lease_free signal.
    lease_wait: bool = False
    # What it waits for: a slot of the global cap (else the domain's own), and its place in line.
    wait_global: bool = False
    wait_seq: int = 0
    # Refused by a busy lease and waiting to try again (by signal or retry time): a big submission's
    # group keeps its delivery slots meanwhile, so its other groups do not each get refused in turn.
    slot_wait: bool = False


class _Slots:
    """A first-come-first-served counting semaphore for workflow code.

    A freed slot goes straight to the longest waiter, whose future it completes: waiters are not
    conditions the workflow re-checks after every step (thousands of groups wait on these), and the
    order depends only on the workflow's own events, whatever asyncio's Semaphore does in the Python
    version a worker runs.
    """

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        await granted

    def release(self) -> None:
        while self._waiters:
            granted = self._waiters.popleft()
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1


@workflow.defn(name=WORKFLOW_DELIVERY)
class Delivery:
    """Delivers one submission's recipients with mox's retry schedule, steerable by admin updates."""

    @workflow.init
    def __init__(self, inp: DeliveryInput) -> None:
        # State is built from the input here, not in run(): an update (hold, fail, ...) that arrives with
        # the very first workflow task is validated before run() starts and must see the messages.
        self._input: DeliveryInput | None = inp
        first = inp.release_at or workflow.now()
        # A run started again after a lost one resumes each message's attempts and next attempt.
        self._msgs: dict[int, _Msg] = {
            msg_id: _Msg(
                msg_id,
                group.domain,
                inp.prior_attempts.get(msg_id, 0),
                inp.next_attempts.get(msg_id, first),
                inp.hold or msg_id in inp.held_ids,
            )
            for group in inp.groups
            for msg_id in group.msg_ids
        }
        # Bumped whenever an admin operation changes state, so waiting groups re-evaluate.
        self._changes = 0
        # The same per recipient domain: a change wakes only the groups it concerns, so a fan-out's waiting
        # groups do not all restart their timers (two history events each) for every change.
        self._touched: dict[str, int] = {}
        # Whether groups wait on their own domain's changes; decided once, where it first matters.
        self._targeted: bool | None = None
        # Bumped by each lease_free signal (a delivery slot this submission waited for was freed).
        self._lease_frees = 0
        # Orders the groups waiting for a delivery slot, first come first woken.
        self._waits = 0
        # The search attribute values last upserted, to upsert only on change.
        self._published: tuple | None = None
        # Set while handing over to a fresh run: no new attempt starts.
        self._draining = False
        # Big submissions (more groups than may deliver at once, groups sharing a domain, groups larger
        # than one attempt takes) bound the work of each workflow task: at most max_in_flight attempts
        # (and the domain's concurrency) run at once, the others wait on these slots without commands,
        # and search attributes are published once per task instead of by every group. Decided in run().
        self._bounded = False
        self._publish_due = False
        # Orders the projections of hold and next attempt into the queue rows. It follows the clock
        # (microseconds) so a later run of the same submission (continued as new, recovered) never
        # writes an older version than an earlier run did.
        self._version = 0
        self._seen_ops: deque[int] = deque(maxlen=_SEEN_OPS)
        self._slots = _Slots(max(inp.max_in_flight, 1))
        self._domain_slots: dict[str, _Slots] = {}
        if inp.revision >= 1 and not inp.prior_attempts:
            # The starter gave the workflow these attributes (searchattrs.at_start): nothing to upsert
            # until they change.
            self._published = self._attribute_values()

    @workflow.run
    async def run(self, inp: DeliveryInput) -> DeliveryStatus:
        # Released histories ran every group at once and published from every group; a marker is
        # written only for submissions big enough to need the bound, so small ones keep their history.
        self._bounded = _is_big(inp) and workflow.patched("bounded-groups")
        if self._bounded:
            asyncio.create_task(self._publisher())
        delivering = asyncio.gather(*(self._deliver_group(g.domain, g.msg_ids) for g in inp.groups))
        # A submission whose history grows long (a big fan-out deferring to the end) carries on in a fresh
        # run before Temporal's history limit would end it. Released histories have no marker: replaying
        # them keeps waiting for the groups.
        await workflow.wait_condition(
            lambda: delivering.done() or workflow.info().is_continue_as_new_suggested()
        )
        if not delivering.done() and workflow.patched("continue-as-new"):
            self._draining = True
            # Attempts in flight and admin operations finish first: their outcomes belong to this run.
            await workflow.wait_condition(
                lambda: not any(m.busy for m in self._msgs.values()) and workflow.all_handlers_finished()
            )
            if any(m.done is None for m in self._msgs.values()):
                workflow.continue_as_new(self._carried_over(inp))
            # An admin operation retired the last messages meanwhile: nothing to carry, finish here.
            self._draining = False
        await delivering
        self._publish()
        # Let an admin update that retired the last message finish its reply before completing.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    async def _deliver_group(self, domain: str, msg_ids: list[int]) -> None:
        assert self._input is not None
        base = timedelta(seconds=self._input.backoff_base_s)
        # Whether this group holds its delivery slots (bounded submissions only).
        holding = False
        try:
            while True:
                pending = [self._msgs[i] for i in msg_ids if self._msgs[i].done is None]
                if not pending:
                    return
                now = workflow.now()
                due = [
                    m for m in pending if not m.hold and not m.busy and m.next_attempt <= now + _DUE_SLACK
                ]
                if not due:
                    if holding and not any(m.slot_wait and not m.hold for m in pending):
                        holding = self._release_slots(domain)
                    await self._wait_for_due(domain, pending, now)
                    continue
                if self._draining:
                    holding = holding and self._release_slots(domain)
                    # The run is about to continue as new; the next run makes this attempt.
                    await workflow.wait_condition(lambda: not self._draining)
                    continue
                if self._bounded and not holding:
                    # Domain first, then the submission's share of the global cap, always in this order.
                    await self._domain_slot(domain).acquire()
                    await self._slots.acquire()
                    holding = True
                    # Waiting for the slots took time: hold, drop or a drain may have come meanwhile.
                    continue
                if self._bounded:
                    due = due[:MAX_BATCH]
                batch: list[AttemptMsg] = []
                for m in due:
                    jitter = workflow.random().randint(JITTER_MIN, JITTER_MAX)
                    # Like mox, the next attempt time moves forward before the attempt starts, so a crash
                    # mid-attempt cannot cause a tight retry loop.
                    m.next_attempt = now + backoff(m.attempts, base, jitter)
                    m.attempts += 1
                    m.busy = True
                    m.lease_wait = False
                    m.slot_wait = False
                    final = m.attempts >= self._input.max_attempts
                    batch.append(
                        AttemptMsg(id=m.id, attempt=m.attempts, next_attempt=m.next_attempt, final=final)
                    )
                frees = self._lease_frees
                local = self._local_attempt(batch)
                if not local:
                    # A local attempt ends within this workflow task: "delivering" would never be seen.
                    self._publish_soon()
                outcomes = await self._attempt(domain, batch, local)
                if outcomes and all(o.outcome == Outcome.BUSY for o in outcomes):
                    # A wake-up that came while the attempt was out was meant for it: try again at once.
                    woken = self._lease_frees != frees
                    self._lease_busy(
                        due, workflow.now() if woken else outcomes[0].retry_at, outcomes[0].busy_global
                    )
                    continue
                for out in outcomes:
                    self._apply_outcome(out)
                # The group's turn ends with its attempt: the next group of the domain goes first.
                holding = holding and self._release_slots(domain)
        finally:
            if holding:
                self._release_slots(domain)

    def _domain_slot(self, domain: str) -> _Slots:
        assert self._input is not None
        sem = self._domain_slots.get(domain)
        if sem is None:
            sem = _Slots(self._input.domain_concurrency.get(domain, 1))
            self._domain_slots[domain] = sem
        return sem

    def _release_slots(self, domain: str) -> bool:
        """Give back a group's delivery slots; returns False, for the group's `holding`."""
        self._slots.release()
        self._domain_slot(domain).release()
        return False

    def _publish_soon(self) -> None:
        """Publish the search attributes now, or (bounded) once the current workflow task's work is done."""
        if self._bounded:
            self._publish_due = True
        else:
            self._publish()

    async def _publisher(self) -> None:
        # Runs after the other coroutines of a task have settled: one computation and upsert per task.
        while True:
            await workflow.wait_condition(lambda: self._publish_due)
            self._publish_due = False
            self._publish()

    def _carried_over(self, inp: DeliveryInput) -> DeliveryInput:
        """The next run's input: the messages still queued, each with its attempts, next attempt and hold.

        A message waiting for a delivery slot is due at once in the new run: a wake-up signal may arrive
        while the runs change hands.
        """
        now = workflow.now()
        pending = {i: m for i, m in self._msgs.items() if m.done is None}
        groups = [
            g.model_copy(update={"msg_ids": [i for i in g.msg_ids if i in pending]})
            for g in inp.groups
            if any(i in pending for i in g.msg_ids)
        ]
        return inp.model_copy(
            update={
                "groups": groups,
                "release_at": None,
                "hold": False,
                "held_ids": [i for i, m in pending.items() if m.hold],
                "prior_attempts": {i: m.attempts for i, m in pending.items() if m.attempts},
                "next_attempts": {i: now if m.lease_wait else m.next_attempt for i, m in pending.items()},
            }
        )

    def _local_attempt(self, batch: list[AttemptMsg]) -> bool:
        """Whether this attempt runs as a local activity: a small group's first attempt, revision 1 on."""
        assert self._input is not None
        return (
            self._input.revision >= 1
            and len(batch) <= _LOCAL_BATCH
            and all(m.attempt == 1 for m in batch)
        )

    def _attribute_values(self) -> tuple[Any, ...]:
        """The search attribute values the messages' state calls for, in _publish's order."""
        pending = [m for m in self._msgs.values() if m.done is None]
        waiting = [m.next_attempt for m in pending if not m.hold and not m.busy]
        if not pending:
            state = "finished"
        elif any(m.busy for m in pending):
            state = "delivering"
        elif all(m.hold for m in pending):
            state = "held"
        elif any(m.attempts for m in pending):
            state = "deferred"
        else:
            state = "queued"
        values = (
            state,
            sorted({m.domain for m in pending}),
            any(m.hold for m in pending),
            min(waiting) if waiting else None,
            max((m.attempts for m in self._msgs.values()), default=0),
        )
        return values

    def _publish(self) -> None:
        """Upsert the search attributes operators filter on, when they changed (DESIGN §3)."""
        assert self._input is not None
        # Released histories have no upserts: replaying them must not produce any. Revision 1 inputs
        # postdate the marker and need no patch call (which would record one).
        if self._input.revision < 1 and not workflow.patched("search-attributes"):
            return
        values = self._attribute_values()
        state = values[0]
        if values == self._published:
            return
        self._published = values
        next_attempt = values[3]
        updates: list[SearchAttributeUpdate[Any]] = [
            searchattrs.STATE.value_set(state),
            searchattrs.RCPT_DOMAINS.value_set(searchattrs.domains_value(values[1])),
            searchattrs.HELD.value_set(values[2]),
            searchattrs.NEXT_ATTEMPT.value_set(next_attempt)
            if next_attempt is not None
            else searchattrs.NEXT_ATTEMPT.value_unset(),
            searchattrs.ATTEMPTS.value_set(values[4]),
        ]
        known = self._input.search_attributes if self._input is not None else None
        if known is not None:
            # The namespace lacks the others; upserting one would fail every workflow task.
            updates = [u for u in updates if u.key.name in known]
        if updates:
            workflow.upsert_search_attributes(updates)

    def _lease_busy(self, batch: list[_Msg], retry_at: datetime | None, global_cap: bool) -> None:
        """The attempt did not happen (spec 01 §3 concurrency): undo its bookkeeping and wait."""
        now = workflow.now()
        # Woken by signal when the domain frees; the timer only covers a lost wake-up.
        fallback = now + _LEASE_FALLBACK + timedelta(seconds=workflow.random().randint(0, 10))
        self._waits += 1
        for m in batch:
            m.attempts -= 1
            m.busy = False
            m.slot_wait = True
            m.lease_wait = retry_at is None
            m.wait_global = global_cap
            m.wait_seq = self._waits
            m.next_attempt = retry_at or fallback
        self._touch({m.domain for m in batch})

    @workflow.signal
    def lease_free(self, freed: list[str] | None = None) -> None:
        """A delivery slot this submission waits for was freed: the messages waiting for it are due now.

        `freed` names the domains whose own slot freed, and "" a slot of the global cap, which goes to the
        group that has waited longest for one. Waking every waiting group for one free slot would start
        an attempt per group for each slot (a fan-out to many domains made hundreds of refused attempts).
        Signals without `freed` (sent before it existed, and in their recorded histories) wake every
        waiting message.
        """
        now = workflow.now()
        self._lease_frees += 1
        waiting = [m for m in self._msgs.values() if m.lease_wait and m.done is None]
        if freed is None:
            due = waiting
        else:
            due = [m for m in waiting if m.domain in freed]
            queued = [m for m in waiting if m.wait_global and m.domain not in freed]
            if "" in freed and queued:
                first = min(queued, key=lambda m: m.wait_seq)
                due += [m for m in queued if m.domain == first.domain]
        for m in due:
            m.lease_wait = False
            m.next_attempt = now
        self._touch(None if freed is None else {m.domain for m in due})

    def _touch(self, domains: set[str] | list[str] | None) -> None:
        """Note a change for the groups of these domains (None: all), so they re-evaluate."""
        self._changes += 1
        for d in {m.domain for m in self._msgs.values()} if domains is None else domains:
            self._touched[d] = self._touched.get(d, 0) + 1

    def _changed(self, domain: str) -> Callable[[], bool]:
        """A condition that turns true on the next change that concerns the domain's group."""
        if self._targeted is None:
            # Released histories woke every group on any change. Submissions to one domain are the same
            # either way and need no marker.
            self._targeted = len({m.domain for m in self._msgs.values()}) > 1 and workflow.patched(
                "targeted-wakeups"
            )
        if self._targeted:
            seen = self._touched.get(domain, 0)
            return lambda: self._touched.get(domain, 0) != seen
        seen_all = self._changes
        return lambda: self._changes != seen_all

    async def _wait_for_due(self, domain: str, pending: list[_Msg], now: datetime) -> None:
        # Attributes are published only where the workflow blocks, so one workflow task upserts once.
        self._publish_soon()
        changed = self._changed(domain)
        waiting = [m.next_attempt for m in pending if not m.hold and not m.busy]
        if not waiting:
            # Everything held or in flight: only an admin operation or a finishing attempt moves us.
            await workflow.wait_condition(changed)
            return
        until = min(waiting)
        try:
            await workflow.wait_condition(
                changed,
                timeout=max(until - now, timedelta(milliseconds=1)),
                timeout_summary=f"next attempt at {until.isoformat(timespec='seconds')}",
            )
        except TimeoutError:
            pass

    async def _attempt(self, domain: str, batch: list[AttemptMsg], local: bool) -> list[RecipientOutcome]:
        assert self._input is not None
        others = any(
            m.lease_wait and m.wait_global and m.domain != domain and m.done is None
            for m in self._msgs.values()
        )
        req = AttemptRequest(base_id=self._input.base_id, domain=domain, msgs=batch, others_waiting=others)
        n = batch[0].attempt
        summary = f"attempt {n} to {domain} ({len(batch)} rcpt{'s' if len(batch) != 1 else ''})"
        timeout = timedelta(seconds=self._input.attempt_timeout_s)
        try:
            if local:
                # An attempt lost with its worker is retried when the workflow task times out (seconds),
                # by the worker that takes the task over. A session longer than the workflow task timeout
                # is kept alive by the SDK's workflow task heartbeats. The id is stable across replays
                # and unique among the groups: it names the attempt's lease holder.
                result = await workflow.execute_local_activity(
                    ACTIVITY_DELIVER,
                    req,
                    result_type=AttemptResult,
                    start_to_close_timeout=timeout,
                    retry_policy=_DELIVER_RETRY,
                    activity_id=f"first/{domain}/{batch[0].id}",
                    summary=summary,
                )
            else:
                result = await workflow.execute_activity(
                    ACTIVITY_DELIVER,
                    req,
                    result_type=AttemptResult,
                    start_to_close_timeout=timeout,
                    # An attempt lost with its worker is retried after a minute, not after the whole
                    # attempt timeout; the activity heartbeats while it runs.
                    heartbeat_timeout=_DELIVER_HEARTBEAT,
                    retry_policy=_DELIVER_RETRY,
                    summary=summary,
                )
            return result.outcomes
        except Exception as err:  # noqa: BLE001 - any activity failure is a failed attempt, never a stuck one
            if local and _worker_stopped(err):
                # Not an outcome: the same attempt goes to the task queue as a regular activity, for
                # whichever worker polls next (the journal keeps it from repeating an accepted DATA).
                return await self._attempt(domain, batch, local=False)
            return await self._could_not_run(batch, domain, n, err)

    async def _could_not_run(
        self, batch: list[AttemptMsg], domain: str, n: int, err: Exception
    ) -> list[RecipientOutcome]:
        workflow.logger.warning("delivery attempt %d to %s could not run: %s", n, domain, err)
        error = f"delivery attempt could not run: {err}"
        final_ids = [m.id for m in batch if m.final]
        if final_ids:
            await self._retire(final_ids, RetireEvent.FAILED, error)
        return [
            RecipientOutcome(
                msg_id=m.id, outcome=Outcome.FAILED if m.final else Outcome.DEFERRED, error=error
            )
            for m in batch
        ]

    def _apply_outcome(self, out: RecipientOutcome) -> None:
        m = self._msgs[out.msg_id]
        m.busy = False
        self._touch([m.domain])
        if out.outcome in (Outcome.DELIVERED, Outcome.GONE):
            m.done = MsgState.DELIVERED
        elif out.outcome == Outcome.FAILED:
            m.done = MsgState.FAILED
        else:
            workflow.set_current_details(
                f"msg {m.id}: attempt {m.attempts} deferred: {out.code or ''} {out.error}\n\n"
                f"next attempt {m.next_attempt.isoformat(timespec='seconds')}"
            )
            if m.attempts == DELAYED_DSN_ATTEMPT:
                # Hook point: the delayed DSN (spec 03 §1.1) is sent here once DSNs exist.
                pass

    async def _retire(self, msg_ids: list[int], event: RetireEvent, error: str) -> None:
        await workflow.execute_activity(
            ACTIVITY_RETIRE,
            RetireRequest(msg_ids=msg_ids, event=event, error=error),
            start_to_close_timeout=_IO_TIMEOUT,
            retry_policy=_INFRA_RETRY,
            summary=f"retire {len(msg_ids)} as {event.value}",
        )

    async def _project_msgs(self, msgs: list[_Msg]) -> None:
        """Write the messages' hold and next attempt, as they are now, into their queue rows."""
        self._version = max(self._version + 1, int(workflow.now().timestamp() * 1_000_000))
        states = [
            MsgProjection(id=m.id, hold=m.hold, next_attempt=m.next_attempt, version=self._version)
            for m in msgs
            if m.done is None
        ]
        if not states:
            return
        await workflow.execute_activity(
            ACTIVITY_PROJECT,
            ProjectRequest(states=states),
            start_to_close_timeout=_IO_TIMEOUT,
            retry_policy=_INFRA_RETRY,
            summary="update queue row",
        )

    # --- Admin operations on one message: updates, validated before they touch history. ---

    def _pending(self, op: AdminOp) -> _Msg:
        m = self._msgs.get(op.msg_id)
        if m is None:
            raise ValueError(f"message {op.msg_id} is not part of this submission")
        if m.done is not None:
            raise ValueError(f"message {op.msg_id} is no longer queued ({m.done.value})")
        return m

    @workflow.update
    async def hold(self, op: AdminOp) -> MsgStatus:
        m = self._msgs[op.msg_id]
        m.hold = True
        self._touch([m.domain])
        await self._project_msgs([m])
        return self._status_of(m)

    @hold.validator
    def _validate_hold(self, op: AdminOp) -> None:
        self._pending(op)

    @workflow.update
    async def release(self, op: AdminOp) -> MsgStatus:
        m = self._msgs[op.msg_id]
        m.hold = False
        self._touch([m.domain])
        await self._project_msgs([m])
        return self._status_of(m)

    @release.validator
    def _validate_release(self, op: AdminOp) -> None:
        self._pending(op)

    @workflow.update
    async def kick(self, op: AdminOp) -> MsgStatus:
        m = self._msgs[op.msg_id]
        m.next_attempt = workflow.now()
        self._touch([m.domain])
        await self._project_msgs([m])
        return self._status_of(m)

    @kick.validator
    def _validate_kick(self, op: AdminOp) -> None:
        self._pending(op)

    @workflow.update
    async def fail(self, op: AdminOp) -> MsgStatus:
        return await self._cancel(op, MsgState.FAILED, RetireEvent.FAILED)

    @fail.validator
    def _validate_fail(self, op: AdminOp) -> None:
        self._pending(op)

    @workflow.update
    async def drop(self, op: AdminOp) -> MsgStatus:
        return await self._cancel(op, MsgState.CANCELED, RetireEvent.CANCELED)

    @drop.validator
    def _validate_drop(self, op: AdminOp) -> None:
        self._pending(op)

    async def _cancel(self, op: AdminOp, state: MsgState, event: RetireEvent) -> MsgStatus:
        m = self._msgs[op.msg_id]
        # An attempt in flight finishes first: its outcome may already be final (delivered), and the
        # deliver activity owns the row until it returns.
        await workflow.wait_condition(lambda: not m.busy)
        if m.done is None:
            m.done = state
            self._touch([m.domain])
            # Hook point: Fail sends a failure DSN here once DSNs exist (spec 01 §5.4); Drop sends none.
            await self._retire([m.id], event, ADMIN_CANCEL_ERROR)
        return self._status_of(m)

    @workflow.signal
    async def bulk(self, op: BulkOp) -> None:
        """Apply a bulk admin operation to this submission's messages that are still queued.

        The API wrote the rows before signalling; the workflow then writes what it made of them, so the
        rows end at the workflow's state whatever happened in between (a message kicked while its
        attempt ran, an add to a next attempt the row did not know yet).
        """
        if op.op_id:
            if op.op_id in self._seen_ops:
                return
            self._seen_ops.append(op.op_id)
        targets = [self._msgs[i] for i in op.msg_ids if i in self._msgs and self._msgs[i].done is None]
        if not targets:
            return
        if op.op in ("fail", "drop"):
            # As for one message: attempts in flight finish first, then the rest retire together.
            await workflow.wait_condition(lambda: not any(m.busy for m in targets))
            still = [m for m in targets if m.done is None]
            state, event = (
                (MsgState.FAILED, RetireEvent.FAILED)
                if op.op == "fail"
                else (MsgState.CANCELED, RetireEvent.CANCELED)
            )
            for m in still:
                m.done = state
            self._touch({m.domain for m in targets})
            if still:
                await self._retire([m.id for m in still], event, ADMIN_CANCEL_ERROR)
            return
        now = workflow.now()
        for m in targets:
            if op.op in ("hold", "release"):
                m.hold = op.op == "hold"
            elif op.op == "kick":
                m.next_attempt = now
            elif op.op == "set_next" and op.next_attempt is not None:
                m.next_attempt = op.next_attempt
            elif op.op == "add_next":
                m.next_attempt += timedelta(seconds=op.add_s)
        self._touch({m.domain for m in targets})
        # Released histories did not project after a bulk operation.
        if workflow.patched("bulk-projection"):
            await self._project_msgs(targets)

    # --- Signals an admin sends by hand (Temporal UI "Send a Signal", `temporal workflow signal`). They
    # share their names with the one-message updates the admin API uses; Temporal keeps the two apart. The
    # workflow writes the outcome into the queue rows itself, so the admin API, the CLI and the UI agree.

    async def _by_hand(self, op: str, targets: SignalTargets | None) -> None:
        ids = targets.MsgIDs if targets is not None and targets.MsgIDs else list(self._msgs)
        await self.bulk(BulkOp(op=op, msg_ids=ids))

    @workflow.signal(name="hold")
    async def hold_signal(self, targets: SignalTargets | None = None) -> None:
        """Hold the messages (all still queued when none are named): no attempt until released."""
        await self._by_hand("hold", targets)

    @workflow.signal(name="release")
    async def release_signal(self, targets: SignalTargets | None = None) -> None:
        """Release held messages; a message due meanwhile is attempted at once."""
        await self._by_hand("release", targets)

    @workflow.signal(name="kick")
    async def kick_signal(self, targets: SignalTargets | None = None) -> None:
        """Make the messages due now."""
        await self._by_hand("kick", targets)

    @workflow.signal(name="fail")
    async def fail_signal(self, targets: SignalTargets | None = None) -> None:
        """Fail the messages as the admin API's fail does: failure DSN, `failed` webhook, retired."""
        await self._by_hand("fail", targets)

    @workflow.signal(name="drop")
    async def drop_signal(self, targets: SignalTargets | None = None) -> None:
        """Drop the messages: no DSN, `canceled` webhook, retired."""
        await self._by_hand("drop", targets)

    @workflow.query
    def status(self) -> DeliveryStatus:
        assert self._input is not None
        return DeliveryStatus(
            base_id=self._input.base_id, msgs=[self._status_of(m) for m in self._msgs.values()]
        )

    def _status_of(self, m: _Msg) -> MsgStatus:
        if m.done is not None:
            state = m.done
        elif m.busy:
            state = MsgState.DELIVERING
        elif m.hold:
            state = MsgState.HELD
        else:
            state = MsgState.QUEUED
        return MsgStatus(
            id=m.id,
            state=state,
            attempts=m.attempts,
            next_attempt=None if m.done else m.next_attempt,
            hold=m.hold,
        )


def _worker_stopped(err: BaseException | None) -> bool:
    """Whether a local attempt's failure is its worker stopping (WORKER_STOPPED anywhere in the causes)."""
    while err is not None:
        if isinstance(err, ApplicationError) and err.type == WORKER_STOPPED:
            return True
        err = err.cause if isinstance(err, ActivityError | ApplicationError) else err.__cause__
    return False


def _is_big(inp: DeliveryInput) -> bool:
    """Whether a submission needs its attempts bounded: more groups than may deliver at once, groups
    sharing a recipient domain (FromID: one group per recipient), or a group larger than one attempt."""
    if inp.max_in_flight <= 0:
        return False
    domains = [g.domain for g in inp.groups]
    return (
        len(domains) > inp.max_in_flight
        or len(set(domains)) < len(domains)
        or any(len(g.msg_ids) > MAX_BATCH for g in inp.groups)
    )
