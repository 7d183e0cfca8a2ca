"""A bare SMTP-ish server on loopback that answers with scripted lines, for malformed and hostile peers.

aiosmtpd speaks correct SMTP; this one says whatever the test tells it to, including nothing at all, and
shows exactly which commands arrived together (a pipelined burst) and in which order.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from dataclasses import dataclass, field

from deploy.embedded import free_port


@dataclass
class Script:
    """The greeting ("" closes at once), then replies by command verb; DATA gets 354, anything else 250.

    A reply may be a list: the n-th use of the verb in a session gets the n-th reply, the last one
    repeating. A DATA reply starting with 354 makes the server read the message up to "." and answer that
    with the "." entry. An empty reply hangs up. `extensions` are announced in the EHLO reply (unless
    EHLO itself is scripted); with "PIPELINING" among them the server holds its replies from MAIL on until
    DATA arrives, so only a client that really pipelines gets them without a wait.
    """

    greeting: str = "220 scripted ESMTP"
    replies: dict[str, str | list[str]] = field(default_factory=dict)
    extensions: list[str] = field(default_factory=list)
    # With a context, STARTTLS is answered 220 and the TLS handshake run for real, on a blocking socket so
    # that the alerts OpenSSL sends on failure reach the client (asyncio's server side drops them); the
    # server then reads one record, which is where TLS 1.3 refuses a missing client certificate, and hangs
    # up. It is for testing how a client takes a server's TLS refusal, not for a working TLS session.
    refusing_tls: ssl.SSLContext | None = None


@dataclass
class Received:
    """What one connection sent: every command line, the bursts, and the messages after DATA."""

    commands: list[str] = field(default_factory=list)
    # The verbs that arrived before the server answered the first of them, from MAIL on.
    bursts: list[list[str]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    # The connection has ended (the client may finish its delivery before the server reads its QUIT).
    closed: bool = False


# How long the server waits for the rest of a pipelined burst before answering what it has.
_BURST_WAIT = 1.0


class ScriptedSMTP:
    """Start with `await start()`, stop with `await stop()`; `sessions` lists what each connection sent."""

    def __init__(self, script: Script, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.script = script
        self.host = host
        self.port = port or free_port(host)
        self.sessions: list[Received] = []
        self._server: asyncio.Server | None = None

    @property
    def commands(self) -> list[str]:
        """Every command line of every session, in order."""
        return [c for s in self.sessions for c in s.commands]

    def _reply(self, verb: str, uses: dict[str, int]) -> str:
        n = uses.get(verb, 0)
        uses[verb] = n + 1
        if verb == "EHLO" and verb not in self.script.replies:
            lines = ["250-scripted", *(f"250-{e}" for e in self.script.extensions)]
            return "\n".join(lines[:-1] + ["250 " + lines[-1][4:]])
        defaults = {
            "QUIT": "221 bye",
            "DATA": "354 go ahead",
            ".": "250 ok queued",
            "STARTTLS": "220 go ahead",
        }
        default = defaults.get(verb, "250 ok")
        reply = self.script.replies.get(verb, default)
        if isinstance(reply, list):
            reply = reply[min(n, len(reply) - 1)]
        return reply

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = Received()
        self.sessions.append(got)
        uses: dict[str, int] = {}
        pipelining = "PIPELINING" in (e.upper() for e in self.script.extensions)

        async def answer(verb: str) -> bool:
            reply = self._reply(verb, uses)
            if reply == "":
                return False  # hang up
            writer.write(reply.replace("\n", "\r\n").encode() + b"\r\n")
            await writer.drain()
            if verb == "STARTTLS" and self.script.refusing_tls is not None:
                await self._refuse_tls(writer, self.script.refusing_tls)
                return False
            if verb == "DATA" and reply.startswith("354"):
                body = b""
                while (line := await reader.readline()) not in (b".\r\n", b""):
                    body += line
                got.messages.append(body)
                return await answer(".")
            return verb != "QUIT"

        try:
            if not self.script.greeting:
                return
            writer.write(self.script.greeting.encode() + b"\r\n")
            await writer.drain()
            while line := await reader.readline():
                verbs = [self._verb(line, got)]
                if pipelining and verbs[0] == "MAIL":
                    while verbs[-1] != "DATA":
                        try:
                            more = await asyncio.wait_for(reader.readline(), _BURST_WAIT)
                        except TimeoutError:
                            break
                        if not more:
                            break
                        verbs.append(self._verb(more, got))
                    got.bursts.append(verbs)
                for verb in verbs:
                    if not await answer(verb):
                        return
        finally:
            got.closed = True
            writer.close()

    @staticmethod
    async def _refuse_tls(writer: asyncio.StreamWriter, context: ssl.SSLContext) -> None:
        writer.transport.pause_reading()
        raw = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
        raw.setblocking(True)
        raw.settimeout(5)

        def handshake() -> None:
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass
            finally:
                raw.close()

        await asyncio.get_running_loop().run_in_executor(None, handshake)

    @staticmethod
    def _verb(line: bytes, got: Received) -> str:
        cmd = line.decode(errors="replace").strip()
        got.commands.append(cmd)
        return cmd.split(" ", 1)[0].upper()

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until every connection so far has ended (by a deadline, not a count of polls)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not all(s.closed for s in self.sessions):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("a connection to the scripted server is still open")
            await asyncio.sleep(0.05)

    async def start(self) -> ScriptedSMTP:
        self._server = await asyncio.start_server(self._session, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
