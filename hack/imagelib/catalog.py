"""The images hack/images.py builds: name, Dockerfile, how to stage its context, whether it sits on
the Python base. Build order is the order here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imagelib import paths, pylock, staging

TORCH_VERSION = pylock.TORCH_VERSION


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: Path
    stage: Callable[[Path], None]  # fills an empty build context
    on_base: bool = False  # built FROM the Debian Python base (passed as --build-arg BASE=...)
    build_args: dict[str, str] = field(default_factory=dict)
    on_demand: bool = False  # built only when named (`build NAME`), not by `build` with no names


def _stage_controller(context: Path) -> None:
    staging.add_project(context)
    staging.add_locked_environment(context, "controller")


def _stage_model_server(context: Path) -> None:
    staging.add_project(context)
    staging.add_locked_environment(context, "model-server-cpu")


def _stage_vllm_model_server(context: Path) -> None:
    staging.add_project(context)
    staging.add_locked_environment(context, "model-server-vllm-cpu")


def _stage_tools(context: Path) -> None:
    staging.add_busybox(context)
    # The image holds Debian's busybox-static binary and nothing else: its SBOM is that package.
    staging.add_host_sbom(context, "tools", ["busybox-static"])


def _stage_pause(context: Path) -> None:
    staging.add_pause(context)
    # pause.c linked statically against the host's glibc (libc6-dev's libc.a).
    staging.add_host_sbom(context, "pause", ["libc6-dev"])


IMAGES: list[Image] = [
    Image("pause", paths.DOCKER / "pause" / "Dockerfile", _stage_pause),
    Image("tools", paths.DOCKER / "tools" / "Dockerfile", _stage_tools),
    Image("controller", paths.DOCKER / "controller" / "Dockerfile", _stage_controller, on_base=True),
    Image(
        "model-server-cpu",
        paths.DOCKER / "runtime-cpu" / "Dockerfile",
        _stage_model_server,
        on_base=True,
        build_args={"TORCH_VERSION": TORCH_VERSION},
    ),
    # Last: the largest (2.7 GB), and only the multi-node preset needs it: built when named.
    Image(
        "model-server-vllm-cpu",
        paths.DOCKER / "runtime-vllm-cpu" / "Dockerfile",
        _stage_vllm_model_server,
        on_base=True,
        build_args={"TORCH_VERSION": TORCH_VERSION},
        on_demand=True,
    ),
]
BY_NAME = {image.name: image for image in IMAGES}
