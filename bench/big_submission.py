"""One Send to thousands of FromID recipients: delivered, dropped, and a clean shutdown (issue 11 item 7).

A login in `fromid_login_addresses` gives every recipient its own MAIL FROM, so every recipient is its own
group in the submission's workflow. Starts its own PostgreSQL, Temporal dev server, worker and API (as
`tempost serve` does) and a loopback SMTP sink, then:

1. sends one message to N recipients over D domains and times it until the sink has every copy;
2. sends another one to N recipients held by a hold rule, drops it with one bulk call, and times it until
   the queue is empty;
3. stops the worker and API as SIGTERM would, and times the shutdown.

A benchmark: it reports, it never fails a build.

    python bench/big_submission.py -n 10000 --domains 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.embedded import EmbeddedPostgres, TemporalDevServer, free_port  # noqa: E402
from deploy.serve import serve_all  # noqa: E402
from domain.config import Config  # noqa: E402
from domain.passwords import hash_password  # noqa: E402
from tests.support.smtpsink import SMTPSink  # noqa: E402

SENDER = "bench@example.org"
PASSWORD = "bench-password"
TOKEN = "bench-admin-token"


def _config(database_url: str, temporal_address: str, api_port: int, sink: SMTPSink, token: Path) -> Config:
    return Config.model_validate(
        {
            "hostname": "bench.test",
            "database": {"url": database_url, "pool_max": 20},
            "temporal": {"address": temporal_address, "task_queue": "bench"},
            "api": {"listen": f"127.0.0.1:{api_port}", "admin_token_file": str(token)},
            "worker": {"metrics_listen": ""},
            "queue": {"default_transport": "sink", "backoff_base": "1s"},
            "transports": {
                "sink": {"type": "smtp", "host": sink.host, "port": sink.port, "starttls": "none"}
            },
            "domains": {"example.org": {"localpart_catchall_separator": "+"}},
            "accounts": [
                {
                    "name": "bench",
                    "addresses": [SENDER],
                    "fromid_login_addresses": [SENDER],
                    "password_hash": hash_password(PASSWORD, iterations=1000),
                }
            ],
        }
    )


async def _send(http: httpx.AsyncClient, n: int, domains: int, tag: str) -> int:
    req = {
        "To": [{"Address": f"{tag}{i}@d{i % domains}.example"} for i in range(n)],
        "Subject": f"bench-{tag}",
        "Text": "benchmark",
    }
    r = await http.post("/webapi/v0/Send", data={"request": json.dumps(req)}, auth=(SENDER, PASSWORD))
    r.raise_for_status()
    base_id: int = r.json()["Submissions"][0]["QueueMsgID"]
    return base_id


async def _history(temporal: Client, base_id: int) -> str:
    """Events and activities over every run of the submission's workflow (it may continue as new)."""
    events = activities = runs = 0
    async for wf in temporal.list_workflows(f"WorkflowId = 'msg-{base_id}'"):
        runs += 1
        async for e in temporal.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history_events():
            events += 1
            activities += e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    return f"{runs} run(s), {events} history events, {activities} activities"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10_000, help="recipients of each submission")
    ap.add_argument("--domains", type=int, default=100, help="recipient domains")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tempost-bench-") as tmp:
        token = Path(tmp) / "token"
        token.write_text(TOKEN)
        pg = EmbeddedPostgres(Path(tmp) / "pg", free_port(), database="bench")
        database_url = pg.start()
        temporal = TemporalDevServer(Path(tmp) / "temporal.db", port=free_port(), ui_port=free_port())
        temporal.start()
        sink = SMTPSink().start()
        api_port = free_port()
        config = _config(database_url, temporal.address, api_port, sink, token)
        stop, started = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(serve_all(config, stop, started))
        admin = {"Authorization": f"Bearer {TOKEN}"}
        try:
            await asyncio.wait_for(started.wait(), 60)
            temporal_client = await Client.connect(temporal.address)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=300) as http:
                t0 = time.monotonic()
                base_id = await _send(http, args.n, args.domains, "r")
                t_sent = time.monotonic()
                deadline = t0 + args.timeout
                while len(sink.delivered_to()) < args.n and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                t1 = time.monotonic()
                copies = Counter(sink.delivered_to())
                print(
                    f"delivered {len(copies)}/{args.n} FromID recipients over {args.domains} domains in "
                    f"{t1 - t0:.1f}s = {len(copies) / (t1 - t0):.1f} rcpt/s (Send answered in "
                    f"{t_sent - t0:.1f}s); {sum(copies.values()) - len(copies)} duplicates"
                )
                await temporal_client.get_workflow_handle(f"msg-{base_id}").result()
                print(f"  its workflow: {await _history(temporal_client, base_id)}")

                rule = await http.post("/admin/v0/holdrules", json={"Account": "bench"}, headers=admin)
                rule.raise_for_status()
                held = await _send(http, args.n, args.domains, "h")
                t2 = time.monotonic()
                r = await http.post(
                    "/admin/v0/queue/drop", json={"Filter": {"Account": "bench"}}, headers=admin
                )
                r.raise_for_status()
                t3 = time.monotonic()
                await temporal_client.get_workflow_handle(f"msg-{held}").result()
                count = (await http.get("/admin/v0/queue/count", headers=admin)).json()["Count"]
                t4 = time.monotonic()
                print(
                    f"dropped {r.json()['Affected']} held recipients: bulk call {t3 - t2:.1f}s, queue empty "
                    f"after {t4 - t2:.1f}s ({count} left)"
                )
        finally:
            t5 = time.monotonic()
            stop.set()
            await asyncio.gather(server, return_exceptions=True)
            print(f"shutdown took {time.monotonic() - t5:.1f}s")
            sink.stop()
            temporal.stop()
            pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
