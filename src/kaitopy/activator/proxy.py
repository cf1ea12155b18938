"""The activator's proxy: find the request's InferenceSet, forward to a ready member (round robin),
or hold the request while the set has none, waking it from zero, within the bounds of HoldSettings.

It only ever forwards to the Services of Workspaces the set controls (ownerReference with the
set's uid), in the set's namespace, and only ever scales a set from exactly 0 to 1 (a patch
conditional on the resourceVersion of the set seen at 0), so sending it requests gains nobody more
than the set's own Service would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import web

from kaitopy.activator.activity import ActivityRecorder
from kaitopy.activator.admission import HoldSettings, Verdict, admit, openai_error, queue_limit, retry_after
from kaitopy.activator.metrics import ActivatorMetrics
from kaitopy.activator.route import Route, route
from kaitopy.api.constants import INFERENCESET, InferenceReady
from kaitopy.controllers.inferenceset.autoscale import held_requests_limit, scales_to_zero
from kaitopy.controllers.inferenceset.reconciler import MEMBERS_BY_SET
from kaitopy.runtime import ApiError, Client, Store, controller_of, is_true
from kaitopy.runtime.objects import Obj

log = logging.getLogger(__name__)

# Per-hop headers (RFC 9110 7.6.1) are the proxy's own; Host names the activator, not the member.
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
RECHECK_S = 1.0  # a held request re-reads the cache at least this often, whatever the events say
# Connect retries back off from 0.1 s to 2 s: the usual lag of a node's proxy rules is well under a
# second, a loaded node's some seconds.
CONNECT_RETRY_FIRST_S = 0.1
CONNECT_RETRY_MAX_S = 2.0


class _NotConnected(Exception):
    """No connection to the member was made (its cause says why): nothing of the request was sent."""


def member_url(namespace: str, member: str) -> str:
    """The member Workspace's Service (port 80: the model server)."""
    return f"http://{member}.{namespace}.svc"


class Changes:
    """Wakes held requests when the caches change (an informer event handler)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return

    def on_add(self, obj: Obj) -> None:
        self.notify()

    def on_update(self, old: Obj, new: Obj) -> None:
        self.notify()

    def on_delete(self, obj: Obj) -> None:
        self.notify()


def ready_members(set_obj: Obj, workspaces: Store) -> list[str]:
    """Names of the set's ready members: Workspaces it controls, not being deleted, InferenceReady."""
    md = set_obj["metadata"]
    out = []
    for ws in workspaces.by_index(MEMBERS_BY_SET, f"{md['namespace']}/{md['name']}"):
        ref = controller_of(ws)
        if ref is None or ref.get("uid") != md.get("uid") or ws["metadata"].get("deletionTimestamp"):
            continue
        if is_true((ws.get("status") or {}).get("conditions"), InferenceReady):
            out.append(str(ws["metadata"]["name"]))
    return sorted(out)


def error(status: int, message: str, type_: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(openai_error(message, type_, status), status=status, headers=headers)


class Activator:
    def __init__(
        self,
        client: Client,
        sets: Store,
        workspaces: Store,
        changes: Changes,
        activity: ActivityRecorder,
        *,
        settings: HoldSettings | None = None,
        metrics: ActivatorMetrics | None = None,
        endpoint_of: Callable[[str, str], str] = member_url,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.sets = sets
        self.workspaces = workspaces
        self.changes = changes
        self.activity = activity
        self.settings = settings or HoldSettings()
        self.metrics = metrics or ActivatorMetrics()
        self.endpoint_of = endpoint_of
        self.monotonic = monotonic
        self._held: dict[str, int] = {}
        self._next: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Activator:
        # No decompression: bodies pass through as the member encoded them.
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    def app(self, max_body_bytes: int = 64 * 1024 * 1024) -> web.Application:
        app = web.Application(client_max_size=max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        r = route(request.host, request.path_qs)
        if r is None:
            return error(
                404,
                "no InferenceSet named: call http://<set>.<namespace>.svc/... through the set's Service, "
                "or /inferencesets/<namespace>/<set>/... on the activator",
                "NotFoundError",
            )
        key = f"{r.namespace}/{r.name}"
        set_obj = self.sets.get(key)
        if set_obj is None:
            return error(404, f"InferenceSet {key} not found", "NotFoundError")
        # The whole body first (bounded by the app's client_max_size: 413 beyond it), so a request
        # that could never be forwarded wakes nothing.
        body = await request.read()
        if not scales_to_zero(set_obj["metadata"].get("annotations")):
            return await self._serve(request, r, key, set_obj, body)  # no idle clock to keep
        async with self.activity.request(r.namespace, r.name):
            return await self._serve(request, r, key, set_obj, body)

    async def _serve(
        self, request: web.Request, r: Route, key: str, set_obj: Obj, body: bytes
    ) -> web.StreamResponse:
        labels = (r.namespace, r.name)
        replicas = (set_obj.get("spec") or {}).get("replicas")
        replicas = 1 if replicas is None else int(replicas)
        wakes = scales_to_zero(set_obj["metadata"].get("annotations"))
        ready = ready_members(set_obj, self.workspaces)
        set_limit = held_requests_limit(set_obj["metadata"].get("annotations"))
        verdict = admit(
            ready=len(ready),
            replicas=replicas,
            wakes=wakes,
            held=self._held.get(key, 0),
            settings=self.settings,
            set_limit=set_limit,
        )
        if verdict is Verdict.ASLEEP:
            self.metrics.rejected.labels(*labels, "asleep").inc()
            return error(
                503,
                f"InferenceSet {key} has 0 replicas and does not scale from zero; scale it up, or set "
                'autoscaling.kaitopy.io/enabled "true" and min-replicas "0" on it',
                "ServiceUnavailableError",
            )
        if verdict is Verdict.QUEUE_FULL:
            self.metrics.rejected.labels(*labels, "queue_full").inc()
            return error(
                503,
                f"InferenceSet {key} is starting and {queue_limit(self.settings, set_limit)} requests "
                f"already wait for it; retry after {retry_after(self.settings)}s",
                "ServiceUnavailableError",
                {"Retry-After": retry_after(self.settings)},
            )
        if verdict is Verdict.HOLD:
            ready = await self._hold(key, labels)
            if not ready:
                return error(
                    503,
                    f"InferenceSet {key} had no ready member within {self.settings.max_wait_s:g}s; "
                    f"retry after {retry_after(self.settings)}s",
                    "ServiceUnavailableError",
                    {"Retry-After": retry_after(self.settings)},
                )
        return await self._forward_to_ready(request, body, r, key, labels, ready)

    def _pick(self, key: str, ready: list[str]) -> str:
        n = self._next.get(key, 0)
        self._next[key] = n + 1
        return ready[n % len(ready)]

    async def _forward_to_ready(
        self, request: web.Request, body: bytes, r: Route, key: str, labels: tuple[str, str], ready: list[str]
    ) -> web.StreamResponse:
        """Forward to a ready member, round robin; while the chosen member cannot be connected to,
        try again (the next ready one, by the cache as it is then) within connect_retry_s."""
        deadline = self.monotonic() + self.settings.connect_retry_s
        delay = CONNECT_RETRY_FIRST_S
        while True:
            member = self._pick(key, ready)
            try:
                return await self._forward(request, body, r, labels, self.endpoint_of(r.namespace, member))
            except _NotConnected as exc:
                if self.monotonic() + delay > deadline:
                    self.metrics.forwarded.labels(*labels, "0").inc()
                    log.warning(
                        "member did not accept the connection",
                        extra={"inferenceset": key, "member": member, "error": str(exc.__cause__)},
                    )
                    return error(
                        502,
                        f"the member of InferenceSet {key} did not accept the connection within "
                        f"{self.settings.connect_retry_s:g}s",
                        "BadGatewayError",
                    )
                self.metrics.connect_retries.labels(*labels).inc()
                log.info(
                    "member not reachable yet; retrying",
                    extra={"inferenceset": key, "member": member, "error": str(exc.__cause__)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECT_RETRY_MAX_S)
                set_obj = self.sets.get(key)
                now_ready = [] if set_obj is None else ready_members(set_obj, self.workspaces)
                ready = now_ready or ready  # none ready now: the ones that were, until the deadline

    async def _hold(self, key: str, labels: tuple[str, str]) -> list[str]:
        """Hold until the set has a ready member (its names) or the wait is over ([])."""
        self._held[key] = self._held.get(key, 0) + 1
        self.metrics.held.labels(*labels).inc()
        start = self.monotonic()
        outcome = "wait_exceeded"
        log.info("holding request", extra={"inferenceset": key, "held": self._held[key]})
        try:
            deadline = start + self.settings.max_wait_s
            while True:
                set_obj = self.sets.get(key)
                if set_obj is None:
                    outcome = "gone"
                    return []
                ready = ready_members(set_obj, self.workspaces)
                if ready:
                    outcome = "forwarded"
                    return ready
                left = deadline - self.monotonic()
                if left <= 0:
                    self.metrics.rejected.labels(*labels, "wait_exceeded").inc()
                    return []
                if scales_to_zero(set_obj["metadata"].get("annotations")):
                    # At zero (also: scaled back to zero while we held): ask for one.
                    await self._wake(key, labels, set_obj)
                await self.changes.wait(min(left, RECHECK_S))
        finally:
            self._held[key] -= 1
            self.metrics.held.labels(*labels).dec()
            self.metrics.hold_seconds.labels(*labels, outcome).observe(self.monotonic() - start)

    async def _wake(self, key: str, labels: tuple[str, str], set_obj: Obj) -> None:
        """spec.replicas 0 -> 1 through the scale subresource, only from the set as the cache shows
        it at zero: the patch carries that resourceVersion, so it never changes a set someone
        scaled meanwhile (that attempt fails with a conflict, and the next look decides again). A
        JSON patch cannot test for 0 here: the Scale object omits a zero spec.replicas."""
        namespace, name = labels
        if (set_obj.get("spec") or {}).get("replicas") != 0:
            return
        patch = {
            "metadata": {"resourceVersion": set_obj["metadata"]["resourceVersion"]},
            "spec": {"replicas": 1},
        }
        try:
            await self.client.patch(INFERENCESET, name, patch, namespace=namespace, subresource="scale")
        except ApiError as exc:
            log.info("wake not applied", extra={"inferenceset": key, "error": str(exc)})
            return
        self.metrics.wakes.labels(*labels).inc()
        log.info("woke inferenceset from zero", extra={"inferenceset": key})

    async def _forward(
        self, request: web.Request, body: bytes, r: Route, labels: tuple[str, str], base: str
    ) -> web.StreamResponse:
        assert self._session is not None, "use the Activator as an async context manager"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        resp: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method,
                base + r.path,
                headers=headers,
                data=body,
                allow_redirects=False,
                # No total limit: a long generation streams for as long as it takes.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            ) as upstream:
                resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP_HEADERS:
                        resp.headers.add(k, v)
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                self.metrics.forwarded.labels(*labels, str(upstream.status)).inc()
                return resp
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Refused, unreachable, its name not resolved, or no accept within sock_connect: no byte
            # of the request left here, so the caller may try again.
            raise _NotConnected from exc
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            self.metrics.forwarded.labels(*labels, "0").inc()
            log.warning("member did not answer", extra={"inferenceset": "/".join(labels), "error": str(exc)})
            if resp is not None and resp.prepared:
                raise  # headers already sent: the client sees the stream cut
            return error(
                502, f"the member of InferenceSet {'/'.join(labels)} did not answer", "BadGatewayError"
            )
