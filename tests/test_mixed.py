"""Mixed-precision int8: per-layer sensitivity, the fewest layers kept in float, and the integer-MAC proof.

The model is a LeNet-small trained briefly on the real mnist5k digits, then given one outlier unit:
fc1's unit 0 is scaled x1000 and fc2's weights from it /1000 (the same function in fp32, as ReLU is
positively homogeneous), so per-tensor int8 of the activation between fc1 and fc2 zeroes every other
unit and full int8 loses most of its accuracy, while the convolutions quantize well.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from edgecnn.compression.mixed import check_float_layers, fewest_float_layers
from edgecnn.core.errors import UserError

LAYERS = ["conv1", "conv2", "fc1", "fc2", "fc"]
BASE = {
    "data": {"spec": "mnist5k", "eval_samples": 200, "calib_samples": 64},
    "student": None, "distill": None, "prune": None,
}


def _run(recipe: dict, run_dir: Path, resume: bool = False) -> tuple:
    from edgecnn.config.recipe import recipe_from_dict
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.run_report import write_run_report
    from edgecnn.pipeline.runner import run_stages
    from edgecnn.pipeline.stages.registry import default_stages

    ctx = Context(recipe_from_dict(recipe, run_dir.parent), run_dir)
    status = run_stages(default_stages(), ctx, resume=resume)
    return ctx, write_run_report(ctx, status)


def _recipe(weights: Path, **quantize) -> dict:
    return {**BASE, "name": "mixed", "teacher": {"model": "lenet_small", "weights": str(weights)},
            "quantize": {"select": "fixed", "accuracy_budget": 0.01, "qat": {"enabled": False}, **quantize},
            "export": {"formats": ["onnx"]}, "bench": {"min_seconds": 0.1, "min_iters": 10, "warmup": 2}}


@pytest.fixture(scope="module")
def outlier_weights(tmp_path_factory) -> Path:
    from edgecnn.pipeline.stages.common import load_stage_model

    folder = tmp_path_factory.mktemp("mixed")
    recipe = {**BASE, "name": "train", "teacher": {"model": "lenet_small"}, "train": {"epochs": 1, "batch_size": 64},
              "quantize": None, "export": None}
    from edgecnn.config.recipe import recipe_from_dict
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.runner import run_stages
    from edgecnn.pipeline.stages.registry import default_stages

    ctx = Context(recipe_from_dict(recipe, folder), folder / "train")
    run_stages([s for s in default_stages() if s.name == "teacher"], ctx, resume=False)
    model, _ = load_stage_model(ctx, "teacher")
    assert ctx.results["teacher"]["accuracy"] > 0.7
    with torch.no_grad():
        model.fc1.weight[0] *= 1000
        model.fc1.bias[0] *= 1000
        model.fc2.weight[:, 0] /= 1000
    torch.save(model.state_dict(), folder / "outlier.pt")
    return folder / "outlier.pt"


@pytest.fixture(scope="module")
def mixed_run(outlier_weights) -> tuple[Path, dict]:
    run = outlier_weights.parent / "run"
    _, report = _run(_recipe(outlier_weights), run)
    return run, report


def test_sensitivity_ranks_the_outlier_layers_first(mixed_run):
    run, report = mixed_run
    rows = json.loads((run / "quantize" / "sensitivity.json").read_text())
    assert [r["layer"] for r in rows] == LAYERS  # execution order, every quantizable layer
    ranked = sorted(rows, key=lambda r: r["rank"])
    assert {r["layer"] for r in ranked[:2]} == {"fc1", "fc2"}
    assert max(r["output_sqnr_db"] for r in ranked[:2]) < 10 < min(r["output_sqnr_db"] for r in ranked[2:])
    assert min(r["score_drop"] for r in ranked[:2]) > 0.3 and max(abs(r["score_drop"]) for r in ranked[2:]) < 0.05
    assert all(r["activation_sqnr_db"] is not None for r in rows)  # qdq_loss_debug's cross-model SQNR
    csv = (run / "quantize" / "sensitivity.csv").read_text().splitlines()
    assert csv[0].startswith("rank,layer,op,score_drop,output_sqnr_db") and len(csv) == 1 + len(LAYERS)
    assert (run / "quantize" / "sensitivity.png").stat().st_size > 1000
    s = report["stages"]["quantize"]["sensitivity"]
    assert s["decision_split"] == "val" and s["layers"] == len(LAYERS) and s["table"] == "sensitivity.csv"


def test_fallback_keeps_the_fewest_sensitive_layers_in_float_and_meets_the_budget(mixed_run):
    run, report = mixed_run
    q = report["stages"]["quantize"]
    rec, cands = q["files"]["onnx"], [c for c in q["candidates"]["onnx"] if c["config"] != "fp32"]
    full = next(c for c in cands if not c["float_layers"])
    assert not full["within_budget"] and full["integer_mac_share"] == 1.0  # full int8 misses the budget
    assert rec["float_layers"] == ["fc1", "fc2"]  # in execution order
    assert rec["reference_val_accuracy"] - rec["val_accuracy"] <= 0.01
    assert all(not c["within_budget"] for c in cands if len(c["float_layers"]) < 2)  # the fewest
    assert q["sensitivity"]["kept_float"] == {"onnx": ["fc1", "fc2"]}
    entry = next(m for m in report["models"] if m["format"] == "onnx" and m["precision"] == "int8")
    assert entry["float_layers"] == ["fc1", "fc2"] and not entry["mostly_float"]
    assert 0.5 < entry["integer_mac_share"] < 1 and len(entry["float_islands"]) == 1
    assert entry["float_islands"][0]["layers"] == 2
    assert entry["macs_integer"] + entry["float_islands"][0]["macs"] == entry["macs_total"]
    md = (run / "report.md").read_text()
    assert "2 layer(s) kept in float to meet the budget: fc1, fc2" in md
    assert "![int8 sensitivity](quantize/sensitivity.png)" in md
    assert f"| {entry['integer_mac_share']:.0%} |" in md  # the int8 MAC share beside size and latency


def test_fallback_none_goes_without_float_layers(mixed_run, outlier_weights, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mixed_run[0], run)
    ctx, report = _run(_recipe(outlier_weights, fallback="none", on_fail="warn"), run, resume=True)
    q = report["stages"]["quantize"]
    assert set(report["reused_stages"]) >= {"teacher", "export"}
    assert all(not c.get("float_layers") for c in q["candidates"]["onnx"])
    assert not q["files"]["onnx"]["float_layers"] and q["files"]["onnx"]["integer_mac_share"] == 1.0
    assert q["sensitivity"]["kept_float"] == {}  # still measured: full int8 missed the budget


def test_an_explicit_list_keeps_those_layers_float_and_a_mostly_float_file_is_flagged(
    mixed_run, outlier_weights, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(mixed_run[0], run)
    _, report = _run(_recipe(outlier_weights, fallback=["conv1", "conv2"], on_fail="warn"), run, resume=True)
    q = report["stages"]["quantize"]
    assert all(c["float_layers"] == ["conv1", "conv2"] for c in q["candidates"]["onnx"] if c["config"] != "fp32")
    entry = next(m for m in report["models"] if m["format"] == "onnx" and m["precision"] == "int8")
    assert entry["integer_mac_share"] < 0.5 and entry["mostly_float"]  # the convolutions hold most MACs
    md = (run / "report.md").read_text()
    assert "mostly float!" in md and "mostly float despite its name" in md


def test_an_unknown_layer_is_one_error_listing_the_valid_ones(mixed_run, outlier_weights, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mixed_run[0], run)
    recipe = tmp_path / "r.json"  # JSON is YAML
    recipe.write_text(json.dumps(_recipe(outlier_weights, fallback=["fc1", "nope"])))
    proc = run_cli("compress", str(recipe), "--out", str(run), "--resume")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: quantize.fallback: unknown layer(s) nope;") and "conv1, conv2, fc1, fc2, fc" in line
    assert json.loads((run / "report.json").read_text())["stages"]["quantize"]["files"]["onnx"]["float_layers"]


def test_openvino_layers_kept_float_are_float_islands(mixed_run, tmp_path):
    """NNCF's ignored scope gets the IR nodes of the listed layers; the int8 IR runs them in float."""
    import numpy as np

    from edgecnn.compression.mixed import openvino_layer_nodes, quantizable_layers
    from edgecnn.compression.openvino_ir import onnx_to_openvino, quantize_openvino
    from edgecnn.models.files import ModelInfo, build_model
    from edgecnn.runtime.int8_proof import integer_macs

    run, _ = mixed_run
    onnx_to_openvino(run / "export" / "model.onnx", tmp_path / "fp32.xml", (1, 28, 28))
    layers = quantizable_layers(build_model(ModelInfo("lenet_small", {}, 10, (1, 28, 28))), (1, 28, 28))
    nodes = openvino_layer_nodes(tmp_path / "fp32.xml", layers)
    assert list(nodes) == LAYERS
    calib = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    quantize_openvino(tmp_path / "fp32.xml", tmp_path / "mixed.xml", calib, ignored=nodes["fc1"] + nodes["fc2"])
    r = integer_macs(tmp_path / "mixed.xml")
    assert integer_macs(tmp_path / "fp32.xml")["integer_mac_share"] == 0.0
    # one island ending at fc2; NNCF may leave conv2 (whose output only reaches fc1) unquantized with it
    assert [i["last"] for i in r["float_islands"]] == nodes["fc2"]
    assert r["float_islands"][0]["first"] in nodes["conv2"] + nodes["fc1"]
    assert 0 < r["integer_mac_share"] < 1 and r["layers_integer"] >= 2  # conv1 and fc stay int8


def test_check_float_layers_accepts_containers_and_names_unknown_ones():
    layers = [{"name": n} for n in ("features.0", "features.1.block.0", "features.1.block.3", "fc")]
    assert check_float_layers(["features.1", "fc"], layers) == ["features.1", "fc"]
    with pytest.raises(UserError, match=r"unknown layer\(s\) features.2, feat; .* features.0, features.1.block.0"):
        check_float_layers(["features.2", "fc", "feat"], layers)


def test_fewest_float_layers_doubles_then_bisects():
    calls = []

    def meets(names):  # the budget holds once both of c and f are float
        calls.append(len(names))
        return {"c", "f"} <= set(names)

    ranking = ["a", "c", "b", "d", "e", "f", "g", "h", "i"]
    assert fewest_float_layers(ranking, meets) == 6
    assert calls == [1, 2, 4, 8, 6, 5]
    assert fewest_float_layers(ranking, lambda names: False) is None
    assert fewest_float_layers(["x"], lambda names: names == ["x"]) == 1


def test_tflite_layers_kept_float_are_float_islands(tmp_path):
    """The PT2E quantizer leaves the listed module in float with a float input, and the file shows it.

    LiteRT re-derives int8 scales through max-pooling, so conv2's float input also leaves conv1 (whose
    int8 output only fed it) in float; the fully-connected layers stay int8.
    """
    from edgecnn.compression.quantize import quantize_tflite
    from edgecnn.models.files import ModelInfo, build_model
    from edgecnn.runtime.int8_proof import integer_macs

    torch.manual_seed(0)
    info = ModelInfo("lenet", {}, 10, (1, 28, 28))
    model = build_model(info).eval()
    quantize_tflite(model, info.input_shape, torch.rand(8, 1, 28, 28), tmp_path / "m.tflite", float_layers=["conv2"])
    r = integer_macs(tmp_path / "m.tflite")
    assert [i["last"] for i in r["float_islands"]] == ["Conv2d_conv2"]
    assert r["layers_integer"] == 3 and r["macs_integer"] == 48000 + 10080 + 840  # fc1, fc2, fc


def test_quantize_command_keeps_the_named_layers_in_float(outlier_weights, tmp_path):
    from edgecnn.models.files import ModelInfo, build_model, save_model

    info = ModelInfo("lenet_small", {}, 10, (1, 28, 28), [0.1307], [0.3081])
    model = build_model(info)
    model.load_state_dict(torch.load(outlier_weights, weights_only=True))
    save_model(model, info, tmp_path / "m.pt")
    proc = run_cli("quantize", str(tmp_path / "m.pt"), "--format", "onnx", "--select", "fixed", "--qat", "false",
                   "--on-fail", "warn", "--fallback", "fc1, fc2", "--calib-samples", "64", "--min-seconds", "0.1",
                   "--out", str(tmp_path / "q"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert record["files"]["onnx"]["float_layers"] == ["fc1", "fc2"]
    assert 0 < record["files"]["onnx"]["integer_mac_share"] < 1
    assert "kept in float: fc1, fc2" in proc.stdout
