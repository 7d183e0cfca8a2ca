"""Process-wide logging: human-readable lines, or one JSON object per line for log pipelines.

Chosen by environment, not by the configuration file, because every command logs (tempost dev has no
file): TEMPOST_LOG_FORMAT=text|json, TEMPOST_LOG_LEVEL=debug|info|warning|error.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field of its own.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the record's own fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure() -> None:
    """Set up the root logger from TEMPOST_LOG_FORMAT and TEMPOST_LOG_LEVEL."""
    fmt = os.environ.get("TEMPOST_LOG_FORMAT", "text").lower()
    level_name = os.environ.get("TEMPOST_LOG_LEVEL", "info").upper()
    if fmt not in ("text", "json"):
        raise SystemExit(f"tempost: TEMPOST_LOG_FORMAT must be text or json, not {fmt!r}")
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        raise SystemExit(f"tempost: TEMPOST_LOG_LEVEL {level_name.lower()!r} is not a level")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JSONFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Every HTTP call of the client library at info would drown the mail log.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
