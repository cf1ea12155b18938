"""`tune fetch` against a loopback aiohttp server: downloads, HTTP failures, limits, refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from kaitopy.tuning.fetch import FetchError, FetchOptions, RefusedAddress, fetch_all

BODY = b'{"prompt": "say red", "completion": "red"}\n' * 50


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, int]]]:
    hits: dict[str, int] = {}

    async def data(request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    async def named(request: web.Request) -> web.Response:
        return web.Response(body=BODY, headers={"Content-Disposition": 'attachment; filename="chat.jsonl"'})

    async def empty(request: web.Request) -> web.Response:
        return web.Response(body=b"")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such file")

    async def flaky(request: web.Request) -> web.Response:
        hits["flaky"] = hits.get("flaky", 0) + 1
        if hits["flaky"] < 3:
            return web.Response(status=503, text="busy")
        return web.Response(body=BODY)

    async def forbidden(request: web.Request) -> web.Response:
        hits["forbidden"] = hits.get("forbidden", 0) + 1
        return web.Response(status=403)

    async def streamed(request: web.Request) -> web.StreamResponse:
        # No Content-Length: the limit must hold while streaming.
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"x" * 1024)
        await resp.write_eof()
        return resp

    async def endless(request: web.Request) -> web.StreamResponse:
        # Far more than any budget in these tests, without Content-Length: only the budget stops it.
        hits["endless"] = hits.get("endless", 0) + 1
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"y" * (1 << 20)
        try:
            for _ in range(1024):
                await resp.write(chunk)
                hits["endless_mib"] = hits.get("endless_mib", 0) + 1
        except ConnectionError:
            return resp  # the client hung up: what the budget is for
        await resp.write_eof()
        return resp

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>sign in</html>", content_type="text/html")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/data/train.jsonl")

    app = web.Application()
    app.router.add_get("/data/train.jsonl", data)
    app.router.add_get("/download", named)
    app.router.add_get("/empty.jsonl", empty)
    app.router.add_get("/missing.jsonl", missing)
    app.router.add_get("/flaky.jsonl", flaky)
    app.router.add_get("/forbidden.jsonl", forbidden)
    app.router.add_get("/streamed.jsonl", streamed)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/expired/train.jsonl", html)
    app.router.add_get("/endless.jsonl", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _total_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir())


def _content(p: Path) -> bytes:
    return p.read_bytes()


LOOPBACK = FetchOptions(allow_private=True, backoff_s=0.01, attempts=4)


async def test_downloads_every_url(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, _ = server
    paths = await fetch_all(
        [f"{base}/data/train.jsonl", f"{base}/download", f"{base}/redirect"], tmp_path, LOOPBACK
    )
    assert [p.name for p in paths] == ["train.jsonl", "chat.jsonl", "redirect"]
    assert all(_content(p) == BODY for p in paths)
    assert _names(tmp_path) == ["chat.jsonl", "redirect", "train.jsonl"]


async def test_same_name_twice_keeps_both(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, _ = server
    paths = await fetch_all([f"{base}/data/train.jsonl", f"{base}/data/train.jsonl?x=1"], tmp_path, LOOPBACK)
    assert sorted(p.name for p in paths) == ["train-1.jsonl", "train.jsonl"]


async def test_not_found_names_the_url(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(FetchError, match=re.escape(f"{base}/missing.jsonl: HTTP 404")):
        await fetch_all([f"{base}/data/train.jsonl", f"{base}/missing.jsonl"], tmp_path, LOOPBACK)
    assert not any(n.endswith(".part") for n in _names(tmp_path))


async def test_client_errors_are_not_retried(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, hits = server
    with pytest.raises(FetchError, match="HTTP 403"):
        await fetch_all([f"{base}/forbidden.jsonl"], tmp_path, LOOPBACK)
    assert hits["forbidden"] == 1


async def test_empty_response_is_an_error(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(FetchError, match=re.escape(f"{base}/empty.jsonl: the response is empty")):
        await fetch_all([f"{base}/empty.jsonl"], tmp_path, LOOPBACK)
    assert _names(tmp_path) == []


async def test_server_errors_are_retried(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, hits = server
    (path,) = await fetch_all([f"{base}/flaky.jsonl"], tmp_path, LOOPBACK)
    assert hits["flaky"] == 3 and _content(path) == BODY
    hits["flaky"] = 0
    with pytest.raises(FetchError, match="HTTP 503"):
        await fetch_all(
            [f"{base}/flaky.jsonl"],
            tmp_path / "again",
            FetchOptions(allow_private=True, attempts=2, backoff_s=0.01),
        )


async def test_size_limit_by_content_length(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, _ = server
    limit = FetchOptions(allow_private=True, max_bytes=len(BODY) - 1)
    with pytest.raises(FetchError, match=rf"{len(BODY)} bytes is over the limit of {len(BODY) - 1} bytes"):
        await fetch_all([f"{base}/data/train.jsonl"], tmp_path, limit)


async def test_size_limit_while_streaming(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(FetchError, match="more than the limit of 10000 bytes"):
        await fetch_all(
            [f"{base}/streamed.jsonl"], tmp_path, FetchOptions(allow_private=True, max_bytes=10_000)
        )
    assert _names(tmp_path) == []


async def test_loopback_is_refused_by_default(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(RefusedAddress, match="loopback"):
        await fetch_all([f"{base}/data/train.jsonl"], tmp_path)


async def test_name_resolving_to_loopback_is_refused(
    server: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    base, _ = server
    port = base.rsplit(":", 1)[1]
    with pytest.raises(FetchError, match=r"localhost resolves to 127\.0\.0\.1, a loopback address"):
        await fetch_all([f"http://localhost:{port}/data/train.jsonl"], tmp_path, FetchOptions(attempts=1))
    assert _names(tmp_path) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kaitopy", "tune", "fetch", *args], capture_output=True, text=True, timeout=60
    )


async def test_cli_with_the_job_argv(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    import asyncio

    base, _ = server
    dest = tmp_path / "data"
    ok = await asyncio.to_thread(_cli, f"--dest={dest}", f"--url={base}/data/train.jsonl", "--allow-private")
    assert ok.returncode == 0, ok.stderr
    assert (dest / "train.jsonl").read_bytes() == BODY
    refused = await asyncio.to_thread(_cli, f"--dest={dest}", f"--url={base}/data/train.jsonl")
    assert refused.returncode == 1
    assert "fetch failed" in refused.stderr and "loopback" in refused.stderr


async def test_a_rerun_replaces_rather_than_duplicates(
    server: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    base, _ = server
    urls = [f"{base}/data/train.jsonl", f"{base}/download"]
    await fetch_all(urls, tmp_path, LOOPBACK)
    await fetch_all(urls, tmp_path, LOOPBACK)  # the step restarted
    assert _names(tmp_path) == ["chat.jsonl", "train.jsonl"]


async def test_html_page_for_a_data_file(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(
        FetchError, match=re.escape(f"{base}/expired/train.jsonl: the server sent an HTML page")
    ):
        await fetch_all([f"{base}/expired/train.jsonl"], tmp_path, LOOPBACK)
    assert _names(tmp_path) == []


async def test_total_budget_by_content_length_names_the_field_and_limit(
    server: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    base, _ = server
    budget = FetchOptions(allow_private=True, max_total_bytes=2 * len(BODY) + 10, concurrency=1)
    urls = [f"{base}/data/train.jsonl?{i}" for i in range(3)]
    with pytest.raises(FetchError) as err:
        await fetch_all(urls, tmp_path, budget)
    assert str(err.value).startswith(f"tuning.input.urls: {base}/data/train.jsonl?2 takes the downloads")
    assert f"over their total limit of {2 * len(BODY) + 10} bytes (--max-total-bytes" in str(err.value)
    assert _total_size(tmp_path) == 2 * len(BODY)
    # Under the budget, the same URLs all download.
    enough = FetchOptions(allow_private=True, max_total_bytes=3 * len(BODY))
    assert len(await fetch_all(urls, tmp_path / "ok", enough)) == 3


async def test_total_budget_stops_a_stream_that_never_ends(
    server: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    """Several URLs, each under the per-file limit, streaming together past the total budget:
    the fetch fails once the budget is spent, not when the server stops."""
    base, hits = server
    budget = FetchOptions(allow_private=True, max_total_bytes=3 << 20, max_bytes=1 << 30, attempts=1)
    urls = [f"{base}/streamed.jsonl", f"{base}/endless.jsonl", f"{base}/endless.jsonl?b"]
    with pytest.raises(FetchError, match=r"over their total limit of 3145728 bytes"):
        await fetch_all(urls, tmp_path, budget)
    assert hits["endless"] == 2
    assert hits["endless_mib"] < 64  # the server was cut off long before its 2 GiB
    assert not [n for n in _names(tmp_path) if n.startswith(".")]  # no partial files left behind
    assert _total_size(tmp_path) <= 3 << 20


async def test_too_many_urls_are_refused_before_any_request(
    server: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    base, hits = server
    urls = [f"{base}/forbidden.jsonl?{i}" for i in range(3)]
    with pytest.raises(
        FetchError, match=re.escape("tuning.input.urls: 3 URLs is over the limit of 2 (--max-urls")
    ):
        await fetch_all(urls, tmp_path, FetchOptions(allow_private=True, max_urls=2))
    assert "forbidden" not in hits


async def test_the_jobs_limit_flags_reach_the_fetch(
    server: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    """The argv the controller writes into the Job (limits included) is what the CLI enforces."""
    import asyncio

    from kaitopy.controllers.workspace.job import tuning_job
    from kaitopy.controllers.workspace.plan import TuningPlan

    base, _ = server
    plan = TuningPlan(
        name="t",
        namespace="default",
        preset="phi-3-mini-4k-instruct",
        method="lora",
        image="runtime:1",
        hf_model_id="microsoft/Phi-3-mini-4k-instruct",
        gpus_per_node=1,
        match_labels={"a": "t"},
        input_urls=(f"{base}/data/train.jsonl", f"{base}/download"),
        max_input_bytes=len(BODY) + 1,
    )
    fetch = tuning_job(plan)["spec"]["template"]["spec"]["initContainers"][0]
    argv = [a.replace("--dest=/mnt/data", f"--dest={tmp_path / 'data'}") for a in fetch["args"][2:]]
    proc = await asyncio.to_thread(_cli, *argv, "--allow-private")
    assert proc.returncode == 1
    assert f"over their total limit of {len(BODY) + 1} bytes" in proc.stderr
