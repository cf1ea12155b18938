"""LoRA hot-load: the running server follows the adapter list the controller delivers.

The controller writes the Workspace's adapters (name, image, strength, pull secret names) as JSON in
an annotation of each model pod; the pod mounts that annotation as a file (a downwardAPI volume, which
the kubelet rewrites when the annotation changes). This loop reads the file, and for each adapter
that is new, or whose image or strength changed, pulls the image (adapterpull), has the engine check
and load it, and unloads the adapters the list no longer names. Nothing restarts.

Every adapter's state (Pulling, Loading, Ready, Failed with the reason) is kept for GET /adapters,
which the controller reads into the Workspace's status.adapters. A pull that fails is retried with
backoff (an image a tuning Workspace has not pushed yet shows Pulling until it is there); an adapter
the engine refuses stays Failed until the list changes it.

The adapters the init containers copied into --adapter-dir before the start are the initial set: the
engine loaded them at start, and they count as loaded from the image --adapter-image names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kaitopy.inference.adapterpull import ImageMissing, PullRefused, PullSettings, pull_adapter
from kaitopy.inference.adapters import AdapterInvalid

log = logging.getLogger(__name__)

PULLING, LOADING, READY, FAILED, UNLOADING = "Pulling", "Loading", "Ready", "Failed", "Unloading"
# How often the desired file is read: the kubelet's own refresh of it takes about as long.
POLL_S = 1.0
# Retries of a failed pull: first after BACKOFF_START_S, doubling to BACKOFF_MAX_S. The cap is short so
# that an image pushed by a tuning run while it was waited for is loaded within seconds.
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 4.0


class _GiveUp(Exception):
    """The adapter is Failed and retrying cannot help (its status says why)."""


class DesiredInvalid(ValueError):
    """The delivered list cannot be read; the message says what is wrong."""


@dataclass(frozen=True)
class Wanted:
    name: str
    image: str
    strength: float = 1.0
    pull_secrets: tuple[str, ...] = ()


@runtime_checkable
class AdapterEngine(Protocol):
    """What an engine offers for hot-loading."""

    def model_ids(self) -> list[str]: ...

    async def load_adapter(self, name: str, path: Path, strength: float) -> None:
        """Serve the adapter at `path` as `name` (replacing one of that name); AdapterInvalid when it
        cannot be served, with the reason."""
        ...

    async def unload_adapter(self, name: str) -> None: ...


def parse_desired(text: str) -> list[Wanted] | None:
    """The list in the desired file; None for an empty file (nothing delivered yet)."""
    if not text.strip():
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise DesiredInvalid(f"not JSON: {exc}") from None
    items = doc.get("adapters") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise DesiredInvalid('expected {"adapters": [...]}')
    wanted: list[Wanted] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DesiredInvalid(f"adapters[{i}] is not an object")
        name, image = item.get("name"), item.get("image")
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name:
            raise DesiredInvalid(f"adapters[{i}].name {name!r} is not a usable adapter name")
        if not isinstance(image, str) or not image:
            raise DesiredInvalid(f"adapters[{i}].image must be a non-empty string")
        try:
            strength = float(item.get("strength", 1.0))
        except (TypeError, ValueError):
            raise DesiredInvalid(f"adapters[{i}].strength {item.get('strength')!r} is not a number") from None
        secrets = item.get("pullSecrets") or []
        if not isinstance(secrets, list) or not all(isinstance(s, str) and "/" not in s for s in secrets):
            raise DesiredInvalid(f"adapters[{i}].pullSecrets must be a list of Secret names")
        wanted.append(Wanted(name, image, strength, tuple(secrets)))
    return wanted


def digest(text: str) -> str:
    """What GET /adapters reports as the list it acted on (the controller compares it with its own)."""
    return hashlib.sha256(text.strip().encode()).hexdigest()[:16]


@dataclass
class _Loaded:
    image: str
    strength: float
    path: Path
    owned: bool  # pulled by this loop (its files go when it is unloaded), not copied by an init container


@dataclass
class _Status:
    image: str
    strength: float
    state: str
    reason: str = ""
    since: float = 0.0


@dataclass
class _Task:
    want: Wanted | None  # None: an unload
    task: asyncio.Task[None]


class AdapterManager:
    def __init__(
        self,
        engine: AdapterEngine,
        desired_file: Path,
        work_dir: Path,
        pull: PullSettings,
        initial: Mapping[str, tuple[str, float, Path]],
        *,
        poll_s: float = POLL_S,
    ) -> None:
        self.engine = engine
        self.desired_file = desired_file
        self.work_dir = work_dir
        self.pull = pull
        self.poll_s = poll_s
        self.loaded = {
            name: _Loaded(image, f, path, owned=False) for name, (image, f, path) in initial.items()
        }
        self.status = {
            name: _Status(image, f, READY, since=time.time()) for name, (image, f, _) in initial.items()
        }
        self.desired: list[Wanted] | None = None
        self.observed = ""  # digest of the list acted on ("" before one was delivered)
        self.problem = ""  # why the delivered list could not be read
        self._text: str | None = None
        self._tasks: dict[str, _Task] = {}
        self._wake = asyncio.Event()
        self._seq = 0
        # One engine call at a time: a call that outlives its cancelled task ends before the next.
        self._engine_lock = asyncio.Lock()

    # --- what GET /adapters answers

    def snapshot(self) -> dict[str, Any]:
        adapters = [
            {
                "name": name,
                "image": s.image,
                "strength": s.strength,
                "state": s.state,
                "reason": s.reason,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.since)),
            }
            for name, s in sorted(self.status.items())
        ]
        body: dict[str, Any] = {"observed": self.observed, "adapters": adapters}
        if self.problem:
            body["problem"] = self.problem
        return body

    # --- the loop

    async def run(self) -> None:
        # What an earlier run of this container pulled (the volume outlives a container restart) is
        # pulled again if still wanted: nothing of it is loaded now.
        await asyncio.to_thread(_clear_pulled, self.work_dir)
        try:
            while True:
                await self._read()
                self._sync()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
        finally:
            for t in self._tasks.values():
                t.task.cancel()

    async def _read(self) -> None:
        try:
            text = await asyncio.to_thread(self.desired_file.read_text)
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            log.warning("cannot read the adapter list %s: %s", self.desired_file, exc)
            return
        if text == self._text:
            return
        self._text = text
        try:
            desired = parse_desired(text)
        except DesiredInvalid as exc:
            self.problem = f"the adapter list in {self.desired_file} is unusable: {exc}"
            log.error("%s", self.problem)
            return
        self.problem = ""
        if desired is None:
            return
        self.desired = desired
        self.observed = digest(text)
        log.info("adapter list changed: %s", ", ".join(f"{w.name}={w.image}" for w in desired) or "none")

    def _sync(self) -> None:
        if self.desired is None:
            return
        wanted = {w.name: w for w in self.desired}
        base = self.engine.model_ids()[:1]
        for name in set(self.loaded) | set(self.status):
            if name not in wanted:
                current = self._tasks.get(name)
                if current is not None and current.want is None:
                    continue
                if current is not None:
                    current.task.cancel()
                if name in self.loaded:
                    self._start(name, None, self._remove(name))
                else:
                    self.status.pop(name, None)
        for name, want in wanted.items():
            current = self._tasks.get(name)
            if current is not None and current.want == want:
                continue
            if current is not None:
                if current.want is None:
                    continue  # an unload finishes first (the loop wakes when it is done)
                # A pull stops at once; an engine call in flight completes and records itself.
                current.task.cancel()
            if name in base:
                self._set(name, want, FAILED, f"the name {name!r} is the base model's")
                continue
            have = self.loaded.get(name)
            if have is not None and have.image == want.image and have.strength == want.strength:
                if self.status.get(name, _Status("", 0, "")).state != READY:
                    self._set(name, want, READY)
                continue
            failed = self.status.get(name)
            if (
                current is None
                and failed is not None
                and failed.state == FAILED
                and (failed.image, failed.strength) == (want.image, want.strength)
            ):
                continue  # refused by the engine: only a change to the list tries again
            self._start(name, want, self._bring(want))

    def _start(self, name: str, want: Wanted | None, coro: Any) -> None:
        task = asyncio.create_task(coro)
        entry = _Task(want, task)
        self._tasks[name] = entry

        def done(_: asyncio.Task[None]) -> None:
            if self._tasks.get(name) is entry:
                del self._tasks[name]
            self._wake.set()

        task.add_done_callback(done)

    def _set(self, name: str, want: Wanted, state: str, reason: str = "") -> None:
        old = self.status.get(name)
        if old is not None and (old.state, old.reason, old.image, old.strength) == (
            state,
            reason,
            want.image,
            want.strength,
        ):
            return
        self.status[name] = _Status(want.image, want.strength, state, reason, time.time())
        if state == FAILED:
            log.error("adapter %s (%s): %s", name, want.image, reason)
        else:
            log.info("adapter %s (%s): %s%s", name, want.image, state, f" ({reason})" if reason else "")

    # --- one adapter

    async def _bring(self, want: Wanted) -> None:
        have = self.loaded.get(want.name)
        if have is not None and have.image == want.image:
            path = have.path  # only the strength changed: the files are there
        else:
            try:
                path = await self._pull(want)
            except _GiveUp:
                return
        self._set(want.name, want, LOADING)
        try:
            await asyncio.shield(self._load(want, path))
        except AdapterInvalid as exc:
            self._set(want.name, want, FAILED, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("loading adapter %s failed", want.name)
            self._set(want.name, want, FAILED, f"the engine could not load it: {exc}")
        else:
            self._set(want.name, want, READY)

    async def _pull(self, want: Wanted) -> Path:
        delay = BACKOFF_START_S
        attempt = 0
        while True:
            attempt += 1
            self._seq += 1
            dest = self.work_dir / str(self._seq) / want.name
            if attempt == 1:
                self._set(want.name, want, PULLING)
            try:
                await pull_adapter(want.image, dest, want.pull_secrets, self.pull)
                return dest
            except PullRefused as exc:
                await _remove_tree(dest.parent)
                self._set(want.name, want, FAILED, str(exc))
                raise _GiveUp from None
            except ImageMissing as exc:
                self._set(want.name, want, PULLING, f"{exc}; retrying (attempt {attempt})")
            except asyncio.CancelledError:
                await _remove_tree(dest.parent)
                raise
            except Exception as exc:
                self._set(want.name, want, FAILED, f"pull failed: {exc}; retrying (attempt {attempt})")
            await _remove_tree(dest.parent)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _load(self, want: Wanted, path: Path) -> None:
        """The engine call and its bookkeeping; shielded, so a cancelled task still records what the
        engine did."""
        async with self._engine_lock:
            old = self.loaded.get(want.name)
            try:
                await self.engine.load_adapter(want.name, path, want.strength)
            except BaseException:
                if want.name not in self.engine.model_ids():
                    self.loaded.pop(want.name, None)  # the engine dropped the old one too
                if old is None or old.path != path:
                    await _remove_tree(path.parent)
                raise
            self.loaded[want.name] = _Loaded(want.image, want.strength, path, owned=True)
        if old is not None and old.path != path and old.owned:
            await _remove_tree(old.path.parent)

    async def _remove(self, name: str) -> None:
        status = self.status.get(name)
        if status is not None:
            status.state, status.reason, status.since = UNLOADING, "", time.time()
        await asyncio.shield(self._unload(name))

    async def _unload(self, name: str) -> None:
        async with self._engine_lock:
            have = self.loaded.get(name)
            if have is None:
                return
            try:
                await self.engine.unload_adapter(name)
            except Exception:
                log.exception("unloading adapter %s failed", name)
            self.loaded.pop(name, None)
        self.status.pop(name, None)
        log.info("adapter %s unloaded", name)
        if have.owned:
            await _remove_tree(have.path.parent)


def _clear_pulled(work_dir: Path) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    for child in work_dir.iterdir():
        if child.name.isdigit() and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


async def _remove_tree(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, True)
