"""Small typed records exchanged between the API, the delivery workflow and its activities.

Everything here travels through Temporal history, so it holds ids, addresses and short reply texts only,
never a message body.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

WORKFLOW_DELIVERY = "Delivery"

# Activity names: the workflow refers to activities by name only, so it never imports activity code.
ACTIVITY_DELIVER = "deliver_attempt"
ACTIVITY_RETIRE = "retire_messages"
ACTIVITY_PROJECT = "project_state"


def delivery_workflow_id(base_id: int) -> str:
    """Workflow id of the delivery of one submission (DESIGN §2)."""
    return f"msg-{base_id}"


class RecipientGroup(BaseModel):
    """Messages of one submission to one recipient domain: delivered together in one SMTP transaction."""

    domain: str
    msg_ids: list[int]


class DeliveryInput(BaseModel):
    """Start arguments of the Delivery workflow."""

    base_id: int
    account: str
    groups: list[RecipientGroup]
    # First attempt time for a future release (RFC 4865); None means now.
    release_at: datetime | None = None
    hold: bool = False
    # Messages held from the start by hold rules (per message: rules match by recipient domain).
    held_ids: list[int] = Field(default_factory=list)
    # A submission started again after its workflow was lost (spec: never stuck) resumes each message's
    # schedule from its queue row: attempts already made, and when the next one is due.
    prior_attempts: dict[int, int] = Field(default_factory=dict)
    next_attempts: dict[int, datetime] = Field(default_factory=dict)
    max_attempts: int = 8
    backoff_base_s: float = 450.0
    attempt_timeout_s: float = 600.0
    # Attempts this submission runs at once (the global delivery cap; 0: no bound, as inputs before it),
    # and per recipient domain where the configuration allows more than one. A big submission keeps
    # its other groups waiting inside the workflow instead of sending attempts the leases refuse.
    max_in_flight: int = 0
    domain_concurrency: dict[str, int] = Field(default_factory=dict)
    # Tempost's search attributes the namespace has, when it lacks some (None: it has them all, as inputs
    # before it). Only these are set: an unknown one fails the start or every workflow task, and where the
    # worker may not create them (Temporal Cloud) delivery must go on without UI filters.
    search_attributes: list[str] | None = None
    # The workflow behaviour the starter asked for. Inputs recorded before this field have 0 and replay as
    # they ran; a revision is chosen once, at start, so the choice itself is in history and costs no marker
    # event (a patch marker and the SDK's change-version upsert would add two events to every message).
    revision: int = 0


# The error type of a local delivery attempt abandoned because its worker stopped: not an outcome, the
# workflow sends the same attempt to the task queue as a regular activity.
WORKER_STOPPED = "WorkerStopped"

# Revision 1: a fresh group's first attempt runs as a local activity in the workflow task that scheduled
# it, and search attributes given at start are not upserted again until they change.
DELIVERY_REVISION = 1


class AttemptMsg(BaseModel):
    """One recipient's part in a delivery attempt, as the workflow scheduled it."""

    id: int
    attempt: int
    next_attempt: datetime
    # Whether a temporary failure in this attempt ends delivery (attempts exhausted).
    final: bool


class AttemptRequest(BaseModel):
    """Input of the deliver activity: one SMTP transaction's worth of recipients."""

    base_id: int
    domain: str
    msgs: list[AttemptMsg]
    # Other groups of the submission wait for a slot of the global cap: a grant keeps the submission's
    # place in that line (store.leases).
    others_waiting: bool = False


class Outcome(StrEnum):
    """What became of one recipient after an attempt."""

    DELIVERED = "delivered"
    FAILED = "failed"
    DEFERRED = "deferred"
    # The row was no longer queued (retired by an earlier try of the same activity, or removed).
    GONE = "gone"
    # Not attempted: another delivery to the domain runs, the global cap is reached or the domain's rate
    # limit says wait. Nothing was counted; the workflow waits to be woken or until retry_at.
    BUSY = "busy"


class RecipientOutcome(BaseModel):
    """Result of one recipient in an attempt; the workflow uses it to decide what comes next."""

    msg_id: int
    outcome: Outcome
    code: int = 0
    secode: str = ""
    error: str = ""
    retry_at: datetime | None = None
    # BUSY only: the wait is for a slot of the global cap, not for the domain's own slot.
    busy_global: bool = False


class AttemptResult(BaseModel):
    """Output of the deliver activity."""

    outcomes: list[RecipientOutcome]


class RetireEvent(StrEnum):
    """Why a message left the queue; the names are mox's webhook events (spec 01 §6.1)."""

    DELIVERED = "delivered"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELED = "canceled"


class RetireRequest(BaseModel):
    """Input of the retire activity, used when the workflow itself ends a message (admin, lost attempt)."""

    msg_ids: list[int]
    event: RetireEvent
    error: str
    code: int = 0
    secode: str = ""
    # A result entry is appended to each message's history before it retires.
    append_result: bool = True


class MsgProjection(BaseModel):
    """One message's workflow-owned state as the queue row shows it, with the version that orders it."""

    id: int
    hold: bool
    next_attempt: datetime
    version: int


class ProjectRequest(BaseModel):
    """Input of the project activity: write workflow-owned state into the queryable PostgreSQL rows.

    `states` carry a version each, and a row only takes a newer one than it has: two projections that
    run at once (hold and release in quick succession) cannot leave the row on the older state. The
    unversioned fields are what workflows of earlier releases send.
    """

    msg_ids: list[int] = Field(default_factory=list)
    hold: bool | None = None
    next_attempt: datetime | None = None
    states: list[MsgProjection] = Field(default_factory=list)


class MsgState(StrEnum):
    """State of one message as the MessageStatus API reports it (spec 04 §1)."""

    QUEUED = "queued"
    HELD = "held"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELED = "canceled"


class MsgStatus(BaseModel):
    """Live state of one message, answered by the workflow's status query and admin updates."""

    id: int
    state: MsgState
    attempts: int
    next_attempt: datetime | None
    hold: bool


class DeliveryStatus(BaseModel):
    """Live state of a whole submission."""

    base_id: int
    msgs: list[MsgStatus] = Field(default_factory=list)


class AdminOp(BaseModel):
    """An admin operation on one message of a submission (the argument of the Delivery updates)."""

    msg_id: int


# --- Webhooks (spec 03 §3) ---

WORKFLOW_WEBHOOK = "Webhook"
ACTIVITY_CALL_WEBHOOK = "call_webhook"


def webhook_workflow_id(hook_id: int) -> str:
    """Workflow id of the delivery of one webhook (DESIGN §2)."""
    return f"hook-{hook_id}"


class HookInput(BaseModel):
    """Start arguments of the Webhook workflow: the hook row holds everything else."""

    hook_id: int
    next_attempt: datetime | None = None
    # Waits between tries while the URL's slot or the global cap is taken by other calls.
    busy_wait_s: float = 1.0


class HookState(StrEnum):
    """What became of a hook after one call."""

    # Delivered (HTTP 200) or failed for the last time: retired.
    DONE = "done"
    # Failed; tried again at next_attempt.
    RETRY = "retry"
    # The URL's slot or the global cap was taken: nothing was counted, try again shortly.
    BUSY = "busy"
    # The hook left the queue (superseded by a newer event, canceled by an admin).
    GONE = "gone"


class HookAttemptResult(BaseModel):
    """Output of the call activity."""

    state: HookState
    attempts: int = 0
    code: int = 0
    next_attempt: datetime | None = None


# --- Bounce ingestion (spec 03 §4) ---

WORKFLOW_BOUNCE = "Bounce"
ACTIVITY_INGEST_BOUNCE = "ingest_bounce"


def bounce_workflow_id(bounce_id: int) -> str:
    """Workflow id of the processing of one incoming bounce."""
    return f"bounce-{bounce_id}"


class BounceResult(BaseModel):
    """What an incoming message to a FromID address was taken for."""

    bounce_id: int
    # Whether a retired message with the address's FromID exists.
    matched: bool
    # The outgoing event (failed, delayed, delivered, relayed, expanded, unrecognized); "" when unmatched.
    event: str = ""
    queue_msg_id: int = 0
    from_id: str = ""
    dsn: bool = False
    code: int = 0
    secode: str = ""
    suppressing: bool = False
    detail: str = ""
    # The FromID belongs to a message still queued (a bounce can overtake the retirement of the message it
    # is about): nothing was recorded, the workflow tries again a little later.
    pending: bool = False


class BulkOp(BaseModel):
    """An admin operation over several messages of one submission, sent as a signal (DESIGN §3).

    Signals are accepted even while no worker runs, so a bulk operation over thousands of workflows never
    waits for each one to answer. The queue rows were already written by the API.
    """

    op: str  # hold, release, kick, set_next, add_next, fail, drop
    msg_ids: list[int] = Field(default_factory=list)
    next_attempt: datetime | None = None  # set_next
    add_s: float = 0.0  # add_next
    # The operation's row in pending_signals: a signal sent again (the API died before noting it landed)
    # is applied once. 0: not deduplicated (earlier releases).
    op_id: int = 0


BULK_OPS = ("hold", "release", "kick", "set_next", "add_next", "fail", "drop")


class SignalTargets(BaseModel):
    """Input of the signals an admin sends by hand from the Temporal UI or CLI (`hold`, `release`, `kick`,
    `fail`, `drop`): the messages of the submission to act on; none or empty, every one still queued."""

    MsgIDs: list[int] | None = None


# --- Retention (spec 01 §6.4, spec 03 §3.8) ---

WORKFLOW_RETENTION = "Retention"
ACTIVITY_CLEANUP = "cleanup_retired"


def retention_schedule_id(task_queue: str) -> str:
    """Id of the Temporal schedule that runs the retention cleanup for one task queue."""
    return f"retention-{task_queue}"


class CleanupResult(BaseModel):
    """What one retention run deleted."""

    messages: int = 0
    hooks: int = 0
    bounces: int = 0
    idempotency_keys: int = 0
    attempt_outcomes: int = 0


# --- MTA-STS policy cache refresh (spec 02 §2.3 item 6) ---

WORKFLOW_MTASTS_REFRESH = "MTASTSRefresh"
ACTIVITY_REFRESH_MTASTS = "refresh_mtasts_policies"


def mtasts_refresh_schedule_id(task_queue: str) -> str:
    """Id of the Temporal schedule that refreshes the MTA-STS policy cache for one task queue."""
    return f"mtasts-refresh-{task_queue}"


class MTASTSRefreshResult(BaseModel):
    """What one refresh run of the MTA-STS policy cache did, counted by rows."""

    # Deleted because no lookup used them for 180 days.
    unused_deleted: int = 0
    # Record id unchanged: only valid-until was extended.
    extended: int = 0
    # Policy fetched again and stored (back-off cleared).
    updated: int = 0
    # Mode-none policies whose record is gone.
    deleted: int = 0
    # The fetch failed; the row was kept as it was and the error logged.
    failed: int = 0
    # Left alone: a mode-none row whose record lookup failed, or a row a lookup updated meanwhile.
    skipped: int = 0
