"""The Webhook workflow: one per hook, owning the timers of mox's retry schedule (spec 03 §3.6).

The hook row in PostgreSQL holds the payload and the attempt history; this workflow only decides when the
next call happens. Admin operations change the row first and then signal the workflow, so the row stays
the truth for listings and the signal only wakes the timer.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from domain.contracts import (
        ACTIVITY_CALL_WEBHOOK,
        WORKFLOW_WEBHOOK,
        HookAttemptResult,
        HookInput,
        HookState,
    )

# Activity retries cover infrastructure trouble (PostgreSQL down, worker lost); HTTP outcomes come back as
# data and follow the hook schedule instead.
_INFRA_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
# Longest wait between polls for a busy URL slot.
_BUSY_WAIT_MAX = timedelta(seconds=30)


@workflow.defn(name=WORKFLOW_WEBHOOK)
class Webhook:
    """Calls one webhook until it succeeds, fails for the last time or leaves the queue."""

    @workflow.init
    def __init__(self, inp: HookInput) -> None:
        self._next: datetime = inp.next_attempt or workflow.now()
        self._stopped = False
        self._changes = 0

    @workflow.run
    async def run(self, inp: HookInput) -> HookAttemptResult:
        busy = timedelta(seconds=inp.busy_wait_s)
        wait = busy
        while True:
            await self._wait_until_due()
            if self._stopped:
                return HookAttemptResult(state=HookState.GONE)
            result = await workflow.execute_activity(
                ACTIVITY_CALL_WEBHOOK,
                inp.hook_id,
                result_type=HookAttemptResult,
                # The HTTP exchange has its own limit; this bounds a worker that hangs.
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=_INFRA_RETRY,
                summary=f"call hook {inp.hook_id}",
            )
            if result.state in (HookState.DONE, HookState.GONE):
                return result
            if result.state == HookState.BUSY:
                # Spread the pollers of a busy URL so they do not wake together.
                factor = 1 + workflow.random().random()
                self._next = workflow.now() + wait * factor
                wait = min(wait * 2, _BUSY_WAIT_MAX)
                continue
            wait = busy
            workflow.set_current_details(
                f"attempt {result.attempts} failed (HTTP {result.code or 'error'}); "
                f"next at {result.next_attempt.isoformat(timespec='seconds') if result.next_attempt else '?'}"
            )
            self._next = result.next_attempt or workflow.now()

    async def _wait_until_due(self) -> None:
        while not self._stopped:
            now = workflow.now()
            if self._next <= now:
                return
            seen = self._changes
            try:
                await workflow.wait_condition(
                    lambda seen=seen: self._changes != seen,  # type: ignore[misc]
                    timeout=self._next - now,
                    timeout_summary=f"next call at {self._next.isoformat(timespec='seconds')}",
                )
            except TimeoutError:
                return

    @workflow.signal
    def reschedule(self, next_attempt: datetime) -> None:
        """An admin moved the next call (the row already says so)."""
        self._next = next_attempt
        self._changes += 1

    @workflow.signal
    def stop(self) -> None:
        """The hook left the queue: superseded or canceled (the row is already gone)."""
        self._stopped = True
        self._changes += 1
