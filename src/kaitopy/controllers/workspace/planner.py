"""From a Workspace (Kaito's YAML layout) to a plan, with the model catalog and the estimator.
A workspace the catalog cannot place raises PlanError with the reason the user will read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from kaitopy.api import Workspace
from kaitopy.api.constants import RUNTIME_ANNOTATION
from kaitopy.api.workspace import DataDestination, DataSource, PresetOptions
from kaitopy.controllers.workspace.plan import (
    ENABLE_LB_ANNOTATION,
    AdapterPlan,
    CpuPlan,
    InferencePlan,
    PlanError,
    Planner,
    Settings,
    TuningPlan,
    WorkspacePlan,
)
from kaitopy.presets import (
    Catalog,
    DoesNotFit,
    EstimateError,
    ModelPreset,
    TuningMethod,
    UnknownInstanceType,
    UnknownPreset,
    check_tuning_fits,
    estimate,
)
from kaitopy.presets.estimator import storage_gib
from kaitopy.runtime.objects import thaw
from kaitopy.webhooks.validation import runtime_problem


def parse_workspace(ws: Mapping[str, Any]) -> Workspace:
    """The stored Workspace read into the API model the webhook validates, once per pass. One the
    model cannot read (stored before a stricter rule, or with the webhook off) is a PlanError
    naming the field, as the webhook would have refused it."""
    try:
        # The spec only: the status is the controller's own record, and a shape it wrote once
        # (or another operator did) must never make the spec unplannable.
        return Workspace.model_validate({k: v for k, v in ws.items() if k != "status"})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
        raise PlanError("InvalidWorkspace", "; ".join(problems)) from exc


def make_planner(catalog: Catalog, settings: Settings) -> Planner:
    def plan(ws: Workspace, *, max_model_len: int | None = None) -> WorkspacePlan:
        name, namespace = ws.name, ws.namespace
        annotations = ws.metadata.get("annotations") or {}
        instance_type = ws.resource.instance_type
        selector = ws.resource.label_selector
        match_labels = dict(selector.match_labels or {})
        expressions = tuple(e.to_dict() for e in selector.match_expressions or ())
        inference, tuning = ws.inference, ws.tuning
        try:
            sku = catalog.sku(instance_type)
        except UnknownInstanceType as err:
            raise PlanError("InvalidInstanceType", str(err)) from err
        spec = inference if inference is not None else tuning
        preset = spec.preset if spec is not None else None
        if inference is not None and inference.template is not None and preset is None:
            return _template_plan(ws, inference.template, sku, match_labels, expressions, instance_type)
        if preset is None:
            raise PlanError("InvalidWorkspace", "set inference.preset.name or tuning.preset.name")
        try:
            model = catalog.model(preset.name)
        except UnknownPreset as err:
            raise PlanError("InvalidPreset", str(err)) from err
        options = preset.preset_options or PresetOptions()
        default_image = _default_image(model, settings)
        image = options.image or default_image
        # accessMode private: as in Kaito, the image holds the weights; our server still runs them.
        private = (options.image or "") if preset.access_mode == "private" else ""
        pull = tuple(options.image_pull_secrets or ())
        access = options.model_access_secret
        if inference is not None:
            try:
                est = estimate(model, sku, max_model_len=max_model_len, catalog=catalog)
            except DoesNotFit as err:
                raise PlanError("InsufficientGPUMemory", str(err)) from err
            except EstimateError as err:
                raise PlanError("InvalidWorkspace", str(err)) from err
            base = WorkspacePlan(
                instance_type=instance_type,
                node_count=est.node_count,
                gpus_per_node=est.gpus_per_node,
                storage_gib=int(est.storage_gib),
                match_labels=match_labels,
                match_expressions=expressions,
            )
            asked = annotations.get(RUNTIME_ANNOTATION)
            problem = runtime_problem(asked, model)
            if problem is not None:
                raise PlanError("InvalidRuntime", problem)
            runtime = str(asked or est.runtime)
            weights = _weights_source(model, settings)
            adapters = tuple(
                AdapterPlan(
                    name=str(a.source.name or ""),
                    image=a.source.image,
                    strength=a.strength or "1.0",
                    image_pull_secrets=tuple(a.source.image_pull_secrets or ()),
                )
                for a in inference.adapters or ()
                if a.source is not None and a.source.image
            )
            return replace(
                base,
                inference=InferencePlan(
                    name=name,
                    namespace=namespace,
                    preset=model.name,
                    runtime=runtime,
                    image=default_image if private else image,
                    node_count=est.node_count,
                    gpus_per_node=est.gpus_per_node,
                    tensor_parallel_size=est.tensor_parallel_size,
                    pipeline_parallel_size=est.pipeline_parallel_size,
                    # Unset: the engine fits the context to the GPU memory it finds at start.
                    max_model_len=est.max_model_len if est.context_fixed else None,
                    dtype=str(est.dtype),
                    # Weights from an OCI artifact: the server must not reach Hugging Face.
                    hf_model_id="" if weights.image or private else model.hf_id,
                    private_weights_image=private or None,
                    weights_gib=_weights_gib(model),
                    match_labels=match_labels,
                    match_expressions=expressions,
                    image_pull_secrets=pull,
                    model_access_secret=access or None,
                    config_map=inference.config or None,
                    adapters=adapters,
                    tool_call_parser=model.tool_call_parser,
                    reasoning_parser=model.reasoning_parser,
                    load_balancer=str(annotations.get(ENABLE_LB_ANNOTATION, "")).lower() == "true",
                    tools_image=settings.tools_image,
                    weights_image=weights.image,
                    weights_digest=weights.digest,
                    weights_plain_http=settings.weights_plain_http if weights.image else False,
                    weights_pull_secret=(settings.weights_pull_secret or None) if weights.image else None,
                    plain_http_registries=settings.plain_http_registries,
                    cpu=_cpu_plan(model),
                ),
            )
        assert tuning is not None
        method: TuningMethod = "qlora" if tuning.method == "qlora" else "lora"
        # Tuning has its own memory rule (the one admission checks), on one whole node: the
        # inference estimate would refuse a QLoRA job the webhook admitted, e.g. on a long context.
        try:
            check_tuning_fits(model, sku, method, catalog=catalog)
        except DoesNotFit as err:
            raise PlanError("InsufficientGPUMemory", str(err)) from err
        except EstimateError as err:  # e.g. qlora for a model that trains on CPU
            raise PlanError("InvalidWorkspace", f"tuning.method: {err}") from err
        data_in = tuning.input or DataSource()
        data_out = tuning.output or DataDestination()
        urls = tuple(data_in.urls or ())
        if len(urls) > settings.tuning_max_urls:
            raise PlanError(
                "InvalidWorkspace",
                f"tuning.input.urls: {len(urls)} URLs is over the limit of {settings.tuning_max_urls} "
                "(the controller's --tuning-max-urls); merge the data into fewer files, or ask the "
                "operator's admin to raise the limit",
            )
        output_image = data_out.image or None
        weights = _weights_source(model, settings)
        return WorkspacePlan(
            instance_type=instance_type,
            node_count=1,
            gpus_per_node=int(sku.gpu_count),
            storage_gib=storage_gib(model),
            match_labels=match_labels,
            match_expressions=expressions,
            tuning=TuningPlan(
                name=name,
                namespace=namespace,
                preset=model.name,
                method=method,
                image=options.image
                or (settings.cpu_runtime_image if model.on_cpu else settings.tuning_image),
                hf_model_id=model.hf_id,
                gpus_per_node=int(sku.gpu_count),
                match_labels=match_labels,
                input_urls=urls,
                input_image=data_in.image or None,
                input_volume=data_in.volume_source or None,
                output_image=output_image,
                output_push_secret=data_out.image_push_secret or None,
                output_volume=data_out.volume_source or None,
                config_map=tuning.config or None,
                image_pull_secrets=pull,
                model_access_secret=access or None,
                tools_image=settings.tools_image,
                weights_gib=_weights_gib(model),
                deadline_s=settings.tuning_deadline_s,
                max_input_urls=settings.tuning_max_urls,
                max_input_bytes=settings.tuning_max_input_bytes,
                weights_image=weights.image,
                weights_digest=weights.digest,
                weights_plain_http=settings.weights_plain_http if weights.image else False,
                weights_pull_secret=(settings.weights_pull_secret or None) if weights.image else None,
                cpu=_cpu_plan(model),
                push_plain_http=bool(output_image)
                and registry_host(str(output_image)) in settings.plain_http_registries,
                allowed_networks=settings.url_allowed_networks if urls else (),
            ),
        )

    return plan


@dataclass(frozen=True)
class _Weights:
    image: str | None = None
    digest: str | None = None


def _weights_source(model: ModelPreset, settings: Settings) -> _Weights:
    """Where the weights come from: Hugging Face (the server downloads them) or the preset's
    artifact under the controller's weights registry, with the operator's digest pin if any."""
    if model.weights_source != "oci":
        return _Weights()
    prefix = settings.weights_registry.strip().rstrip("/")
    if not prefix:
        raise PlanError(
            "WeightsRegistryUnset",
            f"{model.name} takes its weights from an OCI artifact and the controller has no weights "
            "registry: start it with --weights-registry=<registry>/<repo prefix> "
            "(env KAITOPY_WEIGHTS_REGISTRY)",
        )
    # A variant (the multi-node CPU preset) pulls the artifact, and takes the pin, of its base.
    image = f"{prefix}/{model.weights_name}:{model.weights_version}"
    return _Weights(image, settings.weights_digests.get(model.weights_name))


def _default_image(model: ModelPreset, settings: Settings) -> str:
    if model.engine == "vllm-cpu":
        return settings.cpu_vllm_runtime_image
    return settings.cpu_runtime_image if model.on_cpu else settings.runtime_image


def registry_host(image: str) -> str:
    """The registry an image reference names (host[:port]), as a container runtime reads it: the
    first path part when it has a dot or a colon or is localhost, else Docker Hub."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _cpu_plan(model: ModelPreset) -> CpuPlan | None:
    r = model.cpu_resources
    if not model.on_cpu or r is None:
        return None
    return CpuPlan(
        cpu_request=r.cpu_request,
        cpu_limit=r.cpu_limit,
        memory_request=r.memory_request,
        memory_limit=r.memory_limit,
    )


def _weights_gib(model: Any) -> float:
    if getattr(model, "weights_gib", None) is not None:
        return float(model.weights_gib)
    return float(model.weights_bytes) / 2**30


def _template_plan(
    ws: Workspace,
    template: Mapping[str, Any],
    sku: Any,
    match_labels: dict[str, str],
    expressions: tuple[dict[str, object], ...],
    instance_type: str,
) -> WorkspacePlan:
    count = ws.resource.count or 1
    return WorkspacePlan(
        instance_type=instance_type,
        node_count=count,
        gpus_per_node=int(sku.gpu_count),
        storage_gib=100,
        match_labels=match_labels,
        match_expressions=expressions,
        inference=InferencePlan(
            name=ws.name,
            namespace=ws.namespace,
            preset="",
            runtime="template",
            image="",
            node_count=count,
            gpus_per_node=int(sku.gpu_count),
            tensor_parallel_size=1,
            pipeline_parallel_size=1,
            max_model_len=None,
            dtype="",
            hf_model_id="",
            weights_gib=0.0,
            match_labels=match_labels,
            match_expressions=expressions,
            template=thaw(template),
        ),
    )
