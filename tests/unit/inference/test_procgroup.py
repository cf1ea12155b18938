"""procgroup: the vLLM child leads a process group of its own but stays in the server's session."""

from __future__ import annotations

import os
from pathlib import Path

from kaitopy.inference import procgroup


def _pgrp_and_session(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[2]), int(fields[3])


async def test_child_leads_its_group_in_the_servers_session_and_goes_with_it() -> None:
    # A new session would also be a new scheduler autogroup on Linux: the child's tree then competed
    # with the rest of the machine as one task group (+40-55 ms time to first token on a loaded box).
    child = await procgroup.start("sh", "-c", "sleep 60 & sleep 60")
    try:
        pgrp, session = _pgrp_and_session(child.pid)
        assert pgrp == child.pid
        assert session == os.getsid(0)
    finally:
        gone = await procgroup.stop_group(child, grace=0.5, term_wait=1.0)
    assert gone
    assert procgroup.group_members(child.pid) == []
