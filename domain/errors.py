"""Errors returned to API callers, each with a stable code they can switch on."""

from __future__ import annotations


class WebAPIError(Exception):
    """A webapi failure answered as `{"Code": code, "Message": message}`, HTTP 400 unless said otherwise."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
