"""Quantize: measured int8 candidates, the deployed model per runtime, and the QAT fallback."""

from __future__ import annotations

import json
import shutil

import numpy as np
from conftest import QUICKSTART, run_cli

from edgecnn.compression.int8_select import choose
from edgecnn.runtime import agent


def test_auto_lists_measured_candidates_and_marks_one_deployed_model_per_runtime(quickstart_report):
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
        within = [c for c in cands if c["within_budget"] and c["config"] != "fp32"]
        assert chosen["p50_ms"] == min(c["p50_ms"] for c in within)
    runtime = {"onnx": "onnxruntime", "tflite": "litert"}
    for fmt in ("onnx", "tflite"):
        entries = [m for m in quickstart_report["models"] if m["format"] == fmt]
        deployed = [m for m in entries if m["deploy"]]
        assert len(deployed) == 1 and deployed[0]["precision"] == q["deploy"][fmt]
        fp32 = next(m for m in entries if m["precision"] == "fp32")
        int8 = next(m for m in entries if m["precision"] == "int8")
        if q["deploy"][fmt] == "fp32":  # the report says why int8 is not deployed
            assert any(n.startswith(f"{runtime[fmt]}: no int8 model is faster than fp32") for n in q["notes"])
        else:
            assert int8["latency_ms"]["p50"] < fp32["latency_ms"]["p50"] * 1.5


def test_choose_takes_the_fastest_within_budget_or_none():
    cands = [{"accuracy": 0.90, "p50_ms": 1.0}, {"accuracy": 0.85, "p50_ms": 0.5}, {"accuracy": 0.895, "p50_ms": 0.8}]
    assert choose(cands, 0.90, 0.01)["p50_ms"] == 0.8
    assert choose(cands, 0.90, 0.1)["p50_ms"] == 0.5
    assert choose(cands, 0.95, 0.01) is None


def test_a_loss_equal_to_the_budget_passes_despite_float32_accuracies():
    """970/1000 in float32 is 0.9700000286: losing exactly 10 of 1,000 images is within a 1-point budget."""
    import numpy as np

    ref = float(np.float32(970) / np.float32(1000))
    assert choose([{"accuracy": 0.96, "p50_ms": 1.0}], ref, 0.01) is not None
    assert choose([{"accuracy": 0.959, "p50_ms": 1.0}], ref, 0.01) is None


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
    for fmt in ("onnx", "tflite"):
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
