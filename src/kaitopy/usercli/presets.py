"""`kaitopy presets`: the model catalog as a table, with the known instance types each model fits
(the estimator's answer at the model's full context); `--instance-type` keeps what fits that one."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from kaitopy.presets import Catalog, CatalogError, EstimateError, ModelPreset, estimate, fitting_skus
from kaitopy.presets.estimator import MIN_CONTEXT_TOKENS, required_gib, runtime_for
from kaitopy.usercli.table import format_table

SHOWN_FITS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--instance-type", metavar="TYPE", help="only the presets that fit this instance type, with its plan"
    )
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")


def preset_rows(catalog: Catalog, instance_type: str | None = None) -> list[dict[str, Any]]:
    """One dict per preset (sorted by name); with an instance type, only those that fit it, each with
    its plan there. Raises `CatalogError` for an unknown instance type."""
    sku = catalog.sku(instance_type) if instance_type else None
    rows = []
    for model in sorted(catalog.models.values(), key=lambda m: m.name):
        row = _describe(model, catalog)
        if sku is not None:
            try:
                plan = estimate(model, sku, catalog=catalog)
            except EstimateError:
                continue
            row["plan"] = {
                "instanceType": sku.instance_type,
                "nodes": plan.node_count,
                "gpusPerNode": plan.gpus_per_node,
                "tensorParallel": plan.tensor_parallel_size,
                "pipelineParallel": plan.pipeline_parallel_size,
                "runtime": plan.runtime,
            }
        rows.append(row)
    return rows


def _describe(model: ModelPreset, catalog: Catalog) -> dict[str, Any]:
    fits = fitting_skus(model, catalog.skus.values())
    # A CPU preset runs the same engine on every SKU and uses none of its GPU memory.
    runtimes = [model.engine] if model.on_cpu else sorted({runtime_for(catalog.skus[f]) for f in fits})
    return {
        "name": model.name,
        "huggingFaceId": model.hf_id,
        "paramsBillions": model.params_b,
        "weightsGiB": round(model.weights_gib, 1),
        "maxContext": model.max_context,
        "minGpuMemoryGiB": 0.0
        if model.on_cpu
        else round(required_gib(model, min(model.max_context, MIN_CONTEXT_TOKENS)), 1),
        "runtimes": runtimes,
        "tuning": model.supports_tuning,
        "multiNode": model.supports_multi_node,
        "fits": fits,
    }


def _fits_cell(fits: list[str]) -> str:
    if not fits:
        return "-"
    more = len(fits) - SHOWN_FITS
    return ", ".join(fits[:SHOWN_FITS]) + (f" (+{more} more)" if more > 0 else "")


def render(rows: list[dict[str, Any]], out: TextIO, *, with_plan: bool) -> None:
    headers = ["NAME", "PARAMS", "RUNTIME", "MIN GPU MEM", "CONTEXT"]
    headers += ["NODES x GPUS", "TP/PP"] if with_plan else ["FITS"]
    table = []
    for r in rows:
        cells = [
            r["name"],
            f"{r['paramsBillions']:g}B",
            r["plan"]["runtime"] if with_plan else ("/".join(r["runtimes"]) or "-"),
            f"{r['minGpuMemoryGiB']:.1f} GiB",
            str(r["maxContext"]),
        ]
        if with_plan:
            p = r["plan"]
            cells += [f"{p['nodes']} x {p['gpusPerNode']}", f"{p['tensorParallel']}/{p['pipelineParallel']}"]
        else:
            cells.append(_fits_cell(r["fits"]))
        table.append(cells)
    out.write(format_table(headers, table))


def presets_main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    catalog = Catalog.load()
    try:
        rows = preset_rows(catalog, args.instance_type)
    except CatalogError as e:
        err.write(f"error: {e}\n")
        return 1
    if args.output == "json":
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    if not rows:
        err.write(f"no preset fits {args.instance_type}\n")
        return 1
    render(rows, out, with_plan=args.instance_type is not None)
    return 0


def run(args: argparse.Namespace) -> int:
    return presets_main(args)
