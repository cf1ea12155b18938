"""`kaitopy status <workspace>`: the conditions, the events and, in one line, why a workspace is
not ready yet; `--wait` follows it until it succeeds (or fails for good)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from datetime import datetime
from typing import Any, TextIO

from kaitopy.api import constants, reasons
from kaitopy.runtime import Client, Kind, NotFound

WORKSPACE = Kind("kaito.sh", "v1beta1", "Workspace", "workspaces")
EVENT = Kind("events.k8s.io", "v1", "Event", "events")
ORDER = (
    constants.NodeClaimReady,
    constants.ResourceReady,
    constants.InferenceReady,
    constants.JobStarted,
    constants.WorkspaceSucceeded,
    constants.WorkspaceDeleting,
)
SETTLE_S = 30.0
"""How long --wait watches a reason that Kubernetes keeps retrying (an image pull, a crash loop)
before it gives up: a node whose GPUs are still being advertised, or a first crash, clears alone."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workspace", help="workspace name")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--wait", action="store_true", help="follow until it succeeds or fails for good")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS")
    parser.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="how often --wait looks again"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        metavar="SECONDS",
        help="how long --wait watches a failing pod (image pull, crash loop, ...) before giving up",
    )


def _conditions(ws: dict[str, Any]) -> list[dict[str, Any]]:
    conds = list((ws.get("status") or {}).get("conditions") or [])
    rank = {t: i for i, t in enumerate(ORDER)}
    return sorted(conds, key=lambda c: rank.get(c.get("type", ""), len(ORDER)))


def blocking_reason(ws: dict[str, Any]) -> str | None:
    """The first condition that is not True, as a sentence; None when the workspace succeeded."""
    conds = _conditions(ws)
    succeeded = next((c for c in conds if c.get("type") == constants.WorkspaceSucceeded), None)
    if succeeded is not None and succeeded.get("status") == "True":
        return None
    for c in conds:
        if c.get("type") in (constants.WorkspaceSucceeded, constants.WorkspaceDeleting):
            continue
        if c.get("status") != "True":
            return f"{c['type']} is {c.get('status')} ({c.get('reason')}): {c.get('message') or ''}".strip()
    if succeeded is not None:
        return f"{succeeded.get('reason')}: {succeeded.get('message') or ''}".strip()
    return "the controller has not reported on it yet"


def render(ws: dict[str, Any], events: list[dict[str, Any]], out: TextIO) -> None:
    meta = ws["metadata"]
    status = ws.get("status") or {}
    out.write(f"Workspace {meta['namespace']}/{meta['name']}\n")
    out.write(f"  instance type: {(ws.get('resource') or {}).get('instanceType', '?')}\n")
    out.write(
        f"  state: {status.get('state', 'Unknown')}   target nodes: {status.get('targetNodeCount', '?')}"
        f"   worker nodes: {', '.join(status.get('workerNodes') or []) or '-'}\n"
    )
    out.write("  conditions:\n")
    for c in _conditions(ws):
        out.write(
            f"    {c['type']:<20} {c.get('status', '?'):<8} {c.get('reason', '')}: {c.get('message', '')}\n"
        )
    reason = blocking_reason(ws)
    # A tuning workspace ends with its adapter pushed; nothing is served.
    done = "done: the tuning job finished" if "tuning" in ws else "ready: the model is being served"
    out.write(f"  {done if reason is None else 'waiting on: ' + reason}\n")
    fix = fix_for(ws)
    if fix:
        out.write(f"  fix: {fix}\n")
    startup = status.get("startup")
    if startup:
        out.write(render_startup(startup))
    if events:
        out.write("  recent events:\n")
        for e in events[-10:]:
            when = e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp") or ""
            out.write(
                f"    {when[:19]}  {e.get('type', ''):<7} {e.get('reason', ''):<20} {e.get('note', '')}\n"
            )


def failing(ws: dict[str, Any]) -> list[dict[str, Any]]:
    """The conditions whose reason needs someone to act (reasons.NEEDS_ACTION)."""
    return [
        c for c in _conditions(ws) if c.get("status") == "False" and c.get("reason") in reasons.NEEDS_ACTION
    ]


def fix_for(ws: dict[str, Any]) -> str | None:
    for c in failing(ws):
        fix = reasons.FIXES.get(str(c.get("reason")))
        if fix:
            return fix
    return None


def render_startup(startup: dict[str, Any]) -> str:
    """The last start-up as a timeline: each phase's offset from the start, its length and a bar."""
    total = float(startup.get("seconds") or 0.0)
    begin = str(startup.get("startedAt") or "")
    lines = [f"  start-up (revision {startup.get('revision', '?')}): ready in {total:.0f} s\n"]
    width = 30
    for p in startup.get("phases") or ():
        offset = _seconds_between(begin, str(p.get("startedAt") or ""))
        length = float(p.get("seconds") or 0.0)
        lead = int(width * offset / total) if total > 0 else 0
        bar = max(1, round(width * length / total)) if total > 0 else 1
        lines.append(
            f"    {p.get('name', '?'):<18} {f'+{offset:.0f} s':>8} {length:>7.1f} s  "
            f"{' ' * min(lead, width)}{'#' * min(bar, width - min(lead, width - 1))}\n"
        )
    return "".join(lines)


def _seconds_between(a: str, b: str) -> float:
    try:
        return (
            datetime.fromisoformat(b.replace("Z", "+00:00"))
            - datetime.fromisoformat(a.replace("Z", "+00:00"))
        ).total_seconds()
    except ValueError:
        return 0.0


MARKS = {"True": "+", "False": "-"}


def progress_line(ws: dict[str, Any], elapsed: float) -> str:
    """One line of progress: elapsed time, how many of the workspace's conditions are True, each
    condition's mark (+ True, - False, ? Unknown) and, when not done, what it waits on."""
    conds = [c for c in _conditions(ws) if c.get("type") != constants.WorkspaceDeleting]
    done = sum(1 for c in conds if c.get("status") == "True")
    marks = " ".join(f"{MARKS.get(str(c.get('status')), '?')}{c['type']}" for c in conds)
    minutes, seconds = divmod(int(elapsed), 60)
    reason = blocking_reason(ws)
    tail = "ready" if reason is None else f"waiting on: {reason}"
    return f"[{minutes:02d}:{seconds:02d}] {done}/{len(conds)} {marks or '(no conditions yet)'} | {tail}"


async def _events(client: Client, ws: dict[str, Any]) -> list[dict[str, Any]]:
    uid = ws["metadata"].get("uid")
    found = await client.list(EVENT, namespace=ws["metadata"]["namespace"])
    mine = [e for e in found.items if (e.get("regarding") or {}).get("uid") == uid]
    return sorted(mine, key=lambda e: e.get("eventTime") or "")


async def status_main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    client = await (Client.from_kubeconfig(args.kubeconfig) if args.kubeconfig else Client.auto())
    async with client:
        started = time.monotonic()
        deadline = started + args.timeout
        last = None
        seen: dict[tuple[str, str], float] = {}  # failing (condition, reason) -> first seen
        live = _is_tty(out)
        while True:
            try:
                ws = await client.get(WORKSPACE, args.workspace, namespace=args.namespace)
            except NotFound:
                out.write(f"error: workspace {args.namespace}/{args.workspace} not found\n")
                return 2
            reason = blocking_reason(ws)
            if not args.wait:
                render(ws, await _events(client, ws), out)
                return 0 if reason is None else 1
            line = progress_line(ws, time.monotonic() - started)
            if live:
                # A terminal gets one line redrawn in place (the clock ticks); a log gets a line
                # per change only.
                out.write("\r\x1b[K" + line[: _width() - 1])
                out.flush()
            elif _progress_key(ws) != last:
                out.write(line + "\n")
                out.flush()
            last = _progress_key(ws)
            if reason is None:
                if live:
                    out.write("\n")
                return 0
            now = time.monotonic()
            current = {(str(c.get("type")), str(c.get("reason"))) for c in failing(ws)}
            seen = {k: seen.get(k, now) for k in current}
            failed = [
                k for k, since in seen.items() if k[1] in reasons.TERMINAL or now - since >= args.settle
            ]
            if failed or now > deadline:
                if live:
                    out.write("\n")
                if not failed:
                    out.write(f"timed out after {args.timeout:g} s\n")
                render(ws, await _events(client, ws), out)
                return 1
            await asyncio.sleep(args.interval)


def _progress_key(ws: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    return tuple((str(c.get("type")), str(c.get("status")), str(c.get("reason"))) for c in _conditions(ws))


def _is_tty(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def _width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


def run(args: argparse.Namespace) -> int:
    return asyncio.run(status_main(args))
