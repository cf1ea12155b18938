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
    "webhook": ("kaitopy.webhooks.command", "run the Workspace validating admission webhook"),
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
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    module_name: str | None = getattr(args, "module", None)
    if module_name is not None:
        # Re-parse with the subcommand's own arguments, imported only now.
        module = importlib.import_module(module_name)
        sub_parser = argparse.ArgumentParser(
            prog=f"kaitopy {args.command}", description=SUBCOMMANDS[args.command][1]
        )
        module.add_arguments(sub_parser)
        sub_args = sub_parser.parse_args(list(argv if argv is not None else sys.argv[1:])[1:])
        run: Callable[[argparse.Namespace], int] = module.run
        return run(sub_args)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result
