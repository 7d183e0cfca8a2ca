"""Queue filters and sort order of the admin API (spec 01 §5.1, §5.2), parsed into plain values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.durations import parse_duration


class FilterError(ValueError):
    """A filter or sort parameter that cannot be applied; nothing is changed when one is raised."""


# Ids and counts are PostgreSQL bigints.
MAX_ID = 2**63 - 1


def parse_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """A whole number from a JSON number or a query parameter's digits, within minimum..MAX_ID."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise FilterError(f"{name}: must be a whole number")
    if not minimum <= value <= MAX_ID:
        raise FilterError(f"{name}: must be between {minimum} and {MAX_ID}")
    return value


def parse_ids(value: Any) -> tuple[int, ...]:
    """Message or hook ids: a JSON list of numbers, or a comma-separated query parameter."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [x for x in value.split(",") if x.strip()]
    if not isinstance(value, list):
        raise FilterError("ids: must be a list of ids")
    return tuple(parse_int("ids", x, minimum=1) for x in value)


def parse_str(name: str, value: Any) -> str:
    """A string parameter; PostgreSQL text cannot hold NUL, so one with NUL is refused."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FilterError(f"{name}: must be a string")
    if "\0" in value:
        raise FilterError(f"{name}: must not contain NUL")
    return value


def parse_bool(name: str, value: Any) -> bool | None:
    """true/false from a JSON boolean or a query parameter (true, 1, yes / false, 0, no); None if unset."""
    if isinstance(value, bool):
        return value
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
    raise FilterError(f"{name}: not a boolean: {str(value)[:40]!r}")


def parse_time(name: str, value: Any) -> datetime:
    """An RFC 3339 time with its zone offset, in UTC."""
    if not isinstance(value, str):
        raise FilterError(f"{name}: must be an RFC 3339 time string")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if at.tzinfo is None:
            raise FilterError(f"{name}: needs a time zone offset")
        return at.astimezone(UTC)
    except (ValueError, OverflowError):
        raise FilterError(f"{name}: not an RFC 3339 time: {value[:40]!r}") from None


@dataclass(frozen=True)
class TimeCondition:
    """`field < T` (before) or `field > T` (after), with T = now + offset."""

    before: bool
    offset: timedelta

    def reference(self, now: datetime) -> datetime:
        """The instant the field is compared with."""
        return now + self.offset


def parse_time_condition(name: str, text: Any) -> TimeCondition:
    """Parse `<now`, `>1m`, `<-1h30m`: a direction followed by `now` or a Go-style duration."""
    if not isinstance(text, str):
        raise FilterError(f"{name}: must be a string such as <1h or >now")
    if not text or text[0] not in "<>":
        raise FilterError(f'{name}: must start with "<" for before or ">" for after a duration')
    rest = text[1:].strip()
    if rest == "now":
        return TimeCondition(text[0] == "<", timedelta(0))
    try:
        return TimeCondition(text[0] == "<", parse_duration(rest))
    except ValueError as err:
        raise FilterError(f"{name}: {err}") from None


@dataclass(frozen=True)
class QueueFilter:
    """Which queued messages an admin list or operation applies to; unset fields do not restrict."""

    ids: tuple[int, ...] = ()
    account: str = ""
    from_: str = ""
    to: str = ""
    hold: bool | None = None
    submitted: TimeCondition | None = None
    next_attempt: TimeCondition | None = None
    transport: str | None = None
    max: int = 0


SORT_FIELDS = {"nextattempt": "next_attempt", "queued": "queued"}


@dataclass(frozen=True)
class QueueSort:
    """Order of a queue listing and the keyset position to continue after (spec 01 §5.2)."""

    field: str = "nextattempt"
    asc: bool = False
    last_id: int = 0
    last: datetime | None = None


def parse_sort(field_name: str, asc: bool, last_id: int, last: str) -> QueueSort:
    """Validate a sort request; `last` is the RFC 3339 value of the sort field of the last row seen."""
    key = (field_name or "nextattempt").lower()
    if key not in SORT_FIELDS:
        raise FilterError("unknown sort order field")
    last_dt = None
    if last_id > 0:
        if not last:
            raise FilterError("last should be string with time")
        last_dt = parse_time("last", last)
    return QueueSort(key, asc, last_id, last_dt)


@dataclass(frozen=True)
class RetiredFilter:
    """Which retired messages a listing shows (spec 01 §6.5); unset fields do not restrict."""

    ids: tuple[int, ...] = ()
    account: str = ""
    from_: str = ""
    to: str = ""
    submitted: TimeCondition | None = None
    last_activity: TimeCondition | None = None
    transport: str | None = None
    success: bool | None = None
    max: int = 0


RETIRED_SORT_FIELDS = {"lastactivity": "last_activity", "queued": "queued"}


def parse_retired_sort(field_name: str, asc: bool, last_id: int, last: str) -> QueueSort:
    """Validate a retired-list sort: LastActivity (default) or Queued, with keyset continuation."""
    key = (field_name or "lastactivity").lower()
    if key not in RETIRED_SORT_FIELDS:
        raise FilterError("unknown sort order field")
    base = parse_sort("", asc, last_id, last)
    return QueueSort(key, asc, base.last_id, base.last)


def _fields(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """A filter's fields by lower-case name, unset ones left out; a filter that is not an object refused."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise FilterError("Filter must be an object")
    return {str(k).lower(): v for k, v in raw.items() if v is not None}


def _condition(f: dict[str, Any], name: str) -> TimeCondition | None:
    v = f.get(name)
    return None if v in (None, "") else parse_time_condition(name, v)


def queue_filter(raw: Mapping[str, Any] | None) -> QueueFilter:
    """A queue filter from query parameters or a POST body's `Filter`, in mox's field names (any case).

    Values may be strings (query parameters) or JSON values (`"Hold": true`, `"IDs": [1, 2]`).
    """
    f = _fields(raw)
    return QueueFilter(
        ids=parse_ids(f.get("ids")),
        account=parse_str("account", f.get("account")),
        from_=parse_str("from", f.get("from")),
        to=parse_str("to", f.get("to")),
        hold=parse_bool("hold", f.get("hold")),
        submitted=_condition(f, "submitted"),
        next_attempt=_condition(f, "nextattempt"),
        transport=None if f.get("transport") is None else parse_str("transport", f["transport"]),
        max=parse_int("max", f.get("max") or 0),
    )


def retired_filter(raw: Mapping[str, Any] | None) -> RetiredFilter:
    """A retired-message filter from query parameters (spec 01 §6.5)."""
    f = _fields(raw)
    return RetiredFilter(
        ids=parse_ids(f.get("ids")),
        account=parse_str("account", f.get("account")),
        from_=parse_str("from", f.get("from")),
        to=parse_str("to", f.get("to")),
        submitted=_condition(f, "submitted"),
        last_activity=_condition(f, "lastactivity"),
        transport=None if f.get("transport") is None else parse_str("transport", f["transport"]),
        success=parse_bool("success", f.get("success")),
        max=parse_int("max", f.get("max") or 0),
    )
