"""Properties of admission and planning over hypothesis-generated Workspaces (the strategies the
fault suite sends through a real API server): the webhook answers every body with its own errors,
each naming a field; whatever it admits, the planner plans or refuses with PlanError; and every
body the valid strategy draws is admitted and planned."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaitopy.api import Workspace
from kaitopy.controllers.workspace import job as jobs
from kaitopy.controllers.workspace import nodes, workload
from kaitopy.controllers.workspace.plan import PlanError, Settings, WorkspacePlan
from kaitopy.controllers.workspace.planner import make_planner, parse_workspace
from kaitopy.presets import Catalog
from kaitopy.runtime import AlreadyExists, Client, kinds
from kaitopy.runtime.objects import freeze
from kaitopy.webhooks import FieldError
from kaitopy.webhooks.server import WebhookServer
from tests.chaos.inputs import workspace_bodies
from tests.chaos.strategies import (
    bad_url,
    both,
    config_maps,
    duplicate_adapters,
    mutated_workspaces,
    neither,
    too_many_adapters,
    unknown_name,
    valid_workspaces,
    workspaces,
)
from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration

NAMESPACE = "props"
TOP_LEVEL = {"apiVersion", "kind", "metadata", "resource", "inference", "tuning"}
# The suite that gates a merge draws the same examples every run (derandomize); set
# KAITOPY_EXPLORE=1 to let hypothesis search with fresh random seeds, e.g. in a nightly job.
EXPLORE = bool(os.environ.get("KAITOPY_EXPLORE"))
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=not EXPLORE,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@dataclass
class LiveWebhook:
    """The webhook's review against the real API server, on one loop for the whole module (the
    hypothesis-driven tests are synchronous; a client belongs to the loop it was made on)."""

    server: WebhookServer
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def webhook(kube_cluster: Cluster, catalog: Catalog) -> Iterator[LiveWebhook]:
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(Client.from_kubeconfig(str(kube_cluster.kubeconfig)))

    async def config_maps_in_place() -> None:
        # The only objects the webhook reads: the ConfigMaps the strategies name.
        with contextlib.suppress(AlreadyExists):
            await client.create(
                kinds.NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            )
        for cm in config_maps(NAMESPACE):
            await client.apply(kinds.CONFIG_MAP, cm, field_manager="test-properties", force=True)

    try:
        loop.run_until_complete(config_maps_in_place())
        yield LiveWebhook(WebhookServer(client, catalog=catalog), loop)
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def named(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "metadata": {"name": "ws", "namespace": NAMESPACE}}


def review(webhook: LiveWebhook, body: dict[str, Any]) -> list[FieldError]:
    req = {
        "uid": "1",
        "operation": "CREATE",
        "namespace": NAMESPACE,
        "object": named(body),
        # An author with every right: these properties are about the body, not the author's rights
        # (tests/integration/api/test_webhook_access.py covers those).
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
    }
    return webhook.loop.run_until_complete(webhook.server.review(req))


def plan(catalog: Catalog, body: dict[str, Any]) -> WorkspacePlan:
    """Plan as the controller does, and build everything it builds from the plan."""
    # The controller reads what the API server stored: unknown fields pruned, defaults filled in,
    # types as the schema says (the models are the schema: the CRD is generated from them),
    # frozen as the informer cache hands it out.
    stored = Workspace.model_validate(named(body)).to_dict()
    stored["metadata"]["uid"] = "0f5e1d4c-0000-4000-8000-000000000001"
    planned = make_planner(catalog, Settings())(parse_workspace(freeze(stored)))
    for slot in range(planned.node_count):
        nodes.nodeclaim(
            workspace="ws",
            namespace=NAMESPACE,
            workspace_uid=stored["metadata"]["uid"],
            slot=slot,
            instance_type=planned.instance_type,
            match_labels=planned.match_labels,
            storage_gib=planned.storage_gib,
            gpus=planned.gpus_per_node,
        )
    if planned.inference is not None:
        workload.revision(planned.inference)
        if planned.inference.multi_node:
            workload.statefulset(planned.inference)
            workload.headless_service(planned.inference)
        else:
            workload.deployment(planned.inference)
        workload.service(planned.inference)
    if planned.tuning is not None:
        planned.tuning.revision()
        jobs.tuning_job(planned.tuning)
    return planned


def assert_names_fields(errors: list[FieldError]) -> None:
    for err in errors:
        assert isinstance(err, FieldError), err
        assert err.field.split(".")[0].split("[")[0] in TOP_LEVEL, err
        assert err.field in str(err), err


@PROPERTY_SETTINGS
@given(workspaces())
def test_webhook_answers_every_body_with_field_errors(webhook: LiveWebhook, body: dict[str, Any]) -> None:
    assert_names_fields(review(webhook, body))


@PROPERTY_SETTINGS
@given(mutated_workspaces())
def test_whatever_is_admitted_is_planned_or_refused_with_plan_error(
    webhook: LiveWebhook, catalog: Catalog, body: dict[str, Any]
) -> None:
    if review(webhook, body):
        return
    try:
        plan(catalog, body)
    except PlanError as err:
        refusal = err
        assert refusal.reason, refusal
        assert str(refusal), refusal


@PROPERTY_SETTINGS
@given(valid_workspaces())
def test_valid_bodies_are_admitted_and_planned(
    webhook: LiveWebhook, catalog: Catalog, body: dict[str, Any]
) -> None:
    assert review(webhook, body) == []
    planned = plan(catalog, body)
    assert planned.node_count >= 1
    assert (planned.inference is None) == ("inference" not in body)
    assert (planned.tuning is None) == ("tuning" not in body)


@pytest.mark.parametrize(
    "mutation",
    [unknown_name, bad_url, too_many_adapters, duplicate_adapters, both, neither],
    ids=lambda m: m.__name__,
)
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=not EXPLORE,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_each_rule_breaking_mutation_is_refused(
    webhook: LiveWebhook, mutation: Callable[[Any, dict[str, Any]], None], data: st.DataObject
) -> None:
    body = copy.deepcopy(data.draw(valid_workspaces()))
    mutation(data.draw, body)
    assert review(webhook, body), body


def test_bodies_are_deterministic_per_seed() -> None:
    first = workspace_bodies(7, 20, "ns")
    assert len(first) == 20
    assert first == workspace_bodies(7, 20, "ns")
    assert first != workspace_bodies(8, 20, "ns")
    assert [b["metadata"]["name"] for b in first] == [f"fuzz-{i}" for i in range(20)]
    assert all(b["metadata"]["namespace"] == "ns" for b in first)
