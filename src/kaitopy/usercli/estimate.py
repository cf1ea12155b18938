"""`kaitopy estimate --preset X --instance-type Y`: what the controller would plan for a preset on
an instance type (nodes, GPUs, parallelism, runtime, context, memory), or why it does not fit and
which instance types do (exit 1)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any, TextIO

from kaitopy.presets import Catalog, CatalogError, DoesNotFit, EstimateError, Plan, estimate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="Kaito preset name (or Hugging Face id)")
    parser.add_argument("--instance-type", required=True, metavar="TYPE")
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="N",
        help="the workspace's resource.count; the plan says whether that many nodes are enough",
    )
    parser.add_argument(
        "--max-model-len", type=int, default=None, metavar="TOKENS", help="default: the model's full context"
    )
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join("GiB" if w == "gib" else w.title() for w in rest)


def plan_dict(plan: Plan, count: int | None) -> dict[str, Any]:
    """The plan with camelCase keys, as `kaitopy presets -o json` and the Kubernetes API spell them."""
    out = asdict(plan)
    out["total_gpus"] = plan.total_gpus
    out["required_gib"] = round(plan.required_gib, 2)
    out["usable_gib_per_gpu"] = round(plan.usable_gib_per_gpu, 2)
    out["usable_gib"] = round(plan.usable_gib_per_gpu * plan.total_gpus, 2)
    if count is not None:
        out["requested_count"] = count
        out["count_sufficient"] = count >= plan.node_count
    return {_camel(k): v for k, v in out.items()}


def render(plan: Plan, count: int | None, out: TextIO) -> None:
    usable = plan.usable_gib_per_gpu * plan.total_gpus
    lines = [
        ("preset", plan.model),
        ("instance type", plan.instance_type),
        ("nodes", str(plan.node_count)),
        ("GPUs per node", str(plan.gpus_per_node)),
        ("tensor parallel", str(plan.tensor_parallel_size)),
        ("pipeline parallel", str(plan.pipeline_parallel_size)),
        ("runtime", plan.runtime),
        ("dtype", plan.dtype),
        (
            "context length",
            f"{plan.max_model_len} tokens"
            if plan.context_fixed
            else f"fitted to GPU memory at start (sized for {plan.max_model_len} tokens)",
        ),
        ("GPU memory needed", f"{plan.required_gib:.1f} GiB (weights + KV cache)"),
        (
            "GPU memory usable",
            f"{usable:.1f} GiB ({plan.usable_gib_per_gpu:.1f} GiB on each of {plan.total_gpus} GPU(s), "
            f"at {plan.gpu_memory_utilization:.0%} utilization)",
        ),
        ("disk per node", f"{plan.storage_gib} GiB"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.write(f"{key + ':':<{width + 1}} {value}\n")
    if count is not None and count < plan.node_count:
        out.write(
            f"note: count {count} is less than the {plan.node_count} node(s) the model needs; "
            f"the controller provisions {plan.node_count}\n"
        )


def estimate_main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if args.count is not None and args.count < 1:
        err.write("error: --count must be 1 or more\n")
        return 2
    catalog = Catalog.load()
    try:
        model = catalog.model(args.preset)
        sku = catalog.sku(args.instance_type)
        plan = estimate(model, sku, max_model_len=args.max_model_len, catalog=catalog)
    except DoesNotFit as e:
        if args.output == "json":
            json.dump(
                {
                    "fits": False,
                    "error": str(e),
                    "requiredGiB": round(e.required_gib, 2),
                    "fittingInstanceTypes": list(e.fitting_skus),
                },
                out,
                indent=2,
            )
            out.write("\n")
        err.write(f"error: does not fit: {e}\n")
        return 1
    except (CatalogError, EstimateError) as e:
        err.write(f"error: {e}\n")
        return 1
    if args.output == "json":
        json.dump({"fits": True, **plan_dict(plan, args.count)}, out, indent=2)
        out.write("\n")
    else:
        render(plan, args.count, out)
    return 0


def run(args: argparse.Namespace) -> int:
    return estimate_main(args)
