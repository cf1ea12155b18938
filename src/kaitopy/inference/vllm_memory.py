"""Measure the memory a vLLM launch can use: free GPU memory per GPU, else the pod's available RAM.

Measured without importing torch (nvidia-smi on GPU nodes, /proc and the cgroup on CPU) so the model
server's parent process stays small; vLLM's child is the only one that loads CUDA.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from kaitopy.inference.vllm_args import Memory

log = logging.getLogger(__name__)

MIB = 1024**2


def parse_nvidia_smi(text: str) -> Memory | None:
    """`nvidia-smi --query-gpu=memory.free,memory.total --format=csv,noheader,nounits` -> the smallest
    free figure over the GPUs (vLLM shards evenly, so the fullest GPU decides) and its total."""
    rows: list[tuple[int, int]] = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            continue
        rows.append((int(parts[0]) * MIB, int(parts[1]) * MIB))
    if not rows:
        return None
    free, total = min(rows)
    return Memory("cuda", free, total)


def parse_meminfo(text: str) -> tuple[int, int] | None:
    """(MemAvailable, MemTotal) in bytes from /proc/meminfo."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key] = int(fields[0]) * 1024
    if "MemAvailable" not in values or "MemTotal" not in values:
        return None
    return values["MemAvailable"], values["MemTotal"]


def cpu_memory(meminfo: str, cgroup_max: str | None, cgroup_current: str | None) -> Memory:
    """Available RAM, bounded by the container's cgroup limit when it has one."""
    parsed = parse_meminfo(meminfo)
    if parsed is None:
        raise RuntimeError("cannot read MemAvailable from /proc/meminfo")
    free, total = parsed
    if cgroup_max and cgroup_max.strip().isdigit() and cgroup_current and cgroup_current.strip().isdigit():
        limit = int(cgroup_max.strip())
        free = min(free, limit - int(cgroup_current.strip()))
        total = min(total, limit)
    return Memory("cpu", max(free, 0), total)


def with_limit(memory: Memory, limit_bytes: int | None) -> Memory:
    """RAM bounded by an explicit container memory limit (--memory-limit), for runtimes whose cgroup
    does not show it. The processes already running count against it only as far as /proc shows;
    GPU memory is not RAM and stays as measured."""
    if limit_bytes is None or memory.device != "cpu":
        return memory
    return Memory("cpu", min(memory.free_bytes, limit_bytes), min(memory.total_bytes, limit_bytes))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


async def measure_memory() -> Memory:
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        proc = await asyncio.create_subprocess_exec(
            smi,
            "--query-gpu=memory.free,memory.total",
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        gpu = parse_nvidia_smi(out.decode()) if proc.returncode == 0 else None
        if gpu is not None:
            return gpu
        log.warning("nvidia-smi found but reported no GPU; sizing for CPU")
    cgroup = Path("/sys/fs/cgroup")
    return cpu_memory(
        _read(Path("/proc/meminfo")) or "", _read(cgroup / "memory.max"), _read(cgroup / "memory.current")
    )
