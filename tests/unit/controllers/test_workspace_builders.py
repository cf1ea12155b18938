"""The workspace controller's pure parts: node selection, claim names, manifests, verdicts."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from kaitopy.controllers.workspace import job, nodes, status, workload
from kaitopy.controllers.workspace.plan import AdapterPlan, InferencePlan, TuningPlan

PLAN = InferencePlan(
    name="workspace-phi-3",
    namespace="default",
    preset="phi-3-mini-4k-instruct",
    runtime="transformers",
    image="ghcr.io/kaitopy/runtime:0.1.0",
    node_count=1,
    gpus_per_node=1,
    tensor_parallel_size=1,
    pipeline_parallel_size=1,
    max_model_len=4096,
    dtype="float16",
    hf_model_id="microsoft/Phi-3-mini-4k-instruct",
    weights_gib=7.6,
    match_labels={"apps": "phi-3"},
)


def node(name: str, ready: bool = True, gpus: str = "1", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"node.kubernetes.io/instance-type": "Standard_NC6s_v3", **labels},
        },
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "allocatable": {"nvidia.com/gpu": gpus},
        },
    }


def test_claim_names_are_valid_pool_names_and_stable_per_slot() -> None:
    a, b = nodes.nodeclaim_name("uid-1", 0), nodes.nodeclaim_name("uid-1", 1)
    assert re.fullmatch(r"[a-z][a-z0-9]{0,11}", a) and a != b
    assert nodes.nodeclaim_name("uid-1", 0) == a  # a restart computes the same name


def test_usable_nodes_need_selector_instance_type_gpus_and_ready() -> None:
    candidates = [
        node("good", apps="phi-3"),
        node("wrong-label", apps="other"),
        node("not-ready", ready=False, apps="phi-3"),
        node("no-gpu", gpus="0", apps="phi-3"),
    ]
    view = nodes.usable_nodes(candidates, {"apps": "phi-3"}, [], "Standard_NC6s_v3")
    assert view.ready == ["good"]
    assert nodes.usable_nodes(candidates, {"apps": "phi-3"}, [], "Standard_NC24ads_A100_v4").count == 0


def test_match_expressions() -> None:
    labels = {"a": "1", "b": "2"}
    assert nodes.matches(labels, {}, [{"key": "a", "operator": "In", "values": ["1", "3"]}])
    assert not nodes.matches(labels, {}, [{"key": "b", "operator": "NotIn", "values": ["2"]}])
    assert not nodes.matches(labels, {}, [{"key": "c", "operator": "Exists"}])
    assert nodes.matches(labels, {}, [{"key": "c", "operator": "DoesNotExist"}])


def test_nodeclaim_carries_workspace_labels_taint_and_instance_type() -> None:
    claim = nodes.nodeclaim(
        workspace="ws",
        namespace="ns",
        workspace_uid="u",
        slot=0,
        instance_type="Standard_NC6s_v3",
        match_labels={"apps": "phi-3"},
        storage_gib=120,
        gpus=1,
    )
    labels = claim["metadata"]["labels"]
    assert labels == {"apps": "phi-3", "kaito.sh/workspace": "ws", "kaito.sh/workspacenamespace": "ns"}
    assert claim["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
    assert claim["spec"]["requirements"][0]["values"] == ["Standard_NC6s_v3"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "120Gi"


def test_single_node_deployment_recreates_and_requests_gpus() -> None:
    d = workload.deployment(PLAN)
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--engine=transformers" in c["args"] and "--served-model-name=phi-3-mini-4k-instruct" in c["args"]
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 600
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod["tolerations"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "apps", "operator": "In", "values": ["phi-3"]}
    ]
    assert "initContainers" not in pod
    svc = workload.service(PLAN)
    assert svc["spec"]["ports"][0]["port"] == 80 and svc["spec"]["type"] == "ClusterIP"


def test_adapters_get_shell_free_init_containers_and_change_the_revision() -> None:
    with_adapters = replace(
        PLAN, adapters=(AdapterPlan("ada", "registry.local/ada:1", "0.5", ("pull-secret",)),)
    )
    pod = workload.deployment(with_adapters)["spec"]["template"]["spec"]
    tools, ada = pod["initContainers"]
    assert tools["command"][:2] == ["/bin/cp", "/bin/busybox"]
    assert ada["image"] == "registry.local/ada:1"
    assert ada["command"][0] == "/kaitopy-tools/busybox"  # the adapter image needs no shell
    assert "--adapter-strength=ada=0.5" in pod["containers"][0]["args"]
    assert pod["imagePullSecrets"] == [{"name": "pull-secret"}]
    assert workload.revision(with_adapters) != workload.revision(PLAN)


def test_multi_node_statefulset_leader_service_and_headless() -> None:
    big = replace(PLAN, node_count=2, pipeline_parallel_size=2, runtime="vllm")
    sts = workload.statefulset(big)
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["serviceName"] == "workspace-phi-3-headless"
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-address=workspace-phi-3-0.workspace-phi-3-headless.default.svc.cluster.local" in args
    # Every rank's server, in rank order: each watches the others (the group restarts as one).
    assert [a for a in args if a.startswith("--group-peer=")] == [
        f"--group-peer=http://workspace-phi-3-{k}.workspace-phi-3-headless.default.svc.cluster.local:5000"
        for k in (0, 1)
    ]
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # A single-node pod gets no POD_IP, so its template (and revision) is unchanged.
    single = workload.deployment(PLAN)["spec"]["template"]["spec"]["containers"][0]
    assert "POD_IP" not in {e["name"] for e in single["env"]}
    assert not any(a.startswith("--group-peer") for a in single["args"])
    assert workload.headless_service(big)["spec"]["clusterIP"] == "None"
    assert (
        workload.service(big)["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == "workspace-phi-3-0"
    )
    assert (
        replace(big, load_balancer=True)
        and workload.service(replace(big, load_balancer=True))["spec"]["type"] == "LoadBalancer"
    )


def test_tuning_job_trains_before_pushing() -> None:
    plan = TuningPlan(
        name="tune",
        namespace="default",
        preset="phi-3-mini-4k-instruct",
        method="qlora",
        image="ghcr.io/kaitopy/runtime:0.1.0",
        hf_model_id="microsoft/Phi-3-mini-4k-instruct",
        gpus_per_node=1,
        match_labels={"apps": "tune"},
        input_urls=("https://example.com/d.jsonl",),
        output_image="registry.local/adapter:1",
        output_push_secret="push",
    )
    spec = job.tuning_job(plan)["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-data", "train"]
    assert [c["name"] for c in spec["containers"]] == ["push"]
    assert "--method=qlora" in spec["initContainers"][1]["args"]
    assert {"name": "push-secret", "secret": {"secretName": "push"}} in spec["volumes"]


def test_nodeclaim_failure_reason_reaches_resource_ready() -> None:
    failed = {
        "metadata": {"name": "ws1"},
        "status": {
            "conditions": [
                {"type": "Launched", "status": "False", "reason": "QuotaExceeded", "message": "no quota"}
            ]
        },
    }
    claims = status.nodeclaims_verdict([failed], 1)
    assert (claims.status, claims.reason) == ("False", "QuotaExceeded") and "no quota" in claims.message
    res = status.resource_verdict(0, 1, claims, byo=False)
    assert (res.status, res.reason) == ("False", "QuotaExceeded")
    assert status.resource_verdict(1, 1, claims, byo=False).ok


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (
            "InstanceLost",
            "node ws1 is lost: kubelet (killed by SIGKILL) of local node ws1 stopped; deleting the claim",
        ),
        (
            "NodeUnhealthy",
            "node ws1 has been NotReady (Ready=Unknown) for 601 s while its instance still runs",
        ),
    ],
)
def test_a_lost_node_is_named_until_its_claim_is_replaced(reason: str, message: str) -> None:
    lost = {
        "metadata": {"name": "ws1", "deletionTimestamp": "2026-12-04T12:00:00Z"},
        "status": {
            "conditions": [
                {"type": "Launched", "status": "True", "reason": "Launched"},
                {"type": "Ready", "status": "False", "reason": reason, "message": message},
            ]
        },
    }
    claims = status.nodeclaims_verdict([lost], 1)
    assert (claims.status, claims.reason, claims.message) == ("False", "NodeLost", message)
    # The node may still be listed Ready (the node controller has not noticed): the claim says.
    res = status.resource_verdict(1, 1, claims, byo=False)
    assert (res.status, res.reason) == ("False", "NodeLost")


def test_pod_problems_are_named() -> None:
    def pod(**st: Any) -> dict[str, Any]:
        return {"metadata": {"name": "p"}, "status": st}

    pull = pod(
        containerStatuses=[
            {"name": "model", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
        ]
    )
    oom = pod(
        containerStatuses=[
            {
                "name": "model",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"reason": "OOMKilled"}},
            }
        ]
    )
    crash = pod(
        containerStatuses=[
            {
                "name": "model",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1}},
            }
        ]
    )
    unsched = pod(conditions=[{"type": "PodScheduled", "status": "False", "message": "0/3 nodes available"}])
    got = [status.pod_problem([p]) for p in (pull, oom, crash, unsched)]
    assert [v.reason if v else None for v in got] == [
        "ImagePullError",
        "OOMKilled",
        "CrashLoop",
        "Unschedulable",
    ]
    assert status.pod_problem([pod()]) is None


def test_workload_ready_only_when_rolled_out() -> None:
    dep = {
        "metadata": {"generation": 2},
        "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1},
    }
    assert not status.workload_verdict(dep, [], 1, "r").ok
    dep["status"]["observedGeneration"] = 2
    assert status.workload_verdict(dep, [], 1, "r").ok
    assert status.workload_verdict(None, [], 1, "r").reason == "WorkloadNotCreated"


def test_the_model_server_accepts_every_argv_the_controller_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A contract between two processes that never meet in unit tests: the pod's `kaitopy serve`
    # must parse exactly what the Deployment/StatefulSet builder puts in the container's args.
    import argparse

    from kaitopy.controllers.workspace.plan import AdapterPlan
    from kaitopy.inference import cli as serve_cli

    adapters = [AdapterPlan(name="a", image="example.com/a:1", strength=0.5)]
    for plan in (PLAN, replace(PLAN, adapters=adapters, node_count=2, pipeline_parallel_size=2)):
        argv = workload.server_args(plan)
        assert argv[0] == "serve"
        pod = workload.pod_template(plan)["spec"]  # the pod gives the server its own name
        env = {e["name"] for e in pod["containers"][0]["env"]}
        assert "POD_NAME" in env
        monkeypatch.setenv("POD_NAME", f"{plan.name}-1")
        parser = argparse.ArgumentParser()
        serve_cli.add_arguments(parser)
        settings = serve_cli.settings_from_args(parser.parse_args(argv[1:]))
        assert settings.served_model_name == plan.preset
        assert settings.hf_model_id == plan.hf_model_id
        # The weights volume starts empty, so the server must be allowed to fetch them.
        assert settings.allow_download
        assert settings.adapter_strengths == {a.name: a.strength for a in plan.adapters}


@pytest.mark.parametrize("template", [{"spec": None}, {"metadata": None, "spec": None}, {}])
def test_a_template_with_null_sections_gets_the_placement_instead_of_crashing(
    template: dict[str, Any],
) -> None:
    # Found by the property test: `inference.template: {spec: null}` is valid YAML for an empty spec.
    plan = replace(PLAN, runtime="template", template=template)
    pod = workload.deployment(plan)["spec"]["template"]
    assert pod["metadata"]["labels"]["kaito.sh/workspace"] == PLAN.name
    assert "nodeAffinity" in pod["spec"]["affinity"]


def test_provisioned_nodes_serve_only_their_workspace_and_byo_nodes_are_shared() -> None:
    # Two workspaces with the same selector: each keeps the node provisioned for it.
    mine = node("mine", apps="phi-3", **{"kaito.sh/workspace": "a", "kaito.sh/workspacenamespace": "ns"})
    theirs = node("theirs", apps="phi-3", **{"kaito.sh/workspace": "b", "kaito.sh/workspacenamespace": "ns"})
    other_ns = node(
        "other-ns", apps="phi-3", **{"kaito.sh/workspace": "a", "kaito.sh/workspacenamespace": "x"}
    )
    byo = node("byo", apps="phi-3")
    view = nodes.usable_nodes(
        [mine, theirs, other_ns, byo], {"apps": "phi-3"}, [], "Standard_NC6s_v3", owner=("a", "ns")
    )
    assert view.ready == ["byo", "mine"]


def test_the_revision_hashes_the_pod_template_only() -> None:
    # kaito.sh/enablelb changes the Service, never a pod: toggling it must not recreate the pods.
    exposed = replace(PLAN, load_balancer=True)
    assert workload.service(exposed)["spec"]["type"] == "LoadBalancer"
    assert workload.revision(exposed) == workload.revision(PLAN)
    # ...while anything the pods are made of does roll them out.
    assert workload.revision(replace(PLAN, image="other:2")) != workload.revision(PLAN)
    stamped = workload.deployment(PLAN)["spec"]["template"]["metadata"]["annotations"]
    assert stamped["kaito.sh/revision"] == workload.revision(PLAN)
