"""Throughput and latency of the whole stack: webapi Send → workflow → SMTP acceptance by a loopback sink.

Starts its own PostgreSQL and Temporal dev server (or uses --database-url/--temporal-address), runs the
worker and the API in this process behind real HTTP, and prints messages per second and the time from
submitting a message to the sink accepting it (p50, p99). A benchmark: it reports, it never fails a build.

    python bench/throughput.py -n 500 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.embedded import EmbeddedPostgres, TemporalDevServer, free_port  # noqa: E402
from deploy.serve import serve_all  # noqa: E402
from domain.config import Config  # noqa: E402
from domain.passwords import hash_password  # noqa: E402
from tests.support.smtpsink import SMTPSink  # noqa: E402

SENDER = "bench@example.org"
PASSWORD = "bench-password"


def _config(database_url: str, temporal_address: str, api_port: int, sink: SMTPSink) -> Config:
    return Config.model_validate(
        {
            "hostname": "bench.test",
            "database": {"url": database_url, "pool_max": 20},
            "temporal": {"address": temporal_address, "task_queue": "bench"},
            "api": {"listen": f"127.0.0.1:{api_port}", "admin_token_file": ""},
            "worker": {"metrics_listen": ""},
            "queue": {"default_transport": "sink", "backoff_base": "1s"},
            "transports": {
                "sink": {"type": "smtp", "host": sink.host, "port": sink.port, "starttls": "none"}
            },
            "accounts": [
                {
                    "name": "bench",
                    "addresses": [SENDER],
                    "password_hash": hash_password(PASSWORD, iterations=1000),
                }
            ],
        }
    )


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def _wait_delivered(sink: SMTPSink, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.delivered_to()) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _single(
    http: httpx.AsyncClient, sink: SMTPSink, n: int, concurrency: int, domains: int, timeout: float
) -> None:
    """N single-recipient messages over `domains` recipient domains, `concurrency` Send calls in flight."""
    submitted: dict[str, float] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            tag = f"bench-{i}"
            rcpt = f"rcpt{i}@dest{i % domains}.example"
            req = {"To": [{"Address": rcpt}], "Subject": tag, "Text": "benchmark"}
            submitted[tag] = time.monotonic()
            r = await http.post("/webapi/v0/Send", data={"request": json.dumps(req)}, auth=(SENDER, PASSWORD))
            r.raise_for_status()

    before = len(sink.transactions)
    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    t_submitted = time.monotonic()
    await _wait_delivered(sink, before + n, timeout)
    t1 = time.monotonic()
    lat: list[float] = []
    for t in sink.transactions[before:]:
        for line in t.data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                tag = line[9:].decode()
                if tag in submitted:
                    lat.append(t.accepted_at - submitted[tag])
    done = len(sink.transactions) - before
    print(
        f"single-recipient over {domains} domains: {done}/{n} delivered in {t1 - t0:.2f}s "
        f"= {done / (t1 - t0):.1f} msg/s "
        f"(submit {n / (t_submitted - t0):.1f} msg/s); latency p50 {_pct(lat, 50) * 1000:.0f} ms, "
        f"p99 {_pct(lat, 99) * 1000:.0f} ms"
    )


async def _fanout(http: httpx.AsyncClient, sink: SMTPSink, rcpts: int, domains: int, timeout: float) -> None:
    """One message to `rcpts` recipients spread over `domains` domains: one transaction per domain."""
    req = {
        "To": [{"Address": f"r{i}@fan{i % domains}.example"} for i in range(rcpts)],
        "Subject": "bench-fanout",
        "Text": "benchmark",
    }
    before = len(sink.delivered_to())
    t0 = time.monotonic()
    r = await http.post("/webapi/v0/Send", data={"request": json.dumps(req)}, auth=(SENDER, PASSWORD))
    r.raise_for_status()
    await _wait_delivered(sink, before + rcpts, timeout)
    t1 = time.monotonic()
    done = len(sink.delivered_to()) - before
    lat = [t.accepted_at - t0 for t in sink.transactions if t.accepted_at >= t0]
    print(
        f"fan-out: {done}/{rcpts} recipients over {domains} domains in {t1 - t0:.2f}s "
        f"= {done / (t1 - t0):.1f} rcpt/s; per-transaction latency p50 {_pct(lat, 50) * 1000:.0f} ms, "
        f"p99 {_pct(lat, 99) * 1000:.0f} ms; mean {statistics.fmean(lat) * 1000 if lat else 0:.0f} ms"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="single-recipient messages")
    ap.add_argument("--concurrency", type=int, default=16, help="Send calls in flight")
    ap.add_argument("--domains", type=int, default=10, help="recipient domains of the single-recipient run")
    ap.add_argument("--fanout-rcpts", type=int, default=100)
    ap.add_argument("--fanout-domains", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--database-url", default="", help="use this PostgreSQL instead of an embedded one")
    ap.add_argument("--temporal-address", default="", help="use this Temporal instead of a dev server")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tempost-bench-") as tmp:
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
        config = _config(database_url, temporal_address, api_port, sink)
        stop, started = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(serve_all(config, stop, started))
        try:
            await asyncio.wait_for(started.wait(), 60)
            limits = httpx.Limits(max_connections=args.concurrency)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{api_port}", limits=limits, timeout=60
            ) as http:
                await _single(http, sink, args.n, args.concurrency, args.domains, args.timeout)
                await _fanout(http, sink, args.fanout_rcpts, args.fanout_domains, args.timeout)
        finally:
            stop.set()
            await asyncio.gather(server, return_exceptions=True)
            sink.stop()
            if temporal is not None:
                temporal.stop()
            if pg is not None:
                pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
