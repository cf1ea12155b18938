"""The images hack/images.py builds: name, Dockerfile, how to stage its context, whether it sits on
the Python base. Build order is the order here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imagelib import paths, staging, wheels

TORCH_VERSION = "2.13.0+cpu"


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: Path
    stage: Callable[[Path], None]  # fills an empty build context
    on_base: bool = False  # built FROM the Debian Python base (passed as --build-arg BASE=...)
    build_args: dict[str, str] = field(default_factory=dict)


def _stage_controller(context: Path) -> None:
    staging.add_project(context)
    staging.add_wheels(context, wheels.ensure("controller", wheels.project_requirements()))


def _stage_model_server(context: Path) -> None:
    staging.add_project(context)
    reqs = [f"torch=={TORCH_VERSION}", *wheels.project_requirements(["inference-transformers"])]
    staging.add_wheels(context, wheels.ensure("model-server-cpu", reqs))


IMAGES: list[Image] = [
    Image("pause", paths.DOCKER / "pause" / "Dockerfile", staging.add_pause),
    Image("tools", paths.DOCKER / "tools" / "Dockerfile", staging.add_busybox),
    Image("controller", paths.DOCKER / "controller" / "Dockerfile", _stage_controller, on_base=True),
    Image(
        "model-server-cpu",
        paths.DOCKER / "runtime-cpu" / "Dockerfile",
        _stage_model_server,
        on_base=True,
        build_args={"TORCH_VERSION": TORCH_VERSION},
    ),
]
BY_NAME = {image.name: image for image in IMAGES}
