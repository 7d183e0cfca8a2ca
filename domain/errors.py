"""Errors returned to API callers, each with a stable code they can switch on."""

from __future__ import annotations


class WebAPIError(Exception):
    """A webapi failure answered as HTTP 400 `{"Code": code, "Message": message}` (spec 03 §5.3)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
