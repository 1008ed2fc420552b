"""Sweeps on mnist5k with tiny epochs: shared stages, SIGKILL half-way and resume, compare over the variants.

The module's fixture runs one real sweep (three variants of the pruning ratio; teacher and student
shared), kills it with SIGKILL once the first variant has finished, and resumes it. The compare tests
use its three finished variants as their three runs.
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
import yaml
from conftest import REPO, run_cli

from edgecnn.config.recipe import recipe_from_dict
from edgecnn.core.errors import UserError
from edgecnn.pipeline.sweep import plan_shared, plan_variants

TINY = {
    "name": "tiny_sweep",
    "data": {"spec": "mnist5k", "eval_samples": 300, "calib_samples": 64},
    "teacher": {"model": "lenet"},
    "train": {"epochs": 1, "batch_size": 128},
    "student": {"model": "lenet_small"},
    "distill": {"epochs": 1, "batch_size": 128},
    "prune": {"ratio": 0.3, "epochs": 1, "batch_size": 128},
    "quantize": {"select": "fixed", "on_fail": "warn"},
    "export": {"formats": ["onnx"]},
    "bench": {"device": "local-cpu", "threads": 1, "min_seconds": 0.05, "min_iters": 5, "warmup": 2},
}


def _write(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.name in ("manifest.json", "report.json")}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("sweep")
    recipe = _write(d, sweep={"grid": {"prune.ratio": [0.2, 0.4, 0.6]}, "workers": 1})
    out = d / "run"
    with open(d / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edgecnn", "compress", str(recipe), "--out", str(out)],
                                cwd=REPO, stdout=log, stderr=log)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if list(out.glob("variants/*/report.json")):
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = sorted(p.parent.name for p in out.glob("variants/*/report.json"))
    snaps = {name: _snapshot(out / "variants" / name) for name in finished}
    again = run_cli("compress", str(recipe), "--out", str(out), "--resume")
    return {"out": out, "finished": finished, "snaps": snaps, "proc": again, "log": (d / "first.log").read_text()}


def test_killed_sweep_resumes_without_recomputing_finished_variants(resumed):
    out, proc = resumed["out"], resumed["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 1 <= len(resumed["finished"]) < 3, resumed["log"][-2000:]
    for name, snap in resumed["snaps"].items():
        assert _snapshot(out / "variants" / name) == snap, f"{name} was touched by the resume"
    sweep = json.loads((out / "sweep.json").read_text())
    status = {v["name"]: v["status"] for v in sweep["variants"]}
    assert status == {n: "finished earlier" if n in resumed["finished"] else "ran" for n in status}
    assert sorted(status) == ["ratio0.2", "ratio0.4", "ratio0.6"]
    for name in status:
        report = json.loads((out / "variants" / name / "report.json").read_text())
        assert report["recipe"]["prune"]["ratio"] == float(name.removeprefix("ratio"))
        # timed stages start once every variant has trained: the killed sweep had pruned them all
        assert report["stages"]["prune"]["status"] == ("ran" if name in resumed["finished"] else "reused")
        assert report["data"]["eval"]["samples"] == 300 and len(report["data"]["eval"]["sha256"]) == 64


def test_shared_stages_ran_once_and_are_linked_into_every_variant(resumed):
    out = resumed["out"]
    shared = list((out / "shared").iterdir())
    assert len(shared) == 1, shared  # teacher + distill: one job for all three variants
    for stage in ("teacher", "distill"):
        src = shared[0] / stage / "manifest.json"
        for v in (out / "variants").iterdir():
            assert os.path.samefile(src, v / stage / "manifest.json"), (stage, v.name)
            assert stage in json.loads((v / "report.json").read_text())["reused_stages"]


def test_timed_stages_start_after_every_variant_has_trained(resumed):
    """No variant quantizes or benchmarks (times models) while another one still trains."""
    variants = list((resumed["out"] / "variants").iterdir())

    def finished(v, stage):
        return (v / stage / "manifest.json").stat().st_mtime_ns

    last_training = max(finished(v, "prune") for v in variants)
    assert min(finished(v, s) for v in variants for s in ("quantize", "bench")) > last_training
    assert "timed stages (quantize, bench) start after" in json.loads((resumed["out"] / "sweep.json").read_text())[
        "timing"]


def test_sweep_writes_a_self_contained_comparison(resumed):
    out = resumed["out"]
    html = (out / "compare.html").read_text()
    assert html.count("data:image/png;base64,") == 1 and ' src="http' not in html
    comp = json.loads((out / "compare.json").read_text())
    assert sorted(comp["runs"]) == ["ratio0.2", "ratio0.4", "ratio0.6"]
    assert "| ratio0.6 | student-pruned | onnx | int8 |" in (out / "compare.md").read_text()
    assert "edgecnn compare" in resumed["proc"].stdout


def test_variants_and_shared_plan():
    base = Path.cwd()
    rec = recipe_from_dict({**TINY, "sweep": {"grid": {"student.kwargs.c1": [2, 4], "prune.ratio": [0.2, 0.5]},
                                              "variants": [{"name": "pc", "quantize.onnx.per_channel": True},
                                                           {"quantize.onnx.per_channel": False}]}}, base)
    vs = plan_variants(rec, base)
    names = [v.name for v in vs]
    assert len(vs) == 8 and len(set(names)) == 8
    assert "pc-c12-ratio0.2" in names and "per_channelfalse-c14-ratio0.5" in names
    v = vs[names.index("per_channelfalse-c14-ratio0.5")]
    assert v.recipe.student.kwargs == {"c1": 4} and v.recipe.prune.ratio == 0.5
    assert v.recipe.quantize.onnx.per_channel is False and v.recipe.sweep is None
    levels = plan_shared(vs, Path("/run"))
    teacher, distill, prune = levels  # teacher: all 8; distill per c1 (4 each); prune+export per (c1, ratio)
    assert [len(j.members) for j in teacher] == [8] and teacher[0].upto == 1
    assert sorted(len(j.members) for j in distill) == [4, 4] and all(j.upto == 2 for j in distill)
    assert sorted(len(j.members) for j in prune) == [2, 2, 2, 2] and all(j.upto == 4 for j in prune)


def test_bad_sweep_key_names_the_variant(tmp_path):
    with pytest.raises(UserError, match=r"sweep variant ratioo0.2: prune.ratioo: unknown key"):
        plan_variants(recipe_from_dict({**TINY, "sweep": {"grid": {"prune.ratioo": [0.2]}}}, tmp_path), tmp_path)
    recipe = _write(tmp_path, sweep={"grid": {"prune.ratio": [2.0]}})
    proc = run_cli("compress", str(recipe), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: sweep variant ratio2.0: prune.ratio")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.slow  # a local Ray instance takes ~45 s to start and run two tiny variants on 2 cores
def test_ray_backend_runs_a_sweep(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'edgecnn[ray]')")
    recipe = _write(tmp_path, sweep={"grid": {"prune.ratio": [0.3, 0.5]}}, quantize=None, student=None,
                    distill=None)
    out = tmp_path / "run"
    proc = run_cli("compress", str(recipe), "--out", str(out), "--ray", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["backend"] == "ray auto" and [v["status"] for v in sweep["variants"]] == ["ran", "ran"]
    comp = json.loads((out / "compare.json").read_text())
    assert {r["run"] for r in comp["rows"]} == {"ratio0.3", "ratio0.5"}


# ---- compare over the three finished variants -------------------------------------------------------


def _variants(resumed) -> list[str]:
    return [str(p) for p in sorted((resumed["out"] / "variants").iterdir())]


def test_compare_three_runs_marks_pareto_fronts(resumed, tmp_path):
    proc = run_cli("compare", *_variants(resumed), "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    comp = json.loads((tmp_path / "c" / "compare.json").read_text())
    rows = comp["rows"]
    assert {r["run"] for r in rows} == {"ratio0.2", "ratio0.4", "ratio0.6"}
    for key, tag in (("p50_ms", "latency"), ("size_kb", "size")):
        for r in rows:  # on the front exactly when no other row is at least as good in both and better in one
            beaten = any(o[key] <= r[key] and o["accuracy"] >= r["accuracy"]
                         and (o[key] < r[key] or o["accuracy"] > r["accuracy"]) for o in rows if o is not r)
            assert (tag in r["front"]) == (not beaten), (tag, r)
    md = (tmp_path / "c" / "compare.md").read_text()
    assert md.count("| ratio0.4 |") == 5 and "compare-local-cpu.png" in md
    assert (tmp_path / "c" / "compare-local-cpu.png").stat().st_size > 10_000
    assert "student-pruned" in proc.stdout and "budget" not in proc.stdout


def test_compare_budget_names_the_best_model(resumed, tmp_path):
    rows = json.loads((resumed["out"] / "compare.json").read_text())["rows"]
    limit = sorted(r["p50_ms"] for r in rows)[len(rows) // 2]
    ok = [r for r in rows if r["p50_ms"] <= limit]
    best = max(ok, key=lambda r: (r["accuracy"], -r["p50_ms"]))
    proc = run_cli("compare", str(resumed["out"]), "--max-latency-ms", str(limit), "--device", "local-cpu",
                   "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    chosen = json.loads((tmp_path / "compare.json").read_text())["budget"]["best"]
    assert (chosen["run"], chosen["model"], chosen["format"], chosen["precision"]) == (
        best["run"], best["model"], best["format"], best["precision"])
    assert f"best within budget: {best['run']}: {best['model']} {best['format']}" in proc.stdout


def test_compare_budget_nothing_meets(resumed, tmp_path):
    rows = json.loads((resumed["out"] / "compare.json").read_text())["rows"]
    fastest = min(rows, key=lambda r: r["p50_ms"])
    proc = run_cli("compare", *_variants(resumed), "--max-latency-ms", "0.0001", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    gap = fastest["p50_ms"] - 0.0001
    assert "no model meets the budget: no model meets p50 <= 0.0001 ms; nearest " in proc.stdout
    assert f"{fastest['model']} {fastest['format']} {fastest['precision']} on local-cpu, {gap:.3f} ms slower" in (
        proc.stdout.replace("\n", ""))
    smallest = min(rows, key=lambda r: r["size_kb"])
    best_acc = max(r["accuracy"] for r in rows)
    proc = run_cli("compare", *_variants(resumed), "--max-size-kb", str(smallest["size_kb"] + 0.01),
                   "--min-accuracy", str(min(1.0, best_acc + 0.001)), "--out", str(tmp_path))
    text = proc.stdout.replace("\n", "")
    assert proc.returncode == 0 and "no model meets accuracy >= " in text and "points less accurate" in text


def _copy_run(src: Path, dst: Path, edit) -> Path:
    dst.mkdir(parents=True)
    report = json.loads((src / "report.json").read_text())
    edit(report)
    (dst / "report.json").write_text(json.dumps(report))
    return dst


@pytest.mark.parametrize("case, edit, message", [
    ("schema", lambda r: r.update(schema="edgecnn-report/0"), "report schemas differ"),
    ("data", lambda r: r["data"]["eval"].update(sha256="0" * 64), "evaluated on different data"),
    ("samples", lambda r: [m.update(eval_samples=100) for m in r["models"]], "different numbers of images"),
])
def test_compare_refuses_incompatible_runs(resumed, tmp_path, case, edit, message):
    first = Path(_variants(resumed)[0])
    other = _copy_run(first, tmp_path / case, edit)
    proc = run_cli("compare", str(first), str(other), "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "c").exists()


def test_compare_missing_or_corrupt_report(resumed, tmp_path):
    first = _variants(resumed)[0]
    proc = run_cli("compare", first, str(tmp_path), "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "no report.json" in proc.stderr and len(proc.stderr.splitlines()) == 1
    (tmp_path / "report.json").write_text('{"models": [')
    proc = run_cli("compare", first, str(tmp_path), "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "corrupt report.json" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = run_cli("compare", first, "--device", "rpi4", "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "--device rpi4: no model was measured on it" in proc.stderr


def test_wilson_interval_and_two_proportion_test():
    from edgecnn.analysis.stats import two_proportion_p, wilson_interval

    lo, hi = wilson_interval(0.9, 1000)  # 900 of 1,000: the textbook interval
    assert lo == pytest.approx(0.8798, abs=1e-4) and hi == pytest.approx(0.9171, abs=1e-4)
    assert wilson_interval(1.0, 50)[1] == 1.0 and wilson_interval(0.0, 50)[0] == 0.0
    assert wilson_interval(None, 10) is None and wilson_interval(0.5, 0) is None
    assert two_proportion_p(0.90, 1000, 0.91, 1000) > 0.4  # one point on 1,000 images: noise
    assert two_proportion_p(0.90, 10_000, 0.92, 10_000) < 1e-4


def test_compare_says_when_the_best_models_are_not_distinguishable():
    from edgecnn.analysis.compare import Budget, choose
    from edgecnn.analysis.stats import wilson_interval

    def row(run, acc, p50, n=1000):
        return {"run": run, "model": "student", "format": "onnx", "precision": "int8", "device": "local-cpu",
                "score": acc, "accuracy": acc, "eval_samples": n, "top1_ci95": wilson_interval(acc, n), "p50_ms": p50,
                "size_kb": 10.0}

    rows = [row("a", 0.912, 1.0), row("b", 0.905, 0.8), row("c", 0.850, 0.5), row("d", 0.95, 9.0)]
    got = choose(rows, Budget(max_latency_ms=2.0))
    assert got["best"]["run"] == "a" and [t["run"] for t in got["indistinguishable"]] == ["b"]
    assert "not distinguishable on these 1000 test images from 1 other model(s)" in got["message"]
    assert "b: student onnx int8 on local-cpu (0.9050 [0.885, 0.922], p=0.59)" in got["message"]
    clear = choose([row("a", 0.95, 1.0, 10_000), row("b", 0.90, 0.8, 10_000)], Budget(max_latency_ms=2.0))
    assert clear["indistinguishable"] == [] and "not distinguishable" not in clear["message"]
