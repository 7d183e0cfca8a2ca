"""The retry schedule of mox's queue (spec 01 §2): 7.5 minutes doubling per attempt, with jitter."""

from __future__ import annotations

from datetime import timedelta

# mox draws a whole number of seconds in [-5, +4] and adds it to the 450 s base before doubling, so
# the jitter doubles with the backoff. We keep that ratio for any configured base.
JITTER_MIN = -5
JITTER_MAX = 4
MOX_BASE_SECONDS = 450.0
DEFAULT_MAX_ATTEMPTS = 8
# A temporary failure that leaves the attempt count at this value sends the delayed DSN (spec 01 §2.2).
DELAYED_DSN_ATTEMPT = 5


def backoff(attempts_before: int, base: timedelta, jitter: int) -> timedelta:
    """How long after an attempt starts the next one is due.

    attempts_before is the number of attempts started before this one (0 for the first attempt);
    jitter is a whole number in [JITTER_MIN, JITTER_MAX] (drawn with workflow.random() so replay agrees).
    """
    if not JITTER_MIN <= jitter <= JITTER_MAX:
        raise ValueError(f"jitter {jitter} outside [{JITTER_MIN}, {JITTER_MAX}]")
    base_s = base.total_seconds()
    jittered = base_s * (1 + jitter / MOX_BASE_SECONDS)
    return timedelta(seconds=jittered * (2**attempts_before))


def effective_max_attempts(max_attempts: int) -> int:
    """MaxAttempts 0 means the default of 8 (spec 01 §1.1)."""
    return max_attempts if max_attempts > 0 else DEFAULT_MAX_ATTEMPTS


def is_final(permanent: bool, attempts: int, max_attempts: int) -> bool:
    """A failed attempt is final when the error is permanent or the attempt budget is used up."""
    return permanent or attempts >= effective_max_attempts(max_attempts)
