"""vLLM's own OpenAI-server options, read from its argument parser.

Run as `python -m kaitopy.inference.vllm_options` (prints a JSON list) so the serving parent never
imports vLLM and torch itself; `known_vllm_options()` falls back to a built-in list when vLLM is absent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Collection

from kaitopy.inference.vllm_args import FALLBACK_VLLM_OPTIONS

log = logging.getLogger(__name__)


def vllm_options() -> list[str]:
    """Every long option of `vllm serve`, without the leading dashes (imports vLLM)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())  # type: ignore[no-untyped-call,unused-ignore]
    return sorted(
        {opt[2:] for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    )


async def known_vllm_options(python: str = sys.executable, timeout: float = 180.0) -> Collection[str]:
    proc = await asyncio.create_subprocess_exec(
        python,
        "-m",
        __name__,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        log.warning(
            "reading vLLM's options took over %.0f s; checking the config against a built-in list", timeout
        )
        return FALLBACK_VLLM_OPTIONS
    finally:
        # Timed out, or the start was cancelled (SIGTERM while loading): leave no process behind.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        log.warning("cannot read vLLM's options (%s); checking the config against a built-in list", last[0])
        return FALLBACK_VLLM_OPTIONS
    options: list[str] = json.loads(out)
    return frozenset(options)


if __name__ == "__main__":
    json.dump(vllm_options(), sys.stdout)
