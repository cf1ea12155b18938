"""The `kaitopy` command: one entry point, one subcommand per job.

Subcommands register themselves lazily so that `kaitopy --help` stays fast and a controller
image does not need the model server's dependencies (and vice versa).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from kaitopy import __version__

# name -> (module, one-line help). Each module exposes `add_arguments(parser)` and `run(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "version": ("kaitopy.cli", "print the version"),
    "provisioner": ("kaitopy.provisioner.app", "run the GPU node provisioner (NodeClaim controller)"),
    "controller": ("kaitopy.controllers.workspace.app", "run the Workspace controller"),
    "activator": (
        "kaitopy.activator.app",
        "run the activator: holds requests for InferenceSets at zero while it wakes them",
    ),
    "local-nodes": (
        "kaitopy.provisioner.local.command",
        "list or reset the local provider's nodes on this machine",
    ),
    "status": ("kaitopy.usercli.status", "show a workspace's conditions, events and what it waits on"),
    "presets": ("kaitopy.usercli.presets", "list the model presets and the instance types each fits"),
    "estimate": ("kaitopy.usercli.estimate", "plan a preset on an instance type: nodes, GPUs, parallelism"),
    "webhook": ("kaitopy.webhooks.command", "run the Workspace validating admission webhook"),
    "serve": ("kaitopy.inference.cli", "run the model server (OpenAI API, Kaito's /chat) in a pod"),
    "tune": ("kaitopy.tuning.command", "tuning Job steps: fetch data, train an adapter, push/pull its image"),
    "weights": ("kaitopy.weights.command", "build a preset's weights, push/pull them as OCI artifacts"),
}


def _version_run(_: argparse.Namespace) -> int:
    print(__version__)
    return 0


def build_parser(subcommands: dict[str, tuple[str, str]] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaitopy",
        description="Deploy and fine-tune AI models on GPU clusters through Kaito's Workspace API.",
    )
    parser.add_argument("--version", action="version", version=f"kaitopy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in (subcommands or SUBCOMMANDS).items():
        # A module's subcommand leaves --help to the module's own parser (built in main()).
        own = module_name == __name__
        p = sub.add_parser(name, help=help_text, description=help_text, add_help=own)
        if own:
            p.set_defaults(run=_version_run)
            continue
        p.set_defaults(module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list else None
    entry = SUBCOMMANDS.get(command or "")
    if entry is not None and entry[0] != __name__:
        # The subcommand's own parser, imported only now (its --help included).
        module = importlib.import_module(entry[0])
        sub_parser = argparse.ArgumentParser(prog=f"kaitopy {command}", description=entry[1])
        module.add_arguments(sub_parser)
        sub_args = sub_parser.parse_args(args_list[1:])
        run: Callable[[argparse.Namespace], int] = module.run
        return run(sub_args)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0
    result: int = args.run(args)
    return result
