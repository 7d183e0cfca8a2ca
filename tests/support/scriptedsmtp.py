"""A bare SMTP-ish server on loopback that answers with scripted lines, for malformed and hostile peers.

aiosmtpd speaks correct SMTP; this one says whatever the test tells it to, including nothing at all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from deploy.embedded import free_port


@dataclass
class Script:
    """The greeting ("" closes at once), then replies by command verb; unknown verbs get 250."""

    greeting: str = "220 scripted ESMTP"
    replies: dict[str, str] = field(default_factory=dict)


class ScriptedSMTP:
    """Start with `await start()`, stop with `await stop()`; `commands` lists what clients sent."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = free_port()
        self.commands: list[str] = []
        self._server: asyncio.Server | None = None

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not self.script.greeting:
                return
            writer.write(self.script.greeting.encode() + b"\r\n")
            await writer.drain()
            while line := await reader.readline():
                cmd = line.decode(errors="replace").strip()
                self.commands.append(cmd)
                verb = cmd.split(" ", 1)[0].upper()
                reply = self.script.replies.get(verb, "221 bye" if verb == "QUIT" else "250 ok")
                if reply == "":
                    return  # hang up
                writer.write(reply.replace("\n", "\r\n").encode() + b"\r\n")
                await writer.drain()
                if verb == "QUIT":
                    return
        finally:
            writer.close()

    async def start(self) -> ScriptedSMTP:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
