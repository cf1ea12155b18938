"""`kaitopy status <workspace>`: the conditions, the events and, in one line, why a workspace is
not ready yet; `--wait` follows it until it succeeds (or fails for good)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from typing import Any, TextIO

from kaitopy.runtime import Client, Kind, NotFound

WORKSPACE = Kind("kaito.sh", "v1beta1", "Workspace", "workspaces")
EVENT = Kind("events.k8s.io", "v1", "Event", "events")
ORDER = (
    "NodeClaimReady",
    "ResourceReady",
    "InferenceReady",
    "JobStarted",
    "WorkspaceSucceeded",
    "WorkspaceDeleting",
)
TERMINAL_REASONS = {
    "QuotaExceeded",
    "InsufficientCapacity",
    "SKUNotAvailable",
    "TuningJobFailed",
    "InvalidPreset",
    "InvalidInstanceType",
    "InsufficientGPUMemory",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workspace", help="workspace name")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--wait", action="store_true", help="follow until it succeeds or fails for good")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS")
    parser.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="how often --wait looks again"
    )


def _conditions(ws: dict[str, Any]) -> list[dict[str, Any]]:
    conds = list((ws.get("status") or {}).get("conditions") or [])
    rank = {t: i for i, t in enumerate(ORDER)}
    return sorted(conds, key=lambda c: rank.get(c.get("type", ""), len(ORDER)))


def blocking_reason(ws: dict[str, Any]) -> str | None:
    """The first condition that is not True, as a sentence; None when the workspace succeeded."""
    conds = _conditions(ws)
    succeeded = next((c for c in conds if c.get("type") == "WorkspaceSucceeded"), None)
    if succeeded is not None and succeeded.get("status") == "True":
        return None
    for c in conds:
        if c.get("type") in ("WorkspaceSucceeded", "WorkspaceDeleting"):
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
    out.write(f"  {'ready: the model is being served' if reason is None else 'waiting on: ' + reason}\n")
    if events:
        out.write("  recent events:\n")
        for e in events[-10:]:
            when = e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp") or ""
            out.write(
                f"    {when[:19]}  {e.get('type', ''):<7} {e.get('reason', ''):<20} {e.get('note', '')}\n"
            )


MARKS = {"True": "+", "False": "-"}


def progress_line(ws: dict[str, Any], elapsed: float) -> str:
    """One line of progress: elapsed time, how many of the workspace's conditions are True, each
    condition's mark (+ True, - False, ? Unknown) and, when not done, what it waits on."""
    conds = [c for c in _conditions(ws) if c.get("type") != "WorkspaceDeleting"]
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
            failed = [
                c
                for c in _conditions(ws)
                if c.get("reason") in TERMINAL_REASONS and c.get("status") == "False"
            ]
            if failed or time.monotonic() > deadline:
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
