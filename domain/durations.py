"""Go-style duration strings ("90s", "7m30s", "-1h30m", "1.5h"), the form mox and Tempost's API use."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
MAX_SECONDS = (2**63 - 1) / 1e9
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration; raises ValueError for anything Go's time.ParseDuration would reject."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return timedelta(0)
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f"invalid duration {text[:40]!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text[:40]!r}")
    # Go's durations are int64 nanoseconds, about 292 years; larger ones are refused as Go refuses them.
    if not total <= MAX_SECONDS:
        raise ValueError(f"invalid duration {text[:40]!r}: out of range (at most about 292 years)")
    return timedelta(seconds=sign * total)


def format_duration(d: timedelta) -> str:
    """Format a duration the way Go prints one ("7m30s", "1h0m0s", "0s"), whole seconds or finer."""
    total = d.total_seconds()
    if total == 0:
        return "0s"
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total < 1:
        ms = total * 1000
        return f"{sign}{ms:g}ms"
    hours, rem = divmod(total, 3600)
    minutes, seconds = divmod(rem, 60)
    secs = f"{seconds:g}s"
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{secs}"
    if minutes:
        return f"{sign}{int(minutes)}m{secs}"
    return f"{sign}{secs}"
