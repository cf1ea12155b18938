"""`python -m kaitopy.inference [serve] --model-dir ...`: the model server without the `kaitopy` script."""

from __future__ import annotations

import sys

from kaitopy.cli import main

args = sys.argv[1:]
raise SystemExit(main(args if args[:1] == ["serve"] else ["serve", *args]))
