"""Crash safety: runs killed with SIGKILL inside a stage, resumed with --resume, compared with an uninterrupted run.

Deterministic on one machine (same seed, same thread count): every PyTorch model file (teacher,
distill, prune: fp training seeds each stage from the recipe seed and the stage name), the ONNX
and TFLite exports, the int8 files and the accuracies. Not deterministic: latencies, peak memory,
wall times and timestamps, so `bench/` and the reports are compared on accuracies only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecnn.config.recipe import Recipe, resolve_paths
from edgecnn.pipeline.stages.bench import BenchStage
from edgecnn.pipeline.stages.quantize import QuantizeStage
from tests.conftest import QUICKSTART, REPO, run_cli

# the shortened quickstart: every stage runs, for a few seconds each
SHORT = ["--set", "train.epochs=1", "--set", "distill.epochs=1", "--set", "prune.epochs=1",
         "--set", "quantize.select=fixed", "--set", "quantize.qat.enabled=false", "--set", "quantize.on_fail=warn",
         "--set", "export.on_fail=warn", "--set", "bench.min_seconds=0", "--set", "bench.min_iters=3",
         "--set", "bench.warmup=1", "--set", "data.eval_samples=300"]
# the default suite's cheaper variant: ONNX only, no int8 (the slow tests cover TFLite and int8)
FAST = [*SHORT, "--set", "export.formats=[onnx]", "--set", "quantize.enabled=false", "--set", "train.epochs=0"]
STAGES = ["teacher", "distill", "prune", "export", "quantize", "bench"]
DETERMINISTIC = ["teacher", "distill", "prune", "export", "quantize"]


def compress(out: Path, *extra: str, short: list[str] = FAST) -> subprocess.CompletedProcess:
    return run_cli("compress", str(QUICKSTART), "--out", str(out), *short, *extra)


def stage_files(run: Path, stage: str) -> dict[str, bytes]:
    """The artifacts of a stage (its manifest aside: it records wall times and a timestamp)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / stage).rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def accuracies(run: Path) -> dict[tuple, float]:
    report = json.loads((run / "report.json").read_text())
    return {(m["name"], m["format"], m["precision"]): m["accuracy"] for m in report["models"]}


def kill_inside(out: Path, stage: str, short: list[str], timeout: float = 600) -> None:
    """Start a run and SIGKILL it as soon as `stage` is writing its temporary folder."""
    proc = subprocess.Popen([sys.executable, "-m", "edgecnn", "compress", str(QUICKSTART), "--out", str(out), *short],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if out.is_dir() and list(out.glob(f".{stage}.tmp-*")):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return
            if proc.poll() is not None:
                pytest.fail(f"the run ended before {stage} started: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        pytest.fail(f"{stage} did not start within {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def enabled(run: Path) -> list[str]:
    report = json.loads((run / "report.json").read_text())
    return [s for s in STAGES if report["stages"][s]["status"] != "skipped"]


def kill_and_resume(out: Path, stage: str, reference: Path, short: list[str]) -> None:
    """Kill a run inside `stage`, resume it; check what was reused, and the artifacts against `reference`."""
    kill_inside(out, stage, short)
    done = [s for s in enabled(reference)[: enabled(reference).index(stage)]]
    assert not (out / stage).exists(), "an interrupted stage must leave no stage folder"
    assert list(out.glob(f".{stage}.tmp-*")), "the kill should have hit the stage at work"
    mtimes = {s: (out / s / "manifest.json").stat().st_mtime_ns for s in done}
    proc = compress(out, "--resume", short=short)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["reused_stages"] == done
    assert {s: (out / s / "manifest.json").stat().st_mtime_ns for s in done} == mtimes, "a finished stage was redone"
    assert not list(out.glob(".*tmp-*")), "leftovers of the killed run remain"
    for s in DETERMINISTIC:
        assert stage_files(out, s) == stage_files(reference, s), f"{s} differs from the uninterrupted run"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The default suite's shortened quickstart, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = compress(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def resumed(reference, tmp_path_factory) -> Path:
    """The same run killed with SIGKILL inside distill (a fresh process), then resumed (another one)."""
    out = tmp_path_factory.mktemp("resumed") / "run"
    kill_and_resume(out, "distill", reference, FAST)
    return out


def test_killed_run_resumes_byte_identical(resumed):
    report = json.loads((resumed / "report.json").read_text())
    assert report["reused_stages"] == ["teacher"]
    assert [s for s in STAGES if report["stages"][s]["status"] == "ran"] == ["distill", "prune", "export", "bench"]


def test_same_recipe_and_seed_give_same_accuracies(reference, resumed):
    """Determinism: three processes (reference; killed; resumed) give exactly the same accuracies and files."""
    assert accuracies(resumed) == accuracies(reference)
    assert len(accuracies(reference)) >= 4


def test_changed_config_redoes_that_stage_and_later(resumed):
    before = {s: (resumed / s / "manifest.json").stat().st_mtime_ns for s in enabled(resumed)}
    proc = compress(resumed, "--resume", "--set", "export.opset=17")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((resumed / "report.json").read_text())
    assert report["reused_stages"] == ["teacher", "distill", "prune"]
    assert report["stages"]["export"]["status"] == report["stages"]["bench"]["status"] == "ran"
    for s in before:
        changed = (resumed / s / "manifest.json").stat().st_mtime_ns != before[s]
        assert changed == (s in ("export", "bench")), s


def test_existing_run_dir_needs_resume_or_force(reference):
    before = {str(p): p.stat().st_mtime_ns for p in reference.rglob("*")}
    proc = compress(reference)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--resume" in lines[0] and "--force" in lines[0]
    assert "Traceback" not in proc.stderr
    assert {str(p): p.stat().st_mtime_ns for p in reference.rglob("*")} == before


def test_damaged_artifact_redoes_its_stage(reference, tmp_path):
    """--resume on a finished run redoes nothing; a damaged artifact makes its stage (and later ones) run again."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    onnx = next((out / "export").glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-10])
    proc = compress(out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["reused_stages"] == ["teacher", "distill", "prune"]
    assert stage_files(out, "export") == stage_files(reference, "export")


def test_a_data_key_redoes_only_the_stages_that_read_it(reference, tmp_path):
    """data.calib_samples is read by quantize alone: --resume with a new value reuses the stages before it."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    int8 = ["--set", "quantize.enabled=true"]
    proc = compress(out, "--resume", *int8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["reused_stages"] == ["teacher", "distill", "prune", "export"]
    before = {s: (out / s / "manifest.json").stat().st_mtime_ns for s in STAGES}
    proc = compress(out, "--resume", *int8, "--set", "data.calib_samples=64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["reused_stages"] == ["teacher", "distill", "prune", "export"]
    assert report["stages"]["quantize"]["status"] == report["stages"]["bench"]["status"] == "ran"
    for s in STAGES:
        assert ((out / s / "manifest.json").stat().st_mtime_ns != before[s]) == (s in ("quantize", "bench")), s
    key = json.loads((out / "quantize" / "manifest.json").read_text())["key"]
    assert key["data"]["calib_samples"] == 64
    assert "calib_samples" not in json.loads((out / "prune" / "manifest.json").read_text())["key"]["data"]


@pytest.fixture(scope="module")
def full_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    proc = compress(out, short=SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_killed_in_every_stage_resumes_byte_identical(stage, full_reference, tmp_path):
    """Every stage (TFLite and int8 included), killed and resumed: same files and accuracies as uninterrupted."""
    out = tmp_path / "run"
    kill_and_resume(out, stage, full_reference, SHORT)
    assert accuracies(out) == accuracies(full_reference)


def test_a_recipe_s_files_give_the_same_stage_keys_from_any_checkout(tmp_path):
    """Paths are normalized (no `..`), so a run resumed from another checkout reuses its stages."""
    shared = tmp_path / "shared" / "models"
    shared.mkdir(parents=True)
    (shared / "w.pt").write_bytes(b"weights")
    for name in ("main", "worktree"):
        (tmp_path / name / "recipes").mkdir(parents=True)
    raw = {"teacher": {"model": "../../shared/models/net.py:Net", "weights": "../../shared/models/w.pt"}}
    seen = [resolve_paths(raw, tmp_path / d / "recipes")["teacher"] for d in ("main", "worktree")]
    assert all(t == {"model": f"{shared / 'net.py'}:Net", "weights": str(shared / "w.pt")} for t in seen), seen


def test_a_size_limit_redoes_only_the_deploy_pick():
    """bench.max_size_kb is not a measurement setting: quantize keeps its key; unset, bench keeps the key it had."""
    plain, limited = Recipe(), Recipe.model_validate({"bench": {"max_size_kb": 168}})
    assert QuantizeStage().config(plain) == QuantizeStage().config(limited)
    assert "max_size_kb" not in BenchStage().config(plain)
    assert BenchStage().config(limited)["max_size_kb"] == 168
