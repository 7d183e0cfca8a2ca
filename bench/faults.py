"""Fault injection: kill every part of a running Tempost with SIGKILL under load and count what was lost.

Starts PostgreSQL and Temporal's dev server as their own processes (state on disk, so each survives its own
kill -9 and restart), then two `tempost worker` processes and one `tempost api` process from one
configuration file, delivering to an SMTP sink on loopback that records every accepted DATA. A client sends
N single-recipient messages at a steady rate through webapi Send, each with its own Idempotency-Key,
retrying the same request on connection errors, timeouts and 5xx until it is accepted (bounded). Meanwhile
each part is killed with SIGKILL in turn and started again, and each tempost process is also stopped
gracefully with SIGTERM (its exit code recorded); a tempost process that exits on its own is recorded and
started again, as a supervisor would. Then it waits until every accepted message is delivered and the queue
is empty (bounded), and reports accepted, delivered, lost and duplicated messages.

Exits 1 when an accepted message was not delivered, when duplicates exceed --max-dup-rate, when a graceful
stop did not exit 0, when a tempost process exited by itself, or when a message could not be submitted at
all (the client gave up retrying).
Everything listens on 127.0.0.1; the run stops by itself and kills every child it started, also on Ctrl-C.

    python bench/faults.py -n 3000 --rate 8
    python bench/faults.py -n 300 --rate 4 --json     # the small form CI runs
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.embedded import EmbeddedPostgres, TemporalDevServer, free_port  # noqa: E402
from domain.passwords import hash_password  # noqa: E402
from tests.support.smtpsink import SMTPSink  # noqa: E402
from workflows.searchattrs import CLI_TYPES  # noqa: E402

SENDER = "faults@example.org"
PASSWORD = "faults-password"
ADMIN_TOKEN = "faults-admin-token"
TASK_QUEUE = "faults"
# How long a tempost process may take to become ready (imports, connections) after a start.
READY_TIMEOUT = 90.0
# A graceful stop longer than the worker's shutdown grace plus this is recorded as hung, then killed.
STOP_SLACK = 30.0
# Starts after unexpected exits, over the whole run, before the harness gives up on a process.
MAX_UNEXPECTED_RESTARTS = 30
# After the queue is empty, how long the sink must stay quiet before the counts are final.
SETTLE = 3.0
_SUBJECT = re.compile(rb"^Subject: faults (\S+) #(\d+)\r?$", re.MULTILINE)
_MESSAGE_ID = re.compile(rb"^Message-ID: *(\S+)\r?$", re.MULTILINE | re.IGNORECASE)


def _now() -> float:
    return time.monotonic()


def _tail(path: Path, offset: int = 0, lines: int = 30) -> str:
    """The last lines a process wrote to its log since offset, for reports."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _killpg(pid: int | None) -> None:
    """SIGKILL a process group (each child leads its own session); gone already is fine."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _transient(r: httpx.Response) -> str:
    """Why a Send answer is worth repeating ("" when it is a final refusal).

    mox's webapi answers every error with HTTP 400 and a code; `server` is the server's own trouble (its
    database away, say), which a client retries like a 5xx.
    """
    kind = r.headers.get("content-type", "").split(";")[0]
    if r.status_code >= 500:
        return f"HTTP {r.status_code} ({kind or 'no content type'})"
    if r.status_code == 400 and kind == "application/json":
        with contextlib.suppress(ValueError, AttributeError):
            if r.json().get("Code") == "server":
                return f"HTTP 400 server: {r.json().get('Message', '')}"
    return ""


@dataclass
class TempostProcess:
    """One `tempost worker` or `tempost api` process, started again and again from the same config file."""

    name: str
    role: str
    config: Path
    log_path: Path
    ready: Callable[[TempostProcess], Awaitable[bool]]
    proc: subprocess.Popen[bytes] | None = None
    # running: supervised (an exit is unexpected); down: stopped or killed on purpose.
    state: str = "down"
    log_offset: int = 0
    started_at: float = 0.0
    starts: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _log: IO[bytes] | None = None

    def start(self) -> None:
        """Start the process (its output appended to the log, after a marker line)."""
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self.starts += 1
        self._log.write(f"\n==== faults.py: start #{self.starts} of {self.name} ====\n".encode())
        self._log.flush()
        self.log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", self.role, "-c", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TEMPOST_ADMIN_TOKEN": ADMIN_TOKEN},
            start_new_session=True,
        )
        self.started_at = _now()
        self.state = "running"

    def exited(self) -> int | None:
        """The exit code if the current process has ended."""
        return None if self.proc is None else self.proc.poll()

    def log_since_start(self) -> str:
        return _tail(self.log_path, self.log_offset)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _killpg(self.proc.pid)
            self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


async def _worker_ready(p: TempostProcess) -> bool:
    """A worker is ready once it polls its task queue (the line it logs then)."""
    try:
        with open(p.log_path, "rb") as f:
            f.seek(p.log_offset)
            return b"worker polling task queue" in f.read()
    except OSError:
        return False


@dataclass
class Report:
    """What the run measured; printed as text or JSON."""

    messages: int = 0
    accepted: int = 0
    delivered: int = 0
    lost: int = 0
    stuck: int = 0
    duplicated: int = 0
    duplicate_rate: float = 0.0
    not_accepted: int = 0
    delivered_not_accepted: int = 0
    dsns: int = 0
    lost_details: list[dict[str, Any]] = field(default_factory=list)
    duplicate_details: list[dict[str, Any]] = field(default_factory=list)
    not_accepted_details: list[dict[str, Any]] = field(default_factory=list)
    client_attempts: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    graceful_stops: list[dict[str, Any]] = field(default_factory=list)
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    log_dir: str = ""
    ok: bool = False


class FaultRun:
    """The stack under test, the load, the fault schedule and the counting."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run_id = uuid.uuid4().hex[:8]
        self.report = Report(messages=args.messages, log_dir=str(self.logs))
        self.sink = SMTPSink()
        self.pg = EmbeddedPostgres(workdir / "postgres", free_port(), log_file=self.logs / "postgres.log")
        self.temporal = TemporalDevServer(
            workdir / "temporal.db",
            port=free_port(),
            ui_port=free_port(),
            log_file=self.logs / "temporal.log",
            search_attributes=sorted(CLI_TYPES.items()),
        )
        self.api_port = free_port()
        self.config = workdir / "tempost.toml"
        self.api = TempostProcess("api", "api", self.config, self.logs / "api.log", self._api_ready)
        self.workers = [
            TempostProcess(f"worker-{k}", "worker", self.config, self.logs / f"worker-{k}.log", _worker_ready)
            for k in (1, 2)
        ]
        self.tempost = [*self.workers, self.api]
        self.accepted: dict[int, dict[str, Any]] = {}
        self.not_accepted: dict[int, str] = {}
        self.retry_reasons: collections.Counter[str] = collections.Counter()
        self.client_attempts = 0
        self.closing = False
        self.t0 = _now()

    # --- the stack ---------------------------------------------------------------------------------

    def _write_config(self) -> None:
        self.config.write_text(
            f"""hostname = "faults.test"
[database]
url = "{self.pg.url}"
pool_max = 10
[temporal]
address = "{self.temporal.address}"
task_queue = "{TASK_QUEUE}"
[api]
listen = "127.0.0.1:{self.api_port}"
admin_token_file = ""
[worker]
metrics_listen = ""
shutdown_grace = "{self.args.shutdown_grace}s"
mtasts_refresh_interval = "0s"
[queue]
default_transport = "sink"
backoff_base = "1s"
max_attempts = 10
max_concurrent_deliveries = 20
[transports.sink]
type = "smtp"
host = "{self.sink.host}"
port = {self.sink.port}
starttls = "none"
[[accounts]]
name = "faults"
addresses = ["{SENDER}"]
password_hash = "{hash_password(PASSWORD, iterations=1000)}"
keep_retired_period = "24h"
"""
        )

    async def _api_ready(self, p: TempostProcess) -> bool:
        try:
            async with httpx.AsyncClient(timeout=3) as http:
                r = await http.get(f"http://127.0.0.1:{self.api_port}/readyz")
                return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def start_stack(self) -> None:
        self.sink.start()
        await asyncio.to_thread(self.pg.start)
        await asyncio.to_thread(self.temporal.start)
        self._write_config()
        migrate = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "deploy.cli", "migrate", "-c", str(self.config)],
            capture_output=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        (self.logs / "migrate.log").write_bytes(migrate.stdout + migrate.stderr)
        if migrate.returncode != 0:
            raise RuntimeError(f"tempost migrate failed; see {self.logs / 'migrate.log'}")
        for p in self.tempost:
            p.start()

    async def _wait_ready(self, p: TempostProcess) -> float:
        """Seconds until the process (or the one the supervisor started in its place) is ready."""
        started = _now()
        while not await p.ready(p):
            if _now() - started > READY_TIMEOUT:
                raise RuntimeError(f"{p.name} not ready after {READY_TIMEOUT:.0f}s; see {p.log_path}")
            await asyncio.sleep(0.2)
        return _now() - started

    async def supervise(self) -> None:
        """Start a tempost process again when it exits on its own, as systemd's Restart=always would."""
        consecutive: dict[str, int] = collections.Counter()
        while not self.closing:
            for p in self.tempost:
                async with p.lock:
                    code = p.exited() if p.state == "running" else None
                    if code is None:
                        continue
                    self.report.unexpected_exits.append(
                        {
                            "process": p.name,
                            "exit_code": code,
                            "at_s": round(_now() - self.t0, 1),
                            "log_tail": p.log_since_start(),
                        }
                    )
                    print(f"  ! {p.name} exited by itself with {code}; starting it again", file=sys.stderr)
                    if len(self.report.unexpected_exits) > MAX_UNEXPECTED_RESTARTS:
                        p.state = "down"
                        raise RuntimeError(f"more than {MAX_UNEXPECTED_RESTARTS} unexpected exits")
                    consecutive[p.name] += 1
                    await asyncio.sleep(min(5.0, 0.5 * 2 ** consecutive[p.name]))
                    p.start()
            for p in self.tempost:
                # Up for a while again: a later exit starts the backoff afresh.
                if p.state == "running" and p.exited() is None and _now() - p.started_at > 30:
                    consecutive[p.name] = 0
            await asyncio.sleep(0.3)

    async def graceful_stop(self, p: TempostProcess, phase: str) -> dict[str, Any]:
        """SIGTERM, then wait for the exit; a process still running after the grace is recorded as hung."""
        async with p.lock:
            p.state = "down"
            assert p.proc is not None
            t = _now()
            code: int | None = p.proc.poll()
            already = code is not None
            if not already:
                p.proc.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.to_thread(p.proc.wait, self.args.shutdown_grace + STOP_SLACK)
                except subprocess.TimeoutExpired:
                    code = None
                    _killpg(p.proc.pid)
                    await asyncio.to_thread(p.proc.wait)
            stop = {
                "process": p.name,
                "phase": phase,
                "exit_code": code,
                "seconds": round(_now() - t, 2),
            }
            if already:
                stop["note"] = "had already exited before SIGTERM"
            elif code is None:
                limit = self.args.shutdown_grace + STOP_SLACK
                stop["note"] = f"still running {limit:.0f}s after SIGTERM; killed"
            if code != 0:
                stop["log_tail"] = p.log_since_start()
            self.report.graceful_stops.append(stop)
            return stop

    # --- faults ------------------------------------------------------------------------------------

    async def _kill_tempost(self, p: TempostProcess) -> dict[str, Any]:
        async with p.lock:
            p.state = "down"
            assert p.proc is not None
            _killpg(p.proc.pid)
            await asyncio.to_thread(p.proc.wait)
        await asyncio.sleep(self.args.down_time)
        async with p.lock:
            p.start()
        return {"ready_s": round(await self._wait_ready(p), 2)}

    async def _term_tempost(self, p: TempostProcess) -> dict[str, Any]:
        stop = await self.graceful_stop(p, "fault schedule")
        async with p.lock:
            p.start()
        return {"exit_code": stop["exit_code"], "ready_s": round(await self._wait_ready(p), 2)}

    async def _kill_postgres(self) -> dict[str, Any]:
        pidfile = self.pg.data_dir / "postmaster.pid"
        pid = int(pidfile.read_text().split("\n", 1)[0])
        # The postmaster leads its own session: the group is the whole server, backends included.
        _killpg(pid)
        await asyncio.to_thread(self.pg.stop)  # reaps the postmaster, closes its log
        await asyncio.sleep(self.args.down_time)
        t = _now()
        await asyncio.to_thread(self.pg.start)
        return {"ready_s": round(_now() - t, 2)}

    async def _kill_temporal(self) -> dict[str, Any]:
        _killpg(self.temporal.pid)
        await asyncio.to_thread(self.temporal.stop)
        await asyncio.sleep(self.args.down_time)
        t = _now()
        await asyncio.to_thread(self.temporal.start)
        return {"ready_s": round(_now() - t, 2)}

    def schedule(self) -> list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]]:
        """Every part killed with SIGKILL in turn and every tempost process stopped with SIGTERM."""
        w1, w2 = self.workers
        return [
            ("kill -9 worker-1", lambda: self._kill_tempost(w1)),
            ("SIGTERM worker-2", lambda: self._term_tempost(w2)),
            ("kill -9 api", lambda: self._kill_tempost(self.api)),
            ("kill -9 postgresql", self._kill_postgres),
            ("SIGTERM api", lambda: self._term_tempost(self.api)),
            ("kill -9 temporal", self._kill_temporal),
            ("kill -9 worker-2", lambda: self._kill_tempost(w2)),
            ("SIGTERM worker-1", lambda: self._term_tempost(w1)),
        ]

    async def run_faults(self, load_seconds: float) -> None:
        """The schedule (--rounds times) spread evenly over the load; each fault waits until the part
        before it is back."""
        events = self.schedule() * self.args.rounds
        start = _now()
        for k, (name, action) in enumerate(events):
            due = start + load_seconds * (k + 1) / (len(events) + 1)
            await asyncio.sleep(max(0.0, due - _now()))
            at = _now() - self.t0
            print(f"  fault at {at:6.1f}s: {name}", file=sys.stderr)
            result = await action()
            self.report.faults.append(
                {"fault": name, "at_s": round(at, 1), "took_s": round(_now() - self.t0 - at, 2), **result}
            )

    # --- load --------------------------------------------------------------------------------------

    def recipient(self, i: int) -> str:
        return f"rcpt{i}@d{i % self.args.domains}.example"

    async def send_one(self, http: httpx.AsyncClient, i: int, due: float) -> None:
        """One message, its request repeated with the same Idempotency-Key until accepted or given up."""
        await asyncio.sleep(max(0.0, due - _now()))
        request = {
            "To": [{"Address": self.recipient(i)}],
            "Subject": f"faults {self.run_id} #{i}",
            "Text": f"message {i} of fault-injection run {self.run_id}",
        }
        give_up = _now() + self.args.give_up
        pause = 0.2
        reason = ""
        while _now() < give_up:
            self.client_attempts += 1
            try:
                r = await http.post(
                    "/webapi/v0/Send",
                    data={"request": json.dumps(request)},
                    headers={"Idempotency-Key": f"faults-{self.run_id}-{i}"},
                    auth=(SENDER, PASSWORD),
                )
            except httpx.TransportError as err:
                reason = type(err).__name__
            else:
                if r.status_code == 200:
                    body = r.json()
                    self.accepted[i] = {
                        "queue_msg_id": body["Submissions"][0]["QueueMsgID"],
                        "message_id": body["MessageID"],
                    }
                    return
                reason = _transient(r)
                if not reason:
                    # A refusal is final: the same request will be refused again.
                    self.not_accepted[i] = f"HTTP {r.status_code}: {r.text[:300]}"
                    return
            self.retry_reasons[reason] += 1
            await asyncio.sleep(pause)
            pause = min(2.0, pause * 2)
        self.not_accepted[i] = f"gave up after {self.args.give_up:.0f}s; last: {reason}"

    async def run_load(self) -> None:
        n, rate = self.args.messages, self.args.rate
        start = _now()
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.api_port}", timeout=self.args.request_timeout, limits=limits
        ) as http:
            await asyncio.gather(*(self.send_one(http, i, start + i / rate) for i in range(n)))

    # --- counting ----------------------------------------------------------------------------------

    def deliveries(self) -> tuple[dict[int, list[str]], int]:
        """Per message number, the Message-ID of each delivery the sink accepted; and the number of DSNs."""
        seen: dict[int, list[str]] = collections.defaultdict(list)
        for t in self.sink.messages():
            m = _SUBJECT.search(t.data)
            if m is None or m.group(1).decode() != self.run_id:
                continue
            i = int(m.group(2))
            mid = _MESSAGE_ID.search(t.data)
            for rcpt in t.rcpt_tos:
                if rcpt.lower() == self.recipient(i):
                    seen[i].append(mid.group(1).decode() if mid else "")
        return seen, len(self.sink.dsns())

    def _queued_count(self) -> int | None:
        try:
            with psycopg.connect(self.pg.url, connect_timeout=3) as conn:
                row = conn.execute("SELECT count(*) FROM queue_msgs").fetchone()
                return int(row[0]) if row else None
        except psycopg.Error:
            return None

    async def drain(self) -> None:
        """Wait until every accepted message is delivered and the queue is empty, then until the sink is
        quiet: no message can be sent again after its row is retired. Bounded by --drain-timeout."""
        deadline = _now() + self.args.drain_timeout
        while _now() < deadline:
            seen, _ = self.deliveries()
            if all(i in seen for i in self.accepted):
                queued = await asyncio.to_thread(self._queued_count)
                if queued == 0:
                    before = len(self.sink.transactions)
                    await asyncio.sleep(SETTLE)
                    if len(self.sink.transactions) == before:
                        return
                    continue
            await asyncio.sleep(1.0)

    def _where(self, queue_msg_id: int) -> dict[str, Any]:
        """Where an undelivered message is: still queued (with its results), retired, or nowhere."""
        try:
            with psycopg.connect(self.pg.url, connect_timeout=3) as conn:
                row = conn.execute(
                    "SELECT attempts, results FROM queue_msgs WHERE id = %s", [queue_msg_id]
                ).fetchone()
                if row is not None:
                    return {"where": "still queued", "attempts": row[0], "results": row[1][-2:]}
                row = conn.execute(
                    "SELECT event, attempts, results FROM retired_msgs WHERE id = %s", [queue_msg_id]
                ).fetchone()
                if row is not None:
                    return {"where": f"retired ({row[0]})", "attempts": row[1], "results": row[2][-2:]}
                return {"where": "in neither queue_msgs nor retired_msgs"}
        except psycopg.Error as err:
            return {"where": f"unknown: {err}"}

    def count(self) -> None:
        r = self.report
        seen, r.dsns = self.deliveries()
        r.accepted = len(self.accepted)
        r.not_accepted = len(self.not_accepted)
        refused = sorted(self.not_accepted.items())[:20]
        r.not_accepted_details = [{"message": i, "why": why} for i, why in refused]
        r.delivered = sum(1 for i in self.accepted if i in seen)
        r.delivered_not_accepted = sum(1 for i in seen if i not in self.accepted)
        undelivered = sorted(i for i in self.accepted if i not in seen)
        for i in undelivered:
            where = self._where(self.accepted[i]["queue_msg_id"])
            if where["where"] == "still queued":
                r.stuck += 1
            else:
                r.lost += 1
            if len(r.lost_details) < 20:
                r.lost_details.append({"message": i, **self.accepted[i], **where})
        dups = {i: ids for i, ids in seen.items() if len(ids) > 1}
        r.duplicated = len(dups)
        r.duplicate_rate = round(r.duplicated / r.accepted, 5) if r.accepted else 0.0
        for i, ids in sorted(dups.items())[:20]:
            # One Message-ID delivered twice is SMTP's redelivery; two Message-IDs are two submissions,
            # i.e. the Idempotency-Key did not hold.
            r.duplicate_details.append(
                {"message": i, "deliveries": len(ids), "distinct_message_ids": len(set(ids))}
            )
        r.client_attempts = self.client_attempts
        r.retry_reasons = dict(self.retry_reasons.most_common())

    def judge(self) -> None:
        r = self.report
        if r.lost:
            r.failures.append(f"{r.lost} accepted messages lost (retired undelivered or gone)")
        if r.stuck:
            r.failures.append(
                f"{r.stuck} accepted messages still queued after {self.args.drain_timeout:.0f}s of draining"
            )
        if r.duplicate_rate > self.args.max_dup_rate:
            r.failures.append(f"duplicate rate {r.duplicate_rate:.4%} above {self.args.max_dup_rate:.4%}")
        if any(d["distinct_message_ids"] > 1 for d in r.duplicate_details):
            r.failures.append("a message was queued twice despite its Idempotency-Key")
        bad_stops = [s for s in r.graceful_stops if s["exit_code"] != 0]
        if bad_stops:
            r.failures.append(
                "graceful stops that did not exit 0: "
                + ", ".join(f"{s['process']} ({s['phase']}): {s['exit_code']}" for s in bad_stops)
            )
        if r.not_accepted:
            r.failures.append(f"{r.not_accepted} messages never accepted by Send despite retries")
        if r.unexpected_exits:
            # Nobody stopped them: a crash, or an exit a supervisor would have to paper over.
            r.failures.append(
                "tempost processes exited by themselves: "
                + ", ".join(f"{e['process']} ({e['exit_code']})" for e in r.unexpected_exits)
            )
        r.ok = not r.failures

    # --- the whole run -----------------------------------------------------------------------------

    async def run(self) -> Report:
        t = self.t0
        supervisor: asyncio.Task[None] | None = None
        try:
            print(f"faults.py: run {self.run_id}, logs in {self.logs}", file=sys.stderr)
            await self.start_stack()
            supervisor = asyncio.create_task(self.supervise())
            for p in self.tempost:
                await self._wait_ready(p)
            self.report.timings["startup_s"] = round(_now() - t, 1)
            t = _now()
            load_seconds = self.args.messages / self.args.rate
            load = asyncio.create_task(self.run_load())
            faults = asyncio.create_task(self.run_faults(load_seconds))
            for task in asyncio.as_completed([load, faults, supervisor]):
                await task
                if load.done() and faults.done():
                    break
            self.report.timings["load_and_faults_s"] = round(_now() - t, 1)
            t = _now()
            await self.drain()
            self.report.timings["drain_s"] = round(_now() - t, 1)
            self.closing = True
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
            self.count()
            t = _now()
            await asyncio.gather(*(self.graceful_stop(p, "final") for p in self.tempost))
            self.report.timings["final_stop_s"] = round(_now() - t, 1)
        finally:
            self.closing = True
            if supervisor is not None:
                supervisor.cancel()
            self.report.timings["total_s"] = round(_now() - self.t0, 1)
            self.close()
        self.judge()
        return self.report

    def close(self) -> None:
        """Stop everything this run started; kill what does not stop."""
        for p in self.tempost:
            p.close()
        for stop in (self.temporal.stop, self.pg.stop, self.sink.stop):
            with contextlib.suppress(Exception):
                stop()


def _print_text(r: Report) -> None:
    print(
        f"""messages {r.messages}: accepted {r.accepted}, delivered {r.delivered}, lost {r.lost}, \
stuck in queue {r.stuck}, duplicated {r.duplicated} ({r.duplicate_rate:.3%}), never accepted {r.not_accepted}
client: {r.client_attempts} Send calls; retried because of {r.retry_reasons or "nothing"}
DSNs sent: {r.dsns}; delivered though never accepted by Send: {r.delivered_not_accepted}"""
    )
    for f in r.faults:
        extra = ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("fault", "at_s"))
        print(f"  {f['at_s']:7.1f}s  {f['fault']:22} {extra}")
    stops = ", ".join(
        f"{s['process']} ({s['phase']}) {'hung' if s['exit_code'] is None else s['exit_code']}"
        for s in r.graceful_stops
    )
    print(f"graceful stops: {stops}")
    for e in r.unexpected_exits:
        print(f"unexpected exit: {e['process']} with {e['exit_code']} at {e['at_s']}s:\n{e['log_tail']}")
    for d in r.not_accepted_details:
        print(f"never accepted: {d}")
    for d in r.lost_details:
        print(f"undelivered: {d}")
    for d in r.duplicate_details:
        print(f"duplicate: {d}")
    for s in r.graceful_stops:
        if s["exit_code"] != 0:
            print(f"graceful stop of {s['process']} exited {s['exit_code']}:\n{s.get('log_tail', '')}")
    print("timings: " + ", ".join(f"{k} {v}" for k, v in r.timings.items()))
    print(("OK" if r.ok else "FAILED: " + "; ".join(r.failures)) + f" (logs: {r.log_dir})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Kill PostgreSQL, Temporal, two workers and the API in turn under load; count lost and "
        "duplicated messages. Exits 1 on any loss, duplicates above --max-dup-rate, a graceful stop that "
        "did not exit 0, a tempost process exiting by itself, or a message never accepted.",
    )
    p.add_argument("-n", "--messages", type=int, default=3000, help="messages to send (default 3000)")
    p.add_argument("--rate", type=float, default=8.0, help="Send calls started per second (default 8)")
    p.add_argument("--domains", type=int, default=50, help="recipient domains (default 50)")
    p.add_argument("--max-dup-rate", type=float, default=0.001, help="allowed duplicates / accepted (0.001)")
    p.add_argument("--rounds", type=int, default=1, help="times the fault schedule runs over the load (1)")
    p.add_argument("--down-time", type=float, default=2.0, help="seconds a killed part stays down (2)")
    p.add_argument("--give-up", type=float, default=180.0, help="seconds a client retries one message (180)")
    p.add_argument("--request-timeout", type=float, default=15.0, help="seconds per Send call (15)")
    p.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds to wait for every delivery after the load"
    )
    p.add_argument("--shutdown-grace", type=float, default=10.0, help="the workers' shutdown_grace, seconds")
    p.add_argument("--workdir", help="data and logs here (default: a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory after a successful run")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = p.parse_args(argv)
    if args.messages < 1 or args.rate <= 0 or args.rounds < 1:
        p.error("--messages, --rate and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run once; 0 when nothing was lost, duplicates stayed in bounds and every graceful stop exited 0."""
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tempost-faults-")).resolve()
    run = FaultRun(args, workdir)

    async def go() -> Report:
        task = asyncio.current_task()
        assert task is not None
        # Ctrl-C and SIGTERM stop the run and its children (also when started where SIGINT is ignored).
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        return await run.run()

    try:
        report = asyncio.run(go())
    except (KeyboardInterrupt, asyncio.CancelledError):
        run.close()
        print(f"faults.py: interrupted; logs in {run.logs}", file=sys.stderr)
        return 130
    except BaseException:
        run.close()
        print(f"faults.py: aborted; logs in {run.logs}", file=sys.stderr)
        raise
    if args.json:
        print(json.dumps(report.__dict__, indent=1))
    else:
        _print_text(report)
    if report.ok and not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
