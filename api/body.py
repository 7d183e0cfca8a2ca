"""Request bodies read with a size bound: streamed, counted and refused as soon as they pass the bound,
so an oversized request costs at most the bound in memory, whatever its Content-Length says."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from domain.apiinput import MAX_FIELDS, InputError, parse_form


class BodyTooLarge(Exception):
    """The request body is larger than the bound allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


async def limited_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks; BodyTooLarge at once for a larger Content-Length, or once more has arrived."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    # Content-Length is only a hint: chunked bodies have none, and a client may send more than it said.
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(limit)
        yield chunk


async def read_body(request: Request, limit: int) -> bytearray:
    """The whole body, at most `limit` bytes of it."""
    body = bytearray()
    async with aclosing(limited_stream(request, limit)) as stream:
        async for chunk in stream:
            body += chunk
    return body


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, refusing a field that is not in its declared charset (UTF-8 by
    default) instead of reading it as Latin-1."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                part.data.decode(self._charset)
            except UnicodeDecodeError:
                problem = f"form field {part.field_name!r} is not valid {self._charset}"
                raise MultiPartException(problem) from None
        super().on_part_end()


async def read_form(request: Request, limit: int) -> FormData:
    """A url-encoded or multipart form of at most `limit` bytes; InputError when malformed.

    File parts are spooled to temporary files by Starlette; fields are held in memory, each as large as
    the whole bound may allow (mox's client puts attachments, base64, into the `request` field).
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        fields: list[tuple[str, str | UploadFile]] = [*parse_form(await read_body(request, limit))]
        return FormData(fields)
    async with aclosing(limited_stream(request, limit)) as stream:
        parser = _StrictMultiPartParser(
            Headers(raw=request.headers.raw),
            stream,
            max_files=MAX_FIELDS,
            max_fields=MAX_FIELDS,
            max_part_size=limit,
        )
        try:
            return await parser.parse()
        except MultiPartException as err:
            raise InputError(err.message) from None
