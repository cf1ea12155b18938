"""The pure half of the controller's hot-load: which template a pass renders, and status.adapters."""

from __future__ import annotations

import dataclasses
from typing import Any

from kaitopy.controllers.workspace import workload
from kaitopy.controllers.workspace.adapterdelivery import adapter_status, pinned
from kaitopy.controllers.workspace.plan import AdapterPlan
from kaitopy.inference.hotload import digest
from tests.unit.controllers.test_workspace_builders import PLAN

ADA = AdapterPlan("ada", "r.io/a/ada:1", "0.5")
BOB = AdapterPlan("bob", "r.io/a/bob:1", "1.0", ("regcred",))


def running(plan: object) -> dict[str, object]:
    return workload.deployment(plan)  # type: ignore[arg-type]


def test_an_adapter_edit_alone_renders_the_running_template() -> None:
    current = running(dataclasses.replace(PLAN, adapters=(ADA,)))
    edited = dataclasses.replace(
        PLAN, adapters=(dataclasses.replace(ADA, strength="1.0"), AdapterPlan("c", "r.io/c:1"))
    )
    kept = pinned(edited, current)
    assert kept.adapters == (ADA,)
    assert workload.deployment(kept)["spec"]["template"] == current["spec"]["template"]


def test_any_other_change_takes_the_current_adapters() -> None:
    current = running(dataclasses.replace(PLAN, adapters=(ADA,)))
    edited = dataclasses.replace(PLAN, adapters=(), image="ghcr.io/kaitopy/runtime:0.2.0")
    assert pinned(edited, current) is edited


def test_a_new_pull_secret_rolls_out_to_mount_it() -> None:
    current = running(dataclasses.replace(PLAN, adapters=(ADA,)))
    edited = dataclasses.replace(PLAN, adapters=(ADA, BOB))
    assert pinned(edited, current) is edited
    volumes = {v["name"]: v for v in workload.deployment(edited)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["pull-secret-0"]["secret"] == {"secretName": "regcred", "optional": True}


def test_no_hot_load_for_several_nodes() -> None:
    multi = dataclasses.replace(PLAN, node_count=2, adapters=(ADA,))
    assert not multi.hot_load
    args = workload.server_args(multi)
    assert not any(a.startswith("--adapter-desired-file") for a in args)


def test_the_pod_reads_its_list_from_the_annotation() -> None:
    spec = workload.deployment(dataclasses.replace(PLAN, adapters=(ADA,)))["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "adapter-list")
    field = volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    assert field == f"metadata.annotations['{workload.ADAPTER_LIST_ANNOTATION}']"
    args = spec["containers"][0]["args"]
    assert f"--adapter-desired-file={workload.ADAPTER_LIST_MOUNT}/adapters" in args
    assert "--adapter-image=ada=r.io/a/ada:1" in args


def test_status_takes_the_least_advanced_pod_and_names_it() -> None:
    text = workload.adapter_list((ADA, BOB))
    seen = digest(text)
    answers = {
        "p1": {
            "observed": seen,
            "adapters": [{"name": "ada", "state": "Ready"}, {"name": "bob", "state": "Ready"}],
        },
        "p2": {
            "observed": seen,
            "adapters": [
                {"name": "ada", "state": "Ready"},
                {"name": "bob", "state": "Failed", "reason": "target_modules match no layer"},
            ],
        },
    }
    status = adapter_status((ADA, BOB), text, answers)
    assert status[0] == {"name": "ada", "image": ADA.image, "strength": "0.5", "state": "Ready"}
    assert status[1]["state"] == "Failed"
    assert status[1]["reason"] == "pod p2: target_modules match no layer"


def test_a_pod_behind_the_list_is_pending() -> None:
    text = workload.adapter_list((ADA,))
    old = {"observed": "something-else", "adapters": [{"name": "ada", "state": "Ready"}]}
    assert adapter_status((ADA,), text, {"p": old})[0]["state"] == "Pending"
    assert adapter_status((ADA,), text, {"p": None})[0]["state"] == "Pending"


class Silent:
    """A model server that does not answer (yet)."""

    async def read(self, pod: object, port: int) -> None:
        return None


def test_polled_again_only_while_a_server_runs() -> None:
    from kaitopy.controllers.workspace.adapterdelivery import decide_adapters

    text = workload.adapter_list((ADA,))
    out = decide_adapters((ADA,), [], {})
    assert (
        out.status[0]["state"] == "Pending" and not out.again
    )  # waiting for nodes: events wake the controller
    pod: dict[str, Any] = {"metadata": {"name": "p", "namespace": "n", "annotations": {}}}
    out = decide_adapters((ADA,), [pod], {})
    assert out.deliver == (("n", "p"),) and out.text == text  # the pod lacks the list: deliver it
    pod["metadata"]["annotations"] = {workload.ADAPTER_LIST_ANNOTATION: text}
    out = decide_adapters((ADA,), [pod], {"p": None})
    assert out.deliver == () and not out.again  # no address yet: its start is an event too
    pod["status"] = {"podIP": "10.0.0.7"}
    assert decide_adapters(
        (ADA,), [pod], {"p": None}
    ).again  # a running server changes state without any event


def test_an_adapter_less_workspace_writes_nothing_to_its_pods() -> None:
    from kaitopy.controllers.workspace.adapterdelivery import decide_adapters

    pod: dict[str, Any] = {"metadata": {"name": "p", "namespace": "n"}, "status": {"podIP": "10.0.0.7"}}
    out = decide_adapters((), [pod], {})
    assert out.deliver == () and out.status == [] and not out.again
    # started with an adapter, now none: the pod must be told to unload it
    assert decide_adapters((), [pod], {}, started_with=(ADA,)).deliver == (("n", "p"),)
    # a pod told before keeps getting the current list
    pod["metadata"]["annotations"] = {workload.ADAPTER_LIST_ANNOTATION: workload.adapter_list((ADA,))}
    assert decide_adapters((), [pod], {}).deliver == (("n", "p"),)
