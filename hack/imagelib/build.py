"""Build one image: stage its context, hash the inputs, and either find that hash already in the
registry ("cached") or build with buildah and push it. Either way `:dev` ends up on the same manifest
and images.json records the digest-pinned reference."""

from __future__ import annotations

import time
from dataclasses import dataclass

from imagelib import buildah, paths, refs, remote, staging
from imagelib.catalog import Image
from imagelib.contenthash import image_hash
from imagelib.progress import say, step

STABLE_TAG = "dev"


@dataclass(frozen=True)
class Result:
    name: str
    ref: str  # host/kaitopy/name:hash@sha256:...
    size: int  # bytes of layers in the registry (uncompressed: pushed with -D)
    seconds: float | None  # build and push time; None when cached


def repository(name: str) -> str:
    return f"{paths.registry_host()}/{paths.NAMESPACE}/{name}"


def build(image: Image, base: tuple[str, str] | None = None) -> Result:
    """`base` is (reference, image ID) of the Python base, for images built on it."""
    context = staging.fresh(paths.cache_dir() / "contexts" / image.name)
    with step(f"stage {image.name}'s build context"):
        image.stage(context)
    args = dict(image.build_args)
    base_id = ""
    if image.on_base:
        if base is None:
            raise ValueError(f"{image.name} is built on the Python base; pass it")
        args["BASE"], base_id = base
    h = image_hash(image.dockerfile, context, base_id, args)
    repo = repository(image.name)
    hashed, stable = f"{repo}:{h}", f"{repo}:{STABLE_TAG}"

    seconds: float | None = None
    manifest = remote.manifest(hashed)
    if manifest is not None:
        say(f"{hashed}: cached (this input hash is already in the registry)")
    else:
        t0 = time.monotonic()
        with step(f"buildah bud {hashed}"):
            buildah.bud(image.dockerfile, context, [hashed, stable], args)
        with step(f"push {hashed}"):
            buildah.push(hashed, hashed)
        seconds = time.monotonic() - t0
        manifest = remote.manifest(hashed)
        if manifest is None:
            raise SystemExit(f"pushed {hashed} but the registry does not list it")
    current = remote.manifest(stable)
    if current is None or current.digest != manifest.digest:
        remote.put_tag(stable, manifest)
    pinned = f"{hashed}@{manifest.digest}"
    refs.record(image.name, pinned)
    return Result(image.name, pinned, manifest.size(), seconds)


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def table(results: list[Result]) -> str:
    rows = [("IMAGE", "SIZE", "BUILD", "REFERENCE")]
    for r in results:
        took = "cached" if r.seconds is None else f"{r.seconds:.0f}s"
        rows.append((r.name, human(r.size), took, r.ref))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)) for row in rows
    )
