"""Build kaitopy's images with buildah and serve them from a loopback registry, cached by content.

    python hack/images.py registry up|down|status   the anonymous registry on 127.0.0.1:$KAITOPY_REGISTRY_PORT
    python hack/images.py base                      the Debian Python base (mmdebstrap) in buildah's store
    python hack/images.py build [NAME ...]          build and push (default: all but model-server-vllm-cpu,
                                                    which is built when named); unchanged inputs: "cached"
    python hack/images.py refs                      print images.json (name -> reference@digest)

Other code imports `image_refs()` from here (see docs/images.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Runs as a script (hack/ is then on sys.path already) or is imported by path from tests and tooling.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from imagelib import base, catalog, lock, paths, prereqs, pylock, refs, registry  # noqa: E402
from imagelib import build as builder  # noqa: E402
from imagelib.progress import say  # noqa: E402


def image_refs() -> dict[str, str]:
    """name -> `10.229.254.1:5001/kaitopy/<name>@sha256:...` for every image last built or found cached.

    Names: pause, tools, controller, model-server-cpu, base-python. Empty before the first build.
    """
    return refs.load()


def build(names: list[str]) -> list[builder.Result]:
    """Build (or find cached) the named images, all when `names` is empty; registry and base first."""
    unknown = [n for n in names if n not in catalog.BY_NAME]
    if unknown:
        raise SystemExit(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(catalog.BY_NAME)}")
    wanted = [i for i in catalog.IMAGES if (not names and not i.on_demand) or i.name in names]
    prereqs.ensure()
    say(registry.up().describe())
    with lock.exclusive():
        base_ref = base.ensure() if any(i.on_base for i in wanted) else None
        return [builder.build(image, base_ref) for image in wanted]


def ensure(names: list[str]) -> dict[str, str]:
    """Build (or find cached) the named images, print their table, and return every reference:
    what the demo, deploy_local.py and the real-node tests call before they need images."""
    t0 = time.monotonic()
    results = build(names)
    say("")
    say(builder.table(results))
    say(f"\n{len(results)} image(s) in {time.monotonic() - t0:.0f}s; references in {paths.refs_file()}")
    refs_now = image_refs()
    missing = [n for n in names if n not in refs_now]
    if missing:
        raise SystemExit(f"built but no reference recorded for {', '.join(missing)}")
    return refs_now


def _registry(action: str) -> int:
    if action == "up":
        prereqs.ensure()
        say(registry.up().describe())
    elif action == "down":
        say("registry stopped" if registry.down() else "registry: none of ours was running")
    else:
        st = registry.status()
        say(st.describe())
        return 0 if st.healthy else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/images.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("registry").add_argument("action", choices=["up", "down", "status"])
    sub.add_parser("base")
    sub.add_parser("build").add_argument("names", nargs="*", metavar="NAME")
    sub.add_parser("refs")
    sub.add_parser("lock", help="re-resolve requirements/*.lock (uv pip compile --generate-hashes)")
    args = parser.parse_args(argv)

    if args.cmd == "registry":
        return _registry(args.action)
    if args.cmd == "refs":
        for name, ref in image_refs().items():
            print(f"{name}\t{ref}")
        return 0
    if args.cmd == "lock":
        for name in pylock.LOCKED:
            say(f"locked {name}: {pylock.compile_lock(name)}")
        return 0
    if args.cmd == "base":
        prereqs.ensure()
        registry.up()
        with lock.exclusive():
            base.ensure()
        return 0
    ensure(args.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
