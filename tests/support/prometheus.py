"""A real Prometheus (Debian's `prometheus` package) for the tests: started on loopback with its own
config and data directory in a temporary directory, discovering the operator's metrics endpoints
through `kubernetes_sd_configs` against the tests' control plane, with the relabeling the shipped
ServiceMonitors (manifests/components/servicemonitor) make the Prometheus Operator generate.

Debian builds its Prometheus without Kubernetes service discovery (client-go is not packaged:
`kubernetes_sd_configs` is an unknown field to it), so the harness does that one step itself:
`KubernetesDiscovery` reads the EndpointSlices/Services (role endpointslice) or Pods (role pod)
from the API server and writes them to a `file_sd_configs` file with the `__meta_kubernetes_*`
labels kubernetes_sd would attach; the jobs' relabeling is untouched, so it is the shipped
ServiceMonitors' relabeling that picks the targets and labels them. `Prometheus.rediscover()`
re-reads the API (e.g. once model pods have IPs).

The operator's processes run on this machine, not in pods, so nothing fills the Services'
endpoints: `register_endpoints` writes an EndpointSlice for each metrics Service by hand. The API
server refuses loopback addresses in EndpointSlices, so the processes serve /metrics on the API
server's bridge address (hack/localcluster.py's `kaitopy-api` link, this machine only) and
Prometheus finds them there through the API, as it finds pods' addresses in a cluster.

Reuse (e.g. the model-server pods on real local nodes): `Prometheus.start(..., extra_jobs=[...])`
takes more `scrape_configs` entries (plain dicts as in prometheus.yml, with `kubernetes_sd_configs`
of role `pod` or `endpointslice` and `namespaces.names`), `.rediscover()` refreshes their targets,
and `.url` / `.query()` / `.alerts()` read Prometheus back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import Cluster

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
REPO = Path(__file__).resolve().parents[2]
SERVICEMONITORS = REPO / "manifests" / "components" / "servicemonitor" / "servicemonitor.yaml"
METRICS_SERVICES = REPO / "manifests" / "base"
OPERATOR_NAMESPACE = "kaito-system"


def installed() -> bool:
    return shutil.which(PROMETHEUS) is not None and shutil.which(PROMTOOL) is not None


def servicemonitor_job(monitor: dict[str, Any], kubeconfig: Path, interval: str) -> dict[str, Any]:
    """The scrape job the Prometheus Operator generates for one ServiceMonitor endpoint (role
    endpointslice): keep the Services matching the selector in the listed namespaces and the
    endpoint port of that name; target labels namespace/service/pod/endpoint; job = the Service's
    name (the operator's default when no jobLabel is set)."""
    spec = monitor["spec"]
    (endpoint,) = spec["endpoints"]
    keep = [
        {
            "source_labels": [
                f"__meta_kubernetes_service_label_{_label_name(k)}",
                "__meta_kubernetes_service_labelpresent_" + _label_name(k),
            ],
            "regex": f"({v});true",
            "action": "keep",
        }
        for k, v in sorted(spec["selector"]["matchLabels"].items())
    ]
    return {
        "job_name": f"serviceMonitor/{monitor['metadata']['namespace']}/{monitor['metadata']['name']}/0",
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": endpoint.get("path", "/metrics"),
        "kubernetes_sd_configs": [
            {
                "role": "endpointslice",
                "kubeconfig_file": str(kubeconfig),
                "namespaces": {"names": list(spec["namespaceSelector"]["matchNames"])},
            }
        ],
        "relabel_configs": [
            *keep,
            {
                "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
                "regex": endpoint["port"],
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "endpoint", "replacement": endpoint["port"]},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        ],
    }


def model_server_job(namespaces: list[str], interval: str = "1s") -> dict[str, Any]:
    """A PodMonitor-style job for workspaces' model servers: pods labelled kaito.sh/workspace,
    their container port named "http" (the server's 5000, which serves /metrics), target labels
    namespace/pod/container, job "kaitopy-model-server". For `Prometheus.start(extra_jobs=[...])`
    where the pods run on real local nodes; never on kwok, whose pod IPs are not this machine's."""
    return {
        "job_name": "kaitopy-model-server",
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": "/metrics",
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": namespaces}}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_labelpresent_kaito_sh_workspace"],
                "regex": "true",
                "action": "keep",
            },
            {
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": "http",
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {
                "source_labels": ["__meta_kubernetes_pod_label_kaito_sh_workspace"],
                "target_label": "workspace",
            },
        ],
    }


def _label_name(key: str) -> str:
    # Prometheus's meta label sanitising: every character outside [a-zA-Z0-9_] becomes "_".
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)


def operator_jobs(kubeconfig: Path, interval: str) -> list[dict[str, Any]]:
    monitors = [d for d in yaml.safe_load_all(SERVICEMONITORS.read_text()) if d]
    return [servicemonitor_job(m, kubeconfig, interval) for m in monitors]


def api_host(kube: Cluster) -> str:
    """The API server's address: on the project's bridge when the control plane runs as root."""
    server = json.loads(kube.kubectl("config", "view", "--raw", "-o", "json"))["clusters"][0]["cluster"][
        "server"
    ]
    return str(urllib.parse.urlsplit(server).hostname)


def register_endpoints(kube: Cluster, host: str, ports: dict[str, int]) -> None:
    """The shipped metrics Services (manifests/base), their selectors dropped (no pods: the
    processes run here), and an EndpointSlice per Service pointing at `host`:port.
    `ports`: Service name -> the port its process serves /metrics on."""
    docs = [
        d
        for f in ("controller.yaml", "provisioner.yaml")
        for d in yaml.safe_load_all((METRICS_SERVICES / f).read_text())
        if d and d["kind"] == "Service" and d["metadata"]["name"] in ports
    ]
    for svc in docs:
        name = svc["metadata"]["name"]
        svc["spec"].pop("selector", None)
        slice_ = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-host",
                "namespace": OPERATOR_NAMESPACE,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": ports[name], "protocol": "TCP"}],
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
        }
        kube.kubectl("delete", "service", name, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
        for obj in (svc, slice_):
            kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(obj))


def _meta(prefix: str, kv: dict[str, str] | None) -> dict[str, str]:
    out = {}
    for k, v in (kv or {}).items():
        out[f"{prefix}_{_label_name(k)}"] = str(v)
        out[f"{prefix}present_{_label_name(k)}"] = "true"
    return out


def _namespaced(kube: Cluster, resource: str, namespaces: list[str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for ns in namespaces:
        items += json.loads(kube.kubectl("get", resource, "-n", ns, "-o", "json"))["items"]
    return items


def discover(kube: Cluster, sd: dict[str, Any]) -> list[dict[str, Any]]:
    """Target groups, as kubernetes_sd_configs `sd` would find them (the meta labels relabeling
    uses; roles endpointslice and pod)."""
    namespaces = list((sd.get("namespaces") or {}).get("names") or [])
    if not namespaces:
        raise ValueError("kubernetes_sd_configs: the test harness needs namespaces.names")
    role = sd["role"]
    groups = []
    if role == "endpointslice":
        services = {
            (s["metadata"]["namespace"], s["metadata"]["name"]): s
            for s in _namespaced(kube, "services", namespaces)
        }
        for es in _namespaced(kube, "endpointslices.discovery.k8s.io", namespaces):
            md = es["metadata"]
            svc_name = (md.get("labels") or {}).get("kubernetes.io/service-name", "")
            svc = services.get((md["namespace"], svc_name))
            base = {
                "__meta_kubernetes_namespace": md["namespace"],
                "__meta_kubernetes_endpointslice_name": md["name"],
                "__meta_kubernetes_endpointslice_address_type": es.get("addressType", ""),
            }
            if svc is not None:
                base["__meta_kubernetes_service_name"] = svc_name
                base |= _meta("__meta_kubernetes_service_label", svc["metadata"].get("labels"))
            for ep in es.get("endpoints") or []:
                ready = (ep.get("conditions") or {}).get("ready", True)
                ref = ep.get("targetRef") or {}
                for port in es.get("ports") or []:
                    labels = {
                        **base,
                        "__meta_kubernetes_endpointslice_port_name": port.get("name", ""),
                        "__meta_kubernetes_endpointslice_port": str(port["port"]),
                        "__meta_kubernetes_endpointslice_endpoint_conditions_ready": str(ready).lower(),
                    }
                    if ref.get("kind") == "Pod":
                        labels["__meta_kubernetes_pod_name"] = ref["name"]
                    for addr in ep["addresses"]:
                        groups.append({"targets": [f"{addr}:{port['port']}"], "labels": labels})
    elif role == "pod":
        for pod in _namespaced(kube, "pods", namespaces):
            md, status = pod["metadata"], pod.get("status") or {}
            ip = status.get("podIP")
            if not ip:
                continue  # kubernetes_sd has no address for it either
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or ()
            )
            base = {
                "__meta_kubernetes_namespace": md["namespace"],
                "__meta_kubernetes_pod_name": md["name"],
                "__meta_kubernetes_pod_ip": ip,
                "__meta_kubernetes_pod_node_name": pod["spec"].get("nodeName", ""),
                "__meta_kubernetes_pod_phase": status.get("phase", ""),
                "__meta_kubernetes_pod_ready": str(ready).lower(),
                **_meta("__meta_kubernetes_pod_label", md.get("labels")),
                **_meta("__meta_kubernetes_pod_annotation", md.get("annotations")),
            }
            for c in pod["spec"]["containers"]:
                for port in c.get("ports") or []:
                    labels = {
                        **base,
                        "__meta_kubernetes_pod_container_name": c["name"],
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    }
                    groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    else:
        raise ValueError(f"kubernetes_sd_configs role {role!r}: the test harness knows endpointslice, pod")
    return groups


def _write_discovery(kube: Cluster, discovery: dict[Path, list[dict[str, Any]]]) -> None:
    for path, sds in discovery.items():
        groups = [g for sd in sds for g in discover(kube, sd)]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(path)


@dataclass
class Prometheus:
    url: str
    workdir: Path
    proc: subprocess.Popen[bytes]
    kube: Cluster
    discovery: dict[Path, list[dict[str, Any]]] = field(default_factory=dict)
    """file_sd file -> the kubernetes_sd_configs it stands for."""

    @classmethod
    def start(
        cls,
        workdir: Path,
        kube: Cluster,
        port: int,
        *,
        interval: str = "1s",
        extra_jobs: list[dict[str, Any]] | None = None,
        rule_files: list[Path] | None = None,
    ) -> Prometheus:
        workdir.mkdir(parents=True, exist_ok=True)
        jobs = [*operator_jobs(kube.kubeconfig, interval), *(extra_jobs or [])]
        discovery = {}
        for i, job in enumerate(jobs):
            sds = job.pop("kubernetes_sd_configs", [])
            if sds:
                path = workdir / f"sd-{i}.json"
                discovery[path] = sds
                job["file_sd_configs"] = [{"files": [str(path)]}]
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": jobs,
        }
        if rule_files:
            config["rule_files"] = [str(p) for p in rule_files]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        _write_discovery(kube, discovery)
        log = (workdir / "prometheus.log").open("ab")
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        prom = cls(f"http://127.0.0.1:{port}", workdir, proc, kube, discovery)
        prom._wait_ready()
        return prom

    def load_rules(self, *paths: Path) -> None:
        """Replaces the loaded rule files and reloads (POST /-/reload); waits until Prometheus
        lists the rules."""
        config_path = self.workdir / "prometheus.yml"
        config = yaml.safe_load(config_path.read_text())
        config["rule_files"] = [str(p) for p in paths]
        config_path.write_text(yaml.safe_dump(config))
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200, r.status
        want = {str(p) for p in paths}
        loaded = {g["file"] for g in self.api("rules")["groups"]}
        assert want <= loaded, f"rules not loaded: {want - loaded}\n{self.logs()}"

    def rediscover(self) -> None:
        """Re-reads the API server for every kubernetes_sd job; Prometheus picks the files up as
        they change (written whole, then renamed: it never reads half a file)."""
        _write_discovery(self.kube, self.discovery)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready within 30s:\n{self.logs()}")

    def logs(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises AssertionError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result = data["result"]
        return list(result) if data["resultType"] in ("vector", "matrix") else [{"value": result}]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step=str(step))
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])
