"""`tempost queue ...` and `tempost send`: the admin API from a terminal, modelled on `mox queue ...`.

The API address and admin token come from --api-url/--token, else TEMPOST_API_URL/TEMPOST_ADMIN_TOKEN,
else what `tempost dev` wrote in its data directory (TEMPOST_DATA_DIR, default ./tempost-data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from domain.durations import parse_duration
from domain.holdrules import HoldRule, describe

DEFAULT_API = "http://127.0.0.1:8025"


class CLIError(Exception):
    """A failure to report on stderr with exit status 1."""


# --- Connection ---


def _dev_dir() -> Path:
    return Path(os.environ.get("TEMPOST_DATA_DIR", "tempost-data"))


def api_url(args: argparse.Namespace) -> str:
    """The API base URL: flag, environment, the dev stack's configuration, or the default."""
    if args.api_url:
        return str(args.api_url).rstrip("/")
    if os.environ.get("TEMPOST_API_URL"):
        return os.environ["TEMPOST_API_URL"].rstrip("/")
    cfg = _dev_dir() / "tempost.toml"
    if cfg.exists():
        listen = tomllib.loads(cfg.read_text()).get("api", {}).get("listen", "")
        if listen:
            return f"http://{listen}"
    return DEFAULT_API


def admin_token(args: argparse.Namespace) -> str:
    """The admin bearer token: flag, environment, or the dev stack's token file."""
    if args.token:
        return str(args.token)
    if os.environ.get("TEMPOST_ADMIN_TOKEN"):
        return os.environ["TEMPOST_ADMIN_TOKEN"]
    path = _dev_dir() / "admin-token"
    if path.exists():
        return path.read_text().strip()
    raise CLIError("no admin token: use --token, TEMPOST_ADMIN_TOKEN or run `tempost dev` here")


def _client(args: argparse.Namespace) -> httpx.Client:
    return httpx.Client(
        base_url=api_url(args) + "/admin/v0",
        headers={"Authorization": f"Bearer {admin_token(args)}"},
        timeout=120,
    )


def _call(args: argparse.Namespace, method: str, path: str, **kw: Any) -> httpx.Response:
    try:
        with _client(args) as c:
            r = c.request(method, path, **kw)
    except httpx.HTTPError as err:
        raise CLIError(f"cannot reach the API at {api_url(args)}: {err}") from None
    if r.status_code >= 400:
        try:
            body = r.json()
            raise CLIError(f"{body.get('Code', r.status_code)}: {body.get('Message', r.text)}")
        except ValueError:
            raise CLIError(f"HTTP {r.status_code}: {r.text.strip()}") from None
    return r


# --- Output ---


def _age(value: str | None, now: datetime) -> str:
    """ "in 5m" or "3h ago" for a time, "-" for none."""
    if not value:
        return "-"
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    secs = int((t - now).total_seconds())
    span = abs(secs)
    text = (
        f"{span}s"
        if span < 120
        else f"{span // 60}m"
        if span < 7200
        else f"{span // 3600}h"
        if span < 172800
        else f"{span // 86400}d"
    )
    return f"in {text}" if secs > 0 else f"{text} ago"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]
    return "\n".join(lines)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else text)


def _last_error(m: dict[str, Any]) -> str:
    results = m.get("Results") or []
    err = results[-1].get("Error", "") if results else ""
    return (err[:60] + "…") if len(err) > 60 else err


def _address(local: str, domain: str) -> str:
    return f"{local}@{domain}" if local or domain else "<>"


# --- Filters ---


def _add_filter_flags(p: argparse.ArgumentParser, retired: bool = False) -> None:
    p.add_argument("--ids", default="", help="comma-separated message ids")
    p.add_argument("-n", "--max", type=int, default=0, help="at most this many")
    p.add_argument("--account", default="")
    p.add_argument("--from", dest="from_", default="", help="substring of the sender")
    p.add_argument("--to", default="", help='substring of the recipient ("@example.com": a whole domain)')
    p.add_argument("--submitted", default="", help='"<1h", ">now", ...')
    p.add_argument("--transport", default=None, help='exact transport name ("" for routing)')
    if retired:
        p.add_argument("--lastactivity", default="")
        p.add_argument("--result", choices=("success", "failure"), default=None)
    else:
        p.add_argument("--nextattempt", default="")
        p.add_argument("--hold", choices=("true", "false"), default=None)


def _query(args: argparse.Namespace) -> dict[str, str]:
    q = {
        "ids": args.ids,
        "max": str(args.max) if args.max else "",
        "account": args.account,
        "from": args.from_,
        "to": args.to,
        "submitted": args.submitted,
    }
    if args.transport is not None:
        q["transport"] = args.transport
    for name in ("nextattempt", "hold", "lastactivity"):
        if getattr(args, name, None):
            q[name] = getattr(args, name)
    if getattr(args, "result", None):
        q["success"] = "true" if args.result == "success" else "false"
    if getattr(args, "sort", None):
        q["sort"] = args.sort
    if getattr(args, "asc", False):
        q["asc"] = "true"
    return {k: v for k, v in q.items() if v != "" or k == "transport"}


def _filter(args: argparse.Namespace) -> dict[str, Any]:
    f: dict[str, Any] = {
        "IDs": [int(x) for x in args.ids.split(",") if x.strip()],
        "Max": args.max,
        "Account": args.account,
        "From": args.from_,
        "To": args.to,
        "Submitted": args.submitted,
        "NextAttempt": getattr(args, "nextattempt", ""),
        "Transport": args.transport,
        "Hold": None if getattr(args, "hold", None) is None else args.hold == "true",
    }
    return {k: v for k, v in f.items() if v not in ("", 0, [], None) or (k == "Transport" and v == "")}


# --- Commands ---


def cmd_list(args: argparse.Namespace) -> None:
    msgs = _call(args, "GET", "/queue", params=_query(args)).json()["Messages"]
    now = datetime.now(UTC)
    rows = [
        [
            str(m["ID"]),
            (m["Queued"] or "")[:19],
            _address(m["SenderLocalpart"], m["SenderDomainStr"]),
            _address(m["RecipientLocalpart"], m["RecipientDomainStr"]),
            "held" if m.get("Hold") else _age(m.get("NextAttempt"), now),
            str(m["Attempts"]),
            _age(m.get("LastAttempt"), now),
            _last_error(m),
        ]
        for m in msgs
    ]
    header = ["ID", "QUEUED", "FROM", "TO", "NEXT", "TRIES", "LAST", "LAST ERROR"]
    _print(args, msgs, _table(rows, header) if rows else "(none)")


def _bulk(args: argparse.Namespace, op: str, body: dict[str, Any], done: str) -> None:
    body = {"Filter": _filter(args), **body}
    if not body["Filter"] and not args.all:
        raise CLIError(f"{op} without a filter applies to every queued message: add --all to confirm")
    if not args.json:
        # Progress for large operations: how many messages match, and the time it took.
        matching = _call(args, "GET", "/queue/count", params=_query(args)).json()["Count"]
        if args.max:
            matching = min(matching, args.max)
        print(f"{op}: {matching} matching message(s) ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = _call(args, "POST", f"/queue/{op}", json=body).json()
    if not args.json:
        print(f"{op}: done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    _print(args, result, f"{result['Affected']} message(s) {done}")


def cmd_op(args: argparse.Namespace) -> None:
    done = {
        "hold": "held",
        "release": "released",
        "fail": "marked as failed",
        "drop": "dropped",
        "kick": "kicked",
    }
    _bulk(args, args.op, {}, done[args.op])


def _reschedule(args: argparse.Namespace) -> dict[str, str]:
    """`schedule [--now] DURATION` as the API's change: relative to now, or added to each next attempt."""
    if args.now:
        try:
            at = datetime.now(UTC) + parse_duration(args.duration)
        except ValueError as err:
            raise CLIError(f"duration: {err}") from None
        return {"Set": at.isoformat()}
    return {"Add": args.duration}


def cmd_schedule(args: argparse.Namespace) -> None:
    _bulk(args, "nextattempt", _reschedule(args), "rescheduled")


def cmd_transport(args: argparse.Namespace) -> None:
    _bulk(args, "transport", {"Transport": args.name}, "changed")


def cmd_requiretls(args: argparse.Namespace) -> None:
    value = {"yes": True, "no": False, "default": None}[args.value]
    _bulk(args, "requiretls", {"RequireTLS": value}, "changed")


def cmd_dump(args: argparse.Namespace) -> None:
    data = _call(args, "GET", f"/queue/{args.id}/raw").content
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def cmd_holdrules(args: argparse.Namespace) -> None:
    if args.action == "list":
        rules = _call(args, "GET", "/holdrules").json()["HoldRules"]
        lines = [
            describe(HoldRule(r["ID"], r["Account"], r["SenderDomainStr"], r["RecipientDomainStr"]))
            for r in rules
        ]
        _print(args, rules, "\n".join(lines) or "(none)")
    elif args.action == "add":
        body = {"Account": args.account, "SenderDomain": args.senderdom, "RecipientDomain": args.recipientdom}
        out = _call(args, "POST", "/holdrules", json=body).json()
        _print(args, out, f"hold rule {out['HoldRule']['ID']} added, {out['Affected']} message(s) held")
    else:
        _call(args, "DELETE", f"/holdrules/{args.id}")
        _print(args, {"Removed": args.id}, f"hold rule {args.id} removed (held messages stay held)")


def cmd_retired(args: argparse.Namespace) -> None:
    if args.action == "print":
        _print(args, r := _call(args, "GET", f"/retired/{args.id}").json(), json.dumps(r, indent=2))
        return
    msgs = _call(args, "GET", "/retired", params=_query(args)).json()["Messages"]
    now = datetime.now(UTC)
    rows = [
        [
            str(m["ID"]),
            (m["Queued"] or "")[:19],
            "success" if m["Success"] else "failure",
            _address(m["SenderLocalpart"], m["SenderDomainStr"]),
            m["RecipientAddress"],
            _age(m.get("LastAttempt"), now),
            _last_error(m),
        ]
        for m in msgs
    ]
    header = ["ID", "QUEUED", "RESULT", "FROM", "TO", "LAST", "LAST ERROR"]
    _print(args, msgs, _table(rows, header) if rows else "(none)")


def cmd_suppress(args: argparse.Namespace) -> None:
    if args.action == "list":
        params = {"account": args.account} if args.account else {}
        entries = _call(args, "GET", "/suppressions", params=params).json()["Suppressions"]
        rows = [
            [str(e["ID"]), e["Account"], e["BaseAddress"], "manual" if e["Manual"] else "auto", e["Reason"]]
            for e in entries
        ]
        _print(
            args, entries, _table(rows, ["ID", "ACCOUNT", "ADDRESS", "HOW", "REASON"]) if rows else "(none)"
        )
    elif args.action == "add":
        body = {
            "Account": args.account_name,
            "EmailAddress": args.address,
            "Manual": True,
            "Reason": args.reason,
        }
        _print(args, _call(args, "POST", "/suppressions", json=body).json(), f"{args.address} suppressed")
    elif args.action == "remove":
        _call(args, "DELETE", "/suppressions", params={"account": args.account_name, "address": args.address})
        _print(args, {"Removed": args.address}, f"{args.address} no longer suppressed")
    else:
        params = {"account": args.account, "address": args.address}
        present = _call(args, "GET", "/suppressions", params=params).json()["Present"]
        _print(args, {"Present": present}, "present" if present else "not present")


def _hook_filter(args: argparse.Namespace) -> dict[str, str]:
    return {k: v for k, v in {"Account": args.account, "Event": args.event}.items() if v}


def cmd_webhook(args: argparse.Namespace) -> None:
    action = args.action
    if action in ("list", "retired"):
        path = "/hooks" if action == "list" else "/hooks/retired"
        params = {k: v for k, v in {"account": args.account, "event": args.event}.items() if v}
        hooks = _call(args, "GET", path, params=params).json()["Hooks"]
        now = datetime.now(UTC)
        rows = [
            [
                str(h["ID"]),
                h["Account"],
                h["OutgoingEvent"] or "incoming",
                str(h["QueueMsgID"]),
                str(h["Attempts"]),
                _age(h.get("NextAttempt") or h.get("LastActivity"), now),
                h["URL"],
            ]
            for h in hooks
        ]
        header = ["ID", "ACCOUNT", "EVENT", "MSG", "TRIES", "NEXT" if action == "list" else "LAST", "URL"]
        _print(args, hooks, _table(rows, header) if rows else "(none)")
    elif action == "print":
        _print(args, h := _call(args, "GET", f"/hooks/{args.id}").json(), json.dumps(h, indent=2))
    elif action == "schedule":
        body = {"Filter": _hook_filter(args), **_reschedule(args)}
        out = _call(args, "POST", "/hooks/nextattempt", json=body).json()
        _print(args, out, f"{out['Affected']} webhook(s) rescheduled")
    else:
        out = _call(args, "POST", "/hooks/cancel", json={"Filter": _hook_filter(args)}).json()
        _print(args, out, f"{out['Affected']} webhook(s) canceled")


def cmd_send(args: argparse.Namespace) -> None:
    """Send a test message through the webapi as an account (default: the dev account)."""
    user = args.user or os.environ.get("TEMPOST_USER") or "dev@localhost"
    password = args.password or os.environ.get("TEMPOST_PASSWORD")
    if not password and (_dev_dir() / "dev-password").exists():
        password = (_dev_dir() / "dev-password").read_text().strip()
    if not password:
        raise CLIError("no password: use --password or TEMPOST_PASSWORD")
    req = {"To": [{"Address": a} for a in args.to], "Subject": args.subject, "Text": args.text + "\n"}
    try:
        r = httpx.post(
            api_url(args) + "/webapi/v0/Send",
            data={"request": json.dumps(req)},
            auth=(user, password),
            timeout=60,
        )
    except httpx.HTTPError as err:
        raise CLIError(f"cannot reach the API at {api_url(args)}: {err}") from None
    if r.status_code != 200:
        raise CLIError(f"send failed: HTTP {r.status_code}: {r.text.strip()}")
    out = r.json()
    lines = [f"{s['Address']}: queued as {s['QueueMsgID']}" for s in out["Submissions"]]
    _print(args, out, "\n".join([f"message {out['MessageID']}", *lines]))


def add_commands(sub: Any) -> None:
    """Register `queue` and `send` on the top-level parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", default=None, help="API base URL (env TEMPOST_API_URL)")
    common.add_argument("--token", default=None, help="admin token (env TEMPOST_ADMIN_TOKEN)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    qp = sub.add_parser("queue", help="inspect and steer the queue over the admin API")
    qs = qp.add_subparsers(dest="queue_cmd", required=True)

    p = qs.add_parser("list", parents=[common], help="list queued messages")
    _add_filter_flags(p)
    p.add_argument("--sort", choices=("nextattempt", "queued"), default=None)
    p.add_argument("--asc", action="store_true")
    p.set_defaults(func=cmd_list)

    for op, help_ in (
        ("hold", "hold matching messages"),
        ("release", "release held messages (mox: unhold)"),
        ("fail", "fail matching messages: failure DSN and `failed` webhook"),
        ("drop", "drop matching messages: no DSN, `canceled` webhook"),
        ("kick", "make matching messages due now"),
    ):
        p = qs.add_parser(op, parents=[common], help=help_, aliases=["unhold"] if op == "release" else [])
        _add_filter_flags(p)
        p.add_argument("--all", action="store_true", help="allow an empty filter (every message)")
        p.set_defaults(func=cmd_op, op=op)

    p = qs.add_parser(
        "schedule", parents=[common], help="move next attempts by DURATION (or to now+DURATION)"
    )
    _add_filter_flags(p)
    p.add_argument("--all", action="store_true")
    p.add_argument("--now", action="store_true", help="relative to the current time, not each next attempt")
    p.add_argument("duration")
    p.set_defaults(func=cmd_schedule)

    p = qs.add_parser("transport", parents=[common], help='set the transport ("" for routing)')
    _add_filter_flags(p)
    p.add_argument("--all", action="store_true")
    p.add_argument("name")
    p.set_defaults(func=cmd_transport)

    p = qs.add_parser("requiretls", parents=[common], help="set RequireTLS: yes, no or default")
    _add_filter_flags(p)
    p.add_argument("--all", action="store_true")
    p.add_argument("value", choices=("yes", "no", "default"))
    p.set_defaults(func=cmd_requiretls)

    p = qs.add_parser("dump", parents=[common], help="print the raw message")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_dump)

    hp = qs.add_parser("holdrules", help="hold rules")
    hs = hp.add_subparsers(dest="action", required=True)
    hs.add_parser("list", parents=[common]).set_defaults(func=cmd_holdrules)
    p = hs.add_parser("add", parents=[common], help="add a rule (no flags: hold everything)")
    p.add_argument("--account", default="")
    p.add_argument("--senderdom", default="")
    p.add_argument("--recipientdom", default="")
    p.set_defaults(func=cmd_holdrules)
    p = hs.add_parser("remove", parents=[common])
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_holdrules)

    rp = qs.add_parser("retired", help="retired messages")
    rs = rp.add_subparsers(dest="action", required=True)
    p = rs.add_parser("list", parents=[common])
    _add_filter_flags(p, retired=True)
    p.add_argument("--sort", choices=("lastactivity", "queued"), default=None)
    p.add_argument("--asc", action="store_true")
    p.set_defaults(func=cmd_retired)
    p = rs.add_parser("print", parents=[common])
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_retired)

    sp = qs.add_parser("suppress", help="suppression lists")
    ss = sp.add_subparsers(dest="action", required=True)
    p = ss.add_parser("list", parents=[common])
    p.add_argument("--account", default="")
    p.set_defaults(func=cmd_suppress)
    for action in ("add", "remove"):
        p = ss.add_parser(action, parents=[common])
        p.add_argument("account_name", metavar="ACCOUNT")
        p.add_argument("address")
        if action == "add":
            p.add_argument("--reason", default="added by admin")
        p.set_defaults(func=cmd_suppress)
    p = ss.add_parser("lookup", parents=[common])
    p.add_argument("--account", required=True)
    p.add_argument("address")
    p.set_defaults(func=cmd_suppress)

    wp = qs.add_parser("webhook", help="the webhook queue")
    ws = wp.add_subparsers(dest="action", required=True)
    for action in ("list", "retired", "cancel"):
        p = ws.add_parser(action, parents=[common])
        p.add_argument("--account", default="")
        p.add_argument("--event", default="")
        p.set_defaults(func=cmd_webhook)
    p = ws.add_parser("schedule", parents=[common])
    p.add_argument("--account", default="")
    p.add_argument("--event", default="")
    p.add_argument("--now", action="store_true")
    p.add_argument("duration")
    p.set_defaults(func=cmd_webhook)
    p = ws.add_parser("print", parents=[common])
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_webhook)

    p = sub.add_parser("send", parents=[common], help="send a test message through the webapi")
    p.add_argument("to", nargs="+")
    p.add_argument("--user", default="", help="login address (env TEMPOST_USER; default dev@localhost)")
    p.add_argument("--password", default="", help="its password (env TEMPOST_PASSWORD)")
    p.add_argument("--subject", default="tempost test message")
    p.add_argument("--text", default="This is a test message sent with `tempost send`.")
    p.set_defaults(func=cmd_send)
