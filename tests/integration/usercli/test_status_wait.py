"""`kaitopy status --wait` against a real API server: the test plays the controller, patching the
workspace's status step by step, and the command follows it to the end."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kaitopy.api import WORKSPACE
from kaitopy.controllers.workspace.crds import ensure_workspace_crd
from kaitopy.runtime import Client
from kaitopy.usercli.status import status_main
from tests.support.cluster import Cluster
from tests.support.wait import eventually

STAMP = "2026-01-01T00:00:00Z"
SUCCEEDED = ("WorkspaceSucceeded", "True", "WorkspaceSucceeded")


@pytest.fixture
async def kclient(kube_cluster: Cluster) -> AsyncIterator[Client]:
    client = await Client.from_kubeconfig(str(kube_cluster.kubeconfig))
    async with client:
        await ensure_workspace_crd(client)
        yield client


async def _create(client: Client, namespace: str, name: str) -> None:
    await client.create(
        WORKSPACE,
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": namespace},
            "resource": {
                "instanceType": "Standard_NC6s_v3",
                "labelSelector": {"matchLabels": {"apps": "phi-3"}},
            },
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        },
    )


async def _set(client: Client, namespace: str, name: str, *conds: tuple[str, str, str]) -> None:
    body: dict[str, Any] = {
        "status": {
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": f"{r} now", "lastTransitionTime": STAMP}
                for t, s, r in conds
            ]
        }
    }
    await client.patch_status(WORKSPACE, name, body, namespace=namespace)


def _args(
    kube_cluster: Cluster, namespace: str, name: str, timeout: float, settle: float = 1.0
) -> argparse.Namespace:
    return argparse.Namespace(
        settle=settle,
        workspace=name,
        namespace=namespace,
        kubeconfig=str(kube_cluster.kubeconfig),
        wait=True,
        timeout=timeout,
        interval=0.1,
    )


async def _until(out: io.StringIO, text: str) -> None:
    async def seen() -> str:
        return out.getvalue()

    await eventually(seen, until=lambda v: text in v, timeout=20, interval=0.05, what=repr(text))


async def test_wait_follows_the_workspace_to_success(
    kube_cluster: Cluster, kclient: Client, namespace: str
) -> None:
    await _create(kclient, namespace, "phi")
    out = io.StringIO()
    waiting = asyncio.create_task(status_main(_args(kube_cluster, namespace, "phi", 60), out))
    await _until(out, "(no conditions yet)")
    await _set(
        kclient,
        namespace,
        "phi",
        ("NodeClaimReady", "False", "NodeClaimNotReady"),
        ("ResourceReady", "False", "WaitingForNodes"),
        ("InferenceReady", "False", "WorkloadNotCreated"),
        ("WorkspaceSucceeded", "False", "WorkspacePending"),
    )
    await _until(out, "0/4")
    await _set(
        kclient,
        namespace,
        "phi",
        ("NodeClaimReady", "True", "NodeClaimsReady"),
        ("ResourceReady", "True", "WorkspaceResourceReady"),
        ("InferenceReady", "False", "WorkloadNotReady"),
        ("WorkspaceSucceeded", "False", "WorkspacePending"),
    )
    await _until(out, "2/4")
    assert not waiting.done()
    await _set(
        kclient,
        namespace,
        "phi",
        ("NodeClaimReady", "True", "NodeClaimsReady"),
        ("ResourceReady", "True", "WorkspaceResourceReady"),
        ("InferenceReady", "True", "InferenceReady"),
        ("WorkspaceSucceeded", "True", "WorkspaceSucceeded"),
    )
    async with asyncio.timeout(20):
        assert await waiting == 0
    lines = out.getvalue().splitlines()
    # Not a terminal: one line per change, never a repeat.
    assert len(lines) == 4, lines
    assert "0/4 -NodeClaimReady -ResourceReady -InferenceReady -WorkspaceSucceeded" in lines[1]
    assert lines[1].endswith("waiting on: NodeClaimReady is False (NodeClaimNotReady): NodeClaimNotReady now")
    assert "2/4 +NodeClaimReady +ResourceReady -InferenceReady" in lines[2]
    assert lines[3].endswith("4/4 +NodeClaimReady +ResourceReady +InferenceReady +WorkspaceSucceeded | ready")


async def test_wait_stops_on_a_terminal_failure(
    kube_cluster: Cluster, kclient: Client, namespace: str
) -> None:
    await _create(kclient, namespace, "quota")
    await _set(
        kclient,
        namespace,
        "quota",
        ("NodeClaimReady", "False", "QuotaExceeded"),
        ("ResourceReady", "False", "QuotaExceeded"),
        ("WorkspaceSucceeded", "False", "WorkspacePending"),
    )
    out = io.StringIO()
    async with asyncio.timeout(20):
        assert await status_main(_args(kube_cluster, namespace, "quota", 60), out) == 1
    text = out.getvalue()
    assert "waiting on: NodeClaimReady is False (QuotaExceeded)" in text
    # The full report follows, conditions included.
    assert f"Workspace {namespace}/quota" in text and "timed out" not in text


async def test_wait_gives_up_on_a_failing_pod_once_it_settles(
    kube_cluster: Cluster, kclient: Client, namespace: str
) -> None:
    await _create(kclient, namespace, "pull")
    ready = (("ResourceReady", "True", "WorkspaceResourceReady"),)
    await _set(kclient, namespace, "pull", *ready, ("InferenceReady", "False", "CrashLoop"))
    out = io.StringIO()
    waiting = asyncio.create_task(status_main(_args(kube_cluster, namespace, "pull", 60, settle=3.0), out))
    await _until(out, "(CrashLoop)")
    # A first crash that clears within the settle time does not end the wait...
    await _set(kclient, namespace, "pull", *ready, ("InferenceReady", "False", "WorkloadNotReady"))
    await _until(out, "(WorkloadNotReady)")
    await _set(kclient, namespace, "pull", *ready, ("InferenceReady", "False", "ImagePullError"))
    await _until(out, "(ImagePullError)")
    assert not waiting.done()
    # ...one that stays does, with the fix.
    async with asyncio.timeout(20):
        assert await waiting == 1
    text = out.getvalue()
    assert "fix: check that the image name and tag exist in the registry" in text
    assert "timed out" not in text


async def test_wait_times_out(kube_cluster: Cluster, kclient: Client, namespace: str) -> None:
    await _create(kclient, namespace, "slow")
    out = io.StringIO()
    async with asyncio.timeout(20):
        assert await status_main(_args(kube_cluster, namespace, "slow", 0.5), out) == 1
    assert "timed out after 0.5 s" in out.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_wait_on_a_terminal_redraws_one_line(
    kube_cluster: Cluster, kclient: Client, namespace: str
) -> None:
    await _create(kclient, namespace, "tty")
    out = _Terminal()
    waiting = asyncio.create_task(status_main(_args(kube_cluster, namespace, "tty", 60), out))
    await _until(out, "(no conditions yet)")
    await _until(out, "\r\x1b[K[00:00] 0/0")  # redrawn every look, not only on a change
    await _set(kclient, namespace, "tty", ("ResourceReady", "True", "WorkspaceResourceReady"), SUCCEEDED)
    async with asyncio.timeout(20):
        assert await waiting == 0
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("2/2 +ResourceReady +WorkspaceSucceeded | ready\n")
