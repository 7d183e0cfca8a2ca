"""Tempost against Postfix (and an older Tempost release) on issue 15's jobs, in one sitting, with ratios.

Runs, as subprocesses on this machine and against the same kind of loopback SMTP sink:

- spread:     600 single-recipient messages over 300 domains (msg/s; Tempost's CPU per delivered message
              of each part and history events per message come from this job),
- one-domain: 300 messages to one domain (msg/s),
- fan-out:    one message to 1,000 recipients over 20 domains (seconds),
- steady:     5 messages a second for 20 s, Send to the sink's 250, p50 and p99 (Tempost only),

with bench/throughput.py for Tempost (this tree, with the interpreter running this script) and
bench/postfix_fanout.py for Postfix (needs root and Debian's postfix; without them its column says n/a).
`--baseline DIR` also runs DIR/bench/throughput.py with DIR/.venv/bin/python: a checkout of an older
release with its own virtualenv, e.g.

    git worktree add /work/wt-base <ref> && cd /work/wt-base && python3 -m venv .venv \\
        && .venv/bin/pip install -q -e '.[dev]'
    .venv/bin/python bench/compare.py --baseline /work/wt-base --repeat 3 --json compare.json

Every run starts its own servers (Tempost: embedded PostgreSQL, Temporal dev server, one `tempost worker`
and one `tempost api` process unless --in-process). The sides of each job run one after another in an
order that rotates from job to job and round to round, so a machine getting busier or quieter hits them
alike; with --repeat K each figure is the median of K runs. Prints a table (Markdown, for the README) with
the ratios and issue 15's targets; `--json FILE` writes every run's figures too. Each run's own output is
kept under --logs. A benchmark: it reports, it never fails a build.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.postfix import skip_reason as postfix_skip_reason  # noqa: E402

# mox v0.0.15's pace to one domain measured on this machine when issue 15 was filed (not run here).
MOX_ONE_DOMAIN_MSG_PER_S = 60.0
# What Postfix allows by default per destination (default_destination_concurrency_limit).
POSTFIX_DESTINATION_CONCURRENCY = 20

BEFORE, AFTER, POSTFIX = "before", "after", "postfix"


@dataclass
class Job:
    """One of the jobs: the arguments of each side's script and what the job's figures are called."""

    name: str
    title: str
    tempost_args: list[str]
    postfix_args: list[str] | None  # None: Postfix does not take part


def _jobs(args: argparse.Namespace) -> list[Job]:
    """The jobs --jobs names, with the sizes the options give."""
    steady_n = max(1, round(args.rate * args.rate_seconds))
    jobs = [
        Job(
            "spread",
            f"{args.spread} single-recipient messages over {args.spread_domains} domains",
            ["-n", str(args.spread), "--domains", str(args.spread_domains), "--fanout-rcpts", "0"],
            ["-n", str(args.spread), "--domains", str(args.spread_domains)],
        ),
        Job(
            "one-domain",
            f"{args.one_domain} messages to one domain",
            ["-n", str(args.one_domain), "--domains", "1", "--fanout-rcpts", "0"],
            ["-n", str(args.one_domain), "--domains", "1"],
        ),
        Job(
            "fan-out",
            f"one message to {args.fanout_rcpts:,} recipients over {args.fanout_domains} domains",
            # Ten single-recipient messages first, as postfix_fanout.py's warm-up.
            ["-n", "10", "--domains", "10"]
            + ["--fanout-rcpts", str(args.fanout_rcpts), "--fanout-domains", str(args.fanout_domains)],
            ["--rcpts", str(args.fanout_rcpts), "--domains", str(args.fanout_domains), "--warmup", "10"],
        ),
        Job(
            "steady",
            f"{args.rate:g} messages a second for {args.rate_seconds:g} s, Send to 250",
            [
                "-n",
                str(steady_n),
                "--domains",
                str(steady_n),
                "--rate",
                str(args.rate),
                "--fanout-rcpts",
                "0",
            ],
            None,
        ),
    ]
    wanted = args.jobs.split(",")
    unknown = set(wanted) - {j.name for j in jobs}
    if unknown:
        raise SystemExit(f"unknown job(s) {', '.join(sorted(unknown))}; known: {[j.name for j in jobs]}")
    return [j for j in jobs if j.name in wanted]


# bench/throughput.py's text, for releases whose throughput.py has no --json (its lines since 2026-12).
_SINGLE_LINE = re.compile(
    r"^single-recipient over (?P<domains>\d+) domains: (?P<delivered>\d+)/(?P<messages>\d+) delivered in "
    r"(?P<seconds>[\d.]+)s = (?P<msg_per_s>[\d.]+) msg/s \(submit (?P<submit_msg_per_s>[\d.]+) msg/s\); "
    r"latency p50 (?P<latency_p50_ms>[\d.]+|nan) ms, p99 (?P<latency_p99_ms>[\d.]+|nan) ms"
)
_CPU_LINE = re.compile(r"^  (?P<part>\S.*?)\s+(?P<ms>-?[\d.]+) ms/msg")
_EVENTS_LINE = re.compile(r"^where the time goes \(median of \d+; (?P<events>[\d.]+) history events\)")
_FANOUT_LINE = re.compile(
    r"^fan-out: (?P<delivered>\d+)/(?P<recipients>\d+) recipients over (?P<domains>\d+) domains in "
    r"(?P<seconds>[\d.]+)s"
)
_CLIENT_PART = "benchmark client and sink"


def parse_throughput_text(text: str) -> dict[str, Any]:
    """The figures bench/throughput.py printed, in the shape its --json writes (the parts compare uses)."""
    result: dict[str, Any] = {}
    in_cpu = False
    for line in text.splitlines():
        if m := _SINGLE_LINE.match(line):
            result["single"] = {k: float(v) for k, v in m.groupdict().items()}
        elif line.startswith("CPU per delivered message"):
            in_cpu = True
            result["single"]["cpu_ms_per_msg"] = {}
        elif in_cpu and (m := _CPU_LINE.match(line)):
            result["single"]["cpu_ms_per_msg"][m["part"]] = float(m["ms"])
        elif m := _EVENTS_LINE.match(line):
            in_cpu = False
            result["single"]["history_events"] = float(m["events"])
        elif m := _FANOUT_LINE.match(line):
            in_cpu = False
            result["fanout"] = {k: float(v) for k, v in m.groupdict().items()}
        else:
            in_cpu = False
    cpu = result.get("single", {}).get("cpu_ms_per_msg", {})
    result["client_part"] = _CLIENT_PART if _CLIENT_PART in cpu else ""
    return result


@dataclass
class Side:
    """One column: a way of running a job's script and reading its figures."""

    name: str
    label: str
    python: str
    script: Path
    has_json: bool
    unavailable: str = ""  # why this side cannot run here

    def command(self, job: Job, json_path: Path, extra: list[str]) -> list[str] | None:
        """The command line of this side's run of the job, or None when the side does not take part."""
        args = job.postfix_args if self.name == POSTFIX else job.tempost_args + extra
        if args is None or self.unavailable:
            return None
        return [self.python, str(self.script), *args, *(["--json", str(json_path)] if self.has_json else [])]


def _supports_json(python: str, script: Path) -> bool:
    """Whether the script takes --json (this tree's do; an older release's may not)."""
    out = subprocess.run([python, str(script), "--help"], capture_output=True, text=True, timeout=120)
    return "--json" in out.stdout


def _describe_tree(tree: Path) -> str:
    """The tree's commit, short, and whether it has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "log", "-1", "--format=%h %cs"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return str(tree)
    return f"{head}{' + changes' if dirty else ''} ({tree})"


def _run(command: list[str], cwd: Path, log: Path, json_path: Path, timeout: float) -> dict[str, Any]:
    """Run one benchmark script, its output to `log`; its figures, or {"error": ...}."""
    json_path.unlink(missing_ok=True)
    with log.open("w") as out:
        out.write("$ " + shlex.join(command) + "\n")
        out.flush()
        # A session of its own, so a run that overstays its time is stopped with every server it started.
        proc = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return {"error": f"no result after {timeout:.0f}s"}
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
            raise
    if code != 0:
        return {"error": f"exit status {code}"}
    if "--json" in command:
        return json.loads(json_path.read_text())
    return parse_throughput_text(log.read_text())


def _figures(job: Job, result: dict[str, Any]) -> dict[str, float]:
    """The figures of one run that the table shows, by name."""
    if "error" in result or "skipped" in result:
        return {}
    single, fanout = result.get("single", {}), result.get("fanout", {})
    figures: dict[str, float] = {}
    if job.name == "spread" and single:
        figures["msg_per_s"] = single["msg_per_s"]
        if "history_events" in single:
            figures["history_events"] = single["history_events"]
        cpu = single.get("cpu_ms_per_msg", {})
        client = result.get("client_part", "")
        for part, ms in cpu.items():
            figures[f"cpu:{part}"] = ms
        if cpu:
            figures["cpu_total"] = sum(ms for part, ms in cpu.items() if part != client)
    elif job.name == "one-domain" and single:
        figures["msg_per_s"] = single["msg_per_s"]
        if "connections" in single:
            figures["connections"] = single["connections"]
    elif job.name == "fan-out" and fanout:
        figures["seconds"] = fanout["seconds"]
    elif job.name == "steady" and single:
        figures["p50_ms"] = single["latency_p50_ms"]
        figures["p99_ms"] = single["latency_p99_ms"]
    return figures


def _summary(figures: dict[str, float]) -> str:
    """A run's main figures for the progress line."""
    shown = {k: v for k, v in figures.items() if not k.startswith("cpu:") and k != "delivered_share"}
    return ", ".join(f"{k} {v:.3g}" for k, v in shown.items()) or "no figures"


def _shortfall(result: dict[str, Any]) -> str:
    """What a run left undelivered (its figures then cover less than the job), or ""."""
    for part, wanted in (("single", "messages"), ("fanout", "recipients")):
        figures = result.get(part, {})
        if wanted in figures and figures["delivered"] < figures[wanted]:
            return f"delivered only {figures['delivered']:.0f} of {figures[wanted]:.0f} {wanted}"
    return ""


def _median(values: list[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


@dataclass
class Row:
    """One line of the table: a figure of a job on each side, and the target it is held to, if any."""

    label: str
    job: str
    figure: str
    digits: int = 1
    tempost_only: bool = False
    target: str = ""
    # The sides the target compares, and whether it holds given their figures.
    needs: tuple[str, ...] = ()
    holds: Callable[[dict[str, float]], bool] | None = None


def _rows(args: argparse.Namespace, cpu_parts: list[str], client_part: str) -> list[Row]:
    """The table's rows, with issue 15's targets."""
    rows = [
        Row(
            f"{args.spread} msgs over {args.spread_domains} domains, msg/s",
            "spread",
            "msg_per_s",
            target="≥ 2× before",
            needs=(AFTER, BEFORE),
            holds=lambda v: v[AFTER] >= 2 * v[BEFORE],
        ),
        Row(
            f"{args.one_domain} msgs to one domain, msg/s",
            "one-domain",
            "msg_per_s",
            target=f"≥ {MOX_ONE_DOMAIN_MSG_PER_S / 2:g} (½ mox)",
            needs=(AFTER,),
            holds=lambda v: v[AFTER] >= MOX_ONE_DOMAIN_MSG_PER_S / 2,
        ),
        Row(
            f"1 msg to {args.fanout_rcpts:,} rcpts over {args.fanout_domains} domains, s",
            "fan-out",
            "seconds",
            digits=2,
            target="≤ 2× Postfix",
            needs=(AFTER, POSTFIX),
            holds=lambda v: v[AFTER] <= 2 * v[POSTFIX],
        ),
        Row(
            f"Send → 250 at {args.rate:g}/s, p50 ms",
            "steady",
            "p50_ms",
            digits=0,
            target="≤ 100 ms",
            needs=(AFTER,),
            holds=lambda v: v[AFTER] <= 100,
        ),
        Row(f"Send → 250 at {args.rate:g}/s, p99 ms", "steady", "p99_ms", digits=0),
        Row(
            "CPU per delivered msg, total ms" + ("" if client_part else " (with the bench client)"),
            "spread",
            "cpu_total",
            tempost_only=True,
            target="≤ ½ before",
            needs=(AFTER, BEFORE),
            holds=lambda v: v[AFTER] <= v[BEFORE] / 2,
        ),
    ]
    for part in cpu_parts:
        note = " (not in the total)" if part == client_part else ""
        rows.append(Row(f"  {part}{note}, ms", "spread", f"cpu:{part}", tempost_only=True))
    rows.append(
        Row(
            "history events per delivered msg",
            "spread",
            "history_events",
            digits=0,
            tempost_only=True,
            target="≤ 8",
            needs=(AFTER,),
            holds=lambda v: v[AFTER] <= 8,
        )
    )
    return rows


def _table(
    rows: list[Row],
    medians: dict[str, dict[str, dict[str, float | None]]],
    sides: list[Side],
    jobs: list[Job],
) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table of the medians with ratios and targets, and the same as records for --json."""
    names = [s.name for s in sides]
    postfix_jobs = {j.name for j in jobs if j.postfix_args is not None}
    header = ["job", *(s.label for s in sides)]
    header += ["after/before"] if BEFORE in names else []
    header += ["after/Postfix"] if POSTFIX in names else []
    header += ["target", "met"]
    lines, records = [header], []
    for row in rows:
        if row.job not in {j.name for j in jobs}:
            continue
        value = {s.name: medians.get(s.name, {}).get(row.job, {}).get(row.figure) for s in sides}
        known = {k: v for k, v in value.items() if v is not None}
        met = row.holds(known) if row.holds and all(k in known for k in row.needs) else None
        cells = [row.label]
        for s in sides:
            takes_part = s.name != POSTFIX or (row.job in postfix_jobs and not row.tempost_only)
            cells.append(_fmt(value[s.name], row.digits) if takes_part else "")
        if BEFORE in names:
            cells.append(_ratio(value[AFTER], value[BEFORE]))
        if POSTFIX in names:
            cells.append(_ratio(value[AFTER], value[POSTFIX]))
        cells += [row.target, "" if not row.target else {True: "yes", False: "NO", None: "?"}[met]]
        lines.append(cells)
        records.append({"row": row.label, **value, "target": row.target, "met": met})
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        padded = (
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    text = [render(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    text += [render(cells) for cells in lines[1:]]
    return "\n".join(text), records


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", metavar="DIR", help="an older release's checkout with its own .venv")
    ap.add_argument("--repeat", type=int, default=1, help="runs per job and side; figures are medians")
    ap.add_argument("--jobs", default="spread,one-domain,fan-out,steady", help="comma-separated subset")
    ap.add_argument("--spread", type=int, default=600, help="messages of the spread job")
    ap.add_argument("--spread-domains", type=int, default=300)
    ap.add_argument("--one-domain", type=int, default=300, help="messages of the one-domain job")
    ap.add_argument("--fanout-rcpts", type=int, default=1000)
    ap.add_argument("--fanout-domains", type=int, default=20)
    ap.add_argument("--rate", type=float, default=5, help="messages a second of the steady job")
    ap.add_argument("--rate-seconds", type=float, default=20, help="how long the steady job sends")
    ap.add_argument("--in-process", action="store_true", help="Tempost's worker and API in the bench process")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    ap.add_argument("--logs", metavar="DIR", help="keep each run's output here (default: a temporary dir)")
    ap.add_argument("--json", metavar="FILE", help="also write every run's figures and the table as JSON")
    args = ap.parse_args()

    jobs = _jobs(args)
    logs = Path(args.logs or tempfile.mkdtemp(prefix="tempost-compare-"))
    logs.mkdir(parents=True, exist_ok=True)
    bench = Path(__file__).resolve().parent
    sides: list[Side] = []
    if args.baseline:
        base = Path(args.baseline).resolve()
        python = base / ".venv" / "bin" / "python"
        if not python.exists():
            raise SystemExit(f"{python} does not exist: give the baseline checkout a virtualenv (see --help)")
        script = base / "bench" / "throughput.py"
        sides.append(Side(BEFORE, "before", str(python), script, _supports_json(str(python), script)))
    sides.append(Side(AFTER, "after", sys.executable, bench / "throughput.py", True))
    postfix = Side(POSTFIX, "Postfix", sys.executable, bench / "postfix_fanout.py", True)
    postfix.unavailable = postfix_skip_reason() or ""
    sides.append(postfix)
    # In-process, the serve process's CPU figure includes the bench's client and sink.
    extra = [] if args.in_process else ["--workers", "1", "--apis", "1"]

    started = datetime.now(UTC)
    header = [
        f"bench/compare.py, {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load {_loadavg()} at start",
        *(f"  {s.label}: {_describe_tree(s.script.parent.parent)}" for s in sides if s.name != POSTFIX),
        "  Postfix: "
        + (postfix.unavailable or "Debian's postfix, a private instance (bench/postfix_fanout.py), defaults"),
        "  Tempost: "
        + (
            "worker and API in the bench's process"
            if args.in_process
            else "a `tempost worker` and a `tempost api`"
        )
        + "; embedded PostgreSQL and Temporal dev server; DKIM-signed (Ed25519 + RSA-2048)",
        f"  {args.repeat} run(s) per job and side, figures are medians; logs in {logs}",
    ]
    print("\n".join(header), file=sys.stderr)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s.name: {j.name: [] for j in jobs} for s in sides}
    order = [s for s in sides if not s.unavailable]
    total = sum(1 for _ in range(args.repeat) for j in jobs for s in order if s.command(j, Path(), extra))
    done = 0
    for round_ in range(args.repeat):
        for k, job in enumerate(jobs):
            # Rotate who goes first, so drift of the machine's load does not favour one side.
            shift = (round_ + k) % len(order)
            for side in order[shift:] + order[:shift]:
                stem = f"{round_ + 1}-{job.name}-{side.name}"
                command = side.command(job, logs / f"{stem}.json", extra)
                if command is None:
                    continue
                done += 1
                print(f"[{done}/{total}] {side.label} {job.name} …", end=" ", file=sys.stderr, flush=True)
                t0 = time.monotonic()
                tree = side.script.parent.parent
                result = _run(command, tree, logs / f"{stem}.log", logs / f"{stem}.json", args.timeout)
                result["figures"] = _figures(job, result)
                runs[side.name][job.name].append(result)
                if shortfall := _shortfall(result):
                    result["shortfall"] = shortfall
                status = result.get("error") or _summary(result["figures"])
                print(f"{status} {shortfall} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    medians: dict[str, dict[str, dict[str, float | None]]] = {}
    for side_name, by_job in runs.items():
        for job_name, results in by_job.items():
            keys = {k for r in results for k in r["figures"]}
            medians.setdefault(side_name, {})[job_name] = {
                k: _median([r["figures"][k] for r in results if k in r["figures"]]) for k in sorted(keys)
            }
    after_spread = [r for r in runs[AFTER].get("spread", []) if "single" in r]
    client_part = after_spread[0].get("client_part", "") if after_spread else _CLIENT_PART
    cpu_parts: list[str] = []
    for side in sides:
        for r in runs[side.name].get("spread", []):
            for part in r.get("single", {}).get("cpu_ms_per_msg", {}):
                if part not in cpu_parts:
                    cpu_parts.append(part)
    table, records = _table(_rows(args, cpu_parts, client_part), medians, sides, jobs)

    postfix_connections = medians.get(POSTFIX, {}).get("one-domain", {}).get("connections")
    notes = [
        f"One domain: Tempost keeps one delivery at a time per domain (mox's rule); Postfix uses up to "
        f"{POSTFIX_DESTINATION_CONCURRENCY} connections per destination (its defaults, left alone)"
        + (f" and opened {postfix_connections:.0f} over the run" if postfix_connections is not None else "")
        + f". mox's {MOX_ONE_DOMAIN_MSG_PER_S:g} msg/s is issue 15's measurement on this machine, "
        "not this run's.",
        "CPU: user + system time from /proc of Tempost's processes, the Temporal dev server and PostgreSQL "
        "(with its backends) during the spread job, per delivered message"
        + ("; the bench's client and SMTP sink run in the Tempost process" if args.in_process else "")
        + ". History events: median over up to 50 of the spread job's messages."
        + (
            " Each figure is its own median (the parts need not add up to the total)."
            if args.repeat > 1
            else ""
        ),
        f"Load average at the end: {_loadavg()}.",
    ]
    print("\n".join(header))
    print()
    print(table)
    print()
    print("\n".join(notes))
    for side in sides:
        for job_name, results in runs[side.name].items():
            for r in results:
                if "error" in r or "shortfall" in r:
                    print(f"{side.label} {job_name}: {r.get('error') or r['shortfall']} (see {logs})")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "header": header,
                    "sides": {s.name: {"label": s.label, "unavailable": s.unavailable} for s in sides},
                    "jobs": {j.name: j.title for j in jobs},
                    "medians": medians,
                    "table": records,
                    "table_text": table,
                    "notes": notes,
                    "runs": runs,
                },
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
