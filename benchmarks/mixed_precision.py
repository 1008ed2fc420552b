"""Full int8, mixed precision and QAT side by side, on a model whose full int8 misses the accuracy budget.

    flock /tmp/edgecnn-cpu.lock python benchmarks/mixed_precision.py --preset tiny      # ~3 min on 2 cores
    flock /tmp/edgecnn-cpu.lock python benchmarks/mixed_precision.py --preset resnet56  # the user's ResNet-56

Each variant is the pipeline's own quantize stage (edgecnn/pipeline/stages/quantize.py) on the same
teacher and fp32 export, with `select: fixed`:
- `full_int8`: post-training int8 only (`fallback: none`, no QAT), kept even though it misses;
- `mixed`: `fallback: auto`, the fewest most sensitive layers kept in float until the budget holds;
- `qat`: quantization-aware training (`fallback: none`, `qat.enabled: true`).
Every file is measured by the agent like any candidate: the validation score (what decides), the test
score (what is reported), size, and the share of its MACs in integer kernels read from the file. Its
`p50_ms` (batch 1, `--threads`) comes from --rounds alternating rounds over the fp32 and every
variant's file at the end of the run (benchmarks/timing.py), side by side; `candidate_p50_ms` is the
stage's own timing of it, taken minutes apart from the others'. `seconds` is the quantize stage's
wall time (every format of the run together: one stage makes them all); the sensitivity measurement
that a missing full int8 triggers is counted only for `mixed`, which also lists `sensitivity_seconds`
(once for every format) and its format's own `fallback_seconds` (the files tried). fp32's `seconds`
is the export stage's.

Presets: `tiny`: a LeNet-small trained one epoch on the mnist5k digits, given an outlier unit (fc1's
unit 0 x1000, fc2's weights from it /1000: the same fp32 function, but per-tensor int8 of that
activation zeroes the others), budget 1 point. `resnet56`: the user's ResNet-56 from ../shared/models
on CIFAR-10 (an image folder, --data), per-tensor int8 weights and a 0.2-point budget; by default with
8-bit weights (`--reduce-range false`): ONNX Runtime's u8 x s8 kernels saturate on x86 CPUs without
VNNI (benchmarks/onnx_reduce_range.json: -1.10 points), the miss mixed precision is for. With
`--reduce-range auto` (7-bit weights there) full int8 met the budget on an AMD EPYC (val 0.9458).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from timing import alternating_rounds

from edgecnn.config.recipe import recipe_from_dict
from edgecnn.core.environment import environment
from edgecnn.pipeline.context import Context
from edgecnn.pipeline.runner import run_stages
from edgecnn.pipeline.stages.common import DECISION_SPLIT, SUFFIX, load_stage_model
from edgecnn.pipeline.stages.registry import default_stages
from edgecnn.runtime.host import write_eval_npz

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "models"
CIFAR = "imagefolder:" + str(Path("~/.cache/edgecnn/cifar10").expanduser())
VARIANTS = {
    "full_int8": {"fallback": "none", "qat": {"enabled": False}, "on_fail": "warn"},
    "mixed": {"fallback": "auto", "qat": {"enabled": False}, "on_fail": "warn"},
    "qat": {"fallback": "none", "qat": {"enabled": True}, "on_fail": "warn"},
}


def tiny_teacher(folder: Path, threads: int) -> tuple[dict, dict]:
    """The tiny preset's data and teacher: LeNet-small trained 1 epoch on mnist5k, then given an outlier unit."""
    data = {"spec": "mnist5k", "eval_samples": 1000, "calib_samples": 128}
    recipe = recipe_from_dict({"name": "train", "data": data, "teacher": {"model": "lenet_small"},
                               "train": {"epochs": 1, "batch_size": 64}, "student": None, "distill": None,
                               "prune": None, "quantize": None, "export": None, "bench": {"threads": threads}}, folder)
    ctx = Context(recipe, folder / "train")
    run_stages([s for s in default_stages() if s.name == "teacher"], ctx, resume=False)
    model, _ = load_stage_model(ctx, "teacher")
    with torch.no_grad():  # the same function in fp32 (ReLU is positively homogeneous), one huge activation
        model.fc1.weight[0] *= 1000
        model.fc1.bias[0] *= 1000
        model.fc2.weight[:, 0] /= 1000
    torch.save(model.state_dict(), folder / "outlier.pt")
    return data, {"model": "lenet_small", "weights": str(folder / "outlier.pt")}


def resnet56_teacher(data_spec: str) -> tuple[dict, dict]:
    meta = json.loads((SHARED / "resnet56_cifar10.json").read_text())
    data = {"spec": data_spec, "mean": meta["mean"], "std": meta["std"], "eval_samples": 2000, "calib_samples": 256}
    teacher = {"model": f"{SHARED / 'cifar_resnet.py'}:CifarResNet",
               "kwargs": {"depth": 56, "width": 16, "num_classes": 10},
               "weights": str(SHARED / "resnet56_cifar10.state_dict.pt")}
    return data, teacher


def variant_row(q: dict, fmt: str, name: str) -> dict:
    """One variant's file of `fmt` from its quantize stage record (for `qat`, the QAT candidate even when the stage
    kept a post-training file that scored higher)."""
    rec = q["files"][fmt]
    kept = True  # the row's file is the one the stage kept (model.int8.*)
    if name == "qat" and not rec["qat"]:
        kept = False
        row = next(c for c in q["candidates"][fmt] if c["qat"])
        rec = {**row, "float_islands": None, "reference_val_accuracy": rec["reference_val_accuracy"]}
    spent = (q.get("sensitivity") or {}).get("seconds", {})
    seconds = q["wall_s"]
    if name != "mixed":  # a missing full int8 triggers the sensitivity table: that is mixed precision's cost
        seconds -= spent.get("sensitivity", 0.0)
    extra = {"sensitivity_seconds": round(spent.get("sensitivity", 0.0), 1),
             "fallback_seconds": round(spent.get(f"fallback_{fmt}", 0.0), 1)} if name == "mixed" else {}
    return {
        "val_score": rec["val_accuracy"], "test_score": rec["accuracy"], "p50_ms": rec["p50_ms"],
        "size_bytes": rec["size_bytes"], "integer_mac_share": rec["integer_mac_share"],
        "float_layers": rec["float_layers"], "float_islands": rec["float_islands"], "config": rec["config"],
        "qat": rec["qat"], "within_budget": rec["reference_val_accuracy"] - rec["val_accuracy"] <= q["budget"] + 1e-6,
        "seconds": round(seconds, 1), "file_kept": kept, **extra,
    }


def retime(per_format: dict[str, dict], folder: Path, first: Path, ctx: Context, threads: int, rounds: int,
           seconds: float) -> None:
    """Every variant's file and the fp32 export timed side by side in alternating rounds; sets each row's p50_ms
    (the stage's own timing kept as candidate_p50_ms). A QAT candidate the stage did not keep has no file."""
    files = {}
    for fmt, rows in per_format.items():
        files[fmt, "fp32"] = first / "export" / f"model.{SUFFIX[fmt]}"
        for name in VARIANTS:
            if rows[name]["file_kept"]:
                files[fmt, name] = folder / name / "quantize" / f"model.int8.{SUFFIX[fmt]}"
    npz = folder / "latency.npz"
    write_eval_npz(ctx.data, ctx.data.test.head(16), npz)
    timed = alternating_rounds(files, npz, [threads], rounds, seconds)
    for (fmt, name), p50s in timed.items():
        row = per_format[fmt][name]
        row["candidate_p50_ms"], row["p50_rounds_ms"] = row["p50_ms"], p50s[str(threads)]
        row["p50_ms"] = min(row["p50_rounds_ms"])


def checks(rows: dict) -> dict:
    """The claims: full int8 misses, mixed meets, mixed p50 between full int8 and fp32, made faster than QAT."""
    full, mixed, qat, fp32 = rows["full_int8"], rows["mixed"], rows["qat"], rows["fp32"]
    return {
        "full_int8_misses_the_budget": {"met": not full["within_budget"]},
        "mixed_meets_the_budget": {"met": mixed["within_budget"]},
        "mixed_p50_between_full_int8_and_fp32": {
            "met": full["p50_ms"] <= mixed["p50_ms"] <= fp32["p50_ms"],
            "values_ms": [full["p50_ms"], mixed["p50_ms"], fp32["p50_ms"]]},
        "mixed_made_faster_than_qat": {"met": mixed["seconds"] < qat["seconds"],
                                       "values_s": [mixed["seconds"], qat["seconds"]]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=["tiny", "resnet56"], default="tiny")
    ap.add_argument("--data", default=CIFAR, help="resnet56: the CIFAR-10 data spec")
    ap.add_argument("--formats", default="onnx", help="comma-separated: onnx,tflite")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reduce-range", choices=["auto", "true", "false"], default="false",
                    help="resnet56: quantize.onnx.reduce_range (false: 8-bit weights, which saturate u8s8 kernels on "
                         "x86 without VNNI)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds at the end (best p50 kept)")
    ap.add_argument("--seconds", type=float, default=2.0, help="latency measuring time per file and round")
    ap.add_argument("--out", type=Path, help="the JSON file (default benchmarks/mixed_precision[_PRESET].json)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    formats = a.formats.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if a.preset == "tiny":
            data, teacher = tiny_teacher(folder, a.threads)
            quantize = {"accuracy_budget": 0.01}
        else:
            data, teacher = resnet56_teacher(a.data)
            quantize = {"accuracy_budget": 0.002, "onnx": {"per_channel": False, "reduce_range": a.reduce_range}}
        base = {"name": f"mixed-{a.preset}", "data": data, "teacher": teacher, "student": None, "distill": None,
                "prune": None, "export": {"formats": formats},
                "bench": {"threads": a.threads, "min_seconds": 1.0}}
        stages = [s for s in default_stages() if s.name != "bench"]
        first = None
        per_format: dict[str, dict] = {fmt: {} for fmt in formats}
        for name, extra in VARIANTS.items():
            q_cfg = {**quantize, "select": "fixed", **extra}
            if name == "qat":
                q_cfg["qat"] = {**q_cfg["qat"], "epochs": a.qat_epochs}
            run = folder / name
            if first is not None:  # the same teacher and fp32 export, reused
                shutil.copytree(first, run)
            ctx = Context(recipe_from_dict({**base, "quantize": q_cfg}, folder), run)
            run_stages(stages, ctx, resume=first is not None)
            first = first or run
            q = {**ctx.results["quantize"], "budget": quantize["accuracy_budget"]}
            for fmt in formats:
                per_format[fmt][name] = variant_row(q, fmt, name)
                fp32 = next(c for c in q["candidates"][fmt] if c["config"] == "fp32")
                per_format[fmt].setdefault("fp32", {
                    "val_score": fp32["val_accuracy"], "test_score": fp32["accuracy"], "p50_ms": fp32["p50_ms"],
                    "size_bytes": fp32["size_bytes"], "integer_mac_share": 0.0, "float_layers": None,
                    "seconds": ctx.results["export"]["wall_s"]})
                if name == "mixed":
                    per_format[fmt]["mixed"]["sensitivity"] = q.get("sensitivity")
            print(f"{name}: " + ", ".join(f"{fmt} val {r[name]['val_score']:.4f} p50 {r[name]['p50_ms']:.3f} ms "
                                          f"int-MACs {r[name]['integer_mac_share']:.0%} {r[name]['seconds']:.0f} s"
                                          for fmt, r in per_format.items()), flush=True)
        reference = ctx.results["quantize"]["files"][formats[0]]["reference_val_accuracy"]
        retime(per_format, folder, first, ctx, a.threads, a.rounds, a.seconds)
    out = {
        "benchmark": "mixed_precision", "preset": a.preset,
        "command": f"python benchmarks/mixed_precision.py --preset {a.preset} --formats {a.formats} "
                   f"--qat-epochs {a.qat_epochs} --threads {a.threads} --rounds {a.rounds} --seconds {a.seconds}"
                   + (f" --reduce-range {a.reduce_range}" if a.preset == "resnet56" else ""),
        "decision_split": DECISION_SPLIT, "accuracy_budget": quantize["accuracy_budget"],
        "reference_val_score": reference, "teacher": teacher, "data": data,
        "wall_s": round(time.perf_counter() - t0, 1), "environment": environment(),
        "formats": {fmt: {"variants": rows, "checks": checks(rows)} for fmt, rows in per_format.items()},
    }
    path = a.out or HERE / ("mixed_precision.json" if a.preset == "tiny" else f"mixed_precision_{a.preset}.json")
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({fmt: v["checks"] for fmt, v in out["formats"].items()}, indent=2))


if __name__ == "__main__":
    main()
