"""Postfix doing bench/throughput.py's jobs on this machine, so Tempost's numbers have a yardstick.

Starts a private Postfix instance (tests/support/postfix.py: its own config, queue and data directories in a
temporary directory, smtpd on a free loopback port; the system's instance and port 25 are never touched) that
relays everything to the same loopback sink throughput.py uses (tests.support.smtpsink.SMTPSink), then:

- fan-out (default): ONE message to --rcpts recipients r{i}@fan{i % D}.example over --domains D domains,
  submitted to smtpd in one pipelined transaction (warm connection, like throughput.py's pooled HTTP one)
  after --warmup single-recipient messages (throughput.py's `-n 10` before its fan-out). Timed from MAIL FROM
  until the sink has accepted every recipient; also counts the sink's transactions.
- single-recipient (`-n N`): N messages to rcpt{i}@dest{i % D}.example, sent as fast as --concurrency SMTP
  connections allow; timed from the first MAIL FROM until the sink has accepted all N.

Needs root and Debian's postfix (`apt-get install postfix`); without them it says so and exits 0. A benchmark:
it reports, it never fails a build.

    python bench/postfix_fanout.py                       # 1000 recipients over 20 domains
    python bench/postfix_fanout.py -n 600 --domains 300  # single-recipient messages

`--json FILE` also writes the figures as JSON (bench/compare.py reads them; {"skipped": why} without root
or postfix).

Routing. Postfix's queue manager groups recipients by destination = transport + nexthop, not by recipient
domain: with `fanN.example smtp:[127.0.0.1]:PORT` for every domain (--one-nexthop) all 1000 recipients form
ONE destination (concurrency starting at 5, at most 20, connections reused: about 14). It still made 20
transactions of 50 recipients, each of one domain, only because qmgr sorts a message's recipients by domain
and 50 (the recipient limit) is exactly 1000/20. Tempost's destination is the recipient domain, so by default
every domain gets a nexthop of its own, a loopback address (fanN.example → [127.1.0.N+1]:PORT; Linux routes
all of 127/8 to lo) and the sink listens on 0.0.0.0 for the run. Result: 20 destinations, 20 transactions of
50 recipients of one domain each, over 20 connections, all at once. Both ways took the same time here.

Postfix defaults that matter here (all left alone): default_destination_recipient_limit = 50 (recipients
per transaction: 1000/20 domains is exactly 50 per domain), default_destination_concurrency_limit = 20 and
initial_destination_concurrency = 5 (parallel deliveries per destination), default_process_limit = 100
(smtp processes in all), smtpd_recipient_limit = 1000 (more recipients in one submission get 452),
in_flow_delay = 1s (smtpd slows submitters down when mail arrives faster than it leaves),
smtp_connection_cache_on_demand = yes (reuse of connections to a busy destination). Changed for loopback:
no DNS (smtp_host_lookup = native, smtp_dns_support_level = disabled, smtpd_peername_lookup = no), no TLS,
no chroot; log to a file via postlogd.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.embedded import free_port  # noqa: E402
from tests.support.postfix import PostfixInstance, skip_reason  # noqa: E402
from tests.support.smtpsink import SMTPSink  # noqa: E402

SENDER = "bench@example.org"
# Second octet of each domain family's nexthop addresses, so fan*, dest* and warm* never share a destination.
_FAMILIES = {"fan": 1, "dest": 2, "warm": 3}


def _routes(counts: dict[str, int], sink: SMTPSink, one_nexthop: bool) -> dict[str, str]:
    """transport_maps entries for `counts[family]` domains of each family: fan0.example → its nexthop."""
    routes = {}
    for family, count in counts.items():
        for k in range(count):
            ip = sink.host if one_nexthop else f"127.{_FAMILIES[family]}.{k // 250}.{k % 250 + 1}"
            routes[f"{family}{k}.example"] = f"smtp:[{ip}]:{sink.port}"
    return routes


def _start_postfix(sink: SMTPSink, routes: dict[str, str]) -> PostfixInstance:
    """A private Postfix whose transport_maps route every domain to the sink."""
    entries = ", ".join(f"{domain}={nexthop}" for domain, nexthop in routes.items())
    instance = PostfixInstance(
        free_port(),
        relay_port=sink.port,
        bounce_port=sink.port,
        extra_settings={"transport_maps": f"inline:{{ {entries} }}"},
    )
    return instance.start()


def _message(rcpts: list[str], subject: str) -> bytes:
    """A small message like throughput.py's ("benchmark" as its text)."""
    head = f"From: {SENDER}\r\nTo: {rcpts[0]}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@bench.test>\r\n"
    return (head + "\r\nbenchmark\r\n").encode()


def _wait_delivered(sink: SMTPSink, expected: int, timeout: float) -> None:
    """Poll until the sink has accepted `expected` recipients (DSNs left out) or the timeout passes."""
    deadline = time.monotonic() + timeout
    while len(sink.delivered_to()) < expected and time.monotonic() < deadline:
        time.sleep(0.005)


def _submit_pipelined(smtp: smtplib.SMTP, rcpts: list[str], data: bytes) -> int:
    """MAIL, every RCPT and DATA in one write (PIPELINING, RFC 2920), then the content; accepted rcpts."""
    commands = [f"MAIL FROM:<{SENDER}>", *(f"RCPT TO:<{r}>" for r in rcpts), "DATA"]
    smtp.send("".join(c + "\r\n" for c in commands))
    codes = [smtp.getreply()[0] for _ in commands]
    if codes[0] != 250 or codes[-1] != 354:
        raise RuntimeError(f"postfix refused the submission: MAIL {codes[0]}, DATA {codes[-1]}")
    smtp.send(data + b".\r\n")
    code, reply = smtp.getreply()
    if code != 250:
        raise RuntimeError(f"postfix refused the content: {code} {reply!r}")
    return sum(1 for c in codes[1:-1] if c == 250)


def _fanout(
    postfix: PostfixInstance, sink: SMTPSink, rcpts: int, domains: int, timeout: float
) -> dict[str, Any]:
    """One message to `rcpts` recipients over `domains` domains; prints the time and the transactions,
    returns them."""
    to = [f"r{i}@fan{i % domains}.example" for i in range(rcpts)]
    before_rcpts, before_tx = len(sink.delivered_to()), len(sink.messages())
    with smtplib.SMTP(postfix.host, postfix.port, "bench.test") as smtp:
        smtp.ehlo()
        t0 = time.monotonic()
        accepted = _submit_pipelined(smtp, to, _message(to, "bench-fanout"))
        t_submitted = time.monotonic()
    _wait_delivered(sink, before_rcpts + accepted, timeout)
    t1 = time.monotonic()
    done = len(sink.delivered_to()) - before_rcpts
    txs = sink.messages()[before_tx:]
    mixed = max((len({r.rpartition("@")[2] for r in t.rcpt_tos}) for t in txs), default=0)
    print(
        f"postfix fan-out: {done}/{rcpts} recipients over {domains} domains in {t1 - t0:.2f}s "
        f"= {done / (t1 - t0):.1f} rcpt/s; transactions {len(txs)}"
    )
    print(
        f"  smtpd accepted {accepted} recipients after {(t_submitted - t0) * 1000:.0f} ms; transactions: "
        f"first at {(min(t.accepted_at for t in txs) - t0) * 1000:.0f} ms, last at "
        f"{(max(t.accepted_at for t in txs) - t0) * 1000:.0f} ms, over {len({t.session for t in txs})} "
        f"connections, up to {mixed} domains and {max(len(t.rcpt_tos) for t in txs)} recipients each"
        if txs
        else "  no transactions reached the sink"
    )
    return {
        "recipients": rcpts,
        "domains": domains,
        "delivered": done,
        "seconds": t1 - t0,
        "transactions": len(txs),
        "connections": len({t.session for t in txs}),
    }


def _send_singles(postfix: PostfixInstance, family: str, n: int, domains: int, concurrency: int) -> dict:
    """Send n single-recipient messages over `concurrency` connections; returns subject → submit time."""
    submitted: dict[str, float] = {}
    next_index = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        with smtplib.SMTP(postfix.host, postfix.port, "bench.test") as smtp:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                tag, rcpt = f"bench-{family}-{i}", f"rcpt{i}@{family}{i % domains}.example"
                submitted[tag] = time.monotonic()
                smtp.sendmail(SENDER, [rcpt], _message([rcpt], tag))

    threads = [threading.Thread(target=worker) for _ in range(min(concurrency, n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return submitted


def _single(
    postfix: PostfixInstance, sink: SMTPSink, n: int, domains: int, concurrency: int, timeout: float
) -> dict[str, Any]:
    """N single-recipient messages over `domains` domains; prints msg/s and submit-to-sink latency,
    returns them."""
    before = len(sink.messages())
    t0 = time.monotonic()
    submitted = _send_singles(postfix, "dest", n, domains, concurrency)
    t_submitted = time.monotonic()
    _wait_delivered(sink, before + n, timeout)
    t1 = time.monotonic()
    txs = sink.messages()[before:]
    lat = sorted(
        t.accepted_at - submitted[s]
        for t in txs
        for line in t.data.split(b"\r\n")
        if line.startswith(b"Subject: ") and (s := line[9:].decode()) in submitted
    )
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1000 if lat else float("nan")
    print(
        f"postfix single-recipient over {domains} domains: {len(txs)}/{n} delivered in {t1 - t0:.2f}s "
        f"= {len(txs) / (t1 - t0):.1f} msg/s (submit {n / (t_submitted - t0):.1f} msg/s); "
        f"latency p50 {p50:.0f} ms, p99 {p99:.0f} ms; transactions {len(txs)} over "
        f"{len({t.session for t in txs})} connections"
    )
    return {
        "messages": n,
        "domains": domains,
        "delivered": len(txs),
        "seconds": t1 - t0,
        "msg_per_s": len(txs) / (t1 - t0),
        "submit_msg_per_s": n / (t_submitted - t0),
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "connections": len({t.session for t in txs}),
    }


def _warmup(postfix: PostfixInstance, sink: SMTPSink, n: int, timeout: float) -> None:
    """A few messages first, so Postfix has its daemons running as throughput.py's stack has."""
    before = len(sink.delivered_to())
    _send_singles(postfix, "warm", n, n, 1)
    _wait_delivered(sink, before + n, timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=0, help="single-recipient messages instead of the fan-out")
    ap.add_argument("--rcpts", type=int, default=1000, help="recipients of the fan-out message")
    ap.add_argument("--domains", type=int, default=20, help="recipient domains")
    ap.add_argument("--concurrency", type=int, default=16, help="connections of the -n run")
    ap.add_argument("--warmup", type=int, default=10, help="single-recipient messages before the fan-out")
    ap.add_argument("--one-nexthop", action="store_true", help="route every domain to one nexthop")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    if reason := skip_reason():
        print(f"postfix benchmark skipped: {reason}")
        results["skipped"] = reason
    else:
        results = _run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """The job the arguments name, on a private Postfix and sink started and stopped here."""
    counts = {"dest": args.domains} if args.n else {"fan": args.domains, "warm": args.warmup}
    # Per-domain nexthops are addresses in 127/8 other than 127.0.0.1: the sink has to listen on all of them.
    sink = SMTPSink("127.0.0.1" if args.one_nexthop else "0.0.0.0").start()
    postfix = None
    try:
        postfix = _start_postfix(sink, _routes(counts, sink, args.one_nexthop))
        if args.n:
            return {"single": _single(postfix, sink, args.n, args.domains, args.concurrency, args.timeout)}
        _warmup(postfix, sink, args.warmup, args.timeout)
        return {"fanout": _fanout(postfix, sink, args.rcpts, args.domains, args.timeout)}
    finally:
        if postfix is not None:
            postfix.stop()
        sink.stop()


if __name__ == "__main__":
    main()
