"""`kaitopy local-nodes list|reset`: the local provider's nodes on this machine, for an admin.

`reset` tears down every local node whoever made it, with or without its record, and the
machine-wide parts (kube-proxy, its chains, the guards): after a crash, or before a test run
that must start from a clean machine. It does not touch the API server's objects."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from kaitopy.provisioner.local import network, node
from kaitopy.provisioner.local.layout import DATA_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "reset"))
    parser.add_argument(
        "--bin-dir",
        default=os.environ.get("KAITOPY_LOCAL_BIN_DIR"),
        help="where kube-proxy is, to remove its rules (env KAITOPY_LOCAL_BIN_DIR)",
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        found = sorted(network.bridges())
        for bridge in found:
            index = bridge.removeprefix("kpbr")
            print(f"{bridge}\t{network_address(int(index))}\t{DATA_DIR / index}")
        return 0
    removed = asyncio.run(reset(Path(args.bin_dir) if args.bin_dir else None))
    for what in removed:
        print(f"removed {what}")
    return 0


def network_address(index: int) -> str:
    return f"10.230.{index}.1"


async def reset(bin_dir: Path | None) -> list[str]:
    from kaitopy.provisioner.local import localdns
    from kaitopy.provisioner.local.provider import MACHINE_DIR
    from kaitopy.provisioner.local.proxy import stop_recorded

    removed = await node.reset_machine()
    if await stop_recorded(MACHINE_DIR, bin_dir / "kube-proxy" if bin_dir else None):
        removed.append("kube-proxy")
    if await localdns.stop_recorded(MACHINE_DIR):
        removed.append("cluster DNS")
    await network.remove_kube_chains()
    await network.remove_guard()
    return removed
