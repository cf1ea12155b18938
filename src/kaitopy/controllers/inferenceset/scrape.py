"""Reading a member's load from its model server's /metrics (Prometheus text)."""

from __future__ import annotations

import string
from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kaitopy.controllers.inferenceset.autoscale import QUEUE_METRIC, RUNNING_METRIC, TOKENS_METRIC, Sample
from kaitopy.runtime.cache.store import Store

SCRAPE_TIMEOUT_S = 2.0  # a member slower than this to answer its /metrics is counted as not answering


def service_url(namespace: str, member: str) -> str:
    """The member Workspace's Service by name (port 80 serves the model server, /metrics included)."""
    return f"http://{member}.{namespace}.svc/metrics"


def cluster_ip_url(services: Store) -> Callable[[str, str], str]:
    """The member's Service by its cluster IP, read from the cache (the Services the workspace
    controller already watches), so the scrape needs no cluster DNS: the controller may run
    outside the cluster, or on nodes without DNS. By name while the cache lacks it."""

    def url(namespace: str, member: str) -> str:
        svc = services.get(f"{namespace}/{member}") or {}
        ip = (svc.get("spec") or {}).get("clusterIP")
        if ip and ip != "None":
            host = f"[{ip}]" if ":" in str(ip) else str(ip)
            return f"http://{host}/metrics"
        return service_url(namespace, member)

    return url


URL_FIELDS = ("namespace", "member")


def template_url(template: str) -> Callable[[str, str], str]:
    """Members' /metrics at an address the operator's admin gives, for a controller that cannot
    reach cluster IPs (it runs outside the cluster, or the cluster has no kube-proxy): e.g. through
    the API server's service proxy that `kubectl proxy` serves,
    http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{member}:80/proxy/metrics.
    Raises ValueError naming the fix when the template cannot name a member."""
    check_template(template)
    return lambda namespace, member: template.format(namespace=namespace, member=member)


def check_template(template: str) -> None:
    if not template.startswith(("http://", "https://")):
        raise ValueError(f"{template!r}: must be an http:// or https:// URL")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"{template!r}: {err} (a literal brace is written {{{{ or }}}})") from err
    unknown = sorted(fields - set(URL_FIELDS))
    if unknown:
        raise ValueError(
            f"{template!r}: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
            "the fields are {namespace} and {member}"
        )
    if "member" not in fields:
        raise ValueError(f"{template!r}: must contain {{member}}, or every member would read one page")


def parse(text: str) -> Sample:
    """The queue depth, running requests and generated-tokens counter in one /metrics page (summed
    over label sets; a gauge the page lacks counts 0, a counter it lacks is None)."""
    totals = {QUEUE_METRIC: 0.0, RUNNING_METRIC: 0.0}
    tokens: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += float(sample.value)
            elif sample.name == TOKENS_METRIC:
                tokens = (tokens or 0.0) + float(sample.value)
    return Sample(queue_depth=totals[QUEUE_METRIC], running=totals[RUNNING_METRIC], completion_tokens=tokens)


async def scrape(session: aiohttp.ClientSession, url: str) -> Sample | None:
    """One member's sample, or None when it does not answer with a page we can read."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)) as resp:
            if resp.status != 200:
                return None
            return parse(await resp.text())
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
