"""`kaitopy weights build|push|pull`: make a preset's weights, publish them as an OCI artifact,
and fetch them into a pod's weights volume (the init container runs `pull`).

Each step exits 0 on success and 1 with one clear error line otherwise, which the init
container's log and the pod's status then show.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kaitopy.logconfig import configure

log = logging.getLogger("kaitopy.weights")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="step", metavar="STEP", required=True)

    b = sub.add_parser("build", help="convert SmolLM2-135M-Instruct's packaged GGUF into a HF directory")
    b.add_argument("--dest", type=Path, default=None, help="default ~/.cache/kaitopy/models/<preset>")
    b.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")

    p = sub.add_parser("push", help="push a model directory as an OCI artifact")
    p.add_argument("--image", required=True, help="REGISTRY/REPO:TAG")
    p.add_argument("dir", type=Path, help="the model directory (Hugging Face layout)")
    _registry_flags(p)

    q = sub.add_parser("pull", help="pull a weights artifact into a directory, checking every digest")
    q.add_argument("--image", required=True, help="REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...")
    q.add_argument("--dest", type=Path, required=True)
    q.add_argument("--digest", default=None, help="sha256:... the manifest must hash to")
    _registry_flags(q)


def _registry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--docker-config", type=Path, default=None, help=".dockerconfigjson with the credentials")
    p.add_argument(
        "--plain-http",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="talk HTTP, not HTTPS, to the registry (default: HTTP only for a loopback registry)",
    )


def _plain_http(args: argparse.Namespace) -> bool:
    from kaitopy.tuning.oci import parse_image
    from kaitopy.weights.artifact import is_loopback

    if args.plain_http is not None:
        return bool(args.plain_http)
    return is_loopback(parse_image(args.image).registry)


def _build(args: argparse.Namespace) -> int:
    from kaitopy.weights.build import BuildError, build

    try:
        built = build(args.dest, args.dtype)
    except BuildError as exc:
        log.error("build failed: %s", exc)
        return 1
    print(built.path)
    return 0


def _push(args: argparse.Namespace) -> int:
    from kaitopy.tuning.oci import OciError
    from kaitopy.weights.artifact import push

    try:
        digest = push(args.dir, args.image, args.docker_config, _plain_http(args))
    except OciError as exc:
        log.error("push failed: %s", exc)
        return 1
    print(f"{args.image}@{digest}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from kaitopy.tuning.oci import OciError
    from kaitopy.weights.artifact import pull

    try:
        pulled = pull(args.image, args.dest, args.digest, args.docker_config, _plain_http(args))
    except OciError as exc:
        log.error("pull failed: %s", exc)
        return 1
    print(f"{args.dest} holds {args.image} ({pulled.digest}, {len(pulled.files)} files)")
    return 0


STEPS = {"build": _build, "push": _push, "pull": _pull}


def run(args: argparse.Namespace) -> int:
    configure(args.log_format, args.log_level)
    return STEPS[args.step](args)
