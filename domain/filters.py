"""Queue filters and sort order of the admin API (spec 01 §5.1, §5.2), parsed into plain values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from domain.durations import parse_duration


class FilterError(ValueError):
    """A filter or sort parameter that cannot be applied; nothing is changed when one is raised."""


@dataclass(frozen=True)
class TimeCondition:
    """`field < T` (before) or `field > T` (after), with T = now + offset."""

    before: bool
    offset: timedelta

    def reference(self, now: datetime) -> datetime:
        """The instant the field is compared with."""
        return now + self.offset


def parse_time_condition(name: str, text: str) -> TimeCondition:
    """Parse `<now`, `>1m`, `<-1h30m`: a direction followed by `now` or a Go-style duration."""
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
        try:
            last_dt = datetime.fromisoformat(last.replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(f"last: not an RFC 3339 time: {last!r}") from None
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
