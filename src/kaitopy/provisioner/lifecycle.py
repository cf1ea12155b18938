"""The NodeClaim lifecycle controller (Karpenter's semantics): launch -> register -> initialize
(claimdecision.py), and termination with drain (termination.py), each observe -> decide -> act.
Every step looks once and requeues: a worker is never held for the minutes a cloud operation
takes."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kaitopy.api.nodeclaim import CAPACITY_TYPE_LABEL as CAPACITY_TYPE_LABEL
from kaitopy.api.nodeclaim import NODECLAIM as NODECLAIM
from kaitopy.provisioner.claimdecision import (
    ClaimObserved,
    ClaimStatus,
    became_true,
    decide_claim,
)
from kaitopy.provisioner.cloudprovider import (
    NODECLAIM_LABEL,
    CloudProvider,
    LaunchFailedError,
    LaunchRequest,
)
from kaitopy.provisioner.liveness import is_repaired
from kaitopy.provisioner.metrics import NodeClaimMetrics
from kaitopy.provisioner.nodeclaim import (
    INITIALIZED_LABEL,
    INSTANCE_TYPE_LABEL,
    LAUNCH_TOKEN_ANNOTATION,
    LAUNCHED,
    TERMINATING,
    TERMINATION_FINALIZER,
    ClaimSpecError,
    is_ours,
    launch_request_for,
    registration_update,
    single_value_requirements,
)
from kaitopy.provisioner.settings import ProvisionerSettings
from kaitopy.provisioner.termination import (
    PodOnNode,
    TerminationObserved,
    decide_termination,
    drain_possible,
)
from kaitopy.runtime import (
    Client,
    Conflict,
    EventRecorder,
    NotFound,
    Request,
    Result,
    TooManyRequests,
    add_finalizer,
    find_condition,
    has_finalizer,
    is_deleting,
    kinds,
    patch_status,
    remove_finalizer,
    thaw,
)
from kaitopy.runtime.cache.store import Store
from kaitopy.runtime.cache.writes import RecentWrites
from kaitopy.runtime.controller.reconcile import reconcile_logger
from kaitopy.runtime.kinds import Kind
from kaitopy.runtime.objects import Obj
from kaitopy.runtime.seen import FirstSeen

NODECLASS = Kind("kaito.sh", "v1", "KaitoNodeClass", "kaitonodeclasses", namespaced=False)
NODE_INDEX = "by-nodeclaim"
log = reconcile_logger(__name__)


def node_index(node: Obj) -> list[str]:
    name = ((node.get("metadata") or {}).get("labels") or {}).get(NODECLAIM_LABEL)
    return [str(name)] if name else []


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class NodeClaimLifecycle:
    def __init__(
        self,
        client: Client,
        claims: Store,
        nodes: Store,
        provider: CloudProvider,
        recorder: EventRecorder,
        settings: ProvisionerSettings | None = None,
        clock: Callable[[], float] = time.time,
        metrics: NodeClaimMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.claims = claims
        # Our own writes until the watch delivers them (see runtime.writes).
        self.latest = RecentWrites(claims)
        self.nodes = nodes
        self.provider = provider
        self.recorder = recorder
        self.settings = settings or ProvisionerSettings()
        self.clock = clock
        self.metrics = metrics
        # When this process first saw each draining claim's pods deleting, on its own clock: a
        # pod's deletionTimestamp is the API server's clock (runtime.seen).
        self.deleting_since = FirstSeen(monotonic)

    # -- entry ---------------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result | None:
        claim = self.latest.get(request.key)
        if claim is None or not is_ours(claim):
            self.deleting_since.forget(request.name)  # gone while draining
            return None
        if is_deleting(claim):
            return await self._terminate(claim)
        if not has_finalizer(claim, TERMINATION_FINALIZER):
            # Before any side effect: a claim must never be deleted while its instance lives.
            claim = await add_finalizer(self.client, NODECLAIM, claim, TERMINATION_FINALIZER)
            self.latest.remember(claim)
        elif LAUNCH_TOKEN_ANNOTATION not in (claim["metadata"].get("annotations") or {}):
            # About to launch: the cache may not show yet what the last pass wrote (a launch
            # token, a terminal failure), and a second launch costs money. One GET settles it.
            fresh = await self.client.get_or_none(NODECLAIM, str(claim["metadata"]["name"]))
            if fresh is None:
                return None
            claim = fresh
            self.latest.remember(claim)
        observed = await self._observe(claim)  # observe
        decision = decide_claim(observed, self.clock(), self.settings)  # decide
        for _ in range(2):  # act on what the rest of the pass needs, observe it, decide again
            if decision.begin_launch:
                observed = await self._begin_launch(observed)
            elif decision.adopt is not None and observed.node is not None:
                node = await self._adopt_node(claim, observed.node)
                observed = dataclasses.replace(observed, node=node, adopted=True)
            else:
                break
            claim = observed.claim
            decision = decide_claim(observed, self.clock(), self.settings)
        if decision.label_initialized and observed.node is not None:
            await self.client.patch(
                kinds.NODE,
                str(observed.node["metadata"]["name"]),
                {"metadata": {"labels": {INITIALIZED_LABEL: "true"}}},
            )
        for e in decision.events:
            await self.recorder.event(claim, e.type, e.reason, e.message, action=e.action)
        self.latest.remember((await patch_status(self.client, NODECLAIM, claim, decision.status))[0])
        self._observe_transitions(claim, decision.status)
        if decision.delete_reason is not None:
            await self.recorder.event(claim, "Warning", decision.delete_reason, "; ".join(decision.notes))
            await self._delete_claim(claim)
            return None
        return Result(requeue_after=decision.requeue_after) if decision.requeue_after else None

    async def _observe(self, claim: Obj) -> ClaimObserved:
        try:
            request: LaunchRequest | None = launch_request_for(claim, self.settings.default_os_sku)
            request_error = None
        except ClaimSpecError as err:
            request, request_error = None, str(err)
        token = (claim["metadata"].get("annotations") or {}).get(LAUNCH_TOKEN_ANNOTATION)
        observed = ClaimObserved(claim, request, request_error, token, node=self._node_of(claim))
        return await self._poll(observed)

    async def _poll(self, observed: ClaimObserved) -> ClaimObserved:
        """The launch's progress, when one is under way (begun, neither done nor failed)."""
        conditions = (observed.claim.get("status") or {}).get("conditions")
        launched = (find_condition(conditions, LAUNCHED) or {}).get("status")
        if launched in ("True", "False") or observed.token is None or observed.request is None:
            return observed
        try:
            progress = await self.provider.poll_launch(observed.request, observed.token)
        except LaunchFailedError as err:
            return self._failed(observed, err)
        return dataclasses.replace(observed, progress=progress)

    def _failed(self, observed: ClaimObserved, err: LaunchFailedError) -> ClaimObserved:
        name = observed.claim["metadata"]["name"]
        log.warning("launch failed for good", extra={"nodeclaim": name, "reason": err.reason})
        return dataclasses.replace(observed, launch_failed=(err.reason, str(err)))

    async def _begin_launch(self, observed: ClaimObserved) -> ClaimObserved:
        """Begin the launch and record its token on the claim, then poll it once."""
        request = observed.request
        assert request is not None
        try:
            token = await self.provider.begin_launch(request)
        except LaunchFailedError as err:
            return self._failed(observed, err)
        claim = observed.claim
        # The token first: from here on a restart resumes this launch. The pinned
        # requirements become labels, as Karpenter's do (`kubectl get nodeclaims` shows them).
        labels = {**single_value_requirements(claim), CAPACITY_TYPE_LABEL: "on-demand"}
        claim = await self.client.patch(
            NODECLAIM,
            str(claim["metadata"]["name"]),
            {"metadata": {"annotations": {LAUNCH_TOKEN_ANNOTATION: token}, "labels": labels}},
        )
        self.latest.remember(claim)
        await self.recorder.event(
            claim,
            "Normal",
            "Launching",
            f"launching a {request.instance_type} through {self.provider.name}",
            action="Launch",
        )
        return await self._poll(dataclasses.replace(observed, claim=claim, token=token))

    def _observe_transitions(self, claim: Obj, status: Mapping[str, Any]) -> None:
        created = _parse_time((claim.get("metadata") or {}).get("creationTimestamp"))
        if self.metrics is None or created is None:
            return
        labels = {**((claim.get("metadata") or {}).get("labels") or {}), **single_value_requirements(claim)}
        instance_type = str(labels.get(INSTANCE_TYPE_LABEL) or "")
        for type_ in became_true(claim.get("status") or {}, status):
            # From the claim's creation (the API server's clock) to now (ours): a metric, which a
            # skew shifts but cannot turn into a decision.
            self.metrics.observe_launch(type_, instance_type, max(0.0, self.clock() - created))

    # -- registration --------------------------------------------------------------------------

    def _node_of(self, claim: Obj) -> Obj | None:
        nodes = self.nodes.by_index(NODE_INDEX, str(claim["metadata"]["name"]))
        return nodes[0] if nodes else None

    async def _adopt_node(self, claim: Obj, node: Obj) -> Obj:
        """Label, taint and own the node for its claim. The patch replaces whole lists (taints,
        owners), so it is conditional on the node's resourceVersion; the node's agent updates
        its status meanwhile, so a Conflict is likely and is settled here with a fresh read
        rather than by failing the whole reconcile."""
        conflicts = 0
        while True:
            update = registration_update(claim, node)
            if not update.changes(node):
                return node
            owners = [
                r
                for r in node["metadata"].get("ownerReferences") or ()
                if r.get("uid") != update.owner_reference["uid"]
            ]
            patch = {
                "metadata": {
                    "labels": update.labels,
                    "ownerReferences": [*map(thaw, owners), update.owner_reference],
                    "resourceVersion": node["metadata"].get("resourceVersion"),
                },
                "spec": {"taints": update.taints},
            }
            name = str(node["metadata"]["name"])
            try:
                return await self.client.patch(kinds.NODE, name, patch)
            except Conflict:
                conflicts += 1
                if conflicts == 3:
                    raise  # a node that keeps changing: back off and retry the reconcile
                node = await self.client.get(kinds.NODE, name)

    async def _delete_claim(self, claim: Obj) -> None:
        with contextlib.suppress(NotFound):
            await self.client.delete(NODECLAIM, str(claim["metadata"]["name"]))

    # -- termination ---------------------------------------------------------------------------

    async def _terminate(self, claim: Obj) -> Result | None:
        observed = await self._observe_termination(claim)  # observe
        decision = decide_termination(observed)  # decide
        # act
        name = str(claim["metadata"]["name"])
        if decision.cordon is not None:
            await self.client.patch(kinds.NODE, decision.cordon, {"spec": {"unschedulable": True}})
        blocked = [key for key in decision.evict if not await self._evict(key)]
        if blocked:
            await self.recorder.event(
                claim,
                "Warning",
                "DisruptionBlocked",
                f"eviction of {', '.join(blocked)} blocked by a PodDisruptionBudget; retrying",
                action="Terminate",
            )
        if decision.begin_delete:
            await self.provider.begin_delete(name)
            await self.recorder.event(
                claim, "Normal", "Terminating", f"deleting instance {observed.instance}", action="Terminate"
            )
        if decision.condition is not None:
            now = datetime.fromtimestamp(self.clock(), UTC)
            st = ClaimStatus(thaw(claim.get("status") or {}), now, claim["metadata"].get("generation"))
            st.set(TERMINATING, *decision.condition)
            self.latest.remember((await patch_status(self.client, NODECLAIM, claim, st.body))[0])
        if decision.delete_node is not None:
            with contextlib.suppress(NotFound):
                await self.client.delete(kinds.NODE, decision.delete_node)
        if decision.release_pods_of is not None:
            await self._release_pods(decision.release_pods_of)
        if decision.remove_finalizer or not decision.requeue:
            self.deleting_since.forget(name)
        if decision.remove_finalizer:
            await remove_finalizer(self.client, NODECLAIM, claim, TERMINATION_FINALIZER)
            log.info("nodeclaim terminated", extra={"nodeclaim": name})
        return Result(requeue_after=self.settings.poll_interval_s) if decision.requeue else None

    async def _observe_termination(self, claim: Obj) -> TerminationObserved:
        """The claim, its Node (cached), its instance (asked), and the pods on the Node where a
        drain is possible. Pods are listed, not cached: termination is rare, and a cluster-wide pod
        cache would cost memory for every pod in the cluster."""
        if not has_finalizer(claim, TERMINATION_FINALIZER):
            return TerminationObserved(False, None, False, None, None, None, False)
        node = self._node_of(claim)
        instance = await self.provider.get(str(claim["metadata"]["name"]))
        observed = TerminationObserved(
            has_finalizer=True,
            node=str(node["metadata"]["name"]) if node is not None else None,
            node_unschedulable=bool((node or {}).get("spec", {}).get("unschedulable")),
            recorded_node=(claim.get("status") or {}).get("nodeName"),
            instance=instance.name if instance is not None else None,
            instance_state=instance.state if instance is not None else None,
            repaired=is_repaired(claim),
            provider=self.provider.name,
        )
        if not drain_possible(observed):
            return observed
        pods = await self.client.list(kinds.POD, field_selector=f"spec.nodeName={observed.node}")
        deleting_for = self.deleting_since.ages(
            str(claim["metadata"]["name"]),
            [_uid(p) for p in pods.items if p["metadata"].get("deletionTimestamp")],
        )
        return dataclasses.replace(
            observed,
            stuck_pod_grace_s=self.settings.stuck_pod_grace_s,
            pods=tuple(
                PodOnNode(
                    key=f"{p['metadata']['namespace']}/{p['metadata']['name']}",
                    needs_eviction=_needs_eviction(p),
                    deleting=bool(p["metadata"].get("deletionTimestamp")),
                    deleting_for_s=deleting_for.get(_uid(p), 0.0),
                    grace_s=float(p["metadata"].get("deletionGracePeriodSeconds") or 0),
                )
                for p in pods.items
            ),
        )

    async def _evict(self, key: str) -> bool:
        """Ask the eviction API to move a pod; False when a PodDisruptionBudget refuses for now."""
        ns, _, pod_name = key.partition("/")
        try:
            await self.client.request(
                "POST",
                kinds.POD.path(ns, pod_name, "eviction"),
                body={
                    "apiVersion": "policy/v1",
                    "kind": "Eviction",
                    "metadata": {"name": pod_name, "namespace": ns},
                },
            )
        except TooManyRequests:
            return False
        except NotFound:
            pass
        return True

    async def _release_pods(self, node_name: str) -> None:
        """Force-delete the pods still bound to a node that is gone: nothing can run or stop them
        any more, and until their objects go, their controllers do not replace them (a
        StatefulSet's pod keeps its name). KCM's pod garbage collector would do it too, after
        its own delay."""
        pods = await self.client.list(kinds.POD, field_selector=f"spec.nodeName={node_name}")
        for pod in pods.items:
            ns, pod_name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            with contextlib.suppress(NotFound):
                await self.client.request(
                    "DELETE",
                    kinds.POD.path(ns, pod_name),
                    body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
                )
            log.info(
                "pod of a deleted node force-deleted", extra={"pod": f"{ns}/{pod_name}", "node": node_name}
            )


def _uid(pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    return str(meta.get("uid") or f"{meta['namespace']}/{meta['name']}")


def _needs_eviction(pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return False
    return not any(ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or ())
