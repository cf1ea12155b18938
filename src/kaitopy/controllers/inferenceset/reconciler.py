"""The InferenceSet reconcile: get → decide → act → write status.

Members are Workspaces the set controls (ownerReference), named `<set>-<n>`. Deleting the set
deletes them through the garbage collector, and each member's own finalizer deletes its nodes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import ValidationError

from kaitopy.api.constants import INFERENCESET, WORKSPACE, InferenceSetReady, NodeCountLimitReached
from kaitopy.api.inferenceset import InferenceSet
from kaitopy.controllers.inferenceset import activity, front, scrape
from kaitopy.controllers.inferenceset import members as mb
from kaitopy.controllers.inferenceset.autoscale import (
    Sample,
    SetLoad,
    SettingsError,
    exports_load,
    recommend,
    scales_to_zero,
    settings_of,
    summed_tokens_per_minute,
    tokens_per_minute,
    without_rate,
)
from kaitopy.controllers.inferenceset.decide import Decision, Inputs, decide, max_unavailable_of
from kaitopy.controllers.inferenceset.expectations import Expectations
from kaitopy.runtime import (
    AlreadyExists,
    ApiError,
    Client,
    EventRecorder,
    NotFound,
    Request,
    Result,
    Store,
    controller_of,
    is_controlled_by,
    kinds,
    owner_reference,
    patch_status,
    reconcile_logger,
    set_condition,
    thaw,
)
from kaitopy.runtime.conditions import remove_condition
from kaitopy.runtime.objects import Obj

log = reconcile_logger(__name__)
MEMBERS_BY_SET = "inferenceset-members"
FIELD_MANAGER = "kaitopy-inferenceset"
AUTOSCALE_INTERVAL_S = 15.0  # as the HPA's sync period: often enough for a queue, cheap on /metrics


def set_key_of_member(ws: Obj) -> list[str]:
    """Index: a member (or adoption candidate) Workspace under its set's namespace/name."""
    md = ws.get("metadata") or {}
    name = (md.get("labels") or {}).get(mb.SET_LABEL)
    return [f"{md.get('namespace')}/{name}"] if name else []


def unsupported(spec: Mapping[str, Any]) -> str | None:
    """Members the controller will not create for the set's author: it creates them with its own
    rights, so a pod template or a volume (which the Workspace webhook checks against the author's
    own rights) would let the author run what they could not run themselves."""
    try:
        max_unavailable_of(spec.get("updateStrategy"), 1)
    except (TypeError, ValueError, AttributeError):
        return (
            "spec.updateStrategy: type must be RollingUpdate or OnDelete and rollingUpdate.maxUnavailable "
            'a whole number or a percentage such as "25%"'
        )
    inference = (spec.get("template") or {}).get("inference") or {}
    if inference.get("template"):
        return (
            "spec.template.inference.template: pod templates are not supported in an InferenceSet yet "
            "(the members would be created with the controller's rights); use a preset"
        )
    for i, adapter in enumerate(inference.get("adapters") or ()):
        if ((adapter or {}).get("source") or {}).get("volumeSource"):
            return (
                f"spec.template.inference.adapters[{i}].source.volumeSource: volumes are not supported "
                "in an InferenceSet yet; give the adapter as an image or urls"
            )
    return None


class InferenceSetReconciler:
    def __init__(
        self,
        client: Client,
        sets: Store,
        workspaces: Store,
        recorder: EventRecorder,
        *,
        expectations: Expectations | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        metrics_url: Callable[[str, str], str] = scrape.service_url,
        autoscale_interval_s: float = AUTOSCALE_INTERVAL_S,
        operator_namespace: str | None = None,
        wall: Callable[[], float] = time.time,
        services: Store | None = None,
        activator_host: str | None = None,
    ) -> None:
        self.client = client
        self.sets = sets
        self.workspaces = workspaces
        self.recorder = recorder
        self.expectations = expectations or Expectations()
        self.monotonic = monotonic
        self.metrics_url = metrics_url
        self.autoscale_interval_s = autoscale_interval_s
        self.operator_namespace = operator_namespace
        """Where the activator's activity Leases are (None: no activator; the idle clock is then the
        members' own load only)."""
        self.wall = wall
        self.services = services
        """Services labelled as fronts (FRONT_LABEL), for the sets that scale to zero."""
        self.activator_host = activator_host
        """Where a front Service points (None: no fronts are made)."""
        # Per set that may scale to zero: when it was last seen active (wall clock), and its replicas
        # at the last pass (a move from 0 restarts the idle clock, whoever made it).
        self._active: dict[str, float] = {}
        self._last_replicas: dict[str, int] = {}
        # Per set: the autoscaler's earlier (time, raw recommendation), for its stabilization windows.
        self._history: dict[str, list[tuple[float, int]]] = {}
        # Per set: the members' summed load at the last scrape, exported on the controller's /metrics.
        self.load: dict[str, SetLoad] = {}
        # Per set, per member: its generated-tokens counter at the last scrape (time, total).
        self._tokens: dict[str, dict[str, tuple[float, float]]] = {}

    async def reconcile(self, req: Request) -> Result | None:
        obj = self.sets.get(req.key)
        if obj is None:
            self.expectations.forget(req.key)
            self._forget(req.key)
            return None
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return None  # the garbage collector deletes the members
        problem = self._invalid(obj)
        if problem is not None:
            await self._write_status(obj, None, [], problem)
            return None
        spec = obj["spec"]
        current_hash = mb.template_hash(spec)
        owned = await self._members(obj)
        observed = tuple(mb.observe(ws, current_hash) for ws in owned)
        present = {m.name for m in observed}
        deleting = {m.name for m in observed if m.deleting}
        if not self.expectations.satisfied(req.key, present, deleting, now=self.monotonic()):
            log.info("waiting for the cache to show earlier member changes")
            await self._write_status(obj, None, owned, None)
            return Result(requeue_after=self.expectations.timeout_s)
        replicas = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        rolling, max_unavailable = max_unavailable_of(spec.get("updateStrategy"), replicas)
        others = {
            str(ws["metadata"]["name"])
            for ws in self.workspaces.list(req.namespace)
            if ws["metadata"]["name"] not in present
        }
        decision = decide(
            Inputs(
                set_name=req.name,
                replicas=replicas,
                node_count_limit=int(spec.get("nodeCountLimit") or 0),
                rolling=rolling,
                max_unavailable=max_unavailable,
                members=observed,
                taken_names=frozenset(others),
            )
        )
        await self._act(obj, req, decision)
        await self._write_status(obj, decision, owned, None)
        await self._ensure_front(obj, req)
        return await self._autoscale(obj, req, replicas, observed)

    def _invalid(self, obj: Obj) -> str | None:
        try:
            InferenceSet.model_validate(thaw(obj))
        except ValidationError as exc:
            first = exc.errors()[0]
            return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        return unsupported(obj["spec"])

    async def _members(self, obj: Obj) -> list[Obj]:
        """Workspaces this set controls; unowned ones with its label are adopted first."""
        uid = obj["metadata"]["uid"]
        out: list[Obj] = []
        for ws in self.workspaces.by_index(
            MEMBERS_BY_SET, f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        ):
            ref = controller_of(ws)
            if ref is None and not (ws.get("metadata") or {}).get("deletionTimestamp"):
                ws = await self._adopt(obj, ws)
                ref = controller_of(ws)
            if ref is not None and ref.get("uid") == uid:
                out.append(ws)
        return out

    async def _adopt(self, obj: Obj, ws: Obj) -> Obj:
        refs = [*(thaw(ws["metadata"].get("ownerReferences")) or []), owner_reference(obj)]
        patch = {"metadata": {"ownerReferences": refs, "resourceVersion": ws["metadata"]["resourceVersion"]}}
        adopted = await self.client.patch(
            WORKSPACE, ws["metadata"]["name"], patch, namespace=ws["metadata"]["namespace"]
        )
        log.info("adopted member", extra={"member": ws["metadata"]["name"]})
        await self.recorder.event(
            obj, "Normal", "MemberAdopted", f"adopted workspace {ws['metadata']['name']}"
        )
        result: Obj = adopted
        return result

    async def _act(self, obj: Obj, req: Request, decision: Decision) -> None:
        for reason in decision.reasons:
            log.info("scaling", extra={"decision": reason})
        self.expectations.expect(req.key, adds=decision.create, deletes=decision.delete, now=self.monotonic())
        for name in decision.create:
            member = mb.desired_member(obj, name)
            member["metadata"]["ownerReferences"] = [owner_reference(obj)]
            try:
                await self.client.create(WORKSPACE, member, field_manager=FIELD_MANAGER)
            except AlreadyExists:
                # Ours but not yet in the cache (the next reconcile sees it), or someone else's name.
                self.expectations.observed_failure(req.key, name)
                continue
            except Exception:
                self.expectations.observed_failure(req.key, name)
                raise
            await self.recorder.event(
                obj, "Normal", "MemberCreated", f"created workspace {name}", action="Create"
            )
        for name in decision.delete:
            try:
                await self.client.delete(WORKSPACE, name, req.namespace)
            except NotFound:
                self.expectations.observed_failure(req.key, name)
                continue
            except Exception:
                self.expectations.observed_failure(req.key, name)
                raise
            await self.recorder.event(
                obj, "Normal", "MemberDeleted", f"deleted workspace {name}", action="Delete"
            )

    async def _autoscale(
        self, obj: Obj, req: Request, replicas: int, observed: tuple[mb.Member, ...]
    ) -> Result | None:
        """The built-in autoscaler: scrape the ready members, decide, write spec.replicas through
        the scale subresource, and say why in an Event. With export-metrics alone, scrape and
        export the load (for KEDA or an HPA on external metrics) without scaling."""
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        try:
            settings = settings_of(annotations)
        except SettingsError as exc:
            await self.recorder.event(obj, "Warning", "AutoscalerInvalid", str(exc))
            return None
        if settings is None and not exports_load(annotations):
            self._forget(req.key)
            return None
        ready = [m.name for m in observed if m.ready and not m.deleting]
        async with aiohttp.ClientSession() as session:
            got = await asyncio.gather(
                *(scrape.scrape(session, self.metrics_url(req.namespace, name)) for name in ready)
            )
        samples = self._with_rates(req.key, self.monotonic(), dict(zip(ready, got, strict=True)))
        self.load[req.key] = SetLoad(
            queue_depth=sum(x.queue_depth for x in samples),
            running=sum(x.running for x in samples),
            answering=len(samples),
            tokens_per_minute=summed_tokens_per_minute(samples),
        )
        if settings is None:
            return Result(requeue_after=self.autoscale_interval_s)
        # Wanted members that are not yet created, still starting or silent count as not answering:
        # never shrink a set on partial numbers.
        missing = max(0, replicas - len(samples)) + without_rate(settings, samples)
        now = self.monotonic()
        history = self._history.setdefault(req.key, [])
        idle_s = 0.0
        if settings.min_replicas == 0:
            idle_s = await self._idle_seconds(req, replicas, self.load[req.key])
        rec = recommend(settings, replicas, samples, missing, history, now, idle_s=idle_s)
        history.append((now, rec.raw))
        horizon = max(settings.scale_up_stabilization_s, settings.scale_down_stabilization_s)
        history[:] = [(t, r) for t, r in history if now - t < horizon]
        if rec.desired != replicas:
            await self.client.patch(
                INFERENCESET,
                req.name,
                {"spec": {"replicas": rec.desired}},
                namespace=req.namespace,
                subresource="scale",
            )
            reason = "AutoscaleUp" if rec.desired > replicas else "AutoscaleDown"
            log.info("autoscaled", extra={"decision": rec.note})
            await self.recorder.event(obj, "Normal", reason, rec.note, action="Scale")
        return Result(requeue_after=self.autoscale_interval_s)

    def _with_rates(self, key: str, now: float, got: dict[str, Sample | None]) -> list[Sample]:
        """The members that answered, each with its tokens per minute since the previous scrape;
        the counters kept for the next one (members gone or silent are dropped)."""
        before = self._tokens.get(key, {})
        after: dict[str, tuple[float, float]] = {}
        samples = []
        for name, sample in got.items():
            if sample is None:
                continue
            rate = tokens_per_minute(before.get(name), now, sample.completion_tokens)
            if sample.completion_tokens is not None:
                after[name] = (now, sample.completion_tokens)
            samples.append(replace(sample, tokens_per_minute=rate))
        self._tokens[key] = after
        return samples

    async def _ensure_front(self, obj: Obj, req: Request) -> None:
        """A set that scales to zero gets the Service `<set>` pointing at the activator. Made only
        with create (never apply): a Service of that name the set does not control is left alone
        and reported, so a set can never take over someone else's Service."""
        if self.activator_host is None or self.services is None:
            return
        if not scales_to_zero((obj.get("metadata") or {}).get("annotations")):
            # An existing front stays (it still routes through the activator); the set's deletion
            # removes it with the garbage collector.
            return
        problem = front.front_problem(req.name)
        if problem is not None:
            await self.recorder.event(obj, "Warning", "FrontServiceInvalid", problem)
            return
        desired = front.desired_front(obj, self.activator_host)
        current = self.services.get(req.key)
        if current is not None and front.is_current(current, desired) and is_controlled_by(current, obj):
            return
        try:
            if current is None:
                await self.client.create(kinds.SERVICE, desired, field_manager=FIELD_MANAGER)
                await self.recorder.event(
                    obj,
                    "Normal",
                    "FrontServiceCreated",
                    f"created service {req.name} -> activator",
                    action="Create",
                )
                return
        except AlreadyExists:
            current = await self.client.get_or_none(kinds.SERVICE, req.name, req.namespace)
            if current is None:
                return  # gone meanwhile: the next pass creates it
        if current is not None and not is_controlled_by(current, obj):
            await self.recorder.event(
                obj,
                "Warning",
                "FrontServiceConflict",
                f"service {req.name} exists and is not this set's: clients of the set call the activator at "
                f"/inferencesets/{req.namespace}/{req.name}/ until it is renamed or deleted",
            )
            return
        if current is not None and not front.is_current(current, desired):
            await self.client.patch(
                kinds.SERVICE, req.name, {"spec": desired["spec"]}, namespace=req.namespace
            )

    def _forget(self, key: str) -> None:
        for memory in (self._history, self.load, self._active, self._last_replicas, self._tokens):
            memory.pop(key, None)

    async def _idle_seconds(self, req: Request, replicas: int, load: SetLoad) -> float:
        """Seconds since the set was last active: a request at the activator (its Lease), load on
        a member, or a move up from zero. A set first seen now counts as active now, so a restarted
        controller never scales a set to zero on a clock it did not watch."""
        wall = self.wall()
        active = self._active.get(req.key)
        if active is None or load.queue_depth > 0 or load.running > 0:
            active = wall
        if self._last_replicas.get(req.key) == 0 and replicas > 0:
            active = wall
        if self.operator_namespace:
            try:
                lease = await self.client.get_or_none(
                    kinds.LEASE, activity.lease_name(req.namespace, req.name), self.operator_namespace
                )
            except ApiError as exc:
                log.warning("cannot read the activity lease", extra={"error": str(exc)})
                lease = None
            at = activity.last_request_at(lease)
            if at is not None:
                active = max(active, at)
        self._active[req.key] = active
        self._last_replicas[req.key] = replicas
        return max(0.0, wall - active)

    async def _write_status(
        self, obj: Obj, decision: Decision | None, owned: list[Obj], problem: str | None
    ) -> None:
        old = obj.get("status") or {}
        now = datetime.now(UTC)
        gen = (obj.get("metadata") or {}).get("generation")
        active = [ws for ws in owned if not ws["metadata"].get("deletionTimestamp")]
        names = [str(ws["metadata"]["name"]) for ws in active]
        status: dict[str, Any] = thaw(old)
        status["selector"] = mb.pod_selector(names, obj["metadata"]["name"])
        conditions = old.get("conditions")
        if problem is not None:
            conditions = set_condition(
                conditions,
                InferenceSetReady,
                "False",
                reason="InvalidSpec",
                message=problem,
                observed_generation=gen,
                now=now,
            )
        if decision is not None:
            status["replicas"] = decision.replicas
            status["readyReplicas"] = decision.ready_replicas
            ready = decision.ready_replicas >= decision.wanted and decision.replicas == decision.wanted
            conditions = set_condition(
                conditions,
                InferenceSetReady,
                "True" if ready else "False",
                reason="InferenceSetReady" if ready else "MembersNotReady",
                message=f"{decision.ready_replicas} of {decision.wanted} members ready",
                observed_generation=gen,
                now=now,
            )
            if decision.limited:
                conditions = set_condition(
                    conditions,
                    NodeCountLimitReached,
                    "True",
                    reason="NodeCountLimitReached",
                    message=(
                        f"spec.nodeCountLimit allows {decision.allowed} of {decision.wanted} members; "
                        "raise nodeCountLimit or lower replicas"
                    ),
                    observed_generation=gen,
                    now=now,
                )
            else:
                conditions = remove_condition(conditions, NodeCountLimitReached)
        else:
            status.setdefault("replicas", len(active))
        if conditions is not None:
            status["conditions"] = conditions
        try:
            await patch_status(self.client, INFERENCESET, obj, status)
        except NotFound:
            return
