"""OpenVINO: IR export and NNCF int8 with parity, the agent on .xml files, bad IR input, the deploy pick."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from edgecnn.analysis.selection import CONFIRM_ROUNDS, contenders, could_win, pick_deployment, time_again
from edgecnn.compression.export import export_onnx
from edgecnn.compression.openvino_ir import (
    cpu_capabilities,
    export_openvino,
    float_precisions,
    ir_files,
    quantize_openvino,
    reprecision,
)
from edgecnn.compression.train import accuracy, fit, predict
from edgecnn.config.recipe import TrainConfig
from edgecnn.core.environment import cpu_flags
from edgecnn.core.errors import UserError
from edgecnn.data.datasets import load_data
from edgecnn.models.files import ModelInfo, build_model
from edgecnn.runtime.checks import check_model_file
from edgecnn.runtime.host import parity, run_agent_local, runtime_logits, write_eval_npz
from edgecnn.tasks.registry import get_task

AVX512_CORE = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}  # OpenVINO's avx512_core


@pytest.fixture(scope="module")
def mnist():
    return load_data("mnist5k", 0.1, None, None)


@pytest.fixture(scope="module")
def lenet(mnist):
    """lenet_small trained for one epoch on real MNIST digits."""
    model = build_model(ModelInfo("lenet_small", input_shape=(1, 28, 28)))
    fit(model, mnist, TrainConfig(epochs=1, batch_size=64, lr=0.05), seed=0, augment=False)
    return model.eval()


@pytest.fixture(scope="module")
def irs(mnist, lenet, tmp_path_factory):
    """The fp32 IR (converted from the ONNX export) and its NNCF int8 IR."""
    d = tmp_path_factory.mktemp("openvino")
    export_onnx(lenet, mnist.input_shape, d / "model.onnx", simplify=True)
    export_openvino(lenet, mnist.input_shape, d / "model.xml", onnx_file=d / "model.onnx")
    calib = mnist.normalize(mnist.calibration(256).x).numpy()
    quantize_openvino(d / "model.xml", d / "model.int8.xml", calib)
    return d


def test_fp32_and_nncf_int8_irs_keep_parity(mnist, lenet, irs):
    ref = predict(lenet, mnist, mnist.test)
    ref_acc = accuracy(ref, mnist.test.y)
    acc, logits = runtime_logits(irs / "model.xml", mnist, mnist.test)
    classify, head = get_task("classification"), {"kind": "logits", "num_classes": 10}
    check = parity(classify, logits, ref.numpy(), mnist.test, head, "lenet/pytorch")
    assert check["top1_agreement"] >= 0.999 and check["max_abs_diff"] < 1e-3 and acc == pytest.approx(ref_acc)
    acc8, logits8 = runtime_logits(irs / "model.int8.xml", mnist, mnist.test)
    # a one-epoch LeNet has many near-ties: int8 agrees on ~95% of digits and keeps its accuracy
    assert parity(classify, logits8, ref.numpy(), mnist.test, head, "lenet/pytorch")["top1_agreement"] >= 0.92
    assert acc8 >= ref_acc - 0.03, (acc8, ref_acc)
    # int8 weights: the .bin shrinks to well under half of the fp32 one
    assert (irs / "model.int8.bin").stat().st_size < 0.5 * (irs / "model.bin").stat().st_size
    assert all(p.is_file() for p in ir_files(irs / "model.int8.xml"))


def test_agent_runs_an_ir_and_reports_runtime_precision_and_both_files(mnist, irs, tmp_path):
    npz = tmp_path / "eval.npz"
    write_eval_npz(mnist, mnist.test.head(200), npz)
    r = run_agent_local(irs / "model.xml", npz, min_iters=20, min_seconds=0.05)
    assert r["runtime"].startswith("openvino 20") and r["inference_precision"] == "fp32"
    assert r["size_bytes"] == sum(p.stat().st_size for p in ir_files(irs / "model.xml"))
    assert r["eval_samples"] == 200 and 0.5 < r["accuracy"] <= 1 and r["latency_ms"]["p50"] > 0
    assert r["threads"] == 1
    int8 = run_agent_local(irs / "model.int8.xml", npz, threads=0, min_iters=20, min_seconds=0.05)
    assert int8["threads"] >= 1 and int8["runtime"] == r["runtime"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_natively_or_falls_back_and_says_so(mnist, irs, tmp_path, precision):
    """A bf16/fp16 IR runs at that precision where the CPU lists it, in fp32 elsewhere; the agent reports which."""
    xml = tmp_path / f"model.{precision}.xml"
    reprecision(irs / "model.xml", xml, precision)
    npz = tmp_path / "eval.npz"
    write_eval_npz(mnist, mnist.test.head(200), npz)
    r = run_agent_local(xml, npz, min_iters=10, min_seconds=0.05)
    caps = cpu_capabilities()
    native = {"bf16": "BF16", "fp16": "FP16"}[precision] in caps
    # without native bf16, OpenVINO emulates it on AVX-512 (an Intel Xeon without BF16/AMX) and runs f32 elsewhere;
    # an fp16 hint on a CPU with BF16 but no FP16 (AMD EPYC Zen 4) runs in bf16
    emulated = precision == "bf16" and AVX512_CORE <= cpu_flags()
    fallback = "bf16" if "BF16" in caps else "fp32"
    assert r["inference_precision"] == (precision if native or emulated else fallback)
    ok, notes = float_precisions([precision])
    assert ok == ([precision] if native else []) and len(notes) == (0 if native else 1)
    assert native or "OPTIMIZATION_CAPABILITIES" in notes[0]
    ref = run_agent_local(irs / "model.xml", npz, min_iters=10, min_seconds=0.05)
    assert abs(r["accuracy"] - ref["accuracy"]) <= 0.02


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("damage", ["truncated-xml", "truncated-bin", "missing-bin"])
def test_damaged_ir_ends_in_one_error_line(irs, tmp_path, damage):
    xml, bin_ = tmp_path / "model.xml", tmp_path / "model.bin"
    xml.write_bytes((irs / "model.xml").read_bytes())
    bin_.write_bytes((irs / "model.bin").read_bytes())
    if damage == "truncated-xml":
        xml.write_bytes(xml.read_bytes()[: len(xml.read_bytes()) // 2])
    elif damage == "truncated-bin":
        bin_.write_bytes(bin_.read_bytes()[:1000])
    else:
        bin_.unlink()
    with pytest.raises(UserError) as e:
        check_model_file(xml)
    assert str(xml if damage != "truncated-bin" else bin_) in str(e.value)
    assert "truncated" in str(e.value) or "missing" in str(e.value)


def test_deploying_a_truncated_ir_is_one_error_line(irs, tmp_path):
    xml = tmp_path / "model.xml"
    xml.write_bytes((irs / "model.xml").read_bytes())
    (tmp_path / "model.bin").write_bytes((irs / "model.bin").read_bytes()[:1000])
    line = _one_error_line(run_cli("deploy", str(xml), "--device", "local-cpu", "--data", "mnist5k"))
    assert str(tmp_path / "model.bin") in line and "truncated" in line


def test_an_ir_declaring_entities_is_refused(irs, tmp_path):
    xml = tmp_path / "model.xml"
    (tmp_path / "model.bin").write_bytes((irs / "model.bin").read_bytes())
    xml.write_bytes(b'<?xml version="1.0"?><!DOCTYPE net [<!ENTITY a "aaaa">]><net>&a;</net>')
    with pytest.raises(UserError, match="DTD or entities"):
        check_model_file(xml)


def _entry(fmt: str, precision: str, p50: float, score: float | None) -> dict:
    return {"name": "m", "format": fmt, "precision": precision, "path": f"{fmt}.{precision}", "size_bytes": 10,
            "runtime": f"{fmt}-runtime 1", "latency_ms": {"p50": p50}, "accuracy": score, "decision_score": score}


def test_pick_is_the_fastest_within_budget_across_runtimes_and_says_why():
    entries = [_entry("onnx", "fp32", 1.0, 0.90), _entry("openvino", "int8", 0.3, 0.85),
               _entry("openvino", "fp32", 0.6, 0.90), _entry("tflite", "int8", 0.5, 0.895)]
    pick = pick_deployment(entries, 0.90, 0.01, "local-cpu")
    assert pick["chosen"]["format"] == "tflite" and pick["chosen"]["precision"] == "int8"
    assert [c["chosen"] for c in pick["candidates"]] == [False, False, False, True]
    assert [c["within_budget"] for c in pick["candidates"]] == [True, False, True, True]
    assert "fastest of 3" in pick["reason"] and "1.20x faster than the next, openvino fp32" in pick["reason"]
    assert "over the budget on validation: openvino int8" in pick["reason"] and "-5.00 points" in pick["reason"]
    none = pick_deployment([_entry("onnx", "int8", 0.1, 0.5)], 0.9, 0.01, "rpi4")
    assert none["chosen"] is None and "no candidate" in none["reason"]


def test_a_size_limit_keeps_larger_files_from_being_deployed_and_says_which():
    """bench.max_size_kb: the fastest file within budget *and* the limit wins; larger ones are listed, never chosen."""
    sizes = {"openvino": 259_000, "tflite": 171_800, "onnx": 220_000}
    entries = [{**_entry(fmt, "int8", p50, 0.89), "size_bytes": sizes[fmt]}
               for fmt, p50 in (("openvino", 0.169), ("tflite", 0.194), ("onnx", 0.227))]
    free = pick_deployment(entries, 0.8934, 0.01, "local-cpu")
    assert free["chosen"]["format"] == "openvino" and free["max_size_kb"] is None
    assert all(c["within_size"] for c in free["candidates"])
    pick = pick_deployment(entries, 0.8934, 0.01, "local-cpu", max_size_kb=168)
    assert pick["chosen"]["format"] == "tflite" and pick["max_size_kb"] == 168
    assert [c["within_size"] for c in pick["candidates"]] == [False, True, False]
    assert "within the 1.00-point budget and 168 KB" in pick["reason"]
    assert "over 168 KB: openvino int8 (openvino-runtime 1) (252.9 KB), onnx int8" in pick["reason"]
    none = pick_deployment(entries, 0.8934, 0.01, "local-cpu", max_size_kb=100)
    assert none["chosen"] is None and "within the budget and 100 KB" in none["reason"]
    unknown = pick_deployment([{**entries[1], "size_bytes": None}], 0.8934, 0.01, "local-cpu", max_size_kb=168)
    assert unknown["chosen"] is None and unknown["candidates"][0]["within_size"] is False


def test_the_files_that_could_win_are_the_eligible_ones_near_the_fastest():
    rows = [{"within_budget": ok, "within_size": small, "p50_ms": p50} for ok, small, p50 in (
        (True, True, 1.0), (True, True, 1.4), (True, True, 1.6), (False, True, 0.5), (True, False, 0.6),
        (True, True, None))]
    assert contenders(rows) == [0, 1]  # 1.6 is over 1.5x; over budget, over size and unmeasured never count
    assert contenders(rows[3:]) == []


def test_timing_again_keeps_each_files_best_round_and_a_failed_round_changes_nothing():
    entries = [{"latency_ms": {"p50": 1.4}}, {"latency_ms": {"p50": 1.0}}]
    rows = [{"within_budget": True, "within_size": True, "p50_ms": e["latency_ms"]["p50"]} for e in entries]
    first = {"chosen": {"path": "b"}, "candidates": rows}
    assert could_win(first, entries) == entries and could_win({**first, "chosen": None}, entries) == []
    assert could_win({**first, "candidates": first["candidates"][:1]}, entries[:1]) == []  # one alone: no rounds
    before = copy.deepcopy(entries)

    def fails(e: dict) -> dict:
        raise UserError("device loopback: the agent failed")

    with pytest.raises(UserError):
        time_again(entries, fails)
    assert entries == before
    times = iter([1.5, 1.2, 1.1, 3.0])  # the second entry first, then the first: the order flips each round
    time_again(entries, lambda e: {"p50": next(times)})
    assert [e["latency_rounds_p50_ms"] for e in entries] == [[1.4, 1.2, 1.1], [1.0, 1.5, 3.0]]
    assert [e["latency_ms"]["p50"] for e in entries] == [1.1, 1.0]


def test_run_lists_openvino_candidates_and_deploys_the_fastest_within_budget(quickstart_report):
    """The quickstart (onnx, tflite, openvino): one file deployed, the fastest within budget of all of them."""
    r = quickstart_report
    q = r["stages"]["quantize"]
    ov = q["candidates"]["openvino"]
    assert {c["label"] for c in ov} >= {"fp32 export", "nncf performance", "nncf mixed"}
    assert all(c["runtime"] == "openvino" and c["size_bytes"] > 0 for c in ov)
    pick = r["deployments"]["local-cpu"]
    rows = pick["candidates"]
    assert {(c["format"], c["precision"]) for c in rows} >= {
        ("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"),
        ("openvino", "fp32"), ("openvino", "int8")}
    for c in rows:
        assert c["runtime"] and c["score"] is not None and c["p50_ms"] > 0 and c["size_bytes"] > 0
    within = [c for c in rows if c["within_budget"]]
    chosen = [c for c in rows if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["p50_ms"] == min(c["p50_ms"] for c in within)
    deployed = [m for m in r["models"] if m["deploy"]]
    assert len(deployed) == 1 and deployed[0]["path"] == chosen[0]["path"]
    assert deployed[0]["latency_ms"]["p50"] == chosen[0]["p50_ms"]
    assert all(len(m["latency_rounds_p50_ms"]) in (1, 1 + CONFIRM_ROUNDS) for m in r["models"])
    retimed = [m for m in r["models"] if len(m["latency_rounds_p50_ms"]) > 1]  # timed again, side by side
    key = lambda e: (e["format"], e["precision"], e["path"])  # noqa: E731
    model_of = {key(m): m for m in r["models"] if m["format"] != "pytorch"}
    first = [{**c, "p50_ms": model_of[key(c)]["latency_rounds_p50_ms"][0]} for c in rows]
    expected = [key(first[i]) for i in contenders(first)]  # the first pass's p50s decide who is timed again
    assert sorted(key(m) for m in retimed) == (sorted(expected) if len(expected) >= 2 else [])
    for m in r["models"]:
        assert m["latency_ms"]["p50"] == min(m["latency_rounds_p50_ms"])
    if len(retimed) >= 2:
        assert deployed[0] in retimed
    assert pick["reason"].startswith(f"{chosen[0]['format']} {chosen[0]['precision']}")
    ov_models = [m for m in r["models"] if m["format"] == "openvino"]
    assert {m["precision"] for m in ov_models} >= {"fp32", "int8"}
    for m in ov_models:
        assert m["runtime"].startswith("openvino") and m["parity"]["top1_agreement"] > 0.9
        assert m["path"].endswith(".xml") and m["size_bytes"] > 0
    for precision, cap in (("bf16", "BF16"), ("fp16", "FP16")):  # tried where the CPU has it, else a note says why
        if cap in cpu_capabilities():
            assert q["files"][f"openvino-{precision}"]["inference_precision"] == precision
        else:
            assert any(n.startswith(f"openvino: {precision} inference skipped") for n in q["notes"])


def test_deploy_copies_ir_pairs_and_picks_the_device_s_fastest_file(quickstart_run, tmp_path):
    run = Path(shutil.copytree(quickstart_run, tmp_path / "run"))
    proc = run_cli("deploy", str(run), "--device", "local-cpu", "--json", "--min-seconds", "0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = json.loads(proc.stdout)
    ov = [e for e in entries if e["format"] == "openvino"]
    assert {e["precision"] for e in ov} >= {"fp32", "int8"} and all(e["latency_ms"]["p50"] > 0 for e in ov)
    pick = json.loads((run / "report.json").read_text())["deployments"]["local-cpu"]
    within = [c for c in pick["candidates"] if c["within_budget"]]
    assert pick["chosen"] and min(within, key=lambda c: c["p50_ms"])["path"] == pick["chosen"]["path"]
    assert [e["path"] for e in entries if e["deploy"]] == [pick["chosen"]["path"]]
