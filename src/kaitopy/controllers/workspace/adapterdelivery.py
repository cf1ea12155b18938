"""LoRA hot-load, the controller's half: adapter edits reach running pods without a rollout.

- `pinned`: the Deployment keeps rendering the adapters its pod template was made with (recorded in
  an annotation on the Deployment), so an adapter edit alone leaves the template, hence its hash,
  unchanged. Any other change rolls the pods out anyway, and then the template takes the current
  adapters. A new pull secret needs a mount, so it rolls out too.
- `read_answers` (observe) and the pure `decide_adapters`: each model pod gets the Workspace's
  adapter list as an annotation, which the pod sees as a file (a downwardAPI volume) and its server
  follows (inference/hotload.py); each server's GET /adapters is read back into `status.adapters`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from kaitopy.controllers.workspace import workload
from kaitopy.controllers.workspace.plan import REVISION_ANNOTATION, AdapterPlan, InferencePlan
from kaitopy.inference.hotload import digest
from kaitopy.runtime.objects import Obj

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 2.0
"""A model server slower than this to answer GET /adapters counts as not answering (this pass)."""
REQUEUE_S = 2.0
"""How often a workspace whose adapters are not all Ready is looked at again: servers change state
(Pulling -> Ready) without any Kubernetes event to wake the controller."""
PENDING = "Pending"
_RANK = {"Failed": 0, "Pulling": 1, "Loading": 2, "Unloading": 3, PENDING: 4, "Ready": 5}


def pinned(plan: InferencePlan, current: Obj | None) -> InferencePlan:
    """The plan with the adapters of the running Deployment's template, when only the adapters
    changed; else `plan` (a first deployment, a change that rolls out anyway, a new pull secret)."""
    if not plan.hot_load or current is None:
        return plan
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    recorded = workload.parse_adapter_list(str(annotations.get(workload.TEMPLATE_ADAPTERS_ANNOTATION) or ""))
    if recorded is None or recorded == plan.adapters:
        return plan
    if set(workload.pull_secret_names(plan.adapters)) - set(workload.pull_secret_names(recorded)):
        return plan  # its files must be mounted: only a new pod template can do that
    candidate = dataclasses.replace(plan, adapters=recorded)
    if workload.revision(candidate) != annotations.get(REVISION_ANNOTATION):
        return plan
    return candidate


class AdapterReader(Protocol):
    """One model server's GET /adapters answer, or None when it does not answer."""

    async def read(self, pod: Obj, port: int) -> Mapping[str, Any] | None: ...


class HttpAdapterReader:
    """Reads GET /adapters from the pod's IP. `address_of` replaces the pod's address (tests run a
    real server on loopback for pods that, on kwok, do not run)."""

    def __init__(self, address_of: Any = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._address_of = address_of

    async def read(self, pod: Obj, port: int) -> Mapping[str, Any] | None:
        if self._address_of is not None:
            address = self._address_of(pod)
        else:
            ip = (pod.get("status") or {}).get("podIP")
            address = f"{ip}:{port}" if ip else None
        if not address:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                f"http://{address}/adapters", timeout=aiohttp.ClientTimeout(total=READ_TIMEOUT_S)
            ) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _live(pods: Sequence[Obj]) -> list[Obj]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def adapter_status(
    desired: tuple[AdapterPlan, ...], text: str, answers: Mapping[str, Mapping[str, Any] | None]
) -> list[dict[str, Any]]:
    """status.adapters: per desired adapter, the least advanced state over the pods (a pod that has
    not acted on the current list yet counts as Pending) and its reason. Pure."""
    want = digest(text)
    out: list[dict[str, Any]] = []
    for adapter in desired:
        state, reason = PENDING, "waiting for the model server to answer"
        first = True
        for pod, answer in sorted(answers.items()):
            if answer is None:
                s, r = PENDING, f"pod {pod}: the model server does not answer yet"
            elif answer.get("observed") != want:
                s, r = PENDING, f"pod {pod}: the adapter list is on its way"
            else:
                found = next((a for a in answer.get("adapters") or [] if a.get("name") == adapter.name), None)
                if found is None:
                    s, r = PENDING, f"pod {pod}: not started yet"
                else:
                    s, r = str(found.get("state")), str(found.get("reason") or "")
                    if s != "Ready" and r:
                        r = f"pod {pod}: {r}"
            if first or _RANK.get(s, 0) < _RANK.get(state, 0):
                state, reason, first = s, r, False
        entry = {"name": adapter.name, "image": adapter.image, "strength": adapter.strength, "state": state}
        if state != "Ready" and reason:
            entry["reason"] = reason
        out.append(entry)
    return out


@dataclass(frozen=True)
class AdapterPlanOut:
    """What `decide_adapters` wants done and shown."""

    deliver: tuple[tuple[str, str], ...]
    """(namespace, pod) that lack the current list, to patch with `text`."""
    text: str
    status: list[dict[str, Any]]
    """status.adapters."""
    again: bool
    """Look again soon: a running server changes state (Pulling -> Ready) without any event."""


def decide_adapters(
    desired: tuple[AdapterPlan, ...],
    pods: Sequence[Obj],
    answers: Mapping[str, Mapping[str, Any] | None],
    *,
    started_with: tuple[AdapterPlan, ...] = (),
) -> AdapterPlanOut:
    """Pure: which pods need the list, status.adapters from the servers' answers (read in the
    observe step, `read_answers`), and whether to poll. `started_with`: the adapters the pods'
    template copies at start. A pod without the annotation serves those; when they and the list
    are both empty there is nothing to tell it (a write per pod of every adapter-less Workspace
    would be a write and a pod event per pod for nothing)."""
    text = workload.adapter_list(desired)
    live = _live(pods)

    def needs(pod: Obj) -> bool:
        have = (pod["metadata"].get("annotations") or {}).get(workload.ADAPTER_LIST_ANNOTATION)
        if have is None and not desired and not started_with:
            return False
        return have != text

    deliver = tuple((str(p["metadata"]["namespace"]), str(p["metadata"]["name"])) for p in live if needs(p))
    if not desired:
        return AdapterPlanOut(deliver, text, [], False)
    status = adapter_status(
        desired, text, {p["metadata"]["name"]: answers.get(p["metadata"]["name"]) for p in live}
    )
    # Polled only while a server runs: a pod that gets its address or turns Ready wakes us anyway.
    running = any((p.get("status") or {}).get("podIP") for p in live)
    return AdapterPlanOut(deliver, text, status, running and any(a["state"] != "Ready" for a in status))


async def read_answers(
    reader: AdapterReader, plan: InferencePlan, desired: tuple[AdapterPlan, ...], pods: Sequence[Obj]
) -> dict[str, Mapping[str, Any] | None]:
    """Each live model pod's GET /adapters (none read when no adapter is wanted)."""
    if not (plan.hot_load and desired):
        return {}
    port = workload.server_port(plan)
    return {p["metadata"]["name"]: await reader.read(p, port) for p in _live(pods)}
