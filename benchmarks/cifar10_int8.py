"""fp32 against int8 on ONNX Runtime and LiteRT for two CIFAR-10 ResNets, side by side in one run.

    flock /tmp/edgecnn-cpu.lock python benchmarks/cifar10_int8.py   # writes benchmarks/cifar10_int8.json

Models: a student (a CIFAR ResNet-20 trained here on labels for --student-epochs epochs, a quick
student, cached under ~/.cache/edgecnn/bench/; pass --student FILE to use an edgecnn model file,
e.g. RUN/distill/model.pt) and the user's ResNet-56 from ../shared/models. Each model is exported
to ONNX (dynamo, simplified) and TFLite (litert-torch) in fp32, and quantized to int8: ONNX with
onnxruntime static QDQ (uint8 activations, per-channel int8 weights, MinMax on 256 training
images, and the same with Percentile calibration), TFLite with litert-torch's PT2E (per-channel,
int8 I/O). Every file is measured by the agent (edgecnn/runtime/agent.py) on the 10,000 CIFAR-10 test
images once, then timed at batch 1 with one thread (pinned) and with all threads in --rounds
alternating rounds (benchmarks/timing.py: file and thread order flip every round, best p50 kept).
Targets: int8 loses <= 0.3 points on both runtimes; at one thread int8 p50 is <= 0.5x fp32 on LiteRT
and <= 0.7x on ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from timing import alternating_rounds

from edgecnn.compression.export import export_onnx, export_tflite
from edgecnn.compression.quantize import quantize_onnx, quantize_tflite
from edgecnn.compression.train import accuracy, fit, predict
from edgecnn.config.recipe import TrainConfig
from edgecnn.core.environment import environment
from edgecnn.data.datasets import load_data
from edgecnn.models.files import ModelInfo, build_model, load_model_file, load_weights, save_model
from edgecnn.runtime.host import run_agent_local, write_eval_npz

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "models"
DATA = "imagefolder:" + str(Path("~/.cache/edgecnn/cifar10").expanduser())
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CACHE = Path("~/.cache/edgecnn/bench").expanduser()
TARGETS = {"max_accuracy_drop": 0.003, "litert_int8_over_fp32_1thread": 0.5, "onnxruntime_int8_over_fp32_1thread": 0.7}


def student(data, epochs: int, path: Path | None) -> tuple[str, object, str]:
    """The student (name, model, origin): a given edgecnn file, the cached ResNet-20, or a ResNet-20 trained now."""
    if path is not None:
        model, info = load_model_file(path)
        return info.spec.removeprefix("cifar_"), model, f"{path}"
    cached = CACHE / f"resnet20_cifar10_{epochs}ep.pt"
    if cached.is_file():
        origin = f"ResNet-20 trained on labels for {epochs} epochs (cached {cached})"
        return "resnet20", load_model_file(cached)[0], origin
    info = ModelInfo("cifar_resnet20", {"width": 16}, 10, (3, 32, 32), MEAN, STD)
    model = build_model(info)
    t0 = time.perf_counter()
    fit(model, data, TrainConfig(epochs=epochs, lr=0.1, batch_size=128), seed=0, augment=True, label="student")
    CACHE.mkdir(parents=True, exist_ok=True)
    save_model(model, info, cached)
    return "resnet20", model, f"ResNet-20 trained on labels for {epochs} epochs here ({time.perf_counter() - t0:.0f} s)"


def resnet56():
    info = ModelInfo(f"{SHARED / 'cifar_resnet.py'}:CifarResNet", {"depth": 56, "width": 16, "num_classes": 10})
    model = build_model(info)
    load_weights(model, SHARED / "resnet56_cifar10.state_dict.pt")
    return model.eval(), "the user's ResNet-56 (../shared/models/resnet56_cifar10.state_dict.pt)"


def measure_model(
    name: str, model, origin: str, data, npz: Path, small_npz: Path, work: Path, seconds: float, rounds: int
) -> dict:
    """Export, quantize and measure one model (five files): test accuracy once, then p50 at one thread and all
    threads in alternating rounds (benchmarks/timing.py)."""
    shape, calib = data.input_shape, data.normalize(data.calibration(256).x)
    files = {
        ("onnxruntime", "fp32"): work / f"{name}.onnx",
        ("onnxruntime", "int8"): work / f"{name}.int8.onnx",
        ("onnxruntime", "int8-percentile"): work / f"{name}.int8p.onnx",
        ("litert", "fp32"): work / f"{name}.tflite",
        ("litert", "int8"): work / f"{name}.int8.tflite",
    }
    export_onnx(model, shape, files["onnxruntime", "fp32"], simplify=True)
    quantize_onnx(files["onnxruntime", "fp32"], files["onnxruntime", "int8"], calib.numpy())
    quantize_onnx(files["onnxruntime", "fp32"], files["onnxruntime", "int8-percentile"], calib.numpy(),
                  method="percentile")
    export_tflite(model, shape, files["litert", "fp32"])
    quantize_tflite(model, shape, calib, files["litert", "int8"])
    all_threads = os.cpu_count() or 1
    settings = [1, all_threads] if all_threads > 1 else [1]
    measured = {}
    for key, path in files.items():  # accuracy on the whole test split once (all threads)
        measured[key] = run_agent_local(path, npz, threads=all_threads, min_iters=1, min_seconds=0)
    timed = alternating_rounds(files, small_npz, settings, rounds, seconds)
    rows = []
    for (runtime, variant), path in files.items():
        m = measured[runtime, variant]
        for threads in settings:
            p50s = timed[runtime, variant][str(threads)]
            rows.append({"runtime": runtime, "precision": variant.split("-")[0], "variant": variant,
                         "threads": threads, "file": path.name, "size_bytes": path.stat().st_size,
                         "accuracy": m["accuracy"], "eval_samples": m["eval_samples"], "p50_ms": min(p50s),
                         "p50_rounds_ms": p50s, "peak_memory_mb": m["peak_memory_mb"], "runtime_version": m["runtime"]})
            print(f"{name:9s} {runtime:11s} {variant:15s} {threads}t acc {m['accuracy']:.4f} "
                  f"p50 {min(p50s):.3f} ms (best of {len(p50s)})", flush=True)
    torch_acc = accuracy(predict(model, data, data.test), data.test.y)
    return {"name": name, "origin": origin, "pytorch_fp32_accuracy": torch_acc, "results": rows,
            "checks": checks(rows)}


def checks(rows: list[dict]) -> dict:
    """int8 against fp32 of the same model: accuracy drop and p50 ratio per runtime and thread count."""
    out = {}
    for runtime, variant, limit in (("litert", "int8", 0.5), ("onnxruntime", "int8", 0.7),
                                    ("onnxruntime", "int8-percentile", 0.7)):
        for threads in sorted({r["threads"] for r in rows}):
            fp, q = ({r["variant"]: r for r in rows if r["runtime"] == runtime and r["threads"] == threads}[v]
                     for v in ("fp32", variant))
            ratio = q["p50_ms"] / fp["p50_ms"]
            drop = fp["accuracy"] - q["accuracy"]
            entry = {"int8_over_fp32_p50": round(ratio, 3), "accuracy_drop_points": round(100 * drop, 2),
                     "accuracy_within_0.3_points": {"met": drop <= TARGETS["max_accuracy_drop"] + 1e-9}}
            if threads == 1:
                entry[f"latency_at_most_{limit}x_fp32"] = {"met": ratio <= limit}
            out[f"{runtime}_{variant}_{threads}t"] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, help="an edgecnn model file to use as the student")
    ap.add_argument("--student-epochs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=2.0, help="latency measuring time per file, round and setting")
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds (best p50 kept)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    data = load_data(DATA, 0.1, MEAN, STD)
    models = [student(data, a.student_epochs, a.student), ("resnet56", *resnet56())]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "eval.npz"
        write_eval_npz(data, data.test, npz)
        small_npz = Path(tmp) / "latency.npz"
        write_eval_npz(data, data.test.head(16), small_npz)
        for name, model, origin in models:
            results.append(measure_model(name, model, origin, data, npz, small_npz, Path(tmp), a.seconds,
                                         a.rounds))
    command = (f"python benchmarks/cifar10_int8.py --rounds {a.rounds} --seconds {a.seconds}"
               + (f" --student {a.student}" if a.student else ""))
    out = {"benchmark": "cifar10_int8", "command": command, "targets": TARGETS,
           "settings": {"rounds": a.rounds, "seconds": a.seconds, "batch": 1},
           "decision_split": None, "figures_split": "test",  # no choice is made: every file is reported
           "wall_s": round(time.perf_counter() - t0, 1), "environment": environment(), "models": results}
    (HERE / "cifar10_int8.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({m["name"]: m["checks"] for m in results}, indent=2))


if __name__ == "__main__":
    main()
