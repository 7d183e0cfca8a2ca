"""The webapi's request and response objects other than Send's and SendRaw's requests (spec 03 §5, spec 04
§1), as pydantic models: the handlers decode with them, and /openapi.json is generated from them, so the
document and the code cannot disagree."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from domain.contracts import MsgState
from domain.errors import WebAPIError
from domain.send import decode_object

# Times are RFC 3339 strings as the API writes them (datetime.isoformat), kept as written.
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]

# Every error code the webapi answers with (spec 03 §5.3 and Tempost's extensions); a unit test checks
# that the code raises no other.
ERROR_CODES = (
    "protocol",
    "user",
    "error",
    "server",
    "badAddress",
    "badFrom",
    "multipleFrom",
    "noRecipients",
    "tooManyRecipients",
    "messageTooLarge",
    "malformedMessage",
    "malformedMessageID",
    "missingBody",
    "messageNotFound",
    "badIdempotencyKey",
    "idempotencyKeyReused",
    "serverBusy",
    "unavailable",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageStatusRequest(_Strict):
    """MessageStatus: one of the caller's own messages, by the QueueMsgID that Send answered."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"QueueMsgID": 1}]})

    QueueMsgID: StrictInt = 0


class SuppressionListRequest(_Strict):
    """SuppressionList takes no fields: it lists the caller's account."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})


class SuppressionAddRequest(_Strict):
    """SuppressionAdd: put an address (any variant of its base address) on the account's list."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"EmailAddress": "bob@example.com", "Manual": True, "Reason": "asked to stop"}]
        },
    )

    EmailAddress: StrictStr = ""
    Manual: StrictBool = False
    Reason: StrictStr = ""


class SuppressionAddressRequest(_Strict):
    """SuppressionRemove and SuppressionPresent: one address of the account's list."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"EmailAddress": "bob@example.com"}]}
    )

    EmailAddress: StrictStr = ""


M = TypeVar("M", bound=BaseModel)


def decode_model(raw: str, model: type[M]) -> M:
    """Decode a request object as strictly as Send's (keys case-insensitive, unknown keys and wrong types
    refused with `protocol`) into `model`."""
    try:
        return model.model_validate(decode_object(raw, set(model.model_fields)))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise WebAPIError("protocol", f"parsing request: {where}: {first['msg']}") from None


# --- Responses --------------------------------------------------------------------------------------


class Submission(_Strict):
    """One recipient of a Send or SendRaw: the address as given, its message id, and its FromID."""

    Address: str
    QueueMsgID: int
    FromID: str


class SendResult(_Strict):
    """The answer to Send and SendRaw."""

    MessageID: str
    Submissions: list[Submission]


class MsgResult(_Strict):
    """One delivery attempt of a message (mox's MsgResult); Duration in nanoseconds."""

    Start: Time
    Duration: int
    Success: bool
    Code: int
    Secode: str
    Error: str


class MessageStatusResult(_Strict):
    """The answer to MessageStatus."""

    State: MsgState
    Attempts: int
    NextAttempt: Time | None
    Results: list[MsgResult]


class Suppression(_Strict):
    """An entry of an account's suppression list."""

    ID: int
    Created: Time
    Account: str
    BaseAddress: str
    OriginalAddress: str
    Manual: bool
    Reason: str


class SuppressionListResult(_Strict):
    """The answer to SuppressionList."""

    Suppressions: list[Suppression]


class SuppressionPresentResult(_Strict):
    """The answer to SuppressionPresent."""

    Present: bool


class EmptyResult(_Strict):
    """The answer to SuppressionAdd and SuppressionRemove: an empty object."""


class WebAPIErrorResponse(_Strict):
    """A webapi error: HTTP 400 (409 for idempotencyKeyReused, 503 for serverBusy and unavailable)."""

    Code: Literal[ERROR_CODES]  # type: ignore[valid-type]
    Message: str
