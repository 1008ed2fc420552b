"""Quantize: measured int8 candidates, the deployed model per runtime, and the QAT fallback."""

from __future__ import annotations

import json
import shutil

import numpy as np
from conftest import QUICKSTART, run_cli

from edgecnn.analysis.selection import CONFIRM_ROUNDS, alternating_rounds, near_fastest
from edgecnn.compression.int8_select import choose
from edgecnn.runtime import agent


def test_auto_lists_measured_candidates_and_prefers_one_precision_per_runtime(quickstart_report):
    q = quickstart_report["stages"]["quantize"]
    onnx = [c for c in q["candidates"]["onnx"] if c["config"] != "fp32"]
    configs = {(c["config"]["format"], c["config"]["activation"], c["config"]["method"]) for c in onnx}
    assert {("qdq", "uint8", "minmax"), ("qoperator", "uint8", "minmax"), ("qdq", "int8", "minmax"),
            ("qdq", "uint8", "percentile"), ("qdq", "uint8", "entropy")} <= configs
    for cands in q["candidates"].values():
        assert sum(c["chosen"] for c in cands) == 1
        for c in cands:
            assert 0.5 < c["accuracy"] <= 1 and c["p50_ms"] > 0
        chosen = next(c for c in cands if c["chosen"])
        # the stage keeps the fastest int8 file per runtime; bf16/fp16 rows (OpenVINO, where the CPU has them)
        # compete only in the bench stage's deploy pick
        within = [c for c in cands if c["within_budget"] and c["precision"] == "int8"]
        assert chosen["p50_ms"] == min(c["p50_ms"] for c in within)
    runtime = {"onnx": "onnxruntime", "tflite": "litert", "openvino": "openvino"}
    # one file is deployed across every runtime and precision (tests/test_openvino.py checks which)
    assert sum(m["deploy"] for m in quickstart_report["models"]) == 1
    for fmt in runtime:
        entries = [m for m in quickstart_report["models"] if m["format"] == fmt]
        assert {m["precision"] for m in entries} >= {"fp32", "int8"}
        int8 = next(m for m in entries if m["precision"] == "int8")
        if q["deploy"][fmt] == "fp32":  # the report says why int8 is not deployed
            assert any(n.startswith(f"{runtime[fmt]}: no int8 model is faster than fp32") for n in q["notes"])
        else:  # deployed because it timed faster than fp32 side by side (bench's later timing may drift)
            chosen = next(c for c in q["candidates"][fmt] if c["chosen"])
            fp32_row = next(c for c in q["candidates"][fmt] if c["config"] == "fp32")
            assert chosen["p50_ms"] < fp32_row["p50_ms"] and int8["latency_ms"]["p50"] > 0


def test_each_runtime_times_its_fp32_file_and_the_int8_files_that_could_win_again(quickstart_report):
    """The int8-vs-fp32 choice and the choice among int8 configs rest on side-by-side rounds, not one timing each."""
    q = quickstart_report["stages"]["quantize"]
    for fmt in ("onnx", "tflite", "openvino"):
        rows = [c for c in q["candidates"][fmt] if c["precision"] in ("fp32", "int8")]
        for c in rows:
            assert len(c["latency_rounds_p50_ms"]) in (1, 1 + CONFIRM_ROUNDS)
            assert c["p50_ms"] == min(c["latency_rounds_p50_ms"])
        ok = [c for c in rows if c["within_budget"]]  # fp32 first, then the int8 files within budget
        expected = [ok[i] for i in near_fastest([c["latency_rounds_p50_ms"][0] for c in ok])]
        retimed = [c for c in rows if len(c["latency_rounds_p50_ms"]) > 1]
        assert retimed == (expected if len(expected) >= 2 else []), fmt
        chosen = next(c for c in rows if c["chosen"])
        fp32 = next(c for c in rows if c["config"] == "fp32")
        assert (q["deploy"][fmt] == "int8") == (chosen["p50_ms"] < fp32["p50_ms"])  # on the best rounds
        assert q["files"][fmt]["fp32_p50_ms"] == fp32["p50_ms"]


def test_alternating_rounds_flip_the_order_and_keep_each_files_results():
    calls = []
    rounds = alternating_rounds(3, lambda i: calls.append(i) or 10 * i + len(calls), rounds=2)
    assert calls == [2, 1, 0, 0, 1, 2]
    assert rounds == [[3, 4], [12, 15], [21, 26]]
    assert near_fastest([1.0, 1.5, 1.51, 2.0]) == [0, 1] and near_fastest([]) == []


def test_choose_takes_the_fastest_within_budget_on_validation_or_none():
    cands = [{"val_accuracy": 0.90, "accuracy": 0.80, "p50_ms": 1.0},
             {"val_accuracy": 0.85, "accuracy": 0.99, "p50_ms": 0.5},
             {"val_accuracy": 0.895, "accuracy": 0.70, "p50_ms": 0.8}]
    assert choose(cands, 0.90, 0.01)["p50_ms"] == 0.8  # test accuracies never enter the choice
    assert choose(cands, 0.90, 0.1)["p50_ms"] == 0.5
    assert choose(cands, 0.95, 0.01) is None


def test_a_loss_equal_to_the_budget_passes_despite_float32_accuracies():
    """970/1000 in float32 is 0.9700000286: losing exactly 10 of 1,000 images is within a 1-point budget."""
    import numpy as np

    ref = float(np.float32(970) / np.float32(1000))
    assert choose([{"val_accuracy": 0.96, "p50_ms": 1.0}], ref, 0.01) is not None
    assert choose([{"val_accuracy": 0.959, "p50_ms": 1.0}], ref, 0.01) is None


def test_quickstart_decides_on_validation_and_reports_test_figures(quickstart_report):
    r = quickstart_report
    q, data = r["stages"]["quantize"], r["data"]
    assert r["decision_split"] == "val" and q["decision_split"] == "val"
    assert r["stages"]["export"]["decision_split"] == "val" and data["val"] == 400
    for fmt, cands in q["candidates"].items():
        rec = q["files"][fmt]
        assert rec["decision_split"] == "val" and 0.5 < rec["reference_val_accuracy"] <= 1
        for c in cands:  # both scores beside each other; the budget is judged on validation only
            assert 0.5 < c["val_accuracy"] <= 1 and 0.5 < c["accuracy"] <= 1
            if c["config"] != "fp32":
                assert c["within_budget"] == (rec["reference_val_accuracy"] - c["val_accuracy"] <= 0.01 + 1e-6)
        chosen = next(c for c in cands if c["chosen"])
        assert (rec["val_accuracy"], rec["accuracy"]) == (chosen["val_accuracy"], chosen["accuracy"])
    for m in r["models"]:  # reported figures: the test split
        assert m["eval_samples"] == 1000 and m["score"] == m["accuracy"] == m["metrics"]["top1"]


def _skewed_folder(root) -> None:
    """Four classes in train/val/test folders: the first (in folder order) dark noise, the others bright patterns."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28]
    bright = {"b_stripes": (yy // 4) % 2, "c_columns": (xx // 4) % 2, "d_checks": ((yy // 4) + (xx // 4)) % 2}
    for split, n in (("train", 60), ("val", 20), ("test", 20)):
        images = {"a_dark": lambda: rng.integers(0, 40, (28, 28, 3))}
        images.update({k: (lambda p=p: 150 + 90 * p[..., None] + rng.integers(0, 15, (28, 28, 3)))
                       for k, p in bright.items()})
        for cls, make in images.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.clip(make(), 0, 255).astype(np.uint8)).save(root / split / cls / f"{i}.png")


def test_a_folder_whose_first_class_is_unlike_the_others_quantizes_within_budget(tmp_path, monkeypatch):
    """Calibration draws every class; the first 48 training images (all dark) would lose half the accuracy."""
    from edgecnn.compression.quantize import quantize_onnx
    from edgecnn.config.recipe import recipe_from_dict
    from edgecnn.pipeline.context import Context
    from edgecnn.pipeline.runner import run_stages
    from edgecnn.pipeline.stages.registry import default_stages
    from edgecnn.runtime.host import runtime_logits

    monkeypatch.setenv("EDGECNN_CPU_LEASES", str(tmp_path / "leases"))
    _skewed_folder(tmp_path / "data")
    recipe = recipe_from_dict({
        "name": "skewed", "data": {"spec": f"imagefolder:{tmp_path / 'data'}", "augment": "none", "calib_samples": 48},
        "teacher": {"model": "lenet"}, "train": {"epochs": 6, "batch_size": 32}, "student": None, "distill": None,
        "prune": None, "quantize": {"select": "fixed", "qat": {"enabled": False}}, "export": {"formats": ["onnx"]},
    }, tmp_path)
    ctx = Context(recipe, tmp_path / "run")
    run_stages([s for s in default_stages() if s.name != "bench"], ctx, resume=False)  # a missed gate would raise
    data, rec = ctx.data, ctx.results["quantize"]["files"]["onnx"]
    assert data.train.y[:48].unique().tolist() == [0] and rec["reference_val_accuracy"] > 0.9
    assert rec["reference_val_accuracy"] - rec["val_accuracy"] <= 0.01 and rec["decision_split"] == "val"
    assert rec["reference_accuracy"] - rec["accuracy"] <= 0.01
    first = tmp_path / "first48.int8.onnx"  # what calibrating on data.train.x[:48] gave
    quantize_onnx(ctx.stage_dir("export") / "model.onnx", first, data.normalize(data.train.x[:48]).numpy(),
                  fmt="qdq", activation="uint8", weight="int8", per_channel=True, method="minmax")
    assert runtime_logits(first, data, data.val)[0] < rec["reference_val_accuracy"] - 0.2


def test_forced_qat_produces_gated_int8_files_with_float_io(quickstart_run, tmp_path):
    """QAT on the quickstart's pruned student (1 epoch), re-using the finished earlier stages."""
    run = tmp_path / "run"
    shutil.copytree(quickstart_run, run)
    proc = run_cli("compress", str(QUICKSTART), "--out", str(run), "--resume",
                   "--set", "quantize.qat.enabled=true", "--set", "quantize.qat.epochs=1",
                   "--set", "quantize.select=fixed", "--set", "quantize.tflite.io=float",
                   "--set", "quantize.on_fail=warn", "--set", "bench.min_seconds=0.2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert set(report["reused_stages"]) >= {"teacher", "distill", "prune", "export"}
    q = report["stages"]["quantize"]
    assert q["qat"]["epochs"] == 1 and np.isfinite(q["qat"]["history"][0]["loss"])
    for fmt in ("onnx", "tflite", "openvino"):
        qat = [c for c in q["candidates"][fmt] if c["qat"]]
        assert len(qat) == 1 and 0.5 < qat[0]["accuracy"] <= 1
        rec = q["files"][fmt]
        assert rec["parity"]["top1_agreement"] > 0.9
        assert abs(rec["accuracy"] - rec["reference_accuracy"]) <= 0.05
    rt = agent.open_runtime(str(run / "quantize" / "model.int8.tflite"), 1)
    assert rt.inp["dtype"] == np.float32 and rt.out["dtype"] == np.float32


def test_reduce_range_auto_follows_the_cpu():
    """auto: 7-bit weights only for u8 activations x s8 weights on x86 without VNNI; true/false as given."""
    from edgecnn.compression.quantize import resolve_reduce_range, x86_without_vnni

    assert resolve_reduce_range("auto", "uint8", "int8") is x86_without_vnni()
    assert resolve_reduce_range("auto", "int8", "int8") is False
    assert resolve_reduce_range("true", "int8", "int8") is True
    assert resolve_reduce_range("false", "uint8", "int8") is False
