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
    tagged: str  # host/kaitopy/name:<input hash>
    ref: str  # host/kaitopy/name@sha256:... (a tag and a digest together trip containers/image tools)
    pushed: int  # bytes of (compressed) layers in the registry: what a node pulls
    size: str  # unpacked, as buildah's store reports it (empty when only the registry has it)
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
    pinned = f"{repo}@{manifest.digest}"
    refs.record(image.name, pinned)
    return Result(image.name, hashed, pinned, manifest.size(), buildah.local_size(hashed), seconds)


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def table(results: list[Result]) -> str:
    rows = [("IMAGE", "SIZE", "PUSHED", "BUILD", "TAG", "DIGEST")]
    for r in results:
        took = "cached" if r.seconds is None else f"{r.seconds:.0f}s"
        rows.append((r.name, r.size or "-", human(r.pushed), took, r.tagged, r.ref.split("@")[1]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows
    )
