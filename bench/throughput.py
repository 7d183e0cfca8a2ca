"""Throughput and latency of the whole stack: webapi Send → workflow → SMTP acceptance by a loopback sink.

Starts its own PostgreSQL and Temporal dev server (or uses --database-url/--temporal-address), runs the
worker and the API in this process behind real HTTP, and prints messages per second and the time from
submitting a message to the sink accepting it (p50, p99). A benchmark: it reports, it never fails a build.

    python bench/throughput.py -n 500 --concurrency 32

With --workers N --apis M it runs N `tempost worker` and M `tempost api` processes instead (one
configuration file, Send calls spread over the APIs) to show how Tempost scales out. Either way it prints
the CPU time each part used per delivered message (Tempost's processes, the Temporal server, PostgreSQL,
read from /proc): the numbers docs/operations.md sizes deployments by.

The bench's sender domain signs with an Ed25519 and an RSA-2048 key, as a production setup would
(`--no-dkim` to compare); the signing cost per submission is timed on its own first, beside dkimpy's own
signer for reference. `--compare-dkim R` measures what signing costs in throughput, in one stack: R rounds
of the single-recipient run from the signing sender and from an unsigned one (example.net), alternating
which goes first, then the ratio.

`--json FILE` also writes the figures as JSON (bench/compare.py reads them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dkim
import httpx
from cryptography.hazmat.primitives import serialization
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.dkimcli import generate_key  # noqa: E402
from deploy.embedded import EmbeddedPostgres, TemporalDevServer, free_port  # noqa: E402
from deploy.serve import serve_all  # noqa: E402
from domain.config import Config  # noqa: E402
from domain.dkim import RSA  # noqa: E402
from domain.dkim import sign as dkim_sign  # noqa: E402
from domain.passwords import hash_password  # noqa: E402
from domain.send import AccountIdentity, compose_send, decode_send_request  # noqa: E402
from store.dkimkeys import load_keyring  # noqa: E402
from tests.support.smtpsink import SMTPSink  # noqa: E402

SENDER = "bench@example.org"
# The same account's address in a domain without DKIM: the unsigned side of --compare-dkim.
UNSIGNED_SENDER = "bench@example.net"
PASSWORD = "bench-password"


def _dkim_domains(key_dir: Path) -> dict[str, Any]:
    """example.org signing with a fresh Ed25519 and RSA-2048 key (files under key_dir)."""
    selectors = {}
    for name, algorithm in (("ed", "ed25519-sha256"), ("rsa", "rsa-sha256")):
        path = key_dir / f"{name}.pem"
        path.write_bytes(generate_key(algorithm))
        selectors[name] = {"algorithm": algorithm, "private_key_file": str(path)}
    return {"example.org": {"dkim": {"selectors": selectors, "sign": ["ed", "rsa"]}}}


def _signing_cost(domains: dict[str, Any], rounds: int = 200) -> dict[str, float]:
    """Print the CPU time of signing the bench's single-recipient message, per selector and together;
    returns it in ms by label."""
    config = Config.model_validate({"domains": domains})
    ring = load_keyring(config)
    msg = compose_send(
        decode_send_request(
            json.dumps({"To": [{"Address": "x@d0.example"}], "Subject": "bench-0", "Text": "benchmark"})
        ),
        login_address=SENDER,
        account=AccountIdentity(name="bench", full_name="", addresses=[SENDER]),
        hostname="bench.test",
        now=datetime.now(UTC),
        max_message_size=1 << 20,
        random_token=lambda: "token",
        inline_uploads=[],
        attached_uploads=[],
    )
    signers = ring.signers("example.org")
    print(f"DKIM signing cost per submission ({len(msg.data)} byte message, {rounds} rounds, CPU time):")
    costs = {}
    for label, sels in [*((s.key.algorithm, [s]) for s in signers), ("both, as sent", signers)]:
        dkim_sign(msg.data, sels)
        start = time.process_time()
        for _ in range(rounds):
            dkim_sign(msg.data, sels)
        costs[label] = (time.process_time() - start) / rounds * 1000
        print(f"  {label:32} {costs[label]:7.2f} ms")
    # For reference: dkimpy's public sign() parses the PEM key per call and does RSA in Python (Tempost
    # signed that way before; see domain/dkim.py).
    [rsa_key] = [s.key for s in signers if s.key.algorithm == RSA]
    pkcs1 = rsa_key.signer.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    start = time.process_time()
    for _ in range(rounds // 4):
        dkim.sign(msg.data, b"rsa", b"example.org", pkcs1, canonicalize=(b"relaxed", b"relaxed"))
    label = "rsa-sha256 by dkimpy.sign()"
    costs[label] = (time.process_time() - start) / (rounds // 4) * 1000
    print(f"  {label:32} {costs[label]:7.2f} ms")
    return costs


def _settings(
    database_url: str, temporal_address: str, api_port: int, sink: SMTPSink, domains: dict[str, Any]
) -> dict[str, Any]:
    return {
        "hostname": "bench.test",
        "database": {"url": database_url, "pool_max": 20},
        "temporal": {"address": temporal_address, "task_queue": "bench"},
        "api": {"listen": f"127.0.0.1:{api_port}", "admin_token_file": ""},
        "worker": {"metrics_listen": ""},
        "queue": {"default_transport": "sink", "backoff_base": "1s"},
        "transports": {"sink": {"type": "smtp", "host": sink.host, "port": sink.port, "starttls": "none"}},
        "domains": domains,
        "accounts": [
            {
                "name": "bench",
                "addresses": [SENDER, UNSIGNED_SENDER],
                "password_hash": hash_password(PASSWORD, iterations=1000),
            }
        ],
    }


def _toml(settings: dict[str, Any], prefix: str = "") -> str:
    """The settings as a TOML file, for the `tempost` processes (tables, arrays of tables, plain values)."""
    lines, tables = [], []
    for key, value in settings.items():
        bare = key.replace("_", "").replace("-", "").isalnum()
        quoted = key if bare else json.dumps(key)
        name = f"{prefix}.{quoted}" if prefix else quoted
        if isinstance(value, dict):
            tables.append(f"\n[{name}]\n" + _toml(value, name))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            tables += [f"\n[[{name}]]\n" + _toml(item, name) for item in value]
        else:
            lines.append(f"{quoted} = {json.dumps(value)}")
    return "\n".join(lines) + "".join(tables)


class Processes:
    """N `tempost worker` and M `tempost api` processes from one configuration file, logs in `tmp`."""

    def __init__(self, tmp: Path, settings: dict[str, Any], workers: int, apis: int) -> None:
        self.tmp = tmp
        self.config = tmp / "tempost.toml"
        self.config.write_text(_toml(settings))
        self.workers = workers
        self.api_ports = [free_port() for _ in range(apis)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, role: str, index: int, env: dict[str, str]) -> Path:
        log = self.tmp / f"{role}-{index}.log"
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "deploy.cli", role, "-c", str(self.config)],
                cwd=Path(__file__).resolve().parent.parent,
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=log.open("wb"),
            )
        )
        return log

    async def start(self) -> None:
        logs = [self._start("worker", i, {}) for i in range(self.workers)]
        for i, port in enumerate(self.api_ports):
            self._start("api", i, {"TEMPOST_API_LISTEN": f"127.0.0.1:{port}"})
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(timeout=5) as http:
            for port in self.api_ports:
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"api on port {port} not ready; see {self.tmp}")
                    await asyncio.sleep(0.2)
        for log in logs:
            while b"worker polling task queue" not in log.read_bytes():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker not polling; see {log}")
                await asyncio.sleep(0.2)

    def pids(self, role: str) -> list[int | None]:
        n = self.workers if role == "worker" else len(self.api_ports)
        procs = self.procs[: self.workers] if role == "worker" else self.procs[self.workers :]
        assert len(procs) == n
        return [p.pid for p in procs]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it are split by the last ")".
    return raw.rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int | None, with_children: bool = False) -> float:
    """CPU time (user + system) of a process from /proc; with_children adds its live children and the
    reaped ones (PostgreSQL's backends are children of the postmaster)."""
    if pid is None:
        return 0.0
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # After the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17), numbered from 1.
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                child = _stat(int(entry.name))
                if child is not None and int(child[1]) == pid:
                    ticks += int(child[11]) + int(child[12])
    return ticks / _CLOCK_TICKS


class CPUMeter:
    """CPU seconds each part of the stack used between start() and stop()."""

    def __init__(self, parts: dict[str, list[int | None]], postgres: int | None) -> None:
        self.parts = parts
        self.postgres = postgres
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: sum(_cpu_seconds(pid) for pid in pids) for name, pids in self.parts.items()}
        now["PostgreSQL"] = _cpu_seconds(self.postgres, with_children=True)
        return now

    def start(self) -> None:
        self.before = self._now()

    def report(self, delivered: int, seconds: float) -> dict[str, float]:
        """Print, and return, the CPU milliseconds each part used per delivered message."""
        after = self._now()
        print(f"CPU per delivered message ({delivered} messages, {seconds:.1f}s):")
        out = {}
        for name, total in after.items():
            used = total - self.before.get(name, 0.0)
            out[name] = used * 1000 / max(delivered, 1)
            share = used / max(seconds, 1e-9) * 100
            print(f"  {name:34} {out[name]:6.1f} ms/msg  ({share:5.1f}% of one core)")
        return out


async def _wait_delivered(sink: SMTPSink, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.delivered_to()) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _single(
    https: list[httpx.AsyncClient],
    sink: SMTPSink,
    n: int,
    concurrency: int,
    domains: int,
    timeout: float,
    rate: float,
    temporal: Client | None,
    meter: CPUMeter | None = None,
    sender: str = SENDER,
) -> dict[str, Any]:
    """N single-recipient messages over `domains` recipient domains, `concurrency` Send calls in flight;
    returns the figures printed (msg_per_s; cpu_ms_per_msg, each part's CPU per message, with a meter).

    With `rate`, Send calls start at that many per second (a moderate, steady load) instead of back to back.
    With a Temporal client, also prints where a message's time goes, from its workflow's history.
    """
    submitted: dict[str, float] = {}
    workflow_ids: dict[str, str] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        if rate:
            await asyncio.sleep(i / rate)
        async with sem:
            tag = f"bench-{i}"
            rcpt = f"rcpt{i}@dest{i % domains}.example"
            req = {"To": [{"Address": rcpt}], "Subject": tag, "Text": "benchmark"}
            submitted[tag] = time.monotonic()
            http = https[i % len(https)]
            r = await http.post("/webapi/v0/Send", data={"request": json.dumps(req)}, auth=(sender, PASSWORD))
            r.raise_for_status()
            workflow_ids[tag] = f"msg-{r.json()['Submissions'][0]['QueueMsgID']}"

    before = len(sink.transactions)
    if meter is not None:
        meter.start()
    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    t_submitted = time.monotonic()
    await _wait_delivered(sink, before + n, timeout)
    t1 = time.monotonic()
    lat: list[float] = []
    accepted: dict[str, float] = {}
    for t in sink.transactions[before:]:
        for line in t.data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                tag = line[9:].decode()
                if tag in submitted:
                    lat.append(t.accepted_at - submitted[tag])
                    accepted[tag] = t.accepted_at
    done = len(sink.transactions) - before
    result: dict[str, Any] = {
        "messages": n,
        "domains": domains,
        "rate": rate,
        "delivered": done,
        "seconds": t1 - t0,
        "msg_per_s": done / (t1 - t0),
        "submit_msg_per_s": n / (t_submitted - t0),
        "latency_p50_ms": _pct(lat, 50) * 1000,
        "latency_p99_ms": _pct(lat, 99) * 1000,
    }
    print(
        f"single-recipient over {domains} domains: {done}/{n} delivered in {result['seconds']:.2f}s "
        f"= {result['msg_per_s']:.1f} msg/s "
        f"(submit {result['submit_msg_per_s']:.1f} msg/s); latency p50 {result['latency_p50_ms']:.0f} ms, "
        f"p99 {result['latency_p99_ms']:.0f} ms"
    )
    if meter is not None:
        result["cpu_ms_per_msg"] = meter.report(done, t1 - t0)
    if temporal is not None:
        result |= await _breakdown(temporal, workflow_ids, submitted, accepted)
    return result


async def _compare_dkim(rounds: int, signing_ms: float, run: Any) -> None:
    """Alternate signed and unsigned single-recipient runs in one stack and print what signing costs.

    `run(sender)` is one measured run. The order flips every round, so a drifting machine (warming caches,
    a growing database, other load) weighs on both sides alike.
    """
    rates: dict[str, list[float]] = {"signed": [], "unsigned": []}
    cpus: dict[str, list[float]] = {"signed": [], "unsigned": []}
    for i in range(rounds):
        for side in ("signed", "unsigned") if i % 2 == 0 else ("unsigned", "signed"):
            print(f"-- round {i + 1}, {side}:")
            result = await run(SENDER if side == "signed" else UNSIGNED_SENDER)
            rates[side].append(result["msg_per_s"])
            cpus[side].append(sum(result.get("cpu_ms_per_msg", {}).values()))
    signed, unsigned = statistics.fmean(rates["signed"]), statistics.fmean(rates["unsigned"])
    print(f"DKIM signing vs unsigned, {rounds} alternating rounds each:")
    for side in ("signed", "unsigned"):
        runs = ", ".join(f"{r:.1f}" for r in rates[side])
        print(
            f"  {side:9} {statistics.fmean(rates[side]):6.1f} msg/s (runs: {runs}); "
            f"whole stack {statistics.fmean(cpus[side]):5.1f} ms CPU per delivered message"
        )
    print(f"  signed/unsigned throughput: {signed / unsigned:.3f} ({(signed / unsigned - 1) * 100:+.1f}%)")
    # One stalled run (the machine is shared) moves a mean a lot: the ratio within each round, and the
    # inverse ratio of CPU per message (what bounds throughput when the stack saturates the cores), move less.
    pairs = [s / u for s, u in zip(rates["signed"], rates["unsigned"], strict=True)]
    stack = statistics.fmean(cpus["signed"])
    print(
        f"  per round: {', '.join(f'{p:.3f}' for p in pairs)} (median {statistics.median(pairs):.3f}); "
        f"CPU per message unsigned/signed: {statistics.fmean(cpus['unsigned']) / stack:.3f}"
    )
    print(
        f"  signing alone: {signing_ms:.2f} ms CPU per submission = {signing_ms / stack * 100:.1f}% "
        f"of the stack's CPU per delivered message"
    )


async def _breakdown(
    temporal: Client, workflow_ids: dict[str, str], submitted: dict[str, float], accepted: dict[str, float]
) -> dict[str, Any]:
    """Median time of each stage between Send and the workflow's completion, from up to 50 histories;
    returns the median number of history events and the stages in ms."""
    # The sink stamps acceptance with this process's monotonic clock; histories carry wall-clock times.
    wall = time.time() - time.monotonic()
    stages: dict[str, list[float]] = {}
    events: list[int] = []
    for tag in list(accepted)[:50]:
        handle = temporal.get_workflow_handle(workflow_ids[tag])
        await handle.result()  # the whole history, to the workflow's completion
        history = await handle.fetch_history()
        events.append(len(history.events))
        first: dict[int, float] = {}
        for e in history.events:
            first.setdefault(e.event_type, e.event_time.ToDatetime(tzinfo=UTC).timestamp())
        # Each stage ends at the first event of its kind; None is the sink's 250.
        if EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED in first:
            marks = [
                ("Send → workflow started", EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED),
                ("→ first workflow task done", EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
                ("→ delivery activity started", EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED),
                ("→ 250 from the sink", None),
                ("→ activity completed", EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED),
                ("→ workflow completed", EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED),
            ]
        else:
            # The first attempt ran as a local activity inside the first workflow task: no activity
            # events, its outcome is a marker recorded when that task completes, after the 250.
            marks = [
                ("Send → workflow started", EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED),
                ("→ 250 from the sink", None),
                ("→ first attempt recorded (local activity)", EventType.EVENT_TYPE_MARKER_RECORDED),
                ("→ workflow completed", EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED),
            ]
        prev = submitted[tag] + wall
        for name, kind in marks:
            t = accepted[tag] + wall if kind is None else first.get(kind)
            if t is None:
                break
            stages.setdefault(name, []).append(t - prev)
            prev = t
    if not events:
        return {}
    median_events = statistics.median(events)
    print(f"where the time goes (median of {len(events)}; {median_events:.0f} history events):")
    stages_ms = {name: statistics.median(values) * 1000 for name, values in stages.items()}
    for name, ms in stages_ms.items():
        print(f"  {name:41} {ms:7.1f} ms")
    return {"history_events": median_events, "history_events_max": max(events), "stages_ms": stages_ms}


async def _fanout(
    http: httpx.AsyncClient, sink: SMTPSink, rcpts: int, domains: int, timeout: float, temporal: Client
) -> dict[str, Any]:
    """One message to `rcpts` recipients spread over `domains` domains: one transaction per domain.
    Returns the figures printed."""
    req = {
        "To": [{"Address": f"r{i}@fan{i % domains}.example"} for i in range(rcpts)],
        "Subject": "bench-fanout",
        "Text": "benchmark",
    }
    before = len(sink.delivered_to())
    t0 = time.monotonic()
    r = await http.post("/webapi/v0/Send", data={"request": json.dumps(req)}, auth=(SENDER, PASSWORD))
    r.raise_for_status()
    t_accepted = time.monotonic()
    await _wait_delivered(sink, before + rcpts, timeout)
    t1 = time.monotonic()
    done = len(sink.delivered_to()) - before
    lat = [t.accepted_at - t0 for t in sink.transactions if t.accepted_at >= t0]
    print(
        f"fan-out: {done}/{rcpts} recipients over {domains} domains in {t1 - t0:.2f}s "
        f"= {done / (t1 - t0):.1f} rcpt/s (Send answered in {(t_accepted - t0) * 1000:.0f} ms); "
        f"per-transaction latency p50 {_pct(lat, 50) * 1000:.0f} ms, "
        f"p99 {_pct(lat, 99) * 1000:.0f} ms; mean {statistics.fmean(lat) * 1000 if lat else 0:.0f} ms"
    )
    handle = temporal.get_workflow_handle(f"msg-{r.json()['Submissions'][0]['QueueMsgID']}")
    await handle.result()
    kinds = [e.event_type for e in (await handle.fetch_history()).events]
    activities = kinds.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    signals = kinds.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    print(f"  its workflow: {len(kinds)} history events, {activities} activities, {signals} signals")
    return {
        "recipients": rcpts,
        "domains": domains,
        "delivered": done,
        "seconds": t1 - t0,
        "send_answered_ms": (t_accepted - t0) * 1000,
        "history_events": len(kinds),
        "activities": activities,
        "signals": signals,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="single-recipient messages")
    ap.add_argument("--concurrency", type=int, default=16, help="Send calls in flight")
    ap.add_argument("--rate", type=float, default=0, help="start Send calls at this many per second")
    ap.add_argument("--domains", type=int, default=10, help="recipient domains of the single-recipient run")
    ap.add_argument("--fanout-rcpts", type=int, default=100, help="recipients of the fan-out run (0: none)")
    ap.add_argument("--fanout-domains", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--database-url", default="", help="use this PostgreSQL instead of an embedded one")
    ap.add_argument("--temporal-address", default="", help="use this Temporal instead of a dev server")
    ap.add_argument("--workers", type=int, default=0, help="run N `tempost worker` processes (0: in-process)")
    ap.add_argument("--apis", type=int, default=1, help="with --workers: M `tempost api` processes")
    ap.add_argument("--warmup", type=int, default=0, help="messages sent (and not measured) first")
    ap.add_argument("--no-dkim", action="store_true", help="send unsigned mail (to compare)")
    ap.add_argument(
        "--compare-dkim",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="instead of one single-recipient run: ROUNDS signed and ROUNDS unsigned ones, alternating",
    )
    ap.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args()
    results: dict[str, Any] = {"workers": args.workers, "apis": args.apis if args.workers else 0}

    with tempfile.TemporaryDirectory(prefix="tempost-bench-") as tmp:
        domains = _dkim_domains(Path(tmp))
        results["dkim_sign_ms"] = _signing_cost(domains)
        signing_ms = results["dkim_sign_ms"]["both, as sent"]
        if args.no_dkim:
            domains = {}
        pg = temporal = None
        database_url, temporal_address = args.database_url, args.temporal_address
        if not database_url:
            pg = EmbeddedPostgres(Path(tmp) / "pg", free_port(), database="bench")
            database_url = pg.start()
        if not temporal_address:
            temporal = TemporalDevServer(Path(tmp) / "temporal.db", port=free_port(), ui_port=free_port())
            temporal.start()
            temporal_address = temporal.address
        sink = SMTPSink().start()
        api_port = free_port()
        settings = _settings(database_url, temporal_address, api_port, sink, domains)
        stop, started = asyncio.Event(), asyncio.Event()
        server = processes = None
        if args.workers:
            processes = Processes(Path(tmp), settings, args.workers, max(args.apis, 1))
            api_ports = processes.api_ports
        else:
            server = asyncio.create_task(serve_all(Config.model_validate(settings), stop, started))
            api_ports = [api_port]
        parts: dict[str, list[int | None]]
        try:
            if processes is not None:
                await processes.start()
                parts = {
                    f"tempost worker x{args.workers}": processes.pids("worker"),
                    f"tempost api x{len(api_ports)}": processes.pids("api"),
                    "benchmark client and sink": [os.getpid()],
                }
                results["client_part"] = "benchmark client and sink"
                note = ""
            else:
                await asyncio.wait_for(started.wait(), 60)
                parts = {"tempost serve (worker + API)": [os.getpid()]}
                note = "  (the serve figure includes this benchmark's client and SMTP sink)"
                results["client_part"] = ""
            parts["Temporal dev server"] = [temporal.pid if temporal is not None else None]
            meter = CPUMeter(parts, pg.pid if pg is not None else None)
            limits = httpx.Limits(max_connections=args.concurrency)
            https = [
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60)
                for port in api_ports
            ]
            try:
                temporal_client = await Client.connect(temporal_address)
                if args.warmup:
                    await _single(
                        https, sink, args.warmup, args.concurrency, args.domains, args.timeout, 0, None
                    )
                if args.compare_dkim:

                    def run(sender: str) -> Any:
                        return _single(
                            https,
                            sink,
                            args.n,
                            args.concurrency,
                            args.domains,
                            args.timeout,
                            args.rate,
                            None,
                            meter,
                            sender,
                        )

                    await _compare_dkim(args.compare_dkim, signing_ms, run)
                else:
                    results["single"] = await _single(
                        https,
                        sink,
                        args.n,
                        args.concurrency,
                        args.domains,
                        args.timeout,
                        args.rate,
                        temporal_client,
                        meter,
                    )
                if note:
                    print(note)
                if args.fanout_rcpts:
                    results["fanout"] = await _fanout(
                        https[0], sink, args.fanout_rcpts, args.fanout_domains, args.timeout, temporal_client
                    )
            finally:
                for http in https:
                    await http.aclose()
        finally:
            stop.set()
            if server is not None:
                await asyncio.gather(server, return_exceptions=True)
            if processes is not None:
                processes.stop()
            sink.stop()
            if temporal is not None:
                temporal.stop()
            if pg is not None:
                pg.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
