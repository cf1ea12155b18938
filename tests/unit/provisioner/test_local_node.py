"""A node start keeps the agents of its node that already run, even ones its record lost."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from kaitopy.provisioner.local import node, system
from kaitopy.provisioner.local.layout import NodeLayout


async def fake_agent(tmp_path: Path, agent: str, layout: NodeLayout) -> int:
    """A process named like the agent whose command line names the node's folder (as the real
    agents' do): `tail -f` on a file there, under the agent's name."""
    binary = tmp_path / "bin" / agent
    binary.parent.mkdir(exist_ok=True)
    shutil.copy(shutil.which("tail") or "/usr/bin/tail", binary)
    watched = layout.root / f"{agent}.state"
    watched.parent.mkdir(parents=True, exist_ok=True)
    watched.write_text("")
    return await system.spawn_detached([str(binary), "-f", str(watched)], layout.logs / f"{agent}.log")


async def test_agents_the_record_does_not_name_are_adopted_not_started_twice(tmp_path: Path) -> None:
    layout = NodeLayout("n1", 1, tmp_path / "node")
    marker = str(layout.root)
    containerd = await fake_agent(tmp_path, "containerd", layout)
    kubelet = await fake_agent(tmp_path, "kubelet", layout)
    try:
        # A start interrupted before it saved the record: neither pid is in it.
        record = node.NodeRecord(name="n1", index=1, instance_type="x", created_at=time.time())
        node._adopt_running_agents(layout, record)
        assert record.pids == {"containerd": containerd, "kubelet": kubelet}
        assert node.dead_agents(layout, record) == []

        # A record that names a pid no agent has any more (it ended, or is someone else's now).
        record.pids["kubelet"] = 1
        node._adopt_running_agents(layout, record)
        assert record.pids["kubelet"] == kubelet

        # Nothing of the node runs: nothing is adopted, the start starts its own.
        await system.kill_all([containerd, kubelet], marker)
        fresh = node.NodeRecord(name="n1", index=1, instance_type="x", created_at=time.time())
        node._adopt_running_agents(layout, fresh)
        assert fresh.pids == {}
    finally:
        await system.kill_all([containerd, kubelet], marker)
