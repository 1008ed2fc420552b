"""The headline chain: the user's ResNet-56 through the whole recipe, against the teacher, side by side.

    python benchmarks/cifar10_chain.py [--set distill.epochs=30 ...] [--run DIR]   # writes cifar10_chain.json

1. `edgecnn compress recipes/cifar10_chain.yaml --out DIR --resume` runs as a user would
   (../shared/models' ResNet-56 cut into a shallow student by depth pruning and distilled, channel
   pruning, int8, `select: auto` across ONNX Runtime, LiteRT and OpenVINO); a rerun reuses its
   finished stages.
2. The teacher is exported uncompressed the way users would deploy it: ONNX fp32, TFLite fp32,
   OpenVINO fp32 (and bf16 / fp16 inference of it where this CPU lists them). Each teacher file's
   test accuracy is measured by the agent on the CIFAR-10 test split.
3. The deployed file of the run and every teacher file are timed by the agent in one process
   session: batch 1, one thread (pinned) and all threads, in alternating rounds (order flipped each
   round); each p50 is the best of its rounds.
4. Ratios against the teacher on the deployed file's own runtime and against the teacher's fastest
   file at each thread count: size, p50, and test-accuracy loss (with a two-proportion p-value).
   The goal of issue 16: >= 20x smaller, >= 15x faster than the fp32 teacher on the same runtime,
   at most 1.0 point below it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtimes import lscpu
from timing import alternating_rounds, best_p50

from edgecnn.analysis.report import markdown_table
from edgecnn.analysis.stats import ci_text, two_proportion_p, wilson_interval
from edgecnn.compression.export import export_onnx, export_tflite
from edgecnn.compression.openvino_ir import export_openvino, float_precisions, reprecision
from edgecnn.core.environment import environment
from edgecnn.data.datasets import load_data
from edgecnn.models.files import ModelInfo, build_model, load_weights
from edgecnn.runtime.agent import model_size
from edgecnn.runtime.host import run_agent_local, write_eval_npz

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "cifar10_chain.yaml"
GOALS = {"size_ratio_min": 20.0, "p50_ratio_min": 15.0, "accuracy_loss_max": 0.01}
RUNTIME_OF = {"onnx": "onnxruntime", "tflite": "litert", "openvino": "openvino"}


def compress(run: Path, overrides: list[str]) -> float:
    """Run (or resume) the chain recipe as a user would; the wall time in seconds."""
    cmd = [sys.executable, "-m", "edgecnn", "compress", str(RECIPE), "--out", str(run), "--resume"]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def teacher_files(recipe: dict, work: Path, notes: list[str]) -> dict[str, Path]:
    """The uncompressed teacher as users deploy it, keyed by 'runtime precision'."""
    t = recipe["teacher"]
    model = build_model(ModelInfo(t["model"], t.get("kwargs") or {}, 10, (3, 32, 32)))
    load_weights(model, Path(t["weights"]))
    model.eval()
    shape = (3, 32, 32)
    files = {"onnxruntime fp32": work / "teacher.onnx", "litert fp32": work / "teacher.tflite",
             "openvino fp32": work / "teacher.xml"}
    export_onnx(model, shape, files["onnxruntime fp32"], simplify=True)
    export_tflite(model, shape, files["litert fp32"])
    export_openvino(model, shape, files["openvino fp32"], onnx_file=files["onnxruntime fp32"])
    wanted, skipped = float_precisions(["bf16", "fp16"])
    for p in wanted:
        files[f"openvino {p}"] = work / f"teacher.{p}.xml"
        reprecision(files["openvino fp32"], files[f"openvino {p}"], p)
    notes.extend(skipped)
    return files


def resolve(run: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else run / p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("~/.cache/edgecnn/bench/cifar10_chain").expanduser(),
                    help="run directory (kept outside the repository; reused by a rerun)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override, passed to edgecnn compress (recorded in the JSON)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds (best p50 kept)")
    ap.add_argument("--seconds", type=float, default=2.0, help="latency measuring time per file, round and setting")
    ap.add_argument("--out", type=Path, default=HERE / "cifar10_chain.json")
    a = ap.parse_args()
    compress_s = compress(a.run, a.overrides)
    report = json.loads((a.run / "report.json").read_text())
    recipe = report["recipe"]
    dep = report["deployments"]["local-cpu"]
    chosen = dep["chosen"]
    deployed_path = resolve(a.run, chosen["path"])
    entry = next(m for m in report["models"] if m["name"] == chosen["name"] and m["format"] == chosen["format"]
                 and m["precision"] == chosen["precision"] and m.get("runtime") == chosen["runtime"])
    teacher = next(m for m in report["models"] if m["name"] == "teacher" and m["format"] == "pytorch")
    all_threads = os.cpu_count() or 1
    settings = [1, all_threads] if all_threads > 1 else [1]
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = teacher_files(recipe, tmp, notes)
        spec = recipe["data"]["spec"]
        data = load_data(spec, recipe["data"]["val_fraction"], recipe["data"]["mean"], recipe["data"]["std"])
        test = data.test.head(recipe["data"].get("eval_samples"))
        npz, small = tmp / "test.npz", tmp / "latency.npz"
        write_eval_npz(data, test, npz)
        write_eval_npz(data, test.head(16), small)
        rows = {k: {"file": p.name, "size_bytes": model_size(str(p))} for k, p in files.items()}
        for key, path in files.items():
            m = run_agent_local(path, npz, threads=all_threads, min_iters=1, min_seconds=0)
            rows[key].update(accuracy=m["accuracy"], eval_samples=m["eval_samples"],
                             inference_precision=m["inference_precision"], runtime_version=m["runtime"])
        files["deployed"] = deployed_path
        rows["deployed"] = {"file": deployed_path.name, "size_bytes": model_size(str(deployed_path)),
                            "accuracy": entry["accuracy"], "eval_samples": entry["eval_samples"],
                            "val_accuracy": next(c["score"] for c in dep["candidates"] if c["chosen"]), **chosen}
        timed = alternating_rounds(files, small, settings, a.rounds, a.seconds)
    for key, row in rows.items():
        row["rounds"] = timed[key]
        row["p50_ms"] = best_p50(row["rounds"])
    same = f"{RUNTIME_OF[chosen['format']]} fp32"
    dep_row, same_row = rows["deployed"], rows[same]
    teacher_keys = [k for k in rows if k != "deployed"]
    fastest = {str(t): min(teacher_keys, key=lambda k: rows[k]["p50_ms"][str(t)]) for t in settings}
    loss = teacher["accuracy"] - dep_row["accuracy"]
    ratios = {
        "size_vs_teacher_same_runtime": same_row["size_bytes"] / dep_row["size_bytes"],
        "p50_vs_teacher_same_runtime": {t: same_row["p50_ms"][t] / dep_row["p50_ms"][t] for t in dep_row["p50_ms"]},
        "p50_vs_teacher_fastest_runtime": {t: rows[fastest[t]]["p50_ms"][t] / dep_row["p50_ms"][t] for t in fastest},
        "teacher_fastest_runtime": fastest,
        "test_accuracy_loss": loss,
        "test_accuracy_loss_p_value": two_proportion_p(teacher["accuracy"], teacher["eval_samples"],
                                                       dep_row["accuracy"], dep_row["eval_samples"]),
    }
    goals = {
        "size_ratio": ratios["size_vs_teacher_same_runtime"] >= GOALS["size_ratio_min"],
        "p50_ratio_1_thread": ratios["p50_vs_teacher_same_runtime"]["1"] >= GOALS["p50_ratio_min"],
        "accuracy_loss": loss <= GOALS["accuracy_loss_max"],
    }
    table = markdown_table(
        ["file", "size KB", "test accuracy [95% CI]", *(f"p50 ms {t}t" for t in settings)],
        [[k, f"{r['size_bytes'] / 1024:.0f}",
          f"{r['accuracy']:.4f} {ci_text(wilson_interval(r['accuracy'], r['eval_samples']))}",
          *(f"{r['p50_ms'][str(t)]:.3f}" for t in settings)] for k, r in rows.items()],
    )
    command = "python benchmarks/cifar10_chain.py" + "".join(f" --set {o}" for o in a.overrides)
    if a.out != HERE / "cifar10_chain.json":
        command += f" --out benchmarks/{a.out.name}"
    out = {
        "benchmark": "cifar10_chain", "command": command, "recipe_file": "recipes/cifar10_chain.yaml",
        "overrides": a.overrides, "compress_wall_s": round(compress_s, 1),
        "stage_wall_s": {k: v.get("wall_s") for k, v in report["stages"].items()},
        "decision_split": report.get("decision_split"), "figures_split": "test",
        "settings": {"rounds": a.rounds, "seconds": a.seconds, "threads": settings, "batch": 1},
        "environment": environment(), "lscpu": lscpu(), "notes": notes,
        "recipe": {k: recipe.get(k) for k in ("student", "distill", "prune", "quantize")},
        "pytorch_models": {m["name"]: {k: m.get(k) for k in ("accuracy", "eval_samples", "params", "macs")}
                           for m in report["models"] if m["format"] == "pytorch"},
        "student_from_teacher": report["stages"].get("distill", {}).get("from_teacher"),
        "deployment_reason": dep.get("reason"), "files": rows, "ratios": ratios, "goals": GOALS,
        "goals_met": goals, "table": table,
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(table)
    print(json.dumps({"ratios": ratios, "goals_met": goals}, indent=2))


if __name__ == "__main__":
    main()
