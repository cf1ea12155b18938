"""Hypothesis strategies for Workspace bodies (the wire form, plain dicts): valid ones built from
the real catalogs and admission rules, and mutations of those aimed at each layer that must refuse
them (the API server's schema and CEL rules, the webhook) or survive them (the controller).

`valid_workspaces()` draws only objects `validate_create` accepts (the unit properties check that);
`mutated_workspaces()` starts from one and breaks it one to three times. Bodies carry no metadata
name: whoever sends them names them.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from kaitopy.api import INFERENCE_CONFIG_KEY, MAX_ADAPTERS, TUNING_CONFIG_KEY
from kaitopy.api.workspace import STRENGTH_PATTERN
from kaitopy.presets import Catalog, EstimateError, ModelPreset, check_tuning_fits, estimate

Body = dict[str, Any]
Draw = Callable[[st.SearchStrategy[Any]], Any]

# ConfigMaps valid inputs may name; whoever sends the bodies creates them first (`config_maps`).
INFERENCE_CONFIG = "fuzz-inference-config"
TUNING_CONFIG = "fuzz-tuning-config"
SPEC_KEYS = ("resource", "inference", "tuning")

HOSTILE_STRINGS = (
    "",
    " ",
    "\u0000",
    "a\u0000b",
    "\u202egpj.exe",  # right-to-left override
    "\u200b\ufeff",  # zero-width space, byte-order mark
    "x" * 5000,
    "\U0001f600" * 300,
    "../../etc/passwd",
    "..",
    "$(reboot)",
    "'; DROP TABLE workspaces; --",
    "line\nbreak\r\n",
    "UPPER_Case.With.Dots",
    "-leading-dash",
    "%00%2e%2e%2f",
)
ODD_NUMBERS: tuple[Any, ...] = (
    *(-1, 0, -(2**63), 2**63, 2**64, 10**30, 1.5, -0.5, 1e308),
    *("-1", "1.5", "1e3", "0x1"),
)
ODD_VALUES: tuple[Any, ...] = (
    *(None, True, False, [], {}, "a string", 7),
    *([1, "a", None], {"nested": {"deep": [1, {"x": None}]}}),
)
BAD_URLS = (
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://127.0.0.1:10250/pods",
    "http://localhost/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://10.0.0.5/data.parquet",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://0.0.0.0/",
    "https://kubernetes.default.svc/api",
    "http://kaitopy-webhook.kaito-system.svc.cluster.local/validate",
    "file:///etc/passwd",
    "ftp://example.com/data",
    "gopher://example.com:70/",
    "//example.com/no-scheme",
    "https://",
    "http://[::1",
    "not a url",
)
UNKNOWN_PRESETS = ("phi-3-mini", "gpt-5", "llama-3.3-70b-instructx", "phi-3-mini-4k-instruct-v2", "..")
UNKNOWN_INSTANCE_TYPES = ("Standard_NC6s_v4", "p9.48xlarge", "standard nc6s v3", "", "*", "Standard_NC6s_v3x")
PUBLIC_HOSTS = ("huggingface.co", "example.com", "data.example.org", "storage.googleapis.com")


@functools.cache
def _catalog() -> Catalog:
    return Catalog.load()


@functools.cache
def inference_pairs(max_nodes: int | None) -> tuple[tuple[str, str], ...]:
    """(model, instance type) pairs the estimator places, on at most `max_nodes` nodes."""
    cat = _catalog()
    out = []
    for model in cat.models.values():
        for sku in cat.skus.values():
            try:
                plan = estimate(model, sku, catalog=cat)
            except EstimateError:
                continue
            if max_nodes is None or plan.node_count <= max_nodes:
                out.append((model.name, sku.instance_type))
    return tuple(out)


@functools.cache
def tuning_triples() -> tuple[tuple[str, str, str], ...]:
    """(model, instance type, method) triples that fine-tuning fits on one node."""
    cat = _catalog()
    out = []
    for model in cat.models.values():
        if not model.supports_tuning:
            continue
        for sku in cat.skus.values():
            for method in ("lora", "qlora"):
                try:
                    check_tuning_fits(model, sku, method, catalog=cat)
                except EstimateError:
                    continue
                out.append((model.name, sku.instance_type, method))
    return tuple(out)


def config_maps(namespace: str) -> list[Body]:
    """The ConfigMaps valid workspaces may name, to create in `namespace` before sending them."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": INFERENCE_CONFIG, "namespace": namespace},
            "data": {INFERENCE_CONFIG_KEY: "vllm:\n  gpu-memory-utilization: 0.9\n"},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": TUNING_CONFIG, "namespace": namespace},
            "data": {TUNING_CONFIG_KEY: "training_config:\n  TrainingArguments:\n    num_train_epochs: 1\n"},
        },
    ]


# -- valid pieces ----------------------------------------------------------------------------------
dns_labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?", fullmatch=True)
label_names = st.from_regex(r"[A-Za-z0-9]([-_.A-Za-z0-9]{0,14}[A-Za-z0-9])?", fullmatch=True)
label_keys = st.one_of(label_names, st.builds("example.com/{}".format, label_names))
images = st.builds("registry.example.com/{}/{}:{}".format, dns_labels, dns_labels, dns_labels)
public_urls = st.builds("https://{}/{}".format, st.sampled_from(PUBLIC_HOSTS), dns_labels)
strengths = st.from_regex(STRENGTH_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 32)


@st.composite
def label_selectors(draw: Draw) -> Body:
    labels = draw(st.dictionaries(label_keys, st.one_of(st.just(""), label_names), min_size=1, max_size=3))
    selector: Body = {"matchLabels": labels}
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(labels)))
        op = draw(st.sampled_from(["In", "Exists"]))
        expr: Body = {"key": key, "operator": op}
        if op == "In":
            expr["values"] = [labels[key]]
        selector["matchExpressions"] = [expr]
    return selector


@st.composite
def resources(draw: Draw, instance_type: str, max_nodes: int | None) -> Body:
    res: Body = {"instanceType": instance_type, "labelSelector": draw(label_selectors())}
    count = draw(st.one_of(st.none(), st.integers(1, max_nodes or 4)))
    if count is not None:
        res["count"] = count
    if draw(st.booleans()):
        res["preferredNodes"] = draw(st.lists(dns_labels, max_size=3))
    return res


def _preset_name(model: ModelPreset) -> st.SearchStrategy[str]:
    """The catalog accepts Kaito's name, legacy names and the Hugging Face id, in any case."""
    names = [model.name, *model.legacy_names, model.hf_id]
    return st.sampled_from(names).flatmap(lambda n: st.sampled_from([n, n.upper()]))


@st.composite
def presets(draw: Draw, model: ModelPreset) -> Body:
    preset: Body = {"name": draw(_preset_name(model))}
    options: Body = {}
    mode = draw(st.sampled_from([None, "public", "private"]))
    if mode is not None:
        preset["accessMode"] = mode
    if mode == "private":
        options["image"] = draw(images)
    elif model.gated or draw(st.booleans()):
        options["modelAccessSecret"] = draw(dns_labels)
    if draw(st.booleans()):
        options["imagePullSecrets"] = draw(st.lists(dns_labels, max_size=2))
    if options:
        preset["presetOptions"] = options
    return preset


@st.composite
def adapters(draw: Draw) -> list[Body]:
    names = draw(st.lists(dns_labels, max_size=4, unique=True))
    out = []
    for name in names:
        source: Body = {"name": name}
        if draw(st.booleans()):
            source["image"] = draw(images)
            if draw(st.booleans()):
                source["imagePullSecrets"] = [draw(dns_labels)]
        else:
            source["urls"] = draw(st.lists(public_urls, min_size=1, max_size=2))
        adapter: Body = {"source": source}
        strength = draw(st.one_of(st.none(), strengths))
        if strength is not None:
            adapter["strength"] = strength
        out.append(adapter)
    return out


def _envelope(draw: Draw, resource: Body, spec_key: str, spec: Body) -> Body:
    version = draw(st.sampled_from(["kaito.sh/v1beta1", "kaito.sh/v1alpha1"]))
    return {"apiVersion": version, "kind": "Workspace", "metadata": {}, "resource": resource, spec_key: spec}


@st.composite
def preset_inference(draw: Draw, max_nodes: int | None = None) -> Body:
    model_name, instance_type = draw(st.sampled_from(inference_pairs(max_nodes)))
    model = _catalog().models[model_name]
    spec: Body = {"preset": draw(presets(model))}
    if model.supports_lora and draw(st.booleans()):
        spec["adapters"] = draw(adapters())
    if draw(st.booleans()):
        spec["config"] = INFERENCE_CONFIG
    return _envelope(draw, draw(resources(instance_type, max_nodes)), "inference", spec)


@st.composite
def template_inference(draw: Draw, max_nodes: int | None = None) -> Body:
    instance_type = draw(st.sampled_from(sorted(_catalog().skus)))
    container: Body = {
        "name": draw(dns_labels),
        "image": draw(images),
        "args": draw(st.lists(st.text(max_size=20), max_size=3)),
        "ports": [{"containerPort": draw(st.integers(1, 65535))}],
    }
    template = {"spec": {"containers": [container]}}
    return _envelope(draw, draw(resources(instance_type, max_nodes)), "inference", {"template": template})


@st.composite
def tuning(draw: Draw, max_nodes: int | None = None) -> Body:
    model_name, instance_type, method = draw(st.sampled_from(tuning_triples()))
    model = _catalog().models[model_name]
    spec: Body = {"preset": draw(presets(model))}
    if method == "qlora" or draw(st.booleans()):
        spec["method"] = method  # lora is the default, so it may go unsaid
    where = draw(st.sampled_from(["urls", "image", "volumeSource"]))
    if where == "urls":
        data_in: Body = {"urls": draw(st.lists(public_urls, min_size=1, max_size=3))}
    elif where == "image":
        data_in = {"image": draw(images)}
    else:
        data_in = {"volumeSource": {"persistentVolumeClaim": {"claimName": draw(dns_labels)}}}
    spec["input"] = data_in
    if draw(st.booleans()):
        spec["output"] = {"image": draw(images), "imagePushSecret": draw(dns_labels)}
    else:
        spec["output"] = {"volumeSource": {"persistentVolumeClaim": {"claimName": draw(dns_labels)}}}
    if draw(st.booleans()):
        spec["config"] = TUNING_CONFIG
    return _envelope(draw, draw(resources(instance_type, max_nodes)), "tuning", spec)


def valid_workspaces(max_nodes: int | None = None) -> st.SearchStrategy[Body]:
    """Workspaces the admission rules accept: preset inference (with adapters and config),
    template inference and tuning. `max_nodes` bounds the nodes each may ask for."""
    return st.one_of(preset_inference(max_nodes), template_inference(max_nodes), tuning(max_nodes))


# -- mutations ---------------------------------------------------------------------------------------
def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _paths(v, (*prefix, i))
    return found


def _spec_paths(body: Body) -> list[tuple[Any, ...]]:
    return [p for p in _paths(body) if p[0] in SPEC_KEYS]


def _parent(body: Body, path: tuple[Any, ...]) -> Any:
    obj: Any = body
    for key in path[:-1]:
        obj = obj[key]
    return obj


def _set(body: Body, path: tuple[Any, ...], value: Any) -> None:
    _parent(body, path)[path[-1]] = value


def _at(body: Body, *path: str) -> Any:
    obj: Any = body
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def wrong_type(draw: Draw, body: Body) -> None:
    path = draw(st.sampled_from(_spec_paths(body)))
    _set(body, path, draw(st.sampled_from(ODD_VALUES)))


def remove_field(draw: Draw, body: Body) -> None:
    required = [
        ("resource",),
        ("resource", "labelSelector"),
        ("resource", "instanceType"),
        ("inference", "preset", "name"),
        ("inference", "template"),
        ("tuning", "preset"),
        ("tuning", "input"),
        ("tuning", "output"),
        ("tuning", "output", "imagePushSecret"),
    ]
    candidates = [p for p in required if _at(body, *p) is not None] + _spec_paths(body)
    if candidates:
        path = draw(st.sampled_from(candidates))
        del _parent(body, path)[path[-1]]


def unknown_field(draw: Draw, body: Body) -> None:
    dicts: list[tuple[Any, ...]] = [()]
    dicts += [p for p in _spec_paths(body) if isinstance(_at_path(body, p), dict)]
    path = draw(st.sampled_from(dicts))
    odd_keys = st.sampled_from(["unknown", "spec", "Resource", "\u0000", "$ref"])
    key = draw(st.one_of(odd_keys, st.text(max_size=12)))
    value = draw(st.one_of(st.sampled_from(ODD_VALUES), st.text(max_size=20), st.integers()))
    target = _at_path(body, path)
    if key not in target:
        target[key] = value


def _at_path(body: Body, path: tuple[Any, ...]) -> Any:
    obj: Any = body
    for key in path:
        obj = obj[key]
    return obj


def hostile_string(draw: Draw, body: Body) -> None:
    strings = [p for p in _spec_paths(body) if isinstance(_at_path(body, p), str)]
    path = draw(st.sampled_from(strings or _spec_paths(body)))
    _set(body, path, draw(st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=64))))


def odd_number(draw: Draw, body: Body) -> None:
    numeric = [("resource", "count")]
    numeric += [p for p in _spec_paths(body) if p[-1] in ("strength", "containerPort")]
    path = draw(st.sampled_from(numeric))
    if path == ("resource", "count") and not isinstance(body.get("resource"), dict):
        body["resource"] = {}
    _set(body, path, draw(st.sampled_from(ODD_NUMBERS)))


def unknown_name(draw: Draw, body: Body) -> None:
    if draw(st.booleans()) and isinstance(body.get("resource"), dict):
        body["resource"]["instanceType"] = draw(
            st.one_of(st.sampled_from(UNKNOWN_INSTANCE_TYPES), st.text(min_size=1, max_size=30))
        )
        return
    spec_key = "inference" if "inference" in body else "tuning"
    spec = body.setdefault(spec_key, {})
    if isinstance(spec, dict):
        name = draw(st.one_of(st.sampled_from(UNKNOWN_PRESETS), st.text(min_size=1, max_size=30)))
        spec["preset"] = {"name": name}


def bad_url(draw: Draw, body: Body) -> None:
    urls = draw(st.lists(st.sampled_from(BAD_URLS), min_size=1, max_size=3))
    if "tuning" in body and isinstance(body["tuning"], dict):
        body["tuning"]["input"] = {"urls": [*draw(st.lists(public_urls, max_size=1)), *urls]}
        return
    inference = body.setdefault("inference", {})
    if isinstance(inference, dict):
        name = draw(dns_labels)
        listed = inference.get("adapters")
        existing = list(listed) if isinstance(listed, list) else []
        inference["adapters"] = [*existing, {"source": {"name": f"{name}-bad", "urls": urls}}]


def too_many_adapters(draw: Draw, body: Body) -> None:
    names = draw(st.lists(dns_labels, min_size=MAX_ADAPTERS + 1, max_size=MAX_ADAPTERS + 5, unique=True))
    inference = body.setdefault("inference", {})
    if isinstance(inference, dict):
        inference["adapters"] = [{"source": {"name": n, "image": draw(images)}} for n in names]


def duplicate_adapters(draw: Draw, body: Body) -> None:
    name = draw(dns_labels)
    inference = body.setdefault("inference", {})
    if isinstance(inference, dict):
        inference["adapters"] = [
            {"source": {"name": name, "image": draw(images)}, "strength": draw(strengths)}
            for _ in range(draw(st.integers(2, 3)))
        ]


def both(draw: Draw, body: Body) -> None:
    other = draw(st.one_of(preset_inference(2), tuning(2)))
    for key in ("inference", "tuning"):
        if key not in body and key in other:
            body[key] = other[key]
    if "inference" not in body:
        body["inference"] = draw(preset_inference(2))["inference"]
    if "tuning" not in body:
        body["tuning"] = draw(tuning(2))["tuning"]


def neither(draw: Draw, body: Body) -> None:
    body.pop("inference", None)
    body.pop("tuning", None)


MUTATIONS: tuple[Callable[[Draw, Body], None], ...] = (
    wrong_type,
    remove_field,
    unknown_field,
    hostile_string,
    odd_number,
    unknown_name,
    bad_url,
    too_many_adapters,
    duplicate_adapters,
    both,
    neither,
)


@st.composite
def mutated_workspaces(draw: Draw, max_nodes: int | None = None) -> Body:
    """A valid workspace broken one to three times by MUTATIONS."""
    body = copy.deepcopy(draw(valid_workspaces(max_nodes)))
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(st.sampled_from(MUTATIONS))
        if _spec_paths(body) or mutation not in (wrong_type, hostile_string):
            mutation(draw, body)  # (nothing left to retype once every spec key is gone)
    return body


def workspaces(max_nodes: int | None = None) -> st.SearchStrategy[Body]:
    """About a third valid, two thirds mutated."""
    mutated = mutated_workspaces(max_nodes)
    return st.one_of(valid_workspaces(max_nodes), mutated, mutated)
