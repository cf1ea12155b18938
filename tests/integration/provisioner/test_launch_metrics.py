"""kaitopy_nodeclaim_launch_seconds: one observation per claim and condition, from the claim's
creation to Launched and to Ready, taken by the lifecycle controller against the real control plane."""

from __future__ import annotations

from pathlib import Path

from kubernetes_asyncio.client.api_client import ApiClient
from prometheus_client.parser import text_string_to_metric_families

from kaitopy.provisioner.lifecycle import NODECLAIM
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.runtime import Client
from tests.integration.provisioner.harness import A100, claim_name, cloud, condition, nodeclaim, start
from tests.support.wait import eventually

FAST = ProvisionerSettings(poll_interval_s=0.3, gc_interval_s=3600, gc_grace_s=3600)
DELAY_S = 2.0


def histogram(exposition: bytes) -> dict[tuple[str, str], dict[str, float]]:
    """(condition, sample suffix) -> {le or "": value} for the A100 series."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        if family.name != "kaitopy_nodeclaim_launch_seconds":
            continue
        for s in family.samples:
            if s.labels.get("instance_type") != A100:
                continue
            suffix = s.name.rsplit("_", 1)[1]
            out.setdefault((s.labels["condition"], suffix), {})[s.labels.get("le", "")] = s.value
    return out


async def test_launch_and_ready_seconds_observed_once(api_client: ApiClient, tmp_path: Path) -> None:
    client = Client(api_client)
    async with cloud("kwok", client, tmp_path, launch_delay_s=DELAY_S) as env:
        running = await start(client, env.provider(), FAST)
        metrics = running.manager.metrics
        name = claim_name()
        try:
            assert histogram(metrics.exposition()) == {}
            await client.create(NODECLAIM, nodeclaim(name))
            claim = await eventually(
                lambda: client.get(NODECLAIM, name),
                until=lambda c: condition(c, "Ready").get("status") == "True",
                timeout=90,
                what=f"nodeclaim {name} Ready",
            )
            h = await eventually(
                lambda: _async(histogram(metrics.exposition())),
                until=lambda h: h.get(("Ready", "count"), {}).get("") == 1.0,
                timeout=10,
                what="the Ready observation",
            )
            assert h[("Launched", "count")][""] == 1.0
            launched = h[("Launched", "sum")][""]
            ready = h[("Ready", "sum")][""]
            # kwok takes DELAY_S to launch; timestamps have whole seconds, hence the slack.
            assert DELAY_S - 1 <= launched <= ready < 60
            assert h[("Launched", "bucket")]["60.0"] == 1.0 and h[("Launched", "bucket")]["0.5"] == 0.0
            # More reconciles (a node update, a resync) add nothing: it is counted on the transition.
            await client.patch(NODECLAIM, name, {"metadata": {"labels": {"touched": "yes"}}})
            await eventually(
                lambda: client.get(NODECLAIM, name),
                until=lambda c: c["metadata"]["resourceVersion"] != claim["metadata"]["resourceVersion"],
                what="the patch",
            )
            after = histogram(metrics.exposition())
            assert after[("Ready", "count")][""] == 1.0 and after[("Launched", "count")][""] == 1.0
        finally:
            await client.delete(NODECLAIM, name)
            await eventually(
                lambda: client.get_or_none(NODECLAIM, name),
                until=lambda c: c is None,
                timeout=90,
                what="gone",
            )
            await running.stop()


async def _async(value: dict[tuple[str, str], dict[str, float]]) -> dict[tuple[str, str], dict[str, float]]:
    return value
