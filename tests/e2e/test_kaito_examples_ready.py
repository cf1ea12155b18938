"""Kaito's own examples (v0.12, unchanged) that admission lets in reach the end state they reach in
Kaito — WorkspaceSucceeded — with the operator and the kwok provisioner. Each file gets its own
namespace (several files reuse a Workspace name as alternatives of each other)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client.api_client import ApiClient

from kaitopy.api.defaultconfigs import COPY_LABEL
from kaitopy.runtime import Client, kinds
from tests.e2e.operator import Operator
from tests.e2e.test_workspace import WORKSPACE, delete_and_wait, wait_condition
from tests.integration.api.test_kaito_examples import KAITO_EXAMPLES, REFUSED, workspace_files
from tests.support.cluster import Cluster
from tests.support.wait import eventually

DEFAULT_CONFIGS = Path(__file__).resolve().parents[2] / "manifests" / "base" / "default-configs.yaml"
FALCON = "fine-tuning/kaito_workspace_tuning_falcon_7b_mental.yaml"  # names qlora-params-template
NOT_READY_ON_KWOK: dict[str, str] = {
    # The test cluster has no storage provisioner: the example's PVC never binds (it does on AKS).
    "fine-tuning/kaito_workspace_tuning_phi_3_with_pvc_volume.yaml": (
        "unbound immediate PersistentVolumeClaims"
    ),
}
"""Admitted files that do not succeed on the test cluster, with why (a phrase of the condition)."""


def _admitted() -> list[Path]:
    return [p for p in workspace_files() if str(p.relative_to(KAITO_EXAMPLES)) not in REFUSED]


def _summary(ws: dict[str, Any] | None) -> str:
    conds = ((ws or {}).get("status") or {}).get("conditions") or []
    return "; ".join(f"{c['type']}={c['status']} {c.get('message', '')}" for c in conds)


async def _outcome(client: Client, name: str, ns: str, expected: str | None) -> str:
    """ "ready", or the conditions: once the expected reason shows (no waiting out the timeout
    for a file known not to succeed here), or when time runs out."""
    try:
        if expected is None:
            await wait_condition(client, name, ns, "WorkspaceSucceeded", timeout=150)
            return "ready"
        await eventually(
            lambda: client.get(WORKSPACE, name, namespace=ns),
            until=lambda w: expected in _summary(w),
            timeout=150,
            what=f"{ns}/{name}: {expected}",
        )
    except AssertionError:
        pass
    return _summary(await client.get(WORKSPACE, name, namespace=ns))


@pytest.mark.skipif(not KAITO_EXAMPLES.is_dir(), reason=f"Kaito's examples are not at {KAITO_EXAMPLES}")
async def test_admitted_kaito_examples_succeed_on_kwok(
    operator: Operator, kube_cluster: Cluster, api_client: ApiClient, namespace: str
) -> None:
    client = Client(api_client)
    # As installed: Kaito's default ConfigMaps in the operator's namespace.
    kube_cluster.kubectl("apply", "--server-side", "-f", str(DEFAULT_CONFIGS))
    operator.start_provisioner()
    operator.start_controller()
    placed: list[tuple[str, str, str]] = []  # (file, namespace, workspace)
    for i, path in enumerate(_admitted()):
        rel = str(path.relative_to(KAITO_EXAMPLES))
        ns = f"{namespace}-{i}"
        kube_cluster.kubectl("create", "namespace", ns)
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") == "Secret":  # placeholders; kwok pods read no Secret
                continue
            doc.setdefault("metadata", {})["namespace"] = ns
            kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
            if doc["kind"] == "Workspace":
                placed.append((rel, ns, doc["metadata"]["name"]))
    outcomes = await asyncio.gather(
        *(_outcome(client, name, ns, NOT_READY_ON_KWOK.get(rel)) for rel, ns, name in placed)
    )
    try:
        report = {rel: outcome for (rel, _, _), outcome in zip(placed, outcomes, strict=True)}
        print(json.dumps(report, indent=1))
        for rel, outcome in report.items():
            expected = NOT_READY_ON_KWOK.get(rel)
            if expected is None:
                assert outcome == "ready", f"{rel}: {outcome}"
            else:
                assert expected in outcome, f"{rel}: {outcome}"
        # The falcon example's Job mounts the copy of the default made in its namespace, owned by it.
        [(ns, name)] = [(ns, name) for rel, ns, name in placed if rel == FALCON]
        job = await client.get(kinds.JOB, name, namespace=ns)
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "qlora-params-template"
        copy = await client.get(kinds.CONFIG_MAP, "qlora-params-template", namespace=ns)
        assert copy["metadata"]["labels"][COPY_LABEL] == "true"
        assert [r["name"] for r in copy["metadata"]["ownerReferences"]] == [name]
    finally:
        await asyncio.gather(*(delete_and_wait(client, kube_cluster, name, ns) for _, ns, name in placed))
        for ns in sorted({ns for _, ns, _ in placed}):
            kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")
