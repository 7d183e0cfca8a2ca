"""What N queued messages cost, and how fast a bulk admin operation reaches them all.

Queues N single-recipient messages for tomorrow (each its own workflow waiting on a timer) and reports the
resident memory this grew in the Tempost process (worker and API) and the Temporal dev server. Then times
one `POST /admin/v0/queue/{hold,release,drop}` over all of them, and how long until every workflow has
applied the drop (all N retired). A benchmark: it reports, it never fails a build.

    python bench/bulk.py -n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import PASSWORD, SENDER, _config  # noqa: E402
from deploy.embedded import EmbeddedPostgres, TemporalDevServer, free_port  # noqa: E402
from deploy.serve import serve_all  # noqa: E402
from tests.support.smtpsink import SMTPSink  # noqa: E402

TOKEN = "bench-admin-token"


async def _queue(http: httpx.AsyncClient, n: int, concurrency: int) -> float:
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            req = {"To": [{"Address": f"r{i}@d{i % 50}.example"}], "Text": "bulk", "FutureRelease": later}
            r = await http.post("/webapi/v0/Send", data={"request": json.dumps(req)}, auth=(SENDER, PASSWORD))
            r.raise_for_status()

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.monotonic() - t0


def _rss_mib(pid: int | str | None) -> float:
    """Resident memory of a process from /proc (Linux), in MiB; NaN where it cannot be read."""
    if pid is None:
        return float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _memory(temporal: TemporalDevServer) -> tuple[float, float]:
    return _rss_mib("self"), _rss_mib(temporal.pid)


async def _op(http: httpx.AsyncClient, op: str) -> tuple[int, float]:
    t0 = time.monotonic()
    r = await http.post(
        f"/admin/v0/queue/{op}",
        json={"Filter": {}},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=600,
    )
    r.raise_for_status()
    return r.json()["Affected"], time.monotonic() - t0


async def _until_empty(http: httpx.AsyncClient, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = await http.get("/admin/v0/queue/count", headers={"Authorization": f"Bearer {TOKEN}"})
        if r.json()["Count"] == 0:
            break
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="queued messages (workflows)")
    ap.add_argument("--concurrency", type=int, default=32, help="Send calls in flight while queueing")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    os.environ["TEMPOST_ADMIN_TOKEN"] = TOKEN
    with tempfile.TemporaryDirectory(prefix="tempost-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", free_port(), database="bench")
        database_url = pg.start()
        temporal = TemporalDevServer(Path(tmp) / "temporal.db", port=free_port(), ui_port=free_port())
        temporal.start()
        sink = SMTPSink().start()
        api_port = free_port()
        config = _config(database_url, temporal.address, api_port, sink)
        stop, started = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(serve_all(config, stop, started))
        try:
            await asyncio.wait_for(started.wait(), 60)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as http:
                mine0, server0 = _memory(temporal)
                took = await _queue(http, args.n, args.concurrency)
                print(f"queued {args.n} messages in {took:.1f}s")
                # Workflow tasks finish a moment after the last Send returns.
                await asyncio.sleep(5)
                mine, server_mib = _memory(temporal)
                per = 1024 * ((mine - mine0) + (server_mib - server0)) / args.n
                print(
                    f"memory with {args.n} queued: tempost process {mine:.0f} MiB (+{mine - mine0:.0f}), "
                    f"temporal server {server_mib:.0f} MiB (+{server_mib - server0:.0f}); "
                    f"{per:.1f} KiB per message"
                )
                for op in ("hold", "release", "drop"):
                    affected, secs = await _op(http, op)
                    print(f"{op}: {affected} messages in {secs:.2f}s = {affected / secs:.0f} workflows/s")
                empty = await _until_empty(http, args.timeout)
                print(f"all {args.n} retired {empty:.2f}s after the drop returned")
        finally:
            stop.set()
            await asyncio.gather(server, return_exceptions=True)
            sink.stop()
            temporal.stop()
            pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
