"""Reading a Delivery workflow's history the way the tests count attempts."""

from __future__ import annotations

from collections.abc import Iterable

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

# The marker the SDK records for each local activity's result.
LOCAL_ACTIVITY_MARKER = "core_local_activity"


def attempts_made(events: Iterable[HistoryEvent]) -> int:
    """Delivery attempts started: regular activities scheduled plus local activities recorded (a first
    attempt runs as a local activity from revision 1 on)."""
    n = 0
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            n += 1
        elif (
            e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        ):
            n += 1
    return n
