"""What a test run left on this machine: processes, links, mounts and pod network namespaces of
the project's. Prints each and exits 1 when there is any; `.ci/run` calls it after the tests, so
"the suite cleans up after itself" is checked on every run, not only claimed.

Only the project's own things count (found by its paths, link names and pod network), so a
machine's other daemons never fail the check. Machine-wide and once, after the whole run:
tests/support/leftovers.py is the per-test check (a test's own descendants)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from kaitopy.provisioner.local import network
from kaitopy.provisioner.local.layout import DATA_DIR
from kaitopy.provisioner.local.provider import MACHINE_DIR

REPO = Path(__file__).resolve().parents[1]
# The control plane, binaries, images and registry live under the cache; the nodes' runtime
# data and the machine-wide daemons under DATA_DIR's and MACHINE_DIR's folders; what the tests
# start in Python (operators, model servers) runs the checkout's virtual environment.
MARKERS = (
    str(Path("~/.cache/kaitopy").expanduser()),
    str(DATA_DIR.parent),
    str(MACHINE_DIR),
    str(REPO / ".venv"),
)
# Local nodes' bridges (kpbr<i>), the cluster DNS's link (kpdns0), the API server's and the
# registry's (kaitopy-api, kaitopy-reg).
LINK_PREFIXES = ("kpbr", "kpdns", "kaitopy-")


def ancestors() -> set[int]:
    """This process and those that started it (the CI's own shell names the checkout)."""
    found, pid = set(), os.getpid()
    while pid > 1:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[-1].split()[1])
    return found


def processes() -> list[str]:
    skip = ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(marker in argv for marker in MARKERS):
            found.append(f"process {entry.name}: {argv[:200]}")
    return found


def links() -> list[str]:
    return [f"link {p.name}" for p in Path("/sys/class/net").iterdir() if p.name.startswith(LINK_PREFIXES)]


def mounts() -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if any(point.startswith(marker) for marker in MARKERS):
            found.append(f"mount {point}")
    return found


def pod_namespaces() -> list[str]:
    return [f"pod network namespace {name}" for name in asyncio.run(network.pod_namespaces())]


def main() -> int:
    left = processes() + links() + mounts() + pod_namespaces()
    for what in left:
        print(f"leftover: {what}")
    if left:
        print(
            f"{len(left)} thing(s) left behind; hack/localcluster.py down, hack/images.py registry down"
            " and `kaitopy local-nodes reset` remove them",
            file=sys.stderr,
        )
        return 1
    print("leftovers: none (no process, link, mount or pod network namespace of the project's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
