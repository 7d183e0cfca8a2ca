"""Fault injection (bench/faults.py): every part killed with SIGKILL under load loses no accepted message.

The small form of the run the README documents: 300 messages through a separate `tempost api` into two
`tempost worker` processes, while each worker, the API, PostgreSQL and the Temporal dev server are killed
with SIGKILL and started again, and each tempost process is stopped once with SIGTERM. Select it alone with
`pytest -m faults`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import faults
from tests.support.smtpsink import Transaction

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.faults
@pytest.mark.timeout(420)
def test_killing_each_part_under_load_loses_nothing_accepted(tmp_path: Path) -> None:
    # 300 messages at 4/s: 75 s of load with the eight faults spread over it, then the drain.
    cmd = [sys.executable, str(REPO / "bench" / "faults.py"), "-n", "300", "--rate", "4"]
    cmd += ["--drain-timeout", "150", "--workdir", str(tmp_path), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        out, err = proc.communicate(timeout=380)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the run stop the servers it started (each in its own session) before it exits.
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the fault-injection run did not finish; logs in {tmp_path / 'logs'}\n{err.decode()}")
    assert out, f"no report (exit {proc.returncode}); logs in {tmp_path / 'logs'}\n{err.decode()}"
    report = json.loads(out)
    context = f"logs in {report['log_dir']}; report:\n{json.dumps(report, indent=1)}"
    assert report["accepted"] == 300, context
    assert report["lost"] == 0 and report["stuck"] == 0 and report["delivered"] == 300, context
    assert report["duplicate_rate"] <= 0.001, context
    # Every part went down once by SIGKILL and every tempost process once by SIGTERM, then once more at
    # the end: all six graceful stops exited 0.
    assert [f["fault"] for f in report["faults"]] == [
        "kill -9 worker-1",
        "SIGTERM worker-2",
        "kill -9 api",
        "kill -9 postgresql",
        "SIGTERM api",
        "kill -9 temporal",
        "kill -9 worker-2",
        "SIGTERM worker-1",
    ], context
    assert len(report["graceful_stops"]) == 6, context
    assert all(s["exit_code"] == 0 for s in report["graceful_stops"]), context
    assert report["unexpected_exits"] == [], context
    assert report["ok"] and proc.returncode == 0, context


def _delivery(run: faults.FaultRun, i: int, message_id: str) -> Transaction:
    data = f"Message-ID: {message_id}\r\nSubject: faults {run.run_id} #{i}\r\n\r\nhello\r\n".encode()
    return Transaction("faults@example.org", [run.recipient(i)], data)


def test_counting_finds_lost_late_and_duplicated_messages(tmp_path: Path) -> None:
    # The harness's own arithmetic, on deliveries made up here (no servers run: PostgreSQL is unreachable,
    # so an undelivered message counts as lost, not as still queued).
    run = faults.FaultRun(faults.parse_args(["-n", "5"]), tmp_path)
    run.accepted = {i: {"queue_msg_id": 100 + i, "message_id": f"<m{i}@x>"} for i in range(4)}
    run.not_accepted = {4: "gave up"}
    run.sink.transactions = [
        _delivery(run, 0, "<m0@x>"),
        # Redelivered: the same message twice (SMTP's window between the 250 and its record).
        _delivery(run, 1, "<m1@x>"),
        _delivery(run, 1, "<m1@x>"),
        # Queued twice: two Message-IDs for one Idempotency-Key.
        _delivery(run, 2, "<m2@x>"),
        _delivery(run, 2, "<other@x>"),
        # Another run's message and a DSN are not counted as ours.
        Transaction("faults@example.org", [run.recipient(3)], b"Subject: faults 0ther #3\r\n\r\nx"),
        Transaction("", ["faults@example.org"], b"Subject: Delivery failure\r\n\r\nx"),
    ]
    run.count()
    run.judge()
    r = run.report
    assert (r.accepted, r.delivered, r.lost, r.stuck, r.duplicated, r.dsns) == (4, 3, 1, 0, 2, 1)
    assert r.duplicate_rate == 0.5
    assert [d["distinct_message_ids"] for d in r.duplicate_details] == [1, 2]
    assert r.lost_details[0]["message"] == 3
    assert not r.ok
    assert any("lost" in f for f in r.failures)
    assert any("Idempotency-Key" in f for f in r.failures)
    assert any("never accepted" in f for f in r.failures)
