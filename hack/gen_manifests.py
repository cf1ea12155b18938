"""Write manifests/crds/*.yaml (and the Helm chart's copy, charts/kaitopy/files/crds) from the
code that defines them, docs/api-reference.md from those CRDs, and the alerts' PrometheusRule from
their plain rules file (hack/alerts.py) (`make manifests`).

`--check` writes nothing and exits 1 when a committed file differs from what would be written.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import alerts
from api_reference import render as render_reference

from kaitopy.api.constants import UNSERVED_KINDS
from kaitopy.api.crd import inferenceset_crd, render, unserved_crd, workspace_crd
from kaitopy.provisioner.crds import nodeclaim_crd, nodeclass_crd

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "manifests" / "crds"
CHART_CRDS = REPO / "charts" / "kaitopy" / "files" / "crds"


def generators() -> dict[str, Callable[[], dict[str, Any]]]:
    """File name -> the function building the object it holds."""
    return {
        "kaito.sh_workspaces.yaml": workspace_crd,
        "kaito.sh_inferencesets.yaml": inferenceset_crd,
        "karpenter.sh_nodeclaims.yaml": nodeclaim_crd,
        "kaito.sh_kaitonodeclasses.yaml": nodeclass_crd,
        **{
            f"kaito.sh_{spec.plural}.yaml": functools.partial(unserved_crd, kind)
            for kind, spec in UNSERVED_KINDS.items()
        },
    }


def kustomization() -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(generators()),
    }


def expected() -> dict[Path, str]:
    rendered = {name: render(build()) for name, build in generators().items()}
    files = {d / name: text for d in (CRDS, CHART_CRDS) for name, text in rendered.items()}
    files[CRDS / "kustomization.yaml"] = render(kustomization())
    files[alerts.PROMETHEUS_RULE] = alerts.render()
    files[REPO / "docs" / "api-reference.md"] = render_reference([build() for build in generators().values()])
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a committed file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if args.check and stale:
        print("stale (run `make manifests`): " + ", ".join(str(p.relative_to(REPO)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
