"""A manager in its own process, for tests that must SIGKILL or SIGTERM it.

It runs one controller over the ConfigMaps of --namespace under leader election, and tells the test
what happens on stdout: LEADING once it reconciles, START/DONE <name> around each reconcile (which
sleeps --sleep seconds, then stamps the ConfigMap with its identity), LOST and exit 3 if the lease is
lost, and exit 0 after a graceful stop.

    python -m tests.integration.runtime.manager_proc --kubeconfig K --namespace NS --identity ID
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from kaitopy.runtime import (
    Client,
    LeaderElectionSettings,
    LeadershipLost,
    Manager,
    ManagerSettings,
    Request,
    Result,
    kinds,
)

LEASE = "manager-proc-test"


def say(line: str) -> None:
    print(line, flush=True)


async def main(args: argparse.Namespace) -> int:
    async with await Client.from_kubeconfig(args.kubeconfig) as client:
        mgr = Manager(
            client,
            ManagerSettings(
                leader_election=LeaderElectionSettings(LEASE, args.namespace, args.identity),
                probe_port=None,
                graceful_shutdown_timeout=args.drain_timeout,
            ),
        )
        stamped: set[str] = set()

        async def reconcile(req: Request) -> Result | None:
            if req.name in stamped or req.name == "kube-root-ca.crt":
                return None
            say(f"START {req.name}")
            await asyncio.sleep(args.sleep)
            await client.patch(
                kinds.CONFIG_MAP,
                req.name,
                {"metadata": {"annotations": {"reconciled-by": args.identity}}},
                namespace=req.namespace,
            )
            stamped.add(req.name)
            say(f"DONE {req.name}")
            return None

        mgr.controller("proc").for_(kinds.CONFIG_MAP, namespace=args.namespace).build(reconcile)
        run = asyncio.create_task(mgr.run())
        running = asyncio.create_task(mgr.wait_running())
        await asyncio.wait({run, running}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            say("LEADING")
        try:
            await run
        except LeadershipLost:
            say("LOST")
            return 3
        say("STOPPED")
        return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--drain-timeout", type=float, default=30.0)
    sys.exit(asyncio.run(main(p.parse_args())))
