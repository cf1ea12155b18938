"""`kaitopy presets` and `kaitopy estimate`: what they print agrees with the catalog and the
estimator, and a plan that does not fit exits 1 naming the instance types that do."""

from __future__ import annotations

import json

import pytest

from kaitopy.cli import main
from kaitopy.presets import Catalog, DoesNotFit, estimate, fitting_skus

A100 = "Standard_NC24ads_A100_v4"
V100 = "Standard_NC6s_v3"


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_presets_json_lists_every_model_with_what_fits(capsys: pytest.CaptureFixture[str]) -> None:
    catalog = Catalog.load()
    rows = _json(capsys, "presets", "-o", "json")
    assert isinstance(rows, list)
    assert sorted(r["name"] for r in rows) == sorted(catalog.models)
    phi = next(r for r in rows if r["name"] == "phi-3-mini-4k-instruct")
    model = catalog.model("phi-3-mini-4k-instruct")
    assert phi["fits"] == fitting_skus(model, catalog.skus.values())
    assert phi["paramsBillions"] == model.params_b
    # V100 and T4 SKUs fit it too, so both runtimes appear.
    assert phi["runtimes"] == ["transformers", "vllm"]
    # The admission floor: weights plus a 2048-token KV cache.
    floor = estimate(model, catalog.sku(A100), max_model_len=2048).required_gib
    assert phi["minGpuMemoryGiB"] == pytest.approx(floor, abs=0.05)


def test_presets_table_has_the_columns_and_a_row_per_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "PARAMS", "RUNTIME", "MIN"]
    assert "FITS" in lines[0]
    assert len(lines) == 1 + len(Catalog.load().models)
    llama = next(line for line in lines if line.startswith("llama-3.3-70b-instruct "))
    assert "70.55B" in llama and "132.0 GiB" in llama


def test_presets_for_an_instance_type_keeps_only_what_fits(capsys: pytest.CaptureFixture[str]) -> None:
    catalog = Catalog.load()
    sku = catalog.sku(V100)
    expected = sorted(m.name for m in catalog.models.values() if V100 in fitting_skus(m, [sku]))
    rows = _json(capsys, "presets", "--instance-type", V100, "-o", "json")
    assert isinstance(rows, list)
    assert [r["name"] for r in rows] == expected
    assert expected and len(expected) < len(catalog.models)
    # V100: no vLLM on its GPUs (the vLLM CPU preset leaves the GPU alone).
    assert all(
        r["plan"]["runtime"] == "transformers" for r in rows if r["name"] != "smollm2-135m-instruct-multinode"
    )

    assert main(["presets", "--instance-type", V100]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "NODES x GPUS" in table[0] and len(table) == 1 + len(expected)


def test_presets_unknown_instance_type_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "--instance-type", "Standard_Nope"]) == 1
    assert "unknown instance type 'Standard_Nope'" in capsys.readouterr().err


def test_estimate_multi_node_plan(capsys: pytest.CaptureFixture[str]) -> None:
    catalog = Catalog.load()
    plan = estimate(catalog.model("llama-3.3-70b-instruct"), catalog.sku(A100))
    out = _json(
        capsys, "estimate", "--preset", "llama-3.3-70b-instruct", "--instance-type", A100, "-o", "json"
    )
    assert isinstance(out, dict)
    assert out["fits"] is True
    assert (out["nodeCount"], out["gpusPerNode"]) == (plan.node_count, plan.gpus_per_node)
    assert out["nodeCount"] > 1 and out["pipelineParallelSize"] == out["nodeCount"]
    assert out["runtime"] == "vllm" and out["maxModelLen"] == 2048 and out["contextFixed"] is False

    assert (
        main(["estimate", "--preset", "llama-3.3-70b-instruct", "--instance-type", A100, "--count", "1"]) == 0
    )
    text = capsys.readouterr().out
    assert f"nodes:             {plan.node_count}\n" in text
    assert "pipeline parallel: 2" in text
    assert "context length:    fitted to GPU memory at start" in text
    assert f"count 1 is less than the {plan.node_count} node(s)" in text


def test_estimate_max_model_len_shrinks_the_memory(capsys: pytest.CaptureFixture[str]) -> None:
    full = _json(
        capsys, "estimate", "--preset", "phi-3-mini-128k-instruct", "--instance-type", A100, "-o", "json"
    )
    short = _json(
        capsys,
        "estimate",
        "--preset",
        "phi-3-mini-128k-instruct",
        "--instance-type",
        A100,
        "--max-model-len",
        "8192",
        "-o",
        "json",
    )
    assert isinstance(full, dict) and isinstance(short, dict)
    assert short["maxModelLen"] == 8192 and short["requiredGiB"] < full["requiredGiB"]


def test_estimate_does_not_fit_exits_1_with_fitting_skus(capsys: pytest.CaptureFixture[str]) -> None:
    catalog = Catalog.load()
    with pytest.raises(DoesNotFit) as expected:
        estimate(catalog.model("llama-3.3-70b-instruct"), catalog.sku(V100))
    assert main(["estimate", "--preset", "llama-3.3-70b-instruct", "--instance-type", V100]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: does not fit: llama-3.3-70b-instruct needs 132.0 GiB")
    assert expected.value.fitting_skus[0] in captured.err

    assert (
        main(["estimate", "--preset", "llama-3.3-70b-instruct", "--instance-type", V100, "-o", "json"]) == 1
    )
    body = json.loads(capsys.readouterr().out)
    assert body["fits"] is False
    assert body["fittingInstanceTypes"] == list(expected.value.fitting_skus)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope-7b", "--instance-type", A100], "unknown preset 'nope-7b'"),
        (["--preset", "phi-4", "--instance-type", A100, "--max-model-len", "999999"], "outside 1..16384"),
        (["--preset", "phi-4", "--instance-type", A100, "--count", "0"], "--count must be 1 or more"),
    ],
)
def test_estimate_bad_requests(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["estimate", *argv]) in (1, 2)
    assert message in capsys.readouterr().err


def test_table_formatting() -> None:
    from kaitopy.usercli.table import format_table

    assert format_table(["A", "LONG"], [["xyz", "1"], ["q", "22"]]) == "A    LONG\nxyz  1\nq    22\n"
