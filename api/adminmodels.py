"""The admin API's request and response shapes (spec 04 §3) as pydantic models, in mox's field names.

Responses are the routes' `response_model`s, so FastAPI validates every answer against them and
/openapi.json describes exactly what is sent; request bodies are validated with them before the handlers
read their fields. Unknown fields are refused on the way out (a new field must be added here) and, as
before, ignored on the way in.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.openapi import query, schema_ref
from domain.contracts import MsgState
from domain.webapimodels import MsgResult, Suppression, Time

# Every error code of the admin API, the unsubscribe links and the app's own answers (unknown routes,
# wrong methods); a unit test checks that the code raises no other.
ERROR_CODES = (
    "badRequest",
    "badFilter",
    "badAddress",
    "badDomain",
    "missingBody",
    "unauthorized",
    "notFound",
    "methodNotAllowed",
    "conflict",
    "duplicate",
    "requestTooLarge",
    "messageTooLarge",
    "tooManyAuthAttempts",
    "rateLimited",
    "unavailable",
)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    model_config = ConfigDict(extra="allow")


class AdminErrorResponse(_Out):
    """An admin API error, with the HTTP status named by the response."""

    Code: Literal[ERROR_CODES]  # type: ignore[valid-type]
    Message: str


schema_ref(AdminErrorResponse)


# --- Queue --------------------------------------------------------------------------------------------


class _MsgCommon(_Out):
    ID: int
    BaseID: int
    Queued: Time
    SenderAccount: str
    SenderLocalpart: str
    SenderDomainStr: str
    FromID: str
    RecipientLocalpart: str
    RecipientDomain: str
    RecipientDomainStr: str
    Attempts: int
    MaxAttempts: int
    DialedIPs: dict[str, Any]
    LastAttempt: Time | None
    Results: list[MsgResult]
    Has8bit: bool
    SMTPUTF8: bool
    IsDMARCReport: bool
    IsTLSReport: bool
    Size: int
    MessageID: str
    Subject: str
    Transport: str
    RequireTLS: bool | None
    FutureReleaseRequest: str
    Extra: dict[str, str]


class Msg(_MsgCommon):
    """A queued message (mox's Msg); `State` is the workflow's live view, when it answered."""

    Hold: bool
    SenderDomain: str
    NextAttempt: Time | None
    State: MsgState | None = None


class MsgRetired(_MsgCommon):
    """A retired message (mox's MsgRetired), kept for its account's keep_retired_period."""

    RecipientAddress: str
    Success: bool
    Event: Literal["delivered", "failed", "suppressed", "canceled"]
    LastActivity: Time
    KeepUntil: Time | None


class MsgRetiredAfterOp(MsgRetired):
    """A message retired by the operation just done, with the workflow's answer."""

    State: MsgState
    Hold: bool


class MsgGoneAfterOp(_Out):
    """A message neither queued nor kept as retired any more after the operation (dropped, not kept)."""

    ID: int
    State: MsgState
    Hold: bool


class Messages(_Out):
    """A page of a listing."""

    Messages: list[Msg]


class RetiredMessages(_Out):
    """A page of the retired listing."""

    Messages: list[MsgRetired]


class Count(_Out):
    """How many records match."""

    Count: int


class Affected(_Out):
    """How many messages (or hooks) the operation reached."""

    Affected: int


_FILTER_VALUE = str | int | bool | list[int] | None


class QueueFilter(_In):
    """Which queued messages an operation applies to; mox's field names, any case; all empty: every one.

    Times conditions are `<` or `>` with a duration or `now` ("<1h", ">now")."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"Account": "alice", "To": "example.com", "Hold": False}]},
    )

    IDs: list[int] | str | None = None
    Account: str | None = None
    From: str | None = None
    To: str | None = None
    Hold: bool | str | None = None
    Submitted: str | None = None
    NextAttempt: str | None = None
    Transport: str | None = None
    Max: int | str | None = None


class QueueSelection(_In):
    """The body of hold, release, kick, fail and drop: the filter."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"Filter": {"IDs": [1, 2]}}]})

    Filter: QueueFilter | None = None


class NextAttemptChange(QueueSelection):
    """The body of nextattempt: `Set` a time, or `Add` a Go duration (may be negative)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"Filter": {}, "Add": "1h30m"}]})

    Set: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    Add: str | None = Field(default=None, examples=["1h30m", "-2h"])


class TransportChange(QueueSelection):
    """The body of transport: a transport name, or "" for routing."""

    Transport: str = ""


class RequireTLSChange(QueueSelection):
    """The body of requiretls: true, false, or null for the default policy."""

    RequireTLS: bool | None = None


QUEUE_FILTER_PARAMS = [
    query("ids", "Comma-separated message ids.", {"type": "string", "examples": ["1,2"]}),
    query("account", "Sending account."),
    query("from", "Substring of the sender address."),
    query("to", "Substring of the recipient address."),
    query("hold", "true or false.", {"type": "string", "examples": ["true", "false"]}),
    query("submitted", "`<` or `>` a duration or now.", {"type": "string", "examples": ["<1h", ">now"]}),
    query("nextattempt", "`<` or `>` a duration or now.", {"type": "string", "examples": ["<1h"]}),
    query("transport", "Transport name."),
    query("max", "At most this many (0: no limit).", {"type": "string", "examples": ["100"]}),
]
SORT_PARAMS = [
    query("asc", "true for ascending order.", {"type": "string", "examples": ["true"]}),
    query("lastid", "Keyset paging: the id of the last row seen.", {"type": "string", "examples": ["12"]}),
    query("last", "Keyset paging: the sort field's value of the last row seen."),
]

# --- Hold rules, suppressions, hooks, DSNs, TLS results, bounces, DKIM ---------------------------------


class HoldRule(_Out):
    """A hold rule (mox's field names); empty fields match anything."""

    ID: int
    Account: str
    SenderDomainStr: str
    RecipientDomainStr: str


class HoldRules(_Out):
    """Every hold rule."""

    HoldRules: list[HoldRule]


class HoldRuleAdded(_Out):
    """The new rule and how many queued messages it held at once."""

    HoldRule: HoldRule
    Affected: int


class NewHoldRule(_In):
    """A hold rule to add; all empty holds everything."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"RecipientDomain": "example.com"}]}
    )

    Account: str | None = None
    SenderDomain: str | None = None
    RecipientDomain: str | None = None


class SuppressionsPage(_Out):
    """Suppression entries."""

    Suppressions: list[Suppression]


class Present(_Out):
    """Whether the address is on the account's list."""

    Present: bool


class NewSuppression(_In):
    """A suppression entry to add to an account's list."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"Account": "alice", "EmailAddress": "bob@example.com", "Reason": "asked"}]
        },
    )

    Account: str
    EmailAddress: str
    Manual: bool = True
    Reason: str = ""


class _HookCommon(_Out):
    ID: int
    QueueMsgID: int
    FromID: str
    MessageID: str
    Subject: str
    Extra: dict[str, str]
    Account: str
    URL: str
    Authorization: bool
    IsIncoming: bool
    OutgoingEvent: str
    Payload: str
    Submitted: Time | None
    Attempts: int
    Results: list[dict[str, Any]]


class Hook(_HookCommon):
    """A pending webhook."""

    NextAttempt: Time | None


class HookRetired(_HookCommon):
    """A delivered, failed, superseded or canceled webhook."""

    SupersededByID: int
    Success: bool
    LastActivity: Time | None
    KeepUntil: Time | None


class Hooks(_Out):
    """Pending webhooks."""

    Hooks: list[Hook]


class RetiredHooks(_Out):
    """Retired webhooks."""

    Hooks: list[HookRetired]


class HookSelection(_In):
    """The body of a hook operation: mox's hook filter (IDs, Account, Event, Submitted, NextAttempt,
    LastActivity, Max), any case."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"Filter": {"Account": "alice"}}]}
    )

    Filter: dict[str, Any] | None = None


class HookNextAttemptChange(HookSelection):
    """Set (`Set`: time) or shift (`Add`: duration) the next attempt of matching hooks."""

    Set: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    Add: str | None = None


HOOK_FILTER_PARAMS = [
    query("ids", "Comma-separated hook ids."),
    query("account", "Account."),
    query("event", "Outgoing event."),
    query("submitted", "`<` or `>` a duration or now."),
    query("nextattempt", "`<` or `>` a duration or now."),
    query("lastactivity", "`<` or `>` a duration or now."),
    query("max", "At most this many."),
    query("sort", "nextattempt or submitted (retired: lastactivity or submitted)."),
    *SORT_PARAMS,
]


class DSNRecord(_Out):
    """A DSN composed about an outgoing message; DeliveryBaseID is null when it was not sent."""

    ID: int
    Created: Time
    Account: str
    QueueMsgID: int
    Kind: str
    Sender: str
    Recipient: str
    DeliveryBaseID: int | None


class DSNs(_Out):
    """DSNs, newest first."""

    DSNs: list[DSNRecord]


class TLSResult(_Out):
    """TLS results of direct delivery for one policy domain, day and recipient domain (spec 02 §6)."""

    PolicyDomain: str
    DayUTC: str
    RecipientDomain: str
    IsHost: bool
    SendReport: bool
    Result: Any


class TLSResults(_Out):
    """TLS results."""

    Results: list[TLSResult]


class BounceOutcome(_Out):
    """What an incoming bounce was taken for."""

    ID: int
    Matched: bool
    Event: str
    QueueMsgID: int
    FromID: str
    DSN: bool
    SMTPCode: int
    SMTPEnhancedCode: str
    Suppressing: bool
    Detail: str


class BounceStored(_Out):
    """A bounce stored and still being matched by the worker (HTTP 202)."""

    ID: int
    Matched: None


class DKIMRecord(_Out):
    """A configured DKIM selector and the DNS TXT record that publishes its key."""

    Domain: str
    Selector: str
    Algorithm: str
    RecordName: str
    RecordValue: str
    Signing: bool


class Ready(_Out):
    """Readiness: Problems names what is missing."""

    Ready: bool
    Problems: list[str] = []
